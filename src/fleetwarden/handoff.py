"""Hand-off: a scheduled run over a large organization goes to the org-run state machine instead of one invocation.

The hub stack's schedules keep invoking the functions. When the organization is over a size
(`FLEETWARDEN_SHARD_ABOVE` accounts, the stack's `ShardAboveAccounts`), the function does not run the workflow in
its own 15 minutes: it starts an execution of the org-run state machine (`FLEETWARDEN_ORG_RUN_ARN`) with the
event as input (`{"event": EVENT}`), and returns at once. The org-run shards the accounts and runs the same event
on each shard (docs/deploy.md, "Organization-scale runs"). See docs/deploy-templates.md, "Hand-off".

`hand_off()` returns None when the run stays in process: hand-off not configured, an event the org-run does not
take (not a workflow it shards, already a shard, an AWS event), or an organization at or under the threshold. A
guard with `guard.max_running_instances_org` is handed off too: the org-run counts in shards, adds up in
`guard-org-check` and halts in a second Map (docs/deploy.md, "The guard's two phases"). Otherwise it returns the
handler's result: a `handed-off` result (exit 0), or an error result when the execution could not be started;
never a silent "nothing ran".
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws.session import SessionFactory
from .aws.targets import error_text, resolve_accounts
from .config import Config
from .errors import EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, FleetwardenError
from .events import EventError, ParsedEvent, parse_event

log = logging.getLogger(__name__)

SHARD_ABOVE_ENV = "FLEETWARDEN_SHARD_ABOVE"
ORG_RUN_ARN_ENV = "FLEETWARDEN_ORG_RUN_ARN"
# The workflows the org-run shards (lambda_handler.ORG_RUN_ACTIONS; a unit test keeps the two equal).
HANDOFF_ACTIONS = ("audit", "guard", "compliance-sync")
# With the hub's own credentials, on the org-run state machine (the hub template narrows it to its ARN).
PERMISSIONS = ("states:StartExecution",)

_STATE_MACHINE_ARN = re.compile(r"arn:aws[a-z-]*:states:([a-z]{2}(?:-[a-z]+)+-\d{1,2}):\d{12}:stateMachine:[\w-]{1,80}")


def hand_off(
    event: dict[str, Any],
    config: Config,
    factory: SessionFactory,
    env: Mapping[str, str],
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Start the org-run for `event` when the organization is over the threshold; None: run it in process."""
    raw_threshold = env.get(SHARD_ABOVE_ENV, "").strip()
    machine = env.get(ORG_RUN_ARN_ENV, "").strip()
    if not raw_threshold or not machine:
        return None
    parsed = _shardable(event)
    if parsed is None:
        return None
    fields = {"action": parsed.action, "trigger": parsed.trigger}
    if not raw_threshold.isascii() or not raw_threshold.isdigit():
        message = f"{SHARD_ABOVE_ENV} must be a whole number of accounts (0: never hand off), got {raw_threshold!r}"
        return _error(f"{message}; nothing was done", EXIT_USAGE, fields)
    threshold = int(raw_threshold)
    if threshold == 0:
        return None
    match = _STATE_MACHINE_ARN.fullmatch(machine)
    if match is None:
        message = f"{ORG_RUN_ARN_ENV} is not a Step Functions state machine ARN: {machine!r}"
        return _error(f"{message}; nothing was done", EXIT_USAGE, fields)
    try:
        accounts = len(resolve_accounts(config, factory))
    except FleetwardenError as exc:
        message = f"cannot count the organization's accounts to decide the hand-off ({SHARD_ABOVE_ENV}): {exc}"
        return _error(f"{message}; nothing was done", exc.exit_code, fields)
    if accounts <= threshold:
        return None
    return _start(event, parsed, machine, match.group(1), factory, accounts, threshold, now or datetime.now(UTC))


def execution_name(event: Mapping[str, Any], action: str, at: datetime) -> str:
    """`ACTION-YYYYMMDDTHHMMZ-DIGEST`: the minute the run was asked for, and a digest of the event.

    The same event delivered twice in one minute (EventBridge delivers at least once; an asynchronous invocation
    is retried) names the same execution, which Step Functions starts only once. A rule's constant input carries
    no time of its own, so the minute is the invocation's.
    """
    digest = hashlib.sha256(json.dumps(event, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    return f"{action}-{at.astimezone(UTC).strftime('%Y%m%dT%H%MZ')}-{digest}"


def _shardable(event: Mapping[str, Any]) -> ParsedEvent | None:
    """The parsed event when the org-run can take it as is: our action event for a workflow it shards, no shard
    fields (a shard, or a run narrowed to some accounts or regions, stays in process)."""
    if not isinstance(event, Mapping) or "action" not in event:
        return None  # an AWS event (schedule, alarm, SSM association) is not an org-run's `event`
    try:
        parsed = parse_event(event)
    except EventError:
        return None  # the handler reports it
    if parsed.action not in HANDOFF_ACTIONS or parsed.shard:
        return None
    return parsed


def _start(
    event: Mapping[str, Any],
    parsed: ParsedEvent,
    machine: str,
    region: str,
    factory: SessionFactory,
    accounts: int,
    threshold: int,
    at: datetime,
) -> dict[str, Any]:
    name = execution_name(event, parsed.action, at)
    base = {
        "action": parsed.action,
        "trigger": parsed.trigger,
        "accounts": accounts,
        "shard_above": threshold,
        "state_machine_arn": machine,
        "execution_name": name,
    }
    already = False
    try:
        sfn = factory.client("stepfunctions", region=region)
        started = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps({"event": dict(event)}))
        arn = str(started["executionArn"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            return _error(_failed(machine, accounts, threshold, exc), EXIT_UNEXPECTED, base)
        # The same name within 90 days: this run was handed off already (a duplicate delivery or a retry).
        already = True
        arn = machine.replace(":stateMachine:", ":execution:", 1) + f":{name}"
    except BotoCoreError as exc:
        return _error(_failed(machine, accounts, threshold, exc), EXIT_UNEXPECTED, base)
    reason = (
        f"{accounts} accounts, over {SHARD_ABOVE_ENV}={threshold}: the run is "
        + ("already handed off to" if already else "handed off to")
        + f" the org-run state machine, execution {name}"
    )
    log.info("hand-off: %s", reason)
    return {
        "status": "handed-off",
        "exit_code": EXIT_OK,
        **base,
        "reason": reason,
        "execution_arn": arn,
        "already_started": already,
    }


def _failed(machine: str, accounts: int, threshold: int, exc: Exception) -> str:
    return (
        f"cannot hand the run off to the org-run state machine {machine} ({accounts} accounts, over "
        f"{SHARD_ABOVE_ENV}={threshold}): {error_text(exc)}; nothing ran"
    )


def _error(message: str, code: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    log.error("hand-off: %s", message)
    return {"status": "error", "exit_code": code, **fields, "error": message}


__all__ = ["HANDOFF_ACTIONS", "ORG_RUN_ARN_ENV", "PERMISSIONS", "SHARD_ABOVE_ENV", "execution_name", "hand_off"]
