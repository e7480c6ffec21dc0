"""EC2 on-demand prices per region from the AWS Price List API (`pricing:GetProducts`), for the burn-rate table.

One GetProducts query per region (paginated, 100 products a page): ServiceCode `AmazonEC2`, FormatVersion
`aws_v1`, and TERM_MATCH filters that leave one product per instance type: Linux, shared tenancy, no
pre-installed software, capacity status `Used` (not reservations), no license, the region's code. Each
`PriceList` item is a JSON *string* of AWS's product shape; its on-demand hourly USD price is
`terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD` where `unit` is `Hrs`.

The Price List API answers only in us-east-1 (and two other regions; China has its own), whatever the region
priced. A region whose query fails, or returns no products, is reported with the reason; the others still count.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

# The Price List API's endpoint region (api.pricing.us-east-1.amazonaws.com) for every commercial region's prices.
PRICING_REGION = "us-east-1"
SERVICE_CODE = "AmazonEC2"
FORMAT_VERSION = "aws_v1"
SOURCE = "AWS Price List GetProducts"
PERMISSIONS: tuple[str, ...] = ("pricing:GetProducts",)

# The product attributes that pick the plain on-demand Linux price of each instance type.
FILTER_TERMS: dict[str, str] = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}


def filters(region: str) -> list[dict[str, str]]:
    """GetProducts' Filters for one region's plain on-demand Linux instances."""
    terms = {**FILTER_TERMS, "regionCode": region}
    return [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in terms.items()]


@dataclass
class ParsedPrices:
    """What a region's PriceList items gave: the hourly USD price per type and what was left out, and why."""

    prices: dict[str, float] = field(default_factory=dict)
    products: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Types two products priced differently: the highest is kept (a guard errs high), each noted here.
    conflicts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, item: Any) -> None:
        """Take one PriceList item (a JSON string, or an already decoded object)."""
        self.products += 1
        parsed = parse_item(item)
        if isinstance(parsed, str):
            self.skipped[parsed] += 1
            return
        instance_type, usd = parsed
        known = self.prices.get(instance_type)
        if known is None:
            self.prices[instance_type] = usd
            return
        if usd != known:
            self.conflicts.setdefault(instance_type, [known]).append(usd)
            self.prices[instance_type] = max(known, usd)

    def notes(self) -> list[str]:
        """One line per kind of skipped item and per conflicting type, for the run's summary."""
        out = [f"{count} skipped: {reason}" for reason, count in sorted(self.skipped.items())]
        for instance_type, seen in sorted(self.conflicts.items()):
            shown = ", ".join(f"${p:g}" for p in sorted(set(seen)))
            out.append(f"{instance_type}: several products ({shown}/h); the highest kept")
        return out


def parse_item(item: Any) -> tuple[str, float] | str:
    """(instance type, USD per hour) of one PriceList item, or the reason it gives no price."""
    if isinstance(item, str | bytes):
        try:
            item = json.loads(item)
        except ValueError:
            return "not valid JSON"
    if not isinstance(item, dict):
        return "not a JSON object"
    product = item.get("product")
    attributes = product.get("attributes") if isinstance(product, dict) else None
    instance_type = attributes.get("instanceType") if isinstance(attributes, dict) else None
    if not isinstance(instance_type, str) or not instance_type:
        return "no instanceType"
    terms = item.get("terms")
    on_demand = terms.get("OnDemand") if isinstance(terms, dict) else None
    if not isinstance(on_demand, dict) or not on_demand:
        return "no OnDemand term"
    hourly: list[float] = []
    for term in on_demand.values():
        dimensions = term.get("priceDimensions") if isinstance(term, dict) else None
        for dimension in (dimensions or {}).values() if isinstance(dimensions, dict) else ():
            if not isinstance(dimension, dict) or dimension.get("unit") != "Hrs":
                continue
            per_unit = dimension.get("pricePerUnit")
            usd = per_unit.get("USD") if isinstance(per_unit, dict) else None
            if not isinstance(usd, str | int | float) or isinstance(usd, bool):
                continue
            try:
                value = float(usd)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value > 0:
                hourly.append(value)
    if not hourly:
        return "no positive hourly USD price"
    return instance_type, max(hourly)


def parse_items(items: Iterable[Any]) -> ParsedPrices:
    parsed = ParsedPrices()
    for item in items:
        parsed.add(item)
    return parsed


@dataclass
class RegionPrices:
    """One region's query: its prices, or the error that stopped it (`error` set, nothing to store)."""

    region: str
    parsed: ParsedPrices = field(default_factory=ParsedPrices)
    pages: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def fetch_region(client: Any, region: str) -> RegionPrices:
    """Every page of one region's GetProducts query. An AWS error (after botocore's retries) or an answer without
    a single priced product is the region's error, never an empty table."""
    result = RegionPrices(region)
    paginator = client.get_paginator("get_products")
    try:
        for page in paginator.paginate(ServiceCode=SERVICE_CODE, FormatVersion=FORMAT_VERSION, Filters=filters(region)):
            result.pages += 1
            for item in page.get("PriceList", []):
                result.parsed.add(item)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        result.error = f"GetProducts failed: {err.get('Code', 'Error')}: {err.get('Message', '')}".rstrip(": ")
        return result
    except BotoCoreError as exc:
        result.error = f"GetProducts failed: {type(exc).__name__}: {exc}"
        return result
    if not result.parsed.products:
        result.error = "no products: GetProducts matched nothing (a wrong filter, or a region the Price List lacks)"
    elif not result.parsed.prices:
        notes = "; ".join(result.parsed.notes())
        result.error = f"no products with an hourly price among {result.parsed.products} ({notes})"
    return result
