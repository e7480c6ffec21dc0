"""The hub stack: its status and outputs, every resource it made (by type, see resources.py), the switch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from .resources import (
    ACCESS_DENIED,
    MISSING_FIX,
    RESOURCE_CHECKS,
    error_code,
    http_status,
    is_missing,
    read_fix,
    short_error,
    update_fix,
)

if TYPE_CHECKING:
    from .run import Doctor

COMPLETE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
ROLLED_BACK = {"UPDATE_ROLLBACK_COMPLETE", "IMPORT_ROLLBACK_COMPLETE"}
TEMPLATE_DOC = "docs/deploy-templates.md"


@dataclass
class StackInfo:
    """What the checks learnt about the stack."""

    status: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)  # logical ids of resources that do not exist
    environments: dict[str, dict[str, str]] = field(default_factory=dict)  # function name -> environment
    disabled: bool = False  # the Disabled parameter or a function's FLEETWARDEN_DISABLED


def check_stack(doctor: Doctor) -> None:
    name = doctor.options.stack_name
    cfn = doctor.factory.client("cloudformation", region=doctor.region)
    deploy_fix = f"deploy the hub stack {name} in {doctor.region} from deploy/templates/hub.yaml ({TEMPLATE_DOC})"
    try:
        (described,) = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            doctor.emit("stack", "problem", f"stack {name} does not exist in {doctor.region}", deploy_fix)
        else:
            doctor.emit("stack", "problem", f"cannot read stack {name}: {short_error(exc)}", read_fix("cloudformation"))
        return
    stack = StackInfo(
        status=described["StackStatus"],
        parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])},
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
    )
    doctor.stack = stack
    if stack.status in COMPLETE:
        doctor.emit("stack", "ok", f"{name} in {doctor.region}: {stack.status}")
    elif stack.status in ROLLED_BACK:
        doctor.emit(
            "stack",
            "warning",
            f"{name}: {stack.status}: the last update failed and was rolled back; the stack runs the template "
            "before it",
            f"see why: aws cloudformation describe-stack-events --stack-name {name}; then update it again",
        )
    else:
        reason = described.get("StackStatusReason", "")
        fix = (
            "wait for it to finish, then run doctor again"
            if stack.status.endswith("_IN_PROGRESS")
            else f"see why: aws cloudformation describe-stack-events --stack-name {name}; then {deploy_fix}"
        )
        doctor.emit("stack", "problem", f"{name}: {stack.status}" + (f" ({reason})" if reason else ""), fix)
    expected = _expected_outputs()
    missing = [key for key in expected if key not in stack.outputs]
    if missing:
        doctor.emit(
            "stack:outputs",
            "problem",
            f"outputs missing: {', '.join(missing)}",
            "update the stack with this version's deploy/templates/hub.yaml",
        )
    else:
        doctor.emit("stack:outputs", "ok", f"{len(expected)} outputs: {', '.join(expected)}")
    try:
        stack.resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
    except ClientError as exc:
        doctor.emit("stack:resources", "problem", f"cannot list the resources: {short_error(exc)}", read_fix("cfn"))


def check_resources(doctor: Doctor) -> None:
    assert doctor.stack is not None
    unchecked: dict[str, list[str]] = {}
    present = set()
    anonymous = 0
    # Functions first: a rule's check reads which functions exist (their environments) to test its invoke permission.
    ordered = sorted(doctor.stack.resources, key=lambda r: r.get("ResourceType") != "AWS::Lambda::Function")
    for resource in ordered:
        logical, kind = resource.get("LogicalResourceId"), resource.get("ResourceType")
        if not logical or not kind:
            anonymous += 1  # moto lists a resource type it cannot create this way; AWS never does
            continue
        present.add(logical)
        checker = RESOURCE_CHECKS.get(kind)
        if checker is None:
            unchecked.setdefault(kind, []).append(logical)
            continue
        check = f"resource:{logical}"
        physical = resource.get("PhysicalResourceId")
        status = resource.get("ResourceStatus", "")
        if not physical or status == "DELETE_COMPLETE" or status.endswith("_FAILED"):
            doctor.stack.missing.add(logical)
            doctor.emit(check, "problem", f"{kind} {logical}: {status or 'no physical resource'}", update_fix())
            continue
        try:
            outcome = checker(doctor, logical, physical)
        except ClientError as exc:
            if error_code(exc) in ACCESS_DENIED:
                doctor.emit(check, "not-checked", f"{kind} {physical}: {short_error(exc)}", read_fix(kind))
                continue
            if http_status(exc) >= 500 or "Throttl" in error_code(exc):
                detail = f"{kind} {physical}: could not check: {short_error(exc)}"
                doctor.emit(check, "warning", detail, "a service error: run doctor again")
                continue
            if not is_missing(exc):
                doctor.emit(check, "problem", f"{kind} {physical}: {short_error(exc)}", read_fix(kind))
                continue
            outcome = None
        if outcome is None:
            doctor.stack.missing.add(logical)
            doctor.emit(
                check,
                "problem",
                f"{kind} {physical} does not exist (deleted outside CloudFormation)",
                MISSING_FIX.get(kind, update_fix()).replace("NAME", physical),
            )
        else:
            doctor.emit(check, outcome[0], outcome[1], outcome[2] if len(outcome) > 2 else "")
    if anonymous:
        doctor.emit(
            "resource-type:unknown", "not-checked", f"{anonymous} resource(s) listed without a logical id or type"
        )
    for kind, logicals in sorted(unchecked.items()):
        doctor.emit(f"resource-type:{kind}", "not-checked", f"{kind}: {', '.join(logicals)} (doctor has no check)")
    absent = [logical for logical in _expected_resources() if logical not in present]
    if absent:
        doctor.emit(
            "stack:template",
            "warning",
            f"this version's hub template has resources the stack lacks: {', '.join(absent)}",
            "update the stack with this version's deploy/templates/hub.yaml",
        )


def check_disabled(doctor: Doctor) -> None:
    assert doctor.stack is not None
    notes = []
    if doctor.stack.parameters.get("Disabled", "false").strip().lower() == "true":
        notes.append("the stack's Disabled parameter is true")
    for function, env in sorted(doctor.stack.environments.items()):
        if env.get("FLEETWARDEN_DISABLED", "").strip().lower() in ("true", "1", "yes", "on"):
            notes.append(f"FLEETWARDEN_DISABLED=true on {function}")
    doctor.stack.disabled = bool(notes)
    if notes:
        doctor.emit(
            "disabled",
            "warning",
            "; ".join(notes) + ": every invocation is a no-op, nothing is guarded or audited",
            "when it should run again: update the stack with Disabled=false",
        )
    else:
        functions = ", ".join(sorted(doctor.stack.environments)) or "no function found"
        doctor.emit("disabled", "ok", f"switched on (Disabled=false; {functions})")


def _expected_outputs() -> list[str]:
    return list(_hub_template()["Outputs"])


def _expected_resources() -> list[str]:
    """The hub template's resources the stack must have; a conditional one (the launch bus's organization
    policy, made only with OrganizationId) is not expected: the stack's parameters decide it."""
    return [name for name, resource in _hub_template()["Resources"].items() if "Condition" not in resource]


def _hub_template() -> dict[str, Any]:
    from ..deploy import hub_template, load_state_machine

    return hub_template(load_state_machine())
