"""The daily spend summary (`fleetwarden spend report`, the Lambda's `spend-report` event; docs/spend.md).

Cost by day and by service per account for the month so far (UTC days before `as_of`), the month's annualised run
rate, and the largest changes against the same days of the previous month, from one Cost Explorer query in the
payer account. With --apply it goes to `spend_report.notify` (text, with the CSV and the HTML page attached), once
per sink per day: a sink that already got the day's report is skipped unless `resend`. All money is Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from ..collect.spend.base import BillingClients, SpendSourceError
from ..collect.spend.daily import DailyCosts, read_daily_costs, read_daily_costs_cur
from ..model import Delivery, RunReport, TargetResult, TargetStatus
from ..outputs import (
    SpendAccountOutput,
    SpendChangeOutput,
    SpendDayOutput,
    SpendOtherOutput,
    SpendPeriodOutput,
    SpendReportOutput,
    SpendServiceOutput,
)
from .base import RunContext

WORKFLOW = "spend-report"
RECORD_KIND = "spend-report"  # one record per as_of day: which sinks got that day's report
CENT = Decimal("0.01")
DAYS_PER_YEAR = 365


@dataclass(frozen=True)
class SpendReportOptions:
    apply: bool = False
    as_of: date | None = None  # default: today (UTC); the report covers the days before it
    resend: bool = False
    output_dir: Path | None = None  # spend-DATE.csv and spend-DATE.html are written here


@dataclass(frozen=True)
class Periods:
    start: date
    end: date  # exclusive
    previous_start: date
    previous_end: date  # exclusive

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def periods(as_of: date) -> Periods:
    """The month so far: its first day up to `as_of` (exclusive); on the 1st, the whole previous month. The
    previous period: the same days of the month before (as many as it has)."""
    start = as_of.replace(day=1)
    if start == as_of:
        start = (as_of - timedelta(days=1)).replace(day=1)
    previous_start = (start - timedelta(days=1)).replace(day=1)
    previous_days = min((as_of - start).days, (start - previous_start).days)
    return Periods(start, as_of, previous_start, previous_start + timedelta(days=previous_days))


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def run_rate(usd: Decimal, days: int) -> Decimal:
    """Annualised: the period's cost per day times 365."""
    return money(usd / days * DAYS_PER_YEAR) if days else Decimal("0.00")


def covered_accounts(ctx: RunContext) -> set[str] | None:
    """The accounts the report is about: the config's listed accounts, or None (every linked account) when the
    config covers an organization."""
    config = ctx.config
    if config.organization is not None:
        return None
    return {a.id for a in config.accounts}


def build_report(
    data: DailyCosts,
    when: Periods,
    as_of: date,
    covered: set[str] | None,
    names: dict[str, str],
    top_changes: int,
    min_change: Decimal,
    *,
    source: str = "cost-explorer",
) -> SpendReportOutput:
    """The figures, from the cost lines alone (no AWS call): what the tests check against the seeded data."""
    current: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    previous: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    by_day: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    other: dict[str, tuple[Decimal, Decimal]] = {}
    for (day, account, service), usd in data.costs.items():
        in_current = when.start <= day < when.end
        in_previous = when.previous_start <= day < when.previous_end
        if not (in_current or in_previous):
            continue
        if covered is not None and account not in covered:
            now_usd, before_usd = other.get(account, (Decimal(0), Decimal(0)))
            other[account] = (now_usd + usd, before_usd) if in_current else (now_usd, before_usd + usd)
            continue
        if in_current:
            current[account][service] += usd
            by_day[account][day] += usd
        else:
            previous[account][service] += usd
    accounts = sorted((covered or set()) | set(current) | set(previous))
    days = [when.start + timedelta(days=i) for i in range(when.days)]
    names = {**data.names, **names}  # the config's names win over Cost Explorer's
    account_rows = []
    changes = []
    for account in accounts:
        services = sorted(set(current[account]) | set(previous[account]))
        usd = sum(current[account].values(), Decimal(0))
        before = sum(previous[account].values(), Decimal(0))
        account_rows.append(
            SpendAccountOutput(
                account_id=account,
                name=names.get(account),
                usd=money(usd),
                previous_usd=money(before),
                change_usd=money(usd - before),
                run_rate_usd=run_rate(usd, when.days),
                recorded=account in current or account in previous,
                by_service=sorted(
                    (
                        SpendServiceOutput(
                            service=s, usd=money(current[account][s]), previous_usd=money(previous[account][s])
                        )
                        for s in services
                    ),
                    key=lambda row: (-row.usd, -row.previous_usd, row.service),
                ),
                by_day=[SpendDayOutput(day=d, usd=money(by_day[account][d])) for d in days],
            )
        )
        for service in services:
            now_usd, before_usd = current[account][service], previous[account][service]
            change = now_usd - before_usd
            if abs(change) < min_change or change == 0:
                continue
            # Against a credit (a negative previous figure) a percentage says nothing: none.
            pct = money(change / before_usd * 100) if before_usd > 0 else None
            changes.append(
                SpendChangeOutput(
                    account_id=account,
                    name=names.get(account),
                    service=service,
                    usd=money(now_usd),
                    previous_usd=money(before_usd),
                    change_usd=money(change),
                    change_pct=pct,
                )
            )
    changes.sort(key=lambda c: (-abs(c.change_usd), c.account_id, c.service))
    total = sum((current[a][s] for a in current for s in current[a]), Decimal(0))
    previous_total = sum((previous[a][s] for a in previous for s in previous[a]), Decimal(0))
    notes = []
    if when.previous_end - when.previous_start < when.end - when.start:
        notes.append(
            f"the previous month has only {(when.previous_end - when.previous_start).days} days to set against "
            f"{when.days}: its figures cover fewer days"
        )
    if data.files:
        notes.append(f"read {len(data.files)} CUR data file(s); services are CUR product codes (AmazonEC2, ...)")
    estimated = sorted(d for d in data.estimated_days if when.start <= d < when.end)
    if estimated:
        notes.append(
            f"Cost Explorer marks {len(estimated)} day(s) as estimated ({estimated[0]} .. {estimated[-1]}); "
            "their figures may still grow"
        )
    return SpendReportOutput(
        as_of=as_of,
        source=source,
        period=SpendPeriodOutput(start=when.start, end=when.end, days=when.days),
        previous_period=SpendPeriodOutput(
            start=when.previous_start, end=when.previous_end, days=(when.previous_end - when.previous_start).days
        ),
        total_usd=money(total),
        previous_total_usd=money(previous_total),
        change_usd=money(total - previous_total),
        run_rate_usd=run_rate(total, when.days),
        accounts=account_rows,
        changes=changes[:top_changes],
        other_accounts=(
            SpendOtherOutput(
                accounts=len(other),
                usd=money(sum((v[0] for v in other.values()), Decimal(0))),
                previous_usd=money(sum((v[1] for v in other.values()), Decimal(0))),
            )
            if other
            else None
        ),
        estimated_days=estimated,
        requests=data.requests,
        notes=notes,
    )


