"""`fleetwarden guard release`: restore exactly what the journal says the guard changed in one account.

Keys that were Active become Active again (and only those), the deny policies come off, the Auto Scaling
processes the halt suspended resume, and with --start-instances the instances the guard stopped start again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ...actions.asg import AsgProcesses
from ...actions.ec2 import Ec2Actions
from ...actions.iam_lockout import IamLockout
from ...aws.targets import resolve_accounts, verify_accounts
from ...errors import UsageError
from ...model import ActionOutcome, ActionResult, JournalEntry, RunReport
from ...sinks import deliver
from ..base import RunContext
from .halt import WORKFLOW
from .notify import release_notification
from .state import TripState, load_states, save_state


@dataclass
class ReleaseOptions:
    account_id: str
    apply: bool = False
    start_instances: bool = False
    break_lease: bool = False


def guard_status(ctx: RunContext) -> list[TripState]:
    """Every account the guard has a record of, tripped ones first."""
    return sorted(load_states(ctx.store).values(), key=lambda s: (not s.tripped, s.account_id))


def _trip_entries(ctx: RunContext, state: TripState) -> list[JournalEntry]:
    since = state.since_dt
    entries = ctx.store.list_journal(account_id=state.account_id, workflow=WORKFLOW)
    return [e for e in entries if since is None or e.at >= since]


def release_guard(ctx: RunContext, options: ReleaseOptions) -> RunReport:
    account_id = options.account_id
    report = RunReport(run_id=ctx.run_id, workflow="guard-release", dry_run=not options.apply, started_at=ctx.clock())
    state = load_states(ctx.store).get(account_id)
    if state is None or not state.tripped:
        report.summary = {"account_id": account_id, "released": False, "reason": "the account is not tripped"}
        report.finished_at = ctx.clock()
        return report
    accounts = [a for a in resolve_accounts(ctx.config, ctx.factory) if a.account_id == account_id]
    if not accounts:
        raise UsageError(f"account {account_id} is not among the configured targets; cannot reach it to release")
    for problem in verify_accounts(accounts, ctx.factory):
        raise UsageError(f"account {account_id}: {problem.error}; nothing was released")
    with ctx.account_leases(WORKFLOW, [account_id], break_lease=options.break_lease):
        if options.apply:
            # Intent first: a release that dies part-way is on record, so guard runs do not re-halt what it had
            # begun to restore, and `guard status` shows it unfinished until a release completes.
            state.releasing = ctx.run_id
            save_state(ctx.store, state)
        entries = _trip_entries(ctx, state)
        # A change still `planned` in the journal may have happened (the run died around the call): it is undone
        # like a done one, after checking the current state (starting a running instance changes nothing).
        done = [e for e in entries if e.outcome in (ActionOutcome.DONE, ActionOutcome.PLANNED)]
        report.actions = _restore(ctx, account_id, entries, done, options.start_instances, apply=options.apply)
        if options.apply:
            state.tripped = False
            state.releasing = None
            state.released_at = ctx.clock().isoformat()
            state.released_by = ctx.run_id
            save_state(ctx.store, state)
    report.summary = {
        "account_id": account_id,
        "released": options.apply,
        "tripped_since": state.since,
        "journal_entries": len(entries),
        "restored": sum(1 for a in report.actions if a.outcome == ActionOutcome.DONE),
        "failed": sum(1 for a in report.actions if a.outcome == ActionOutcome.FAILED),
    }
    if options.apply and ctx.config.guard.notify:
        notification = release_notification(report, account_id)
        report.deliveries = deliver(ctx.config.guard.notify, ctx.config.sinks, notification, report, ctx.sink_context)
    report.finished_at = ctx.clock()
    return report


def _restore(
    ctx: RunContext,
    account_id: str,
    entries: list[JournalEntry],
    done: list[JournalEntry],
    start_instances: bool,
    *,
    apply: bool,
) -> list[ActionResult]:
    """Undo the trip's journaled changes (or, in a dry run, list what would be undone)."""
    results: list[ActionResult] = []
    iam = ctx.factory.client("iam", region=ctx.config.aws.sts_region, account_id=account_id)
    lockout = IamLockout(
        iam, account_id=account_id, run_id=ctx.run_id, workflow=WORKFLOW, journal=ctx.store.journal, clock=ctx.clock
    )
    results += lockout.release(entries) if apply else lockout.plan_release(entries)
    from .contain import release_quarantine

    # Before the stops are undone: the account leaves quarantine exactly as the journal says it entered it.
    results += release_quarantine(ctx, account_id, entries, apply=apply)
    by_region: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in entries:
        by_region[entry.region].append(entry)
    for region, region_entries in sorted(by_region.items()):
        if region == "global":
            continue
        autoscaling = ctx.factory.client("autoscaling", region=region, account_id=account_id)
        processes = AsgProcesses(
            autoscaling,
            account_id=account_id,
            region=region,
            run_id=ctx.run_id,
            workflow=WORKFLOW,
            journal=ctx.store.journal,
            clock=ctx.clock,
        )
        results += processes.resume(region_entries) if apply else processes.plan_resume(region_entries)
        stopped = sorted({e.resource_id for e in done if e.region == region and e.action == "stop"})
        ec2 = ctx.factory.client("ec2", region=region, account_id=account_id)
        actions = Ec2Actions(
            ec2,
            account_id=account_id,
            region=region,
            run_id=ctx.run_id,
            workflow=WORKFLOW,
            journal=ctx.store.journal,
            journal_many=ctx.store.journal_many,
            clock=ctx.clock,
        )
        if start_instances and stopped and not apply:
            results += [
                ActionResult(
                    action="start",
                    account_id=account_id,
                    region=region,
                    resource_id=instance_id,
                    outcome=ActionOutcome.PLANNED,
                    reason="dry run: use --apply to restore",
                )
                for instance_id in stopped
            ]
        elif start_instances and stopped:
            results += actions.start(stopped, reason=f"fleetwarden guard release {ctx.run_id}")
        # Stop protection the halt cleared is set again: the account ends as it was before the trip.
        results += actions.restore_protection(region_entries, apply=apply)
    return results
