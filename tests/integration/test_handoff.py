"""The hand-off of a large run to the org-run state machine (fleetwarden.handoff), against moto.

The org-run state machine is created in moto from the real ASL (src/fleetwarden/statemachines/org-run.asl.json) with
the sfn.py helpers. Outside moto's execution mode an execution stays RUNNING with its input, which is what most
tests read; one test runs the handed-off execution to its end in execution mode, with the real handler behind the
function, to show the org-run takes the hand-off's input as is.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleet import GOOD_TAGS, launch, write_config
from sfn import create_function, create_state_machine, execution_mode, install_bridge

from fleetwarden import deploy
from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import Config
from fleetwarden.config_source import load_config_from
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.handoff import HANDOFF_ACTIONS, ORG_RUN_ARN_ENV, SHARD_ABOVE_ENV, execution_name, hand_off
from fleetwarden.lambda_handler import ORG_RUN_ACTIONS

REGION = "us-east-1"
FUNCTION = "fleetwarden-handoff-test"
BUCKET = "fleetwarden-runs-handoff"
FLEET = tuple(f"{200000000000 + i:012d}" for i in range(1, 6))  # 5 accounts
AT = datetime(2026, 12, 2, 6, 0, 17, tzinfo=UTC)


def org_run(factory: SessionFactory) -> tuple[Any, str]:
    """The org-run state machine from the packaged ASL, its placeholders substituted as CloudFormation does."""
    function_arn = create_function(factory, REGION, FUNCTION)
    factory.client("s3", region=REGION).create_bucket(Bucket=BUCKET)
    definition = json.dumps(deploy.load_state_machine(name=deploy.ORG_RUN))
    definition = definition.replace("${" + deploy.FUNCTION_ARN_SUBSTITUTION + "}", function_arn)
    definition = definition.replace("${" + deploy.RUN_BUCKET_SUBSTITUTION + "}", BUCKET)
    return create_state_machine(factory, REGION, "fleetwarden-org-run", definition)


def load(tmp_path: Path, aws: EmulatorServer, top: dict[str, Any] | None = None) -> tuple[Path, Config]:
    path = write_config(tmp_path, aws.url, FLEET, [REGION], top=top, created_by_must_be_iam_user=False)
    return path, load_config_from(str(path))


def executions(sfn: Any, machine: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=machine)["executions"]
    return listed


@pytest.fixture
def machine(aws: EmulatorServer, factory: SessionFactory) -> tuple[Any, str]:
    return org_run(factory)


def env(machine: str, above: str = "3") -> dict[str, str]:
    return {SHARD_ABOVE_ENV: above, ORG_RUN_ARN_ENV: machine}


def test_the_handoff_takes_the_workflows_the_org_run_shards() -> None:
    assert set(HANDOFF_ACTIONS) == set(ORG_RUN_ACTIONS)
    name = execution_name({"action": "compliance-sync", "apply": True}, "compliance-sync", AT)
    assert name.startswith("compliance-sync-20261202T0600Z-") and len(name) <= 80
    assert name.replace("-", "").isalnum()
    # The same event in the same minute names the same execution; another event or minute another one.
    assert name == execution_name({"apply": True, "action": "compliance-sync"}, "compliance-sync", AT)
    assert name != execution_name({"action": "compliance-sync"}, "compliance-sync", AT)
    assert name != execution_name({"action": "compliance-sync", "apply": True}, "compliance-sync", AT.replace(minute=5))


def test_over_the_threshold_the_run_is_handed_off(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    sfn, arn = machine
    _, config = load(tmp_path, aws)
    event = {"action": "guard", "apply": True}
    result = hand_off(event, config, factory, env(arn), now=AT)
    assert result is not None and result["status"] == "handed-off" and result["exit_code"] == 0, result
    assert result["accounts"] == len(FLEET) and result["shard_above"] == 3 and result["action"] == "guard"
    assert result["already_started"] is False
    (started,) = executions(sfn, arn)
    assert started["executionArn"] == result["execution_arn"] and started["name"] == result["execution_name"]
    described = sfn.describe_execution(executionArn=result["execution_arn"])
    assert described["status"] == "RUNNING"
    assert json.loads(described["input"]) == {"event": {"action": "guard", "apply": True}}
    assert "handed off" in result["reason"] and str(len(FLEET)) in result["reason"]


def test_at_or_under_the_threshold_or_unset_nothing_starts(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    sfn, arn = machine
    _, config = load(tmp_path, aws)
    audit = {"action": "audit"}
    assert hand_off(audit, config, factory, env(arn, above=str(len(FLEET))), now=AT) is None  # 5 is not over 5
    assert hand_off(audit, config, factory, env(arn, above="0"), now=AT) is None  # 0: never
    assert hand_off(audit, config, factory, {SHARD_ABOVE_ENV: "3"}, now=AT) is None  # no state machine
    assert hand_off(audit, config, factory, {ORG_RUN_ARN_ENV: arn}, now=AT) is None  # no threshold
    assert hand_off(audit, config, factory, {}, now=AT) is None
    assert executions(sfn, arn) == []


@pytest.mark.parametrize(
    "event",
    [
        {"action": "audit", "accounts": [FLEET[0], FLEET[1]], "run_id": "org-1", "shard": 0},  # a shard
        {"action": "audit", "accounts": [FLEET[0]]},  # narrowed to some accounts
        {"action": "guard", "run_id": "org-2"},
        {
            "action": "guard",
            "phase": "halt",
            "accounts": [FLEET[0]],
            "run_id": "o",
            "shard": 0,
            "fragments": "s3://b/r",
        },
        {"action": "audit", "regions": ["eu-west-1"]},
        {"action": "compliance-report"},  # not a workflow the org-run shards
        {"action": "window-open", "apply": True},  # each shard would open a window of its own
        {"action": "list-shards", "event": {"action": "audit"}},  # the org-run's own steps
        {"action": "aggregate", "run_id": "org-1", "fragments": f"s3://{BUCKET}/runs"},
        {"action": "audit", "aply": True},  # malformed: the handler reports it
        {"detail-type": "Scheduled Event", "source": "aws.events", "resources": []},  # an AWS event
    ],
    ids=lambda e: str(e.get("action", e.get("detail-type"))) + ("-shard" if "accounts" in e or "run_id" in e else ""),
)
def test_a_shard_or_an_event_the_org_run_does_not_take_never_hands_off(
    event: dict[str, Any], aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    sfn, arn = machine
    _, config = load(tmp_path, aws)
    assert hand_off(event, config, factory, env(arn, above="1"), now=AT) is None
    assert executions(sfn, arn) == []


def test_a_guard_with_an_organization_wide_limit_is_handed_off_too(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    """The org-run evaluates guard.max_running_instances_org in its two phases (count shards, guard-org-check, halt
    shards): the scheduled guard event goes to it as is."""
    sfn, arn = machine
    _, config = load(tmp_path, aws, top={"guard": {"max_running_instances_org": 10}})
    result = hand_off({"action": "guard", "apply": True}, config, factory, env(arn), now=AT)
    assert result is not None and result["status"] == "handed-off", result
    (started,) = executions(sfn, arn)
    described = sfn.describe_execution(executionArn=started["executionArn"])
    assert json.loads(described["input"]) == {"event": {"action": "guard", "apply": True}}


def test_a_repeated_hand_off_is_already_handed_off(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    sfn, arn = machine
    _, config = load(tmp_path, aws)
    event = {"action": "audit"}
    first = hand_off(event, config, factory, env(arn), now=AT)
    assert first is not None and first["status"] == "handed-off"
    # A duplicate delivery in the same minute while the execution runs: the same execution (Step Functions'
    # idempotent StartExecution), not a second org-run.
    again = hand_off(event, config, factory, env(arn), now=AT.replace(second=50))
    assert again is not None and again["execution_arn"] == first["execution_arn"]
    # Once it has ended, the same name is refused (ExecutionAlreadyExists, for 90 days): already handed off.
    sfn.stop_execution(executionArn=first["execution_arn"])
    late = hand_off(event, config, factory, env(arn), now=AT)
    assert late is not None and late["status"] == "handed-off" and late["exit_code"] == 0, late
    assert late["already_started"] is True and late["execution_arn"] == first["execution_arn"]
    assert "already handed off" in late["reason"]
    assert [e["executionArn"] for e in executions(sfn, arn)] == [first["execution_arn"]]
    # The next schedule (another minute) is a new run.
    later = hand_off(event, config, factory, env(arn), now=AT.replace(hour=7))
    assert later is not None and later["execution_arn"] != first["execution_arn"]
    assert len(executions(sfn, arn)) == 2


def test_an_execution_that_cannot_start_is_an_error_never_silence(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, machine: tuple[Any, str]
) -> None:
    sfn, arn = machine
    _, config = load(tmp_path, aws)
    missing = arn.replace("fleetwarden-org-run", "no-such-org-run")
    result = hand_off({"action": "audit"}, config, factory, env(missing), now=AT)
    assert result is not None and result["status"] == "error" and result["exit_code"] == 1, result
    assert "StateMachineDoesNotExist" in result["error"] and "nothing ran" in result["error"]
    assert result["accounts"] == len(FLEET) and result["action"] == "audit"
    for bad_env, why in (
        (env(arn, above="two hundred"), SHARD_ABOVE_ENV),
        (env(arn, above="-1"), SHARD_ABOVE_ENV),
        (env("arn:aws:lambda:us-east-1:123456789012:function:fleetwarden"), ORG_RUN_ARN_ENV),
    ):
        refused = hand_off({"action": "audit"}, config, factory, bad_env, now=AT)
        assert refused is not None and refused["status"] == "error" and refused["exit_code"] == 2, refused
        assert why in refused["error"] and "nothing was done" in refused["error"]
    assert executions(sfn, arn) == []


def test_the_handed_off_execution_runs_the_event_over_the_organization(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end in moto's interpreter: the hand-off's input is what the org-run expects; every account is audited
    in a shard and the aggregate reports them all."""
    for account in FLEET:
        launch(factory, account, REGION, GOOD_TAGS)
        launch(factory, account, REGION, {})
    bridge = install_bridge(monkeypatch, FUNCTION)
    with execution_mode(aws, monkeypatch):
        sfn, arn = org_run(factory)
        path, config = load(tmp_path, aws)
        monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
        result = hand_off({"action": "audit"}, config, factory, env(arn), now=AT)
        assert result is not None and result["status"] == "handed-off", result
        deadline = time.monotonic() + 120
        while (described := sfn.describe_execution(executionArn=result["execution_arn"]))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the handed-off execution is still RUNNING"
            time.sleep(0.2)
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["status"] == "ok" and output["workflow"] == "audit", output
    assert output["summary"]["accounts"] == len(FLEET) and output["summary"]["violators"] == len(FLEET)
    assert bridge.actions()[0] == "list-shards" and bridge.actions()[-1] == "aggregate"
    shards = [e for e in bridge.events if e.get("action") == "audit"]
    assert sorted(a for e in shards for a in e["accounts"]) == sorted(FLEET)


