"""The guard's organization-wide count limit in an org-run: the org check between the two Distributed Maps, and what
the final aggregate adds to the merged report (docs/deploy.md, "The guard's two phases").

Phase 1 (count): each shard runs `guard` with `phase: count` (per-account triggers, halted at once; `running` per
account in its fragment). Phase 2 (`org_check` here): the shards' `running` added up; over the limit, one org trip
is latched in the state store BEFORE any halt, and the halt items are written. Phase 3 (halt): each shard runs
`guard` with `phase: halt` on the accounts not yet tripped. Then `aggregate` calls `aggregate_guard`: one report,
the org trigger added where phase 1 had already tripped, findings reconciled once, one notification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ...checks.runaway import RunawayCheck, Trigger
from ...model import ExceptionSet, Finding, RunReport, TargetResult, TargetStatus
from ...reconcile import reconcile
from ...sinks import deliver
from ..base import RunContext
from ..shards import FragmentStoreError, RunFiles, get_json, put_json
from .state import OrgTrip, VersionConflict, finish_org_trip, latch_org_trip, load_states, save_state

log = logging.getLogger(__name__)

ORG_CHECK_FILE = "org-check.json"
HALT_ITEMS_FILE = "halt-items.json"
HALT_DIR = "halt"


def halt_key(files: RunFiles, shard: int) -> str:
    return files.key(HALT_DIR, f"{shard:05d}.json")


def run_apply(ctx: RunContext, listing: dict[str, Any]) -> bool:
    """Whether the org-run acts: the listed event's `apply`, else the config's (as each shard decided)."""
    event = listing.get("event") or {}
    apply = event.get("apply")
    return bool(apply) if apply is not None else ctx.config.apply


@dataclass
class OrgCheck:
    """What the org check found: the total (a lower bound when a shard did not report), and the halt to do."""

    limit: int
    total: int = 0
    lower_bound: bool = False
    tripped: bool = False
    missing: list[int] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # to latch and halt: the accounts phase 1 did not trip
    halt: list[dict[str, Any]] = field(default_factory=list)  # per shard: {"shard": N, "accounts": [...]}
    latched: bool = False
    bucket: str = ""
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "total": self.total,
            "lower_bound": self.lower_bound,
            "tripped": self.tripped,
            "missing": self.missing,
            "accounts": self.accounts,
            "halt": self.halt,
            "latched": self.latched,
        }


def read_listing(ctx: RunContext, files: RunFiles) -> dict[str, Any]:
    from ..shards import SHARDS_FILE

    listing = get_json(ctx.factory, files, files.key(SHARDS_FILE), ctx.config.aws.sts_region)
    if not isinstance(listing, dict) or not isinstance(listing.get("shards"), list):
        raise FragmentStoreError(f"{files.uri(files.key(SHARDS_FILE))} is missing or not a shard list")
    return listing


def org_check(ctx: RunContext, files: RunFiles) -> OrgCheck:
    """Phase 2: add up the count shards' `running`. Over `guard.max_running_instances_org`, latch one org trip in
    the state store (with --apply) before anything else, then write the halt items (`halt-items.json`, for the
    second Distributed Map) and `org-check.json` (for the halt shards and aggregate)."""
    region = ctx.config.aws.sts_region
    listing = read_listing(ctx, files)
    limit = ctx.config.guard.max_running_instances_org
    if limit is None:
        raise FragmentStoreError("guard.max_running_instances_org is not set: there is no organization-wide count")
    check = OrgCheck(limit=limit)
    running: dict[str, int] = {}
    tripped: set[str] = set()
    items: list[dict[str, Any]] = listing["shards"]
    for item in items:
        index = int(item["shard"])
        fragment = get_json(ctx.factory, files, files.fragment_key(index), region)
        report = fragment.get("report") if isinstance(fragment, dict) else None
        if not isinstance(report, dict):
            check.missing.append(index)  # never read as zero: the total becomes a lower bound
            continue
        summary = report.get("summary") or {}
        running.update({str(a): int(n) for a, n in dict(summary.get("running_by_account") or {}).items()})
        tripped.update(str(a) for a in summary.get("tripped") or [])
    check.total = sum(running.values())
    check.lower_bound = bool(check.missing)
    if check.total > limit:
        check.tripped = True
        for item in items:
            due = [a for a in item["accounts"] if a not in tripped]
            if due:
                check.halt.append({"shard": int(item["shard"]), "accounts": due})
                check.accounts += due
        if run_apply(ctx, listing):
            # The trip is on record before any halt: a run killed from here on leaves it to the next guard run.
            trip = OrgTrip(
                total=check.total,
                limit=limit,
                run_id=files.run_id,
                since=ctx.clock().isoformat(),
                accounts=sorted(check.accounts),
                lower_bound=check.lower_bound,
            )
            latch_org_trip(ctx.store, trip)
            check.latched = True
        halt_items = [
            {
                **{k: v for k, v in items_by_shard(items)[h["shard"]].items() if k != "max_actions"},
                "accounts": h["accounts"],
                "phase": "halt",
            }
            for h in check.halt
        ]
        check.key = files.key(HALT_ITEMS_FILE)
        check.bucket = files.bucket
        put_json(ctx.factory, files, check.key, halt_items, region)
    put_json(ctx.factory, files, files.key(ORG_CHECK_FILE), check.to_dict(), region)
    log.info(
        "org check of run %s: %d running%s, limit %d: %s",
        files.run_id,
        check.total,
        " (lower bound)" if check.lower_bound else "",
        limit,
        f"tripped, {len(check.accounts)} account(s) to halt" if check.tripped else "not tripped",
    )
    return check


def items_by_shard(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(item["shard"]): item for item in items}


def read_org_check(ctx: RunContext, files: RunFiles) -> dict[str, Any] | None:
    found = get_json(ctx.factory, files, files.key(ORG_CHECK_FILE), ctx.config.aws.sts_region)
    return found if isinstance(found, dict) else None


# -- aggregate --------------------------------------------------------------------------------------------
@dataclass
class GuardPhases:
    """What aggregate_guard saw of the org check and the halt shards."""

    codes: list[int] = field(default_factory=list)
    halt_expected: int = 0
    halt_reported: list[int] = field(default_factory=list)
    halt_missing: list[int] = field(default_factory=list)
    shard_errors: list[dict[str, Any]] = field(default_factory=list)
    org: dict[str, Any] | None = None


def aggregate_guard(ctx: RunContext, files: RunFiles, listing: dict[str, Any], report: RunReport) -> GuardPhases:
    """The guard's part of aggregate, on the merged count fragments (`report`): the halt fragments merged in, the
    org trigger added to the accounts phase 1 had tripped, findings reconciled once, the summary rebuilt, one
    notification (shards send none)."""
    from .run import _mark_notified, _worth_telling, guard_summary

    phases = GuardPhases()
    apply = run_apply(ctx, listing)
    org_checked = bool(listing.get("org_check"))
    first = dict(report.summary)
    halts: list[RunReport] = []
    if org_checked:
        phases.org = read_org_check(ctx, files)
        if phases.org is None:
            report.targets.append(
                TargetResult(
                    account_id="*",
                    region="global",
                    status=TargetStatus.ERROR,
                    error=f"the organization-wide count of run {files.run_id} was not checked (guard-org-check did "
                    "not complete): guard.max_running_instances_org was not enforced by this run",
                )
            )
        elif phases.org.get("tripped"):
            halts = _halt_fragments(ctx, files, phases.org, report, phases)
    for halt in halts:
        _merge_halt(report, halt)
    if org_checked:
        _org_findings(ctx, report, first, halts, phases.org, apply=apply)
    triggers = {
        f.account_id: [str(t.get("text", "")) for t in f.details.get("triggers", [])]
        for f in report.findings
        if f.status.value in ("new", "ongoing", "suppressed") and f.details.get("triggers")
    }
    if not org_checked:
        triggers = {str(a): list(ts) for a, ts in dict(first.get("triggers") or {}).items()}
    newly = _union(first, halts, "newly_tripped")
    latched = _union(first, halts, "latched")
    running = {str(a): int(n) for a, n in dict(first.get("running_by_account") or {}).items()}
    report.summary = guard_summary(
        report,
        broad=list(dict.fromkeys(str(b) for b in first.get("broad_exceptions") or [])),
        running=running,
        spend=dict(first.get("spend_by_account") or {}),
        triggers=triggers,
        tripped=set(triggers) | _union(first, halts, "tripped") | latched,
        newly=sorted(newly),
        latched=latched,
    )
    if "price_table" in first:
        from .run import price_summary

        report.summary.update(price_summary(ctx))  # the shards' would be merged key by key (ages added up)
    if phases.org is not None:
        report.summary["org_check"] = {
            k: phases.org.get(k) for k in ("total", "limit", "lower_bound", "tripped", "latched")
        }
    if apply:
        states = load_states(ctx.store)
        if phases.org is not None and phases.org.get("tripped"):
            _record_org_trigger(ctx, files, states, report)
            finish_org_trip(ctx.store, ctx.clock())
        if ctx.config.guard.notify and _worth_telling(report, sorted(newly), latched):
            from .notify import guard_notification

            counted = {**{a: n for h in halts for a, n in _running(h).items()}, **running}
            recorded = {a: [str(t.get("text", "")) for t in s.triggers] for a, s in states.items() if s.tripped}
            notification = guard_notification(report, triggers, counted, sorted(newly), latched - newly, recorded)
            report.deliveries += deliver(
                ctx.config.guard.notify, ctx.config.sinks, notification, report, ctx.sink_context
            )
            if newly and not any(d.outcome == "failed" for d in report.deliveries):
                _mark_notified(ctx, states, sorted(newly))
    return phases


def _running(report: RunReport) -> dict[str, int]:
    return {str(a): int(n) for a, n in dict(report.summary.get("running_by_account") or {}).items()}


def _union(first: dict[str, Any], halts: list[RunReport], key: str) -> set[str]:
    return {str(a) for a in first.get(key) or []} | {str(a) for h in halts for a in h.summary.get(key) or []}


def _halt_fragments(
    ctx: RunContext, files: RunFiles, org: dict[str, Any], report: RunReport, phases: GuardPhases
) -> list[RunReport]:
    """The halt shards' fragments; one that never reported makes its accounts error targets (exit 4): the org
    trip is latched, and the next guard run halts them."""
    halts: list[RunReport] = []
    for planned in org.get("halt") or []:
        index = int(planned["shard"])
        phases.halt_expected += 1
        fragment = get_json(ctx.factory, files, halt_key(files, index), ctx.config.aws.sts_region)
        if not isinstance(fragment, dict):
            phases.halt_missing.append(index)
            report.targets += [
                TargetResult(
                    account_id=a,
                    region="*",
                    status=TargetStatus.ERROR,
                    error=f"halt shard {index} of run {files.run_id} did not report: the organization-wide trip "
                    "is on record and the next guard run halts this account",
                )
                for a in planned.get("accounts", [])
            ]
            continue
        phases.halt_reported.append(index)
        phases.codes.append(int(fragment.get("exit_code", 1)))
        if fragment.get("status") in ("error", "refused"):
            phases.shard_errors.append(
                {"shard": index, "phase": "halt", "status": fragment["status"], "error": fragment.get("error", "")}
            )
        if fragment.get("report") is not None:
            halts.append(RunReport.model_validate(fragment["report"]))
    return halts


def _merge_halt(report: RunReport, halt: RunReport) -> None:
    """A halt fragment into the merged report: its actions and findings; of its targets only the errors (the count
    phase already reported each target once), which replace the count phase's `ok` for that place."""
    places = {(t.account_id, t.region): n for n, t in enumerate(report.targets)}
    for target in halt.targets:
        if target.status != TargetStatus.ERROR:
            continue
        at = places.get((target.account_id, target.region))
        if at is None:
            places[(target.account_id, target.region)] = len(report.targets)
            report.targets.append(target)
        elif report.targets[at].status != TargetStatus.ERROR:
            report.targets[at] = target
    report.targets.sort(key=lambda t: (t.account_id, t.region))
    report.actions += halt.actions
    report.findings += halt.findings
    report.deliveries += halt.deliveries


