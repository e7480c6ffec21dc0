"""Resource type -> check: does the physical resource behind each of the stack's resources still exist?

Each check takes (doctor, logical id, physical id) and returns (status, detail[, fix]), or None when the resource
does not exist; a ClientError that means "not found" counts as None (`is_missing`). A type without a check is
listed as not checked. A new resource type in the hub template gets its check here.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .report import Status

if TYPE_CHECKING:
    from .run import Doctor

Outcome = tuple[Status, str] | tuple[Status, str, str] | None


def _lambda_function(doctor: Doctor, logical: str, physical: str) -> Outcome:
    found = doctor.factory.client("lambda", region=doctor.region).get_function(FunctionName=physical)
    configuration = found["Configuration"]
    env = configuration.get("Environment", {}).get("Variables", {})
    if doctor.stack is not None:
        doctor.stack.environments[physical] = dict(env)
    state = configuration.get("State", "Active")
    if state == "Failed":
        return "problem", f"function {physical}: {state} ({configuration.get('StateReason', '')})", update_fix()
    return "ok", f"function {physical} ({configuration.get('Runtime', '?')}, {state})"


def _dynamodb_table(doctor: Doctor, logical: str, physical: str) -> Outcome:
    table = doctor.factory.client("dynamodb", region=doctor.region).describe_table(TableName=physical)["Table"]
    status = table.get("TableStatus", "?")
    if status in ("ACTIVE", "UPDATING"):
        return "ok", f"table {physical} ({status})"
    return "problem", f"table {physical}: {status}", "restore the table, then update the stack"


def _sns_topic(doctor: Doctor, logical: str, physical: str) -> Outcome:
    doctor.factory.client("sns", region=doctor.region).get_topic_attributes(TopicArn=physical)
    return "ok", f"topic {physical}"


def _rule_bus(doctor: Doctor, logical: str, physical: str) -> tuple[str, str | None]:
    """(rule name, its event bus or None for the default one). CloudFormation names a rule of a custom bus
    `BUS|NAME`; where it does not (moto), the hub's launch rule is on `<FunctionName>-launches`."""
    bus, _, name = physical.rpartition("|")
    if bus:
        return name, bus
    if logical == "LaunchRule":
        function = doctor.stack.parameters.get("FunctionName", "fleetwarden") if doctor.stack else "fleetwarden"
        return name, f"{function}-launches"
    return name, None


def _events_rule(doctor: Doctor, logical: str, physical: str) -> Outcome:
    events = doctor.factory.client("events", region=doctor.region)
    physical, bus = _rule_bus(doctor, logical, physical)
    on_bus: dict[str, str] = {"EventBusName": bus} if bus else {}
    rule = events.describe_rule(Name=physical, **on_bus)
    state = rule.get("State", "?")
    what = rule.get("ScheduleExpression") or "event pattern"
    wanted = doctor.stack.parameters.get("RulesState", "ENABLED") if doctor.stack else "ENABLED"
    if state != wanted == "ENABLED":
        return (
            "problem",
            f"rule {physical} ({what}) is {state} while the stack's RulesState is ENABLED: it does not fire",
            f"aws events enable-rule --name {physical}",
        )
    wiring = _rule_targets(doctor, physical, str(rule.get("Arn", "")), bus)
    if wiring is not None:
        return "problem", wiring[0], wiring[1]
    if wanted == "DISABLED":
        note = "as the stack's RulesState says" if state == "DISABLED" else "though the stack's RulesState is DISABLED"
        return "warning", f"rule {physical} ({what}) {state}, {note}", "update the stack with RulesState=ENABLED"
    return "ok", f"rule {physical} ({what}) ENABLED"


def _rule_targets(doctor: Doctor, name: str, arn: str, bus: str | None = None) -> tuple[str, str] | None:
    """What keeps a rule from reaching its targets: it has none, or a function's resource policy does not let
    EventBridge invoke it for this rule (the stack's AWS::Lambda::Permission was removed)."""
    events = doctor.factory.client("events", region=doctor.region)
    targets = events.list_targets_by_rule(Rule=name, **({"EventBusName": bus} if bus else {}))["Targets"]
    if not targets:
        return f"rule {name} has no target: it fires into nothing", update_fix()
    for target in targets:
        function = str(target.get("Arn", ""))
        if ":function:" not in function:
            continue
        short = function.split(":function:", 1)[1].split(":", 1)[0]
        if doctor.stack is None or short not in doctor.stack.environments:
            continue  # not a function of the stack, or a missing one (its own check says so)
        statements = _function_policy(doctor, short)
        if not any(_allows_rule(statement, arn) for statement in statements):
            return (
                f"rule {name} targets {short}, whose policy does not let EventBridge invoke it for this rule (its "
                "AWS::Lambda::Permission is gone): the rule fires, the function never runs",
                f"aws lambda add-permission --function-name {short} --statement-id {name} --action "
                f"lambda:InvokeFunction --principal events.amazonaws.com --source-arn {arn}",
            )
    return None


def _function_policy(doctor: Doctor, function: str) -> list[dict[str, Any]]:
    """The statements of a function's resource policy (none when it has no policy)."""
    try:
        policy = doctor.factory.client("lambda", region=doctor.region).get_policy(FunctionName=function)["Policy"]
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":  # the function exists (checked): it has no policy
            return []
        raise
    statements = json.loads(policy).get("Statement", [])
    return [s for s in statements if isinstance(s, dict)]


