"""The scan-window state machine (src/fleetwarden/statemachines/scan-window.asl.json).

Three levels:
1. the ASL's structure: every state reachable, every Task retried and caught to Close, no path from Open to an
   end state that skips Close, waits are Wait states;
2. the real ASL EXECUTED by moto's Step Functions interpreter (execution mode), its Task states invoking a real
   moto Lambda function. moto without Docker never runs a function's code (it echoes the payload), so the test
   bridges that one function to `fleetwarden.lambda_handler.handler`, in this process: moto's Lambda backend
   for use_docker=false (`LambdaSimpleBackend.invoke`) is patched, for the function named `FUNCTION` only, to call
   the handler with the payload the state machine sent and return its result (or, when the bridge is told to
   crash, Lambda's `FunctionError: Unhandled` reply). Everything else is real: moto evaluates the states,
   ResultPath, Choice, Wait, Retry and Catch; the handler opens, polls and closes the window against the
   emulator's EC2, Inspector2 and the SQLite state store;
3. the handler driven in-process through the sequence the state machine produces (open -> status -> close, and
   status raising -> Catch -> close), with the events built from the ASL's own Parameters.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, launch, states, window_config
from sfn import LambdaBridge, create_function, create_state_machine, execution_mode, install_bridge
from sfn import execute as run_execution

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.lambda_handler import handler

ASL_PATH = Path(__file__).resolve().parents[2] / "src" / "fleetwarden" / "statemachines" / "scan-window.asl.json"
PLACEHOLDER = "${FleetwardenFunctionArn}"
FUNCTION = "fleetwarden-scan-window-test"
LAMBDA_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
A, B, _ = ACCOUNTS
# moto's Step Functions interpreter calls Lambda with its own credentials ("ak"), i.e. moto's default account.
SFN_REGION = "us-east-1"
FAST = {"settle_seconds": 0, "poll_seconds": 1}


def asl() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ASL_PATH.read_text())
    return loaded


# -- 1. structure --------------------------------------------------------------------------------------
def successors(state: dict[str, Any]) -> list[str]:
    out = [state["Next"]] if "Next" in state else []
    out += [c["Next"] for c in state.get("Choices", [])]
    out += [state["Default"]] if "Default" in state else []
    out += [c["Next"] for c in state.get("Catch", [])]
    return out


def reachable(states_: dict[str, Any], start: str, without: str | None = None) -> set[str]:
    seen: set[str] = set()
    todo = deque([start])
    while todo:
        name = todo.popleft()
        if name in seen or name == without:
            continue
        seen.add(name)
        todo.extend(successors(states_[name]))
    return seen


def test_every_state_is_defined_and_reachable() -> None:
    definition = asl()
    states_ = definition["States"]
    for name, state in states_.items():
        for target in successors(state):
            assert target in states_, f"{name} -> {target}: no such state"
        if state["Type"] in ("Succeed", "Fail"):
            assert not successors(state), name
        elif state["Type"] != "Choice":
            assert "Next" in state or state.get("End") is True, f"{name} neither continues nor ends"
    assert reachable(states_, definition["StartAt"]) == set(states_)
    # No execution-wide TimeoutSeconds: it would end the execution without running Close.
    assert "TimeoutSeconds" not in definition


def test_every_task_calls_the_function_retries_and_is_caught_to_close() -> None:
    states_ = asl()["States"]
    tasks = {name: s for name, s in states_.items() if s["Type"] == "Task"}
    assert set(tasks) == {"Open", "Status", "Close"}
    for name, task in tasks.items():
        assert task["Resource"] == PLACEHOLDER, name
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
        assert retried >= LAMBDA_ERRORS, name
        assert [c["ErrorEquals"] for c in task["Catch"]] == [["States.ALL"]], name
        catch = task["Catch"][0]
        assert catch["ResultPath"] != task["ResultPath"], name  # the error never overwrites $.open
        if name == "Close":
            assert states_[catch["Next"]]["Type"] == "Fail"  # Close cannot catch to itself
        else:
            assert catch["Next"] == "Close", name


def test_close_always_happens_after_open() -> None:
    """Remove Close from the graph: from Open, no end state may remain reachable."""
    states_ = asl()["States"]
    ends = {name for name, s in states_.items() if s["Type"] in ("Succeed", "Fail")}
    assert reachable(states_, "Open", without="Close") & ends == set()
    # ... and the only end states before Open are the input check's.
    before_open = reachable(states_, asl()["StartAt"], without="Open")
    assert before_open & ends == {"InvalidInput"}


def test_the_events_the_tasks_send() -> None:
    states_ = asl()["States"]
    assert states_["Open"]["Parameters"] == {"action": "window-open", "apply": True, "compact": True}
    assert states_["Open"]["ResultPath"] == "$.open"
    assert states_["Status"]["Parameters"] == {
        "action": "window-status",
        "window_id.$": "$.open.window_id",
        "compact": True,
    }
    assert states_["Close"]["Parameters"] == {
        "action": "window-close",
        "apply": True,
        "window_id.$": "$.open.window_id",
        "collect_findings": True,
        "compact": True,
    }
    # $.open.window_id exists on every path into Close: Settings starts it as null, and Open's Catch writes $.error.
    assert states_["Settings"]["Parameters"]["open"] == {"window_id": None}


def test_waits_are_wait_states_driven_by_the_input() -> None:
    definition = asl()
    states_ = definition["States"]
    waits = {name: s for name, s in states_.items() if s["Type"] == "Wait"}
    assert waits == {
        "Settle": {**states_["Settle"], "SecondsPath": "$.settings.settle_seconds"},
        "Poll": {**states_["Poll"], "SecondsPath": "$.settings.poll_seconds"},
    }
    assert states_["Defaults"]["Result"] == {"settle_seconds": 180, "poll_seconds": 60, "max_polls": 240}
    assert states_["Settle"]["Next"] == "Status" and states_["Poll"]["Next"] == "Status"
    # The polling loop is bounded: Scanned? leaves it on complete, on an error result and on max_polls.
    loop = reachable(states_, "Status", without="Close")
    assert "Poll" in loop and not {"Open", "Settle"} & loop
    assert {c["Next"] for c in states_["Scanned?"]["Choices"]} == {"StatusFailed", "Close", "PollLimitReached"}
    # The one placeholder, and nothing else to substitute.
    assert set(re.findall(r"\$\{[^}]+\}", ASL_PATH.read_text())) == {PLACEHOLDER}


# -- 2. execution in moto's Step Functions interpreter -------------------------------------------------
@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> LambdaBridge:
    return install_bridge(monkeypatch, FUNCTION)


@pytest.fixture
def sfn_mode(aws: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's Step Functions execution mode, for this test only."""
    with execution_mode(aws, monkeypatch):
        yield


