"""The Lambda's own signals (fleetwarden.observability): the EMF record's namespace, dimensions and values, the
JSON log lines and their fields, the secrets' redaction in them, and a CLI run that writes neither."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleetwarden.cli import main
from fleetwarden.lambda_handler import _redacting
from fleetwarden.observability import NAMESPACE, RunFigures, bind, observe
from fleetwarden.secrets import SecretResolver

log = logging.getLogger("fleetwarden.lambda")
SECRET = "xoxb-0123456789-very-secret-token"


@dataclass
class Context:
    """The attributes of Lambda's context object that are read."""

    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    function_name: str = "fleetwarden"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:fleetwarden"


def lines(out: str) -> list[dict[str, Any]]:
    """Every stdout line as JSON (a line that is not JSON fails the test: Lambda's stdout is the log)."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def emf(out: str) -> list[dict[str, Any]]:
    return [line for line in lines(out) if "_aws" in line]


def logs(out: str) -> list[dict[str, Any]]:
    return [line for line in lines(out) if "_aws" not in line]


def returning(result: dict[str, Any]) -> Any:
    @observe
    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        log.info("%s", json.dumps({"status": result["status"], "run_id": result.get("run_id")}))
        return result

    return handler


GUARD_OK = {
    "status": "ok",
    "exit_code": 0,
    "action": "guard",
    "trigger": "schedule",
    "run_id": "20260101T000000Z-abcdef12",
    "summary": {"running_by_account": {"111111111111": 3, "222222222222": 0}, "actions": {}, "targets_error": 0},
    "targets_in_error": [],
}


def test_a_completed_run_is_one_emf_record_with_the_contracted_namespace_dimensions_and_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert returning(GUARD_OK)({"action": "guard"}, Context()) == GUARD_OK
    [record] = emf(capsys.readouterr().out)
    [directive] = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE == "Fleetwarden"
    assert directive["Dimensions"] == [["Action", "service"]]
    assert record["Action"] == "guard" and record["service"] == "fleetwarden"
    names = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert names["Runs"] == names["PartialRuns"] == names["FailedRuns"] == "Count"
    assert names["DurationSeconds"] == "Seconds"
    assert record["Runs"] == [1.0] and record["PartialRuns"] == [0.0] and record["FailedRuns"] == [0.0]
    assert record["TargetsFailed"] == [0.0] and record["ActionsTaken"] == [0.0]
    assert record["run_id"] == GUARD_OK["run_id"]


def test_a_partial_run_counts_in_partial_runs_with_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    partial = {
        "status": "partial",
        "exit_code": 4,
        "action": "audit",
        "run_id": "r-partial",
        "summary": {
            "accounts": 3,
            "targets_error": 2,
            "findings_by_status": {"new": 4, "ongoing": 1},
            "actions_by_outcome": {"done": 2, "failed": 1},
        },
        "targets_in_error": [{"account_id": "222222222222", "region": "eu-west-1", "error": "denied"}] * 2,
    }
    returning(partial)({"action": "audit"}, None)
    [record] = emf(capsys.readouterr().out)
    assert record["Action"] == "audit"
    assert record["Runs"] == [1.0] and record["PartialRuns"] == [1.0] and record["FailedRuns"] == [0.0]
    assert record["Findings"] == [5.0] and record["ActionsTaken"] == [2.0] and record["TargetsFailed"] == [2.0]


@pytest.mark.parametrize("code", [1, 2])
def test_an_error_result_is_a_failed_run_and_no_run(code: int, capsys: pytest.CaptureFixture[str]) -> None:
    error = {"status": "error", "exit_code": code, "error": "invalid config", "action": "guard"}
    returning(error)({"action": "guard"}, None)
    out = capsys.readouterr().out
    [record] = emf(out)
    assert record["Runs"] == [0.0] and record["FailedRuns"] == [1.0] and record["PartialRuns"] == [0.0]
    [summary] = [line for line in logs(out) if line["message"] == "invocation finished"]
    assert summary["level"] == "ERROR" and summary["exit_code"] == code


def test_an_event_that_is_not_understood_is_a_failed_run_of_action_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    returning({"status": "error", "exit_code": 2, "error": "not an event"})(["not", "an", "event"], None)
    [record] = emf(capsys.readouterr().out)
    assert record["Action"] == "unknown" and record["FailedRuns"] == [1.0]


def test_a_disabled_noop_is_no_run_of_the_action_its_event_names(capsys: pytest.CaptureFixture[str]) -> None:
    # A disabled function's no-op result carries no action: the event's is used, so GuardSilent sees Runs 0.
    returning({"status": "noop", "exit_code": 0, "reason": "disabled"})(
        {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}, None
    )
    [record] = emf(capsys.readouterr().out)
    assert record["Action"] == "guard" and record["Runs"] == [0.0] and record["FailedRuns"] == [0.0]


def test_metrics_are_flushed_when_the_handler_raises(capsys: pytest.CaptureFixture[str]) -> None:
    @observe
    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        raise RuntimeError(f"a bug, quoting {SECRET}")

    with pytest.raises(RuntimeError):
        handler({"action": "guard"}, Context())
    out = capsys.readouterr().out
    [record] = emf(out)
    assert record["Action"] == "guard" and record["FailedRuns"] == [1.0] and record["Runs"] == [0.0]
    assert SECRET not in out  # the exception's type is logged, not its message
    assert any(line.get("exception_name") == "RuntimeError" for line in logs(out))


def test_logs_are_json_lines_with_the_action_run_id_accounts_and_request(capsys: pytest.CaptureFixture[str]) -> None:
    returning(GUARD_OK)({"action": "guard", "apply": True}, Context())
    out = logs(capsys.readouterr().out)
    assert all(line["service"] == "fleetwarden" and line["action"] == "guard" for line in out)
    assert all(line["function_request_id"] == Context.aws_request_id for line in out)
    # The handler's own JSON summary line is an object in the message, not an escaped string.
    assert {"status": "ok", "run_id": GUARD_OK["run_id"]} in [line["message"] for line in out]
    [summary] = [line for line in out if line["message"] == "invocation finished"]
    assert summary["run_id"] == GUARD_OK["run_id"] and summary["accounts"] == 2 and summary["status"] == "ok"
    assert summary["level"] == "INFO" and summary["duration_seconds"] >= 0


def test_keys_of_one_invocation_do_not_leak_into_the_next(capsys: pytest.CaptureFixture[str]) -> None:
    returning(GUARD_OK)({"action": "guard"}, Context())
    capsys.readouterr()
    returning({"status": "noop", "exit_code": 0, "action": "pass", "reason": "pass"})({"action": "pass"}, None)
    out = logs(capsys.readouterr().out)
    assert out and all(line["action"] == "pass" and "function_request_id" not in line for line in out)


def test_no_secret_reaches_the_json_logs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler's redaction (`_redacting`) covers every part of a JSON line: the message, the exception text
    and stack trace Powertools writes from the record itself, and extra keys."""
    monkeypatch.setenv("FW_TEST_SLACK_TOKEN", SECRET)

    @observe
    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        secrets = SecretResolver(None)
        with _redacting(secrets):
            token = secrets.resolve("env:FW_TEST_SLACK_TOKEN")
            log.info("posting with %s", token)
            log.warning("as JSON: %s", json.dumps({"token": token, "quoted": f'"{token}"'}))
            log.info("extra keys", extra={"token": token})
            try:
                raise ValueError(f"the API refused {token}")
            except ValueError:
                log.exception("delivery failed")
        return {"status": "ok", "exit_code": 0, "action": "guard", "run_id": "r1"}

    handler({"action": "guard"}, Context())
    out = capsys.readouterr().out
    assert SECRET not in out and "very-secret" not in out
    records = logs(out)
    assert "posting with ***" in [line["message"] for line in records]
    [failed] = [line for line in records if line["message"] == "delivery failed"]
    assert failed["exception_name"] == "ValueError" and "***" in failed["exception"]


