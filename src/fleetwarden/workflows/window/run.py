"""`fleetwarden window run` and `window status`: open, settle, wait for Inspector, collect findings, close.

Close always happens, whatever went wrong in between.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...model import RunReport, TargetStatus
from ..base import RunContext
from .close import CloseOptions, close_window, open_windows
from .inspect import coverage_state, deadline, wait_for_coverage
from .ledger import Ledger
from .open import OpenOptions, open_window

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    apply: bool = False


def run_window(ctx: RunContext, options: RunOptions) -> RunReport:
    opened = open_window(ctx, OpenOptions(apply=options.apply))
    window_id = opened.summary.get("window_id")
    if not options.apply or window_id is None:
        return opened
    coverage: dict[str, Any] = {}
    try:
        settle = ctx.config.window.settle_minutes * 60
        if settle > 0:
            ctx.sleep(settle)
        ledger = Ledger(ctx.store)
        window = ledger.window(str(window_id))
        if window is not None and ctx.config.window.wait_for_inspector:
            state = wait_for_coverage(ctx, window, ledger.entries(window.window_id))
            coverage = {
                "scanned": sorted(state.scanned),
                "not_scanned": sorted(state.pending),
                "errors": state.errors,
                "complete": state.complete,
            }
    finally:
        closed = close_window(ctx, CloseOptions(apply=True, window_id=str(window_id), collect_findings=True))
    report = opened.model_copy(deep=True)
    report.workflow = "window-run"
    # One row per target: a close that failed there outranks an open that went well.
    merged = {(t.account_id, t.region): t for t in report.targets}
    for target in closed.targets:
        key = (target.account_id, target.region)
        if key not in merged or target.status != TargetStatus.OK:
            merged[key] = target
    report.targets = sorted(merged.values(), key=lambda t: (t.account_id, t.region))
    report.actions += closed.actions
    report.findings = closed.findings
    report.deliveries = closed.deliveries
    report.summary = {**opened.summary, "close": closed.summary, "coverage": coverage}
    report.finished_at = ctx.clock()
    return report


def window_status(ctx: RunContext, window_id: str | None = None, *, check_coverage: bool = False) -> dict[str, Any]:
    """Open windows (or one window) and their instances; with check_coverage, whether Inspector is done."""
    ledger = Ledger(ctx.store)
    windows = open_windows(ctx, window_id)
    out: list[dict[str, Any]] = []
    for window in windows:
        entries = ledger.entries(window.window_id)
        attempts = ledger.start_attempts(window)
        instances = []
        for entry in entries:
            data = entry.data()
            if entry.start == "planned":
                # An open that died around its start call: what the journal knows (see docs/crash-safety.md).
                attempt = attempts.get(entry.instance_id)
                data["start"] = f"planned ({'may have started' if attempt else 'no start call made'})"
            instances.append(data)
        item: dict[str, Any] = {**window.data(), "instances": instances}
        if check_coverage and window.status != "closed":
            from ...aws.targets import resolve_accounts

            resolve_accounts(ctx.config, ctx.factory)
            state = coverage_state(ctx, window, entries)
            timed_out = ctx.clock() >= deadline(ctx, window)
            item["coverage"] = {
                "scanned": sorted(state.scanned),
                "pending": sorted(state.pending),
                "errors": state.errors,
            }
            item["complete"] = state.complete or timed_out
            item["timed_out"] = timed_out and not state.complete
        out.append(item)
    return {"windows": out, "complete": all(w.get("complete", True) for w in out)}