def deploy(factory: SessionFactory) -> tuple[Any, str]:
    """The function and the state machine, created through the API after switching to execution mode."""
    function_arn = create_function(factory, SFN_REGION, FUNCTION)
    # What deploy does: substitute the function's ARN for the placeholder (CloudFormation DefinitionSubstitutions).
    definition = ASL_PATH.read_text().replace(PLACEHOLDER, function_arn)
    return create_state_machine(factory, SFN_REGION, "fleetwarden-scan-window", definition)


def execute(sfn: Any, machine: str, payload: dict[str, Any], timeout: float = 25.0) -> dict[str, Any]:
    return run_execution(sfn, machine, payload, timeout)


def seed(factory: SessionFactory) -> dict[str, list[str]]:
    return {
        "a_east": launch(factory, A, "us-east-1", {}, 2, state="stopped"),
        "b_west": launch(factory, B, "eu-west-1", {}, 1, state="stopped"),
        "a_running": launch(factory, A, "us-east-1", {}, 1),
    }


def fleet_states(factory: SessionFactory, fleet: dict[str, list[str]]) -> dict[str, str]:
    out = states(factory, A, "us-east-1", fleet["a_east"] + fleet["a_running"])
    out.update(states(factory, B, "eu-west-1", fleet["b_west"]))
    return out


def started(fleet: dict[str, list[str]]) -> list[str]:
    return fleet["a_east"] + fleet["b_west"]