def test_figures_of_a_compact_window_result_and_a_trimmed_report() -> None:
    trimmed = {
        "status": "ok",
        "exit_code": 0,
        "run_id": "r",
        "truncated": {"findings": {"kept": 1000, "total": 5231}},
        "report": {"findings": [{}] * 1000, "actions": [{"outcome": "done"}, {"outcome": "planned"}], "targets": []},
    }
    figures = RunFigures.from_result(trimmed)
    assert figures.findings == 5231 and figures.actions_taken == 1 and figures.completed and not figures.failed
    compact = RunFigures.from_result({"status": "refused", "exit_code": 5})
    assert compact.findings is None and compact.actions_taken is None and not compact.completed


def test_the_cli_writes_no_emf_and_no_json_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even in a process where the handler ran before (warm), a CLI command's stdout is its own output."""
    returning(GUARD_OK)({"action": "guard"}, Context())
    capsys.readouterr()
    config = tmp_path / "fleetwarden.yaml"
    config.write_text("accounts: [{id: '111111111111'}]\n")
    result = CliRunner().invoke(main, ["--config", str(config), "validate"])
    assert result.exit_code == 0, result.output
    out = result.stdout + capsys.readouterr().out
    assert "_aws" not in out and "CloudWatchMetrics" not in out and '"service":"fleetwarden"' not in out


def test_bind_adds_keys_to_the_rest_of_the_invocation_only(capsys: pytest.CaptureFixture[str]) -> None:
    @observe
    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        log.info("before")
        bind(run_id="r-bound")
        log.info("after")
        return {"status": "ok", "exit_code": 0, "action": "audit"}

    handler({"action": "audit"}, None)
    returning(GUARD_OK)({"action": "guard"}, None)
    out = {line["message"]: line for line in logs(capsys.readouterr().out) if isinstance(line["message"], str)}
    assert "run_id" not in out["before"] and out["after"]["run_id"] == "r-bound"
    assert [line.get("run_id") for m, line in out.items() if m == "invocation finished"] == [GUARD_OK["run_id"]]
    bind(run_id="outside")  # no invocation: nothing to bind to, no error
