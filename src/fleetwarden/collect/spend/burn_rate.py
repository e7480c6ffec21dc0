"""burn-rate: what the running and pending instances cost per hour at on-demand list prices, times the window.

Instant (no billing latency) and free (no API call: it prices the inventory the guard already has), but an
estimate: list prices, Linux, on-demand (spot and reserved instances are priced as on-demand, which errs high),
EC2 compute only (no EBS, data transfer, other services).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from ...model import Instance
from .base import SpendReading, SpendSourceError, Window
from .prices import Price, PriceTable, PriceTableError, RegionTable, load_prices

SOURCE = "burn-rate"
COUNTED_STATES = ("pending", "running")


def measure(
    account_ids: Sequence[str],
    window: Window,
    instances: Mapping[str, Sequence[Instance]],
    price_file: str | None,
    stored: Mapping[str, RegionTable] | None = None,
    stored_problem: str | None = None,
) -> dict[str, SpendReading]:
    """One reading per account; an account missing from `instances` has no running or pending instance.

    `stored`: the Price List tables `prices refresh` stored, by region (exact prices over the shipped table);
    `stored_problem`: why they could not be read (the shipped table is used, and the detail says so)."""
    try:
        table = load_prices(price_file, stored or {}, now=window.end, problem=stored_problem)
    except PriceTableError as exc:
        raise SpendSourceError(SOURCE, str(exc)) from None
    return {
        account_id: _reading(account_id, window, instances.get(account_id, ()), table) for account_id in account_ids
    }


def _reading(account_id: str, window: Window, instances: Sequence[Instance], table: PriceTable) -> SpendReading:
    counted = [i for i in instances if i.state in COUNTED_STATES]
    by_type: Counter[tuple[str, str]] = Counter((i.instance_type, i.region) for i in counted)
    hourly = 0.0
    parts: list[str] = []
    notes: list[str] = []
    for (instance_type, region), count in sorted(by_type.items(), key=lambda item: (-item[1], item[0])):
        price: Price = table.price(instance_type, region)
        hourly += price.usd_per_hour * count
        parts.append(f"{count} x {instance_type or '?'} in {region} at ${price.usd_per_hour:.4f}/h")
        if price.basis:
            notes.append(f"{instance_type}: {price.basis}")
    usd = hourly * window.hours
    if not counted:
        detail = f"no running or pending instances: $0.00/h x {window.hours:g} h (instant, from the inventory)"
    else:
        shown = "; ".join(parts[:8]) + (f"; and {len(parts) - 8} more types" if len(parts) > 8 else "")
        detail = (
            f"{len(counted)} running/pending instances, ${hourly:.4f}/h x {window.hours:g} h = ${usd:.2f} "
            f"(instant, on-demand list prices from the {table.origin}; spot and reserved priced as on-demand): " + shown
        )
        if notes:
            detail += " | " + "; ".join(notes[:8])
    return SpendReading(SOURCE, account_id, usd, window.start, window.end, detail)
