"""The burn-rate price table: shipped data, region multipliers, estimates for unknown types, price_file merging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetwarden.collect.spend.base import Window
from fleetwarden.collect.spend.cloudwatch import Point, rise
from fleetwarden.collect.spend.cost_explorer import days_covering
from fleetwarden.collect.spend.prices import PriceTableError, load_prices, size_units, table_from_dict


def test_shipped_table_is_well_formed_and_documented() -> None:
    raw = json.loads((Path(__file__).parents[2] / "src/fleetwarden/data/prices.json").read_text())
    assert raw["approximate"] is True and raw["as_of"] and "us-east-1" in raw["source"]
    table = load_prices()
    assert load_prices() is table  # read once, cached
    # Every shipped type is loaded, at its shipped price, and none is free (431 types in the 2024-06 table).
    assert table.prices == raw["prices"] and len(table.prices) == 431
    assert all(p > 0 for p in table.prices.values())
    # Common types at their us-east-1 Linux on-demand prices, as AWS's pricing page listed them in 2024-06.
    assert {t: table.prices[t] for t in ("t3.micro", "m5.large", "c6i.xlarge", "r6g.large", "m1.small")} == {
        "t3.micro": 0.0104,
        "m5.large": 0.096,
        "c6i.xlarge": 0.17,
        "r6g.large": 0.1008,
        "m1.small": 0.044,
    }
    assert (table.prices["g4dn.xlarge"], table.prices["p3.16xlarge"]) == (0.526, 24.48)
    # every family's price grows with its size
    for family in ("t3", "m5", "c7g"):
        sized = [(size_units(t.split(".")[1]), p) for t, p in table.prices.items() if t.startswith(family + ".")]
        ordered = sorted((units, p) for units, p in sized if units is not None)
        assert [p for _, p in ordered] == sorted(p for _, p in ordered)


def test_region_multipliers_and_exact_region_prices() -> None:
    table = table_from_dict(
        {
            "prices": {"m5.large": 0.1},
            "region_multipliers": {"us-east-1": 1.0, "eu-west-1": 1.2},
            "default_region_multiplier": 1.5,
            "region_prices": {"ap-east-1": {"m5.large": 0.3}},
        },
        "test",
    )
    assert table.price("m5.large", "us-east-1").usd_per_hour == pytest.approx(0.1)
    assert table.price("m5.large", "eu-west-1").usd_per_hour == pytest.approx(0.12)
    assert table.price("m5.large", "ap-east-1").usd_per_hour == pytest.approx(0.3)
    unknown = table.price("m5.large", "xx-moon-1")
    assert unknown.usd_per_hour == pytest.approx(0.15) and "unknown region" in unknown.basis


def test_unknown_types_are_estimated_high_from_family_then_category_then_default() -> None:
    table = table_from_dict(
        {
            "prices": {"c9.large": 0.1, "c9.xlarge": 0.18, "g9.xlarge": 1.0, "g9.12xlarge": 4.0},
            "fallback": {"per_unit_usd": 0.05, "hourly_usd": 3.0},
        },
        "test",
    )
    assert table.price("c9.4xlarge", "us-east-1").usd_per_hour == pytest.approx(0.025 * 32)  # family's top per unit
    assert table.price("c9.metal", "us-east-1").usd_per_hour == pytest.approx(0.18)  # dearest of the family
    assert table.price("c10.large", "us-east-1").usd_per_hour == pytest.approx(0.1)  # category c
    estimate = table.price("g10.2xlarge", "us-east-1")
    assert estimate.estimated and estimate.usd_per_hour == pytest.approx(1.0 / 8 * 16)
    assert "category g" in estimate.basis
    assert table.price("q1.large", "us-east-1").usd_per_hour == pytest.approx(0.2)  # default per unit x 4
    assert table.price("q1.metal", "us-east-1").usd_per_hour == pytest.approx(3.0)  # default hourly
    assert not table.price("c9.large", "us-east-1").estimated


def test_price_file_is_merged_over_the_shipped_table(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prices": {"m5.large": 9.0, "custom.large": 1.0}}))
    table = load_prices(str(path))
    assert table.prices["m5.large"] == 9.0 and table.prices["custom.large"] == 1.0
    assert table.prices["t3.micro"] == load_prices().prices["t3.micro"]
    assert table.region_multipliers == load_prices().region_multipliers
    path.write_text("[1, 2]")
    with pytest.raises(PriceTableError, match="JSON object"):
        load_prices(str(path))
    with pytest.raises(PriceTableError, match="non-negative number"):
        table_from_dict({"prices": {"m5.large": -1}}, "test")


def test_cloudwatch_rise_handles_a_late_reset() -> None:
    end = datetime(2025, 3, 1, 6, tzinfo=UTC)
    window = Window(end - timedelta(hours=3), end)
    # AWS still reports February's total in March's first hours before resetting it
    points = [Point(datetime(2025, 3, 1, 1, tzinfo=UTC), 900.0), Point(datetime(2025, 3, 1, 5, tzinfo=UTC), 12.0)]
    usd, detail = rise(points, window)
    assert usd == pytest.approx(12.0) and "reset" in detail


def test_cost_explorer_days_cover_the_window() -> None:
    at = datetime(2025, 3, 10, 3, tzinfo=UTC)
    assert [d.isoformat() for d in days_covering(Window(at - timedelta(hours=6), at))] == ["2025-03-09", "2025-03-11"]
    midnight = datetime(2025, 3, 10, tzinfo=UTC)
    assert [d.isoformat() for d in days_covering(Window(midnight - timedelta(hours=6), midnight))] == [
        "2025-03-09",
        "2025-03-10",
    ]
