"""`fleetwarden window close`: return every instance the window started to stopped, and touch nothing else.

Only the ledger's instances that the window started and that are still running are stopped (minus do-not-stop
exceptions); an instance the window did not start is never touched, even if someone started it by hand
meanwhile. The states are then read back and any instance not in its expected state is reported.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from ...actions.ec2 import Ec2Actions
from ...aws.fanout import fan_out
from ...aws.targets import resolve_accounts, verify_accounts
from ...collect.ec2 import instance_from_api
from ...errors import UsageError
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
STOPPABLE = frozenset({"pending", "running"})


@dataclass
class CloseOptions:
    apply: bool = False
    window_id: str | None = None
    collect_findings: bool = False  # `window run` and the state machine collect Inspector findings first


def _current(ctx: RunContext, target: Target, ids: list[str]) -> dict[str, Instance]:
    client = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
    states = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
    found: dict[str, Instance] = {}
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        # A filter on instance-id (not InstanceIds) so an id that no longer exists does not fail the call.
        paginator = client.get_paginator("describe_instances")
        pages = paginator.paginate(
            Filters=[{"Name": "instance-id", "Values": chunk}, {"Name": "instance-state-name", "Values": list(states)}]
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    instance = instance_from_api(raw, target.account_id, target.region)
                    found[instance.id] = instance
    return found


def _recover_interrupted(entries: list[LedgerEntry], attempts: dict[str, ActionOutcome]) -> None:
    """Settle ledger entries an interrupted open left `planned`, from the journal of its start calls.

    A start journaled `done`, or still `planned` (the process died around the call), may have happened: the
    entry counts as started, so close stops the instance if it runs. No journal entry, or a failed one: the
    window never started it, and close never touches it.
    """
    for entry in entries:
        if entry.start != "planned":
            continue
        attempt = attempts.get(entry.instance_id)
        if attempt in (ActionOutcome.DONE, ActionOutcome.PLANNED):
            entry.start = "done"
            entry.start_error = "the open was interrupted after its start call; treated as started"
        else:
            entry.start = "not-started"
            entry.start_error = "the open was interrupted before its start call"


def _close_target(
    ctx: RunContext,
    ledger: Ledger,
    target: Target,
    entries: list[LedgerEntry],
    exceptions: ExceptionSet,
    apply: bool,
    attempts: dict[str, ActionOutcome],
) -> list[ActionResult]:
    _recover_interrupted(entries, attempts)
    current = _current(ctx, target, [e.instance_id for e in entries])
    results: list[ActionResult] = []
    to_stop: list[Instance] = []
    for entry in entries:
        instance = current.get(entry.instance_id)
        if entry.start != "done":
            continue  # the window did not start it: never touched, whatever its state now
        if instance is None or instance.state not in STOPPABLE:
            continue
        rule = exceptions.find(
            ExceptionKind.DO_NOT_STOP, account_id=entry.account_id, region=entry.region, resource_id=entry.instance_id
        )
        if rule is not None:
            results.append(_result(entry, ActionOutcome.SKIPPED, f"do-not-stop {rule.id}: {rule.reason}"))
            entry.stop, entry.stop_reason = "skipped", "do-not-stop"
        else:
            to_stop.append(instance)
    if not apply:
        return results + [
            _result(e, ActionOutcome.PLANNED, "dry run: use --apply to stop")
            for e in entries
            if e.instance_id in {i.id for i in to_stop}
        ]
    if to_stop:
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
        stopped = actions.stop(to_stop, reason=f"fleetwarden scan window {entries[0].window_id} closing")
        results += stopped
        outcome = {r.resource_id: r for r in stopped}
        for entry in entries:
            if entry.instance_id in outcome:
                entry.stop, entry.stop_reason = (
                    outcome[entry.instance_id].outcome.value,
                    outcome[entry.instance_id].reason,
                )
        _wait_stopped(client, [r.resource_id for r in stopped if r.outcome == ActionOutcome.DONE])
    results += _verify(ctx, target, entries)
    for entry in entries:
        ledger.save_entry(entry)
    return results


def _wait_stopped(client: object, ids: list[str]) -> None:
    from botocore.exceptions import WaiterError

    if not ids:
        return
    try:
        client.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 24})  # type: ignore[attr-defined]
    except WaiterError as exc:
        log.warning("not all instances reached stopped: %s", exc)


def _verify(ctx: RunContext, target: Target, entries: list[LedgerEntry]) -> list[ActionResult]:
    """Read the states back (the old tool's verification step): report any instance not where it should be."""
    current = _current(ctx, target, [e.instance_id for e in entries])
    problems = []
    for entry in entries:
        instance = current.get(entry.instance_id)
        entry.final_state = instance.state if instance else "gone"
        if entry.start != "done":
            continue
        # Verified means stopped (or gone): a window with an instance still stopping stays open, and the next
        # close checks it again.
        expected = "running" if entry.stop == "skipped" else "stopped"
        accepted = {"running", "pending"} if expected == "running" else {"stopped", "terminated", "shutting-down"}
        if entry.final_state not in accepted | {"gone"}:
            problems.append(
                ActionResult(
                    action="verify",
                    account_id=entry.account_id,
                    region=entry.region,
                    resource_id=entry.instance_id,
                    outcome=ActionOutcome.FAILED,
                    reason=f"expected {expected}, found {entry.final_state}",
                )
            )
    return problems


def _result(entry: LedgerEntry, outcome: ActionOutcome, reason: str) -> ActionResult:
    return ActionResult(
        action="stop",
        account_id=entry.account_id,
        region=entry.region,
        resource_id=entry.instance_id,
        outcome=outcome,
        reason=reason,
    )


def _target_error(target: Target, error: str | None) -> TargetResult:
    return TargetResult(account_id=target.account_id, region=target.region, status=TargetStatus.ERROR, error=error)


def open_windows(ctx: RunContext, window_id: str | None) -> list[WindowRecord]:
    ledger = Ledger(ctx.store)
    if window_id is not None:
        record = ledger.window(window_id)
        if record is None:
            raise UsageError(f"no scan window {window_id} in the state store (see `fleetwarden window status`)")
        return [record]
    return [w for w in ledger.windows() if w.status in ("opening", "open")]


def close_window(ctx: RunContext, options: CloseOptions) -> RunReport:
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow="window-close", dry_run=not options.apply, started_at=now)
    # Registers how to reach each configured account; one whose credentials act elsewhere is not closed here.
    refused = {r.account_id: r.error for r in verify_accounts(resolve_accounts(ctx.config, ctx.factory), ctx.factory)}
    ledger = Ledger(ctx.store)
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    windows = open_windows(ctx, options.window_id)
    closed = []
    for window in windows:
        if window.status == "closed":
            report.summary.setdefault("already_closed", []).append(window.window_id)
            continue
        if options.collect_findings and options.apply:
            from .inspect import collect_findings

            report.findings += collect_findings(ctx, window, ledger.entries(window.window_id), report)
        by_target: dict[Target, list[LedgerEntry]] = defaultdict(list)
        for entry in ledger.entries(window.window_id):
            by_target[entry.target].append(entry)
        attempts = ledger.start_attempts(window)
        failed_targets = 0
        unverified = 0

        def work(
            target: Target,
            groups: dict[Target, list[LedgerEntry]] = by_target,
            attempts: dict[str, ActionOutcome] = attempts,
        ) -> list[ActionResult]:
            return _close_target(ctx, ledger, target, groups[target], exceptions, options.apply, attempts)

        for target in [t for t in by_target if t.account_id in refused]:
            failed_targets += 1
            report.targets.append(_target_error(target, refused[target.account_id]))
        reachable = [t for t in by_target if t.account_id not in refused]
        for outcome in fan_out(reachable, work, max_concurrency=ctx.config.aws.max_concurrency, label="closing"):
            target = outcome.key
            if outcome.value is None:
                failed_targets += 1
                report.targets.append(_target_error(target, outcome.error))
            else:
                report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
                report.actions += outcome.value
                unverified += sum(
                    1 for a in outcome.value if a.outcome == ActionOutcome.FAILED and a.action in ("stop", "verify")
                )
        if options.apply and (failed_targets or unverified):
            report.summary.setdefault("left_open", []).append(window.window_id)
        if options.apply and failed_targets == 0 and unverified == 0:
            # Only a close whose instances are verified stopped releases the locks and marks the window closed;
            # otherwise it stays open, and the next close (or the state machine's retry) finishes it.
            for account_id, region in window.targets:
                ledger.unlock(Target(account_id, region), window.window_id)
            window.status = "closed"
            window.closed_at = ctx.clock().isoformat()
            window.closed_by = ctx.run_id
            ledger.save_window(window)
            closed.append(window.window_id)
    report.summary.update(
        {
            "windows": [w.window_id for w in windows],
            "closed": closed,
            "stopped": sum(1 for a in report.actions if a.action == "stop" and a.outcome == ActionOutcome.DONE),
            "not_in_expected_state": sum(1 for a in report.actions if a.action == "verify"),
        }
    )
    report.finished_at = ctx.clock()
    return report
