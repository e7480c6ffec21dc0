"""The rendered templates deployed with moto's CloudFormation: what each stack creates, and that it works.

moto creates nearly every resource type of both templates (IAM roles, DynamoDB table, SNS topic, KMS key and
alias, S3 bucket, Lambda functions and permissions, log groups, EventBridge rules, the Step Functions state
machines). What it ignores, so these tests do not check it: the table's TimeToLiveSpecification and
PointInTimeRecoverySpecification, the state machines' DefinitionSubstitutions (a definition keeps
`${FleetwardenFunctionArn}`), the bucket's lifecycle rule, public access block and ownership controls, and every IAM
condition (trust is not enforced). Two resource types it does not create at all (it warns and goes on):
`AWS::CloudWatch::Alarm` and `AWS::S3::BucketPolicy`; tests/unit/test_deploy.py checks those (the alarms against the
EMF the functions write, the policy's TLS-only deny). It also keeps an inline role policy made by CloudFormation as
a Python repr string (see `_inline_policy`).
"""

from __future__ import annotations

import ast
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fleetwarden import deploy
from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.config_source import load_config_from
from fleetwarden.deploy import load_state_machine, render
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.handoff import ORG_RUN_ARN_ENV, SHARD_ABOVE_ENV, hand_off
from fleetwarden.permissions import policy_documents
from fleetwarden.state import open_store
from fleetwarden.state.dynamodb import TTL_ATTRIBUTE

REGION = "us-east-1"
HUB = "123456789012"  # moto's default account: where the tests' own credentials act
MEMBERS = ("210987654321", "333333333333")
EXTERNAL_ID = "fleetwarden-test-external-id"
# moto warns for the resource types it does not create (the alarms, the bucket policy): see the docstring.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Tried to parse AWS.{2}(CloudWatch.{2}Alarm|S3.{2}BucketPolicy) but it's not supported:UserWarning"
)
SHARD_ABOVE = 2  # the stack's ShardAboveAccounts in these tests: a 3-account organization is handed off


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
            {
                "CodeBucket": "fleetwarden-artifacts",
                "ConfigReference": "s3://fleetwarden-artifacts/fleetwarden.yaml",
                "ShardAboveAccounts": str(SHARD_ABOVE),
            }
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
        # The hand-off: the ARN built from the state machine's name is the ARN of the state machine the stack made.
        # (moto keeps a Number parameter's value as a number here; Lambda's variables are always strings)
        assert str(config["Environment"]["Variables"][SHARD_ABOVE_ENV]) == str(SHARD_ABOVE)
        assert config["Environment"]["Variables"][ORG_RUN_ARN_ENV] == hub_stack["OrgRunStateMachineArn"]
    # EventBridge may invoke each function, from its rules only.
    policy = json.loads(lam.get_policy(FunctionName="fleetwarden")["Policy"])
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {"events.amazonaws.com"}
    # audit, compliance report, spend report, prices refresh, SSM association changes, launches
    assert len(policy["Statement"]) == 6

    iam = factory.client("iam", region=REGION)
    role_name = hub_stack["FunctionRoleArn"].rsplit("/", 1)[1]
    hub_policy = _inline_policy(iam, role_name, "fleetwarden-hub")
    wide = set(policy_documents()["hub"]["Statement"][0]["Action"]) - set(deploy.NARROWED_IN_STACK)
    assert set(hub_policy["Statement"][0]["Action"]) == wide
    # The config object (ConfigReference is s3:// here) and the hub account's parameters, as CloudFormation made them.
    stack_policy = _inline_policy(iam, role_name, "fleetwarden-hub-stack")
    granted: dict[str, list[Any]] = {}
    for statement in stack_policy["Statement"]:
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            granted.setdefault(action, []).append(statement["Resource"])
    assert "arn:aws:s3:::fleetwarden-artifacts/fleetwarden.yaml" in granted["s3:GetObject"], granted
    account = hub_stack["FunctionRoleArn"].split(":")[4]
    assert granted["ssm:GetParameter"] == [f"arn:aws:ssm:*:{account}:parameter/*"]


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


def _resources(statement: dict[str, Any]) -> list[str]:
    value = statement["Resource"]
    return [value] if isinstance(value, str) else list(value)


