"""Canary identity on the emulator (issue 8, defect 9): one stopped instance with the canary tags per region is the
canary; an instance that only carries its tags is audited like any other, and several stopped ones are a finding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet import ACCOUNTS, GOOD_TAGS, cli, launch, states, users, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A = ACCOUNTS[0]
REGION = "us-east-1"
CANARY = {"Name": f"api-canary-{REGION}"}
CANARY_CONFIG = {"tags": {"Name": "api-canary-{region}"}}


def _config(tmp_path: Path, aws: EmulatorServer, action: str) -> Path:
    return write_config(tmp_path, aws.url, (A,), [REGION], action=action, canary=CANARY_CONFIG)


def _findings(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["resource_id"], f["control"]) for f in report["findings"]}


def _actions(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {a["resource_id"]: (a["outcome"], a["reason"]) for a in report["actions"]}


def test_a_running_instance_tagged_as_the_canary_is_audited_and_stopped(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    (canary,) = launch(factory, A, REGION, {**GOOD_TAGS, **CANARY}, state="stopped")
    (lookalike,) = launch(factory, A, REGION, CANARY)  # running, and missing every required tag
    config = _config(tmp_path, aws, "stop")

    result = cli("--config", str(config), "--json", "audit", "--apply")

    assert result.exit_code == 0, result.stderr
    assert [t["status"] for t in result.report["targets"]] == ["ok"]
    assert _findings(result.report) == {(lookalike, "required-tags"), (lookalike, "canary-lookalike")}
    lookalike_finding = next(f for f in result.report["findings"] if f["control"] == "canary-lookalike")
    assert "tagged like this region's canary but is running" in lookalike_finding["title"]
    assert {i: outcome for i, (outcome, _) in _actions(result.report).items()} == {lookalike: "done"}
    assert states(factory, A, REGION, [lookalike, canary]) == {lookalike: "stopped", canary: "stopped"}


def test_a_running_lookalike_with_good_tags_gets_a_finding_but_no_action(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    launch(factory, A, REGION, {**GOOD_TAGS, **CANARY}, state="stopped")
    (lookalike,) = launch(factory, A, REGION, {**GOOD_TAGS, **CANARY})
    config = _config(tmp_path, aws, "stop")

    result = cli("--config", str(config), "--json", "audit", "--apply")

    assert result.exit_code == 0, result.stderr
    assert _findings(result.report) == {(lookalike, "canary-lookalike")}
    assert result.report["actions"] == []  # the canary finding alone never leads to an action
    assert states(factory, A, REGION, [lookalike]) == {lookalike: "running"}


def test_two_stopped_canaries_in_a_region_are_a_finding_and_neither_is_exempt(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    first = launch(factory, A, REGION, {**CANARY, "created_by": "alice"}, state="stopped")
    second = launch(factory, A, REGION, {**CANARY, "created_by": "alice"}, state="stopped")
    twins = sorted(first + second)
    config = _config(tmp_path, aws, "terminate")

    result = cli("--config", str(config), "--json", "audit")  # dry run

    assert result.exit_code == 0, result.stderr
    assert [t["status"] for t in result.report["targets"]] == ["ok"]
    assert _findings(result.report) == {(i, c) for i in twins for c in ("required-tags", "canary-duplicate")}
    duplicate = next(f for f in result.report["findings"] if f["control"] == "canary-duplicate")
    assert duplicate["severity"] == "HIGH" and duplicate["details"]["stopped_canaries"] == twins
    # Audited like any instance: both would be terminated, neither is skipped as "the canary".
    assert {i: outcome for i, (outcome, _) in _actions(result.report).items()} == {i: "planned" for i in twins}
    assert set(states(factory, A, REGION, twins).values()) == {"stopped"}


def test_a_single_stopped_canary_is_still_exempt(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    users(factory, A, "alice")
    (canary,) = launch(factory, A, REGION, {**CANARY, "created_by": "alice"}, state="stopped")
    (violator,) = launch(factory, A, REGION, {"created_by": "alice"}, state="stopped")
    config = _config(tmp_path, aws, "terminate")

    result = cli("--config", str(config), "--json", "audit", "--apply", "--confirm-terminate")

    assert result.exit_code == 0, result.stderr
    assert _findings(result.report) == {(canary, "required-tags"), (violator, "required-tags")}
    actions = _actions(result.report)
    assert actions[canary] == ("skipped", "canary instances are never acted on")
    assert actions[violator][0] == "done"
    assert states(factory, A, REGION, [canary, violator]) == {canary: "stopped", violator: "terminated"}


def test_a_region_whose_only_canary_runs_is_audited_with_a_finding(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    # The answer holds the canary's tags, so it is trusted; nothing is the canary, so nothing is exempt: the running
    # lookalike (even within its grace period) gets a finding and, like the violator, the configured action.
    users(factory, A, "alice")
    (lookalike,) = launch(factory, A, REGION, CANARY)
    (fresh,) = launch(factory, A, REGION, CANARY, age_minutes=5)
    (violator,) = launch(factory, A, REGION, {})
    config = _config(tmp_path, aws, "stop")

    result = cli("--config", str(config), "--json", "audit", "--apply")

    assert result.exit_code == 0, result.stderr
    (target,) = result.report["targets"]
    assert target["status"] == "ok"
    lookalike_findings = sorted(
        f["resource_id"] for f in result.report["findings"] if f["control"] == "canary-lookalike"
    )
    assert lookalike_findings == sorted([lookalike, fresh])
    assert states(factory, A, REGION, [lookalike, fresh, violator]) == {
        lookalike: "stopped",
        fresh: "running",  # within its grace period: a finding, no action yet
        violator: "stopped",
    }


def test_a_region_without_any_canary_tagged_instance_is_not_trusted(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    users(factory, A, "alice")
    (violator,) = launch(factory, A, REGION, {})
    config = _config(tmp_path, aws, "stop")

    result = cli("--config", str(config), "--json", "audit", "--apply")

    assert result.exit_code == 4
    (target,) = result.report["targets"]
    assert target["status"] == "error" and "stopped canary instance" in target["error"]
    assert states(factory, A, REGION, [violator]) == {violator: "running"}
