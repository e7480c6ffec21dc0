"""The Lambda handler against the moto server: every sample event in tests/events/ and its observable result."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, GOOD_TAGS, launch, states, write_config

from fleetwarden import lambda_handler
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.events import EventError, parse_event
from fleetwarden.lambda_handler import handler
from fleetwarden.secrets import SecretResolver

EVENTS = Path(__file__).resolve().parents[1] / "events"
A, B, _ = ACCOUNTS
REGION = "us-east-1"
BAD_TAGS = {"created_by": "alice", "department": "eng"}  # no project tag


# What each sample event asks for; None: parse_event rejects it. Every fixture must be listed here.
EXPECTED_ACTION: dict[str, str | None] = {
    "audit": "audit",
    "audit_dry": "audit",
    "audit_apply": "audit",
    "guard_apply": "guard",
    "guard_dry": "guard",
    "guard_release": "guard-release",
    "list_targets": "list-targets",
    "pass": "pass",
    "window_open": "window-open",
    "window_open_dry": "window-open",
    "window_status": "window-status",
    "window_close": "window-close",
    "scheduled_event": "guard",
    "alarm_alarm": "guard",
    "alarm_action_alarm": "guard",
    "alarm_ok": "pass",
    "ssm_association_matching": "compliance-sync",
    "ssm_association_other": "compliance-sync",
    "cloudtrail_run_instances": "guard",  # the launching account only, at once (test_guard_launch_events.py)
    "cloudtrail_start_instances_denied": "pass",  # a failed call launched nothing
    "spend_report": "spend-report",
    "prices_refresh": "prices-refresh",
    "malformed": None,
    "unknown_action": None,
}


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


@pytest.fixture(autouse=True)
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A clean Lambda-like environment: no config reference, an empty task root, not disabled."""
    monkeypatch.delenv("FLEETWARDEN_CONFIG", raising=False)
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    monkeypatch.delenv("FLEETWARDEN_MAX_REPORT_ITEMS", raising=False)
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path / "task"))


def use_config(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    aws: EmulatorServer,
    top: dict[str, Any] | None = None,
    **audit: Any,
) -> Path:
    audit.setdefault("created_by_must_be_iam_user", False)
    path = write_config(tmp_path, aws.url, (A,), [REGION], top, **audit)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    return path


def ok(result: dict[str, Any]) -> dict[str, Any]:
    """The handler's result, checked to be a success (status ok, exit code 0)."""
    assert result["status"] == "ok" and result["exit_code"] == 0, result
    return result


def refused_input(result: dict[str, Any]) -> str:
    """The error of a result that refused its event or config (status error, exit code 2, nothing run)."""
    assert result["status"] == "error" and result["exit_code"] == 2, result
    return str(result["error"])


def running(factory: SessionFactory, ids: list[str]) -> set[str]:
    return set(states(factory, A, REGION, ids).values())


# -- the fixtures themselves ---------------------------------------------------------------------------
def test_every_sample_event_is_listed() -> None:
    assert {p.stem for p in EVENTS.glob("*.json")} == set(EXPECTED_ACTION)


@pytest.mark.parametrize("name", sorted(EXPECTED_ACTION))
def test_sample_event_parses_to_its_action(name: str) -> None:
    expected = EXPECTED_ACTION[name]
    if expected is None:
        with pytest.raises(EventError):
            parse_event(event(name))
    else:
        assert parse_event(event(name)).action == expected


