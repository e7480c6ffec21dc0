"""The on-demand price table behind the burn-rate source: shipped with the package, refreshed from the AWS Price
List into the state store, overridable by a file.

`data/prices.json` holds approximate us-east-1 Linux on-demand list prices per instance type (compiled by hand,
see its `compiled` date), a multiplier per region (and optional exact per-region prices), and a documented
fallback for types it does not know. Tables `fleetwarden prices refresh --apply` stored (one per region, exact
prices from the AWS Price List) are laid over it as exact region prices; a `price_file` of the same shape is
merged over everything (its entries win), so a user can add or correct a few types. The shipped table is read
lazily, once per process (per file version for a price_file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

# Size units as in AWS's normalization factors: the price of a family scales roughly with them.
_SIZE_UNITS = {"nano": 0.25, "micro": 0.5, "small": 1.0, "medium": 2.0, "large": 4.0, "xlarge": 8.0}
_MULTI_XLARGE = re.compile(r"^(\d+)xlarge$")
_CATEGORY = re.compile(r"^([a-z]+)")
# A stored Price List table older than this is still used, and flagged as stale in the guard's output.
STALE_DAYS = 35
REFRESH_HINT = "run `fleetwarden prices refresh --apply`"


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
    origin: str = "shipped table"
    compiled: str = ""  # the shipped table's compiled date (YYYY-MM-DD)
    info: TableInfo | None = None  # which tables were used, how old (set when the stored tables were considered)

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


@dataclass(frozen=True)
class RegionTable:
    """One region's exact prices from the AWS Price List, as `fleetwarden prices refresh --apply` stored them."""

    region: str
    prices: dict[str, float]
    refreshed_at: datetime
    products: int = 0
    source: str = "AWS Price List GetProducts"

    @classmethod
    def from_record(cls, region: str, data: Any) -> RegionTable:
        """A stored record's data (`{"prices", "refreshed_at", "source", "products"}`), validated."""
        if not isinstance(data, dict):
            raise PriceTableError(f"the stored price table of {region} is not an object")
        prices = _number_map(data.get("prices"), f"price-table/{region}.prices")
        if not prices:
            raise PriceTableError(f"the stored price table of {region} has no prices")
        try:
            refreshed = datetime.fromisoformat(str(data.get("refreshed_at")))
        except ValueError:
            raise PriceTableError(f"the stored price table of {region} has no valid refreshed_at") from None
        products = data.get("products", 0)
        return cls(
            region=region,
            prices=prices,
            refreshed_at=refreshed if refreshed.tzinfo else refreshed.replace(tzinfo=UTC),
            products=products if isinstance(products, int) and not isinstance(products, bool) else 0,
            source=str(data.get("source", "AWS Price List GetProducts")),
        )


def _days(word: int) -> str:
    return f"{word} day{'' if word == 1 else 's'} old"


@dataclass(frozen=True)
class TableInfo:
    """Which price tables burn-rate used and how old they are: for the reading's detail and the guard's output."""

    compiled: str  # the shipped table's compiled date
    shipped_age_days: int | None
    regions: tuple[str, ...] = ()  # regions priced from a stored Price List table
    oldest: datetime | None = None
    newest: datetime | None = None
    age_days: int | None = None  # of the oldest stored region table
    problem: str | None = None  # why the stored tables could not be used
    price_file: str | None = None

    @property
    def source(self) -> str:
        return "price-list" if self.regions else "shipped"

    @property
    def stale(self) -> bool:
        return self.age_days is not None and self.age_days > STALE_DAYS

    @property
    def line(self) -> str:
        """One line for people, e.g. `AWS Price List table refreshed 2026-12-01 (2 days old) for us-east-1; shipped
        table (compiled 2024-06-15) for the rest`."""
        shipped = f"compiled {self.compiled}" if self.compiled else "compiled by hand"
        if self.regions and self.oldest is not None and self.newest is not None:
            age = _days(self.age_days or 0)
            when = (
                f"{self.oldest.date()} ({age})"
                if self.oldest.date() == self.newest.date()
                else f"{self.oldest.date()} to {self.newest.date()} (the oldest {age})"
            )
            text = f"AWS Price List table refreshed {when}"
            if self.stale:
                text += f", STALE (over {STALE_DAYS} days; still used): {REFRESH_HINT}"
            text += f" for {', '.join(self.regions)}; shipped table ({shipped}) for the rest"
        else:
            age = f", {_days(self.shipped_age_days)}" if self.shipped_age_days is not None else ""
            text = f"shipped table ({shipped}{age})"
            if self.problem:
                text += f"; the stored AWS Price List tables could not be used ({self.problem})"
            text += f"; {REFRESH_HINT}"
        if self.price_file:
            text += f"; {self.price_file} merged over it"
        return text

    def as_dict(self) -> dict[str, Any]:
        """For a run's summary (`price_table`)."""
        return {
            "source": self.source,
            "refreshed_at": self.oldest.isoformat() if self.oldest else None,
            "age_days": self.age_days if self.regions else self.shipped_age_days,
            "stale": self.stale,
            "regions": list(self.regions),
            "shipped_compiled": self.compiled,
            "problem": self.problem,
            "line": self.line,
        }


