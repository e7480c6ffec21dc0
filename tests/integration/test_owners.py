"""Owner attribution of tag findings (issue 11 item 1) against the emulator: the created_by tag naming an IAM
user, the RunInstances event of CloudTrail (an IAM user, an assumed role, a federated user), unknown with its
reason; the emulator's LookupEvents (paging, validation, throttling); one walk per target; the owner cache in the
state store (SQLite and DynamoDB) so that a second run makes no LookupEvents call; owner lookup turned off."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fleet import ACCOUNTS, cli, launch, register, users, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.collect.cloudtrail import launcher_from_identity
from fleetwarden.emulator.server import EmulatorServer

A, B, _ = ACCOUNTS
REGION = "us-east-1"
NO_TAGS = {"department": "eng", "project": "web"}  # no created_by: the audit flags it, CloudTrail names the owner


def iam_user(account: str, name: str) -> dict[str, Any]:
    return {
        "type": "IAMUser",
        "principalId": "AIDAEXAMPLE",
        "arn": f"arn:aws:iam::{account}:user/{name}",
        "accountId": account,
        "userName": name,
    }


def assumed_role(account: str, role: str, session: str) -> dict[str, Any]:
    return {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLE:{session}",
        "arn": f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
        "accountId": account,
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "arn": f"arn:aws:iam::{account}:role/{role}", "userName": role}
        },
    }


def federated(account: str, name: str) -> dict[str, Any]:
    return {
        "type": "FederatedUser",
        "principalId": f"{account}:{name}",
        "arn": f"arn:aws:sts::{account}:federated-user/{name}",
        "accountId": account,
        "sessionContext": {"sessionIssuer": {"type": "IAMUser", "userName": "broker"}},
    }


def seed_events(aws: EmulatorServer, account: str, region: str, events: list[dict[str, Any]]) -> None:
    aws.client.request("/_fleetwarden/cloudtrail/events", {"account_id": account, "region": region, "events": events})


def run_instances(identity: dict[str, Any], ids: list[str], minutes_ago: int = 180) -> dict[str, Any]:
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "event_name": "RunInstances",
        "event_time": when.isoformat(),
        "user_identity": identity,
        "instance_ids": ids,
    }


def trail_client(factory: SessionFactory, region: str = REGION) -> Any:
    register(factory, A)
    return factory.client("cloudtrail", region=region, account_id=A)


def lookups(aws: EmulatorServer) -> int:
    return sum(c["count"] for c in aws.client.calls()["calls"] if c["action"] == "LookupEvents")


def audit(config: Path, *args: str, exit_code: int = 0) -> dict[str, Any]:
    result = cli("--config", str(config), "--json", "audit", *args)
    assert result.exit_code == exit_code, result.stderr
    return result.report


def owners_of(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        f["resource_id"]: (f["details"]["owner"], f["details"]["owner_source"])
        for f in report["findings"]
        if f["check"] == "tags"
    }


def test_owner_from_tag_cloudtrail_and_unknown(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice", "carol")
    # created_by names an IAM user, but the instance lacks a project: the owner is the tag's user, no lookup.
    (tagged,) = launch(factory, A, REGION, {"created_by": "alice", "department": "eng"})
    (by_user,) = launch(factory, A, REGION, NO_TAGS)
    (by_role,) = launch(factory, A, REGION, NO_TAGS)
    (by_federated,) = launch(factory, A, REGION, NO_TAGS)
    (not_a_user,) = launch(factory, A, REGION, {"created_by": "mallory", "department": "eng"})
    (nobody,) = launch(factory, A, REGION, NO_TAGS)
    seed_events(
        aws,
        A,
        REGION,
        [
            run_instances(iam_user(A, "carol"), [by_user]),
            run_instances(assumed_role(A, "Deployer", "ci-build-42"), [by_role, not_a_user]),
            run_instances(federated(A, "dora"), [by_federated]),
        ],
    )
    config = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False)
    report = audit(config)
    owners = owners_of(report)
    assert owners == {
        tagged: ("alice", "tag"),
        by_user: ("carol", "cloudtrail"),
        by_role: ("Deployer/ci-build-42", "cloudtrail"),
        by_federated: ("dora", "cloudtrail"),
        not_a_user: ("Deployer/ci-build-42", "cloudtrail"),
        nobody: ("unknown", "unknown"),
    }
    details = {f["resource_id"]: f["details"] for f in report["findings"]}
    assert details[by_role]["owner_role"] == "Deployer"
    assert details[by_role]["owner_type"] == "AssumedRole"
    assert details[by_role]["owner_arn"] == f"arn:aws:sts::{A}:assumed-role/Deployer/ci-build-42"
    assert details[by_user]["owner_event"]["name"] == "RunInstances"
    assert details[by_federated]["owner_type"] == "FederatedUser"
    assert "no created_by tag" in details[nobody]["owner_reason"]
    assert "no RunInstances event" in details[nobody]["owner_reason"]
    # Five instances need CloudTrail (over walk_over=1): one RunInstances walk, one page.
    assert report["summary"]["owners"] == {
        "by_source": {"cloudtrail": 4, "tag": 1, "unknown": 1},
        "cloudtrail_calls": 1,
        "cached": 0,
    }
    assert lookups(aws) == 1


def test_root_and_identity_shapes() -> None:
    root = launcher_from_identity({"type": "Root", "arn": f"arn:aws:iam::{A}:root", "accountId": A})
    assert root is not None and root.owner == "root"
    role = launcher_from_identity(assumed_role(A, "Admin", "jane@example.com"))
    assert role is not None and (role.owner, role.role) == ("Admin/jane@example.com", "Admin")
    assert launcher_from_identity({"type": "Unknown"}) is None


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_second_run_uses_the_cache(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory, backend: str) -> None:
    ids = launch(factory, A, REGION, NO_TAGS, 2)
    seed_events(aws, A, REGION, [run_instances(iam_user(A, "carol"), ids)])
    top: dict[str, Any] = {}
    if backend == "dynamodb":
        top["state"] = "dynamodb://fleetwarden-owners?region=us-east-1"
    config = write_config(
        tmp_path, aws.url, (A,), [REGION], top=top, created_by_must_be_iam_user=False, owners={"walk_over": 3}
    )
    if backend == "dynamodb":
        assert cli("--config", str(config), "state", "init").exit_code == 0
    first = audit(config)
    assert set(owners_of(first).values()) == {("carol", "cloudtrail")}
    # Two instances (walk_over=3): one ResourceName lookup each.
    assert lookups(aws) == 2
    aws.client.reset_calls()
    second = audit(config)
    assert set(owners_of(second).values()) == {("carol", "cloudtrail")}
    assert second["summary"]["owners"]["cached"] == 2
    assert lookups(aws) == 0


def test_owner_lookup_off_costs_nothing(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    launch(factory, A, REGION, NO_TAGS, 2)
    config = write_config(
        tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False, owners={"enabled": False}
    )
    aws.client.reset_calls()
    report = audit(config)
    assert all("owner" not in f["details"] for f in report["findings"])
    assert "owners" not in report["summary"]
    called = {(c["service"], c["action"]) for c in aws.client.calls()["calls"]}
    assert not any(service in ("cloudtrail", "iam") for service, _ in called), called


def test_lookup_events_pages_and_validates(aws: EmulatorServer, factory: SessionFactory) -> None:
    now = datetime.now(UTC)
    events = [run_instances(iam_user(A, f"user{n}"), [f"i-{n:017x}"], minutes_ago=n) for n in range(1, 121)]
    seed_events(aws, A, REGION, events)
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": None})
    trail = trail_client(factory)
    attrs = [{"AttributeKey": "EventName", "AttributeValue": "RunInstances"}]
    pages = list(trail.get_paginator("lookup_events").paginate(LookupAttributes=attrs))
    assert [len(p["Events"]) for p in pages] == [50, 50, 20]
    times = [e["EventTime"] for p in pages for e in p["Events"]]
    assert times == sorted(times, reverse=True)  # newest first
    one = trail.lookup_events(LookupAttributes=[{"AttributeKey": "ResourceName", "AttributeValue": f"i-{7:017x}"}])
    assert [e["Username"] for e in one["Events"]] == ["user7"]
    window = trail.lookup_events(StartTime=now - timedelta(minutes=10, seconds=30), EndTime=now, MaxResults=50)
    assert len(window["Events"]) == 10
    for kwargs, code in (
        ({"LookupAttributes": attrs * 2}, "InvalidLookupAttributesException"),
        ({"MaxResults": 51}, "InvalidMaxResultsException"),
        ({"StartTime": now, "EndTime": now - timedelta(hours=1)}, "InvalidTimeRangeException"),
        ({"NextToken": "bm90LWEtdG9rZW4="}, "InvalidNextTokenException"),
    ):
        with pytest.raises(ClientError) as raised:
            trail.lookup_events(**kwargs)
        assert raised.value.response["Error"]["Code"] == code
    # Events of another account or region are not seen.
    assert trail_client(factory, "eu-west-1").lookup_events()["Events"] == []


def test_lookup_events_rate_limit_throttles(aws: EmulatorServer, factory: SessionFactory) -> None:
    trail = trail_client(factory)  # max_attempts=2
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": 0.0, "burst": 2})
    trail.lookup_events()
    trail.lookup_events()
    with pytest.raises(ClientError) as raised:
        trail.lookup_events()
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    # botocore retried the throttled call: three attempts counted, one answered.
    counted = [c for c in aws.client.calls()["calls"] if c["action"] == "LookupEvents"]
    assert sum(c["count"] for c in counted) == 5
    # Another region has its own bucket; the default rate (2/s) refills within a second.
    trail_client(factory, "eu-west-1").lookup_events()
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": 2.0, "burst": 2})
    started = time.monotonic()
    for _ in range(4):
        trail.lookup_events()
    assert time.monotonic() - started < 10


def test_throttled_lookups_degrade_to_unknown(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    ids = launch(factory, A, REGION, NO_TAGS, 5)
    seed_events(aws, A, REGION, [run_instances(iam_user(A, "carol"), ids)])
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": 0.0, "burst": 0})
    config = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False)
    report = audit(config)  # the audit itself is not partial: the owners are unknown, with the reason
    assert {v for v in owners_of(report).values()} == {("unknown", "unknown")}
    reasons = {f["details"]["owner_reason"] for f in report["findings"]}
    assert all("ThrottlingException" in r for r in reasons), reasons
    # Not cached: the next run (no longer throttled) finds them.
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": 2.0, "burst": 2})
    again = audit(config)
    assert set(owners_of(again).values()) == {("carol", "cloudtrail")}


def test_budget_spent_degrades_to_unknown(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    ids = launch(factory, A, REGION, NO_TAGS, 4)
    # 120 unrelated RunInstances events, newer than ours: the walk needs three pages to reach ours.
    others = [run_instances(iam_user(A, "zed"), [f"i-{n:017x}"], minutes_ago=n) for n in range(1, 121)]
    seed_events(aws, A, REGION, [run_instances(iam_user(A, "carol"), ids, minutes_ago=170), *others])
    aws.client.request("/_fleetwarden/cloudtrail/rate", {"per_second": None})
    config = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False, owners={"max_calls": 2})
    report = audit(config)
    assert set(owners_of(report).values()) == {("unknown", "unknown")}
    assert all("budget of 2 LookupEvents" in f["details"]["owner_reason"] for f in report["findings"])
    assert lookups(aws) == 2
    # With room for the third page, the same walk finds them.
    config = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False)
    aws.client.reset_calls()
    assert set(owners_of(audit(config)).values()) == {("carol", "cloudtrail")}
    assert lookups(aws) == 3
