"""`fleetwarden audit` end to end against the emulator: three accounts by assume-role, several regions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fleet import ACCOUNTS, GOOD_TAGS, cli, ec2, launch, states, users, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A, B, C = ACCOUNTS
REGIONS = ["us-east-1", "eu-west-1"]


@pytest.fixture
def fleet(factory: SessionFactory) -> dict[str, list[str]]:
    """Good and bad instances in three accounts x two regions; returns ids by what the audit should say."""
    for account in ACCOUNTS:
        users(factory, account, "alice")
    out: dict[str, list[str]] = {"good": [], "bad": [], "fresh": []}
    for account in ACCOUNTS:
        for region in REGIONS:
            ids = launch(factory, account, region, GOOD_TAGS, 3)
            out[f"good:{account}:{region}"] = ids
            out["good"] += ids
    out["missing"] = launch(factory, A, "us-east-1", {"created_by": "alice", "department": "eng"}, 2)
    out["blank"] = launch(factory, A, "eu-west-1", {**GOOD_TAGS, "project": "  "})
    out["case"] = launch(factory, B, "us-east-1", {"created_by": "alice", "Department": "eng", "project": "web"})
    out["badvalue"] = launch(factory, B, "eu-west-1", {**GOOD_TAGS, "department": "marketing"})
    # bob exists in account C only: created_by must name a user of the instance's own account
    users(factory, C, "bob")
    out["notuser"] = launch(factory, B, "eu-west-1", {**GOOD_TAGS, "created_by": "bob"})
    out["stopped"] = launch(factory, C, "us-east-1", {}, state="stopped")
    out["fresh"] = launch(factory, C, "eu-west-1", {}, age_minutes=10)
    out["bad"] = out["missing"] + out["blank"] + out["case"] + out["badvalue"] + out["notuser"] + out["stopped"]
    return out


def _report(config: Path, *args: str, exit_code: int = 0) -> dict[str, Any]:
    """Run `fleetwarden --config CONFIG --json ARGS...`, check its exit code, and return its JSON report."""
    result = cli("--config", str(config), "--json", *args)
    assert result.exit_code == exit_code, result.stderr
    return result.report


def test_audit_finds_exactly_the_violators(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    config = write_config(tmp_path, aws.url, ACCOUNTS, REGIONS)
    result = cli("--config", str(config), "--json", "--output-dir", str(tmp_path / "out"), "audit")
    assert result.exit_code == 0, result.stderr
    report = result.report
    assert report["schema"] == "fleetwarden.run/v1" and report["dry_run"] is True
    assert {(t["account_id"], t["region"], t["status"]) for t in report["targets"]} == {
        (a, r, "ok") for a in ACCOUNTS for r in REGIONS
    }
    found = {f["resource_id"]: f for f in report["findings"]}
    assert set(found) == set(fleet["bad"])
    assert {f["status"] for f in found.values()} == {"new"}
    assert found[fleet["missing"][0]]["details"]["missing"] == ["project"]
    assert found[fleet["blank"][0]]["details"]["missing"] == ["project"]
    assert found[fleet["case"][0]]["details"]["missing"] == ["department"]
    assert "department" in found[fleet["badvalue"][0]]["details"]["invalid"]
    assert "created_by" in found[fleet["notuser"][0]]["details"]["invalid"]
    assert report["summary"]["instances_audited"] == len(fleet["good"]) + len(fleet["bad"]) + len(fleet["fresh"])
    assert report["actions"] == []  # action: report
    assert (tmp_path / "out" / "run.json").exists() and (tmp_path / "out" / "findings.csv").exists()
    # a report-only dry run changed nothing on the fleet
    assert set(states(factory, A, "us-east-1", fleet["missing"]).values()) == {"running"}

    # Second run: the same findings are ongoing with first_seen kept; a fixed instance is resolved.
    ec2(factory, B, "eu-west-1").create_tags(
        Resources=fleet["badvalue"], Tags=[{"Key": "department", "Value": "finance"}]
    )
    again = _report(config, "audit")
    statuses = {f["resource_id"]: f["status"] for f in again["findings"]}
    assert statuses[fleet["badvalue"][0]] == "resolved"
    assert statuses[fleet["missing"][0]] == "ongoing"
    first = {f["resource_id"]: f["first_seen"] for f in report["findings"]}
    assert all(f["first_seen"] == first[f["resource_id"]] for f in again["findings"])


def test_pagination_over_more_than_one_page(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    client = ec2(factory, A, "us-east-1")
    # 105 one-instance reservations: more than moto's default page of 100 reservations
    ids = [
        client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        for _ in range(105)
    ]
    from fleet import backdate

    backdate(A, "us-east-1", ids, 120)
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"])
    report = _report(config, "audit")
    assert {f["resource_id"] for f in report["findings"]} == set(ids)


def test_stop_only_with_apply(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    config = write_config(tmp_path, aws.url, ACCOUNTS, REGIONS, action="stop")
    dry = _report(config, "audit")
    planned = {a["resource_id"] for a in dry["actions"] if a["outcome"] == "planned"}
    running_bad = set(fleet["bad"]) - set(fleet["stopped"])
    assert planned == running_bad
    assert set(states(factory, A, "us-east-1", fleet["missing"]).values()) == {"running"}

    applied = cli("--config", str(config), "--json", "audit", "--apply")
    assert applied.exit_code == 0, applied.stderr
    done = {a["resource_id"] for a in applied.report["actions"] if a["outcome"] == "done"}
    assert done == running_bad
    assert set(states(factory, A, "us-east-1", fleet["missing"]).values()) == {"stopped"}
    assert set(states(factory, B, "eu-west-1", fleet["badvalue"] + fleet["notuser"]).values()) == {"stopped"}
    good_states = {}
    for account in ACCOUNTS:
        for region in REGIONS:
            good_states.update(states(factory, account, region, fleet[f"good:{account}:{region}"]))
    assert set(good_states.values()) == {"running"}
    assert set(states(factory, C, "eu-west-1", fleet["fresh"]).values()) == {"running"}


def test_do_not_stop_exception_and_snooze(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    config = write_config(tmp_path, aws.url, ACCOUNTS, REGIONS, action="stop")
    keep = fleet["missing"][0]
    snoozed = fleet["badvalue"][0]
    added = cli(
        "--config",
        str(config),
        "exceptions",
        "add",
        "--kind",
        "do-not-stop",
        "--resource-id",
        keep,
        "--reason",
        "database primary",
        "--owner",
        "dba",
        "--expires",
        "7d",
    )
    assert added.exit_code == 0, added.stderr
    snooze = cli(
        "--config",
        str(config),
        "exceptions",
        "add",
        "--kind",
        "snooze",
        "--check",
        "tags",
        "--resource-id",
        snoozed,
        "--reason",
        "migrating",
        "--expires",
        "2d",
    )
    assert snooze.exit_code == 0, snooze.stderr
    assert {(e["kind"], e["resource_id"], e["check"], e["reason"]) for e in _stored(config)} == {
        ("do-not-stop", keep, None, "database primary"),
        ("snooze", snoozed, "tags", "migrating"),
    }

    report = _report(config, "audit", "--apply")
    by_id = {a["resource_id"]: a for a in report["actions"]}
    assert by_id[keep]["outcome"] == "skipped" and "do-not-stop" in by_id[keep]["reason"]
    assert states(factory, A, "us-east-1", [keep])[keep] == "running"
    assert states(factory, A, "us-east-1", [fleet["missing"][1]])[fleet["missing"][1]] == "stopped"
    status = {f["resource_id"]: f["status"] for f in report["findings"]}
    assert status[snoozed] == "suppressed"
    assert snoozed not in by_id
    assert states(factory, B, "eu-west-1", [snoozed])[snoozed] == "running"


def test_canary_missing_makes_only_that_target_an_error(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    for region in ("us-east-1",):
        launch(factory, A, region, {**GOOD_TAGS, "Name": f"api-canary-{region}"}, state="stopped")
    bad_east = launch(factory, A, "us-east-1", {})
    bad_west = launch(factory, A, "eu-west-1", {})
    config = write_config(
        tmp_path, aws.url, (A,), REGIONS, action="stop", canary={"tags": {"Name": "api-canary-{region}"}}
    )
    result = cli("--config", str(config), "--json", "audit", "--apply")
    assert result.exit_code == 4
    targets = {t["region"]: t for t in result.report["targets"]}
    assert targets["us-east-1"]["status"] == "ok"
    assert targets["eu-west-1"]["status"] == "error" and "canary" in targets["eu-west-1"]["error"]
    assert states(factory, A, "us-east-1", bad_east)[bad_east[0]] == "stopped"
    assert states(factory, A, "eu-west-1", bad_west)[bad_west[0]] == "running"  # error target: no action


def test_terminate_needs_confirmation_and_snapshots_first(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"}, 2, volumes=2)
    client = ec2(factory, A, "us-east-1")
    client.modify_instance_attribute(InstanceId=bad[0], DisableApiTermination={"Value": True})
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="terminate")

    refused = cli("--config", str(config), "--json", "audit", "--apply")
    assert refused.exit_code == 5 and "--confirm-terminate" in refused.stderr
    assert set(states(factory, A, "us-east-1", bad).values()) == {"running"}

    done = cli("--config", str(config), "--json", "audit", "--apply", "--confirm-terminate")
    assert done.exit_code == 0, done.stderr
    assert set(states(factory, A, "us-east-1", bad).values()) == {"terminated"}
    snaps = client.describe_snapshots(
        Filters=[{"Name": "tag:fleetwarden:instance-id", "Values": bad}], OwnerIds=["self"]
    )["Snapshots"]
    assert len(snaps) == 4  # two instances x (root + one extra volume)
    assert {t["Value"] for s in snaps for t in s["Tags"] if t["Key"] == "fleetwarden:run-id"} == {done.report["run_id"]}


def test_blast_radius_refuses_a_larger_plan(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    config = write_config(tmp_path, aws.url, ACCOUNTS, REGIONS, action="stop", max_actions=2)
    result = cli("--config", str(config), "--json", "audit", "--apply")
    assert result.exit_code == 5 and "max_actions" in result.stderr
    assert set(states(factory, A, "us-east-1", fleet["missing"]).values()) == {"running"}


def test_unknown_config_key_makes_no_aws_call(aws: EmulatorServer, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("audit:\n  required_tag: [a]\n")
    aws.client.reset_calls()

    result = cli("--config", str(config), "audit")

    assert aws.client.calls()["total"] == 0
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: invalid config {config}: "
        "audit.required_tag: unknown key (expected one of: action, canary, created_by_must_be_iam_user, "
        "created_by_tag, exposure, grace_minutes, max_actions, notice_days, notice_tag, notify, "
        "override_stop_protection, owners, "
        "required_tags, severity, snapshot_before_terminate, tag_values)\n"
    )


def test_unreachable_region_is_isolated(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    east = launch(factory, A, "us-east-1", {})
    west = launch(factory, A, "eu-west-1", {})
    aws.client.set_faults([{"region": "eu-west-1", "service": "ec2", "mode": "unavailable"}])
    config = write_config(tmp_path, aws.url, (A,), REGIONS, action="stop")
    result = cli("--config", str(config), "--json", "audit", "--apply")
    aws.client.set_faults([])
    assert result.exit_code == 4
    targets = {t["region"]: t for t in result.report["targets"]}
    assert targets["eu-west-1"]["status"] == "error" and "Unavailable" in targets["eu-west-1"]["error"]
    assert targets["us-east-1"]["status"] == "ok"
    assert states(factory, A, "us-east-1", east)[east[0]] == "stopped"
    assert states(factory, A, "eu-west-1", west)[west[0]] == "running"


def test_error_target_never_resolves(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    west = launch(factory, A, "eu-west-1", {})
    config = write_config(tmp_path, aws.url, (A,), ["eu-west-1"])
    first = _report(config, "audit")
    assert [(f["resource_id"], f["status"]) for f in first["findings"]] == [(west[0], "new")]
    aws.client.set_faults([{"region": "eu-west-1", "service": "ec2"}])
    broken = cli("--config", str(config), "--json", "audit")
    aws.client.set_faults([])
    assert broken.exit_code == 4 and broken.report["findings"] == []
    after = _report(config, "audit")
    assert [(f["resource_id"], f["status"]) for f in after["findings"]] == [(west[0], "ongoing")]


def test_summary_notification_via_sns(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"})
    sns = factory.client("sns", region="us-east-1")
    sqs = factory.client("sqs", region="us-east-1")
    topic = sns.create_topic(Name="fleetwarden-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    config = write_config(
        tmp_path,
        aws.url,
        (A,),
        ["us-east-1"],
        notify=["ops"],
        top={"sinks": {"ops": {"type": "sns", "topic_arn": topic}}},
    )
    report = _report(config, "audit")
    assert report["deliveries"] == [{"sink": "ops", "outcome": "sent", "error": None}]
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert len(messages) == 1
    assert bad[0] in messages[0]["Body"]


def test_dynamodb_state_backend(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {})
    config = write_config(
        tmp_path, aws.url, (A,), ["us-east-1"], top={"state": "dynamodb://fleetwarden-state?region=us-east-1"}
    )
    missing = cli("--config", str(config), "audit")
    assert missing.exit_code == 1
    assert missing.stderr == (
        "error: the DynamoDB state table 'fleetwarden-state' does not exist in us-east-1: "
        "run `fleetwarden state init` to create it\n"
    )
    assert cli("--config", str(config), "state", "init").exit_code == 0
    first = _report(config, "audit")
    assert [(f["resource_id"], f["status"]) for f in first["findings"]] == [(bad[0], "new")]
    again = _report(config, "audit")
    assert [(f["resource_id"], f["status"]) for f in again["findings"]] == [(bad[0], "ongoing")]


def test_run_lock_held_refuses(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    from datetime import UTC, datetime

    from fleetwarden.config import load_config
    from fleetwarden.state import open_store

    users(factory, A, "alice")
    launch(factory, A, "us-east-1", {})
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="stop")
    store = open_store(load_config(config).state)
    assert store.acquire_lease("audit", A, "another-run", datetime.now(UTC), 600)
    result = cli("--config", str(config), "--json", "audit", "--apply")
    assert result.exit_code == 5 and "lock" in result.stderr
    store.release_lease("audit", A, "another-run")
    assert cli("--config", str(config), "--json", "audit", "--apply").exit_code == 0


def test_declared_permissions_cover_every_call(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    """`fleetwarden permissions` is generated from declarations: they must cover every call a run makes."""
    from fleetwarden.permissions import declared

    config = write_config(tmp_path, aws.url, ACCOUNTS, REGIONS, action="terminate")
    aws.client.reset_calls()
    result = cli("--config", str(config), "--json", "audit", "--apply", "--confirm-terminate")
    assert result.exit_code == 0, result.stderr
    allowed = {action for actions in declared().values() for action in actions}
    made = {f"{c['service']}:{c['action']}" for c in aws.client.calls()["calls"]}
    assert "ec2:TerminateInstances" in made
    assert made <= allowed, f"undeclared: {sorted(made - allowed)}"


def test_fail_on_and_quiet(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    launch(factory, A, "us-east-1", {"created_by": "alice"})
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"])
    assert cli("--config", str(config), "-q", "audit", "--fail-on", "MEDIUM").exit_code == 3
    high = cli("--config", str(config), "audit", "--fail-on", "high", "-q")
    assert high.exit_code == 0
    assert high.stderr == "" and high.stdout == ""  # -q: nothing but errors
    loud = cli("--config", str(config), "audit", "--json")
    assert loud.exit_code == 0, loud.stderr
    assert loud.report["workflow"] == "audit"  # stdout is the JSON alone
    # the third run of this finding: ongoing, not new
    assert loud.stderr.endswith("Summary: 1/1 targets ok; 1 open finding (0 new); 0 actions [dry run]\n")


def test_throttling_is_retried(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {})
    # Throttle the first two DescribeInstances calls: botocore's standard retries absorb them.
    aws.client.set_faults([{"service": "ec2", "action": "DescribeInstances", "mode": "throttle", "limit": 2}])
    config = write_config(
        tmp_path, aws.url, (A,), ["us-east-1"], top={"aws": {"endpoint_url": aws.url, "max_attempts": 4}}
    )
    result = cli("--config", str(config), "--json", "audit")
    calls = aws.client.calls()
    aws.client.set_faults([])
    assert result.exit_code == 0, result.stderr
    assert [f["resource_id"] for f in result.report["findings"]] == bad
    assert calls["faults"] == 2


def test_report_lists_open_findings_across_checks_and_delivers(
    aws: EmulatorServer, tmp_path: Path, fleet: dict[str, list[str]], factory: SessionFactory
) -> None:
    sns = factory.client("sns", region="us-east-1")
    sqs = factory.client("sqs", region="us-east-1")
    topic = sns.create_topic(Name="reports")["TopicArn"]
    queue = sqs.create_queue(QueueName="reports")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    config = write_config(
        tmp_path, aws.url, ACCOUNTS, REGIONS, top={"sinks": {"ops": {"type": "sns", "topic_arn": topic}}}
    )
    audited = _report(config, "audit")
    assert {(f["resource_id"], f["status"]) for f in audited["findings"]} == {(i, "new") for i in fleet["bad"]}
    result = cli("--config", str(config), "--json", "--output-dir", str(tmp_path / "r"), "report", "--sink", "ops")
    assert result.exit_code == 0, result.stderr
    assert {f["resource_id"] for f in result.report["findings"]} == set(fleet["bad"])
    assert result.report["summary"]["by_check"] == {"tags": len(fleet["bad"])}
    assert result.report["deliveries"] == [{"sink": "ops", "outcome": "sent", "error": None}]
    assert len(sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]) == 1
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "findings.ocsf.jsonl").exists()
    assert cli("--config", str(config), "report", "--sink", "nope").exit_code == 2


def test_terminate_confirmed_by_typing_the_account_ids(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    from fleetwarden.config import load_config
    from fleetwarden.errors import SafetyRefusal
    from fleetwarden.workflows.audit import AuditOptions, run_audit
    from fleetwarden.workflows.base import RunContext

    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"})
    config = load_config(write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="terminate"))
    asked: list[list[str]] = []

    def wrong(accounts: list[str]) -> bool:
        asked.append(accounts)
        return False

    with pytest.raises(SafetyRefusal):
        run_audit(RunContext.create(config), AuditOptions(apply=True, confirm_prompt=wrong))
    assert asked == [[A]] and states(factory, A, "us-east-1", bad)[bad[0]] == "running"
    report = run_audit(RunContext.create(config), AuditOptions(apply=True, confirm_prompt=lambda accounts: True))
    assert [(a.resource_id, a.outcome.value) for a in report.actions if a.action == "terminate"] == [(bad[0], "done")]
    assert states(factory, A, "us-east-1", bad)[bad[0]] == "terminated"


# -- exceptions that cannot exempt everything by accident (issue 8, defect 7) ---------------------------------
def _exceptions(config: Path, *args: str, input: str | None = None) -> Any:
    return cli("--config", str(config), "exceptions", *args, input=input)


def _stored(config: Path) -> list[dict[str, Any]]:
    listed = cli("--config", str(config), "--json", "exceptions", "list")
    assert listed.exit_code == 0, listed.stderr
    return list(json.loads(listed.stdout)["exceptions"])


def test_an_exception_without_reason_or_scope_is_refused_and_exempts_nothing(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"}, 2)
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="stop")

    blank = _exceptions(config, "add", "--kind", "do-not-stop", "--reason", "")
    assert blank.exit_code == 2
    assert "reason must not be blank" in blank.stderr and "needs a scope" in blank.stderr
    assert blank.stderr.strip().endswith("nothing was added")
    unscoped = _exceptions(config, "add", "--kind", "do-not-stop", "--reason", "maintenance")
    assert unscoped.exit_code == 2 and "--organization-wide" in unscoped.stderr
    wide = _exceptions(config, "add", "--kind", "do-not-stop", "--reason", "freeze", "--organization-wide")
    assert wide.exit_code == 5 and "confirm it with --yes" in wide.stderr  # not interactive, no --yes
    arabic = "".join(chr(0x0660 + int(d)) for d in A)  # passes str.isdigit(), is not an account id
    foreign = _exceptions(config, "add", "--kind", "do-not-stop", "--reason", "x", "--account", arabic)
    assert foreign.exit_code == 2 and "12 digits" in foreign.stderr
    snooze_scope = _exceptions(config, "add", "--kind", "do-not-stop", "--reason", "x", "--check", "tags")
    assert snooze_scope.exit_code == 2 and "snoozes only" in snooze_scope.stderr
    assert _stored(config) == []

    result = cli("--config", str(config), "--json", "audit", "--apply")
    assert result.exit_code == 0, result.stderr
    assert set(states(factory, A, "us-east-1", bad).values()) == {"stopped"}
    assert result.report["summary"]["skipped_by_exception"] == {}
    assert "broad_exceptions" not in result.report["summary"]


def test_an_organization_wide_exception_needs_confirming_and_is_counted_and_warned(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import click.testing

    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"}, 3)
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="stop")
    # An interactive terminal: the command asks for the confirmation instead of refusing outright.
    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)
    args = ("add", "--kind", "do-not-stop", "--reason", "change freeze", "--owner", "ops", "--organization-wide")
    wrong = _exceptions(config, *args, input="yes\n")
    assert wrong.exit_code == 5 and "not confirmed" in wrong.stderr
    assert _stored(config) == []
    typed = _exceptions(config, *args, input="organization-wide\n")
    assert typed.exit_code == 0, typed.stderr
    assert "covers the whole organization" in typed.stderr
    (stored,) = _stored(config)
    assert (stored["organization_wide"], stored["covers"], stored["account_id"]) == (
        True,
        "the whole organization",
        None,
    )
    scripted = _exceptions(config, *args, "--yes")  # the same for scripts
    assert scripted.exit_code == 0, scripted.stderr
    removed = _exceptions(config, "remove", stored["id"])
    assert removed.exit_code == 0, removed.stderr
    assert [e["id"] for e in _stored(config)] == re.findall(r"^added (exc-[0-9a-f]+) ", scripted.stderr, re.M)

    result = cli("--config", str(config), "--json", "audit", "--apply")

    assert result.exit_code == 0, result.stderr
    assert set(states(factory, A, "us-east-1", bad).values()) == {"running"}
    summary = result.report["summary"]
    assert summary["skipped_by_exception"] == {"do-not-stop": 3}
    assert summary["exceptions"] == "3 action(s) skipped (do-not-stop: 3), 0 finding(s) snoozed"
    assert summary["broad_exceptions"].endswith("(do-not-stop) covers the whole organization")
    console = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # colours: the terminal is "interactive" here
    assert "exceptions: 3 action(s) skipped (do-not-stop: 3), 0 finding(s) snoozed" in console
    assert "broad exceptions: exc-" in console


def test_an_account_wide_exception_is_warned_about_in_the_audit(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    users(factory, B, "alice")
    kept = launch(factory, A, "us-east-1", {"created_by": "alice"})
    stopped = launch(factory, B, "us-east-1", {"created_by": "alice"})
    config = write_config(tmp_path, aws.url, (A, B), ["us-east-1"], action="stop")
    added = _exceptions(config, "add", "--kind", "do-not-stop", "--account", A, "--reason", "prod", "--owner", "ops")
    assert added.exit_code == 0 and f"covers all of account {A}" in added.stderr

    report = _report(config, "audit", "--apply")

    assert states(factory, A, "us-east-1", kept) == {kept[0]: "running"}
    assert states(factory, B, "us-east-1", stopped) == {stopped[0]: "stopped"}
    assert report["summary"]["skipped_by_exception"] == {"do-not-stop": 1}
    assert f"covers all of account {A}" in report["summary"]["broad_exceptions"]


def test_a_legacy_unscoped_exception_is_honoured_and_flagged_loudly(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    from fleetwarden.config import load_config
    from fleetwarden.model import ExceptionRule
    from fleetwarden.state import open_store

    users(factory, A, "alice")
    bad = launch(factory, A, "us-east-1", {"created_by": "alice"})
    config = write_config(tmp_path, aws.url, (A,), ["us-east-1"], action="stop")
    store = open_store(load_config(config).state)
    # A row as the state store holds it from before scopes were required: no organization_wide, no scope.
    row = '{"id": "exc-old", "kind": "do-not-stop", "reason": "", "owner": "me", "created_at": "2026-01-01T00:00:00Z"}'
    store.add_exception(ExceptionRule.model_validate_json(row))
    store.close()

    listed = cli("--config", str(config), "exceptions", "list")
    assert listed.exit_code == 0
    assert "WARNING: 1 exception(s) stored without any scope cover the whole organization" in listed.stderr
    assert "exc-old" in listed.stderr
    (stored,) = _stored(config)
    assert stored["legacy_unscoped"] is True and stored["covers"].startswith("the whole organization")

    report = _report(config, "audit", "--apply")
    assert states(factory, A, "us-east-1", bad) == {bad[0]: "running"}
    assert report["summary"]["skipped_by_exception"] == {"do-not-stop": 1}
    assert (
        "exc-old (do-not-stop) covers the whole organization (stored without any scope)"
        in (report["summary"]["broad_exceptions"])
    )
