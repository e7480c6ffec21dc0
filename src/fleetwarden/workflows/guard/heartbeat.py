"""The guard's heartbeat: an "all quiet" message at most once per period, so that silence is never taken for safety.

`maybe_heartbeat(ctx, report, now)` is called at the end of an applied guard run. It sends through the heartbeat's
sinks (`guard.heartbeat.sinks`, else `guard.notify`) when the heartbeat is enabled, the run tripped nothing and
the last heartbeat is at least `every_hours` old: the accounts and regions checked, the running instances per
account (the top N and the total) against their limits, spend if it was measured, the targets that could not be
checked (a partial run says so in the subject and lists them) and when the last trip began.

A shard of an org-run (a run narrowed to some accounts) keeps its own record and says in its message that it
covers only its part: one shard's heartbeat must not use up the period of the others.

It is a message, not a mutation: nothing is journaled. Like the trip notice's `notified` flag, the last heartbeat
is a record in the state store, written with `expected_version` BEFORE the message goes out, so that of two guard
runs at the same time only the one whose write wins sends. A run that fails every delivery puts the previous
record back (the next run tries again); a run killed between the write and the send skips that period's
heartbeat (the next one is due a period later).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from ...aws.targets import Scope, current_scope
from ...checks.runaway import limits_for
from ...model import RunReport, TargetStatus
from ...sinks import Notification, deliver
from ...state import VersionConflict
from ..base import RunContext
from .state import load_states

log = logging.getLogger(__name__)

KIND = "guard-heartbeat"
KEY = "last"
# At most this many failed targets are listed in the message (all are counted).
MAX_LISTED_FAILURES = 20


def maybe_heartbeat(ctx: RunContext, report: RunReport, now: datetime) -> bool:
    """Send the heartbeat if it is due for this guard run (see the module's docstring); True if it was sent to at
    least one sink. The deliveries are added to `report.deliveries` (a failed one makes the run partial)."""
    guard = ctx.config.guard
    if not guard.heartbeat.enabled or report.dry_run or report.summary.get("tripped"):
        return False
    key = heartbeat_key(current_scope())
    stored = ctx.store.get_record(KIND, key)
    previous, version = stored if stored is not None else ({}, None)
    last = _parse_time(previous.get("sent_at"))
    if last is not None and now - last < timedelta(hours=guard.heartbeat.every_hours):
        return False
    claim = {"sent_at": now.isoformat(), "run_id": ctx.run_id, "previous": previous.get("sent_at")}
    try:
        claimed = ctx.store.put_record(KIND, key, claim, expected_version=version)
    except VersionConflict:
        log.info("guard heartbeat: another guard run sent this period's heartbeat")
        return False
    deliveries = deliver(
        guard.heartbeat_sinks, ctx.config.sinks, heartbeat_notification(ctx, report), report, ctx.sink_context
    )
    report.deliveries += deliveries
    if any(d.outcome == "sent" for d in deliveries):
        return True
    # Nobody was told: put the previous record back so that the next run tries again. A conflict means another
    # run has claimed since: it sends (or restores) in turn.
    with contextlib.suppress(VersionConflict):
        ctx.store.put_record(KIND, key, previous, expected_version=claimed)
    return False


def heartbeat_key(scope: Scope | None) -> str:
    """The state record of the last heartbeat: one for the whole config, and one per shard of an org-run (its
    accounts and regions), since a shard's figures cover only its part and must not use up the period of the rest."""
    if scope is None:
        return KEY
    parts = [",".join(sorted(scope.accounts or ())), ",".join(sorted(scope.regions or ()))]
    return "shard-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def heartbeat_notification(ctx: RunContext, report: RunReport) -> Notification:
    """The "all quiet" message of a guard run that tripped nothing: its figures, and what it could not check."""
    config = ctx.config
    summary = report.summary
    running: dict[str, int] = {str(a): int(n) for a, n in dict(summary.get("running_by_account") or {}).items()}
    checked = [t for t in report.targets if t.status != TargetStatus.ERROR]
    failed = [t for t in report.targets if t.status == TargetStatus.ERROR]
    regions = sorted({t.region for t in checked})
    total = sum(running.values())
    top = sorted(running.items(), key=lambda item: (-item[1], item[0]))[: config.guard.heartbeat.top]
    lines = [
        f"fleetwarden guard run {report.run_id}: no account over its limits",
        "",
        f"Checked: {len(running)} account(s), {len(regions)} region(s) ({', '.join(regions) or 'none'})",
        f"Running+pending instances: {total} in all"
        + (
            f" (organization limit {config.guard.max_running_instances_org})"
            if config.guard.max_running_instances_org
            else ""
        ),
    ]
    for account_id, count in top:
        limit = limits_for(config, account_id).max_running
        lines.append(f"  {account_id}: {count}" + (f" of {limit}" if limit is not None else " (no limit)"))
    if len(running) > len(top):
        lines.append(f"  ... and {len(running) - len(top)} more account(s)")
    spend: dict[str, dict[str, float]] = dict(summary.get("spend_by_account") or {})
    if spend:
        lines.append("Spend (guard.spend window):")
        for account_id, readings in sorted(spend.items()):
            limit_usd = limits_for(config, account_id).max_usd
            figures = ", ".join(f"{source} ${usd:,.2f}" for source, usd in sorted(readings.items()))
            lines.append(
                f"  {account_id}: {figures}" + (f" (limit ${limit_usd:,.2f})" if limit_usd is not None else "")
            )
    else:
        lines.append("Spend: not measured (no guard.spend)" if config.guard.spend is None else "Spend: no reading")
    if summary.get("prices"):
        lines.append(f"Prices (burn-rate): {summary['prices']}")  # which table, how old, stale or not
    if failed:
        lines.append(f"NOT CHECKED: {len(failed)} target(s) failed; their accounts may be over a limit unseen:")
        lines += [f"  {t.account_id}/{t.region}: {t.error}" for t in failed[:MAX_LISTED_FAILURES]]
        if len(failed) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(failed) - MAX_LISTED_FAILURES} more")
    else:
        lines.append("Targets failed: none")
    last_trip = _last_trip(ctx)
    lines.append(f"Last trip: {last_trip}" if last_trip else "Last trip: none on record")
    scope = current_scope()
    part = f" (shard of {len(scope.accounts)} accounts)" if scope is not None and scope.accounts is not None else ""
    if part:
        lines.insert(1, f"This run is one shard of an org-run{part}: the other shards send their own heartbeats.")
    subject = (
        f"fleetwarden guard: all quiet, but {len(failed)} target(s) not checked{part}"
        if failed
        else f"fleetwarden guard: all quiet ({len(running)} accounts, {total} instances){part}"
    )
    data: dict[str, Any] = {
        "kind": "guard-heartbeat",
        "run_id": report.run_id,
        "accounts": len(running),
        "regions": regions,
        "running_total": total,
        "running_top": dict(top),
        "spend_by_account": spend,
        "targets_failed": [{"account_id": t.account_id, "region": t.region, "error": t.error} for t in failed],
        "last_trip": last_trip,
        "price_table": summary.get("price_table"),
    }
    return Notification(subject=subject[:100], text="\n".join(lines), data=data)


def _last_trip(ctx: RunContext) -> str | None:
    """When the most recent trip on record began (a latched or a released one), and in which account."""
    trips = [(s.since, s.account_id) for s in load_states(ctx.store).values() if s.since]
    if not trips:
        return None
    since, account_id = max(trips)
    return f"{since} (account {account_id})"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # a hand-edited record: treated as no heartbeat yet
        return None


__all__ = ["KIND", "heartbeat_key", "heartbeat_notification", "maybe_heartbeat"]
