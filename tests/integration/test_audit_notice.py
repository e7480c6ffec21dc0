"""Notice before action (audit.notice_days): the first run marks a violator (tag + record), later runs act only
after the date and only if it still violates, fixing the tags withdraws the notice, marks are journaled, a dry run
says what it would mark; a crash between the record and the tag only delays the action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fleet import ACCOUNTS, GOOD_TAGS, cli, ec2, launch, states, users, write_config

from fleetwarden.actions.notice import RECORD_KIND
from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import RunReport
from fleetwarden.state import open_store
from fleetwarden.workflows.audit import AuditOptions, run_audit
from fleetwarden.workflows.base import RunContext

A = ACCOUNTS[0]
REGION = "us-east-1"
TAG = "fleetwarden:action-after"
BAD = {"created_by": "alice", "department": "nope", "project": "web"}


@pytest.fixture(autouse=True)
def alice(factory: SessionFactory) -> None:
    """alice is an IAM user: BAD violates only through its department, which the tests fix and break."""
    users(factory, A, "alice")


def _audit(path: Path, at: datetime, *, apply: bool = True) -> RunReport:
    ctx = RunContext.create(load_config(path), clock=lambda: at)
    try:
        return run_audit(ctx, AuditOptions(apply=apply))
    finally:
        ctx.store.close()


def _by(report: RunReport, resource_id: str) -> dict[str, Any]:
    return {a.action: a for a in report.actions if a.resource_id == resource_id}


def _tags(factory: SessionFactory, instance_id: str) -> dict[str, str]:
    described = ec2(factory, A, REGION).describe_instances(InstanceIds=[instance_id])
    return {t["Key"]: t["Value"] for t in described["Reservations"][0]["Instances"][0].get("Tags", [])}


def _config(tmp_path: Path, aws: EmulatorServer, **audit: Any) -> Path:
    return write_config(tmp_path, aws.url, (A,), [REGION], action="stop", notice_days=3, **audit)


def test_notice_is_given_then_waited_then_acted_on(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    (violator,) = launch(factory, A, REGION, BAD)
    (good,) = launch(factory, A, REGION, GOOD_TAGS)
    path = _config(tmp_path, aws)
    day0 = datetime.now(UTC)

    dry = _audit(path, day0, apply=False)
    assert _by(dry, violator)["notice"].outcome == "planned" and "would mark" in _by(dry, violator)["notice"].reason
    assert "stop" not in _by(dry, violator)  # a dry run plans the notice, not the stop
    assert TAG not in _tags(factory, violator)
    assert dry.summary["notice"] == {"days": 3, "marked": 1, "waiting": 0, "due": 0, "cleared": 0}

    first = _audit(path, day0)
    assert _by(first, violator)["notice"].outcome == "done"
    after = day0 + timedelta(days=3)
    assert _tags(factory, violator)[TAG] == f"stop@{after:%Y-%m-%dT%H:%MZ}"
    assert states(factory, A, REGION, [violator, good]) == {violator: "running", good: "running"}
    store = open_store(load_config(path).state)
    try:
        journal = [e for e in store.list_journal() if e.action == "notice"]
        # One entry per mark: written `planned` before the first write, its final outcome under the same id.
        assert [(e.outcome, e.before["value"]) for e in journal] == [("done", f"stop@{after:%Y-%m-%dT%H:%MZ}")]
        assert store.get_record(RECORD_KIND, f"{A}/{REGION}/{violator}") is not None
    finally:
        store.close()

    # Within the notice: the stop waits, and says until when; the owner removing the tag changes nothing.
    ec2(factory, A, REGION).delete_tags(Resources=[violator], Tags=[{"Key": TAG}])
    waiting = _audit(path, day0 + timedelta(days=2))
    assert _by(waiting, violator)["stop"].outcome == "skipped"
    assert f"after {after:%Y-%m-%d %H:%M} UTC" in _by(waiting, violator)["stop"].reason
    assert _tags(factory, violator)[TAG] == f"stop@{after:%Y-%m-%dT%H:%MZ}"  # put back as recorded
    assert states(factory, A, REGION, [violator]) == {violator: "running"}

    # Past the date and still violating: stopped.
    due = _audit(path, after + timedelta(minutes=1))
    assert _by(due, violator)["stop"].outcome == "done"
    assert states(factory, A, REGION, [violator]) == {violator: "stopped"}
    assert due.summary["notice"]["due"] == 1


def test_fixing_the_tags_withdraws_the_notice(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    (violator,) = launch(factory, A, REGION, BAD)
    path = _config(tmp_path, aws)
    day0 = datetime.now(UTC)
    _audit(path, day0)
    assert TAG in _tags(factory, violator)
    ec2(factory, A, REGION).create_tags(Resources=[violator], Tags=[{"Key": "department", "Value": "eng"}])
    fixed = _audit(path, day0 + timedelta(days=1))
    assert _by(fixed, violator)["clear-notice"].outcome == "done"
    assert TAG not in _tags(factory, violator)
    assert fixed.summary["notice"]["cleared"] == 1
    # Broken again later: a fresh notice from that day, not the old date.
    ec2(factory, A, REGION).create_tags(Resources=[violator], Tags=[{"Key": "department", "Value": "nope"}])
    again = _audit(path, day0 + timedelta(days=5))
    assert _by(again, violator)["notice"].outcome == "done" and "stop" not in _by(again, violator)
    assert states(factory, A, REGION, [violator]) == {violator: "running"}


def test_a_notice_for_stop_does_not_license_terminate(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    (violator,) = launch(factory, A, REGION, BAD)
    day0 = datetime.now(UTC)
    _audit(_config(tmp_path, aws), day0)
    path = write_config(tmp_path, aws.url, (A,), [REGION], action="terminate", notice_days=3)
    later = _audit(path, day0 + timedelta(days=10))
    assert _by(later, violator)["notice"].outcome == "done"  # a new notice, for terminate
    assert "terminate" not in _by(later, violator)
    assert _tags(factory, violator)[TAG].startswith("terminate@")
    assert states(factory, A, REGION, [violator]) == {violator: "running"}


def test_a_crash_between_record_and_tag_only_delays(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    """The record says `tagged: false` (the run died before CreateTags): the next run tags and restarts the notice."""
    (violator,) = launch(factory, A, REGION, BAD)
    path = _config(tmp_path, aws)
    day0 = datetime.now(UTC)
    store = open_store(load_config(path).state)
    try:
        store.put_record(
            RECORD_KIND,
            f"{A}/{REGION}/{violator}",
            {"action": "stop", "after": day0.isoformat(), "marked_at": (day0 - timedelta(days=3)).isoformat(),
             "tagged": False},
            expected_version=None,
        )  # fmt: skip
    finally:
        store.close()
    resumed = _audit(path, day0 + timedelta(days=1))
    assert "stop" not in _by(resumed, violator) and _by(resumed, violator)["notice"].outcome == "done"
    restarted = day0 + timedelta(days=4)
    assert _tags(factory, violator)[TAG] == f"stop@{restarted:%Y-%m-%dT%H:%MZ}"
    assert states(factory, A, REGION, [violator]) == {violator: "running"}


def test_a_target_in_error_withdraws_nothing_and_notice_needs_an_action(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    (violator,) = launch(factory, A, REGION, BAD)
    path = _config(tmp_path, aws)
    day0 = datetime.now(UTC)
    _audit(path, day0)
    # Fixed, but the target cannot be read: nothing is known about it, so its notice stays.
    ec2(factory, A, REGION).create_tags(Resources=[violator], Tags=[{"Key": "department", "Value": "eng"}])
    aws.client.set_faults([{"service": "ec2", "action": "DescribeInstances", "mode": "unavailable"}])
    try:
        broken = _audit(path, day0 + timedelta(days=1))
    finally:
        aws.client.set_faults([])
    assert not [a for a in broken.actions if a.action == "clear-notice"]
    assert TAG in _tags(factory, violator)
    bad = write_config(tmp_path, aws.url, (A,), [REGION], action="report", notice_days=3)
    result = cli("--config", str(bad), "validate")
    assert result.exit_code == 2 and "notice_days" in result.stderr


@pytest.mark.parametrize("key", ["aws:owner", "", "department"])
def test_bad_notice_tags_are_refused(aws: EmulatorServer, tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, aws.url, (A,), [REGION], action="stop", notice_days=1, notice_tag=key)
    result = cli("--config", str(path), "validate")
    assert result.exit_code == 2 and "notice_tag" in result.stderr
