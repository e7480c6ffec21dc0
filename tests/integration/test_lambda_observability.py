"""The real Lambda handler (lambda_handler.handler, wrapped in `observe`), against the emulator: a guard that
trips and tells Slack (the loopback fake) with a token from an SSM SecureString, two warm invocations. Checked
on stdout, which is Lambda's log: one EMF record per invocation with the contracted metrics, JSON log lines, and
never the token; and one read each of the config and of the token for both invocations (the warm cache)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, launch, role
from slack_fake import CHANNEL, TOKEN, FakeSlack

from fleetwarden import lambda_handler
from fleetwarden.aws.session import SessionFactory
from fleetwarden.config_source import CACHE_ENV, LAMBDA_ENV, warm_cache
from fleetwarden.emulator.server import EmulatorServer

A = ACCOUNTS[0]
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def warm_lambda(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Lambda-like environment (the cache on, by default), and an empty warm cache before and after."""
    monkeypatch.setenv(LAMBDA_ENV, "fleetwarden")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    warm_cache().clear()
    yield
    warm_cache().clear()


def calls(aws: EmulatorServer, action: str) -> int:
    return sum(row["count"] for row in aws.client.calls()["calls"] if row["action"] == action)


def test_a_warm_guard_function_logs_json_emits_metrics_and_reads_config_and_token_once(
    aws: EmulatorServer,
    factory: SessionFactory,
    slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    ssm = factory.client("ssm", region=REGION)
    ssm.put_parameter(Name="/fleetwarden/slack-token", Value=TOKEN, Type="SecureString")
    config = {
        "aws": {"endpoint_url": aws.url, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": A, "role_arn": role(A)}],
        "regions": [REGION],
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "sinks": {
            "chat": {
                "type": "slack",
                "channel": CHANNEL,
                "token": "ssm:/fleetwarden/slack-token",
                "api_url": f"{slack.url}/api/",
            }
        },
        "guard": {"max_running_instances": 2, "lockout": {"mode": "off"}, "notify": ["chat"]},
    }
    ssm.put_parameter(Name="/fleetwarden/config", Value=yaml.safe_dump(config), Type="SecureString")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", "ssm:/fleetwarden/config")
    launch(factory, A, REGION, {"created_by": "alice", "department": "eng", "project": "web"}, 3)
    handler = lambda_handler.handler  # already wrapped in observe
    aws.client.reset_calls()
    capsys.readouterr()

    first = handler({"action": "guard", "apply": True}, None)
    second = handler({"action": "guard", "apply": True}, None)
    out = capsys.readouterr().out

    assert first["status"] == "ok" and first["summary"]["newly_tripped"] == [A], first
    assert second["status"] == "ok", second
    assert len(slack.calls("chat.postMessage")) == 1  # the trip notice, told once
    assert calls(aws, "GetParameter") == 2  # the config once, the token once, for both invocations
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    records = [line for line in lines if "_aws" in line]
    assert [r["Action"] for r in records] == ["guard", "guard"]
    assert all(r["Runs"] == [1.0] and r["FailedRuns"] == [0.0] and r["PartialRuns"] == [0.0] for r in records)
    assert records[0]["ActionsTaken"] == [3.0] and records[0]["run_id"] == first["run_id"]
    logs = [line for line in lines if "_aws" not in line]
    assert logs and all(line["service"] == "fleetwarden" and line["action"] == "guard" for line in logs)
    summaries = [line for line in logs if line["message"] == "invocation finished"]
    assert [s["run_id"] for s in summaries] == [first["run_id"], second["run_id"]]
    assert all(s["accounts"] == 1 for s in summaries)
    assert TOKEN not in out and "loopback-secret" not in out
