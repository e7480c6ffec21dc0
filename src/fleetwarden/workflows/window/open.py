"""`fleetwarden window open`: start the eligible stopped instances so Amazon Inspector can scan them.

Eligible: stopped, no do-not-start exception, matching `window.select_tags`, not in an Auto Scaling group
(skipped and reported). Accounts where the guard is tripped are refused. Each instance is written to the
ledger before it is started; starts are batched and waited for with boto3's waiter and a timeout.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from botocore.exceptions import WaiterError

from ...actions.ec2 import Ec2Actions
from ...aws.fanout import fan_out
from ...aws.targets import resolve_targets
from ...collect.ec2 import iter_instances
from ...errors import FleetwardenError
from ...model import (
    ActionOutcome,
    ActionResult,
    ExceptionKind,
    ExceptionSet,
    Instance,
    RunReport,
    Target,
    TargetResult,
    TargetStatus,
)
from ..base import RunContext
from .ledger import Ledger, LedgerEntry, WindowRecord

log = logging.getLogger(__name__)
WORKFLOW = "window"
START_WAIT_DELAY = 5
START_WAIT_ATTEMPTS = 24  # two minutes


class WindowBusy(FleetwardenError):
    """Another window is open on this account-region."""


@dataclass
class OpenOptions:
    apply: bool = False


@dataclass
class _Opened:
    target: Target
    results: list[ActionResult] = field(default_factory=list)
    started: int = 0


def new_window_id(ctx: RunContext) -> str:
    return "win-" + ctx.clock().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _discover(ctx: RunContext, target: Target) -> list[Instance]:
    discovery = ctx.config.window.discovery
    ec2 = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
    if discovery.type == "config-aggregator":
        from ...collect.config_aggregator import confirm_stopped, stopped_instances

        assert discovery.aggregator is not None
        client = ctx.factory.client("config", region=ctx.config.aws.sts_region)
        candidates = list(stopped_instances(client, discovery.aggregator, [target.account_id], [target.region]))
        # Config lags by minutes: an instance started meanwhile must not be recorded as "stopped" in the ledger.
        return confirm_stopped(ec2, candidates)
    return list(iter_instances(ec2, target.account_id, target.region, states=("stopped",)))


def _select(
    ctx: RunContext, instances: list[Instance], exceptions: ExceptionSet
) -> tuple[list[Instance], list[ActionResult]]:
    wanted = ctx.config.window.select_tags
    eligible: list[Instance] = []
    skipped: list[ActionResult] = []
    for instance in instances:
        if instance.state != "stopped" or any(instance.tags.get(k) != v for k, v in wanted.items()):
            continue
        rule = exceptions.find(
            ExceptionKind.DO_NOT_START, account_id=instance.account_id, region=instance.region, resource_id=instance.id
        )
        reason = None
        if rule is not None:
            reason = f"do-not-start {rule.id}: {rule.reason}"
        elif instance.asg_name:
            reason = f"in Auto Scaling group {instance.asg_name}: the group would replace or terminate it"
        if reason:
            skipped.append(_result(instance, ActionOutcome.SKIPPED, reason))
        else:
            eligible.append(instance)
    return eligible, skipped


def _result(instance: Instance | LedgerEntry, outcome: ActionOutcome, reason: str) -> ActionResult:
    resource = instance.id if isinstance(instance, Instance) else instance.instance_id
    return ActionResult(
        action="start",
        account_id=instance.account_id,
        region=instance.region,
        resource_id=resource,
        outcome=outcome,
        reason=reason,
    )


def _open_target(
    ctx: RunContext, ledger: Ledger, window_id: str, target: Target, exceptions: ExceptionSet, apply: bool
) -> _Opened:
    opened = _Opened(target)
    eligible, opened.results = _select(ctx, _discover(ctx, target), exceptions)
    if not apply:
        opened.results += [_result(i, ActionOutcome.PLANNED, "dry run: use --apply to start") for i in eligible]
        return opened
    holder = ledger.lock(target, window_id)
    if holder is not None:
        raise WindowBusy(f"window {holder} is still open here; close it first (fleetwarden window close)")
    entries = {i.id: LedgerEntry(window_id, i.account_id, i.region, i.id, prior_state=i.state) for i in eligible}
    for entry in entries.values():  # the ledger first: a crash after this point still closes them
        ledger.save_entry(entry)
    if not eligible:
        return opened
    client = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
    actions = Ec2Actions(
        client,
        account_id=target.account_id,
        region=target.region,
        run_id=ctx.run_id,
        workflow=WORKFLOW,
        journal=ctx.store.journal,
        journal_many=ctx.store.journal_many,
        clock=ctx.clock,
    )
    results = actions.start([i.id for i in eligible], reason=f"fleetwarden scan window {window_id}")
    started = [r.resource_id for r in results if r.outcome == ActionOutcome.DONE]
    not_running = _wait_running(client, started)
    for result in results:
        entry = entries[result.resource_id]
        if result.outcome == ActionOutcome.DONE and result.resource_id not in not_running:
            entry.start = "done"
            opened.started += 1
        elif result.outcome == ActionOutcome.DONE:
            # Started, but not running within the wait: still ours to stop at close.
            entry.start = "done"
            entry.start_error = "not running after the wait"
            result = result.model_copy(update={"outcome": ActionOutcome.FAILED, "reason": entry.start_error})
        else:
            entry.start = "failed"
            entry.start_error = result.reason
        ledger.save_entry(entry)
        opened.results.append(result)
    return opened


def _wait_running(client: object, instance_ids: list[str]) -> set[str]:
    """Wait for the started instances to run; the ids still not running when the wait ends."""
    if not instance_ids:
        return set()
    waiter = client.get_waiter("instance_running")  # type: ignore[attr-defined]
    try:
        waiter.wait(
            InstanceIds=instance_ids, WaiterConfig={"Delay": START_WAIT_DELAY, "MaxAttempts": START_WAIT_ATTEMPTS}
        )
        return set()
    except WaiterError as exc:
        log.warning("not all instances reached running: %s", exc)
    running = set()
    for page in client.get_paginator("describe_instances").paginate(InstanceIds=instance_ids):  # type: ignore[attr-defined]
        for reservation in page["Reservations"]:
            running |= {i["InstanceId"] for i in reservation["Instances"] if i["State"]["Name"] == "running"}
    return set(instance_ids) - running


def open_window(ctx: RunContext, options: OpenOptions) -> RunReport:
    from ..guard.state import load_states

    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow="window-open", dry_run=not options.apply, started_at=now)
    plan = resolve_targets(ctx.config, ctx.factory)
    report.targets += plan.errors
    tripped = {a for a, s in load_states(ctx.store).items() if s.tripped}
    targets = []
    for target in plan.targets:
        if target.account_id in tripped:
            report.targets.append(
                TargetResult(
                    account_id=target.account_id,
                    region=target.region,
                    status=TargetStatus.SKIPPED,
                    error="the runaway guard is tripped for this account: no window opens until `guard release`",
                )
            )
        else:
            targets.append(target)
    ledger = Ledger(ctx.store)
    window_id = new_window_id(ctx)
    record = WindowRecord(
        window_id, "opening", now.isoformat(), ctx.run_id, [[t.account_id, t.region] for t in targets]
    )
    if options.apply:
        ledger.save_window(record)
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    started = 0
    for outcome in fan_out(
        targets,
        lambda t: _open_target(ctx, ledger, window_id, t, exceptions, options.apply),
        max_concurrency=ctx.config.aws.max_concurrency,
        label="opening",
    ):
        target = outcome.key
        if outcome.value is None:
            report.targets.append(
                TargetResult(
                    account_id=target.account_id, region=target.region, status=TargetStatus.ERROR, error=outcome.error
                )
            )
            continue
        report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
        report.actions += outcome.value.results
        started += outcome.value.started
    if options.apply:
        # The window covers the targets whose lock it holds; one that holds none (every target refused or
        # failed before starting anything) is not left behind as an open window.
        record.targets = [t for t in record.targets if ledger.holder(Target(t[0], t[1])) == window_id]
        if record.targets:
            record.status = "open"
            ledger.save_window(record)
        else:
            ledger.delete_window(window_id)
            window_id = ""
    report.targets.sort(key=lambda t: (t.account_id, t.region))
    report.summary = {
        "window_id": window_id if options.apply and window_id else None,
        "started": started,
        "planned": sum(1 for a in report.actions if a.outcome == ActionOutcome.PLANNED),
        "skipped": sum(1 for a in report.actions if a.outcome == ActionOutcome.SKIPPED),
        "failed": sum(1 for a in report.actions if a.outcome == ActionOutcome.FAILED),
    }
    report.finished_at = ctx.clock()
    return report
