"""`fleetwarden guard run`: evaluate the runaway triggers per account and org-wide; halt tripped accounts.

Dry run: triggers evaluated and shown, the halt planned; nothing recorded, nothing sent. With --apply: halt
(stop everything, suspend Auto Scaling processes), lock IAM users out reversibly, record the trip (it latches
until `guard release`), notify on change only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError

from ...actions.iam_lockout import IamLockout
from ...actions.quarantine import KINDS as QUARANTINE_KINDS
from ...aws.fanout import fan_out
from ...aws.targets import error_text, resolve_targets
from ...checks.runaway import Evaluation, RunawayCheck, Trigger, count_trigger, org_trigger, spend_triggers
from ...collect.ec2 import iter_instances
from ...collect.spend import SpendSourceError, measure_spend, normalize_source
from ...collect.spend.prices import RegionTable, TableInfo, describe_tables
from ...model import (
    ActionOutcome,
    ActionResult,
    ExceptionKind,
    ExceptionSet,
    Finding,
    Instance,
    RunReport,
    Target,
    TargetResult,
    TargetStatus,
)
from ...reconcile import reconcile
from ...sinks import Notification, deliver
from ..base import RunContext
from ..window.ledger import Ledger
from .halt import WORKFLOW, Halter
from .state import TripState, finish_org_trip, load_org_trip, load_states, org_pending, save_state

log = logging.getLogger(__name__)
ACTIVE_STATES = ("pending", "running")


@dataclass
class GuardOptions:
    apply: bool = False
    break_lease: bool = False  # take over a guard lease another run holds (an operator's decision, journaled)
    # An org-run's phases (docs/deploy.md, "The guard's two phases"). "count": per-account triggers only, the
    # organization-wide limit is left to guard-org-check, findings are left to aggregate. "halt": every account of
    # the run trips on `org_trip` (the org check's figures) and is halted; nothing else is evaluated.
    phase: Literal["all", "count", "halt"] = "all"
    org_trip: Trigger | None = None


def _inventory(ctx: RunContext, target: Target) -> list[Instance]:
    client = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
    return list(iter_instances(client, target.account_id, target.region, states=ACTIVE_STATES))


def run_guard(ctx: RunContext, options: GuardOptions) -> RunReport:
    """Count, evaluate, halt. With --apply, an account's trip is latched in the state store BEFORE its first halt
    call, so a run that dies mid-halt leaves a trip the next run finishes and `guard release` undoes (see
    docs/crash-safety.md)."""
    config = ctx.config
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=not options.apply, started_at=now)
    plan = resolve_targets(config, ctx.factory)
    report.targets += plan.errors
    accounts = [a.account_id for a in plan.accounts]
    states = load_states(ctx.store)
    # An account whose release began and did not finish is left as it is: re-halting it would undo part of what
    # the operator asked to restore. It is reported until `guard release` completes (docs/crash-safety.md).
    releasing = {a for a in accounts if a in states and states[a].tripped and states[a].releasing}
    for account_id in sorted(releasing):
        report.targets.append(
            TargetResult(
                account_id=account_id,
                region="global",
                status=TargetStatus.ERROR,
                error=f"the guard release of this account (run {states[account_id].releasing}) did not finish: "
                "it is neither halted nor released by this run; run `fleetwarden guard release --apply` again",
            )
        )
    accounts = [a for a in accounts if a not in releasing]
    plan.targets = [t for t in plan.targets if t.account_id not in releasing]
    latched = {a for a in accounts if a in states and states[a].tripped}
    # Accounts an organization-wide trip latched (an org-run's org check) and that are not latched on their own
    # yet: they trip on the recorded figures, as the org-run's halt phase would have tripped them.
    org_record = load_org_trip(ctx.store)
    org_due: dict[str, Trigger] = {}
    if org_record is not None:
        org_due = {a: org_record.trigger() for a in org_pending(org_record, states, accounts)}
    if options.phase == "halt" and options.org_trip is not None:
        for account_id in accounts:
            if account_id not in latched:
                org_due.setdefault(account_id, options.org_trip)
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    halter = Halter(ctx, exceptions, apply=options.apply, break_lease=options.break_lease)
    # Instances an open scan window started are not counted (they go back to stopped when it closes).
    in_window = Ledger(ctx.store).started_instance_ids()
    inventory: dict[Target, list[Instance]] = {}
    running: dict[str, int] = defaultdict(int)
    halting: set[str] = set()
    lockouts: set[str] = set()

    def start_halt(account_id: str, triggers: list[Trigger]) -> None:
        if account_id in halting or not halter.claim(account_id):
            return
        halting.add(account_id)
        if options.apply and account_id not in latched:
            # The latch comes first: whatever happens to this process from here on, the trip is on record.
            _latch(ctx, states, account_id, triggers, since=now)
        state = states.get(account_id)
        if state is None or not state.tripped or not state.lockout_done:
            lockouts.add(account_id)
            halter.submit_lockout(account_id, lambda: _lockout(ctx, account_id, exceptions, apply=options.apply))
        if config.guard.quarantine.enabled:
            from .contain import quarantine

            halter.submit_account(account_id, "quarantine", lambda: quarantine(ctx, account_id, apply=options.apply))
        for target, instances in inventory.items():
            if target.account_id == account_id:
                halter.submit(target, instances)

    evaluation = Evaluation()
    newly: list[str] = []
    price_info: TableInfo | None = None
    try:
        # Each region is halted as soon as its inventory arrives once its account is known to be tripped:
        # latched from an earlier run, or already over its count limit with the regions seen so far.
        for outcome in fan_out(
            plan.targets, lambda t: _inventory(ctx, t), max_concurrency=config.aws.max_concurrency, label="counting"
        ):
            target = outcome.key
            if outcome.value is None:
                report.targets.append(
                    TargetResult(
                        account_id=target.account_id,
                        region=target.region,
                        status=TargetStatus.ERROR,
                        error=outcome.error,
                    )
                )
                continue
            report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
            inventory[target] = outcome.value
            running[target.account_id] += sum(1 for i in outcome.value if i.id not in in_window)
            if target.account_id in halting:
                halter.submit(target, outcome.value)
                continue
            trigger = (
                None
                if options.phase == "halt"
                else count_trigger(config, target.account_id, running[target.account_id])
            )
            due = org_due.get(target.account_id)
            if target.account_id in latched or trigger is not None or due is not None:
                start_halt(target.account_id, [t for t in (trigger, due) if t is not None])

        if options.phase == "halt":
            evaluation = Evaluation(running={a: running.get(a, 0) for a in accounts})
            for account_id in accounts:
                evaluation.add(account_id, org_due.get(account_id) or options.org_trip)
        else:
            prices = _price_tables(ctx)
            evaluation = _evaluate(ctx, report, accounts, inventory, running, org=options.phase == "all", prices=prices)
            if prices is not None:
                price_info = describe_tables(prices[0], now, problem=prices[1], price_file=prices[2])
            for account_id, due in sorted(org_due.items()):
                if not any(t.kind == "org-count" for t in evaluation.triggers.get(account_id, [])):
                    evaluation.add(account_id, due)
        for account_id in sorted(evaluation.tripped | latched):
            start_halt(account_id, evaluation.triggers.get(account_id, []))
        unlisted: dict[str, dict[str, int]] = {}
        if halting:
            from .contain import sweep_unlisted_regions

            # An attacker's favourite: the regions the config does not list. A tripped account is halted in every
            # region it has enabled.
            listed: dict[str, set[str]] = defaultdict(set)
            for target in [*plan.targets, *(Target(t.account_id, t.region) for t in plan.errors)]:
                listed[target.account_id].add(target.region)
            claimed = sorted(a for a in halting if a in halter.claimed)
            unlisted, sweep_errors = sweep_unlisted_regions(ctx, halter, claimed, listed)
            report.targets += sweep_errors
        report.actions += halter.wait()
        for account_id, why in halter.refused.items():
            report.targets.append(
                TargetResult(account_id=account_id, region="global", status=TargetStatus.ERROR, error=why)
            )
        # New trips of this run, and trips an earlier run latched but died before announcing: both are told as new.
        unannounced = {a for a in latched & halter.claimed if not states[a].notified}
        newly = sorted({a for a in evaluation.tripped if a not in latched and a in halter.claimed} | unannounced)
        # In an org-run's phases the findings are reconciled once, by aggregate, with the org trigger added.
        report.findings = _findings(ctx, evaluation, apply=options.apply and options.phase == "all")
        if options.apply:
            _record(ctx, states, evaluation, report, halter.claimed, lockouts)
            if org_record is not None and not org_record.finished_at:
                finish_org_trip(ctx.store, ctx.clock())
    finally:
        halter.release_leases()

    report.summary = _summary(report, evaluation, latched, newly, exceptions)
    if price_info is not None:
        # Which price table burn-rate used and how old it is (docs/guard.md "Output"): printed as `prices: ...`.
        report.summary["price_table"] = price_info.as_dict()
        report.summary["prices"] = price_info.line
    if unlisted:
        report.summary["unlisted_regions"] = {
            a: {r: n for r, n in sorted(regions.items())} for a, regions in sorted(unlisted.items())
        }
    if options.apply and config.guard.notify and _worth_telling(report, newly, latched):
        from .notify import guard_notification

        recorded = {a: [str(t.get("text", "")) for t in s.triggers] for a, s in states.items() if s.tripped}
        triggers = {a: [t.describe() for t in ts] for a, ts in evaluation.triggers.items()}
        notification: Notification = guard_notification(
            report, triggers, evaluation.running, newly, latched - set(newly), recorded
        )
        report.deliveries = deliver(config.guard.notify, config.sinks, notification, report, ctx.sink_context)
        if newly and not any(d.outcome == "failed" for d in report.deliveries):
            _mark_notified(ctx, states, newly)
    if options.apply and options.phase == "all":
        # After the trip notice (it sets report.deliveries; the heartbeat adds to them). Not in an org-run's
        # phases: a count shard has not seen the organization-wide check, so "all quiet" could precede a trip.
        from .heartbeat import maybe_heartbeat

        maybe_heartbeat(ctx, report, ctx.clock())
    report.finished_at = ctx.clock()
    return report


def _latch(
    ctx: RunContext, states: dict[str, TripState], account_id: str, triggers: list[Trigger], *, since: datetime
) -> None:
    """Record the trip before the halt starts. `since` is the run's start, so release finds every journal entry
    of the halt; `lockout_done` stays false until a lockout of this trip has completed without a failure."""
    previous = states.get(account_id)
    state = TripState(
        account_id=account_id,
        tripped=True,
        since=since.isoformat(),
        run_id=ctx.run_id,
        scope=_scope(triggers),
        triggers=[t.as_dict() for t in triggers],
        lockout_done=False,
        notified=False,
        version=previous.version if previous else None,
    )
    states[account_id] = save_state(ctx.store, state)


def _mark_notified(ctx: RunContext, states: dict[str, TripState], accounts: list[str]) -> None:
    for account_id in accounts:
        state = states.get(account_id)
        if state is not None and state.tripped and not state.notified:
            state.notified = True
            states[account_id] = save_state(ctx.store, state)


def _scope(triggers: list[Trigger]) -> str:
    return "org" if triggers and all(t.kind == "org-count" for t in triggers) else "account"


def _evaluate(
    ctx: RunContext,
    report: RunReport,
    accounts: list[str],
    inventory: dict[Target, list[Instance]],
    running: dict[str, int],
    *,
    org: bool = True,
    prices: PriceTables | None = None,
) -> Evaluation:
    """The triggers of each account; `org=False` (an org-run's count phase): the organization-wide limit is not
    evaluated here, where only a shard's accounts are counted."""
    config = ctx.config
    evaluation = Evaluation()
    for account_id in accounts:
        evaluation.running[account_id] = running.get(account_id, 0)
        evaluation.add(account_id, count_trigger(config, account_id, running.get(account_id, 0)))
    org_trip = org_trigger(config, running) if org else None
    if org_trip is not None:
        for account_id in accounts:
            evaluation.add(account_id, org_trip)
    spend = config.guard.spend
    if spend is None:
        return evaluation
    by_account: dict[str, list[Instance]] = defaultdict(list)
    for target, instances in inventory.items():
        by_account[target.account_id] += instances
    for spec in spend.sources:
        source = normalize_source(spec)
        try:
            readings = measure_spend(
                source,
                factory=ctx.factory,
                account_ids=accounts,
                window_hours=spend.window_hours,
                now=ctx.clock(),
                instances=by_account,
                billing=spend.billing_account,
                price_tables=prices[0] if prices else None,
                price_tables_problem=prices[1] if prices else None,
            )
        except SpendSourceError as exc:
            # A source that cannot be read is reported (exit 4), never taken as zero spend.
            report.targets.append(
                TargetResult(account_id="*", region="global", status=TargetStatus.ERROR, error=f"spend source: {exc}")
            )
            readings = dict(exc.readings)  # the accounts that could be read still count
        for account_id, reading in readings.items():
            evaluation.spend.setdefault(account_id, []).append((reading.source, reading.usd, reading.detail))
    for account_id, figures in evaluation.spend.items():
        for trigger in spend_triggers(config, account_id, figures):
            evaluation.add(account_id, trigger)
    return evaluation


# The stored Price List tables by region, why some could not be read, and the burn-rate source's price_file.
PriceTables = tuple[dict[str, RegionTable], str | None, str | None]


def _price_tables(ctx: RunContext) -> PriceTables | None:
    """The Price List tables `prices refresh --apply` stored, when a burn-rate source will price the inventory.
    A store that cannot be read gives none and a reason: burn-rate then prices from the shipped table."""
    spend = ctx.config.guard.spend
    if spend is None:
        return None
    burn = [s for s in map(normalize_source, spend.sources) if s.type == "burn-rate"]
    if not burn:
        return None
    from ..prices import stored_tables

    tables, problem = stored_tables(ctx.store)
    return tables, problem, burn[0].price_file


def price_summary(ctx: RunContext) -> dict[str, object]:
    """`price_table` and `prices` for a summary rebuilt after the run (an org-run's aggregate: the shards' own
    would be added up), from the same store; empty when no burn-rate source prices the inventory."""
    prices = _price_tables(ctx)
    if prices is None:
        return {}
    info = describe_tables(prices[0], ctx.clock(), problem=prices[1], price_file=prices[2])
    return {"price_table": info.as_dict(), "prices": info.line}


def _lockout(ctx: RunContext, account_id: str, exceptions: ExceptionSet, *, apply: bool) -> list[ActionResult]:
    lockout_cfg = ctx.config.guard.lockout
    if lockout_cfg.mode == "off":
        return []
    self_arn, problem = _self_arn(ctx, account_id)
    if self_arn is None:
        # Never lock out where the acting principal is unknown: it could be locked out itself, and then neither
        # `guard release` nor the next run could act. The account is reported (exit 4); the next run retries.
        log.warning("lockout of %s skipped: %s", account_id, problem)
        return [_lockout_failed(account_id, f"not locked out: {problem}")]
    client = ctx.factory.client("iam", region=ctx.config.aws.sts_region, account_id=account_id)
    lockout = IamLockout(
        client,
        account_id=account_id,
        run_id=ctx.run_id,
        workflow=WORKFLOW,
        journal=ctx.store.journal,
        clock=ctx.clock,
        mode=lockout_cfg.mode,
        exempt_users=lockout_cfg.exempt_users,
        exempt_roles=lockout_cfg.exempt_roles,
        revoke_role_sessions=lockout_cfg.revoke_role_sessions,
        self_arn=self_arn,
        exceptions=exceptions,
    )
    try:
        return lockout.lock() if apply else lockout.plan()
    except (ClientError, BotoCoreError) as exc:  # e.g. ListUsers denied: reported, the other accounts go on
        log.warning("lockout of %s failed: %s", account_id, error_text(exc))
        return [_lockout_failed(account_id, error_text(exc))]


def _lockout_failed(account_id: str, reason: str) -> ActionResult:
    return ActionResult(
        action="lockout",
        account_id=account_id,
        region="global",
        resource_id=account_id,
        outcome=ActionOutcome.FAILED,
        reason=reason,
    )


def _self_arn(ctx: RunContext, account_id: str) -> tuple[str | None, str]:
    """The principal fleetwarden acts as in this account (the assumed role, or the base identity), or None and
    why it cannot be told."""
    try:
        sts = ctx.factory.client("sts", region=ctx.config.aws.sts_region, account_id=account_id)
        identity = sts.get_caller_identity()
    except (ClientError, BotoCoreError) as exc:
        return None, f"cannot tell which principal fleetwarden runs as ({error_text(exc)})"
    arn, acting_account = str(identity.get("Arn", "")), str(identity.get("Account", ""))
    if not arn:
        return None, "GetCallerIdentity returned no principal ARN"
    if acting_account != account_id:
        return None, f"the credentials for this account act in account {acting_account or '?'} ({arn})"
    return arn, ""


def _findings(ctx: RunContext, evaluation: Evaluation, *, apply: bool) -> list[Finding]:
    now = ctx.clock()
    current = {a: RunawayCheck.finding(a, t, now) for a, t in evaluation.triggers.items() if t}
    if not apply:
        return list(current.values())
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    findings: list[Finding] = []
    for account_id in evaluation.running:
        previous = ctx.store.load_findings("runaway", account_id, "global")
        findings += reconcile(previous, [current[account_id]] if account_id in current else [], now, exceptions)
    ctx.store.save_findings(findings)
    return findings


def _record(
    ctx: RunContext,
    states: dict[str, TripState],
    evaluation: Evaluation,
    report: RunReport,
    claimed: set[str],
    lockouts: set[str],
) -> None:
    """After the halt: the full triggers of each trip this run latched, and `lockout_done` once a lockout of the
    trip finished with no failure (otherwise the next run locks out again)."""
    for account_id in sorted(claimed):
        state = states.get(account_id)
        if state is None or not state.tripped:
            continue
        changed = False
        if state.run_id == ctx.run_id and evaluation.triggers.get(account_id):
            triggers: list[Trigger] = evaluation.triggers[account_id]
            state.triggers = [t.as_dict() for t in triggers]
            state.scope = _scope(triggers)
            changed = True
        if account_id in lockouts and not state.lockout_done:
            failed = any(
                a.account_id == account_id
                and a.region == "global"
                and a.action not in QUARANTINE_KINDS
                and a.outcome == ActionOutcome.FAILED
                for a in report.actions
            )
            if not failed:
                state.lockout_done = True
                changed = True
        if changed:
            states[account_id] = save_state(ctx.store, state)


def _worth_telling(report: RunReport, newly: list[str], latched: set[str]) -> bool:
    """Notify only on change: a new trip, a latched account that had to be halted again, or a failure."""
    if newly:
        return True
    acted = any(a.outcome == ActionOutcome.DONE and a.account_id in latched for a in report.actions)
    failed = any(a.outcome == ActionOutcome.FAILED for a in report.actions) or any(
        t.status == TargetStatus.ERROR for t in report.targets
    )
    return acted or failed


def _summary(
    report: RunReport, evaluation: Evaluation, latched: set[str], newly: list[str], exceptions: ExceptionSet
) -> dict[str, object]:
    return guard_summary(
        report,
        broad=_broad_exceptions(exceptions),
        running=evaluation.running,
        spend={a: {source: round(usd, 2) for source, usd, _ in readings} for a, readings in evaluation.spend.items()},
        triggers={a: [t.describe() for t in ts] for a, ts in evaluation.triggers.items() if ts},
        tripped=evaluation.tripped | latched,
        newly=newly,
        latched=latched,
    )


def guard_summary(
    report: RunReport,
    *,
    broad: list[str],
    running: dict[str, int],
    spend: dict[str, dict[str, float]],
    triggers: dict[str, list[str]],
    tripped: set[str],
    newly: list[str],
    latched: set[str],
) -> dict[str, object]:
    """The guard's summary (also rebuilt by an org-run's aggregate from its phases' fragments)."""
    outcomes: dict[str, int] = defaultdict(int)
    for action in report.actions:
        outcomes[f"{action.action}:{action.outcome.value}"] += 1
    by_exception: dict[str, int] = defaultdict(int)
    for action in report.actions:
        if action.outcome == ActionOutcome.SKIPPED:
            kind = next((k for k in _EXCEPTION_KINDS if action.reason.startswith(k)), None)
            if kind:
                by_exception[kind] += 1
    return {
        "skipped_by_exceptions": dict(sorted(by_exception.items())),
        "broad_exceptions": broad,
        "running_by_account": dict(sorted(running.items())),
        "spend_by_account": dict(sorted(spend.items())),
        "tripped": sorted(tripped),
        "newly_tripped": sorted(newly),
        "latched": sorted(latched),
        "triggers": {a: ts for a, ts in sorted(triggers.items()) if ts},
        "actions": dict(sorted(outcomes.items())),
        "targets_error": sum(1 for t in report.targets if t.status == TargetStatus.ERROR),
    }


_EXCEPTION_KINDS = ("do-not-stop", "do-not-terminate", "lockout-exempt")


def _broad_exceptions(exceptions: ExceptionSet) -> list[str]:
    """Warnings for active exceptions that exempt a whole account (or more) from the halt or the lockout."""
    kinds = {ExceptionKind.DO_NOT_STOP, ExceptionKind.DO_NOT_TERMINATE, ExceptionKind.LOCKOUT_EXEMPT}
    warnings = [
        f"{rule.kind.value} exception {rule.id} covers {rule.breadth} ({rule.reason or 'no reason'})"
        for rule in exceptions.broad(kinds)
    ]
    for warning in warnings:
        log.warning("guard: %s", warning)
    return warnings
