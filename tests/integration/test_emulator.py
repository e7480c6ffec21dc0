"""The emulator's extensions over HTTP with real boto3: latency, fault rules, call counts, back-dating, seeding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from fleetwarden.emulator.middleware import FleetwardenMiddleware
from fleetwarden.emulator.seed import VIOLATIONS, FleetSpec, SeedAccount, seed_bulk, seed_fleet
from fleetwarden.emulator.server import EmulatorServer, WsgiApp

IMAGE = "ami-12345678"


def client(url: str, service: str, region: str = "us-east-1", attempts: int = 1, **creds: Any) -> Any:
    config = BotoConfig(retries={"mode": "standard", "max_attempts": attempts})
    return boto3.client(service, region_name=region, endpoint_url=url, config=config, **creds)


def assumed(url: str, service: str, account_id: str, region: str) -> Any:
    sts = client(url, "sts")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/FleetWarden", RoleSessionName="test")
    c = creds["Credentials"]
    return client(
        url,
        service,
        region,
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )


def instances(ec2: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance
    return found


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# -- latency -------------------------------------------------------------------------------------------------


def test_latency_is_added_to_aws_requests_only(aws: EmulatorServer) -> None:
    ec2 = client(aws.url, "ec2")
    ec2.describe_instances()  # warm up the region's backend
    aws.client.set_latency(250)
    started = time.monotonic()
    ec2.describe_instances()
    assert time.monotonic() - started >= 0.25
    # Admin requests are never delayed: with 30 s of latency set, an admin call that took it would take 30 s.
    # (A bound far from both outcomes, so a busy machine cannot make it flaky.)
    aws.client.set_latency(30_000)
    started = time.monotonic()
    assert aws.client.settings()["latency_ms"] == [30_000.0, 30_000.0]
    assert time.monotonic() - started < 15
    aws.client.set_latency([0, 0])
    assert aws.client.settings()["latency_ms"] is None


def test_latency_range_and_constructor_setting_survive_reset() -> None:
    delays: list[float] = []
    middleware = FleetwardenMiddleware(lambda env, start: [], latency_ms=[10, 20], seed=1, sleep=delays.append)
    environ = {"PATH_INFO": "/", "REQUEST_METHOD": "GET", "QUERY_STRING": "Action=DescribeInstances"}
    for _ in range(20):
        middleware(dict(environ), lambda *a: None)
    assert all(0.010 <= d <= 0.020 for d in delays) and len(set(delays)) > 1
    middleware.set_latency(None)
    middleware(dict(environ, PATH_INFO="/moto-api/reset", REQUEST_METHOD="POST"), lambda *a: None)
    assert middleware.settings()["latency_ms"] == [10.0, 20.0]


# -- faults --------------------------------------------------------------------------------------------------


def test_unavailable_fault_hits_only_its_region(aws: EmulatorServer) -> None:
    aws.client.set_faults([{"region": "eu-west-3", "service": "ec2", "mode": "unavailable"}])
    with pytest.raises(ClientError) as caught:
        client(aws.url, "ec2", "eu-west-3").describe_instances()
    error = caught.value.response
    assert error["Error"]["Code"] == "Unavailable"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert client(aws.url, "ec2", "eu-west-1").describe_instances()["Reservations"] == []
    client(aws.url, "iam", "us-east-1").list_users()  # other services and regions are untouched
    # Clearing the rules heals the region.
    aws.client.set_faults([])
    assert client(aws.url, "ec2", "eu-west-3").describe_instances()["Reservations"] == []


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [
        ("ec2", lambda c: c.describe_instances(), "RequestLimitExceeded"),
        ("iam", lambda c: c.list_users(), "Throttling"),
        ("dynamodb", lambda c: c.list_tables(), "ThrottlingException"),
        ("s3", lambda c: c.list_buckets(), "SlowDown"),
    ],
)
def test_throttle_uses_each_protocols_error_shape(aws: EmulatorServer, service: str, call: Any, code: str) -> None:
    aws.client.set_faults([{"service": service, "mode": "throttle"}])
    with pytest.raises(ClientError) as caught:
        call(client(aws.url, service))
    assert caught.value.response["Error"]["Code"] == code


def test_botocore_retries_throttling_then_succeeds(aws: EmulatorServer) -> None:
    ec2 = client(aws.url, "ec2", "ap-south-1", attempts=4)
    ec2.describe_instances()
    aws.client.set_faults([{"region": "ap-south-1", "mode": "throttle", "limit": 2}])
    aws.client.reset_calls()
    response = ec2.describe_instances()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    calls = aws.client.calls()
    assert (calls["total"], calls["faults"]) == (3, 2)
    assert aws.client.settings()["faults"][0]["hits"] == 2


def test_probabilistic_throttling_is_retried_to_success(aws: EmulatorServer) -> None:
    def wrap(app: WsgiApp) -> WsgiApp:
        return FleetwardenMiddleware(
            app, faults=[{"region": "sa-east-1", "mode": "throttle", "probability": 0.3}], seed=3
        )

    with EmulatorServer(wrap=wrap, log_requests=False) as server:
        ec2 = client(server.url, "ec2", "sa-east-1", attempts=8)
        for _ in range(4):
            ec2.describe_instances()
        calls = server.client.calls()
        assert calls["faults"] == 1  # seed 3 draws one throttle in these 5 requests; every call still succeeded
        assert calls["total"] == 4 + calls["faults"]


def test_bad_admin_requests_are_refused(aws: EmulatorServer) -> None:
    with pytest.raises(RuntimeError, match=r"HTTP 400.*mode"):
        aws.client.set_faults([{"region": "eu-west-3", "mode": "explode"}])
    with pytest.raises(RuntimeError, match=r"HTTP 400.*unknown fault rule keys"):
        aws.client.set_faults([{"regoin": "eu-west-3"}])
    with pytest.raises(RuntimeError, match=r"HTTP 400.*latency_ms"):
        aws.client.set_latency([5, 1])
    with pytest.raises(RuntimeError, match=r"HTTP 404"):
        aws.client.request("/_fleetwarden/nothing", {})


def test_moto_reset_clears_middleware_settings(aws: EmulatorServer) -> None:
    aws.client.set_latency(5)
    aws.client.set_faults([{"region": "eu-west-3"}])
    client(aws.url, "ec2").describe_instances()
    aws.reset()
    assert aws.client.settings() == {"latency_ms": None, "faults": []}
    assert aws.client.calls()["total"] == 0


# -- call counting -------------------------------------------------------------------------------------------


def test_calls_are_counted_per_service_region_and_action(aws: EmulatorServer) -> None:
    client(aws.url, "ec2", "eu-west-1").describe_instances()
    client(aws.url, "ec2", "eu-west-1").describe_instances()
    client(aws.url, "ec2", "us-east-1").describe_regions()
    client(aws.url, "sts").get_caller_identity()
    client(aws.url, "dynamodb", "eu-west-1").list_tables()
    rows = {(r["service"], r["region"], r["action"]): r["count"] for r in aws.client.calls()["calls"]}
    assert rows == {
        ("ec2", "eu-west-1", "DescribeInstances"): 2,
        ("ec2", "us-east-1", "DescribeRegions"): 1,
        ("sts", "us-east-1", "GetCallerIdentity"): 1,
        ("dynamodb", "eu-west-1", "ListTables"): 1,
    }
    assert get_json(aws.url + "/_fleetwarden/calls")["total"] == 5
    aws.client.reset_calls()
    assert aws.client.calls() == {"total": 0, "faults": 0, "calls": []}


# -- back-dating ---------------------------------------------------------------------------------------------


def test_launch_time_back_dating_shows_in_describe_instances(aws: EmulatorServer) -> None:
    ec2 = assumed(aws.url, "ec2", "111111111111", "eu-west-1")
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=IMAGE, MinCount=3, MaxCount=3)["Instances"]]
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = aws.client.set_launch_time("111111111111", "eu-west-1", [*ids[:2], "i-0000000000missing"], when)
    assert result["updated"] == sorted(ids[:2]) and result["missing"] == ["i-0000000000missing"]
    found = instances(ec2)
    assert [found[i]["LaunchTime"] for i in ids[:2]] == [when, when]
    assert found[ids[2]]["LaunchTime"] > datetime.now(UTC) - timedelta(minutes=5)
    # Another account's identically numbered region is not touched.
    assert aws.client.set_launch_time("222222222222", "eu-west-1", ids, when)["updated"] == []
    with pytest.raises(RuntimeError, match=r"HTTP 400.*ISO 8601"):
        aws.client.request(
            "/_fleetwarden/launch-time",
            {"account_id": "111111111111", "region": "eu-west-1", "instance_ids": ids, "launch_time": "yesterday"},
        )


# -- seeding -------------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(aws: EmulatorServer) -> Iterator[tuple[EmulatorServer, Any]]:
    spec = FleetSpec(
        accounts=[SeedAccount("111111111111", "dev"), SeedAccount("222222222222", "prod")],
        regions=["us-east-1", "eu-west-1"],
        instances_per_target=14,
        violator_fraction=0.5,
        stopped_fraction=0.25,
        fresh_per_target=2,
    )
    yield aws, seed_fleet(aws.url, spec)


def test_seed_fleet_creates_what_it_reports(seeded: tuple[EmulatorServer, Any]) -> None:
    server, result = seeded
    assert result.summary() == {
        "accounts": 2,
        "regions": 2,
        "instances": 56,
        "reservations": 4 * (1 + 7 + 3 + 1),
        "violators": 28,
        "in_grace": 8,
        "compliant": 20,
        "stopped": len(result.stopped),
        "canaries": 4,
    }
    assert {i.kind for i in result.instances.values() if i.outcome == "violator"} == set(VIOLATIONS)
    now = datetime.now(UTC)
    grace = timedelta(minutes=result.grace_minutes)
    for account in result.accounts:
        iam = assumed(server.url, "iam", account.id, "us-east-1")
        users = {u["UserName"] for u in iam.list_users()["Users"]}
        assert users == set(result.users[account.id])
        for region in result.regions:
            found = instances(assumed(server.url, "ec2", account.id, region))
            assert set(found) == result.ids(account_id=account.id, region=region)
            for instance_id, instance in found.items():
                expected = result.instances[instance_id]
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                assert tags == expected.tags
                assert instance["State"]["Name"] == expected.state
                assert instance["LaunchTime"] == expected.launch_time
                assert (now - instance["LaunchTime"] < grace) == (expected.outcome == "in-grace")
            canary = found[result.canaries[(account.id, region)]]
            assert canary["State"]["Name"] == "stopped"
            assert {"Key": "Name", "Value": f"api-canary-{region}"} in canary["Tags"]
    # Violators naming a user name only that a user of ANOTHER account has.
    for instance_id in result.ids(kind="unknown-user"):
        seeded_instance = result.instances[instance_id]
        assert seeded_instance.tags["created_by"] not in result.users[seeded_instance.account_id]
    assert result.topic_arn == f"arn:aws:sns:us-east-1:{result.management_account_id}:fleetwarden-alerts"
    sns = client(server.url, "sns")
    sns.publish(TopicArn=result.topic_arn, Message="hello")
    messages = client(server.url, "sqs").receive_message(QueueUrl=result.queue_url)["Messages"]
    assert [m["Body"] for m in messages] == ["hello"]


def test_seed_bulk_uses_few_large_reservations(aws: EmulatorServer) -> None:
    result = seed_bulk(aws.url, ["111111111111"], ["eu-west-1", "us-east-1"], 61, reservation_size=10)
    # per region: 30 or 31 = 1 canary + 3 violators (one reservation) + 26/27 compliant (3 reservations)
    assert result.summary()["instances"] == 61 and result.reservations == 2 * (1 + 1 + 3)
    assert len(result.violators) == 6 and len(result.canaries) == 2
    ec2 = assumed(aws.url, "ec2", "111111111111", "eu-west-1")
    reservations = ec2.describe_instances()["Reservations"]
    assert len(reservations) == 5
    assert max(len(r["Instances"]) for r in reservations) == 10


# -- foreground runner ---------------------------------------------------------------------------------------


def test_module_runs_in_the_foreground_until_sigterm(aws: EmulatorServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetwarden.emulator", "--port", "0", "--latency-ms", "5-10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        assert get_json(url + "/_fleetwarden/settings")["latency_ms"] == [5.0, 10.0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(urllib.error.URLError):
        get_json(url + "/_fleetwarden/settings")
