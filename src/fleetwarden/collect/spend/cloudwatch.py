"""cloudwatch: the rise of AWS/Billing EstimatedCharges (per linked account) over the window.

EstimatedCharges is a month-to-date figure that AWS publishes in us-east-1, in the payer account, several times
a day (hours late). The rise over the window, per calendar month it touches, is the last value inside the window
minus the last value before it in the same month; a month that began inside the window counts from zero (its
value since the month began). A value that drops within a month (AWS reset or restated it) counts from zero too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .base import (
    AWS_ERRORS,
    BILLING_REGION,
    BillingClients,
    SpendReading,
    SpendSourceError,
    Window,
    aws_error_text,
    month_start,
    stamp,
)

SOURCE = "cloudwatch"
PERIOD_SECONDS = 300
# Baselines come from earlier datapoints: look back at least this far (and to the month's start).
LOOKBACK = timedelta(days=1)
# AWS publishes the metric several times a day; nothing for longer than this means it is not being published.
STALE_AFTER = timedelta(hours=24)
MAX_QUERIES = 500  # GetMetricData's limit per request
LATENCY = "CloudWatch billing metrics run hours late and update several times a day"


@dataclass(frozen=True)
class Point:
    at: datetime
    usd: float


def measure(
    clients: BillingClients, account_ids: Sequence[str], window: Window
) -> tuple[dict[str, SpendReading], dict[str, str]]:
    """Readings for the accounts with data, and the reason for each account without."""
    query_start = _aligned_start(window.start, min(month_start(window.start), window.start - LOOKBACK))
    try:
        client = clients.client("cloudwatch", BILLING_REGION)
        series = _fetch(client, account_ids, query_start, window.end)
    except AWS_ERRORS as exc:
        raise SpendSourceError(
            SOURCE, f"reading AWS/Billing EstimatedCharges {clients.via}: {aws_error_text(exc)}"
        ) from None
    readings: dict[str, SpendReading] = {}
    failed: dict[str, str] = {}
    for account_id in account_ids:
        points = series.get(account_id, [])
        if not points:
            failed[account_id] = (
                f"no AWS/Billing EstimatedCharges data (Currency=USD, LinkedAccount={account_id}) since "
                f"{stamp(query_start)} in {BILLING_REGION} {clients.via}; billing alerts must be enabled in the "
                "payer account, and an account outside an organization publishes no LinkedAccount series"
            )
            continue
        newest = points[-1]
        if window.end - newest.at > STALE_AFTER:
            failed[account_id] = (
                f"AWS/Billing EstimatedCharges for {account_id} is stale: the newest datapoint is from "
                f"{stamp(newest.at)}, more than {STALE_AFTER.total_seconds() / 3600:g} h before {stamp(window.end)}"
            )
            continue
        usd, detail = rise(points, window)
        readings[account_id] = SpendReading(SOURCE, account_id, usd, window.start, window.end, detail)
    return readings, failed


def rise(points: Sequence[Point], window: Window) -> tuple[float, str]:
    """The month-to-date metric's rise over the window, and how it was computed (points sorted by time)."""
    total = 0.0
    steps: list[str] = []
    for year, month in window.months():
        in_month = [p for p in points if (p.at.year, p.at.month) == (year, month)]
        before = [p for p in in_month if p.at < window.start]
        inside = [p for p in in_month if p.at in window]
        label = f"{year:04d}-{month:02d}"
        if not inside:
            steps.append(f"{label}: no datapoint inside the window")
            continue
        last = inside[-1]
        if before:
            base, base_text = before[-1].usd, f"${before[-1].usd:.2f} at {stamp(before[-1].at)}"
        else:
            base, base_text = 0.0, "$0.00 at the month's start"
        if last.usd >= base:
            part = last.usd - base
            steps.append(f"{label}: ${last.usd:.2f} at {stamp(last.at)} - {base_text} = ${part:.2f}")
        else:
            part = last.usd
            steps.append(f"{label}: reset to ${last.usd:.2f} at {stamp(last.at)} (from {base_text}), counted in full")
        total += part
    newest = points[-1]
    age_h = (window.end - newest.at).total_seconds() / 3600
    detail = (
        f"rise of EstimatedCharges (month-to-date) over {stamp(window.start)} .. {stamp(window.end)} = ${total:.2f}: "
        + "; ".join(steps)
        + f" | newest datapoint {age_h:.1f} h old; {LATENCY}"
    )
    return total, detail


def _aligned_start(window_start: datetime, earliest: datetime) -> datetime:
    """A query start at or before `earliest` that puts a bucket boundary exactly on the window's start, so no
    bucket straddles it."""
    buckets = -(-int((window_start - earliest).total_seconds()) // PERIOD_SECONDS)
    return window_start - timedelta(seconds=buckets * PERIOD_SECONDS)


def _query(query_id: str, account_id: str) -> dict[str, Any]:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/Billing",
                "MetricName": "EstimatedCharges",
                "Dimensions": [
                    {"Name": "Currency", "Value": "USD"},
                    {"Name": "LinkedAccount", "Value": account_id},
                ],
            },
            "Period": PERIOD_SECONDS,
            "Stat": "Maximum",
        },
        "ReturnData": True,
    }


def _fetch(client: Any, account_ids: Sequence[str], start: datetime, end: datetime) -> dict[str, list[Point]]:
    """Every account's datapoints, oldest first: up to 500 queries per request, every page of each."""
    series: dict[str, list[Point]] = {}
    for offset in range(0, len(account_ids), MAX_QUERIES):
        chunk = account_ids[offset : offset + MAX_QUERIES]
        ids = {f"a{offset + i}": account_id for i, account_id in enumerate(chunk)}
        request: dict[str, Any] = {
            "MetricDataQueries": [_query(qid, account_id) for qid, account_id in ids.items()],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        for page in client.get_paginator("get_metric_data").paginate(**request):
            for result in page.get("MetricDataResults", []):
                account_id = ids.get(result.get("Id", ""))
                if account_id is None:
                    continue
                points = series.setdefault(account_id, [])
                points += [Point(at, float(v)) for at, v in zip(result["Timestamps"], result["Values"], strict=True)]
    for points in series.values():
        points.sort(key=lambda p: p.at)
    return series
