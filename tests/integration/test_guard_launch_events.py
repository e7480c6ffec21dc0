"""Event-driven trips: the Lambda handler fed CloudTrail-via-EventBridge RunInstances / StartInstances events (the
JSON fixtures in tests/events, AWS's shapes) evaluates the launching account at once; a burst is coalesced into one
evaluation; a failed call, or an account the config does not cover, evaluates nothing."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, launch, role, states

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.lambda_handler import handler
from fleetwarden.state import open_store
from fleetwarden.workflows.guard.launch import KIND, claim, finish
from fleetwarden.workflows.guard.state import load_states

EVENTS = Path(__file__).resolve().parents[1] / "events"
A, B = ACCOUNTS[0], ACCOUNTS[1]
REGION = "us-east-1"


def _event(name: str, *, account: str = A, at: datetime | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    raw["account"] = raw["detail"]["recipientAccountId"] = account
    if at is not None:
        raw["detail"]["eventTime"] = at.isoformat().replace("+00:00", "Z")
    return raw


@pytest.fixture
def config(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = {
        "apply": True,  # the deployed guard acts: an event carries no --apply of its own
        "aws": {"endpoint_url": aws.url, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
        "regions": [REGION],
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "guard": {"max_running_instances": 3, "lockout": {"mode": "off"}},
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path / "task"))
    return path


def test_a_burst_of_launches_trips_the_account_in_one_evaluation(
    aws: EmulatorServer, config: Path, factory: SessionFactory
) -> None:
    ids = launch(factory, A, REGION, {}, count=5)
    quiet = launch(factory, B, REGION, {}, count=5)  # over the limit too, but no event names it
    at = datetime.now(UTC) - timedelta(seconds=30)  # CloudTrail delivers a launch to EventBridge after the call
    aws.client.reset_calls()
    results = [handler(_event("cloudtrail_run_instances", at=at + timedelta(milliseconds=n))) for n in range(50)]
    evaluated = [r for r in results if "evaluations" in r]
    assert len(evaluated) == 1, [r.get("reason") for r in results[:3]]
    assert evaluated[0]["status"] == "ok" and evaluated[0]["summary"]["tripped"] == [A]
    assert all(r.get("coalesced") for r in results if "evaluations" not in r)
    assert set(states(factory, A, REGION, ids).values()) == {"stopped"}
    assert set(states(factory, B, REGION, quiet).values()) == {"running"}  # only the launching account
    store = open_store(f"sqlite:///{config.parent / 'state.db'}")
    try:
        assert load_states(store)[A].tripped and B not in load_states(store)
    finally:
        store.close()
    # One evaluation's calls, not fifty: B was never read.
    describes = sum(c["count"] for c in aws.client.calls()["calls"] if c["action"] == "DescribeInstances")
    assert 1 <= describes <= 30


def test_a_launch_during_an_evaluation_makes_it_look_again(config: Path) -> None:
    store = open_store(f"sqlite:///{config.parent / 'state.db'}")
    try:
        now = datetime.now(UTC)
        assert claim(store, A, now - timedelta(seconds=60), now) is None  # evaluates
        # A launch after that evaluation began: it is in flight, so it is asked to look again, not run twice.
        why = claim(store, A, now + timedelta(seconds=1), now + timedelta(seconds=2))
        assert why is not None and "in flight" in why
        assert finish(store, A, now + timedelta(seconds=3)) is True  # look again
        assert finish(store, A, now + timedelta(seconds=4)) is False
        # An older launch than the evaluation that just ran (plus the margin) is covered.
        assert "covered" in (claim(store, A, now - timedelta(seconds=3), now + timedelta(seconds=5)) or "")
        # A claim of an invocation that died long ago does not block a new evaluation.
        data, version = store.get_record(KIND, A) or ({}, 0)
        store.put_record(KIND, A, {**data, "finished_at": None, "started_at": (now - timedelta(hours=1)).isoformat()},
                         expected_version=version)  # fmt: skip
        assert claim(store, A, now + timedelta(seconds=10), now + timedelta(seconds=11)) is None
    finally:
        store.close()


def test_failed_calls_and_other_accounts_evaluate_nothing(
    aws: EmulatorServer, config: Path, factory: SessionFactory
) -> None:
    ids = launch(factory, A, REGION, {}, count=5)
    denied = handler(_event("cloudtrail_start_instances_denied"))
    assert denied["status"] == "noop" and "nothing to evaluate" in denied["reason"]
    stranger = handler(_event("cloudtrail_run_instances", account="999999999999", at=datetime.now(UTC)))
    assert "not one of the config's accounts" in stranger["reason"]
    assert set(states(factory, A, REGION, ids).values()) == {"running"}
    broken = copy.deepcopy(_event("cloudtrail_run_instances"))
    del broken["detail"]["eventTime"]
    bad = handler(broken)
    assert bad["exit_code"] == 2 and "eventTime" in bad["error"]
