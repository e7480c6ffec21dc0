"""Renders a RunReport as one self-contained HTML page made for triage (docs/reports.md "report.html"): inline CSS,
inline SVG charts and one small inline script (sorting, filtering, search) over a page that reads in full with
scripts off; no external asset, every value escaped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from ..model import ActionResult, Finding, RunReport, TargetResult, TargetStatus
from .charts import Bar, TrendDay, bar_chart, trend_chart
from .stats import (
    ACTIVE_STATUSES,
    SEVERITIES,
    clean,
    compact_json,
    compute_stats,
    counts_text,
    finding_problems,
    format_duration,
    format_time,
    sort_findings,
    summary_items,
)

TEMPLATE = "report.html.j2"
HTML_MAX_FINDINGS = 10_000  # past this the page gets slow to open; findings.csv has every row
GRID_ABOVE_TARGETS = 20  # more targets than this: an account x region grid instead of one row per target
CHART_ACCOUNTS = 15


@dataclass(frozen=True)
class ReportContext:
    """What the page shows beyond the RunReport: account names from the config, and the history of new and
    resolved findings from the state store (None: no store at hand, no trend chart)."""

    account_names: dict[str, str] = field(default_factory=dict)
    history: Sequence[TrendDay] | None = None


def template_environment() -> Environment:
    """The package's report templates, every value escaped, with the report filters."""
    # autoescape=True, not select_autoescape(): the template's name ends in .j2, which select_autoescape
    # would not recognise as HTML. Every value from AWS (tag values, error messages) is escaped.
    env = Environment(
        loader=PackageLoader("fleetwarden", "report/templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = format_time
    env.filters["json"] = compact_json
    env.filters["problems"] = finding_problems
    env.filters["counts"] = counts_text
    env.filters["clean"] = clean
    env.filters["readable"] = readable
    return env


def readable(value: Any) -> str:
    """A value as a person reads it: lists joined, mappings as `key: value`, times as times, no Python reprs."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | tuple | set):
        return ", ".join(readable(v) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {readable(v)}" for k, v in value.items()) or "—"
    return clean(value)


def _label(account_id: str, names: dict[str, str]) -> str:
    name = names.get(account_id)
    return f"{account_id} ({name})" if name else account_id


def _charts(report: RunReport, names: dict[str, str], history: Sequence[TrendDay] | None) -> dict[str, Any]:
    active = [f for f in report.findings if f.status in ACTIVE_STATUSES]
    severity = Counter(f.severity.value for f in active)
    by_check = Counter(f.check for f in active)
    by_account = Counter(f.account_id for f in active)
    return {
        "severity": bar_chart(
            "chart-severity",
            "Open findings by severity",
            [Bar(s.value, severity[s.value], f"sev-{s.value}") for s in SEVERITIES if severity[s.value]],
        ),
        "check": bar_chart("chart-check", "Open findings by check", [Bar(c, n) for c, n in by_check.most_common()]),
        "account": bar_chart(
            "chart-account",
            "Open findings by account",
            [Bar(_label(a, names), n) for a, n in by_account.most_common(CHART_ACCOUNTS)],
        ),
        "accounts_hidden": max(0, len(by_account) - CHART_ACCOUNTS),
        "trend": trend_chart("chart-trend", history) if history is not None else None,
    }


def _grid(targets: Sequence[TargetResult], findings: Sequence[Finding]) -> dict[str, Any] | None:
    """Accounts x regions when there are many targets: accounts with an error first, then by open findings."""
    if len(targets) <= GRID_ABOVE_TARGETS:
        return None
    regions = sorted({t.region for t in targets})
    open_count = Counter((f.account_id, f.region) for f in findings if f.status in ACTIVE_STATUSES)
    cells: dict[str, dict[str, TargetResult]] = {}
    for t in targets:
        cells.setdefault(t.account_id, {})[t.region] = t
    errors = {a for a, row in cells.items() if any(t.status == TargetStatus.ERROR for t in row.values())}
    totals = {a: sum(open_count[(a, r)] for r in regions) for a in cells}
    accounts = sorted(cells, key=lambda a: (a not in errors, -totals[a], a))
    return {"regions": regions, "accounts": accounts, "cells": cells, "open": open_count, "errors": errors}


# Lockouts (the riskiest actions) and whatever failed come first; then the rest by kind.
_RISK = ("lockout", "deactivate", "delete", "terminate", "revoke", "quarantine")


def _action_groups(actions: Sequence[ActionResult]) -> list[tuple[str, list[ActionResult]]]:
    groups: dict[str, list[ActionResult]] = {}
    for action in actions:
        groups.setdefault(action.action, []).append(action)

    def rank(item: tuple[str, list[ActionResult]]) -> tuple[int, int, str]:
        kind, rows = item
        failed = any(a.outcome.value == "failed" for a in rows)
        risky = any(word in kind for word in _RISK)
        return (not failed, not risky, kind)

    ordered = sorted(groups.items(), key=rank)
    return [(kind, sorted(rows, key=lambda a: (a.outcome.value != "failed", a.account_id, a.resource_id)))
            for kind, rows in ordered]  # fmt: skip


def render_html(
    report: RunReport, max_findings: int = HTML_MAX_FINDINGS, *, context: ReportContext | None = None
) -> str:
    """The report as an HTML page: header, summary, charts, targets, findings (sortable, filterable), actions
    grouped by kind, deliveries, errors."""
    context = context or ReportContext()
    findings = sort_findings(report.findings)
    shown = findings[:max_findings]
    return (
        template_environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            stats=compute_stats(report),
            findings=shown,
            findings_hidden=max(0, len(findings) - max_findings),
            show_problems=any(finding_problems(f) for f in shown),
            checks=sorted({f.check for f in shown}),
            accounts=sorted({f.account_id for f in shown}),
            names=context.account_names,
            account_label=lambda a: _label(a, context.account_names),
            charts=_charts(report, context.account_names, context.history),
            grid=_grid(report.targets, report.findings),
            action_groups=_action_groups(report.actions),
            errored=[t for t in report.targets if t.status.value == "error"],
            duration=format_duration(report.started_at, report.finished_at),
            summary_items=summary_items(report),
            severities=[s.value for s in SEVERITIES],
        )
    )
