"""An org-run lists the organization once: list-shards records its listing, the shards resolve from it.

With `organization:` in the config, list-shards writes the organization's accounts it listed to
`FRAGMENTS/RUN_ID/organization.json`; each shard of that org-run (its event has `fragments` and `run_id`) reads it
(one GetObject) instead of calling Organizations. The emulator counts the calls each shard makes. A missing or
unusable file makes the shard list the organization itself, with the same report. The refusal of a bucket another
account owns (ExpectedBucketOwner) is an error shape moto does not produce (it ignores the header): botocore's
Stubber stands in for that one S3 client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from fleet import launch, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.lambda_handler import handler
from fleetwarden.workflows.shards import RunFiles, read_organization

BUCKET = "fleetwarden-runs-test"
FRAGMENTS = f"s3://{BUCKET}/runs"
REGION = "us-east-1"
ORG_CALLS = ("DescribeOrganization", "ListAccounts")


def organization(factory: SessionFactory) -> tuple[str, list[str], str]:
    """The management account, five ACTIVE members (each with an untagged instance) and a closed member."""
    org = factory.client("organizations", region=REGION)
    org.create_organization(FeatureSet="ALL")
    management = org.describe_organization()["Organization"]["MasterAccountId"]
    members = [
        org.create_account(AccountName=f"m{n}", Email=f"m{n}@example.com")["CreateAccountStatus"]["AccountId"]
        for n in range(6)
    ]
    closed = members.pop()
    org.close_account(AccountId=closed)
    for account in (management, *members):
        launch(factory, account, REGION, {})
    return management, members, closed


def config(tmp_path: Path, aws: EmulatorServer, name: str) -> Path:
    """An `organization:` config with a state store of its own."""
    directory = tmp_path / name
    directory.mkdir()
    top = {"organization": {"role_name": "FleetWarden"}}
    return write_config(directory, aws.url, (), [REGION], top=top, created_by_must_be_iam_user=False)


def org_calls(aws: EmulatorServer) -> int:
    return sum(row["count"] for row in aws.client.calls()["calls"] if row["action"] in ORG_CALLS)


def s3_json(factory: SessionFactory, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(factory.client("s3", region=REGION).get_object(Bucket=bucket, Key=key)["Body"].read())


def run_shard(aws: EmulatorServer, factory: SessionFactory, item: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """One shard through the handler: its RunReport fragment and the Organizations calls it made."""
    aws.client.reset_calls()
    out = handler(item, None)
    assert out["status"] == "ok", out
    return s3_json(factory, out["fragment"])["report"], org_calls(aws)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report apart from timings and run ids."""
    timeless = ("first_seen", "last_seen")
    return {
        "targets": sorted(json.dumps(t, sort_keys=True) for t in report["targets"]),
        "findings": sorted(json.dumps({k: v for k, v in f.items() if k not in timeless}) for f in report["findings"]),
        "actions": sorted(json.dumps(a, sort_keys=True) for a in report["actions"]),
        "summary": report["summary"],
    }


def test_the_shards_of_an_org_run_resolve_from_list_shards_listing_and_fall_back_without_it(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    management, members, closed = organization(factory)
    s3 = factory.client("s3", region=REGION)
    s3.create_bucket(Bucket=BUCKET)
    cached, fallback = config(tmp_path, aws, "cached"), config(tmp_path, aws, "fallback")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(cached))
    listing = handler({"action": "list-shards", "event": {"action": "audit"}, "size": 2, "fragments": FRAGMENTS}, None)
    assert listing["status"] == "ok" and listing["accounts"] == 6 and listing["count"] == 3, listing
    files = RunFiles.parse(FRAGMENTS, listing["run_id"])
    recorded = s3_json(factory, files.uri(files.key("organization.json")))
    assert recorded["run_id"] == listing["run_id"]
    by_id = {a["Id"]: a for a in recorded["accounts"]}
    assert set(by_id) == {management, *members, closed}  # what Organizations answered, the closed account too
    assert by_id[management]["_management"] and not by_id[members[0]]["_management"]
    assert by_id[closed]["Status"] != "ACTIVE"

    # Every shard resolves its accounts from the listing: no Organizations call at all.
    reports = []
    for item in listing["shards"]:
        report, calls = run_shard(aws, factory, item)
        assert calls == 0, item
        assert {t["account_id"] for t in report["targets"]} == set(item["accounts"])
        reports.append(report)
    assert sorted(t["account_id"] for r in reports for t in r["targets"]) == sorted([management, *members])
    # Never widened: a shard naming the closed account (marked SUSPENDED in the listing) does not audit it.
    forged = {**listing["shards"][0], "accounts": [closed, members[0]], "shard": 7}
    report, calls = run_shard(aws, factory, forged)
    assert calls == 0 and {t["account_id"] for t in report["targets"]} == {members[0]}

    # Without the file (deleted), or with one that is not this shard's (another run's listing), each shard lists
    # the organization itself, and gives the same report (a separate state store: the same findings, all new).
    first = listing["shards"][0]
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(fallback))
    s3.delete_object(Bucket=BUCKET, Key=files.key("organization.json"))
    report, calls = run_shard(aws, factory, first)
    assert calls > 0
    assert comparable(report) == comparable(reports[0])
    stale = {"run_id": "another-run", "accounts": recorded["accounts"]}
    s3.put_object(Bucket=BUCKET, Key=files.key("organization.json"), Body=json.dumps(stale).encode())
    second = listing["shards"][1]
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(cached))
    report, calls = run_shard(aws, factory, {**second, "shard": 8})
    assert calls > 0
    assert {t["account_id"] for t in report["targets"]} == set(second["accounts"])
    # A listing that leaves out one of the shard's accounts is not used either.
    partial = {"run_id": listing["run_id"], "accounts": [by_id[management]]}
    s3.put_object(Bucket=BUCKET, Key=files.key("organization.json"), Body=json.dumps(partial).encode())
    report, calls = run_shard(aws, factory, {**second, "shard": 9})
    assert calls > 0 and {t["account_id"] for t in report["targets"]} == set(second["accounts"])


def test_the_listing_is_read_only_from_a_bucket_of_the_shards_own_account(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged shard event naming another account's bucket: S3 refuses the read (ExpectedBucketOwner is the
    shard's own account), and the shard lists the organization itself."""
    loaded = load_config(config(tmp_path, aws, "forged"))
    files = RunFiles.parse("s3://someone-elses-bucket/runs", "org-run-1")
    own = factory.caller_identity()["account_id"]
    s3 = factory.client("s3", region=REGION)
    expected = {"Bucket": "someone-elses-bucket", "Key": "runs/org-run-1/organization.json", "ExpectedBucketOwner": own}
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403, expected_params=expected)
        monkeypatch.setattr(factory, "client", lambda *args, **kwargs: s3)
        assert read_organization(loaded, factory, files, ["111111111111"]) is None
        stub.assert_no_pending_responses()
