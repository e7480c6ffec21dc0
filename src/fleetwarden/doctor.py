"""`fleetwarden doctor`: is a deployment whole? Each check says ok, or what is missing and how to fix it.

Read-only. It looks at the hub stack (status, outputs, every resource it created, the rules' state, the
`Disabled` switch), at what the config points to (the state table, the SNS sinks, the SSM associations), at the
member role in every account the config covers, and at the last successful run of each scheduled job, which the
Lambda handler records with `record_run` after each run. See docs/doctor.md.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from .config import Config, load_config
from .errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, ConfigError, CredentialsError, StateError

log = logging.getLogger(__name__)

Status = Literal["ok", "warning", "problem", "not-checked"]
STATUSES: tuple[str, ...] = ("ok", "warning", "problem", "not-checked")
SCHEMA = "fleetwarden.doctor/v1"
DEFAULT_STACK = "fleetwarden-hub"
# Where the Lambda handler records each run (state store records of this kind, keyed by the event's action).
RUN_KIND = "last-run"
# How old the last successful run of a scheduled job may be: a few schedule periods, so one missed run is tolerated.
DEFAULT_MAX_AGE: dict[str, timedelta] = {
    "guard": timedelta(minutes=15),  # every 5 minutes
    "audit": timedelta(hours=26),  # daily
    "compliance-report": timedelta(days=32),  # monthly
}
COMPLETE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
ROLLED_BACK = {"UPDATE_ROLLBACK_COMPLETE", "IMPORT_ROLLBACK_COMPLETE"}
TEMPLATE_DOC = "docs/deploy-templates.md"

# What doctor calls, with the operator's credentials in the hub account (never the functions' role), by check.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "credentials": ("sts:GetCallerIdentity",),
    "stack": ("cloudformation:DescribeStacks", "cloudformation:DescribeStackResources"),
    "resources": (
        "lambda:GetFunction",
        "dynamodb:DescribeTable",
        "sns:GetTopicAttributes",
        "events:DescribeRule",
        "states:DescribeStateMachine",
        "iam:GetRole",
        "logs:DescribeLogGroups",
        "s3:ListBucket",  # HeadBucket
        "cloudwatch:DescribeAlarms",
        "kms:DescribeKey",
    ),
    "ssm-associations": ("ssm:DescribeAssociation", "ssm:ListAssociations"),
    # The organization's accounts, and the member role assumed in each (then GetRole on itself, as that role).
    "member-roles": (
        "organizations:DescribeOrganization",
        "organizations:ListAccounts",
        "sts:AssumeRole",
    ),
    "last-run": ("dynamodb:GetItem",),
}


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `check` is a stable name (`resource:StateTable`, `member-role:111111111111`)."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    """Every check's result, in the order they ran, and the exit code they add up to."""

    stack_name: str
    region: str
    checks: list[CheckResult] = field(default_factory=list)
    config_error: bool = False
    credentials_error: bool = False

    @property
    def exit_code(self) -> int:
        """2 when the config or the credentials cannot be used, 3 when any check found a problem, else 0
        (warnings do not fail)."""
        if self.config_error or self.credentials_error:
            return EXIT_USAGE
        return EXIT_FINDINGS if self.problems else EXIT_OK

    @property
    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "problem"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "stack_name": self.stack_name,
            "region": self.region,
            "exit_code": self.exit_code,
            "summary": {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES},
            "checks": [c.to_dict() for c in self.checks],
        }


