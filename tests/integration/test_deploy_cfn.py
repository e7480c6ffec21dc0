"""The rendered templates deployed with moto's CloudFormation: what each stack creates, and that it works.

moto creates every resource type of both templates (IAM roles, DynamoDB table, SNS topic, Lambda functions and
permissions, log groups, EventBridge rules, the Step Functions state machine). What it ignores, so these tests
do not check it: the table's TimeToLiveSpecification and PointInTimeRecoverySpecification, the state
machine's DefinitionSubstitutions (the definition keeps `${FleetwardenFunctionArn}`), and every IAM condition
(trust is not enforced). It also keeps an inline role policy made by CloudFormation as a Python repr string
(see `_inline_policy`).
"""

from __future__ import annotations

import ast
import io
import json
import zipfile
from typing import Any

import pytest

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.deploy import render
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.permissions import policy_documents
from fleetwarden.state import open_store
from fleetwarden.state.dynamodb import TTL_ATTRIBUTE

REGION = "us-east-1"
HUB = "123456789012"  # moto's default account: where the tests' own credentials act
MEMBERS = ("210987654321", "333333333333")
EXTERNAL_ID = "fleetwarden-test-external-id"


def _member_actions() -> set[str]:
    return set(policy_documents()["member_role"]["Statement"][0]["Action"])


