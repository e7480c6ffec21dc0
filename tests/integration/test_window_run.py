"""`window run` with Inspector v2 (the emulator's coverage rule and seeded findings) and an injected clock: the
waits (settle, polling, timeout) advance a fake clock instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fleet import ACCOUNTS, launch, states, window_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import ActionOutcome
from fleetwarden.workflows.base import RunContext
from fleetwarden.workflows.window import RunOptions, run_window

A, B, _ = ACCOUNTS


class FakeClock:
    """Starts a minute in the past (so the emulator's real scan times fall inside the window) and moves only
    when the workflow sleeps."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(minutes=1)
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def context(path: Path, clock: FakeClock) -> RunContext:
    return RunContext.create(load_config(path), clock=clock, sleep=clock.sleep)


@pytest.fixture
def seeded(factory: SessionFactory, aws: EmulatorServer) -> dict[str, Any]:
    out = {
        "a": launch(factory, A, "us-east-1", {}, 2, state="stopped"),
        "b": launch(factory, B, "eu-west-1", {}, 1, state="stopped"),
        "running": launch(factory, A, "us-east-1", {}, 1),
    }
    finding = {
        "awsAccountId": A,
        "severity": "CRITICAL",
        "title": "CVE-2024-6387 - openssh",
        "description": "regreSSHion",
        "resources": [{"type": "AWS_EC2_INSTANCE", "id": out["a"][0]}],
        "packageVulnerabilityDetails": {"vulnerabilityId": "CVE-2024-6387"},
    }
    aws.client._json("/_fleetwarden/inspector2/findings", {"region": "us-east-1", "findings": [finding]})
    return out


def test_run_waits_for_coverage_collects_findings_and_closes(
    aws: EmulatorServer, tmp_path: Path, seeded: dict[str, Any], factory: SessionFactory
) -> None:
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 2}})
    clock = FakeClock()
    path = window_config(tmp_path, aws.url, settle_minutes=3, timeout_minutes=30)
    report = run_window(context(path, clock), RunOptions(apply=True))
    assert report.summary["coverage"]["complete"] is True
    assert len(report.targets) == len({(t.account_id, t.region) for t in report.targets}) == 4  # one row each
    assert sorted(report.summary["coverage"]["scanned"]) == sorted(seeded["a"] + seeded["b"])
    assert clock.slept[0] == 180  # settle, then one-minute polls until Inspector reports the scans
    assert 1 <= len(clock.slept) - 1 <= 3
    findings = [f for f in report.findings if f.check == "inspector"]
    assert [(f.resource_id, f.control, f.severity.value) for f in findings] == [
        (seeded["a"][0], "CVE-2024-6387", "CRITICAL")
    ]
    stops = {a.resource_id for a in report.actions if a.action == "stop" and a.outcome == ActionOutcome.DONE}
    assert stops == set(seeded["a"] + seeded["b"])
    assert set(states(factory, A, "us-east-1", seeded["a"]).values()) == {"stopped"}
    assert set(states(factory, B, "eu-west-1", seeded["b"]).values()) == {"stopped"}
    assert states(factory, A, "us-east-1", seeded["running"])[seeded["running"][0]] == "running"


def test_timeout_waiting_for_coverage_still_closes(
    aws: EmulatorServer, tmp_path: Path, seeded: dict[str, Any], factory: SessionFactory
) -> None:
    never = seeded["a"][1]
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 1, "never_scan": [never]}})
    clock = FakeClock()
    path = window_config(tmp_path, aws.url, settle_minutes=1, timeout_minutes=10)
    report = run_window(context(path, clock), RunOptions(apply=True))
    coverage = report.summary["coverage"]
    assert coverage["complete"] is False and coverage["not_scanned"] == [never]
    assert sum(clock.slept) >= 11 * 60  # settle + the whole timeout, on the fake clock
    assert set(states(factory, A, "us-east-1", seeded["a"]).values()) == {"stopped"}
    assert report.summary["close"]["closed"] == [report.summary["window_id"]]