@pytest.fixture
def scenario(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sfn_mode: None,
    bridge: LambdaBridge,
) -> dict[str, Any]:
    fleet = seed(factory)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(window_config(tmp_path, aws.url, settle_minutes=0)))
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    sfn, machine = deploy(factory)
    return {"fleet": fleet, "sfn": sfn, "machine": machine, "config": tmp_path / "fleetwarden.yaml"}


def test_execution_opens_polls_until_scanned_and_closes(
    aws: EmulatorServer, factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]
) -> None:
    fleet = scenario["fleet"]
    # Inspector scans each started instance on the second ListCoverage poll that sees it running.
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 1}})
    seen_running: list[bool] = []

    def probe(event: dict[str, Any]) -> None:
        if event["action"] == "window-status":
            seen_running.append(set(fleet_states(factory, fleet).values()) == {"running"})

    bridge.probe = probe
    described = execute(scenario["sfn"], scenario["machine"], FAST)
    assert described["status"] == "SUCCEEDED", described
    actions = bridge.actions()
    assert actions[0] == "window-open" and actions[-1] == "window-close"
    assert set(actions[1:-1]) == {"window-status"} and len(actions) >= 4  # polled at least twice
    window_id = bridge.results[0]["window_id"]
    assert window_id and bridge.results[0]["summary"]["started"] == 3
    assert "report" not in bridge.results[0]  # compact results keep the state small
    # The window id flowed from Open's result into every later event.
    assert [e.get("window_id") for e in bridge.events[1:]] == [window_id] * (len(actions) - 1)
    assert bridge.events[-1]["collect_findings"] is True and bridge.events[-1]["apply"] is True
    assert seen_running and all(seen_running)  # the instances ran while the window was open
    assert bridge.results[-2]["complete"] is True and bridge.results[-1]["all_closed"] is True
    output = json.loads(described["output"])
    assert output["open"]["window_id"] == window_id and output["close"]["summary"]["closed"] == [window_id]
    assert output["poll"]["count"] == len(actions) - 2
    after = fleet_states(factory, fleet)
    assert {after[i] for i in started(fleet)} == {"stopped"}
    assert after[fleet["a_running"][0]] == "running"  # was running before the window: untouched


def test_status_crash_is_caught_and_close_still_runs(
    factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]
) -> None:
    fleet = scenario["fleet"]
    bridge.crash["window-status"] = "before"
    described = execute(scenario["sfn"], scenario["machine"], FAST)
    assert described["status"] == "FAILED", described
    assert described.get("error") == "ScanWindowFailed"
    window_id = bridge.results[0]["window_id"]
    # RuntimeError is not a Lambda service error: not retried, caught to Close with the window's id.
    assert bridge.actions() == ["window-open", "window-status", "window-close"]
    assert bridge.events[-1]["window_id"] == window_id
    assert bridge.results[-1]["summary"]["closed"] == [window_id]
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"stopped"}


def test_open_crash_after_opening_closes_every_open_window(
    factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]
) -> None:
    """window-open opened the window, then the function failed (say, timed out): its id never reached the state
    machine, so Close runs without one and closes every open window."""
    fleet = scenario["fleet"]
    bridge.crash["window-open"] = "after"
    described = execute(scenario["sfn"], scenario["machine"], FAST)
    assert described["status"] == "FAILED" and described.get("error") == "ScanWindowFailed", described
    assert bridge.actions() == ["window-open", "window-close"]
    lost_id = bridge.results[0]["window_id"]
    assert lost_id and bridge.events[-1]["window_id"] is None
    assert bridge.results[-1]["summary"]["closed"] == [lost_id]
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"stopped"}


def test_inspector_timeout_ends_the_wait_and_close_runs(
    aws: EmulatorServer, factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]
) -> None:
    fleet = scenario["fleet"]
    # Inspector never scans them; the window's timeout (settle 0 + 0.02 min) makes window-status complete.
    rule = {"scan_after_polls": 0, "never_scan": started(fleet)}
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": rule})
    config = yaml.safe_load(scenario["config"].read_text())
    config["window"]["timeout_minutes"] = 0.02
    scenario["config"].write_text(yaml.safe_dump(config))
    described = execute(scenario["sfn"], scenario["machine"], FAST)
    assert described["status"] == "SUCCEEDED", described
    last_status = [r for r in bridge.results if r["workflow"] == "window-status"][-1]
    assert last_status["complete"] is True and last_status["windows"][0]["timed_out"] is True
    assert last_status["windows"][0]["coverage"]["pending"] == 3
    assert bridge.actions()[-1] == "window-close"
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"stopped"}