def _parameters(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _outputs(cfn: Any, stack: str) -> dict[str, str]:
    (described,) = cfn.describe_stacks(StackName=stack)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE", described
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def _inline_policy(iam: Any, role_name: str, policy_name: str) -> dict[str, Any]:
    """A role's inline policy document. moto keeps one made by CloudFormation as the Python repr of the dict
    (`{'Version': ...}`), not JSON, and returns that string; AWS returns the JSON document (boto3 decodes it)."""
    document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(document, str):
        parsed: dict[str, Any] = ast.literal_eval(document)
        return parsed
    return dict(document)


def _check_member_role(iam: Any, role_name: str = "FleetWarden") -> None:
    role = iam.get_role(RoleName=role_name)["Role"]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{HUB}:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
    assert iam.list_role_policies(RoleName=role_name)["PolicyNames"] == ["fleetwarden-member"]
    policy = _inline_policy(iam, role_name, "fleetwarden-member")
    assert set(policy["Statement"][0]["Action"]) == _member_actions()


def test_member_role_stack_creates_the_role(aws: EmulatorServer, factory: SessionFactory) -> None:
    cfn = factory.client("cloudformation", region=REGION)
    cfn.create_stack(
        StackName="fleetwarden-member",
        TemplateBody=render("member"),
        Parameters=_parameters({"HubAccountId": HUB, "ExternalId": EXTERNAL_ID}),
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    outputs = _outputs(cfn, "fleetwarden-member")
    assert outputs["RoleArn"] == f"arn:aws:iam::{HUB}:role/FleetWarden"
    _check_member_role(factory.client("iam", region=REGION))


def test_member_role_stackset_reaches_every_member(aws: EmulatorServer, factory: SessionFactory) -> None:
    """Deployed as a (self-managed) StackSet: each member gets the role, and the hub can work through it."""
    cfn = factory.client("cloudformation", region=REGION)
    cfn.create_stack_set(
        StackSetName="fleetwarden-member",
        TemplateBody=render("member"),
        Parameters=_parameters({"HubAccountId": HUB, "ExternalId": EXTERNAL_ID}),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        PermissionModel="SELF_MANAGED",
    )
    cfn.create_stack_instances(StackSetName="fleetwarden-member", Accounts=list(MEMBERS), Regions=[REGION])
    for account in MEMBERS:
        role_arn = f"arn:aws:iam::{account}:role/FleetWarden"
        factory.register_account(AccountAccess(account, role_arn=role_arn, external_id=EXTERNAL_ID))
        assert factory.client("sts", region=REGION, account_id=account).get_caller_identity()["Account"] == account
        _check_member_role(factory.client("iam", region=REGION, account_id=account))
    # The role is only in the members, not in the hub account that holds the StackSet.
    iam = factory.client("iam", region=REGION)
    assert "FleetWarden" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}


def _lambda_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fleetwarden/__init__.py", "")
    return buffer.getvalue()


@pytest.fixture
def hub_stack(aws: EmulatorServer, factory: SessionFactory) -> dict[str, str]:
    """The hub stack created from the rendered template, with a (tiny) Lambda package in S3; its outputs."""
    s3 = factory.client("s3", region=REGION)
    s3.create_bucket(Bucket="fleetwarden-artifacts")
    s3.put_object(Bucket="fleetwarden-artifacts", Key="fleetwarden-lambda.zip", Body=_lambda_zip())
    cfn = factory.client("cloudformation", region=REGION)
    cfn.create_stack(
        StackName="fleetwarden-hub",
        TemplateBody=render("hub"),
        Parameters=_parameters(
            {"CodeBucket": "fleetwarden-artifacts", "ConfigReference": "s3://fleetwarden-artifacts/fleetwarden.yaml"}
        ),
        Capabilities=["CAPABILITY_IAM"],
    )
    return _outputs(cfn, "fleetwarden-hub")


def test_hub_stack_creates_table_topic_and_functions(hub_stack: dict[str, str], factory: SessionFactory) -> None:
    assert hub_stack["StateUrl"] == f"dynamodb://fleetwarden-state?region={REGION}"
    table = factory.client("dynamodb", region=REGION).describe_table(TableName="fleetwarden-state")["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    sns = factory.client("sns", region=REGION)
    assert hub_stack["AlertsTopicArn"] == f"arn:aws:sns:{REGION}:{HUB}:fleetwarden-alerts"
    assert hub_stack["AlertsTopicArn"] in {t["TopicArn"] for t in sns.list_topics()["Topics"]}

    lam = factory.client("lambda", region=REGION)
    guard = lam.get_function(FunctionName="fleetwarden-guard")
    assert guard["Concurrency"] == {"ReservedConcurrentExecutions": 1}
    worker = lam.get_function(FunctionName="fleetwarden")["Configuration"]
    for config in (guard["Configuration"], worker):
        assert config["Handler"] == "fleetwarden.lambda_handler.handler"
        assert config["Timeout"] == 900
        assert config["Role"] == hub_stack["FunctionRoleArn"]
        assert config["Environment"]["Variables"]["FLEETWARDEN_CONFIG"] == "s3://fleetwarden-artifacts/fleetwarden.yaml"
        assert config["Environment"]["Variables"]["FLEETWARDEN_DISABLED"] == "false"
    # EventBridge may invoke each function, from its rules only.
    policy = json.loads(lam.get_policy(FunctionName="fleetwarden")["Policy"])
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {"events.amazonaws.com"}
    assert len(policy["Statement"]) == 3  # audit, compliance report, SSM association changes

    iam = factory.client("iam", region=REGION)
    role_name = hub_stack["FunctionRoleArn"].rsplit("/", 1)[1]
    hub_policy = _inline_policy(iam, role_name, "fleetwarden-hub")
    assert set(hub_policy["Statement"][0]["Action"]) == set(policy_documents()["hub"]["Statement"][0]["Action"])


def test_hub_stack_rules_and_state_machine(hub_stack: dict[str, str], factory: SessionFactory) -> None:
    events = factory.client("events", region=REGION)
    inputs: dict[str, Any] = {}
    for rule in events.list_rules()["Rules"]:
        (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        key = rule.get("ScheduleExpression") or rule["EventPattern"]
        inputs[key] = (target["Arn"].rsplit(":", 1)[1], json.loads(target["Input"]) if "Input" in target else None)
    assert inputs["rate(5 minutes)"] == ("fleetwarden-guard", {"action": "guard", "apply": True})
    assert inputs["cron(0 6 * * ? *)"] == ("fleetwarden", {"action": "audit"})
    assert inputs["cron(0 7 1 * ? *)"] == ("fleetwarden", {"action": "compliance-report"})
    ssm_pattern = json.dumps({"source": ["aws.ssm"], "detail-type": ["EC2 State Manager Association State Change"]})
    assert inputs[ssm_pattern] == ("fleetwarden", None)
    weekly = next(k for k in inputs if k.startswith("cron(") and "SUN" in k)
    assert inputs[weekly][0] == "fleetwarden-scan-window"

    sfn = factory.client("stepfunctions", region=REGION)
    machine = sfn.describe_state_machine(stateMachineArn=hub_stack["ScanWindowStateMachineArn"])
    assert machine["name"] == "fleetwarden-scan-window"
    assert "States" in json.loads(machine["definition"])


def test_state_store_works_on_the_stacks_table(hub_stack: dict[str, str], factory: SessionFactory) -> None:
    """The StateUrl output is a working `state:` value; `state init` on the stack's table only adds TTL."""
    store = open_store(hub_stack["StateUrl"], factory)  # checks that the table exists
    store.init()
    ttl = factory.client("dynamodb", region=REGION).describe_time_to_live(TableName="fleetwarden-state")
    assert ttl["TimeToLiveDescription"]["AttributeName"] == TTL_ATTRIBUTE
    assert store.put_record("probe", "deploy", {"ok": True}, expected_version=None) == 1
    assert store.get_record("probe", "deploy") == ({"ok": True}, 1)
    store.close()
