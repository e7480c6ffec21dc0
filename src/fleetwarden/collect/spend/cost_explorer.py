"""cost-explorer: GetCostAndUsage UnblendedCost by LINKED_ACCOUNT over the whole days covering the window.

Cost Explorer is about a day late and costs $0.01 per request, so all accounts share one (paginated) request.
Its granularity is a day: the figure covers the window's days from midnight UTC, today's partial day included.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .base import AWS_ERRORS, BILLING_REGION, BillingClients, SpendReading, SpendSourceError, Window, aws_error_text

SOURCE = "cost-explorer"
METRIC = "UnblendedCost"
LATENCY = "Cost Explorer data is about a day late, so the latest day is incomplete"


def days_covering(window: Window) -> tuple[date, date]:
    """[start, end) in whole UTC days: End is exclusive, as GetCostAndUsage wants it."""
    start = window.start.date()
    end = window.end.date()
    if window.end.time() != time(0) or end == start:
        end += timedelta(days=1)
    return start, end


def measure(
    clients: BillingClients, account_ids: Sequence[str], window: Window
) -> tuple[dict[str, SpendReading], dict[str, str]]:
    start, end = days_covering(window)
    request: dict[str, Any] = {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "DAILY",
        "Metrics": [METRIC],
        "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}],
        "Filter": {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": list(account_ids)}},
    }
    totals: dict[str, float] = {}
    days: set[str] = set()
    estimated = False
    requests = 0
    try:
        client = clients.client("ce", BILLING_REGION)
        token: str | None = None
        while True:
            page = client.get_cost_and_usage(**request, **({"NextPageToken": token} if token else {}))
            requests += 1
            for result in page.get("ResultsByTime", []):
                days.add(str(result.get("TimePeriod", {}).get("Start", "")))
                estimated = estimated or bool(result.get("Estimated"))
                for group in result.get("Groups", []):
                    account_id = (group.get("Keys") or [""])[0]
                    totals[account_id] = totals.get(account_id, 0.0) + _amount(group, account_id)
            token = page.get("NextPageToken")
            if not token:
                break
    except AWS_ERRORS as exc:
        raise SpendSourceError(SOURCE, f"GetCostAndUsage {clients.via}: {aws_error_text(exc)}") from None
    if not days:
        raise SpendSourceError(
            SOURCE, f"GetCostAndUsage {clients.via} returned no results for {start} .. {end} (End exclusive)"
        )
    span = f"{start} .. {end - timedelta(days=1)} ({(end - start).days} whole days, UTC)"
    caveat = f"{LATENCY}{'; AWS marks some of these figures as estimated' if estimated else ''}"
    readings: dict[str, SpendReading] = {}
    for account_id in account_ids:
        usd = totals.get(account_id, 0.0)
        recorded = "" if account_id in totals else " (no cost recorded for this account)"
        detail = (
            f"{METRIC} by LINKED_ACCOUNT over {span} = ${usd:.2f}{recorded}; covers more than the "
            f"{window.hours:g} h window, from midnight UTC | {caveat}; {requests} request(s) at $0.01"
        )
        readings[account_id] = SpendReading(SOURCE, account_id, usd, _midnight(start), _midnight(end), detail)
    return readings, {}


def _amount(group: dict[str, Any], account_id: str) -> float:
    metric = group.get("Metrics", {}).get(METRIC, {})
    unit = metric.get("Unit", "USD")
    if unit != "USD":
        raise SpendSourceError(SOURCE, f"{METRIC} for {account_id} is in {unit}, not USD")
    try:
        return float(metric["Amount"])
    except (KeyError, TypeError, ValueError):
        raise SpendSourceError(SOURCE, f"{METRIC} for {account_id} has no numeric Amount: {metric!r}") from None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