def describe_tables(
    stored: Mapping[str, RegionTable] | None,
    now: datetime,
    *,
    problem: str | None = None,
    price_file: str | None = None,
) -> TableInfo:
    """Which tables a price lookup at `now` uses and their ages."""
    compiled = shipped_compiled()
    shipped_age = None
    if compiled:
        try:
            shipped_age = (now.date() - date.fromisoformat(compiled)).days
        except ValueError:
            shipped_age = None
    tables = list((stored or {}).values())
    if not tables:
        return TableInfo(compiled, shipped_age, problem=problem, price_file=price_file)
    oldest = min(t.refreshed_at for t in tables)
    newest = max(t.refreshed_at for t in tables)
    return TableInfo(
        compiled,
        shipped_age,
        regions=tuple(sorted(t.region for t in tables)),
        oldest=oldest,
        newest=newest,
        age_days=max(0, (now - oldest).days),
        problem=problem,
        price_file=price_file,
    )


def shipped_compiled() -> str:
    """The shipped table's compiled date (`compiled`, else its `as_of` month)."""
    raw = _builtin_raw()
    return str(raw.get("compiled") or raw.get("as_of") or "")


@lru_cache(maxsize=1)
def _builtin_raw() -> dict[str, Any]:
    text = resources.files("fleetwarden").joinpath("data/prices.json").read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    return raw


@lru_cache(maxsize=8)
def _override(path: str, mtime_ns: int) -> dict[str, Any]:
    try:
        override = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceTableError(f"cannot read price_file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"price_file {path} is not valid JSON: {exc}") from None
    if not isinstance(override, dict):
        raise PriceTableError(f"price_file {path} must hold a JSON object like data/prices.json")
    return override


@lru_cache(maxsize=8)
def _load(path: str | None, mtime_ns: int) -> PriceTable:
    raw = _builtin_raw()
    compiled = shipped_compiled()
    if path is None:
        return replace(table_from_dict(raw, f"shipped table (compiled {compiled})"), compiled=compiled)
    table = table_from_dict(_merge(raw, _override(path, mtime_ns)), f"shipped table with {path} merged over it")
    return replace(table, compiled=compiled)


def load_prices(
    price_file: str | None = None,
    stored: Mapping[str, RegionTable] | None = None,
    *,
    now: datetime | None = None,
    problem: str | None = None,
) -> PriceTable:
    """The shipped table, with the stored Price List tables (`stored`, by region) as exact region prices over it
    and `price_file` merged over everything (its entries win: a type its `prices` names is priced from there in
    every region, a type its `region_prices` names in that region). Without `stored` and `now`, the cached table
    itself (cached until the file changes); with them, its `origin` and `info` say which tables priced what and
    how old they are (`problem`: why stored tables could not be read)."""
    mtime = 0
    if price_file is not None:
        try:
            mtime = Path(price_file).stat().st_mtime_ns
        except OSError as exc:
            raise PriceTableError(f"cannot read price_file {price_file}: {exc.strerror}") from None
    table = _load(price_file, mtime)
    if stored is None and now is None and problem is None:
        return table
    info = describe_tables(stored, now or datetime.now(UTC), problem=problem, price_file=price_file)
    if not stored:
        return replace(table, origin=info.line, info=info)
    file_types: set[str] = set()
    file_regions: dict[str, Any] = {}
    if price_file is not None:
        override = _override(price_file, mtime)
        listed, regional = override.get("prices"), override.get("region_prices")
        file_types = set(listed) if isinstance(listed, dict) else set()
        file_regions = regional if isinstance(regional, dict) else {}
    region_prices = dict(table.region_prices)
    for region, stored_table in stored.items():
        exact = {t: p for t, p in stored_table.prices.items() if t not in file_types}
        named = file_regions.get(region)
        own: dict[str, Any] = named if isinstance(named, dict) else {}
        mine = {t: p for t, p in table.region_prices.get(region, {}).items() if t in own}
        region_prices[region] = {**table.region_prices.get(region, {}), **exact, **mine}
    return replace(table, region_prices=region_prices, origin=info.line, info=info)