# -- last runs (written by the Lambda handler) -----------------------------------------------------------------
def record_run(store: Any, action: str, result: dict[str, Any], now: datetime, *, attempts: int = 5) -> bool:
    """Remember one run of `action` (the Lambda handler's result) as the `last-run` record of that action:
    `last_attempt` always, `last_success` only when the run succeeded (status `ok`: exit 0, or 3 for findings).

    Never raises for a store failure (the run's own result matters more): logs a warning and returns False.
    """
    from .state import VersionConflict

    at = now.astimezone(UTC).isoformat()
    attempt = {"at": at, "status": str(result.get("status", "")), "exit_code": _int(result.get("exit_code"))}
    for key in ("run_id", "error"):
        if result.get(key) is not None:
            attempt[key] = str(result[key])[:500]
    try:
        for _ in range(attempts):
            current = store.get_record(RUN_KIND, action)
            data, version = current if current is not None else ({}, None)
            success = attempt if attempt["status"] == "ok" else data.get("last_success")
            record = {"action": action, "last_attempt": attempt, "last_success": success}
            try:
                store.put_record(RUN_KIND, action, record, expected_version=version)
                return True
            except VersionConflict:
                continue  # another run of the same action wrote first: read it again
        log.warning("could not record the run of %s: the record kept changing", action)
    except (StateError, ClientError, BotoCoreError) as exc:
        log.warning("could not record the run of %s: %s", action, exc)
    return False


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def parse_max_age(items: list[str] | tuple[str, ...]) -> dict[str, timedelta]:
    """`--max-age ACTION=DURATION` (`guard=20m`, `audit=30h`, `compliance-report=35d`) over the defaults."""
    ages = dict(DEFAULT_MAX_AGE)
    for item in items:
        action, _, text = item.partition("=")
        match = DURATION.match(text)
        if not action.strip() or not match or int(match.group(1)) == 0:
            raise ValueError(f"--max-age {item!r}: expected ACTION=DURATION, as in guard=20m, audit=30h or 35d")
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        ages[action.strip()] = timedelta(**{unit: int(match.group(1))})
    return ages


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class DoctorOptions:
    config_path: str = "fleetwarden.yaml"
    stack_name: str = DEFAULT_STACK
    region: str | None = None
    max_age: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE))
    now: datetime | None = None


@dataclass
class StackInfo:
    """What the checks learnt about the stack."""

    status: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)  # logical ids of resources that do not exist
    environments: dict[str, dict[str, str]] = field(default_factory=dict)  # function name -> environment