# -- audit ---------------------------------------------------------------------------------------------
def test_audit_event_reports_the_violator(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    good = launch(factory, A, REGION, GOOD_TAGS)
    use_config(monkeypatch, tmp_path, aws)
    result = handler(event("audit"), None)
    assert result["status"] == "ok" and result["exit_code"] == 0, result
    assert result["workflow"] == "audit" and result["dry_run"] is True and result["apply_from"] == "config"
    assert result["targets_in_error"] == []
    assert result["summary"]["violators"] == 1
    report = result["report"]
    assert report["schema"] == "fleetwarden.run/v1"
    assert [f["resource_id"] for f in report["findings"]] == bad
    assert report["findings"][0]["details"]["missing"] == ["project"]
    assert running(factory, bad + good) == {"running"}
    json.dumps(result)  # the result is JSON-serializable as Lambda needs


def test_audit_stops_only_when_the_event_says_apply(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS, 2)
    use_config(monkeypatch, tmp_path, aws, action="stop")
    dry = handler(event("audit_dry"), None)
    assert dry["status"] == "ok" and dry["dry_run"] is True and dry["apply_from"] == "event"
    assert {a["outcome"] for a in dry["report"]["actions"]} == {"planned"}
    assert running(factory, bad) == {"running"}

    applied = handler(event("audit_apply"), None)
    assert applied["status"] == "ok" and applied["dry_run"] is False, applied
    assert {(a["resource_id"], a["outcome"]) for a in applied["report"]["actions"]} == {(i, "done") for i in bad}
    assert running(factory, bad) == {"stopped"}


def test_config_apply_decides_when_the_event_does_not(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    use_config(monkeypatch, tmp_path, aws, top={"apply": True}, action="stop")
    # The event's explicit "apply": false wins over the config's apply: true ...
    assert ok(handler(event("audit_dry"), None))["dry_run"] is True
    assert running(factory, bad) == {"running"}
    # ... and without "apply" the config's apply: true acts.
    result = ok(handler(event("audit"), None))
    assert result["dry_run"] is False and result["apply_from"] == "config"
    assert running(factory, bad) == {"stopped"}


def test_terminate_needs_the_events_confirmation(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    use_config(monkeypatch, tmp_path, aws, action="terminate", snapshot_before_terminate=False)
    refused = handler(event("audit_apply"), None)
    assert refused["status"] == "refused" and refused["exit_code"] == 5, refused
    assert "terminat" in refused["error"] and refused["run_id"]
    assert running(factory, bad) == {"running"}

    ok(handler({"action": "audit", "apply": True, "confirm_terminate": True}, None))
    assert running(factory, bad) == {"terminated"}


def test_report_is_trimmed_with_a_note(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch(factory, A, REGION, BAD_TAGS, 5)
    use_config(monkeypatch, tmp_path, aws, action="stop")
    monkeypatch.setenv("FLEETWARDEN_MAX_REPORT_ITEMS", "3")
    result = ok(handler(event("audit"), None))
    assert len(result["report"]["findings"]) == 3 and len(result["report"]["actions"]) == 3
    assert result["truncated"] == {"findings": {"kept": 3, "total": 5}, "actions": {"kept": 3, "total": 5}}
    assert result["note"] == (
        "report trimmed to 3 of 5 findings, 3 of 5 actions to fit Lambda's response limit "
        "(open and most severe findings first); the summary still counts everything"
    )
    assert result["summary"]["violators"] == 5


def test_response_stays_under_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lambda_handler, "MAX_RESPONSE_BYTES", 20_000)
    findings = [{"id": str(i), "status": "new", "severity": "LOW", "details": {"x": "y" * 200}} for i in range(400)]
    findings[399] = {**findings[399], "severity": "CRITICAL"}
    result = lambda_handler._attach_report({"status": "ok"}, {"findings": findings, "actions": []}, 1000)
    assert len(json.dumps(result)) <= 20_000
    # A finding is ~260 bytes, so halving from 400 fits at 50 (100 would be ~26 KB); no actions to trim.
    assert result["truncated"] == {"findings": {"kept": 50, "total": 400}}
    assert result["note"].startswith("report trimmed to 50 of 400 findings to fit Lambda's response limit")
    # The most severe open finding first, then the others in their order (the sort is stable).
    assert [f["id"] for f in result["report"]["findings"]] == ["399"] + [str(i) for i in range(49)]


# -- no-ops, refusals and errors -----------------------------------------------------------------------
def test_pass_event_makes_no_aws_call(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_config(monkeypatch, tmp_path, aws)
    aws.client.reset_calls()
    result = handler(event("pass"), None)
    assert result["status"] == "noop" and result["exit_code"] == 0
    assert "pass" in result["reason"]
    assert aws.client.calls()["total"] == 0


def test_disabled_flag_is_a_noop_without_config_or_aws(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    # A config that cannot be read proves it is not even loaded.
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(tmp_path / "missing.yaml"))
    monkeypatch.setenv("FLEETWARDEN_DISABLED", "true")
    aws.client.reset_calls()
    result = handler(event("audit_apply"), None)
    assert result == {
        "status": "noop",
        "exit_code": 0,
        "reason": "FLEETWARDEN_DISABLED=true: fleetwarden is switched off, nothing was read or done",
    }
    assert aws.client.calls()["total"] == 0
    assert running(factory, bad) == {"running"}


def test_a_garbled_disabled_flag_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_DISABLED", "ture")
    result = handler(event("guard_apply"), None)
    assert result["status"] == "error" and result["exit_code"] == 2
    assert "FLEETWARDEN_DISABLED must be true or false" in result["error"]


def test_alarm_back_to_ok_is_a_noop(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(monkeypatch, tmp_path, aws)
    aws.client.reset_calls()
    result = handler(event("alarm_ok"), None)
    assert result["status"] == "noop" and result["trigger"] == "alarm"
    assert "changed to OK" in result["reason"] and "only when an alarm enters ALARM" in result["reason"]
    assert aws.client.calls()["total"] == 0


def test_malformed_and_unknown_events_get_a_clear_error(aws: EmulatorServer) -> None:
    aws.client.reset_calls()
    malformed = handler(event("malformed"), None)
    assert malformed["status"] == "error" and malformed["exit_code"] == 2
    assert "aply: unknown key" in malformed["error"] and "apply" in malformed["error"]
    unknown = handler(event("unknown_action"), None)
    assert unknown["status"] == "error" and unknown["exit_code"] == 2
    assert "unknown action 'terminate-everything'" in unknown["error"] and "guard-release" in unknown["error"]
    bad_account = handler({"action": "guard-release", "account": "12345"}, None)
    assert "account: an AWS account id is 12 digits" in refused_input(bad_account)
    assert "must be a JSON object" in refused_input(handler(["audit"], None))
    assert "unrecognized event" in handler({"hello": "world"}, None)["error"]
    string_apply = handler({"action": "audit", "apply": "false"}, None)
    assert "apply" in refused_input(string_apply)
    assert aws.client.calls()["total"] == 0


def test_no_action_is_unavailable_in_this_version() -> None:
    assert not lambda_handler.UNAVAILABLE


def test_state_store_that_cannot_be_opened_is_an_error_result(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_config(monkeypatch, tmp_path, aws, top={"state": "dynamodb://fleetwarden?colour=blue"})
    result = handler(event("audit"), None)
    assert result["status"] == "error" and result["exit_code"] == 1
    assert "unknown parameter(s) colour" in result["error"]


# -- SSM association events ----------------------------------------------------------------------------
def json_log(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The invocation's JSON log lines, as Lambda sees them: stdout (fleetwarden.observability), EMF records aside."""
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if "_aws" not in line]


def test_ssm_association_of_another_document_is_ignored(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, tmp_path, aws)
    result = handler(event("ssm_association_other"), None)
    assert result["status"] == "noop" and result["trigger"] == "ssm-association"
    assert "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" in result["reason"] and "ignored" in result["reason"]
    assert any("ignored" in str(line["message"]) and line["level"] == "INFO" for line in json_log(capsys))


def test_ssm_association_matching_routes_to_compliance_sync(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # By document name (AWS-RunInspecChecks is in compliance.document_names by default) ...
    use_config(monkeypatch, tmp_path, aws)
    result = handler(event("ssm_association_matching"), None)
    assert result["action"] == "compliance-sync" and "compliance.document_names" in result["reason"]
    assert result["status"] == "ok" and result["workflow"] == "compliance-sync", result
    assert result["apply_from"] == "config" and result["dry_run"] is True
    # ... and by association id.
    use_config(
        monkeypatch, tmp_path, aws, top={"compliance": {"association_ids": ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]}}
    )
    other = ok(handler(event("ssm_association_other"), None))
    assert other["action"] == "compliance-sync" and "compliance.association_ids" in other["reason"]


# -- list-targets --------------------------------------------------------------------------------------
def test_list_targets_changes_nothing(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, aws.url, (A, B), ["us-east-1", "eu-west-1"])
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    aws.client.reset_calls()
    result = handler(event("list_targets"), None)
    assert result["status"] == "ok" and result["workflow"] == "list-targets" and result["dry_run"] is True
    assert {(t["account_id"], t["region"]) for t in result["targets"]} == {
        (a, r) for a in (A, B) for r in ("us-east-1", "eu-west-1")
    }
    assert result["summary"] == {"accounts": 2, "targets": 4, "targets_error": 0}
    # Explicit accounts and regions: nothing to look up, so not a single call.
    assert aws.client.calls()["total"] == 0


# -- where the config comes from -----------------------------------------------------------------------
def _config_text(tmp_path: Path, aws: EmulatorServer) -> str:
    return write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False).read_text()


def test_config_from_s3(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    s3 = factory.client("s3", region="us-east-1")
    s3.create_bucket(Bucket="fleetwarden-config")
    s3.put_object(Bucket="fleetwarden-config", Key="prod/fleetwarden.yaml", Body=_config_text(tmp_path, aws).encode())
    monkeypatch.setenv("FLEETWARDEN_CONFIG", "s3://fleetwarden-config/prod/fleetwarden.yaml")
    result = handler(event("audit"), None)
    assert result["status"] == "ok", result
    assert [f["resource_id"] for f in result["report"]["findings"]] == bad

    monkeypatch.setenv("FLEETWARDEN_CONFIG", "s3://fleetwarden-config/missing.yaml")
    missing = handler(event("audit"), None)
    assert missing["status"] == "error" and missing["exit_code"] == 2
    assert "s3://fleetwarden-config/missing.yaml" in missing["error"] and "NoSuchKey" in missing["error"]


def test_config_from_ssm(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = launch(factory, A, REGION, BAD_TAGS)
    ssm = factory.client("ssm", region="us-east-1")
    ssm.put_parameter(Name="/fleetwarden/config", Value=_config_text(tmp_path, aws), Type="SecureString")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", "ssm:/fleetwarden/config")
    result = handler(event("audit"), None)
    assert result["status"] == "ok", result
    assert [f["resource_id"] for f in result["report"]["findings"]] == bad

    monkeypatch.setenv("FLEETWARDEN_CONFIG", "ssm:/fleetwarden/nope")
    missing = handler(event("audit"), None)
    assert missing["status"] == "error" and missing["exit_code"] == 2
    assert "ssm:/fleetwarden/nope" in missing["error"] and "ParameterNotFound" in missing["error"]


def test_config_reference_missing_or_invalid(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = handler(event("audit"), None)
    assert missing["status"] == "error" and missing["exit_code"] == 2
    assert "FLEETWARDEN_CONFIG" in missing["error"] and str(tmp_path / "task" / "fleetwarden.yaml") in missing["error"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"audit": {"acton": "stop"}}))
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(bad))
    invalid = handler(event("audit"), None)
    assert "audit.acton: unknown key" in refused_input(invalid)

    monkeypatch.setenv("FLEETWARDEN_CONFIG", "https://example.com/fleetwarden.yaml")
    assert "unsupported scheme https://" in refused_input(handler(event("audit"), None))


def test_default_config_at_the_task_root(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = tmp_path / "task"
    task.mkdir()
    (task / "fleetwarden.yaml").write_text(_config_text(tmp_path, aws))
    result = handler(event("list_targets"), None)
    assert result["status"] == "ok" and result["targets"] == [{"account_id": A, "region": REGION}]


# -- logging -------------------------------------------------------------------------------------------
def test_summary_is_logged_as_one_json_line(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    launch(factory, A, REGION, BAD_TAGS)
    use_config(monkeypatch, tmp_path, aws)
    capsys.readouterr()
    result = handler(event("audit"), None)
    logged = json_log(capsys)
    lines = [line["message"] for line in logged if isinstance(line["message"], dict) and "status" in line["message"]]
    assert len(lines) == 1, logged
    assert logged[-1]["message"] == "invocation finished" and logged[-1]["run_id"] == result["run_id"]
    assert lines[0]["run_id"] == result["run_id"] and lines[0]["summary"]["violators"] == 1


def test_secrets_are_redacted_from_logs_during_a_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FW_TEST_TOKEN", "xoxb-very-secret")
    secrets = SecretResolver(None)
    secrets.resolve("env:FW_TEST_TOKEN")
    log = logging.getLogger("fleetwarden.sinks.test")
    with caplog.at_level(logging.INFO, logger="fleetwarden"):
        with lambda_handler._redacting(secrets):
            log.info("posting with %s", "xoxb-very-secret")
        log.info("after the run: %s", "xoxb-very-secret")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "posting with ***"
    # The filter is removed after the invocation (warm containers do not accumulate filters).
    assert messages[1] == "after the run: xoxb-very-secret"


def test_handler_module_stays_lean() -> None:
    """Importing the handler, and a disabled or pass invocation, load neither moto nor boto3 (Powertools imports
    the botocore package itself, not its client machinery)."""
    code = (
        "import sys, os\n"
        "os.environ['FLEETWARDEN_DISABLED'] = 'true'\n"
        "from fleetwarden.lambda_handler import handler\n"
        "assert handler({'action': 'guard'}, None)['status'] == 'noop'\n"
        "os.environ['FLEETWARDEN_DISABLED'] = 'false'\n"
        "assert handler({'action': 'pass'}, None)['status'] == 'noop'\n"
        "loaded = sorted(m for m in ('moto', 'boto3', 'botocore.client', 'botocore.session') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # The invocations' EMF records and JSON logs go to stdout too: the last line is the check's.
    assert out.stdout.strip().splitlines()[-1] == "LOADED []", out.stdout + out.stderr


# -- the guard (another developer's workflow) ----------------------------------------------------------
def guard_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, aws: EmulatorServer, apply: bool = False) -> None:
    top = {"apply": apply, "guard": {"max_running_instances": 1, "lockout": {"mode": "off"}}}
    use_config(monkeypatch, tmp_path, aws, top=top)


def test_guard_dry_run_changes_nothing(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = launch(factory, A, REGION, GOOD_TAGS, 3)
    guard_config(monkeypatch, tmp_path, aws)
    result = handler(event("guard_dry"), None)
    assert result["status"] == "ok" and result["workflow"] == "guard" and result["dry_run"] is True, result
    assert running(factory, ids) == {"running"}


def test_guard_apply_halts_the_account(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = launch(factory, A, REGION, GOOD_TAGS, 3)
    guard_config(monkeypatch, tmp_path, aws)
    result = handler(event("guard_apply"), None)
    assert result["status"] == "ok" and result["dry_run"] is False, result
    assert running(factory, ids) == {"stopped"}
    # The run is on record for `fleetwarden doctor` (docs/doctor.md): its last success is this run.
    from fleetwarden.doctor.runs import RUN_KIND
    from fleetwarden.state import open_store

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        stored = store.get_record(RUN_KIND, "guard")
    finally:
        store.close()
    assert stored is not None and stored[0]["last_success"]["run_id"] == result["run_id"], stored


@pytest.mark.parametrize("name", ["scheduled_event", "alarm_alarm", "alarm_action_alarm"])
def test_schedule_and_alarm_run_the_guard_with_the_configs_apply(
    name: str, aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = launch(factory, A, REGION, GOOD_TAGS, 3)
    guard_config(monkeypatch, tmp_path, aws, apply=True)
    result = ok(handler(event(name), None))
    assert result["workflow"] == "guard" and result["apply_from"] == "config" and result["dry_run"] is False, result
    assert running(factory, ids) == {"stopped"}


def test_guard_release_restarts_what_the_guard_stopped(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = launch(factory, A, REGION, GOOD_TAGS, 3)
    guard_config(monkeypatch, tmp_path, aws)
    assert handler(event("guard_apply"), None)["status"] == "ok"
    assert running(factory, ids) == {"stopped"}
    result = handler(event("guard_release"), None)
    assert result["status"] == "ok" and result["workflow"] == "guard-release" and result["dry_run"] is False, result
    assert running(factory, ids) == {"running"}


# -- scan window ---------------------------------------------------------------------------------------
def window_setup(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Three stopped instances in A/us-east-1, a config with no settle time, Inspector scanning at first sight."""
    ids = launch(factory, A, REGION, GOOD_TAGS, 3, state="stopped")
    use_config(monkeypatch, tmp_path, aws, top={"window": {"settle_minutes": 0, "timeout_minutes": 30}})
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 0}})
    return ids


def test_window_open_status_close_events(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = window_setup(aws, factory, tmp_path, monkeypatch)
    opened = handler(event("window_open"), None)
    assert opened["status"] == "ok" and opened["workflow"] == "window-open" and opened["dry_run"] is False, opened
    window_id = opened["window_id"]
    assert window_id and window_id == opened["summary"]["window_id"] and opened["summary"]["started"] == 3
    assert {(a["resource_id"], a["outcome"]) for a in opened["report"]["actions"]} == {(i, "done") for i in ids}
    assert running(factory, ids) == {"running"}

    # window-status of every open window, compact: counts instead of per-instance lists
    compact = handler(event("window_status"), None)
    assert compact["status"] == "ok" and compact["workflow"] == "window-status" and compact["dry_run"] is True
    assert compact["window_id"] is None and compact["complete"] is True
    [window] = compact["windows"]
    assert window["window_id"] == window_id and window["status"] == "open"
    assert window["instances"] == 3 and window["started"] == 3
    assert window["coverage"] == {"scanned": 3, "pending": 0, "errors": {}} and window["timed_out"] is False
    # ... and of one window, in full
    full = ok(handler({"action": "window-status", "window_id": window_id}, None))
    assert full["window_id"] == window_id and full["complete"] is True
    assert sorted(i["instance_id"] for i in full["windows"][0]["instances"]) == sorted(ids)
    assert sorted(full["windows"][0]["coverage"]["scanned"]) == sorted(ids)

    closed = handler({**event("window_close"), "window_id": window_id}, None)
    assert closed["status"] == "ok" and closed["workflow"] == "window-close", closed
    assert closed["window_id"] == window_id and closed["all_closed"] is True
    assert closed["summary"]["closed"] == [window_id] and closed["summary"]["stopped"] == 3
    assert running(factory, ids) == {"stopped"}
    json.dumps(closed)
    # closed: window-status of it says so, and another close is harmless
    again = handler({**event("window_close"), "window_id": window_id}, None)
    assert again["status"] == "ok" and again["all_closed"] is True and again["summary"]["already_closed"] == [window_id]
    assert ok(handler(event("window_status"), None))["windows"] == []


def test_window_close_without_an_id_closes_every_open_window(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = window_setup(aws, factory, tmp_path, monkeypatch)
    window_id = ok(handler({"action": "window-open", "apply": True, "compact": True}, None))["window_id"]
    assert running(factory, ids) == {"running"}
    closed = handler({"action": "window-close", "apply": True, "compact": True}, None)
    assert closed["status"] == "ok" and "report" not in closed, closed
    assert closed["window_id"] is None and closed["all_closed"] is True and closed["summary"]["closed"] == [window_id]
    assert running(factory, ids) == {"stopped"}


def test_window_dry_runs_change_nothing(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = window_setup(aws, factory, tmp_path, monkeypatch)
    opened = handler(event("window_open_dry"), None)
    assert opened["status"] == "ok" and opened["dry_run"] is True and opened["apply_from"] == "config", opened
    assert opened["window_id"] is None
    assert {a["outcome"] for a in opened["report"]["actions"]} == {"planned"}
    assert running(factory, ids) == {"stopped"}
    assert ok(handler(event("window_status"), None))["windows"] == []
    # a dry-run close of a real window plans the stops and leaves the window open
    window_id = ok(handler(event("window_open"), None))["window_id"]
    dry_close = ok(handler({"action": "window-close", "window_id": window_id}, None))
    assert dry_close["dry_run"] is True and dry_close["all_closed"] is False
    assert {a["outcome"] for a in dry_close["report"]["actions"]} == {"planned"}
    assert running(factory, ids) == {"running"}
    assert handler({"action": "window-close", "apply": True}, None)["all_closed"] is True


def test_window_event_errors(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_config(monkeypatch, tmp_path, aws)
    unknown = handler(event("window_close"), None)  # the fixture's window id is not in this state store
    assert unknown["status"] == "error" and unknown["exit_code"] == 2
    assert "no scan window win-20250301T120000Z-1a2b3c" in unknown["error"]
    assert unknown["window_id"] == "win-20250301T120000Z-1a2b3c" and unknown["all_closed"] is False
    status = handler({"action": "window-status", "window_id": "win-nope"}, None)
    assert status["status"] == "error" and status["window_id"] == "win-nope" and status["complete"] is False
    # window-open takes no window id; ids are validated; booleans are strict
    assert "window_id: unknown key" in refused_input(handler({"action": "window-open", "window_id": "x"}, None))
    assert "a window id is" in refused_input(handler({"action": "window-close", "window_id": "a b"}, None))
    assert "collect_findings" in refused_input(handler({"action": "window-close", "collect_findings": "no"}, None))
    # an error result before any workflow ran still carries window_id (the state machine reads it)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(tmp_path / "missing.yaml"))
    missing = handler(event("window_open"), None)
    assert missing["status"] == "error" and missing["window_id"] is None


# -- compliance (another developer's workflows) --------------------------------------------------------
def test_compliance_events_run_the_compliance_workflows(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_config(monkeypatch, tmp_path, aws)
    sync = handler({"action": "compliance-sync"}, None)
    assert sync["status"] == "ok" and sync["workflow"] == "compliance-sync" and sync["dry_run"] is True, sync
    assert sync["summary"]["instances_scanned"] == 0
    report = handler({"action": "compliance-report", "apply": False}, None)
    assert report["status"] == "ok" and report["workflow"] == "compliance-report" and report["dry_run"] is True
    assert report["summary"]["open_items"] == 0
