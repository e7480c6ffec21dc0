"""Daily cost by linked account and service from Cost Explorer or a CUR 2.0 export, for the spend report
(docs/spend.md "Spend report").

One GetCostAndUsage query (DAILY, UnblendedCost, grouped by LINKED_ACCOUNT and SERVICE) covers both the month so
far and the previous month's same days; every page is read (NextPageToken). A day's groups may continue on the
next page under the same TimePeriod, so amounts are added, never overwritten. Amounts are kept as Decimal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from .base import AWS_ERRORS, BILLING_REGION, BillingClients, SpendSourceError, aws_error_text

SOURCE = "cost-explorer"
CUR_SERVICE, CUR_ACCOUNT_NAME = "line_item_product_code", "line_item_usage_account_name"
METRIC = "UnblendedCost"
# Each GetCostAndUsage request costs $0.01; a query this size is a few pages.
MAX_PAGES = 200


@dataclass
class DailyCosts:
    """Cost per (day, account, service) over [start, end), with what the query returned besides."""

    start: date
    end: date
    costs: dict[tuple[date, str, str], Decimal] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # linked account -> name (DimensionValueAttributes)
    estimated_days: set[date] = field(default_factory=set)
    requests: int = 0  # GetCostAndUsage requests
    files: list[str] = field(default_factory=list)  # CUR data files read

    def add(self, day: date, account: str, service: str, usd: Decimal) -> None:
        key = (day, account, service)
        self.costs[key] = self.costs.get(key, Decimal(0)) + usd


def read_daily_costs(clients: BillingClients, start: date, end: date) -> DailyCosts:
    """Every day in [start, end) by linked account and service; raises SpendSourceError naming the failure."""
    request: dict[str, Any] = {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "DAILY",
        "Metrics": [METRIC],
        "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}, {"Type": "DIMENSION", "Key": "SERVICE"}],
    }
    data = DailyCosts(start, end)
    try:
        client = clients.client("ce", BILLING_REGION)
        token: str | None = None
        while True:
            page = client.get_cost_and_usage(**request, **({"NextPageToken": token} if token else {}))
            data.requests += 1
            _read_page(page, data)
            token = page.get("NextPageToken")
            if not token:
                break
            if data.requests >= MAX_PAGES:
                raise SpendSourceError(SOURCE, f"GetCostAndUsage {clients.via} still paging after {MAX_PAGES} pages")
    except AWS_ERRORS as exc:
        raise SpendSourceError(SOURCE, f"GetCostAndUsage {clients.via}: {aws_error_text(exc)}") from None
    return data


def _read_page(page: dict[str, Any], data: DailyCosts) -> None:
    for attribute in page.get("DimensionValueAttributes") or []:
        name = (attribute.get("Attributes") or {}).get("description")
        if attribute.get("Value") and name:
            data.names[str(attribute["Value"])] = str(name)
    for result in page.get("ResultsByTime") or []:
        try:
            day = date.fromisoformat(str(result.get("TimePeriod", {}).get("Start", "")))
        except ValueError:
            raise SpendSourceError(SOURCE, f"GetCostAndUsage returned a period without a date: {result!r}") from None
        if result.get("Estimated"):
            data.estimated_days.add(day)
        for group in result.get("Groups") or []:
            keys = group.get("Keys") or []
            if len(keys) != 2:
                raise SpendSourceError(SOURCE, f"GetCostAndUsage returned a group without account and service: {keys}")
            data.add(day, str(keys[0]), str(keys[1]), _amount(group, keys))


def _amount(group: dict[str, Any], keys: list[str]) -> Decimal:
    metric = (group.get("Metrics") or {}).get(METRIC) or {}
    unit = metric.get("Unit", "USD")
    if unit != "USD":
        raise SpendSourceError(SOURCE, f"{METRIC} for {' / '.join(keys)} is in {unit}, not USD")
    try:
        amount = Decimal(str(metric["Amount"]))
    except (KeyError, InvalidOperation):
        raise SpendSourceError(SOURCE, f"{METRIC} for {' / '.join(keys)} has no numeric Amount: {metric!r}") from None
    if not amount.is_finite():
        raise SpendSourceError(SOURCE, f"{METRIC} for {' / '.join(keys)} is not a finite amount: {metric!r}")
    return amount


def read_daily_costs_cur(
    clients: BillingClients, bucket: str, prefix: str | None, start: date, end: date
) -> DailyCosts:
    """Every day in [start, end) by usage account and product code, summed from the CUR 2.0 rows whose
    `line_item_usage_start_date` falls on that UTC day, from the billing periods' current data files."""
    from datetime import UTC, datetime, time

    from . import cur
    from .base import Window

    data = DailyCosts(start, end)
    window = Window(datetime.combine(start, time(0), tzinfo=UTC), datetime.combine(end, time(0), tzinfo=UTC))
    days: dict[str, date] = {}  # hourly rows repeat their start: parse each text once

    def add(values: list[str]) -> None:
        account, started, cost, service, name = values
        day = days.get(started) or days.setdefault(started, cur._timestamp(started).date())
        if start <= day < end and cost.strip():
            data.add(day, account, service or "(no product code)", Decimal(cost.strip()))
            if name:
                data.names[account] = name

    try:
        s3 = clients.client("s3", BILLING_REGION)
        for data_bucket, key in cur.data_files_for(s3, bucket, prefix, window.months()):
            columns = (cur.ACCOUNT, cur.START, cur.COST, CUR_SERVICE)
            for _ in cur.read_rows(s3, data_bucket, key, columns, (CUR_ACCOUNT_NAME,), parse=add):
                pass
            data.files.append(f"s3://{data_bucket}/{key}")
    except AWS_ERRORS as exc:
        where = f"s3://{bucket}/{(prefix or '').strip('/')}"
        raise SpendSourceError(
            cur.SOURCE, f"reading the CUR 2.0 export at {where} {clients.via}: {aws_error_text(exc)}"
        ) from None
    return data