class Doctor:
    """Runs the checks in order, handing each result to `progress` as it completes."""

    def __init__(
        self,
        options: DoctorOptions,
        factory: Any = None,
        progress: Callable[[CheckResult], None] | None = None,
    ) -> None:
        self.options = options
        self.factory: Any = factory  # made in run() from the config's aws settings when None
        self.region = options.region or ""
        self.progress = progress
        self.config: Config | None = None
        self.stack: StackInfo | None = None
        self.report = DoctorReport(options.stack_name, options.region or "")

    def emit(self, check: str, status: Status, detail: str, fix: str = "") -> CheckResult:
        result = CheckResult(check, status, detail, fix)
        self.report.checks.append(result)
        if self.progress is not None:
            self.progress(result)
        return result

    def run(self) -> DoctorReport:
        from .aws.session import SessionFactory
        from .aws.targets import base_identity
        from .config import AwsSettings

        self.check_config()
        if self.factory is None:
            self.factory = SessionFactory(self.config.aws if self.config else AwsSettings(), run_id="doctor")
        self.region = self.report.region = self.options.region or _default_region(self.config)
        try:
            ident = base_identity(self.factory)
        except CredentialsError as exc:
            self.report.credentials_error = True
            self.emit("credentials", "problem", str(exc), "configure AWS credentials of the hub account")
            return self.report
        self.emit("credentials", "ok", f"acting as {ident['arn']} in account {ident['account_id']}")
        self.check_stack()
        if self.stack is not None:
            self.check_resources()
            self.check_disabled()
        if self.config is None:
            for name in ("state-table", "sinks", "ssm-associations", "member-roles", "last-run"):
                self.emit(name, "not-checked", "the config is invalid (see `config`)")
            return self.report
        self.check_state_table()
        self.check_sinks()
        self.check_associations()
        self.check_member_roles()
        self.check_last_runs()
        return self.report

    # -- config ------------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        try:
            self.config = load_config(self.options.config_path)
        except ConfigError as exc:
            self.report.config_error = True
            self.emit("config", "problem", str(exc), f"fix {exc.source} (`fleetwarden validate` checks it)")
            return
        cfg = self.config
        where = "organization" if cfg.organization is not None else f"{len(cfg.accounts)} listed account(s)"
        self.emit("config", "ok", f"{self.options.config_path} is valid: accounts from {where}, state {cfg.state}")

    # -- the stack ---------------------------------------------------------------------------------------------
    def check_stack(self) -> None:
        name = self.options.stack_name
        cfn = self.factory.client("cloudformation", region=self.region)
        deploy_fix = f"deploy the hub stack {name} in {self.region} from deploy/templates/hub.yaml ({TEMPLATE_DOC})"
        try:
            (described,) = cfn.describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            if _code(exc) == "ValidationError" and "does not exist" in str(exc):
                self.emit("stack", "problem", f"stack {name} does not exist in {self.region}", deploy_fix)
            else:
                self.emit("stack", "problem", f"cannot read stack {name}: {_text(exc)}", _read_fix("cloudformation"))
            return
        stack = StackInfo(
            status=described["StackStatus"],
            parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])},
            outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        )
        self.stack = stack
        if stack.status in COMPLETE:
            self.emit("stack", "ok", f"{name} in {self.region}: {stack.status}")
        elif stack.status in ROLLED_BACK:
            self.emit(
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
            self.emit("stack", "problem", f"{name}: {stack.status}" + (f" ({reason})" if reason else ""), fix)
        expected = _expected_outputs()
        missing = [key for key in expected if key not in stack.outputs]
        if missing:
            self.emit(
                "stack:outputs",
                "problem",
                f"outputs missing: {', '.join(missing)}",
                "update the stack with this version's deploy/templates/hub.yaml",
            )
        else:
            self.emit("stack:outputs", "ok", f"{len(expected)} outputs: {', '.join(expected)}")
        try:
            stack.resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
        except ClientError as exc:
            self.emit("stack:resources", "problem", f"cannot list the resources: {_text(exc)}", _read_fix("cfn"))

    def check_resources(self) -> None:
        assert self.stack is not None
        unchecked: dict[str, list[str]] = {}
        present = set()
        anonymous = 0
        for resource in self.stack.resources:
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
                self.stack.missing.add(logical)
                self.emit(check, "problem", f"{kind} {logical}: {status or 'no physical resource'}", _update_fix())
                continue
            try:
                outcome = checker(self, logical, physical)
            except ClientError as exc:
                if _code(exc) in _ACCESS_DENIED:
                    self.emit(check, "not-checked", f"{kind} {physical}: {_text(exc)}", _read_fix(kind))
                    continue
                if _status(exc) >= 500 or "Throttl" in _code(exc):
                    detail = f"{kind} {physical}: could not check: {_text(exc)}"
                    self.emit(check, "warning", detail, "a service error: run doctor again")
                    continue
                if not _is_missing(exc):
                    self.emit(check, "problem", f"{kind} {physical}: {_text(exc)}", _read_fix(kind))
                    continue
                outcome = None
            if outcome is None:
                self.stack.missing.add(logical)
                self.emit(
                    check,
                    "problem",
                    f"{kind} {physical} does not exist (deleted outside CloudFormation)",
                    _update_fix(),
                )
            else:
                self.emit(check, outcome[0], outcome[1], outcome[2] if len(outcome) > 2 else "")
        if anonymous:
            self.emit(
                "resource-type:unknown", "not-checked", f"{anonymous} resource(s) listed without a logical id or type"
            )
        for kind, logicals in sorted(unchecked.items()):
            self.emit(f"resource-type:{kind}", "not-checked", f"{kind}: {', '.join(logicals)} (doctor has no check)")
        absent = [logical for logical in _expected_resources() if logical not in present]
        if absent:
            self.emit(
                "stack:template",
                "warning",
                f"this version's hub template has resources the stack lacks: {', '.join(absent)}",
                "update the stack with this version's deploy/templates/hub.yaml",
            )

    def check_disabled(self) -> None:
        assert self.stack is not None
        notes = []
        if self.stack.parameters.get("Disabled", "false").strip().lower() == "true":
            notes.append("the stack's Disabled parameter is true")
        for function, env in sorted(self.stack.environments.items()):
            if env.get("FLEETWARDEN_DISABLED", "").strip().lower() in ("true", "1", "yes", "on"):
                notes.append(f"FLEETWARDEN_DISABLED=true on {function}")
        if notes:
            self.emit(
                "disabled",
                "warning",
                "; ".join(notes) + ": every invocation is a no-op, nothing is guarded or audited",
                "when it should run again: update the stack with Disabled=false",
            )
        else:
            functions = ", ".join(sorted(self.stack.environments)) or "no function found"
            self.emit("disabled", "ok", f"switched on (Disabled=false; {functions})")

    # -- what the config points to -----------------------------------------------------------------------------
    def check_state_table(self) -> None:
        assert self.config is not None
        state = self.config.state
        output = self.stack.outputs.get("StateUrl") if self.stack else None
        if not state.startswith("dynamodb://"):
            self.emit(
                "state-table",
                "problem",
                f"the config's state is {state}: the deployed functions cannot keep SQLite (only /tmp is writable)",
                f"set `state: {output or 'dynamodb://TABLE?region=REGION'}` (the stack's StateUrl output)",
            )
            return
        table, region = _table_of(state)
        try:
            described = self.factory.client("dynamodb", region=region).describe_table(TableName=table)["Table"]
        except ClientError as exc:
            if _is_missing(exc):
                self.emit(
                    "state-table",
                    "problem",
                    f"the config's state table {table} does not exist in {region}",
                    "point `state:` at the stack's StateUrl output, or restore the table (the stack keeps it)",
                )
            else:
                self.emit("state-table", "problem", f"{state}: {_text(exc)}", _read_fix("dynamodb"))
            return
        if output and _table_of(output) != (table, region):
            self.emit(
                "state-table",
                "warning",
                f"the config's state {state} is not the stack's StateUrl {output}",
                f"set `state: {output}`, unless you keep the state elsewhere on purpose",
            )
            return
        self.emit("state-table", "ok", f"{state}: {described.get('TableStatus', '?')}, the stack's StateUrl")

    def check_sinks(self) -> None:
        assert self.config is not None
        topic_output = self.stack.outputs.get("AlertsTopicArn") if self.stack else None
        sns = {
            name: str(raw.get("topic_arn", "")) for name, raw in self.config.sinks.items() if raw.get("type") == "sns"
        }
        if not sns:
            detail = "no sns sink in the config: nothing publishes to the alerts topic"
            self.emit("sinks", "warning", detail, f"add `sinks: {{ops: {{type: sns, topic_arn: {topic_output}}}}}`")
            return
        for name, arn in sorted(sns.items()):
            region = arn.split(":")[3] if arn.count(":") >= 5 else self.region
            try:
                self.factory.client("sns", region=region).get_topic_attributes(TopicArn=arn)
            except ClientError as exc:
                fix = f"set sinks.{name}.topic_arn to the stack's AlertsTopicArn output ({topic_output})"
                if _is_missing(exc):
                    self.emit(f"sink:{name}", "problem", f"topic {arn} does not exist", fix)
                else:
                    self.emit(f"sink:{name}", "problem", f"topic {arn}: {_text(exc)}", _read_fix("sns"))
                continue
            if topic_output and arn != topic_output:
                self.emit(
                    f"sink:{name}",
                    "warning",
                    f"publishes to {arn}, not the stack's alerts topic {topic_output}",
                    "fine if on purpose; else set its topic_arn to the AlertsTopicArn output",
                )
            else:
                self.emit(f"sink:{name}", "ok", f"topic {arn} exists")

    def check_associations(self) -> None:
        assert self.config is not None
        if "compliance" not in self.config.model_fields_set:
            self.emit("ssm-associations", "not-checked", "no `compliance:` section in the config")
            return
        compliance = self.config.compliance
        ssm = self.factory.client("ssm", region=self.region)
        where = f"in {self.region} (the hub's account and region, where the ComplianceSyncRule listens)"
        for association_id in compliance.association_ids:
            check = f"ssm-association:{association_id}"
            try:
                found = ssm.describe_association(AssociationId=association_id)["AssociationDescription"]
            except ClientError as exc:
                if _code(exc) in ("AssociationDoesNotExist", "InvalidAssociation") or _is_missing(exc):
                    self.emit(
                        check,
                        "problem",
                        f"association {association_id} (compliance.association_ids) does not exist {where}",
                        "create it again (aws ssm create-association ...), then put its new id in "
                        "compliance.association_ids",
                    )
                else:
                    self.emit(check, "problem", f"association {association_id}: {_text(exc)}", _read_fix("ssm"))
                continue
            self.emit(check, "ok", f"association {association_id} exists ({found.get('Name', '?')})")
        for document in compliance.document_names:
            check = f"ssm-association:{document}"
            try:
                filters = [{"key": "Name", "value": document}]
                listed = ssm.list_associations(AssociationFilterList=filters).get("Associations", [])
            except ClientError as exc:
                self.emit(check, "problem", f"associations of {document}: {_text(exc)}", _read_fix("ssm"))
                continue
            if listed:
                ids = ", ".join(a.get("AssociationId", "?") for a in listed[:5])
                self.emit(check, "ok", f"{len(listed)} association(s) of document {document}: {ids}")
            else:
                self.emit(
                    check,
                    "problem",
                    f"no association of document {document} (compliance.document_names) {where}",
                    f"create one: aws ssm create-association --name {document} --targets ... ; or fix "
                    "compliance.document_names",
                )

    def check_member_roles(self) -> None:
        assert self.config is not None
        from .aws.fanout import fan_out
        from .aws.targets import resolve_accounts, verify_accounts

        try:
            accounts = resolve_accounts(self.config, self.factory)
        except CredentialsError as exc:
            self.emit("member-roles", "problem", str(exc), "let this principal list the organization's accounts")
            return
        failures: dict[str, str] = {r.account_id: r.error or "" for r in verify_accounts(accounts, self.factory)}
        roles = [a for a in accounts if a.role_arn is not None and a.account_id not in failures]
        for outcome in fan_out(
            [a.account_id for a in roles],
            self._assume,
            max_concurrency=self.config.aws.max_concurrency,
            label="member roles",
        ):
            problem = outcome.error or outcome.value
            if problem:
                failures[outcome.key] = problem
        by_id = {a.account_id: a for a in accounts}
        for account_id, error in sorted(failures.items()):
            role = by_id[account_id].role_arn or "the current credentials"
            self.emit(
                f"member-role:{account_id}",
                "problem",
                f"account {account_id} ({role}): {error}",
                "deploy the member-role StackSet instance to this account (deploy/templates/member-role.yaml) "
                "with the config's external id",
            )
        total = len(accounts)
        if failures:
            self.emit(
                "member-roles",
                "problem",
                f"{len(failures)} of {total} account(s) cannot be reached: {', '.join(sorted(failures))}",
                "see the member-role lines above",
            )
        else:
            self.emit("member-roles", "ok", f"all {total} account(s) reachable (the member role assumed in each)")

    def _assume(self, account_id: str) -> str | None:
        """Assume the account's role, check which account it acts in and that the role itself still exists; a
        problem, or None. (AWS refuses AssumeRole for a role that was deleted; moto does not, hence GetRole.)"""
        access = self.factory.access(account_id)
        ident = self.factory.client("sts", region=self._sts_region, account_id=account_id).get_caller_identity()
        if ident["Account"] != account_id:
            return f"the role acts in account {ident['Account']}, not {account_id}"
        role_name = str(access.role_arn).rsplit("/", 1)[-1]
        try:
            self.factory.client("iam", region=self._sts_region, account_id=account_id).get_role(RoleName=role_name)
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return f"the role {role_name} does not exist in account {account_id}"
            if _code(exc) not in _ACCESS_DENIED:
                raise
            # Assumed, and not allowed to read itself (a config-narrowed member policy): reachable all the same.
        return None

    @property
    def _sts_region(self) -> str:
        return self.config.aws.sts_region if self.config else "us-east-1"

    # -- last runs ---------------------------------------------------------------------------------------------
    def check_last_runs(self) -> None:
        assert self.config is not None
        from .deploy import SCHEDULES
        from .state import open_store

        jobs = [(rule, str(event["action"])) for rule, _p, _d, event, _t in SCHEDULES]
        if self.stack is None:
            self.emit("last-run", "not-checked", "no stack: nothing is scheduled")
            return
        if self.stack.parameters.get("RulesState") == "DISABLED":
            self.emit("last-run", "not-checked", "the stack's RulesState is DISABLED: no schedule fires")
            return
        try:
            store = open_store(self.config.state, self.factory)
        except (StateError, ClientError, BotoCoreError) as exc:
            self.emit("last-run", "not-checked", f"cannot open the state store: {exc}")
            return
        now = self.options.now or datetime.now(UTC)
        try:
            for rule, action in jobs:
                self._last_run(store, rule, action, now)
        finally:
            store.close()

    def _last_run(self, store: Any, rule: str, action: str, now: datetime) -> None:
        assert self.stack is not None
        check = f"last-run:{action}"
        if rule in self.stack.missing or rule not in {r.get("LogicalResourceId") for r in self.stack.resources}:
            self.emit(check, "not-checked", f"its rule {rule} is missing (see resource:{rule})")
            return
        limit = self.options.max_age.get(action)
        if limit is None:
            self.emit(check, "not-checked", f"no maximum age for {action}", f"--max-age {action}=DURATION")
            return
        logs = f"aws logs tail /aws/lambda/{self._function_of(rule)} --since {_age(limit)}"
        try:
            found = store.get_record(RUN_KIND, action)
        except (StateError, ClientError, BotoCoreError) as exc:
            self.emit(check, "not-checked", f"cannot read the last-run record: {exc}")
            return
        data = found[0] if found else {}
        success = data.get("last_success") or {}
        attempt = data.get("last_attempt") or {}
        tried = ""
        if attempt and attempt != success:
            why = f": {attempt['error']}" if attempt.get("error") else ""
            ended = f"{attempt.get('status')} (exit {attempt.get('exit_code')})"
            tried = f"; last attempt {attempt.get('at')} ended {ended}{why}"
        if not success.get("at"):
            self.emit(check, "problem", f"no successful {action} run recorded{tried}", f"look at its logs: {logs}")
            return
        when = datetime.fromisoformat(str(success["at"]))
        age = now - when
        if age > limit:
            self.emit(
                check,
                "problem",
                f"last successful {action} run {success['at']}, {_age(age)} ago (limit {_age(limit)}){tried}",
                f"look at its logs: {logs}",
            )
        else:
            self.emit(check, "ok", f"last successful run {_age(age)} ago (limit {_age(limit)}){tried}")

    def _function_of(self, rule: str) -> str:
        from .deploy import SCHEDULES

        target = next((t for r, _p, _d, _e, t in SCHEDULES if r == rule), "Function")
        name = self.stack.parameters.get("FunctionName", "fleetwarden") if self.stack else "fleetwarden"
        return f"{name}-guard" if target == "GuardFunction" else name


# -- resource checks: resource type -> check -------------------------------------------------------------------
# Each takes (doctor, logical id, physical id) and returns (status, detail[, fix]), or None when the resource does
# not exist; a ClientError that means "not found" counts as None.
Outcome = tuple[Status, str] | tuple[Status, str, str] | None


def _lambda_function(doctor: Doctor, logical: str, physical: str) -> Outcome:
    found = doctor.factory.client("lambda", region=doctor.region).get_function(FunctionName=physical)
    configuration = found["Configuration"]
    env = configuration.get("Environment", {}).get("Variables", {})
    if doctor.stack is not None:
        doctor.stack.environments[physical] = dict(env)
    state = configuration.get("State", "Active")
    if state == "Failed":
        return "problem", f"function {physical}: {state} ({configuration.get('StateReason', '')})", _update_fix()
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


def _events_rule(doctor: Doctor, logical: str, physical: str) -> Outcome:
    rule = doctor.factory.client("events", region=doctor.region).describe_rule(Name=physical)
    state = rule.get("State", "?")
    what = rule.get("ScheduleExpression") or "event pattern"
    wanted = doctor.stack.parameters.get("RulesState", "ENABLED") if doctor.stack else "ENABLED"
    if state == wanted == "ENABLED":
        return "ok", f"rule {physical} ({what}) ENABLED"
    if wanted == "DISABLED":
        note = "as the stack's RulesState says" if state == "DISABLED" else "though the stack's RulesState is DISABLED"
        return "warning", f"rule {physical} ({what}) {state}, {note}", "update the stack with RulesState=ENABLED"
    return (
        "problem",
        f"rule {physical} ({what}) is {state} while the stack's RulesState is ENABLED: it does not fire",
        f"aws events enable-rule --name {physical}",
    )


def _state_machine(doctor: Doctor, logical: str, physical: str) -> Outcome:
    sfn = doctor.factory.client("stepfunctions", region=doctor.region)
    machine = sfn.describe_state_machine(stateMachineArn=physical)
    status = machine.get("status", "ACTIVE")
    if status != "ACTIVE":
        return "problem", f"state machine {physical}: {status}", _update_fix()
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
_MISSING = {
    "ResourceNotFoundException",
    "NotFoundException",
    "NotFound",
    "404",
    "NoSuchEntity",
    "NoSuchBucket",
    "StateMachineDoesNotExist",
    "AssociationDoesNotExist",
}
_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_missing(exc: ClientError) -> bool:
    code = _code(exc)
    if code in _MISSING:
        return True
    # Some services say it only in the message (a ValidationException "... does not exist").
    return "does not exist" in str(exc)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _text(exc: BaseException) -> str:
    """One short line: a service error's body can be a whole HTML page."""
    from .aws.targets import error_text

    text = " ".join(error_text(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _read_fix(what: str) -> str:
    return f"give this principal the read actions of `fleetwarden permissions` (operator) for {what}"


def _update_fix() -> str:
    return (
        "update the stack so CloudFormation creates it again (a resource deleted by hand: aws cloudformation "
        "update-stack with the same template may not notice; detect-stack-drift shows it)"
    )


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{max(seconds, 0) // 60}m"


def _table_of(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, parse_qs(parts.query).get("region", ["us-east-1"])[0]


def _default_region(config: Config | None) -> str:
    """The stack's region when --region is not given: the config's DynamoDB state table's, else the
    environment's, else us-east-1."""
    if config is not None and config.state.startswith("dynamodb://"):
        return _table_of(config.state)[1]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _expected_outputs() -> list[str]:
    return list(_hub_template()["Outputs"])


def _expected_resources() -> list[str]:
    return list(_hub_template()["Resources"])


def _hub_template() -> dict[str, Any]:
    from .deploy import hub_template, load_state_machine

    return hub_template(load_state_machine())


def run_doctor(
    options: DoctorOptions, factory: Any = None, progress: Callable[[CheckResult], None] | None = None
) -> DoctorReport:
    """Run every check (read-only) and return the report; see docs/doctor.md."""
    return Doctor(options, factory, progress).run()


def format_line(result: CheckResult) -> str:
    mark = {"ok": "ok     ", "warning": "WARNING", "problem": "PROBLEM", "not-checked": "-      "}[result.status]
    line = f"{mark} {result.check}: {result.detail}"
    return f"{line}\n        fix: {result.fix}" if result.fix and result.status != "ok" else line
