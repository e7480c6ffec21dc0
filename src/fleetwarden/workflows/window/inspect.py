"""Amazon Inspector v2 during a window: wait until the window's instances are scanned, collect their findings."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError

from ...aws.targets import error_text
from ...model import ExceptionSet, Finding, RunReport, Target, TargetResult, TargetStatus
from ...reconcile import reconcile
from ..base import RunContext
from .ledger import LedgerEntry, WindowRecord

log = logging.getLogger(__name__)
POLL_SECONDS = 60


@dataclass
class CoverageState:
    """Which of a window's started instances Inspector has scanned since the window opened."""

    scanned: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)  # "account/region" -> error

    @property
    def complete(self) -> bool:
        return not self.pending and not self.errors


def _started_by_target(entries: list[LedgerEntry]) -> dict[Target, list[str]]:
    out: dict[Target, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.start == "done":
            out[entry.target].append(entry.instance_id)
    return out


def coverage_state(ctx: RunContext, window: WindowRecord, entries: list[LedgerEntry]) -> CoverageState:
    from ...collect.inspector import coverage, scanned_since

    since = datetime.fromisoformat(window.opened_at)
    state = CoverageState()
    for target, ids in _started_by_target(entries).items():
        client = ctx.factory.client("inspector2", region=target.region, account_id=target.account_id)
        try:
            found = coverage(client, ids)
        except (ClientError, BotoCoreError) as exc:
            state.errors[str(target)] = error_text(exc)
            state.pending |= set(ids)
            continue
        for instance_id in ids:
            cov = found.get(instance_id)
            (state.scanned if cov is not None and scanned_since(cov, since) else state.pending).add(instance_id)
    return state


def deadline(ctx: RunContext, window: WindowRecord) -> datetime:
    opened = datetime.fromisoformat(window.opened_at)
    return opened + timedelta(minutes=ctx.config.window.settle_minutes + ctx.config.window.timeout_minutes)


def wait_for_coverage(ctx: RunContext, window: WindowRecord, entries: list[LedgerEntry]) -> CoverageState:
    """Poll ListCoverage until every started instance shows a scan since the window opened, or the timeout."""
    until = deadline(ctx, window)
    while True:
        state = coverage_state(ctx, window, entries)
        if state.complete:
            return state
        remaining = (until - ctx.clock()).total_seconds()
        if remaining <= 0:
            log.warning(
                "window %s: Inspector timeout, %d instance(s) not scanned", window.window_id, len(state.pending)
            )
            return state
        ctx.sleep(min(POLL_SECONDS, remaining))


def collect_findings(
    ctx: RunContext, window: WindowRecord, entries: list[LedgerEntry], report: RunReport
) -> list[Finding]:
    """The window's instances' Inspector v2 findings, reconciled into the store as `check: inspector`."""
    from ...collect.inspector import instance_findings

    now = ctx.clock()
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    out: list[Finding] = []
    for target, ids in sorted(_started_by_target(entries).items(), key=lambda kv: (kv[0].account_id, kv[0].region)):
        client = ctx.factory.client("inspector2", region=target.region, account_id=target.account_id)
        try:
            current = instance_findings(client, target.account_id, target.region, ids, now)
        except (ClientError, BotoCoreError) as exc:
            report.targets.append(
                TargetResult(
                    account_id=target.account_id,
                    region=target.region,
                    status=TargetStatus.ERROR,
                    error=f"Inspector findings: {error_text(exc)}",
                )
            )
            continue
        evaluated = set(ids)
        # Only the instances evaluated in this window can resolve their earlier findings.
        previous = {
            fid: f
            for fid, f in ctx.store.load_findings("inspector", target.account_id, target.region).items()
            if f.resource_id in evaluated
        }
        merged = reconcile(previous, current, now, exceptions)
        ctx.store.save_findings(merged)
        out += merged
    return out
