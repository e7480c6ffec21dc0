"""What the user sees of a run: files (run.json, findings.csv, report.html), the console summary and the
plain-text summary that notifications carry."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .model import Finding, RunReport
from .report.compliance_map import related_requirements
from .report.html import ReportContext, render_html
from .report.stats import (
    ACTIVE_STATUSES,
    clean,
    compact_json,
    compute_stats,
    counts_text,
    finding_problems,
    format_duration,
    format_time,
    plural,
    sort_findings,
    summary_items,
)

RUN_JSON = "run.json"
FINDINGS_CSV = "findings.csv"
FINDINGS_OCSF = "findings.ocsf.jsonl"
REPORT_HTML = "report.html"

CSV_COLUMNS = (
    "id",
    "check",
    "status",
    "severity",
    "account_id",
    "region",
    "resource_id",
    "control",
    "title",
    "first_seen",
    "last_seen",
    "details",
    "compliance",  # related FSBP / CIS controls (report/compliance_map.py), "; "-separated
)
CONSOLE_MAX_FINDINGS = 50
TEXT_MAX_VIOLATORS = 20
SUBJECT_MAX = 99  # SNS refuses subjects of 100 characters or more

_SEVERITY_STYLE = {
    "CRITICAL": "bold white on red",
    "HIGH": "bold red",
    "MEDIUM": "yellow",
    "LOW": "cyan",
    "INFORMATIONAL": "dim",
}
_STATUS_STYLE = {"new": "bold", "ongoing": "", "suppressed": "dim", "resolved": "green"}
_OUTCOME_STYLE = {"planned": "cyan", "done": "green", "skipped": "dim", "failed": "bold red", "sent": "green"}

log = logging.getLogger(__name__)


# -- files ------------------------------------------------------------------------------------------------
# A spreadsheet (Excel, LibreOffice, Google Sheets) evaluates a cell that starts with one of these as a formula
# (OWASP "CSV injection"): `=`, `+`, `-`, `@`, tab, carriage return, and the full-width forms some of them also
# accept. Leading whitespace does not hide them: applications trim it before deciding.
FORMULA_TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
CSV_NEUTRALISER = "'"


def csv_cell(value: object) -> object:
    """One CSV cell made inert for spreadsheets: text whose first non-blank character would start a formula
    gets a leading `'` (OWASP's rule), so `=HYPERLINK(...)` arrives as the text `'=HYPERLINK(...)`.

    Real numbers (`int`/`float`, never text that looks like one) stay numbers, so `-3` stays numeric; `None`
    is the empty cell. Everything else is written as its `str()`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return value
    text = str(value)
    if text[:1] in FORMULA_TRIGGERS or text.lstrip()[:1] in FORMULA_TRIGGERS:
        return CSV_NEUTRALISER + text
    return text


class SafeCsvWriter:
    """A `csv.writer` whose every cell goes through `csv_cell`: the only way fleetwarden writes CSV."""

    def __init__(self, buffer: io.StringIO, **kwargs: Any) -> None:
        self._writer = csv.writer(buffer, **kwargs)

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_bytes(header: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    """A whole CSV file (UTF-8, CRLF line ends, a header row) with every cell neutralised by `csv_cell`."""
    buffer = io.StringIO(newline="")
    writer = SafeCsvWriter(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def findings_csv(findings: Iterable[Finding]) -> bytes:
    """The findings as CSV (UTF-8, a header row, one row per finding; `details` is compact JSON); cells that
    a spreadsheet would run as formulas are neutralised (see `csv_cell`)."""
    return csv_bytes(
        CSV_COLUMNS,
        (
            (
                f.id,
                f.check,
                f.status.value,
                f.severity.value,
                f.account_id,
                f.region,
                f.resource_id,
                f.control,
                f.title,
                f.first_seen.isoformat(),
                f.last_seen.isoformat(),
                compact_json(f.details),
                "; ".join(related_requirements(f)),
            )
            for f in findings
        ),
    )


def write_file(path: Path, data: bytes) -> Path:
    # Write beside the target and rename, so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_outputs(
    report: RunReport,
    output_dir: Path,
    redact: Callable[[str], str] | None = None,
    context: ReportContext | None = None,
) -> list[Path]:
    """Write run.json, findings.csv, findings.ocsf.jsonl (OCSF Detection Findings) and report.html into
    `output_dir` (created if needed); return the paths. `redact` (e.g. `SecretResolver.redact`) is applied to
    each file's whole text before it is written, a last net behind the redaction of each error at its source.
    `context` gives the HTML page account names and the state store's history (report_context())."""
    from .report.ocsf import ocsf_lines

    def text(data: str) -> bytes:
        return (redact(data) if redact is not None else data).encode("utf-8")

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ordered = sort_findings(report.findings)
    return [
        write_file(output_dir / RUN_JSON, text(report.to_json())),
        write_file(output_dir / FINDINGS_CSV, text(findings_csv(ordered).decode("utf-8"))),
        write_file(
            output_dir / FINDINGS_OCSF,
            text(ocsf_lines(ordered, report.finished_at or report.started_at).decode("utf-8")),
        ),
        write_file(output_dir / REPORT_HTML, text(render_html(report, context=context))),
    ]


def report_context(report: RunReport, config: Any, store: Any, days: int = 14) -> ReportContext:
    """Account names from the config, and new/resolved findings per day of the report's checks from the state
    store (a store that cannot be read gives no trend, never a failed run)."""
    from .report.charts import trend_days

    names = {a.id: a.name for a in getattr(config, "accounts", []) if getattr(a, "name", None)}
    checks = sorted({f.check for f in report.findings})
    try:
        stored = [f for check in checks for f in store.list_findings(check=check)]
    except Exception:  # the trend is an extra: the report is written without it
        log.warning("the state store's history could not be read; the report has no trend chart", exc_info=True)
        return ReportContext(names, None)
    today = (report.finished_at or report.started_at).date()
    return ReportContext(names, trend_days(stored, today, days))


# -- plain text (notifications) ---------------------------------------------------------------------------
def _mode(report: RunReport) -> str:
    return "dry run" if report.dry_run else "applied"


def summary_subject(report: RunReport) -> str:
    """A one-line subject, e.g. `fleetwarden audit: 12 violators (3 new) in 3 accounts [dry run]` (< 100 chars)."""
    stats = compute_stats(report)
    noun = "violator" if report.workflow == "audit" else "open finding"
    if stats.violators:
        head = f"{plural(stats.violators, noun)} ({stats.new} new) in {plural(stats.violator_accounts, 'account')}"
    else:
        head = f"no {noun}s"
    if stats.targets_error:
        head += f", {plural(stats.targets_error, 'target')} failed"
    tail = f" [{_mode(report)}]"
    prefix = f"fleetwarden {clean(report.workflow)}: "
    subject = " ".join(f"{prefix}{head}".split())
    room = SUBJECT_MAX - len(tail)
    if len(subject) > room:
        subject = subject[: room - 1].rstrip() + "…"
    return subject + tail


def summary_text(report: RunReport, max_violators: int = TEXT_MAX_VIOLATORS) -> str:
    """The plain-text body of a notification: mode, counts, errored targets and the first violators."""
    stats = compute_stats(report)
    lines = [
        f"fleetwarden {clean(report.workflow)} — run {clean(report.run_id)}",
        "Mode: dry run (nothing was changed)" if report.dry_run else "Mode: applied (changes were made)",
        f"Started: {format_time(report.started_at)}"
        + (
            f"  Finished: {format_time(report.finished_at)} ({format_duration(report.started_at, report.finished_at)})"
            if report.finished_at is not None
            else ""
        ),
        "",
        f"Targets: {stats.targets_total} ({counts_text(stats.targets_by_status)})"
        f" across {plural(stats.accounts, 'account')} and {plural(stats.regions, 'region')}",
        f"Findings: {stats.findings_total} ({counts_text(stats.findings_by_status)})",
        f"Open findings by severity: {counts_text(stats.active_by_severity)}",
        f"Actions: {len(report.actions)}" + (f" ({counts_text(stats.actions_by_outcome)})" if report.actions else ""),
    ]
    lines += [f"{clean(key).capitalize()}: {clean(value)}" for key, value in summary_items(report)]

    errored = [t for t in report.targets if t.status.value == "error"]
    if errored:
        lines += ["", f"Targets in error ({len(errored)}):"]
        lines += [f"  {t.account_id} {t.region}: {clean(t.error or 'unknown error')}" for t in errored]

    failed = [a for a in report.actions if a.outcome.value == "failed"]
    if failed:
        lines += ["", f"Failed actions ({len(failed)}):"]
        lines += [
            f"  {a.action} {a.account_id} {a.region} {clean(a.resource_id)}: {clean(a.reason)}"
            for a in failed[:max_violators]
        ]
        if len(failed) > max_violators:
            lines.append(f"  ... and {len(failed) - max_violators} more")

    active = sort_findings(f for f in report.findings if f.status in ACTIVE_STATUSES)
    if active:
        shown = active[:max_violators]
        label = "Violators" if report.workflow == "audit" else "Open findings"
        more = f", first {len(shown)} of {len(active)}" if len(active) > len(shown) else ""
        lines += ["", f"{label} ({len(active)}{more}):"]
        for f in shown:
            problem = finding_problems(f) or f.title
            lines.append(
                f"  [{f.status.value}] {f.severity.value} {f.account_id} {f.region} {clean(f.resource_id)}: "
                f"{clean(problem)}"
            )
        if len(active) > len(shown):
            lines.append(f"  ... and {len(active) - len(shown)} more (see findings.csv or run.json)")
    resolved = stats.findings_by_status.get("resolved", 0)
    if resolved:
        lines += ["", f"Resolved since the last run: {resolved}"]
    return "\n".join(lines) + "\n"


# -- console ----------------------------------------------------------------------------------------------
def _cell(value: object, style: str = "") -> Text:
    # Text, not a markup string: a tag value such as "[bold]x" must print as itself.
    return Text(clean(value), style=style)


def print_report(
    report: RunReport,
    console: Console,
    *,
    max_findings: int = CONSOLE_MAX_FINDINGS,
    output_dir: Path | None = None,
) -> None:
    """Print a readable summary of a run: targets, findings (capped), actions, deliveries and a summary line."""
    stats = compute_stats(report)
    mode = "[bold yellow]DRY RUN[/] (nothing changed)" if report.dry_run else "[bold red]APPLIED[/]"
    header = Text.assemble(
        ("fleetwarden ", "bold"),
        (clean(report.workflow), "bold"),
        f"  run {clean(report.run_id)}  ",
        f"{format_time(report.started_at)} ({format_duration(report.started_at, report.finished_at)})  ",
    )
    header.append_text(Text.from_markup(mode))
    console.print(header)

    if report.targets:
        targets = Table(title=f"Targets ({counts_text(stats.targets_by_status)})", title_justify="left")
        for column in ("account", "region", "status", "error"):
            targets.add_column(column, overflow="fold")
        # Healthy targets are summarised per account when there are many; errors are always listed.
        ordered = sorted(report.targets, key=lambda t: (t.status.value != "error", t.account_id, t.region))
        listed = [t for t in ordered if t.status.value != "ok"] if len(ordered) > 20 else ordered
        for t in listed:
            style = "bold red" if t.status.value == "error" else ("green" if t.status.value == "ok" else "dim")
            targets.add_row(_cell(t.account_id), _cell(t.region), _cell(t.status.value, style), _cell(t.error or ""))
        if len(listed) < len(ordered):
            targets.caption = f"{len(ordered) - len(listed)} targets ok, not listed"
        if targets.row_count:
            console.print(targets)
        else:
            console.print(f"Targets: {stats.targets_total} ok")

    if report.findings:
        findings = sort_findings(report.findings)
        shown = findings[:max_findings]
        table = Table(title=f"Findings ({counts_text(stats.findings_by_status)})", title_justify="left")
        for column in ("status", "severity", "account", "region", "resource", "title", "missing / invalid keys"):
            table.add_column(column, overflow="fold")
        for f in shown:
            table.add_row(
                _cell(f.status.value, _STATUS_STYLE.get(f.status.value, "")),
                _cell(f.severity.value, _SEVERITY_STYLE.get(f.severity.value, "")),
                _cell(f.account_id),
                _cell(f.region),
                _cell(f.resource_id),
                _cell(f.title),
                _cell(finding_problems(f, reasons=False)),
            )
        if len(findings) > len(shown):
            where = (
                f"the full list is in {output_dir / FINDINGS_CSV}"
                if output_dir is not None
                else "use --output-dir DIR (findings.csv) or --json for the full list"
            )
            table.caption = f"... and {len(findings) - len(shown)} more findings: {where}"
        console.print(table)

    if report.actions:
        actions = Table(title=f"Actions ({counts_text(stats.actions_by_outcome)})", title_justify="left")
        for column in ("action", "account", "region", "resource", "outcome", "reason"):
            actions.add_column(column, overflow="fold")
        # Failures first, then the rest in order; a large halt or plan is capped like the findings.
        action_rows = sorted(report.actions, key=lambda a: a.outcome.value != "failed")
        shown_actions = action_rows[:max_findings]
        for a in shown_actions:
            actions.add_row(
                _cell(a.action),
                _cell(a.account_id),
                _cell(a.region),
                _cell(a.resource_id),
                _cell(a.outcome.value, _OUTCOME_STYLE.get(a.outcome.value, "")),
                _cell(a.reason),
            )
        if len(action_rows) > len(shown_actions):
            where = (
                f"every action is in {output_dir / RUN_JSON}"
                if output_dir is not None
                else "use --output-dir DIR (run.json) or --json for all of them"
            )
            actions.caption = f"... and {len(action_rows) - len(shown_actions)} more actions: {where}"
        console.print(actions)

    if report.deliveries:
        deliveries = Table(title="Deliveries", title_justify="left")
        for column in ("sink", "outcome", "error"):
            deliveries.add_column(column, overflow="fold")
        for d in report.deliveries:
            deliveries.add_row(_cell(d.sink), _cell(d.outcome, _OUTCOME_STYLE.get(d.outcome, "")), _cell(d.error or ""))
        console.print(deliveries)

    line = Text.assemble(
        ("Summary: ", "bold"),
        f"{stats.targets_ok}/{stats.targets_total} targets ok",
        (f", {stats.targets_error} in error" if stats.targets_error else "", "bold red"),
        f"; {plural(stats.violators, 'open finding')} ({stats.new} new)",
        f"; {plural(len(report.actions), 'action')}",
        f" ({counts_text(stats.actions_by_outcome)})" if report.actions else "",
    )
    for key, value in summary_items(report):
        console.print(Text.assemble((f"{clean(key)}: ", "bold"), clean(value)))
    failed = stats.deliveries_by_outcome.get("failed", 0)
    if failed:
        line.append(f"; {plural(failed, 'delivery', 'deliveries')} failed", style="bold red")
    line.append(f" [{_mode(report)}]")
    console.print(line)