def test_the_handler_hands_a_scheduled_run_off_and_runs_a_small_one_itself(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    machine: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lambda_handler.handler with the hub's environment: over the threshold the event becomes an execution's
    input and nothing is audited in the function; at or under it, the audit runs in the invocation."""
    from fleetwarden.lambda_handler import handler

    sfn, arn = machine
    launch(factory, FLEET[0], REGION, GOOD_TAGS, 1)
    path, _ = load(tmp_path, aws)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    monkeypatch.setenv(ORG_RUN_ARN_ENV, arn)
    monkeypatch.setenv(SHARD_ABOVE_ENV, "3")
    result = handler(json.dumps({"action": "audit"}), None)  # a string event, as a console test sends it
    assert result["status"] == "handed-off" and result["accounts"] == len(FLEET), result
    [execution] = executions(sfn, arn)
    assert execution["executionArn"] == result["execution_arn"]
    started = sfn.describe_execution(executionArn=result["execution_arn"])
    assert json.loads(started["input"]) == {"event": {"action": "audit"}}
    assert "summary" not in result  # nothing ran here

    monkeypatch.setenv(SHARD_ABOVE_ENV, str(len(FLEET)))
    small = handler({"action": "audit"}, None)
    assert small["status"] == "ok" and small["summary"]["accounts"] == len(FLEET), small
    assert len(executions(sfn, arn)) == 1
