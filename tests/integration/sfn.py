"""Running fleetwarden's state machines in moto's Step Functions interpreter, with the real Lambda handler bridged
behind the function (moto runs no Lambda code without Docker). A helper module, not a test module."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.lambda_handler import handler

SFN_ACCOUNT = "123456789012"  # moto's interpreter calls Lambda and S3 as moto's default account


class LambdaBridge:
    """moto's Lambda for one function: fleetwarden's handler on the payload, in this process.

    `crash[action] = "before" | "after"` makes an invocation fail like an unhandled exception (FunctionError
    "Unhandled", errorType "RuntimeError") before the handler runs or after it ran (a timeout after window-open
    opened the window: its id is lost); `crash_shards` does the same for the shards of an org-run.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.crash: dict[str, str] = {}
        self.crash_shards: set[int] = set()
        self.probe: Callable[[dict[str, Any]], None] | None = None
        self._lock = threading.Lock()  # a Distributed Map invokes shards from several threads

    def invoke(self, body: Any, response_headers: dict[str, str]) -> bytes:
        event = json.loads(body) if body else {}
        with self._lock:
            self.events.append(event)
        action = str(event.get("action"))
        try:
            if self.crash.get(action) == "before":
                raise RuntimeError(f"{action} crashed")
            if event.get("shard") in self.crash_shards:
                raise RuntimeError(f"shard {event['shard']} crashed")
            if self.probe is not None:
                self.probe(event)
            result = handler(event, None)
            with self._lock:
                self.results.append(result)
            if self.crash.get(action) == "after":
                raise RuntimeError(f"{action} crashed after running")
        except Exception as exc:  # noqa: BLE001 -- what Lambda replies for any unhandled exception
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorMessage": str(exc), "errorType": type(exc).__name__}).encode()
        return json.dumps(result, default=str).encode()

    def actions(self) -> list[str]:
        return [str(e.get("action")) for e in self.events]


def install_bridge(monkeypatch: pytest.MonkeyPatch, function: str) -> LambdaBridge:
    """Route moto's invocations of `function` (by name or ARN) to a new LambdaBridge, for this test only."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    bridge = LambdaBridge()
    original = LambdaSimpleBackend.invoke

    def invoke(
        self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
    ) -> str | bytes | None:
        if function_name.split(":")[-1] == function or function_name.endswith(f":function:{function}"):
            return bridge.invoke(body, response_headers)
        return original(self, function_name, qualifier, body, headers, response_headers)

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    return bridge


@contextmanager
def execution_mode(aws: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's Step Functions execution mode while the block runs; its Lambda calls go to this emulator."""
    # The interpreter reaches Lambda at http://localhost:$MOTO_PORT (moto.settings.moto_server_port).
    monkeypatch.setenv("MOTO_PORT", aws.url.rsplit(":", 1)[1])
    aws.admin("/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})
    try:
        yield
    finally:
        aws.admin("/moto-api/config", {"stepfunctions": {"execute_state_machine": False}})


def create_function(factory: SessionFactory, region: str, name: str) -> str:
    """The Lambda function (a stub body: the bridge runs the real handler) and its role; returns its ARN."""
    iam = factory.client("iam", region=region)
    statement = {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    trust = {"Version": "2012-10-17", "Statement": [statement]}
    role_arn = iam.create_role(RoleName="fleetwarden-lambda", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return event\n")
    return str(
        factory.client("lambda", region=region).create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role_arn,
            Handler="fleetwarden.lambda_handler.handler",
            Code={"ZipFile": buffer.getvalue()},
            Timeout=900,
        )["FunctionArn"]
    )


def create_state_machine(factory: SessionFactory, region: str, name: str, definition: str) -> tuple[Any, str]:
    """(the Step Functions client, the state machine's ARN), created through the API in execution mode."""
    sfn = factory.client("stepfunctions", region=region)
    machine = sfn.create_state_machine(
        name=name, definition=definition, roleArn=f"arn:aws:iam::{SFN_ACCOUNT}:role/{name}"
    )["stateMachineArn"]
    return sfn, str(machine)


def execute(sfn: Any, machine: str, payload: dict[str, Any], timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Start an execution and poll describe_execution until it ends (bounded)."""
    # A name every time: moto names an unnamed execution "None", and a second one then already exists.
    name = f"run-{uuid.uuid4().hex[:12]}"
    arn = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(payload))["executionArn"]
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            history = sfn.get_execution_history(executionArn=arn)["events"]
            pytest.fail(f"execution still RUNNING after {timeout}s: {[e['type'] for e in history]}")
        time.sleep(poll)
