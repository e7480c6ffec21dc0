"""`fleetwarden prices refresh` against the emulator's Price List (real boto3 over HTTP), and the guard's burn-rate
pricing from what it stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from fleet import ACCOUNTS, cli, ec2, role

from fleetwarden.aws.session import SessionFactory
from fleetwarden.collect.pricelist import filters
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.permissions import policy_documents
from fleetwarden.state import open_store

A, B, _ = ACCOUNTS
TODAY = datetime.now(UTC).date().isoformat()


def config(tmp_path: Path, endpoint: str, regions: list[str], **guard: Any) -> Path:
    body: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
        "regions": regions,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "guard": {"max_running_instances": 100, **guard},
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def stored(tmp_path: Path) -> dict[str, tuple[dict[str, Any], int]]:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        return {key: (data, version) for key, data, version in store.list_records("price-table")}
    finally:
        store.close()


# 150 types in eu-west-3: two pages of GetProducts (100 per page).
MANY = {f"c9x.{n}xlarge": round(0.05 * n + 0.0001, 4) for n in range(1, 151)}


def seed_many(aws: EmulatorServer) -> None:
    aws.client.set_price_products(
        [{"region": "eu-west-3", "instance_type": t, "usd": usd} for t, usd in MANY.items()]
        # Left out by the filters: Windows, and a reservation's price
        + [
            {
                "region": "eu-west-3",
                "instance_type": "c9x.1xlarge",
                "usd": 9.0,
                "attributes": {"operatingSystem": "Windows"},
            }
        ]
    )


def test_apply_stores_the_seeded_prices_of_every_page(aws: EmulatorServer, tmp_path: Path) -> None:
    seed_many(aws)
    path = config(tmp_path, aws.url, ["us-east-1", "eu-west-3"])
    result = cli("--config", str(path), "--json", "prices", "refresh", "--apply")
    assert result.exit_code == 0, result.stderr
    report = result.report
    assert report["workflow"] == "prices-refresh" and report["dry_run"] is False
    assert {(t["region"], t["status"]) for t in report["targets"]} == {("us-east-1", "ok"), ("eu-west-3", "ok")}
    tables = stored(tmp_path)
    data, version = tables["eu-west-3"]
    assert data["prices"] == MANY and data["products"] == 150 and data["pages"] == 2 and version == 1
    assert data["source"] == "AWS Price List GetProducts" and data["refreshed_at"].startswith(TODAY)
    east = tables["us-east-1"][0]["prices"]
    assert east["m5.large"] == 0.096 and east["p5.48xlarge"] == 55.04 and len(east) == 8  # Windows left out
    summary = report["summary"]
    assert summary["stored"] == ["eu-west-3", "us-east-1"] and summary["failed"] == []
    assert summary["regions"]["eu-west-3"]["types"] == 150 and summary["regions"]["eu-west-3"]["new"] == 150
    # p5.48xlarge: the shipped table's 2024 price against today's
    assert "p5.48xlarge $98.32 -> $55.04" in summary["regions"]["us-east-1"]["largest_changes"][0]
    assert summary["price_table"]["source"] == "price-list" and summary["price_table"]["age_days"] == 0

    # A second refresh writes over the stored version and compares with it.
    aws.client.set_price_products([{"region": "us-east-1", "instance_type": "m5.large", "usd": 0.1}])
    again = cli("--config", str(path), "--json", "prices", "refresh", "--apply", "--regions", "us-east-1").report
    assert again["summary"]["stored"] == ["us-east-1"]
    entry = again["summary"]["regions"]["us-east-1"]
    assert entry["changed"] == 1 and entry["compared_with"] == f"the stored table of {TODAY}"
    assert entry["largest_changes"] == ["m5.large $0.096 -> $0.1 (+4.2%)"]
    tables = stored(tmp_path)
    assert tables["us-east-1"][0]["prices"]["m5.large"] == 0.1 and tables["us-east-1"][1] == 2
    assert tables["eu-west-3"][1] == 1  # not asked for: untouched


def test_dry_run_shows_the_changes_and_stores_nothing(aws: EmulatorServer, tmp_path: Path) -> None:
    path = config(tmp_path, aws.url, ["us-east-1", "eu-west-1"])
    result = cli("--config", str(path), "prices", "refresh")
    assert result.exit_code == 0, result.stderr
    console = " ".join(result.stderr.split())  # the console summary goes to stderr, wrapped
    assert "DRY RUN" in console
    assert "region us-east-1: would store 8 types from 8 products; against the shipped table" in console
    assert "prices: shipped table (compiled 2024-06-15" in console
    assert stored(tmp_path) == {}


def test_a_failing_region_is_reported_and_the_others_are_stored(aws: EmulatorServer, tmp_path: Path) -> None:
    aws.client.set_price_faults(
        [{"region_code": "eu-west-1", "code": "ThrottlingException", "message": "Rate exceeded"}]
    )
    path = config(tmp_path, aws.url, ["us-east-1", "eu-west-1", "ap-south-2"])
    result = cli("--config", str(path), "--json", "prices", "refresh", "--apply")
    assert result.exit_code == 4
    errors = {t["region"]: t["error"] for t in result.report["targets"] if t["status"] == "error"}
    assert errors["eu-west-1"] == "GetProducts failed: ThrottlingException: Rate exceeded"
    assert errors["ap-south-2"].startswith("no products")  # nothing seeded there: never an empty table
    assert set(errors) == {"eu-west-1", "ap-south-2"}
    assert set(stored(tmp_path)) == {"us-east-1"}
    assert result.report["summary"]["failed"] == ["ap-south-2", "eu-west-1"]
    # botocore's standard retries ran before the region was given up (max_attempts 2)
    hits = aws.client._json("/_fleetwarden/pricing/faults", method="GET")["rules"][0]["hits"]
    calls = {(c["action"], c["count"]) for c in aws.client.calls()["calls"] if c["service"] == "pricing"}
    assert hits >= 2 and calls == {("GetProducts", 2 + hits)}


def test_emulator_answers_as_the_price_list_does(aws: EmulatorServer, factory: SessionFactory) -> None:
    seed_many(aws)
    client = factory.client("pricing", region="us-east-1")
    first = client.get_products(ServiceCode="AmazonEC2", Filters=filters("eu-west-3"), MaxResults=40)
    assert first["FormatVersion"] == "aws_v1" and len(first["PriceList"]) == 40 and first["NextToken"]
    assert isinstance(first["PriceList"][0], str)
    with pytest.raises(ClientError) as err:
        client.get_products(ServiceCode="AmazonEC2", Filters=filters("us-east-1"), NextToken=first["NextToken"])
    assert err.value.response["Error"]["Code"] == "InvalidNextTokenException"
    with pytest.raises(ClientError) as err:
        client.get_products(ServiceCode="AmazonNothing")
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"


def _run_m5(factory: SessionFactory, count: int) -> None:
    ec2(factory, A, "us-east-1").run_instances(
        ImageId="ami-12345678", MinCount=count, MaxCount=count, InstanceType="m5.large"
    )


def test_guard_prices_burn_rate_from_the_stored_table(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    aws.client.set_price_products([{"region": "us-east-1", "instance_type": "m5.large", "usd": 0.5}])
    spend = {"max_usd": 1000, "window_hours": 6, "sources": ["burn-rate"]}
    path = config(tmp_path, aws.url, ["us-east-1"], spend=spend)
    assert cli("--config", str(path), "prices", "refresh", "--apply").exit_code == 0
    _run_m5(factory, 2)
    report = cli("--config", str(path), "--json", "guard", "run").report
    assert report["summary"]["spend_by_account"][A]["burn-rate"] == pytest.approx(2 * 0.5 * 6)  # not the shipped 0.096
    table = report["summary"]["price_table"]
    assert table["source"] == "price-list" and table["regions"] == ["us-east-1"] and table["stale"] is False
    assert report["summary"]["prices"].startswith(f"AWS Price List table refreshed {TODAY} (0 days old) for us-east-1")
    console = " ".join(cli("--config", str(path), "guard", "run").stderr.split())
    assert f"prices: AWS Price List table refreshed {TODAY}" in console


def test_guard_falls_back_to_the_shipped_table_and_says_how_old(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    path = config(tmp_path, aws.url, ["us-east-1"], spend={"max_usd": 1000, "sources": ["burn-rate"]})
    _run_m5(factory, 2)
    result = cli("--config", str(path), "guard", "run")
    assert result.exit_code == 0, result.stderr
    age = (datetime.now(UTC).date() - datetime(2024, 6, 15).date()).days
    line = f"prices: shipped table (compiled 2024-06-15, {age} days old); run `fleetwarden prices refresh --apply`"
    assert line in " ".join(result.stderr.split())
    report = cli("--config", str(path), "--json", "guard", "run").report
    assert report["summary"]["spend_by_account"][A]["burn-rate"] == pytest.approx(2 * 0.096 * 6, abs=0.01)
    assert report["summary"]["price_table"]["source"] == "shipped"


def test_the_configs_policy_allows_every_call_of_a_refresh_and_a_guard_run(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    path = config(tmp_path, aws.url, ["us-east-1"], spend={"max_usd": 1000, "sources": ["burn-rate"]})
    _run_m5(factory, 1)
    aws.client.reset_calls()
    assert cli("--config", str(path), "prices", "refresh", "--apply").exit_code == 0
    assert cli("--config", str(path), "guard", "run").exit_code == 0
    made = {f"{c['service']}:{c['action']}" for c in aws.client.calls()["calls"]} - {"sts:GetCallerIdentity"}
    docs = policy_documents(load_config(path))
    allowed = {a for d in ("hub", "member_role") for s in docs[d]["Statement"] for a in s["Action"]}
    assert "pricing:GetProducts" in made and made <= allowed, sorted(made - allowed)
    hub = {a for s in docs["hub"]["Statement"] for a in s["Action"]}
    assert "pricing:GetProducts" in hub
    # without burn-rate, nothing reads the Price List: the hub does not get it
    other = config(tmp_path, aws.url, ["us-east-1"], spend={"max_usd": 1000, "sources": ["cost-explorer"]})
    docs = policy_documents(load_config(other))
    assert all("pricing:GetProducts" not in s["Action"] for d in docs.values() for s in d["Statement"])


def test_the_weekly_lambda_event_stores_the_table_and_skips_without_burn_rate(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's PricesRefreshScheduleRule sends {"action": "prices-refresh", "apply": true}."""
    import json

    from fleetwarden.lambda_handler import handler

    sample = json.loads((Path(__file__).parents[1] / "events" / "prices_refresh.json").read_text())
    path = config(tmp_path, aws.url, ["us-east-1"], spend={"max_usd": 100, "sources": ["burn-rate"]})
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    result = handler(sample, None)
    assert result["status"] == "ok" and result["workflow"] == "prices-refresh" and result["dry_run"] is False, result
    assert stored(tmp_path)["us-east-1"][0]["prices"]["m5.large"] == 0.096
    # Without a burn-rate source nothing reads the table: the run fetches nothing and says so (not a failure).
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(config(other, aws.url, ["us-east-1"])))
    skipped = handler(sample, None)
    assert skipped["status"] == "ok" and "no burn-rate source" in skipped["summary"]["skipped"], skipped
    assert stored(other) == {}