def test_poll_limit_bounds_the_loop(factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]) -> None:
    fleet = scenario["fleet"]  # no coverage rule: nothing is ever scanned, and the window's timeout is 30 min
    described = execute(scenario["sfn"], scenario["machine"], {**FAST, "max_polls": 2})
    assert described["status"] == "SUCCEEDED", described
    assert bridge.actions() == ["window-open", "window-status", "window-status", "window-close"]
    assert json.loads(described["output"])["poll_limit_reached"] is True
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"stopped"}


def test_no_window_id_closes_the_orphan_that_holds_the_locks(
    factory: SessionFactory, bridge: LambdaBridge, scenario: dict[str, Any]
) -> None:
    """A window left open by an earlier run holds every target's lock: Open opens nothing and returns no id, so
    Close runs without one and closes every open window, the orphan included."""
    fleet = scenario["fleet"]
    orphan = handler({"action": "window-open", "apply": True, "compact": True}, None)["window_id"]
    assert orphan and {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"running"}
    described = execute(scenario["sfn"], scenario["machine"], FAST)
    assert described["status"] == "SUCCEEDED", described
    assert bridge.actions() == ["window-open", "window-close"]
    assert bridge.results[0]["status"] == "partial" and bridge.results[0]["window_id"] is None
    assert bridge.events[-1]["window_id"] is None
    assert bridge.results[-1]["summary"]["closed"] == [orphan]
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"stopped"}


def test_bad_input_fails_before_anything_opens(bridge: LambdaBridge, scenario: dict[str, Any]) -> None:
    for bad in ({"settle_seconds": "soon"}, {"poll_seconds": 0}):
        described = execute(scenario["sfn"], scenario["machine"], bad)
        assert described["status"] == "FAILED" and described.get("error") == "InvalidInput", described
    assert bridge.events == []


# -- 3. the handler driven through the state machine's sequence, in-process ----------------------------
def payload(state: str, data: dict[str, Any]) -> dict[str, Any]:
    """A Task's Parameters with its `key.$` paths (only `$.a.b` forms are used) resolved against `data`."""
    out: dict[str, Any] = {}
    for key, value in asl()["States"][state]["Parameters"].items():
        if key.endswith(".$"):
            node: Any = data
            for part in value.removeprefix("$.").split("."):
                node = node[part]
            out[key[:-2]] = node
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("status_raises", [False, True])
def test_handler_through_the_state_machine_sequence(
    status_raises: bool,
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = seed(factory)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(window_config(tmp_path, aws.url, settle_minutes=0)))
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 0}})
    data: dict[str, Any] = {"open": {"window_id": None}}
    data["open"] = handler(payload("Open", data), None)
    assert data["open"]["status"] == "ok" and data["open"]["window_id"], data["open"]
    assert {fleet_states(factory, fleet)[i] for i in started(fleet)} == {"running"}
    if status_raises:
        import fleetwarden.workflows.window as window

        def broken(*_: Any, **__: Any) -> dict[str, Any]:
            raise RuntimeError("Inspector exploded")

        monkeypatch.setattr(window, "window_status", broken)
        with pytest.raises(RuntimeError):  # an unhandled error: Lambda's FunctionError, the Task's Catch
            handler(payload("Status", data), None)
    else:
        status = handler(payload("Status", data), None)
        assert status["status"] == "ok" and status["complete"] is True, status
        assert status["window_id"] == data["open"]["window_id"]
        assert status["windows"][0]["started"] == 3 and status["windows"][0]["instances"] == 3
    closed = handler(payload("Close", data), None)
    assert closed["status"] == "ok" and closed["all_closed"] is True, closed
    assert closed["summary"]["closed"] == [data["open"]["window_id"]]
    after = fleet_states(factory, fleet)
    assert {after[i] for i in started(fleet)} == {"stopped"} and after[fleet["a_running"][0]] == "running"