def _allows_rule(statement: dict[str, Any], rule_arn: str) -> bool:
    principal = statement.get("Principal")
    service = principal.get("Service") if isinstance(principal, dict) else principal
    actions = statement.get("Action")
    actions = actions if isinstance(actions, list) else [actions]
    if statement.get("Effect") != "Allow" or service != "events.amazonaws.com":
        return False
    if not {"lambda:InvokeFunction", "lambda:*", "*"} & set(actions):
        return False
    condition = statement.get("Condition") or {}
    sources = [
        str(value.get("AWS:SourceArn"))
        for operator, value in condition.items()
        if operator in ("ArnLike", "ArnEquals", "StringEquals", "StringLike") and isinstance(value, dict)
        if value.get("AWS:SourceArn")
    ]
    return not sources or any(fnmatch.fnmatchcase(rule_arn, source) for source in sources)


def _state_machine(doctor: Doctor, logical: str, physical: str) -> Outcome:
    sfn = doctor.factory.client("stepfunctions", region=doctor.region)
    machine = sfn.describe_state_machine(stateMachineArn=physical)
    status = machine.get("status", "ACTIVE")
    if status != "ACTIVE":
        return "problem", f"state machine {physical}: {status}", update_fix()
    return "ok", f"state machine {machine.get('name', physical)}"


def _iam_role(doctor: Doctor, logical: str, physical: str) -> Outcome:
    doctor.factory.client("iam", region=doctor.region).get_role(RoleName=physical)
    return "ok", f"role {physical}"


def _log_group(doctor: Doctor, logical: str, physical: str) -> Outcome:
    logs = doctor.factory.client("logs", region=doctor.region)
    groups = logs.describe_log_groups(logGroupNamePrefix=physical).get("logGroups", [])
    if not any(g.get("logGroupName") == physical for g in groups):
        return None
    return "ok", f"log group {physical}"


def _s3_bucket(doctor: Doctor, logical: str, physical: str) -> Outcome:
    doctor.factory.client("s3", region=doctor.region).head_bucket(Bucket=physical)
    return "ok", f"bucket {physical}"


def _alarm(doctor: Doctor, logical: str, physical: str) -> Outcome:
    cloudwatch = doctor.factory.client("cloudwatch", region=doctor.region)
    alarms = cloudwatch.describe_alarms(AlarmNames=[physical]).get("MetricAlarms", [])
    if not alarms:
        return None
    return "ok", f"alarm {physical} ({alarms[0].get('StateValue', '?')})"


def _kms_key(doctor: Doctor, logical: str, physical: str) -> Outcome:
    key = doctor.factory.client("kms", region=doctor.region).describe_key(KeyId=physical)["KeyMetadata"]
    state = key.get("KeyState", "?")
    if state != "Enabled":
        fix = "aws kms cancel-key-deletion / enable-key, or update the stack"
        return "problem", f"KMS key {physical} is {state}: what it encrypts cannot be read or written", fix
    return "ok", f"KMS key {physical} (Enabled)"


RESOURCE_CHECKS: dict[str, Callable[[Doctor, str, str], Outcome]] = {
    "AWS::Lambda::Function": _lambda_function,
    "AWS::DynamoDB::Table": _dynamodb_table,
    "AWS::SNS::Topic": _sns_topic,
    "AWS::Events::Rule": _events_rule,
    "AWS::StepFunctions::StateMachine": _state_machine,
    "AWS::IAM::Role": _iam_role,
    "AWS::Logs::LogGroup": _log_group,
    "AWS::S3::Bucket": _s3_bucket,
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::KMS::Key": _kms_key,
}
# Error codes that mean "this resource does not exist", across the services above.
MISSING = {
    "ResourceNotFoundException",
    "NotFoundException",
    "NotFound",
    "404",
    "NoSuchEntity",
    "NoSuchBucket",
    "StateMachineDoesNotExist",
    "AssociationDoesNotExist",
}
ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    code = error_code(exc)
    if code in MISSING:
        return True
    # Some services say it only in the message (a ValidationException "... does not exist").
    return "does not exist" in str(exc)


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def short_error(exc: BaseException) -> str:
    """One short line: a service error's body can be a whole HTML page."""
    from ..aws.targets import error_text

    if isinstance(exc, ClientError) and http_status(exc) >= 500:
        return f"{exc.operation_name}: HTTP {http_status(exc)} ({error_code(exc) or 'service error'})"
    text = " ".join(error_text(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def read_fix(what: str) -> str:
    return f"give this principal the read actions of `fleetwarden permissions` (operator) for {what}"


def update_fix() -> str:
    return (
        "recreate it: CloudFormation does not notice a resource deleted by hand (an update with the same template "
        "leaves it missing; `aws cloudformation detect-stack-drift` lists it): remove it from the template and "
        "update the stack, then put it back and update again"
    )


# How to recreate a missing resource, where there is a shorter way than the generic one (update_fix).
MISSING_FIX: dict[str, str] = {
    "AWS::DynamoDB::Table": (
        "recreate it with the same name: `fleetwarden state init` (same keys and TTL); the findings, exceptions "
        "and journal it held are gone unless restored from a backup"
    ),
    "AWS::Logs::LogGroup": "aws logs create-log-group --log-group-name NAME (then put-retention-policy)",
}
