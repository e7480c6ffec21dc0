"""Spend sources against the moto server: burn-rate, CloudWatch billing metrics, Cost Explorer and CUR 2.0 in S3."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.collect.spend import SpendReading, SpendSourceError, measure_spend, normalize_source
from fleetwarden.config import AwsSettings, BillingAccount, SpendSource
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.errors import EXIT_PARTIAL, ConfigError
from fleetwarden.model import Instance

A, B, C = "111111111111", "222222222222", "333333333333"
PAYER = "999999999999"
BILLING = BillingAccount(role_arn=f"arn:aws:iam::{PAYER}:role/FleetWardenBilling", external_id="ext")


def _measure(
    factory: SessionFactory,
    source: SpendSource | str,
    now: datetime,
    *,
    accounts: Sequence[str] = (A, B),
    hours: float = 6,
    instances: dict[str, list[Instance]] | None = None,
    billing: BillingAccount | None = BILLING,
) -> dict[str, SpendReading]:
    return measure_spend(
        normalize_source(source),
        factory=factory,
        account_ids=accounts,
        window_hours=hours,
        now=now,
        instances=instances or {},
        billing=billing,
    )


def _payer_client(aws: EmulatorServer, service: str) -> Any:
    """A client acting in the payer account, made by a factory of the test's own (as an operator would seed)."""
    seeder = SessionFactory(AwsSettings(endpoint_url=aws.url, max_attempts=2), run_id="seed")
    seeder.register_account(AccountAccess(PAYER, f"arn:aws:iam::{PAYER}:role/Seeder"))
    return seeder.client(service, region="us-east-1", account_id=PAYER)


# -- burn-rate ------------------------------------------------------------------------------------------


def _instance(
    n: int, instance_type: str, region: str = "us-east-1", state: str = "running", account: str = A
) -> Instance:
    return Instance(f"i-{n:017x}", account, region, state, instance_type, datetime(2025, 1, 1, tzinfo=UTC))


def test_burn_rate_prices_running_and_pending_instances(factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    fleet = {
        A: [
            _instance(1, "t3.micro"),
            _instance(2, "t3.micro", state="pending"),
            _instance(3, "m5.large", region="eu-west-1"),
            _instance(4, "p3.16xlarge", state="stopped"),  # stopped: costs no compute
        ]
    }
    readings = _measure(factory, "burn-rate", now, instances=fleet)
    hourly = 2 * 0.0104 + 0.096 * 1.11
    assert readings[A].usd == pytest.approx(hourly * 6)
    assert readings[A].window_end == now and readings[A].window_start == now - timedelta(hours=6)
    assert "3 running/pending instances" in readings[A].detail and "instant" in readings[A].detail
    assert readings[B].usd == 0.0 and "no running or pending" in readings[B].detail


def test_burn_rate_estimates_unknown_types_and_says_so(factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    fleet = {A: [_instance(1, "m5.96xlarge"), _instance(2, "zz9.large")]}
    reading = _measure(factory, "burn-rate", now, accounts=[A], hours=1, instances=fleet)[A]
    # m5's price per size unit (0.096 / 4) x 768 units; an unknown family: the documented default per unit x 4
    assert reading.usd == pytest.approx(0.024 * 768 + 0.0315 * 4)
    assert "m5.96xlarge: estimated from family m5" in reading.detail
    assert "zz9.large: unknown type" in reading.detail


def test_burn_rate_price_file_overrides_the_table(factory: SessionFactory, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"prices": {"t3.micro": 1.5}, "region_prices": {"eu-west-1": {"m5.large": 0.5}}}))
    fleet = {A: [_instance(1, "t3.micro"), _instance(2, "m5.large", region="eu-west-1"), _instance(3, "c5.large")]}
    source = SpendSource(type="burn-rate", price_file=str(prices))
    reading = _measure(factory, source, datetime(2025, 3, 10, tzinfo=UTC), accounts=[A], hours=2, instances=fleet)[A]
    assert reading.usd == pytest.approx((1.5 + 0.5 + 0.085) * 2)  # c5.large still comes from the shipped table
    assert str(prices) in reading.detail


