"""Spend per source for the runaway guard: one USD figure per account over the guard's window.

| source | formula | latency |
|---|---|---|
| burn-rate | on-demand hourly prices of running + pending instances x window_hours | instant (an estimate) |
| cloudwatch | rise of AWS/Billing EstimatedCharges (month-to-date) over the window | hours |
| cost-explorer | GetCostAndUsage UnblendedCost by LINKED_ACCOUNT over the window's whole days | about a day |
| cur | line_item_unblended_cost of CUR 2.0 rows whose usage started in the window | up to a day or more |

A source that cannot be read raises SpendSourceError: it is reported, never taken as zero spend. See docs/spend.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import ValidationError

from ...aws.session import SessionFactory
from ...config import BillingAccount, SpendSource
from ...errors import ConfigError, ConfigProblem
from ...model import Instance
from . import burn_rate, cloudwatch, cost_explorer, cur
from .base import BillingClients, SpendReading, SpendSourceError, Window
from .prices import RegionTable

__all__ = ["PERMISSIONS", "SOURCES", "SpendReading", "SpendSourceError", "measure_spend", "normalize_source"]

SOURCES = ("burn-rate", "cloudwatch", "cost-explorer", "cur")

# IAM actions per source. burn-rate prices the guard's own inventory; the billing sources run in the payer
# account (through guard.spend.billing_account.role_arn, which the hub principal must be allowed to assume).
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "burn-rate": ("ec2:DescribeInstances",),
    "cloudwatch": ("cloudwatch:GetMetricData",),
    "cost-explorer": ("ce:GetCostAndUsage",),
    "cur": ("s3:ListBucket", "s3:GetObject"),
}


def normalize_source(spec: SpendSource | str) -> SpendSource:
    """A config entry (`burn-rate`, or `{type: cur, bucket: B, prefix: P}`) as a SpendSource."""
    if isinstance(spec, SpendSource):
        return spec
    try:
        return SpendSource(type=spec)  # validated at run time
    except ValidationError:
        known = ", ".join(SOURCES)
        raise ConfigError(
            "guard.spend.sources", [ConfigProblem(repr(spec), f"unknown spend source (known: {known})")]
        ) from None


def measure_spend(
    source: SpendSource,
    *,
    factory: SessionFactory,
    account_ids: Sequence[str],
    window_hours: float,
    now: datetime,
    instances: Mapping[str, Sequence[Instance]],
    billing: BillingAccount | None,
    price_tables: Mapping[str, RegionTable] | None = None,
    price_tables_problem: str | None = None,
) -> dict[str, SpendReading]:
    """One reading per requested account over [now - window_hours, now).

    `instances` (running and pending, per account) feeds burn-rate; an account missing from it has none.
    The billing sources read through `billing.role_arn` (the payer account) when given, else the current
    credentials. burn-rate prices from `price_tables` (the stored AWS Price List tables by region) over the shipped
    table; `price_tables_problem` says why none could be read. Raises SpendSourceError when the source, or any
    requested account in it, cannot be read; the error carries the readings that did succeed (`.readings`) and
    the reason per failed account (`.failed`).
    """
    window = Window.ending(now, window_hours)
    accounts = list(dict.fromkeys(account_ids))
    if source.type == "burn-rate":
        return burn_rate.measure(
            accounts, window, instances, source.price_file, price_tables, stored_problem=price_tables_problem
        )
    clients = BillingClients(factory, billing)
    if source.type == "cloudwatch":
        readings, failed = cloudwatch.measure(clients, accounts, window)
    elif source.type == "cost-explorer":
        readings, failed = cost_explorer.measure(clients, accounts, window)
    else:
        readings, failed = cur.measure(clients, source.bucket, source.prefix, accounts, window)
    if failed:
        reasons = "; ".join(f"{account}: {reason}" for account, reason in failed.items())
        raise SpendSourceError(source.type, reasons, failed=failed, readings=readings)
    return readings