def cost_rows(data: DailyCosts, when: Periods, covered: set[str] | None) -> list[tuple[str, date, str, str, Decimal]]:
    """The cost lines of the covered accounts in both periods, for the CSV."""
    rows = []
    for (day, account, service), usd in data.costs.items():
        if covered is not None and account not in covered:
            continue
        if when.start <= day < when.end:
            rows.append(("current", day, account, service, usd))
        elif when.previous_start <= day < when.previous_end:
            rows.append(("previous", day, account, service, usd))
    return rows


def run_spend_report(ctx: RunContext, options: SpendReportOptions) -> RunReport:
    """Read the cost data, build the report and (with apply) deliver it; the figures are in `summary.spend`."""
    from ..report.spend import spend_files, spend_notification

    config = ctx.config
    settings = config.spend_report
    now = ctx.clock()
    as_of = options.as_of or now.date()
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=not options.apply, started_at=now)
    when = periods(as_of)
    clients = BillingClients(ctx.factory, config.spend_report_billing)
    target = TargetResult(account_id=clients.account_id or "payer (current credentials)", region="us-east-1")
    report.targets = [target]
    source = settings.source_spec
    try:
        if source.type == "cur":
            data = read_daily_costs_cur(clients, str(source.bucket), source.prefix, when.previous_start, when.end)
        else:
            data = read_daily_costs(clients, when.previous_start, when.end)
    except SpendSourceError as exc:
        target.status, target.error = TargetStatus.ERROR, ctx.secrets.redact(exc.reason)
        report.summary = {"as_of": as_of.isoformat(), "error": target.error, "delivered": "nothing (no cost data)"}
        report.finished_at = ctx.clock()
        return report
    names = {a.id: a.name for a in config.accounts if a.name}
    covered = covered_accounts(ctx)
    spend = build_report(
        data,
        when,
        as_of,
        covered,
        names,
        settings.top_changes,
        Decimal(str(settings.min_change_usd)),
        source=source.type,
    )
    files = spend_files(spend, cost_rows(data, when, covered))
    report.summary = {"spend": spend.model_dump(mode="json", by_alias=True), "files": sorted(files)}
    if options.output_dir is not None:
        from ..output import write_file

        options.output_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            write_file(options.output_dir / name, ctx.secrets.redact(content.decode("utf-8")).encode("utf-8"))
    notification = spend_notification(spend, files)
    if not settings.notify:
        report.summary["delivery"] = "spend_report.notify names no sink: nothing to deliver"
    elif not options.apply:
        report.summary["would_send_to"] = list(settings.notify)
        report.summary["delivery"] = f"dry run: would send {notification.subject!r} to {', '.join(settings.notify)}"
    else:
        report.deliveries = _deliver(ctx, as_of, notification, report, resend=options.resend)
    report.finished_at = ctx.clock()
    return report


def _deliver(ctx: RunContext, as_of: date, notification: Any, report: RunReport, *, resend: bool) -> list[Delivery]:
    """Each sink once per day: the record of the day names the sinks that got it (written after each send, so a
    crash between a send and its record sends that one again on the next run: at least once, never lost)."""
    from ..sinks import deliver
    from ..state import VersionConflict

    config = ctx.config
    key = as_of.isoformat()
    deliveries: list[Delivery] = []
    for sink in config.spend_report.notify:
        record = ctx.store.get_record(RECORD_KIND, key)
        sent = dict(record[0].get("sent", {})) if record else {}
        if sink in sent and not resend:
            deliveries.append(
                Delivery(
                    sink=sink,
                    outcome="skipped",
                    error=f"already sent the report for {key} at {sent[sink]} (--resend sends it again)",
                )
            )
            continue
        outcome = deliver([sink], config.sinks, notification, report, ctx.sink_context)
        deliveries += outcome
        if outcome and outcome[0].outcome == "sent":
            for _ in range(5):
                record = ctx.store.get_record(RECORD_KIND, key)
                data = dict(record[0]) if record else {}
                data["sent"] = {**data.get("sent", {}), sink: ctx.clock().isoformat()}
                try:
                    ctx.store.put_record(RECORD_KIND, key, data, expected_version=record[1] if record else None)
                    break
                except VersionConflict:
                    continue
    return deliveries
