"""`fleetwarden doctor` against a deployment made in moto from the real templates: the hub stack (rendered
hub.yaml) and the member role in two accounts (member-role.yaml as a self-managed StackSet). Whole, it exits 0;
each piece removed by hand is named, and only that piece.

The deployment is shared between cases (creating the stack takes over a second): a case that can put back what it
broke does so; one that cannot (a deleted table, function, topic or stack) marks it spent, and the next case builds
a fresh one on a reset emulator.

moto has no SSM associations (CreateAssociation, DescribeAssociation, ListAssociations), so the SSM client is
botocore's Stubber with AWS's documented shapes, for that one client (CONTRIBUTING.md); everything else is moto
over HTTP.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from botocore.stub import Stubber
from fleet import cli

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.config import AwsSettings
from fleetwarden.deploy import render
from fleetwarden.doctor import CheckResult, Doctor, DoctorOptions, DoctorReport, StackInfo, record_run, run_doctor
from fleetwarden.doctor.stack import check_resources
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.permissions import is_read_only, policy_documents
from fleetwarden.state import open_store

REGION = "us-east-1"
HUB = "123456789012"
MEMBERS = ("111111111111", "222222222222")
EXTERNAL_ID = "doctor-test-external-id"
STACK = "fleetwarden-hub"
ASSOCIATION_ID = "8dfe3659-4309-493a-8755-0123456789ab"
DOCUMENT = "AWS-RunInspecChecks"


@dataclass
class Deployment:
    """The hub stack, the member roles, a config naming them and fresh last-run records."""

    emulator: EmulatorServer
    factory: SessionFactory
    config: Path
    outputs: dict[str, str]
    spent: bool = False
    ssm: Stubber | None = field(default=None, repr=False)

    def client(self, service: str, account_id: str | None = None) -> Any:
        return self.factory.client(service, region=REGION, account_id=account_id)

    def physical(self, logical: str) -> str:
        resource = self.client("cloudformation").describe_stack_resource(StackName=STACK, LogicalResourceId=logical)
        return str(resource["StackResourceDetail"]["PhysicalResourceId"])

    def record(self, action: str, at: datetime, status: str = "ok") -> None:
        store = open_store(self.outputs["StateUrl"], self.factory)
        result = {"status": status, "exit_code": 0 if status == "ok" else 1, "run_id": f"run-{action}"}
        assert record_run(store, action, result, at)
        store.close()

    def doctor(self, config: Path | None = None) -> DoctorReport:
        options = DoctorOptions(str(config or self.config), STACK, REGION)
        return run_doctor(options, self.factory)


def _lambda_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fleetwarden/__init__.py", "")
    return buffer.getvalue()


def _parameters(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _config(path: Path, endpoint: str, outputs: dict[str, str], **extra: Any) -> Path:
    data: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 4},
        "accounts": [
            {"id": a, "role_arn": f"arn:aws:iam::{a}:role/FleetWarden", "external_id": EXTERNAL_ID} for a in MEMBERS
        ],
        "regions": [REGION],
        "state": outputs["StateUrl"],
        "sinks": {"ops": {"type": "sns", "topic_arn": outputs["AlertsTopicArn"]}},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _deploy(emulator: EmulatorServer, directory: Path, **parameters: str) -> Deployment:
    emulator.reset()
    factory = SessionFactory(AwsSettings(endpoint_url=emulator.url, max_attempts=2, max_concurrency=4), run_id="t")
    s3 = factory.client("s3", region=REGION)
    s3.create_bucket(Bucket="fleetwarden-artifacts")
    s3.put_object(Bucket="fleetwarden-artifacts", Key="fleetwarden-lambda.zip", Body=_lambda_zip())
    cfn = factory.client("cloudformation", region=REGION)
    cfn.create_stack(
        StackName=STACK,
        TemplateBody=render("hub"),
        Parameters=_parameters(
            {
                "CodeBucket": "fleetwarden-artifacts",
                "ConfigReference": "s3://fleetwarden-artifacts/fleetwarden.yaml",
                **parameters,
            }
        ),
        Capabilities=["CAPABILITY_IAM"],
    )
    (stack,) = cfn.describe_stacks(StackName=STACK)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    cfn.create_stack_set(
        StackSetName="fleetwarden-member",
        TemplateBody=render("member"),
        Parameters=_parameters({"HubAccountId": HUB, "ExternalId": EXTERNAL_ID}),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        PermissionModel="SELF_MANAGED",
    )
    cfn.create_stack_instances(StackSetName="fleetwarden-member", Accounts=list(MEMBERS), Regions=[REGION])
    for account in MEMBERS:
        factory.register_account(AccountAccess(account, f"arn:aws:iam::{account}:role/FleetWarden", EXTERNAL_ID))
    compliance = {"association_ids": [ASSOCIATION_ID], "document_names": [DOCUMENT]}
    config = _config(directory / "fleetwarden.yaml", emulator.url, outputs, compliance=compliance)
    return Deployment(emulator, factory, config, outputs)


def _fresh_runs(deployment: Deployment) -> None:
    now = datetime.now(UTC)
    for action in ("guard", "audit", "compliance-report", "spend-report", "prices-refresh"):
        deployment.record(action, now)


def _stub_ssm(deployment: Deployment, association_exists: bool = True, runs: int = 3) -> Stubber:
    """What SSM answers about the config's association and document (moto has no associations), for a few
    doctor runs."""
    stubber = Stubber(deployment.client("ssm"))
    for _ in range(runs):
        _stub_one_run(stubber, association_exists)
    stubber.activate()
    return stubber


def _stub_one_run(stubber: Stubber, association_exists: bool) -> None:
    if association_exists:
        stubber.add_response(
            "describe_association",
            {"AssociationDescription": {"AssociationId": ASSOCIATION_ID, "Name": DOCUMENT}},
            {"AssociationId": ASSOCIATION_ID},
        )
    else:
        stubber.add_client_error(
            "describe_association",
            service_error_code="AssociationDoesNotExist",
            service_message="The specified association does not exist.",
            http_status_code=400,
            expected_params={"AssociationId": ASSOCIATION_ID},
        )
    stubber.add_response(
        "list_associations",
        {"Associations": [{"AssociationId": ASSOCIATION_ID, "Name": DOCUMENT}]},
        {"AssociationFilterList": [{"key": "Name", "value": DOCUMENT}]},
    )


_shared: dict[str, Deployment] = {}


@pytest.fixture
def deployment(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The shared deployment (rebuilt when a case spent it, or when another module reset the emulator)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    current = _shared.get("deployment")
    if current is not None and not current.spent:
        stacks = current.client("cloudformation").list_stacks(StackStatusFilter=["CREATE_COMPLETE"])
        if not any(s["StackName"] == STACK for s in stacks["StackSummaries"]):
            current = None
    if current is None or current.spent:
        current = _shared["deployment"] = _deploy(emulator, tmp_path_factory.mktemp("doctor"))
    _fresh_runs(current)
    current.ssm = _stub_ssm(current)
    try:
        yield current
    finally:
        current.ssm.deactivate()


def _problems(report: DoctorReport) -> set[str]:
    return {c.check for c in report.problems}


# Resource types moto's CloudFormation cannot create: it lists them without a logical id, so the stack "lacks" them.
MOTO_CANNOT_CREATE = {"AWS::CloudWatch::Alarm", "AWS::S3::BucketPolicy"}


def test_a_whole_deployment_is_ok(deployment: Deployment) -> None:
    report = deployment.doctor()
    assert report.exit_code == 0, report.problems
    checks = {c.check: c for c in report.checks}
    warnings = {c.check: c for c in report.checks if c.status == "warning"}
    # Two warnings come from moto, not from the deployment: the resources it cannot create, and DescribeKey on
    # a key CloudFormation made (moto answers 500 when the key policy was given as a document).
    assert set(warnings) <= {"stack:template", "resource:AlertsKey"}, warnings
    template = yaml.safe_load(render("hub"))["Resources"]
    uncreated = sorted(k for k, v in template.items() if v["Type"] in MOTO_CANNOT_CREATE)
    if uncreated:
        assert set(warnings["stack:template"].detail.split(": ", 1)[1].split(", ")) == set(uncreated)
    if "resource:AlertsKey" in warnings:
        assert "could not check: DescribeKey: HTTP 500" in warnings["resource:AlertsKey"].detail
    # Every resource of the stack was looked at; a type without a check is listed, never a failure.
    assert checks["resource-type:AWS::Lambda::Permission"].status == "not-checked"
    for logical in ("StateTable", "AlertsTopic", "Function", "GuardFunction", "FunctionLogGroup", "FunctionRole"):
        assert checks[f"resource:{logical}"].status == "ok", checks[f"resource:{logical}"]
    assert checks["resource:GuardScheduleRule"].status == "ok"
    assert checks["resource:ScanWindowStateMachine"].status == "ok"
    assert checks["member-roles"].detail.startswith("all 2 account(s) reachable")
    assert checks[f"ssm-association:{ASSOCIATION_ID}"].status == "ok"
    assert checks[f"ssm-association:{DOCUMENT}"].status == "ok"
    assert {f"last-run:{a}" for a in ("guard", "audit", "compliance-report", "spend-report", "prices-refresh")} <= set(
        checks
    )


def test_problem_details(deployment: Deployment) -> None:
    """The lines say what is missing and what to do, in words an operator can act on."""
    restore = _disable_rule(deployment)
    _failed_audit_runs(deployment)
    try:
        checks = {c.check: c for c in deployment.doctor().checks}
    finally:
        restore()
    rule = checks["resource:AuditScheduleRule"]
    assert "DISABLED while the stack's RulesState is ENABLED" in rule.detail
    assert rule.fix.startswith("aws events enable-rule --name fleetwarden-hub-AuditScheduleRule-")
    restore = _remove_invoke_permission(deployment)
    try:
        rule = {c.check: c for c in deployment.doctor().checks}["resource:AuditScheduleRule"]
    finally:
        restore()
    assert "targets fleetwarden, whose policy does not let EventBridge invoke it" in rule.detail
    assert rule.fix.startswith("aws lambda add-permission --function-name fleetwarden --statement-id ")
    audit = checks["last-run:audit"]
    assert "last attempt" in audit.detail and "ended error (exit 1)" in audit.detail
    assert "aws logs tail /aws/lambda/fleetwarden " in audit.fix


def test_disabled_functions_are_a_warning(deployment: Deployment) -> None:
    lam = deployment.client("lambda")
    found = lam.get_function(FunctionName="fleetwarden")["Configuration"]["Environment"]["Variables"]
    env = {k: str(v) for k, v in found.items()}  # moto keeps a number from the template as a number
    lam.update_function_configuration(
        FunctionName="fleetwarden", Environment={"Variables": {**env, "FLEETWARDEN_DISABLED": "true"}}
    )
    try:
        report = deployment.doctor()
    finally:
        lam.update_function_configuration(FunctionName="fleetwarden", Environment={"Variables": env})
    (disabled,) = [c for c in report.checks if c.check == "disabled"]
    assert disabled.status == "warning" and "FLEETWARDEN_DISABLED=true on fleetwarden" in disabled.detail
    # switched off, nothing runs: stale runs are expected, not a problem
    assert {c.check: c.status for c in report.checks}["last-run"] == "not-checked"
    assert report.exit_code == 0


# -- the command -----------------------------------------------------------------------------------------------
def _without_compliance(d: Deployment) -> Path:
    """The command makes its own clients, which the SSM Stubber cannot reach: a config without `compliance:`."""
    data = yaml.safe_load(d.config.read_text())
    del data["compliance"]
    config = d.config.with_name("no-compliance.yaml")
    config.write_text(yaml.safe_dump(data))
    return config


def test_cli_whole_then_missing(deployment: Deployment) -> None:
    config = _without_compliance(deployment)
    result = cli("--config", str(config), "doctor", "--json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["schema"] == "fleetwarden.doctor/v1" and printed["exit_code"] == 0
    published = json.loads((Path(__file__).resolve().parents[2] / "docs/schemas/doctor.v1.schema.json").read_text())
    jsonschema.validate(printed, published, cls=jsonschema.Draft202012Validator)
    assert set(printed["checks"][0]) == {"check", "status", "detail", "fix"}
    assert "ok      stack: fleetwarden-hub in us-east-1: CREATE_COMPLETE" in result.stderr
    assert "-       ssm-associations: no `compliance:` section in the config" in result.stderr

    result = cli("--config", str(config), "doctor", "--max-age", "guard=0m")
    assert result.exit_code == 2 and "guard=20m" in result.stderr

    restore = _disable_rule(deployment)
    try:
        result = cli("--config", str(config), "doctor")
    finally:
        restore()
    assert result.exit_code == 3
    assert "PROBLEM resource:AuditScheduleRule: rule fleetwarden-hub-AuditScheduleRule-" in result.stderr
    assert "fix: aws events enable-rule --name fleetwarden-hub-AuditScheduleRule-" in result.stderr


def test_cli_without_a_stack_and_with_a_bad_config(deployment: Deployment, tmp_path: Path) -> None:
    result = cli("--config", str(_without_compliance(deployment)), "doctor", "--stack-name", "nope", "--json")
    assert result.exit_code == 3
    problems = [c for c in json.loads(result.stdout)["checks"] if c["status"] == "problem"]
    assert [c["check"] for c in problems] == ["stack"]
    assert "stack nope does not exist in us-east-1" in problems[0]["detail"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: []\n")
    result = cli("--config", str(bad), "doctor", "--region", REGION, "--stack-name", "nope")
    assert result.exit_code == 2
    assert "PROBLEM config: invalid config" in result.stderr


# -- what each case breaks (and puts back, where it can) -------------------------------------------------------
def _delete_table(d: Deployment) -> None:
    d.client("dynamodb").delete_table(TableName="fleetwarden-state")
    d.spent = True


def _delete_function(d: Deployment) -> None:
    d.client("lambda").delete_function(FunctionName="fleetwarden-guard")
    d.spent = True


def _disable_rule(d: Deployment) -> Callable[[], None]:
    name = d.physical("AuditScheduleRule")
    d.client("events").disable_rule(Name=name)
    return lambda: d.client("events").enable_rule(Name=name)


def _remove_invoke_permission(d: Deployment) -> Callable[[], None]:
    rule_arn = d.client("events").describe_rule(Name=d.physical("AuditScheduleRule"))["Arn"]
    lam = d.client("lambda")
    policy = json.loads(lam.get_policy(FunctionName="fleetwarden")["Policy"])
    (sid,) = [s["Sid"] for s in policy["Statement"] if s["Condition"]["ArnLike"]["AWS:SourceArn"] == rule_arn]
    lam.remove_permission(FunctionName="fleetwarden", StatementId=sid)
    return lambda: (
        lam.add_permission(
            FunctionName="fleetwarden",
            StatementId=sid,
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=rule_arn,
        )
        and None
    )


def _delete_topic(d: Deployment) -> None:
    d.client("sns").delete_topic(TopicArn=d.outputs["AlertsTopicArn"])
    d.spent = True


def _delete_association(d: Deployment) -> None:
    assert d.ssm is not None
    d.ssm.deactivate()
    d.ssm = _stub_ssm(d, association_exists=False)


def _delete_member_role(d: Deployment) -> Callable[[], None]:
    iam = d.client("iam", account_id=MEMBERS[1])
    role = iam.get_role(RoleName="FleetWarden")["Role"]
    for policy in iam.list_role_policies(RoleName="FleetWarden")["PolicyNames"]:
        iam.delete_role_policy(RoleName="FleetWarden", PolicyName=policy)
    iam.delete_role(RoleName="FleetWarden")
    trust = json.dumps(role["AssumeRolePolicyDocument"])
    return lambda: iam.create_role(RoleName="FleetWarden", AssumeRolePolicyDocument=trust) and None


def _stale_guard_run(d: Deployment) -> None:
    d.record("guard", datetime.now(UTC) - timedelta(hours=2))  # the fixture records fresh ones again


def _failed_audit_runs(d: Deployment) -> None:
    d.record("audit", datetime.now(UTC) - timedelta(days=3))
    d.record("audit", datetime.now(UTC), status="error")  # attempts go on failing: no success since


def _delete_stack(d: Deployment) -> None:
    d.client("cloudformation").delete_stack(StackName=STACK)
    d.spent = True


def _invalid_config(d: Deployment) -> None:
    data = yaml.safe_load(d.config.read_text())
    data["regions"] = []
    d.config.with_name("invalid.yaml").write_text(yaml.safe_dump(data))


# The cases that can put back what they broke come first, so that they share one deployment.
CASES: list[tuple[str, Callable[[Deployment], Any], set[str], int]] = [
    ("rule", _disable_rule, {"resource:AuditScheduleRule"}, 3),
    ("invoke-permission", _remove_invoke_permission, {"resource:AuditScheduleRule"}, 3),
    ("association", _delete_association, {f"ssm-association:{ASSOCIATION_ID}"}, 3),
    ("member-role", _delete_member_role, {f"member-role:{MEMBERS[1]}", "member-roles"}, 3),
    ("stale-run", _stale_guard_run, {"last-run:guard"}, 3),
    ("failing-runs", _failed_audit_runs, {"last-run:audit"}, 3),
    ("config", _invalid_config, {"config"}, 2),
    ("table", _delete_table, {"resource:StateTable", "state-table"}, 3),
    ("function", _delete_function, {"resource:GuardFunction"}, 3),
    ("topic", _delete_topic, {"resource:AlertsTopic", "sink:ops"}, 3),
    ("stack", _delete_stack, {"stack", "sink:ops"}, 3),
]


@pytest.mark.parametrize(("piece", "breaks", "named", "exit_code"), CASES, ids=[c[0] for c in CASES])
def test_doctor_names_exactly_the_missing_piece(
    deployment: Deployment, piece: str, breaks: Callable[[Deployment], Any], named: set[str], exit_code: int
) -> None:
    restore = breaks(deployment)
    try:
        config = deployment.config.with_name("invalid.yaml") if piece == "config" else None
        report = deployment.doctor(config)
    finally:
        if callable(restore):
            restore()
    assert _problems(report) == named, [c for c in report.checks if c.status == "problem"]
    assert report.exit_code == exit_code
    for problem in report.problems:
        assert problem.fix, problem  # every problem says what to do
    if piece == "table":
        fixes = {c.check: c.fix for c in report.problems}
        assert fixes["resource:StateTable"].startswith("recreate it with the same name: `fleetwarden state init`")
        assert fixes["state-table"] == "see resource:StateTable"


def test_rules_disabled_by_the_stack_are_warnings_not_problems(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Deployed with RulesState=DISABLED (the rollout's first step): disabled rules are expected, not missing."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    spent = _shared.get("deployment")
    if spent is not None:
        spent.spent = True  # this test resets the emulator
    deployment = _deploy(emulator, tmp_path, RulesState="DISABLED")
    deployment.ssm = _stub_ssm(deployment)
    report = deployment.doctor()
    deployment.ssm.deactivate()
    rules = [c for c in report.checks if c.check.endswith("Rule")]
    assert len(rules) >= 5 and all(c.status == "warning" for c in rules), rules
    assert "DISABLED, as the stack's RulesState says" in rules[0].detail
    assert {c.check: c.status for c in report.checks}["last-run"] == "not-checked"
    assert report.exit_code == 0


# -- resource types moto's CloudFormation cannot make, and the calls doctor makes -------------------------------
def _resource(logical: str, kind: str, physical: str) -> dict[str, str]:
    return {
        "LogicalResourceId": logical,
        "ResourceType": kind,
        "PhysicalResourceId": physical,
        "ResourceStatus": "CREATE_COMPLETE",
    }


def _resource_checks(factory: SessionFactory, *resources: dict[str, str]) -> dict[str, CheckResult]:
    doctor = Doctor(DoctorOptions(region=REGION), factory)
    doctor.stack = StackInfo(status="CREATE_COMPLETE", resources=list(resources))
    check_resources(doctor)
    return {c.check: c for c in doctor.report.checks if c.check.startswith("resource:")}


def test_alarms_buckets_and_keys(aws: EmulatorServer, factory: SessionFactory) -> None:
    """The checks of the types moto's CloudFormation cannot create (alarms) or describe (a key it made), on
    resources made through their own APIs."""
    cloudwatch = factory.client("cloudwatch", region=REGION)
    cloudwatch.put_metric_alarm(
        AlarmName="fleetwarden-guard-silent",
        Namespace="AWS/Lambda",
        MetricName="Invocations",
        Statistic="Sum",
        Period=300,
        EvaluationPeriods=3,
        Threshold=1,
        ComparisonOperator="LessThanThreshold",
    )
    factory.client("s3", region=REGION).create_bucket(Bucket="fleetwarden-runs")
    kms = factory.client("kms", region=REGION)
    key, doomed = (kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2))
    kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    resources = (
        _resource("GuardSilentAlarm", "AWS::CloudWatch::Alarm", "fleetwarden-guard-silent"),
        _resource("OtherAlarm", "AWS::CloudWatch::Alarm", "fleetwarden-deleted"),
        _resource("RunBucket", "AWS::S3::Bucket", "fleetwarden-runs"),
        _resource("GoneBucket", "AWS::S3::Bucket", "fleetwarden-gone"),
        _resource("AlertsKey", "AWS::KMS::Key", key),
        _resource("DoomedKey", "AWS::KMS::Key", doomed),
    )
    checks = _resource_checks(factory, *resources)
    statuses = {name.split(":", 1)[1]: c.status for name, c in checks.items()}
    assert statuses == {
        "GuardSilentAlarm": "ok",
        "OtherAlarm": "problem",
        "RunBucket": "ok",
        "GoneBucket": "problem",
        "AlertsKey": "ok",
        "DoomedKey": "problem",
    }
    assert "fleetwarden-deleted does not exist" in checks["resource:OtherAlarm"].detail
    assert "fleetwarden-gone does not exist" in checks["resource:GoneBucket"].detail
    assert "is PendingDeletion" in checks["resource:DoomedKey"].detail
    assert "cancel-key-deletion" in checks["resource:DoomedKey"].fix


# botocore's service names and operations where the IAM action differs.
IAM_NAMES = {"s3:HeadBucket": "s3:ListBucket"}
IAM_SERVICES = {"stepfunctions": "states"}


def test_every_call_doctor_makes_is_in_the_operator_policy(deployment: Deployment) -> None:
    before = dict(deployment.factory.counter.calls)
    report = deployment.doctor()
    assert report.exit_code == 0
    made = set()
    for call, count in deployment.factory.counter.calls.items():
        if count > before.get(call, 0):
            service, _, operation = call.partition(":")
            name = f"{IAM_SERVICES.get(service, service)}:{operation}"
            made.add(IAM_NAMES.get(name, name))
    operator = {a for s in policy_documents()["operator"]["Statement"] for a in s["Action"]}
    assert made <= operator, sorted(made - operator)
    assert all(is_read_only(a) for a in made - {"sts:AssumeRole"}), made
    assert {"cloudformation:DescribeStackResources", "lambda:GetFunction", "lambda:GetPolicy"} <= made


def test_member_roles_of_the_organization(deployment: Deployment) -> None:
    """With `organization:`, every ACTIVE account is checked: the members through the role, the management
    account with the current credentials; a member whose role was never deployed is named."""
    org = deployment.client("organizations")
    org.create_organization(FeatureSet="ALL")
    created = [
        org.create_account(AccountName=f"member-{i}", Email=f"member-{i}@example.com")["CreateAccountStatus"]
        for i in range(3)
    ]
    ids = [org.describe_create_account_status(CreateAccountRequestId=c["Id"])["CreateAccountStatus"] for c in created]
    members = [status["AccountId"] for status in ids]
    deployment.client("cloudformation").create_stack_instances(
        StackSetName="fleetwarden-member", Accounts=members[:2], Regions=[REGION]
    )
    data = yaml.safe_load(_without_compliance(deployment).read_text())
    del data["accounts"]
    data["organization"] = {"role_name": "FleetWarden", "external_id": EXTERNAL_ID}
    config = deployment.config.with_name("organization.yaml")
    config.write_text(yaml.safe_dump(data))
    deployment.spent = True  # the organization and its roles stay in the emulator
    report = deployment.doctor(config)
    assert _problems(report) == {f"member-role:{members[2]}", "member-roles"}
    (line,) = [c for c in report.checks if c.check == "member-roles"]
    assert line.detail == f"1 of 4 account(s) cannot be reached: {members[2]}"  # 3 members and the management
    (missing,) = [c for c in report.checks if c.check == f"member-role:{members[2]}"]
    assert f"the role FleetWarden does not exist in account {members[2]}" in missing.detail