def _org_findings(
    ctx: RunContext,
    report: RunReport,
    first: dict[str, Any],
    halts: list[RunReport],
    org: dict[str, Any] | None,
    *,
    apply: bool,
) -> None:
    """The phases' findings are this run's current ones (the shards save none): the org trigger is added to the
    accounts phase 1 had tripped (a one-process guard gives every account the org trigger), then, with --apply,
    each evaluated account's finding is reconciled with the stored one, once."""
    now = ctx.clock()
    current = {f.account_id: f for f in report.findings if f.check == "runaway"}
    if org is not None and org.get("tripped"):
        trigger = Trigger("org-count", int(org["total"]), int(org["limit"]))
        for account_id in sorted({str(a) for a in first.get("tripped") or []}):
            current[account_id] = _with_org(current.get(account_id), account_id, trigger, now)
    others = [f for f in report.findings if f.check != "runaway"]
    if not apply:
        report.findings = sorted([*others, *current.values()], key=lambda f: (f.account_id, f.region))
        return
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    evaluated = set(_running_of(first)) | {a for h in halts for a in _running(h)}
    findings: list[Finding] = []
    for account_id in sorted(evaluated | set(current)):
        previous = ctx.store.load_findings("runaway", account_id, "global")
        findings += reconcile(previous, [current[account_id]] if account_id in current else [], now, exceptions)
    ctx.store.save_findings(findings)
    report.findings = sorted([*others, *findings], key=lambda f: (f.account_id, f.region))


