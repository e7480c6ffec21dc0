"""Renders a RunReport as one self-contained HTML page (inline CSS, no scripts, no external assets)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined

from ..model import RunReport
from .stats import (
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


def _environment() -> Environment:
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
    return env


def render_html(report: RunReport, max_findings: int = HTML_MAX_FINDINGS) -> str:
    """The report as an HTML page: header, summary cards, per-place table, findings, actions, deliveries, errors."""
    findings = sort_findings(report.findings)
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            stats=compute_stats(report),
            findings=findings[:max_findings],
            findings_hidden=max(0, len(findings) - max_findings),
            errored=[t for t in report.targets if t.status.value == "error"],
            duration=format_duration(report.started_at, report.finished_at),
            summary_items=summary_items(report),
        )
    )
