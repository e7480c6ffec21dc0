"""Pre-flight: the base credentials are resolved once (sts:GetCallerIdentity) before any fan-out. An unknown
profile, no credentials or an unreachable STS give one line and exit 2, and no other AWS call is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet import ACCOUNTS, cli, write_config

from fleetwarden.emulator.server import EmulatorServer

REGIONS = ["us-east-1", "eu-west-1"]


def _config(tmp_path: Path, endpoint: str) -> Path:
    return write_config(tmp_path, endpoint, ACCOUNTS[:2], REGIONS)


def test_unknown_profile_is_one_line_and_exit_2(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[dev]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "nope")
    aws.client.reset_calls()
    result = cli("--config", str(_config(tmp_path, aws.url)), "audit")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: AWS profile 'nope' is not in the AWS config or credentials files (profiles there: dev); "
        "nothing was done"
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert aws.client.calls()["total"] == 0


def test_no_credentials_makes_no_call_past_sts(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    aws.client.reset_calls()
    result = cli("--config", str(_config(tmp_path, aws.url)), "audit")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no AWS credentials found (environment, profile, SSO or instance role); nothing was done"
    )
    # Before: every target was tried and failed, and the run exited 4 ("partial").
    assert aws.client.calls()["total"] == 0


def test_unreachable_sts_is_one_line_and_nothing_else_is_called(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws.client.reset_calls()
    # Port 9 (discard) on loopback: nothing listens there, the connection is refused at once.
    path = _config(tmp_path, "http://127.0.0.1:9")
    result = cli("--config", str(path), "audit")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use the AWS credentials: EndpointConnectionError")
    assert result.stdout == ""


def test_good_credentials_pass_pre_flight_with_one_identity_call(aws: EmulatorServer, tmp_path: Path) -> None:
    aws.client.reset_calls()
    result = cli("--config", str(_config(tmp_path, aws.url)), "--json", "audit")
    assert result.exit_code == 0, result.stderr
    calls = aws.client.calls()["calls"]
    identity = sum(c["count"] for c in calls if c["service"] == "sts" and c["action"] == "GetCallerIdentity")
    assert identity == 1
    assert {t["status"] for t in result.report["targets"]} == {"ok"}
