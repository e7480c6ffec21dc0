"""The spend report's files and messages: CSV, a self-contained HTML page, the notification text and the console
tables (docs/spend.md "Spend report"). Everything is built from the SpendReportOutput alone."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal

from markupsafe import Markup, escape
from rich.console import Console
from rich.table import Table

from ..model import RunReport
from ..output import csv_bytes
from ..outputs import SpendReportOutput
from ..sinks import Attachment, Notification
from .html import template_environment
from .stats import clean

TEMPLATE = "spend.html.j2"
CSV_COLUMNS = ("period", "date", "account_id", "account_name", "service", "usd")
TEXT_MAX_CHANGES = 10
TEXT_MAX_ACCOUNTS = 25
ONE_DAY = timedelta(days=1)


def usd(value: Decimal | None) -> str:
    """$1,234.56 (negative: -$12.00)."""
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.2f}"


def signed(value: Decimal) -> str:
    return ("+" if value > 0 else "") + usd(value)


def pct(value: Decimal | None, previous: Decimal | None = None) -> str:
    """+12%, -0.4%; `new` when there was no cost before, `n/a` when the previous figure was a credit (< 0)."""
    if value is None:
        return "n/a" if previous is not None and previous < 0 else "new"
    return f"{value:+.1f}%" if abs(value) < 10 else f"{value:+.0f}%"


def file_names(spend: SpendReportOutput) -> tuple[str, str]:
    stem = f"spend-{spend.as_of.isoformat()}"
    return f"{stem}.csv", f"{stem}.html"


CostRow = tuple[str, date, str, str, Decimal]  # period (current | previous), day, account, service, usd


def spend_csv(spend: SpendReportOutput, rows: Iterable[CostRow]) -> bytes:
    """One row per day, account and service with a cost, in the month so far (`current`) and in the previous
    period (`previous`), sorted by period, day, account and service."""
    names = {a.account_id: a.name for a in spend.accounts}
    return csv_bytes(
        CSV_COLUMNS,
        (
            (period, day.isoformat(), account, names.get(account), service, str(amount))
            for period, day, account, service, amount in sorted(rows, key=lambda r: (r[0] != "current", *r[1:4]))
        ),
    )


def _day_chart(spend: SpendReportOutput) -> Markup:
    """Columns of the fleet's cost per day (inline SVG; the values are in each column's <title>)."""
    totals: dict[str, Decimal] = {}
    for account in spend.accounts:
        for entry in account.by_day:
            totals[entry.day.isoformat()] = totals.get(entry.day.isoformat(), Decimal(0)) + entry.usd
    if not totals:
        return Markup('<p class="empty">No days in the period.</p>')
    top = max(totals.values()) or Decimal(1)
    width, height, gap = 24, 120, 4
    parts = [
        f'<svg class="chart" id="chart-days" role="img" aria-label="cost per day" '
        f'viewBox="0 0 {len(totals) * (width + gap)} {height + 20}" width="{len(totals) * (width + gap)}" '
        f'height="{height + 20}"><title>Cost per day</title>'
    ]
    for n, (day, value) in enumerate(sorted(totals.items())):
        bar = int(height * (value / top)) if top > 0 else 0
        x = n * (width + gap)
        parts.append(
            f'<g class="day" data-day="{escape(day)}" data-usd="{escape(str(value))}"><title>{escape(day)}: '
            f'{escape(usd(value))}</title><rect x="{x}" y="{height - bar}" width="{width}" height="{max(bar, 0)}">'
            f'</rect><text x="{x + width / 2}" y="{height + 14}" text-anchor="middle">{escape(day[-2:])}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def render_spend_html(spend: SpendReportOutput) -> str:
    env = template_environment()
    env.filters["usd"] = usd
    env.filters["signed"] = signed
    env.filters["pct"] = pct
    return env.get_template(TEMPLATE).render(
        spend=spend, day_chart=_day_chart(spend), last_day=spend.period.end - ONE_DAY
    )


def spend_files(spend: SpendReportOutput, rows: Iterable[CostRow]) -> dict[str, bytes]:
    csv_name, html_name = file_names(spend)
    return {csv_name: spend_csv(spend, rows), html_name: render_spend_html(spend).encode("utf-8")}


def _label(account_id: str, name: str | None) -> str:
    return f"{name} ({account_id})" if name else account_id


def spend_text(spend: SpendReportOutput) -> str:
    """The notification's plain text: totals, run rate, accounts, the largest changes."""
    p, q = spend.period, spend.previous_period
    lines = [
        f"fleetwarden spend summary for {p.start} .. {p.end - ONE_DAY} ({p.days} days, UTC), from {spend.source}",
        f"Month so far: {usd(spend.total_usd)} ({signed(spend.change_usd)} against {usd(spend.previous_total_usd)} "
        f"for {q.start} .. {q.end - ONE_DAY})",
        f"Annualised run rate: {usd(spend.run_rate_usd)} a year",
        "",
        "By account (month so far, change, run rate):",
    ]
    ranked = sorted(spend.accounts, key=lambda a: (-a.usd, a.account_id))
    for account in ranked[:TEXT_MAX_ACCOUNTS]:
        top = ", ".join(f"{s.service} {usd(s.usd)}" for s in account.by_service[:3] if s.usd)
        lines.append(
            f"- {_label(account.account_id, account.name)}: {usd(account.usd)} ({signed(account.change_usd)}), "
            f"{usd(account.run_rate_usd)}/year"
            + (f"; top: {top}" if top else "")
            + ("" if account.recorded else " (no cost recorded)")
        )
    if len(ranked) > TEXT_MAX_ACCOUNTS:
        lines.append(f"- ... and {len(ranked) - TEXT_MAX_ACCOUNTS} more accounts (see the CSV)")
    if spend.other_accounts is not None:
        lines.append(
            f"- {spend.other_accounts.accounts} other linked account(s) the config does not cover: "
            f"{usd(spend.other_accounts.usd)}"
        )
    lines += ["", "Largest changes against the same days of the previous month:"]
    if not spend.changes:
        lines.append("- none of note")
    for change in spend.changes[:TEXT_MAX_CHANGES]:
        lines.append(
            f"- {_label(change.account_id, change.name)} {change.service}: {usd(change.previous_usd)} -> "
            f"{usd(change.usd)} ({signed(change.change_usd)}, {pct(change.change_pct, change.previous_usd)})"
        )
    for note in spend.notes:
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def spend_notification(spend: SpendReportOutput, files: dict[str, bytes]) -> Notification:
    csv_name, html_name = file_names(spend)
    return Notification(
        subject=f"fleetwarden spend: {usd(spend.total_usd)} month to date, {usd(spend.run_rate_usd)}/year run rate "
        f"({spend.as_of})",
        text=spend_text(spend),
        attachments=[
            Attachment(csv_name, files[csv_name], "text/csv"),
            Attachment(html_name, files[html_name], "text/html"),
        ],
        data={"spend": spend.model_dump(mode="json", by_alias=True)},
    )