def _grants(document: dict[str, Any], action: str) -> list[str]:
    """The resources of every statement of `document` that allows `action`."""
    found: list[str] = []
    for statement in document["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        if action in actions:
            found += _resources(statement)
    return found


def test_hub_stack_creates_the_run_bucket_and_the_org_run(hub_stack: dict[str, str], factory: SessionFactory) -> None:
    bucket = hub_stack["RunBucketName"]
    s3 = factory.client("s3", region=REGION)
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    sfn = factory.client("stepfunctions", region=REGION)
    machine = sfn.describe_state_machine(stateMachineArn=hub_stack["OrgRunStateMachineArn"])
    assert machine["name"] == "fleetwarden-org-run"
    assert json.loads(machine["definition"]) == load_state_machine(name="org-run")  # the file at render time
    function_arn = hub_stack["FunctionArn"]
    iam = factory.client("iam", region=REGION)
    role = _inline_policy(iam, machine["roleArn"].rsplit("/", 1)[1], "fleetwarden-org-run")
    assert function_arn in _grants(role, "lambda:InvokeFunction")
    assert _grants(role, "s3:GetObject") == [
        f"arn:aws:s3:::{bucket}/runs/*",
        f"arn:aws:s3:::{bucket}/runs/map-results/*",
    ]
    assert f"arn:aws:s3:::{bucket}/runs/map-results/*" in _grants(role, "s3:PutObject")
    assert _grants(role, "states:StartExecution") == [hub_stack["OrgRunStateMachineArn"]]
    executions = hub_stack["OrgRunStateMachineArn"].replace(":stateMachine:", ":execution:")
    assert set(_grants(role, "states:StopExecution")) == {f"{executions}/*", f"{executions}:*"}

    # The functions' grants on the stack's own resources, resolved to what the stack made.
    stack = _inline_policy(iam, hub_stack["FunctionRoleArn"].rsplit("/", 1)[1], "fleetwarden-hub-stack")
    assert _grants(stack, "s3:PutObject") == [f"arn:aws:s3:::{bucket}/runs/*"]
    assert _grants(stack, "s3:ListBucket") == [f"arn:aws:s3:::{bucket}"]
    assert _grants(stack, "states:StartExecution") == [hub_stack["OrgRunStateMachineArn"]]
    assert _grants(stack, "kms:GenerateDataKey") == [hub_stack["AlertsKeyArn"]]


def test_hub_stack_encrypts_the_alerts_topic_with_its_key(hub_stack: dict[str, str], factory: SessionFactory) -> None:
    """The key, its alias and the topic's key. moto cannot serve a key made by CloudFormation beyond listing it: its
    KMS checks the stored key policy as a JSON string on every call on the key (DescribeKey, GetKeyRotationStatus,
    GetKeyPolicy), and CloudFormation hands it the policy as an object; the unit tests check rotation and policy."""
    kms = factory.client("kms", region=REGION)
    key_id = hub_stack["AlertsKeyArn"].rsplit("/", 1)[1]
    assert hub_stack["AlertsKeyArn"] == f"arn:aws:kms:{REGION}:{HUB}:key/{key_id}"
    assert key_id in {k["KeyId"] for k in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/fleetwarden-alerts"] == key_id
    topic = factory.client("sns", region=REGION).get_topic_attributes(TopicArn=hub_stack["AlertsTopicArn"])
    assert topic["Attributes"]["KmsMasterKeyId"] == key_id


def test_the_stacks_functions_hand_a_large_run_off_to_the_stacks_org_run(
    hub_stack: dict[str, str], aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    """With the environment the stack gives the functions, a run over ShardAboveAccounts starts an execution of
    the stack's own org-run state machine."""
    config_path = tmp_path / "fleetwarden.yaml"
    accounts = [
        {"id": f"{400000000000 + n:012d}", "role_arn": f"arn:aws:iam::{400000000000 + n:012d}:role/FW"}
        for n in range(SHARD_ABOVE + 1)
    ]
    config_path.write_text(json.dumps({"aws": {"endpoint_url": aws.url}, "accounts": accounts, "regions": [REGION]}))
    config = load_config_from(str(config_path))
    lam = factory.client("lambda", region=REGION)
    variables = lam.get_function_configuration(FunctionName="fleetwarden-guard")["Environment"]["Variables"]
    # As Lambda sets them: strings (moto keeps the Number parameter's value as a number).
    result = hand_off({"action": "guard", "apply": True}, config, factory, {k: str(v) for k, v in variables.items()})
    assert result is not None and result["status"] == "handed-off", result
    sfn = factory.client("stepfunctions", region=REGION)
    (execution,) = sfn.list_executions(stateMachineArn=hub_stack["OrgRunStateMachineArn"])["executions"]
    assert execution["executionArn"] == result["execution_arn"]
    described = sfn.describe_execution(executionArn=result["execution_arn"])
    assert json.loads(described["input"]) == {"event": {"action": "guard", "apply": True}}