def test_burn_rate_unreadable_price_file_is_an_error(factory: SessionFactory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"prices": {"t3.micro": "cheap"}}')
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(SpendSourceError) as err:
            _measure(factory, SpendSource(type="burn-rate", price_file=str(path)), datetime.now(UTC))
        assert err.value.source == "burn-rate" and err.value.exit_code == EXIT_PARTIAL


# -- cloudwatch -----------------------------------------------------------------------------------------


def _put_charges(cloudwatch: Any, account_id: str, points: Sequence[tuple[datetime, float]]) -> None:
    cloudwatch.put_metric_data(
        Namespace="AWS/Billing",
        MetricData=[
            {
                "MetricName": "EstimatedCharges",
                "Dimensions": [{"Name": "Currency", "Value": "USD"}, {"Name": "LinkedAccount", "Value": account_id}],
                "Timestamp": at,
                "Value": usd,
                "Unit": "None",
            }
            for at, usd in points
        ],
    )


def test_cloudwatch_rise_over_the_window_per_account(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)  # window 06:00 .. 12:00
    cloudwatch = _payer_client(aws, "cloudwatch")
    day = datetime(2025, 3, 10, tzinfo=UTC)
    _put_charges(cloudwatch, A, [(day, 100.0), (day.replace(hour=5), 110.0), (day.replace(hour=8), 130.0)])
    _put_charges(cloudwatch, A, [(day.replace(hour=11), 150.0)])
    _put_charges(cloudwatch, B, [(day - timedelta(hours=4), 50.0), (day.replace(hour=10), 80.0)])
    readings = _measure(factory, "cloudwatch", now)
    assert readings[A].usd == pytest.approx(40.0)  # 150 at 11:00 - 110 at 05:00
    assert readings[B].usd == pytest.approx(30.0)  # 80 at 10:00 - 50 the evening before
    assert "$150.00 at 2025-03-10 11:00Z - $110.00 at 2025-03-10 05:00Z" in readings[A].detail
    assert "hours late" in readings[A].detail


def test_cloudwatch_across_a_month_boundary_counts_the_new_month_from_zero(
    aws: EmulatorServer, factory: SessionFactory
) -> None:
    now = datetime(2025, 3, 1, 3, tzinfo=UTC)  # window 2025-02-28 21:00 .. 2025-03-01 03:00
    cloudwatch = _payer_client(aws, "cloudwatch")
    feb = datetime(2025, 2, 28, tzinfo=UTC)
    _put_charges(cloudwatch, A, [(feb.replace(hour=18), 900.0), (feb.replace(hour=23), 950.0)])
    _put_charges(cloudwatch, A, [(datetime(2025, 3, 1, 2, tzinfo=UTC), 20.0)])
    reading = _measure(factory, "cloudwatch", now, accounts=[A])[A]
    assert reading.usd == pytest.approx(50.0 + 20.0)  # February's last hours, plus March's month-to-date
    assert "2025-03: $20.00" in reading.detail and "$0.00 at the month's start" in reading.detail


