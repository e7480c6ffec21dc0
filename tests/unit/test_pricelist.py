"""The Price List item parser, the stored tables' ages and precedence in the burn-rate table, and reading them
from the state store without ever failing the guard."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.collect.pricelist import parse_item, parse_items
from fleetwarden.collect.spend import burn_rate
from fleetwarden.collect.spend.base import Window
from fleetwarden.collect.spend.prices import RegionTable, describe_tables, load_prices
from fleetwarden.emulator.ext.pricing import product_item
from fleetwarden.model import Instance
from fleetwarden.state.sqlite import SqliteStore
from fleetwarden.workflows.prices import KIND, compare, stored_tables

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def _item(**change: Any) -> dict[str, Any]:
    return product_item("us-east-1", "m5.large", 0.096, **change)


def test_parses_an_aws_shaped_item_string() -> None:
    assert parse_item(json.dumps(_item())) == ("m5.large", 0.096)


def _without_on_demand() -> dict[str, Any]:
    item = _item()
    item["terms"] = {"Reserved": item["terms"]["OnDemand"]}
    return item


def _without_type() -> dict[str, Any]:
    item = _item()
    del item["product"]["attributes"]["instanceType"]
    return item


def _priced(usd: str) -> dict[str, Any]:
    item = _item()
    for term in item["terms"]["OnDemand"].values():
        for dimension in term["priceDimensions"].values():
            dimension["pricePerUnit"] = {"USD": usd}
    return item


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (_without_on_demand(), "no OnDemand term"),
        (product_item("us-east-1", "m5.large", 0.096, unit="Quantity"), "no positive hourly USD price"),
        (_priced("0.0000000000"), "no positive hourly USD price"),
        (_priced("n/a"), "no positive hourly USD price"),
        (_without_type(), "no instanceType"),
        ('{"product": {"attributes": ', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_odd_items_give_a_reason_not_a_price(item: Any, reason: str) -> None:
    assert parse_item(json.dumps(item) if isinstance(item, dict) else item) == reason


def test_odd_items_are_skipped_and_counted_and_two_prices_keep_the_highest() -> None:
    items = [
        json.dumps(_item()),
        json.dumps(product_item("us-east-1", "m5.large", 0.2, {"usagetype": "USE1-BoxUsage:m5.large-b"})),
        json.dumps(product_item("us-east-1", "t3.micro", 0.0104)),
        json.dumps(_priced("0")),
        "not json",
        json.dumps(_without_on_demand()),
    ]
    parsed = parse_items(items)
    assert parsed.prices == {"m5.large": 0.2, "t3.micro": 0.0104}
    assert parsed.products == 6
    assert dict(parsed.skipped) == {"no positive hourly USD price": 1, "not valid JSON": 1, "no OnDemand term": 1}
    assert parsed.conflicts == {"m5.large": [0.096, 0.2]}
    assert "m5.large: several products ($0.096, $0.2/h); the highest kept" in parsed.notes()


def _table(region: str, prices: dict[str, float], age_days: int) -> RegionTable:
    return RegionTable(region, prices, NOW - timedelta(days=age_days, hours=1))


def test_stored_tables_win_over_the_shipped_table_and_a_price_file_wins_over_them(tmp_path: Path) -> None:
    stored = {"eu-west-1": _table("eu-west-1", {"m5.large": 0.2, "t3.micro": 0.5, "c5.large": 0.3}, 2)}
    table = load_prices(None, stored, now=NOW)
    assert table.price("m5.large", "eu-west-1").usd_per_hour == 0.2
    # a type the stored table lacks: the shipped price x the region's multiplier
    assert table.price("r5.large", "eu-west-1").usd_per_hour == pytest.approx(0.126 * 1.11)
    assert table.price("m5.large", "us-east-1").usd_per_hour == 0.096  # no stored table there
    price_file = tmp_path / "prices.json"
    price_file.write_text(json.dumps({"prices": {"t3.micro": 1.0}, "region_prices": {"eu-west-1": {"c5.large": 9.0}}}))
    merged = load_prices(str(price_file), stored, now=NOW)
    assert merged.price("t3.micro", "eu-west-1").usd_per_hour == pytest.approx(1.0 * 1.11)  # the file's type
    assert merged.price("c5.large", "eu-west-1").usd_per_hour == 9.0  # the file's region price
    assert merged.price("m5.large", "eu-west-1").usd_per_hour == 0.2  # the stored price
    assert merged.origin.endswith(f"; {price_file} merged over it")


def test_the_origin_says_which_table_and_how_old() -> None:
    fresh = describe_tables({"us-east-1": _table("us-east-1", {"m5.large": 0.1}, 2)}, NOW)
    assert fresh.line == (
        "AWS Price List table refreshed 2026-12-01 (2 days old) for us-east-1; "
        "shipped table (compiled 2024-06-15) for the rest"
    )
    assert fresh.as_dict()["source"] == "price-list" and not fresh.stale
    two = {"us-east-1": _table("us-east-1", {"a.b": 1}, 40), "eu-west-1": _table("eu-west-1", {"a.b": 1}, 1)}
    stale = describe_tables(two, NOW)
    assert stale.stale and stale.line.startswith(
        "AWS Price List table refreshed 2026-10-24 to 2026-12-02 (the oldest 40 days old), STALE (over 35 days; "
        "still used): run `fleetwarden prices refresh --apply` for eu-west-1, us-east-1;"
    )
    shipped = describe_tables({}, NOW)
    assert shipped.line == "shipped table (compiled 2024-06-15, 901 days old); run `fleetwarden prices refresh --apply`"
    assert shipped.as_dict() | {"line": ""} == {
        "source": "shipped",
        "refreshed_at": None,
        "age_days": 901,
        "stale": False,
        "regions": [],
        "shipped_compiled": "2024-06-15",
        "problem": None,
        "line": "",
    }


def test_burn_rate_detail_names_the_table() -> None:
    window = Window.ending(NOW, 1)
    fleet = {"111111111111": [Instance("i-1", "111111111111", "eu-west-1", "running", "m5.large", NOW)]}
    stored = {"eu-west-1": _table("eu-west-1", {"m5.large": 0.2}, 3)}
    reading = burn_rate.measure(["111111111111"], window, fleet, None, stored)["111111111111"]
    assert reading.usd == pytest.approx(0.2)
    assert "prices from the AWS Price List table refreshed 2026-11-30 (3 days old) for eu-west-1" in reading.detail
    fallback = burn_rate.measure(["111111111111"], window, fleet, None, None, "store down")["111111111111"]
    assert fallback.usd == pytest.approx(0.096 * 1.11)
    assert (
        "shipped table (compiled 2024-06-15, 901 days old); the stored AWS Price List tables could not be used "
        "(store down)" in fallback.detail
    )


def test_stored_tables_read_from_the_store_skip_bad_records(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.init()
    store.put_record(
        KIND, "us-east-1", {"prices": {"m5.large": 0.1}, "refreshed_at": NOW.isoformat()}, expected_version=None
    )
    store.put_record(KIND, "eu-west-1", {"prices": {"m5.large": "cheap"}, "refreshed_at": "x"}, expected_version=None)
    tables, problem = stored_tables(store)
    assert list(tables) == ["us-east-1"] and tables["us-east-1"].prices == {"m5.large": 0.1}
    assert problem == "price-table/eu-west-1.prices.m5.large must be a non-negative number, got 'cheap'"


def test_a_store_that_cannot_be_read_gives_no_tables_and_the_reason(tmp_path: Path) -> None:
    class Broken(SqliteStore):
        def list_records(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
            raise sqlite3.OperationalError("database is locked")

    store = Broken(tmp_path / "state.db")
    store.init()
    assert stored_tables(store) == ({}, "the state store could not be read: OperationalError: database is locked")


def test_compare_counts_and_orders_the_largest_changes() -> None:
    counts, largest = compare(
        {"a.large": 0.2, "b.large": 1.05, "c.large": 0.5, "new.large": 1.0},
        {"a.large": 0.1, "b.large": 1.0, "c.large": 0.5, "gone.large": 1.0},
        "the shipped table",
        "us-east-1",
    )
    assert (counts["changed"], counts["new"], counts["removed"], counts["unchanged"]) == (2, 1, 1, 1)
    assert largest == ["a.large $0.1 -> $0.2 (+100.0%)", "b.large $1 -> $1.05 (+5.0%)"]