def _running_of(summary: dict[str, Any]) -> dict[str, int]:
    return {str(a): int(n) for a, n in dict(summary.get("running_by_account") or {}).items()}


def _with_org(finding: Finding | None, account_id: str, org: Trigger, now: Any) -> Finding:
    """The account's finding with the org trigger in the place a one-process run gives it (after the count)."""
    triggers = [_trigger(t) for t in (finding.details.get("triggers", []) if finding else [])]
    if any(t.kind == "org-count" for t in triggers):
        return finding if finding is not None else RunawayCheck.finding(account_id, [org], now)
    counts = sum(1 for t in triggers if t.kind == "count")
    triggers.insert(counts, org)
    return RunawayCheck.finding(account_id, triggers, now)


def _trigger(data: dict[str, Any]) -> Trigger:
    return Trigger(
        kind=str(data.get("kind", "")),
        value=data.get("value", 0),
        limit=data.get("limit", 0),
        source=data.get("source"),
        detail=str(data.get("detail", "")),
    )


def _record_org_trigger(ctx: RunContext, files: RunFiles, states: dict[str, Any], report: RunReport) -> None:
    """The trips this org-run latched in its count phase also carry the org trigger, as a one-process run's do."""
    by_account = {f.account_id: f for f in report.findings if f.check == "runaway"}
    for account_id, state in sorted(states.items()):
        if not state.tripped or not str(state.run_id or "").startswith(f"{files.run_id}."):
            continue
        finding = by_account.get(account_id)
        triggers = list(finding.details.get("triggers", [])) if finding else []
        if not triggers or triggers == state.triggers:
            continue
        state.triggers = triggers
        state.scope = "org" if all(t.get("kind") == "org-count" for t in triggers) else "account"
        try:
            states[account_id] = save_state(ctx.store, state)
        except VersionConflict:  # a release or another run changed it meanwhile: theirs stands
            log.info("trip of %s changed meanwhile; its triggers are left as they are", account_id)


__all__ = ["GuardPhases", "OrgCheck", "aggregate_guard", "halt_key", "org_check", "read_org_check"]