def test_cloudwatch_without_metric_data_is_an_error_not_zero(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    _put_charges(_payer_client(aws, "cloudwatch"), A, [(now - timedelta(hours=1), 10.0)])
    with pytest.raises(SpendSourceError) as err:
        _measure(factory, "cloudwatch", now)
    assert set(err.value.failed) == {B} and "LinkedAccount=222222222222" in str(err.value)
    assert set(err.value.readings) == {A}  # what could be read is still there for the caller


def test_cloudwatch_stale_metric_is_an_error(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    _put_charges(_payer_client(aws, "cloudwatch"), A, [(now - timedelta(hours=30), 10.0)])
    with pytest.raises(SpendSourceError, match="stale"):
        _measure(factory, "cloudwatch", now, accounts=[A])


def test_billing_sources_read_the_payer_account_through_its_role(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    _put_charges(
        _payer_client(aws, "cloudwatch"), A, [(now - timedelta(hours=7), 1.0), (now - timedelta(hours=1), 4.0)]
    )
    # The payer is also a fleet account reached with the current credentials (like a management account).
    factory.register_account(AccountAccess(PAYER, None, None, "management"))
    assert _measure(factory, "cloudwatch", now, accounts=[A])[A].usd == pytest.approx(3.0)
    assert factory.access(PAYER).role_arn is None  # the guard's own access to that account is left alone
    assert factory.counter.calls.get("cloudwatch:GetMetricData") == 1  # billing calls are counted with the run's
    # Without the billing role the current credentials' account is read: it has no billing metrics.
    with pytest.raises(SpendSourceError, match="with the current credentials"):
        _measure(factory, "cloudwatch", now, accounts=[A], billing=None)


# -- cost-explorer --------------------------------------------------------------------------------------


def _day(start: str, end: str, groups: dict[str, str]) -> dict[str, Any]:
    return {
        "TimePeriod": {"Start": start, "End": end},
        "Total": {},
        "Groups": [
            {"Keys": [account], "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"}}}
            for account, amount in groups.items()
        ],
        "Estimated": True,
    }


def test_cost_explorer_unblended_cost_by_linked_account_paginated(aws: EmulatorServer, factory: SessionFactory) -> None:
    pages = [
        {"ResultsByTime": [_day("2025-03-09", "2025-03-10", {A: "12.50", B: "1.25"})], "NextPageToken": "page-2"},
        {"ResultsByTime": [_day("2025-03-10", "2025-03-11", {A: "7.50"})], "DimensionValueAttributes": []},
    ]
    # Seeded in the payer account: only a request made there (through the billing role) gets these results.
    aws.admin("/moto-api/static/ce/cost-and-usage-results", {"results": pages, "account_id": PAYER})
    now = datetime(2025, 3, 10, 3, tzinfo=UTC)  # window 2025-03-09 21:00 .. 03:00 -> days 03-09 and 03-10
    readings = _measure(factory, "cost-explorer", now, accounts=[A, B, C])
    assert readings[A].usd == pytest.approx(20.0)
    assert readings[B].usd == pytest.approx(1.25)
    assert readings[C].usd == 0.0 and "no cost recorded" in readings[C].detail
    assert "2025-03-09 .. 2025-03-10 (2 whole days" in readings[A].detail and "a day late" in readings[A].detail
    assert readings[A].window_start == datetime(2025, 3, 9, tzinfo=UTC)
    assert readings[A].window_end == datetime(2025, 3, 11, tzinfo=UTC)
    assert factory.counter.calls.get("ce:GetCostAndUsage") == 2  # one request for all accounts, two pages


def test_cost_explorer_without_results_is_an_error(aws: EmulatorServer, factory: SessionFactory) -> None:
    with pytest.raises(SpendSourceError, match="returned no results"):
        _measure(factory, "cost-explorer", datetime(2025, 3, 10, 3, tzinfo=UTC))


# -- cur ------------------------------------------------------------------------------------------------

HEADER = [
    "bill_payer_account_id",
    "line_item_line_item_type",
    "line_item_usage_account_id",
    "line_item_usage_start_date",
    "line_item_usage_end_date",
    "line_item_unblended_cost",
    "product_instance_type",
]


def _csv_gz(rows: Sequence[tuple[str, str, str]], header: Sequence[str] = HEADER) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for account, start, cost in rows:
        writer.writerow([PAYER, "Usage", account, start, start, cost, "p3.16xlarge"])
    return gzip.compress(text.getvalue().encode())


def _export(
    s3: Any, bucket: str, period: str, files: dict[str, bytes], prefix: str = "cur", name: str = "fleet"
) -> None:
    keys = []
    for file_name, data in files.items():
        key = f"{prefix}/{name}/data/BILLING_PERIOD={period}/{file_name}"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        keys.append(f"s3://{bucket}/{key}")
    manifest = {
        "exportArn": f"arn:aws:bcm-data-exports:us-east-1:{PAYER}:export/{name}-0000",
        "exportName": name,
        "executionId": "exec-1",
        "billingPeriod": {"start": f"{period}-01T00:00:00.000Z"},
        "dataFiles": keys,
        "columns": [{"name": column, "type": "string"} for column in HEADER],
    }
    s3.put_object(
        Bucket=bucket,
        Key=f"{prefix}/{name}/metadata/BILLING_PERIOD={period}/{name}-Manifest.json",
        Body=json.dumps(manifest).encode(),
    )


def test_cur_sums_only_the_windows_rows_of_each_account(aws: EmulatorServer, factory: SessionFactory) -> None:
    s3 = _payer_client(aws, "s3")
    s3.create_bucket(Bucket="billing-exports")
    # window 2025-02-28 21:00 .. 2025-03-01 03:00: two billing periods, two manifests
    _export(
        s3,
        "billing-exports",
        "2025-02",
        {
            "fleet-00001.csv.gz": _csv_gz(
                [
                    (A, "2025-02-28T20:00:00.000Z", "100.0"),  # before the window
                    (A, "2025-02-28T22:00:00.000Z", "1.5"),
                    (B, "2025-02-28T23:00:00Z", "2.25"),
                    (C, "2025-02-28T23:00:00Z", "1000"),  # an account not asked about
                ]
            ),
            "fleet-00002.csv.gz": _csv_gz([(A, "2025-02-28 21:00:00", "0.5")]),
        },
    )
    s3.put_object(  # a stale file of an older execution, not in the manifest: never read
        Bucket="billing-exports",
        Key="cur/fleet/data/BILLING_PERIOD=2025-02/old/fleet-00001.csv.gz",
        Body=_csv_gz([(A, "2025-02-28T22:00:00Z", "5000")]),
    )
    _export(
        s3,
        "billing-exports",
        "2025-03",
        {
            "fleet-00001.csv.gz": _csv_gz(
                [(A, "2025-03-01T02:00:00.000Z", "3.0"), (A, "2025-03-01T03:00:00.000Z", "700")]  # end is exclusive
            )
        },
    )
    now = datetime(2025, 3, 1, 3, tzinfo=UTC)
    readings = _measure(factory, SpendSource(type="cur", bucket="billing-exports", prefix="cur"), now)
    assert readings[A].usd == pytest.approx(1.5 + 0.5 + 3.0)
    assert readings[B].usd == pytest.approx(2.25)
    assert "3 rows" in readings[A].detail and "BILLING_PERIOD=2025-03/fleet-Manifest.json" in readings[A].detail
    # prefix may also name the export's own folder
    direct = _measure(factory, SpendSource(type="cur", bucket="billing-exports", prefix="cur/fleet/"), now)
    assert direct[A].usd == pytest.approx(5.0)


def test_cur_unreadable_export_is_an_error(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime(2025, 3, 10, 12, tzinfo=UTC)
    source = SpendSource(type="cur", bucket="billing-exports", prefix="cur")
    with pytest.raises(SpendSourceError, match="NoSuchBucket"):
        _measure(factory, source, now)
    s3 = _payer_client(aws, "s3")
    s3.create_bucket(Bucket="billing-exports")
    with pytest.raises(SpendSourceError, match="no manifest for billing period 2025-03"):
        _measure(factory, source, now)
    _export(s3, "billing-exports", "2025-03", {"fleet-00001.csv.gz": b"not gzip at all"})
    with pytest.raises(SpendSourceError, match="malformed CSV"):
        _measure(factory, source, now)
    rows = [(A, "2025-03-10T10:00:00Z", "1.0")]
    _export(s3, "billing-exports", "2025-03", {"fleet-00001.csv.gz": _csv_gz(rows, header=[*HEADER[:-2], "x", "y"])})
    with pytest.raises(SpendSourceError, match="no column line_item_unblended_cost"):
        _measure(factory, source, now)
    _export(s3, "billing-exports", "2025-03", {"fleet-00001.csv.gz": _csv_gz([(A, "yesterday", "1.0")])})
    with pytest.raises(SpendSourceError, match="malformed CSV"):
        _measure(factory, source, now)
    _export(s3, "billing-exports", "2025-03", {"f.csv.gz": _csv_gz(rows)}, name="other")
    with pytest.raises(SpendSourceError, match=r"several exports .* \(fleet, other\)"):
        _measure(factory, source, now)


def test_cur_needs_a_bucket(factory: SessionFactory) -> None:
    with pytest.raises(SpendSourceError, match="needs `bucket:`"):
        _measure(factory, SpendSource(type="cur"), datetime(2025, 3, 10, tzinfo=UTC))


def test_normalize_source() -> None:
    assert normalize_source("cost-explorer") == SpendSource(type="cost-explorer")
    source = SpendSource(type="cur", bucket="b", prefix="p")
    assert normalize_source(source) is source
    with pytest.raises(ConfigError, match="unknown spend source"):
        normalize_source("bitcoin")
