"""The on-demand price table behind the burn-rate source: shipped with the package, overridable by a file.

`data/prices.json` holds approximate us-east-1 Linux on-demand list prices per instance type, a multiplier per
region (and optional exact per-region prices), and a documented fallback for types it does not know. A
`price_file` of the same shape is merged over it (its entries win), so a user can add or correct a few types.
The table is read lazily, once per process (per file version for a price_file).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

# Size units as in AWS's normalization factors: the price of a family scales roughly with them.
_SIZE_UNITS = {"nano": 0.25, "micro": 0.5, "small": 1.0, "medium": 2.0, "large": 4.0, "xlarge": 8.0}
_MULTI_XLARGE = re.compile(r"^(\d+)xlarge$")
_CATEGORY = re.compile(r"^([a-z]+)")


class PriceTableError(ValueError):
    """The price table (shipped or user-supplied) is missing or not of the expected shape."""


def size_units(size: str) -> float | None:
    """nano 0.25 ... large 4, xlarge 8, 2xlarge 16 ...; None for sizes without a fixed factor (metal)."""
    if size in _SIZE_UNITS:
        return _SIZE_UNITS[size]
    match = _MULTI_XLARGE.match(size)
    return float(match.group(1)) * 8.0 if match else None


@dataclass(frozen=True)
class Price:
    """An hourly USD price and how it was found ("table", "region", or an estimate's explanation)."""

    usd_per_hour: float
    basis: str
    estimated: bool = False


@dataclass(frozen=True)
class PriceTable:
    """Hourly on-demand prices by instance type and region."""

    prices: dict[str, float]
    region_multipliers: dict[str, float] = field(default_factory=dict)
    region_prices: dict[str, dict[str, float]] = field(default_factory=dict)
    default_region_multiplier: float = 1.0
    fallback_per_unit: float = 0.0315
    fallback_hourly: float = 2.0
    origin: str = "built-in table"

    def region_multiplier(self, region: str) -> tuple[float, bool]:
        """The region's multiplier over us-east-1, and whether it is the default for unknown regions."""
        if region in self.region_multipliers:
            return self.region_multipliers[region], False
        return self.default_region_multiplier, True

    def price(self, instance_type: str, region: str) -> Price:
        """The hourly price of one instance of `instance_type` in `region` (an estimate if the type is unknown)."""
        exact = self.region_prices.get(region, {}).get(instance_type)
        if exact is not None:
            return Price(exact, f"{region} price")
        multiplier, default = self.region_multiplier(region)
        region_note = f"unknown region, x{multiplier:g} assumed" if default else f"x{multiplier:g} for {region}"
        base = self.prices.get(instance_type)
        if base is not None:
            return Price(base * multiplier, f"${base:g}/h in us-east-1, {region_note}" if multiplier != 1 else "")
        usd, how = self.estimate(instance_type)
        return Price(usd * multiplier, f"{how}, {region_note}" if multiplier != 1 else how, estimated=True)

    def estimate(self, instance_type: str) -> tuple[float, str]:
        """A us-east-1 price for a type the table lacks: its family's (else its category's) highest price per
        size unit times its size, erring high as a guard should; the explanation says which."""
        family, _, size = instance_type.partition(".")
        units = size_units(size)
        for scope, members in (
            (f"family {family}", [t for t in self.prices if t.partition(".")[0] == family]),
            (f"category {_category(family)}", [t for t in self.prices if _category(t) == _category(family)]),
        ):
            if not members or not _category(family):
                continue
            per_units = [self.prices[t] / u for t in members if (u := size_units(t.partition(".")[2]))]
            if units is None or not per_units:
                top = max(members, key=lambda t: self.prices[t])
                return self.prices[top], f"estimated as the dearest of {scope} ({top})"
            per_unit = max(per_units)
            return per_unit * units, f"estimated from {scope} at ${per_unit:.4f}/h per size unit x {units:g}"
        if units is None:
            return self.fallback_hourly, f"unknown type, default ${self.fallback_hourly:g}/h"
        return (
            self.fallback_per_unit * units,
            f"unknown type, default ${self.fallback_per_unit:g}/h per size unit x {units:g}",
        )


def _category(instance_type: str) -> str:
    match = _CATEGORY.match(instance_type)
    return match.group(1) if match else ""


def _number_map(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise PriceTableError(f"{where} must be an object of name -> number")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PriceTableError(f"{where}.{key} must be a non-negative number, got {value!r}")
        out[str(key)] = float(value)
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def table_from_dict(raw: Any, origin: str) -> PriceTable:
    """Validate a price table's JSON (the shape of data/prices.json)."""
    if not isinstance(raw, dict):
        raise PriceTableError("the price table must be a JSON object")
    regions = raw.get("region_prices", {})
    if not isinstance(regions, dict):
        raise PriceTableError("region_prices must be an object of region -> {type: price}")
    fallback = raw.get("fallback", {})
    if not isinstance(fallback, dict):
        raise PriceTableError("fallback must be an object")
    numbers = _number_map(
        {k: v for k, v in fallback.items() if k in ("per_unit_usd", "hourly_usd")}
        | {k: v for k, v in raw.items() if k == "default_region_multiplier"},
        "settings",
    )
    return PriceTable(
        prices=_number_map(raw.get("prices", {}), "prices"),
        region_multipliers=_number_map(raw.get("region_multipliers", {}), "region_multipliers"),
        region_prices={r: _number_map(p, f"region_prices.{r}") for r, p in regions.items()},
        default_region_multiplier=numbers.get("default_region_multiplier", 1.0),
        fallback_per_unit=numbers.get("per_unit_usd", 0.0315),
        fallback_hourly=numbers.get("hourly_usd", 2.0),
        origin=origin,
    )


@lru_cache(maxsize=1)
def _builtin_raw() -> dict[str, Any]:
    text = resources.files("fleetwarden").joinpath("data/prices.json").read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    return raw


@lru_cache(maxsize=8)
def _load(path: str | None, mtime_ns: int) -> PriceTable:
    raw = _builtin_raw()
    if path is None:
        return table_from_dict(raw, "built-in table (approximate us-east-1 list prices)")
    try:
        override = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceTableError(f"cannot read price_file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"price_file {path} is not valid JSON: {exc}") from None
    if not isinstance(override, dict):
        raise PriceTableError(f"price_file {path} must hold a JSON object like data/prices.json")
    return table_from_dict(_merge(raw, override), f"built-in table with {path} merged over it")


def load_prices(price_file: str | None = None) -> PriceTable:
    """The shipped table, or it with `price_file` merged over it; cached until the file changes."""
    if price_file is None:
        return _load(None, 0)
    try:
        mtime = Path(price_file).stat().st_mtime_ns
    except OSError as exc:
        raise PriceTableError(f"cannot read price_file {price_file}: {exc.strerror}") from None
    return _load(price_file, mtime)
