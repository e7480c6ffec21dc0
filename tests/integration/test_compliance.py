"""`fleetwarden compliance sync/report` against the emulator (its SSM compliance extension) and a loopback Slack."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, cli, launch, role
from slack_fake import CHANNEL, FakeSlack

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A, B, _ = ACCOUNTS
REGIONS = ["us-east-1", "eu-west-1"]
TOKEN_ENV = "FLEETWARDEN_SLACK_TOKEN"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch, slack: FakeSlack) -> Iterator[None]:
    monkeypatch.setenv(TOKEN_ENV, slack.token)
    yield


def config(tmp_path: Path, endpoint: str, slack: FakeSlack, **compliance: Any) -> Path:
    data: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
        "regions": REGIONS,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "sinks": {
            "chat": {"type": "slack", "channel": CHANNEL, "token": f"env:{TOKEN_ENV}", "api_url": f"{slack.url}/api/"},
            "reports": {"type": "s3", "bucket": "fw-reports", "prefix": "fleetwarden"},
        },
        "compliance": {"notify": ["chat"], "report_sink": "reports", **compliance},
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def put_items(
    factory: SessionFactory, account: str, region: str, instance: str, when: datetime, items: list[tuple[str, str, str]]
) -> None:
    """Report InSpec results for one instance: items are (id, status, severity)."""
    ssm = factory.client("ssm", region=region, account_id=account)
    ssm.put_compliance_items(
        ResourceId=instance,
        ResourceType="ManagedInstance",
        ComplianceType="Custom:InSpec",
        ExecutionSummary={"ExecutionTime": when, "ExecutionId": f"exec-{when:%H%M}", "ExecutionType": "Command"},
        Items=[
            {"Id": item_id, "Title": f"control {item_id}", "Severity": severity, "Status": status, "Details": {}}
            for item_id, status, severity in items
        ],
        UploadType="COMPLETE",
    )


@pytest.fixture
def fleet(factory: SessionFactory) -> dict[str, str]:
    out = {
        "a_east": launch(factory, A, "us-east-1", {})[0],
        "a_west": launch(factory, A, "eu-west-1", {})[0],
        "b_east": launch(factory, B, "us-east-1", {})[0],
    }
    put_items(
        factory,
        A,
        "us-east-1",
        out["a_east"],
        T0,
        [("c-1", "NON_COMPLIANT", "HIGH"), ("c-2", "NON_COMPLIANT", "LOW"), ("c-3", "COMPLIANT", "LOW")],
    )
    put_items(factory, A, "eu-west-1", out["a_west"], T0, [("c-1", "NON_COMPLIANT", "CRITICAL")])
    put_items(factory, B, "us-east-1", out["b_east"], T0, [("c-9", "NON_COMPLIANT", "MEDIUM")])
    return out


def sync(path: Path, *extra: str) -> Any:
    return cli("--config", str(path), "--json", "compliance", "sync", *extra)


def stored_status(path: Path, account: str, region: str) -> dict[tuple[str, str], str]:
    """The open compliance findings the state store holds for one target: (instance, control) -> status."""
    from fleetwarden.config import load_config
    from fleetwarden.state import open_store

    found = open_store(load_config(path).state).load_findings("compliance", account, region)
    return {(f.resource_id, f.control): f.status.value for f in found.values()}


def messages(slack: FakeSlack) -> list[str]:
    return [json.dumps(r.params) for r in slack.calls("chat.postMessage")]


def test_first_sync_alerts_everything_new_once(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
) -> None:
    path = config(tmp_path, aws.url, slack)
    dry = sync(path)
    assert dry.exit_code == 0 and dry.report["summary"]["new"] == 4 and slack.requests == []  # nothing sent
    first = sync(path, "--apply")
    assert first.exit_code == 0, first.stderr
    summary = first.report["summary"]
    assert (summary["instances_scanned"], summary["new"], summary["resolved"], summary["still_open"]) == (3, 4, 0, 4)
    controls = {(f["account_id"], f["region"], f["resource_id"], f["control"]) for f in first.report["findings"]}
    assert (A, "us-east-1", fleet["a_east"], "Custom:InSpec:c-1") in controls and len(controls) == 4
    assert len(slack.calls("chat.postMessage")) == 1
    assert "New non-compliant items: 4" in messages(slack)[0]
    uploaded = list(slack.uploads.values())
    rows = list(csv.DictReader(io.StringIO(uploaded[0].decode())))
    assert {(r["instance_id"], r["item_id"]) for r in rows} == {
        (fleet["a_east"], "c-1"),
        (fleet["a_east"], "c-2"),
        (fleet["a_west"], "c-1"),
        (fleet["b_east"], "c-9"),
    }
    # Unchanged results: no alert.
    again = sync(path, "--apply")
    assert again.exit_code == 0, again.stderr
    assert again.report["summary"]["new"] == 0 and again.report["summary"]["resolved"] == 0
    assert len(slack.calls("chat.postMessage")) == 1


def test_partial_resolution_and_unscanned_instances_keep_findings(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
    factory: SessionFactory,
) -> None:
    path = config(tmp_path, aws.url, slack)
    assert sync(path, "--apply").exit_code == 0
    # a_east is scanned again later: c-1 fixed, c-2 still failing
    put_items(
        factory,
        A,
        "us-east-1",
        fleet["a_east"],
        T0 + timedelta(days=1),
        [("c-1", "COMPLIANT", "HIGH"), ("c-2", "NON_COMPLIANT", "LOW")],
    )
    rescanned = sync(path, "--apply")
    assert rescanned.exit_code == 0, rescanned.stderr
    result = rescanned.report
    status = {(f["resource_id"], f["control"]): f["status"] for f in result["findings"]}
    assert status[(fleet["a_east"], "Custom:InSpec:c-1")] == "resolved"
    assert status[(fleet["a_east"], "Custom:InSpec:c-2")] == "ongoing"
    assert result["summary"]["resolved"] == 1 and result["summary"]["new"] == 0
    assert "Resolved items: 1" in messages(slack)[-1]
    # b_east's results vanish WITHOUT a newer scan (e.g. the scan failed): its finding is not resolved
    ssm = factory.client("ssm", region="us-east-1", account_id=B)
    ssm.put_compliance_items(
        ResourceId=fleet["b_east"],
        ResourceType="ManagedInstance",
        ComplianceType="Custom:InSpec",
        ExecutionSummary={"ExecutionTime": T0 - timedelta(days=1)},
        Items=[],
        UploadType="COMPLETE",
    )
    later = sync(path, "--apply")
    assert later.exit_code == 0, later.stderr
    assert later.report["summary"]["resolved"] == 0
    # Carried over untouched: not in this run's findings, still open in the store as the last sync left it.
    assert fleet["b_east"] not in {f["resource_id"] for f in later.report["findings"]}
    assert stored_status(path, B, "us-east-1") == {(fleet["b_east"], "Custom:InSpec:c-9"): "ongoing"}


def test_slack_failure_is_retried_from_the_outbox(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
) -> None:
    path = config(tmp_path, aws.url, slack)
    slack.fail["chat.postMessage"] = "ratelimited"
    failed = sync(path, "--apply")
    assert failed.exit_code == 4
    assert [d["outcome"] for d in failed.report["deliveries"]] == ["failed"]
    slack.fail.clear()
    retried = sync(path, "--apply")  # nothing new, but the pending alert goes out now
    assert retried.exit_code == 0 and retried.report["summary"]["new"] == 0
    assert [d["outcome"] for d in retried.report["deliveries"]] == ["sent"]
    delivered = [m for m in messages(slack) if "New non-compliant items: 4" in m]
    assert len(delivered) == 2  # the failed attempt was recorded by the fake; exactly one succeeded after it
    assert sync(path, "--apply").report["deliveries"] == []  # the outbox is empty


def test_snooze_suppresses_until_it_expires(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
) -> None:
    path = config(tmp_path, aws.url, slack)
    added = cli(
        "--config",
        str(path),
        "--json",
        "exceptions",
        "add",
        "--kind",
        "snooze",
        "--check",
        "compliance",
        "--item",
        "c-9",
        "--reason",
        "vendor fix due",
        "--expires",
        "1h",
    )
    assert added.exit_code == 0
    synced = sync(path, "--apply")
    assert synced.exit_code == 0, synced.stderr
    first = synced.report
    status = {f["resource_id"]: f["status"] for f in first["findings"] if f["control"].endswith("c-9")}
    assert status == {fleet["b_east"]: "suppressed"}
    assert first["summary"]["new"] == 3 and "c-9" not in next(iter(slack.uploads.values())).decode()
    # expire the snooze: the item comes back, as new, and is alerted once
    from fleetwarden.config import load_config
    from fleetwarden.state import open_store

    store = open_store(load_config(path).state)
    rule = store.list_exceptions()[0]
    store.remove_exception(rule.id)
    store.add_exception(rule.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)}))
    expired = sync(path, "--apply")
    assert expired.exit_code == 0, expired.stderr
    after = expired.report
    assert after["summary"]["new"] == 1
    assert [f["status"] for f in after["findings"] if f["control"].endswith("c-9")] == ["new"]


def test_report_puts_csv_in_s3_and_summary_in_slack(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
    factory: SessionFactory,
) -> None:
    path = config(tmp_path, aws.url, slack)
    factory.client("s3", region="us-east-1").create_bucket(Bucket="fw-reports")
    assert sync(path, "--apply").exit_code == 0
    dry = cli("--config", str(path), "--json", "--output-dir", str(tmp_path / "out"), "compliance", "report")
    assert dry.exit_code == 0
    local = list((tmp_path / "out").glob("compliance-*.csv"))
    assert len(local) == 1
    posted = len(slack.calls("chat.postMessage"))
    before = datetime.now(UTC)
    result = cli("--config", str(path), "--json", "compliance", "report", "--apply")
    assert result.exit_code == 0, result.stderr
    summary = result.report["summary"]
    assert (summary["affected_instances"], summary["open_items"]) == (3, 4)
    assert summary["by_account"] == {A: 3, B: 1}
    url = summary["csv_url"]
    # The key is dated by the run's clock; a run that straddles a month boundary may take either month.
    months = {f"{when:%Y}/{when:%m}" for when in (before, datetime.now(UTC))}
    assert any(url.startswith(f"s3://fw-reports/fleetwarden/{m}/compliance-") for m in months) and url.endswith(".csv")
    body = (
        factory.client("s3", region="us-east-1")
        .get_object(Bucket="fw-reports", Key=url.split("/", 3)[3])["Body"]
        .read()
    )
    assert len(list(csv.DictReader(io.StringIO(body.decode())))) == 4
    assert len(slack.calls("chat.postMessage")) == posted + 1
    assert "Open non-compliant items: 4" in messages(slack)[-1]


def test_error_target_never_resolves(
    aws: EmulatorServer,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
) -> None:
    path = config(tmp_path, aws.url, slack)
    first = sync(path, "--apply")
    assert first.exit_code == 0, first.stderr
    west = (fleet["a_west"], "Custom:InSpec:c-1")
    assert {(f["resource_id"], f["control"]): f["status"] for f in first.report["findings"]}[west] == "new"
    # eu-west-1 cannot be read: its findings are neither resolved nor reported, and nothing is alerted.
    posted = len(slack.calls("chat.postMessage"))
    aws.client.set_faults([{"region": "eu-west-1", "service": "ssm"}])
    broken = sync(path, "--apply")
    aws.client.set_faults([])
    assert broken.exit_code == 4
    errors = {(t["account_id"], t["region"]) for t in broken.report["targets"] if t["status"] == "error"}
    assert errors == {(A, "eu-west-1"), (B, "eu-west-1")}
    assert broken.report["summary"]["resolved"] == 0 and broken.report["summary"]["new"] == 0
    assert [f for f in broken.report["findings"] if f["region"] == "eu-west-1"] == []
    assert len(slack.calls("chat.postMessage")) == posted
    assert stored_status(path, A, "eu-west-1") == {west: "new"}  # as the first sync stored it
    after = sync(path, "--apply")
    assert after.exit_code == 0, after.stderr
    status = {(f["resource_id"], f["control"]): f["status"] for f in after.report["findings"]}
    assert status[west] == "ongoing"  # still open from the first sync, never resolved in between
    assert after.report["summary"]["resolved"] == 0 and after.report["summary"]["new"] == 0


def test_a_sharded_sync_alerts_once_and_reports_what_one_process_does(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The org-run's events through the Lambda handler (list-shards, one shard per account, aggregate): the
    shards hold their alerts in the outbox and aggregate sends one, with every account's new items; the merged
    report's findings are those of a one-process dry run of the same sync."""
    from fleetwarden.lambda_handler import handler

    path = config(tmp_path, aws.url, slack)
    one = sync(path)  # the one-process dry run, for comparison
    assert one.exit_code == 0 and slack.requests == []
    factory.client("s3", region="us-east-1").create_bucket(Bucket="compliance-runs")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    fragments = "s3://compliance-runs/runs"
    event = {"action": "compliance-sync", "apply": True}
    listing = handler({"action": "list-shards", "event": event, "size": 1, "fragments": fragments}, None)
    assert listing["status"] == "ok" and listing["count"] == 2, listing
    for item in listing["shards"]:
        assert handler(item, None)["status"] == "ok"
    assert slack.calls("chat.postMessage") == []  # held: no shard sent its own
    result = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": fragments}, None)
    assert result["status"] == "ok", result
    [message] = messages(slack)
    assert "New non-compliant items: 4" in message
    [uploaded] = slack.uploads.values()
    assert len(list(csv.DictReader(io.StringIO(uploaded.decode())))) == 4
    s3 = factory.client("s3", region="us-east-1")
    merged = json.loads(
        s3.get_object(Bucket="compliance-runs", Key=result["report_uri"].split("/", 3)[3])["Body"].read()
    )

    def keyed(findings: list[dict[str, Any]]) -> set[tuple[str, ...]]:
        return {(f["account_id"], f["region"], f["resource_id"], f["control"], f["status"]) for f in findings}

    assert keyed(merged["findings"]) == keyed(one.report["findings"])
    for key in ("instances_scanned", "new", "resolved", "still_open"):
        assert merged["summary"][key] == one.report["summary"][key], key
    assert stored_status(path, A, "us-east-1") == {
        (fleet["a_east"], "Custom:InSpec:c-1"): "new",
        (fleet["a_east"], "Custom:InSpec:c-2"): "new",
    }
    # Nothing is left in the outbox: the next one-process sync sends nothing.
    assert sync(path, "--apply").exit_code == 0 and len(slack.calls("chat.postMessage")) == 1


def test_held_shard_alerts_go_out_with_the_next_sync_when_the_org_run_died(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    fleet: dict[str, str],
    slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shards recorded their findings (as ongoing from now on) and held their alerts; aggregate never ran.
    The next sync sends the held alerts: a new item is announced late, never lost."""
    from fleetwarden.lambda_handler import handler

    path = config(tmp_path, aws.url, slack)
    factory.client("s3", region="us-east-1").create_bucket(Bucket="compliance-runs")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    event = {"action": "compliance-sync", "apply": True}
    listing = handler({"action": "list-shards", "event": event, "size": 1, "fragments": "s3://compliance-runs/r"}, None)
    for item in listing["shards"]:
        assert handler(item, None)["status"] == "ok"
    assert slack.calls("chat.postMessage") == []
    after = sync(path, "--apply")
    assert after.exit_code == 0 and after.report["summary"]["new"] == 0, after.stderr
    sent = messages(slack)
    assert len(sent) == 2 and "New non-compliant items: 3" in sent[0] + sent[1]  # account A's 3, B's 1
    assert "New non-compliant items: 1" in sent[0] + sent[1]