def print_spend(spend: SpendReportOutput, console: Console) -> None:
    """The console's view: accounts, then the largest changes, then the totals."""
    p = spend.period
    accounts = Table(
        title=f"Spend {p.start} .. {p.end - ONE_DAY} ({p.days} days, {spend.source})",
        title_justify="left",
    )
    for column in ("account", "month so far", "previous", "change", "run rate / year", "top service"):
        accounts.add_column(
            column, overflow="fold", justify="left" if column in ("account", "top service") else "right"
        )
    for account in sorted(spend.accounts, key=lambda a: (-a.usd, a.account_id)):
        top = account.by_service[0].service if account.by_service and account.by_service[0].usd else ""
        accounts.add_row(
            clean(_label(account.account_id, account.name)),
            usd(account.usd),
            usd(account.previous_usd),
            signed(account.change_usd),
            usd(account.run_rate_usd),
            clean(top if account.recorded else "(no cost recorded)"),
        )
    console.print(accounts)
    if spend.changes:
        changes = Table(title="Largest changes against the same days of the previous month", title_justify="left")
        for column in ("account", "service", "previous", "now", "change", "%"):
            changes.add_column(column, overflow="fold")
        for c in spend.changes:
            changes.add_row(
                clean(_label(c.account_id, c.name)),
                clean(c.service),
                usd(c.previous_usd),
                usd(c.usd),
                signed(c.change_usd),
                pct(c.change_pct, c.previous_usd),
            )
        console.print(changes)
    console.print(
        f"[bold]Total:[/] {usd(spend.total_usd)} month so far ({signed(spend.change_usd)} against "
        f"{usd(spend.previous_total_usd)}); run rate {usd(spend.run_rate_usd)} a year"
    )
    if spend.other_accounts is not None:
        console.print(
            f"{spend.other_accounts.accounts} other linked account(s) not covered by the config: "
            f"{usd(spend.other_accounts.usd)} (not in the totals)"
        )
    for note in spend.notes:
        console.print(f"[yellow]note:[/] {clean(note)}")


def print_outcome(report: RunReport, console: Console) -> None:
    """After the figures: a failed read, where the report went (or would go), and the mode."""
    for target in report.targets:
        if target.status.value == "error":
            console.print(f"[bold red]error:[/] cost data for {clean(target.account_id)}: {clean(target.error or '')}")
    for delivery in report.deliveries:
        style = {"sent": "green", "failed": "bold red"}.get(delivery.outcome, "dim")
        reason = f": {clean(delivery.error)}" if delivery.error else ""
        console.print(f"delivery to {clean(delivery.sink)}: [{style}]{delivery.outcome}[/]{reason}")
    if report.summary.get("delivery"):
        console.print(clean(str(report.summary["delivery"])))
    mode = "[bold yellow]dry run[/] (nothing sent)" if report.dry_run else "[bold red]applied[/]"
    console.print(f"fleetwarden spend report run {clean(report.run_id)} [{mode}]")
