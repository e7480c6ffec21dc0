"""The deploy templates: in step with the permission declarations, the state store and the Lambda events."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner

from fleetwarden import deploy
from fleetwarden.aws.session import SessionFactory
from fleetwarden.cli import main
from fleetwarden.events import parse_event
from fleetwarden.permissions import policy_documents
from fleetwarden.state.dynamodb import TTL_ATTRIBUTE, DynamoDbStore

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
PSEUDO = {"AWS::Partition", "AWS::Region", "AWS::AccountId", "AWS::StackName", "AWS::URLSuffix", "AWS::NoValue"}


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return deploy.member_role_template()


@pytest.fixture(scope="module")
def hub() -> dict[str, Any]:
    return deploy.template("hub")


def _actions(document: dict[str, Any]) -> set[str]:
    actions: set[str] = set()
    for statement in document["Statement"]:
        if "Fn::If" in statement:  # a statement kept only under a condition: its "true" branch
            statement = statement["Fn::If"][1]
        value = statement["Action"]
        actions.update([value] if isinstance(value, str) else value)
    return actions


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _policy(resource: dict[str, Any], name: str) -> dict[str, Any]:
    policies = {p["PolicyName"]: p["PolicyDocument"] for p in resource["Properties"]["Policies"]}
    return policies[name]


# -- the checked-in files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", deploy.KINDS)
def test_checked_in_template_is_current(kind: str) -> None:
    path = ROOT / deploy.TEMPLATE_FILES[kind]
    command = deploy.REGENERATE.format(kind=kind, path=deploy.TEMPLATE_FILES[kind])
    assert path.is_file(), f"{path} is missing: run `{command}`"
    assert path.read_text() == deploy.render(kind), (
        f"{deploy.TEMPLATE_FILES[kind]} is out of step with the code's declarations: run `{command}` and commit it"
    )


def test_cli_renders_the_same_yaml() -> None:
    result = CliRunner().invoke(main, ["deploy", "render", "--kind", "member"])
    assert result.exit_code == 0, result.output
    assert result.output == deploy.render("member")


def test_unknown_kind_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["deploy", "render", "--kind", "spoke"])
    assert result.exit_code == 2


# -- member role -----------------------------------------------------------------------------------------------
def test_member_role_has_every_member_action(member: dict[str, Any]) -> None:
    (role,) = _of_type(member, "AWS::IAM::Role").values()
    granted = _actions(_policy(role, "fleetwarden-member"))
    assert _actions(policy_documents()["member_role"]) <= granted
    assert granted == _actions(policy_documents()["member_role"])  # and nothing more


def test_member_role_trusts_the_hub_account_with_the_external_id(member: dict[str, Any]) -> None:
    (role,) = _of_type(member, "AWS::IAM::Role").values()
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRole"
    assert "${HubAccountId}" in statement["Principal"]["AWS"]["Fn::Sub"]
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    assert member["Parameters"]["ExternalId"]["NoEcho"] is True
    assert member["Parameters"]["RoleName"]["Default"] == "FleetWarden"
    assert deploy.member_role_template("Custom")["Parameters"]["RoleName"]["Default"] == "Custom"


# -- hub -------------------------------------------------------------------------------------------------------
def test_hub_role_has_the_hub_actions_and_logs(hub: dict[str, Any]) -> None:
    role = hub["Resources"]["FunctionRole"]
    # What the hub policy grants on "*" for the stack's own resources is granted on them instead.
    wide = {a for st in policy_documents()["hub"]["Statement"] if st["Resource"] == "*" for a in st["Action"]}
    narrowed = wide & set(deploy.NARROWED_IN_STACK)
    assert narrowed == set(deploy.NARROWED_IN_STACK)
    assert _actions(_policy(role, "fleetwarden-hub")) == _actions(policy_documents()["hub"]) - narrowed
    assert narrowed <= _actions(_policy(role, "fleetwarden-hub-stack"))
    for statement in _policy(role, "fleetwarden-hub")["Statement"]:
        assert not (set(statement["Action"]) & narrowed and statement["Resource"] == "*"), statement
    assert {"sts:AssumeRole", "dynamodb:PutItem", "sns:Publish"} <= _actions(_policy(role, "fleetwarden-hub"))
    assert {"logs:CreateLogStream", "logs:PutLogEvents"} <= _actions(_policy(role, "fleetwarden-logs"))
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"
    }


class _OneClient:
    """Hands DynamoDbStore the stubbed client, in place of a SessionFactory."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self, service: str, region: str) -> Any:
        return self._client


def test_table_matches_what_state_init_creates(hub: dict[str, Any]) -> None:
    """Stub DynamoDB and let `DynamoDbStore.init()` create the table: the stub accepts only the template's schema."""
    table = hub["Resources"]["StateTable"]["Properties"]
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    name = "fleetwarden-state"
    with Stubber(client) as stub:
        stub.add_client_error("describe_table", "ResourceNotFoundException", expected_params={"TableName": name})
        stub.add_response(
            "create_table",
            {},
            expected_params={
                "TableName": name,
                "AttributeDefinitions": table["AttributeDefinitions"],
                "KeySchema": table["KeySchema"],
                "BillingMode": table["BillingMode"],
            },
        )
        stub.add_response("describe_table", {"Table": {"TableStatus": "ACTIVE"}}, {"TableName": name})
        stub.add_response("describe_time_to_live", {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}})
        stub.add_response(
            "update_time_to_live",
            {},
            {"TableName": name, "TimeToLiveSpecification": {"Enabled": True, **_ttl(table)}},
        )
        DynamoDbStore(name, "us-east-1", cast(SessionFactory, _OneClient(client))).init()
        stub.assert_no_pending_responses()
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def _ttl(table: dict[str, Any]) -> dict[str, str]:
    return {"AttributeName": table["TimeToLiveSpecification"]["AttributeName"]}


def test_functions(hub: dict[str, Any]) -> None:
    functions = _of_type(hub, "AWS::Lambda::Function")
    assert set(functions) == {"Function", "GuardFunction"}
    for function in functions.values():
        props = function["Properties"]
        assert props["Handler"] == "fleetwarden.lambda_handler.handler"
        major, minor = (int(n) for n in props["Runtime"].removeprefix("python").split("."))
        assert (major, minor) >= (3, 11)
        assert props["Timeout"] == 900
        assert props["Code"] == {"S3Bucket": {"Ref": "CodeBucket"}, "S3Key": {"Ref": "CodeKey"}}
        assert props["Environment"]["Variables"]["FLEETWARDEN_CONFIG"] == {"Ref": "ConfigReference"}
        assert props["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}
    assert functions["GuardFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1
    assert "ReservedConcurrentExecutions" not in functions["Function"]["Properties"]
    pattern = hub["Parameters"]["ConfigReference"]["AllowedPattern"]
    assert re.match(pattern, "s3://bucket/fleetwarden.yaml") and re.match(pattern, "ssm:/fleetwarden/config")
    assert not re.match(pattern, "fleetwarden.yaml")


def _matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge matching for the flat patterns the template uses (each key: a list of accepted values)."""
    return all(event.get(key) in accepted for key, accepted in pattern.items())


def test_rules_deliver_events_the_handler_accepts(hub: dict[str, Any]) -> None:
    rules = _of_type(hub, "AWS::Events::Rule")
    routed: dict[str, tuple[str, bool | None, str]] = {}
    for name, rule in rules.items():
        (target,) = rule["Properties"]["Targets"]
        target_resource = target["Arn"].get("Fn::GetAtt", [target["Arn"].get("Ref")])[0]
        if "Input" in target and target_resource in ("Function", "GuardFunction"):
            parsed = parse_event(json.loads(target["Input"]))
            routed[name] = (parsed.action, parsed.apply, target_resource)
    assert routed == {
        "GuardScheduleRule": ("guard", True, "GuardFunction"),
        "AuditScheduleRule": ("audit", None, "Function"),
        "ComplianceReportScheduleRule": ("compliance-report", None, "Function"),
        "SpendReportScheduleRule": ("spend-report", None, "Function"),
        "PricesRefreshScheduleRule": ("prices-refresh", True, "Function"),
    }
    assert rules["GuardScheduleRule"]["Properties"]["ScheduleExpression"] == {"Ref": "GuardSchedule"}
    assert hub["Parameters"]["GuardSchedule"]["Default"] == "rate(5 minutes)"
    # The SSM rule delivers AWS's own event: the sample association event matches it and means compliance-sync.
    sync = rules["ComplianceSyncRule"]["Properties"]
    sample = json.loads((EVENTS / "ssm_association_matching.json").read_text())
    assert _matches(sync["EventPattern"], sample)
    assert parse_event(sample).action == "compliance-sync"
    assert sync["Targets"][0]["Arn"] == {"Fn::GetAtt": ["Function", "Arn"]}


def test_every_rule_that_invokes_a_function_has_a_permission(hub: dict[str, Any]) -> None:
    permissions = {
        (p["Properties"]["FunctionName"]["Fn::GetAtt"][0], p["Properties"]["SourceArn"]["Fn::GetAtt"][0])
        for p in _of_type(hub, "AWS::Lambda::Permission").values()
    }
    for name, rule in _of_type(hub, "AWS::Events::Rule").items():
        for target in rule["Properties"]["Targets"]:
            if "Fn::GetAtt" in target["Arn"]:
                assert (target["Arn"]["Fn::GetAtt"][0], name) in permissions, name
    for permission in _of_type(hub, "AWS::Lambda::Permission").values():
        assert permission["Properties"]["Principal"] == "events.amazonaws.com"


def test_state_machine_uses_the_asl_file_and_can_invoke_the_function(hub: dict[str, Any]) -> None:
    machine = hub["Resources"]["ScanWindowStateMachine"]["Properties"]
    assert json.loads(machine["DefinitionString"]) == deploy.load_state_machine()
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", machine["DefinitionString"]))
    assert used <= set(machine["DefinitionSubstitutions"]), "a ${...} of the ASL has no substitution"
    assert machine["DefinitionSubstitutions"][deploy.FUNCTION_ARN_SUBSTITUTION] == {"Fn::GetAtt": ["Function", "Arn"]}
    role = hub["Resources"][machine["RoleArn"]["Fn::GetAtt"][0]]
    (statement,) = _policy(role, "fleetwarden-invoke")["Statement"]
    assert statement["Action"] == ["lambda:InvokeFunction"]
    assert {"Fn::GetAtt": ["Function", "Arn"]} in statement["Resource"]
    schedule = hub["Resources"]["ScanWindowScheduleRule"]["Properties"]
    (target,) = schedule["Targets"]
    assert target["Arn"] == {"Ref": "ScanWindowStateMachine"}
    start = _policy(hub["Resources"][target["RoleArn"]["Fn::GetAtt"][0]], "fleetwarden-start")
    assert _actions(start) == {"states:StartExecution"}


def _references(value: Any) -> set[str]:
    """Every name a template refers to: Ref, Fn::GetAtt and ${...} in Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0])
            elif key == "Fn::Sub":
                found.update(n.split(".")[0] for n in re.findall(r"\$\{([^}!]+)\}", inner))
            else:
                found |= _references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _references(inner)
    return found


@pytest.mark.parametrize("kind", deploy.KINDS)
def test_every_reference_resolves(kind: str) -> None:
    template = deploy.template(kind)
    known = set(template["Parameters"]) | set(template["Resources"]) | PSEUDO
    for section in ("Resources", "Outputs"):
        # The state machine definition's own ${...} are DefinitionSubstitutions, not Fn::Sub variables.
        assert _references(template[section]) <= known, section
    for name, resource in template["Resources"].items():
        for dependency in resource.get("DependsOn", []):
            assert dependency in template["Resources"], name


def test_billing_role_holds_exactly_the_spend_sources_permissions() -> None:
    from fleetwarden.permissions import policy_documents

    template = deploy.template("billing")
    policy = template["Resources"]["FleetWardenRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    assert policy == policy_documents()["billing_role"]
    actions = set(policy["Statement"][0]["Action"])
    assert {"ce:GetCostAndUsage", "cloudwatch:GetMetricData", "s3:GetObject"} <= actions
    assert not any(a.startswith("ec2:") for a in actions)  # nothing that could touch a fleet


def test_templates_from_a_report_only_config_grant_no_write() -> None:
    """The builders take the config (`deploy render --config` passes it): a report-only audit, read-only role."""
    from fleetwarden.config.loader import parse_config
    from fleetwarden.permissions import is_read_only

    config = parse_config('accounts: [{id: "111111111111", role_arn: "arn:aws:iam::111111111111:role/FW"}]\n', "t")
    for template in (deploy.member_role_template(config=config), deploy.member_role_template(tier="read-only")):
        (role,) = _of_type(template, "AWS::IAM::Role").values()
        granted = _actions(_policy(role, "fleetwarden-member"))
        assert granted and all(is_read_only(a) for a in granted), sorted(granted)
        known = set(template["Parameters"]) | set(template["Resources"]) | PSEUDO
        assert _references(template["Resources"]) <= known
    hub = deploy.hub_template(deploy.load_state_machine(), config=config)
    hub_policy = _policy(hub["Resources"]["FunctionRole"], "fleetwarden-hub")
    assert hub_policy == deploy._hub_policy(config)
    assert _actions(hub_policy) == _actions(policy_documents(config)["hub"]) - set(deploy.NARROWED_IN_STACK)
    assert not any(a.startswith(("ec2:", "iam:", "autoscaling:")) for a in _actions(hub_policy))


def test_deploy_render_from_config_grants_only_what_the_config_enables(tmp_path: Path) -> None:
    config = tmp_path / "fleetwarden.yaml"
    config.write_text(
        'accounts: [{id: "111111111111", role_arn: "arn:aws:iam::111111111111:role/FleetWarden"}]\n'
        "regions: [us-east-1]\naudit: {required_tags: [owner], action: report}\n"
    )
    runner = CliRunner()
    derived = runner.invoke(main, ["--config", str(config), "deploy", "render", "--kind", "member", "--from-config"])
    assert derived.exit_code == 0, derived.output
    actions = set(re.findall(r"- ((?:ec2|iam|autoscaling|ssm|inspector2|securityhub):[A-Za-z*]+)", derived.output))
    assert actions and all(a.split(":")[1].startswith(("Describe", "List", "Get")) for a in actions), actions
    assert "--from-config" in derived.output.splitlines()[0]  # the header says how to make it again
    # Without --from-config: the checked-in template (every feature), unchanged.
    full = runner.invoke(main, ["deploy", "render", "--kind", "member"])
    assert full.exit_code == 0 and "ec2:StopInstances" in full.output and "ec2:StopInstances" not in derived.output
    read_only = runner.invoke(main, ["deploy", "render", "--kind", "member", "--tier", "read-only"])
    assert read_only.exit_code == 0 and "ec2:StopInstances" not in read_only.output


# -- the org-run, its bucket, the hand-off, the alerts key and the alarms ------------------------------------------
def _statements(resource: dict[str, Any], policy: str) -> list[dict[str, Any]]:
    return list(_policy(resource, policy)["Statement"])


def _sub_text(value: Any) -> str:
    """The text of an `Fn::Sub` (or a plain string), to compare ARNs built from names."""
    return str(value["Fn::Sub"]) if isinstance(value, dict) and "Fn::Sub" in value else str(value)


def _resources(statement: dict[str, Any]) -> list[str]:
    """A statement's resources as text: `Fn::Sub` as written, `Fn::GetAtt: [R, Arn]` as `${R.Arn}`."""
    value = statement["Resource"]
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, dict) and "Fn::GetAtt" in v:
            resource, attribute = v["Fn::GetAtt"]
            out.append(f"${{{resource}.{attribute}}}")
        else:
            out.append(_sub_text(v))
    return out


def _granted(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """True when a statement allows `action` on `resource` (IAM wildcards in the statement's resources)."""
    from fnmatch import fnmatchcase

    for statement in statements:
        if "Fn::If" in statement:  # a statement kept only under a condition: its "true" branch
            statement = statement["Fn::If"][1]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if any(fnmatchcase(action, a) for a in actions) and any(
            fnmatchcase(resource, r) for r in _resources(statement)
        ):
            return True
    return False


def test_functions_hand_off_to_the_org_run_over_shard_above_accounts(hub: dict[str, Any]) -> None:
    from fleetwarden.handoff import ORG_RUN_ARN_ENV, PERMISSIONS, SHARD_ABOVE_ENV

    machine = hub["Resources"]["OrgRunStateMachine"]["Properties"]
    for function in _of_type(hub, "AWS::Lambda::Function").values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables[SHARD_ABOVE_ENV] == {"Ref": "ShardAboveAccounts"}
        # The ARN is built from the state machine's own name (a Ref would be a circular dependency).
        arn = _sub_text(variables[ORG_RUN_ARN_ENV])
        assert arn.endswith(":stateMachine:" + _sub_text(machine["StateMachineName"]))
        assert arn.startswith("arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:")
    assert hub["Parameters"]["ShardAboveAccounts"]["Default"] == 200
    assert hub["Parameters"]["ShardAboveAccounts"]["MinValue"] == 0
    stack = _statements(hub["Resources"]["FunctionRole"], "fleetwarden-hub-stack")
    for action in PERMISSIONS:
        assert _granted(stack, action, deploy.ORG_RUN_ARN), action
    assert not _granted(stack, "states:StartExecution", "${ScanWindowStateMachine}")


def test_run_bucket_is_private_encrypted_tls_only_and_expires_runs(hub: dict[str, Any]) -> None:
    from fleetwarden.workflows.shards import PERMISSIONS as SHARD_ACTIONS

    bucket = hub["Resources"]["RunBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    props = bucket["Properties"]
    (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled" and rule["Prefix"] == "runs/"
    assert rule["ExpirationInDays"] == {"Ref": "RunRetentionDays"}
    policy = hub["Resources"]["RunBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "RunBucket"}
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(_resources(deny)) == {"${RunBucket.Arn}", "${RunBucket.Arn}/*"}
    # The functions write and read the org-run's files (workflows.shards' declaration) in the bucket, under runs/.
    stack = _statements(hub["Resources"]["FunctionRole"], "fleetwarden-hub-stack")
    for action in set(SHARD_ACTIONS) - {"s3:ListBucket"}:
        assert _granted(stack, action, "${RunBucket.Arn}/runs/r1/fragments/00001.json"), action
        assert not _granted(stack, action, "${RunBucket.Arn}/other/key"), action
    (listing,) = [s for s in stack if s.get("Action") == ["s3:ListBucket"]]
    assert _resources(listing) == ["${RunBucket.Arn}"]
    # Unconditioned: a GetObject of a missing key is a 404 (not written yet), not a 403, only with s3:ListBucket,
    # and S3 checks that without a prefix to match a condition on.
    assert "Condition" not in listing
    assert hub["Outputs"]["RunBucketName"]["Value"] == {"Ref": "RunBucket"}


def test_the_bucket_key_and_org_run_grants_are_in_a_template_from_a_config_too() -> None:
    """A config-derived hub policy has no shard, hand-off or key actions: the stack policy carries them."""
    from fleetwarden.config.loader import parse_config

    config = parse_config('accounts: [{id: "111111111111", role_arn: "arn:aws:iam::111111111111:role/FW"}]\n', "t")
    template = deploy.hub_template(deploy.load_state_machine(), config=config)
    hub_actions = _actions(_policy(template["Resources"]["FunctionRole"], "fleetwarden-hub"))
    assert "states:StartExecution" not in hub_actions
    stack = _statements(template["Resources"]["FunctionRole"], "fleetwarden-hub-stack")
    assert _granted(stack, "states:StartExecution", deploy.ORG_RUN_ARN)
    assert _granted(stack, "s3:PutObject", "${RunBucket.Arn}/runs/x/report.json")
    assert _granted(stack, "kms:GenerateDataKey", "${AlertsKey.Arn}")


def _asl_states(states: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for state in states.values():
        out.append(state)
        for inner in (state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])):
            if inner:
                out += _asl_states(inner["States"])
    return out


def _check_org_run_role(template: dict[str, Any], definition: dict[str, Any]) -> None:
    """Walk the ASL: each state's AWS work is allowed to the state machine's role, on exactly its resources."""
    machine = template["Resources"]["OrgRunStateMachine"]["Properties"]
    role = template["Resources"][machine["RoleArn"]["Fn::GetAtt"][0]]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "states.amazonaws.com"
    }
    granted = _statements(role, "fleetwarden-org-run")
    function = "${" + deploy.FUNCTION_ARN_SUBSTITUTION + "}"
    bucket = "${RunBucket.Arn}"
    own = deploy.ORG_RUN_ARN
    executions = own.replace(":stateMachine:", ":execution:")
    for state in _asl_states(definition["States"]):
        if state["Type"] == "Task":
            assert state["Resource"] == function, state
            assert _granted(granted, "lambda:InvokeFunction", "${Function.Arn}")
        if state["Type"] != "Map":
            continue
        if state.get("ItemReader"):
            assert state["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
            assert _granted(granted, "s3:GetObject", f"{bucket}/runs/RUN/items.json")
        if state.get("ResultWriter"):
            prefix = state["ResultWriter"]["Parameters"]["Prefix"]
            assert state["ResultWriter"]["Parameters"]["Bucket"] == "${" + deploy.RUN_BUCKET_SUBSTITUTION + "}"
            for action in ("s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"):
                assert _granted(granted, action, f"{bucket}/{prefix}/0a1b/manifest.json"), (prefix, action)
        if state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED":
            # A Distributed Map runs its iterations as child executions of the state machine itself.
            assert _granted(granted, "states:StartExecution", own)
            for action in ("states:DescribeExecution", "states:StopExecution"):
                assert _granted(granted, action, f"{executions}/Shards:0a1b"), action
    # Nothing else: no other state machine, no write outside runs/map-results, no other function.
    assert not _granted(granted, "states:StartExecution", "${ScanWindowStateMachine}")
    assert not _granted(granted, "s3:PutObject", f"{bucket}/runs/RUN/report.json")
    assert not _granted(granted, "lambda:InvokeFunction", "${GuardFunction.Arn}")


def test_org_run_state_machine_takes_the_asl_file_at_render_time_and_its_role_covers_its_states(
    hub: dict[str, Any],
) -> None:
    machine = hub["Resources"]["OrgRunStateMachine"]["Properties"]
    definition = deploy.load_state_machine(name=deploy.ORG_RUN)
    assert json.loads(machine["DefinitionString"]) == definition
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", machine["DefinitionString"]))
    assert used == set(machine["DefinitionSubstitutions"]), "a ${...} of the ASL has no substitution"
    assert machine["DefinitionSubstitutions"] == {
        deploy.FUNCTION_ARN_SUBSTITUTION: {"Fn::GetAtt": ["Function", "Arn"]},
        deploy.RUN_BUCKET_SUBSTITUTION: {"Ref": "RunBucket"},
    }
    assert _sub_text(machine["StateMachineName"]) == "${FunctionName}-org-run"
    _check_org_run_role(hub, definition)
    assert hub["Outputs"]["OrgRunStateMachineArn"]["Value"] == {"Ref": "OrgRunStateMachine"}


def test_org_run_role_follows_the_definition_and_refuses_what_it_cannot_grant() -> None:
    """A second Map (the guard's halt phase, say) writing its results elsewhere under runs/ gets that prefix; a
    Task the template does not know how to grant fails the render instead of deploying a role that lacks it."""
    from fleetwarden.errors import UsageError

    definition = deploy.load_state_machine(name=deploy.ORG_RUN)
    maps = [s for s in definition["States"].values() if s["Type"] == "Map"]
    halt = json.loads(json.dumps(maps[0]))
    halt["ResultWriter"]["Parameters"]["Prefix"] = "runs/halt-results"
    definition["States"]["HaltShards"] = halt
    template = deploy.hub_template(deploy.load_state_machine(), org_run_definition=definition)
    _check_org_run_role(template, definition)
    unknown = deploy.load_state_machine(name=deploy.ORG_RUN)
    unknown["States"]["Notify"] = {"Type": "Task", "Resource": "arn:aws:states:::sns:publish", "End": True}
    with pytest.raises(UsageError, match="sns:publish"):
        deploy.hub_template(deploy.load_state_machine(), org_run_definition=unknown)


def test_alerts_topic_is_encrypted_with_a_rotated_key_alarms_can_use(hub: dict[str, Any]) -> None:
    resources = hub["Resources"]
    assert resources["AlertsTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlertsKey"}
    key = resources["AlertsKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = key["KeyPolicy"]["Statement"]
    (admin,) = [s for s in statements if s["Action"] == "kms:*"]
    assert _sub_text(admin["Principal"]["AWS"]) == "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"
    (services,) = [s for s in statements if "Service" in s["Principal"]]
    assert set(services["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    assert set(services["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    alias = resources["AlertsKeyAlias"]["Properties"]
    assert alias["TargetKeyId"] == {"Ref": "AlertsKey"} and _sub_text(alias["AliasName"]).startswith("alias/")
    # The functions publish to the topic: SNS asks KMS for a data key on their behalf.
    stack = _statements(resources["FunctionRole"], "fleetwarden-hub-stack")
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert _granted(stack, action, "${AlertsKey.Arn}"), action
    assert hub["Outputs"]["AlertsKeyArn"]["Value"] == {"Fn::GetAtt": ["AlertsKey", "Arn"]}


def _emitted_metrics(capsys: pytest.CaptureFixture[str]) -> set[tuple[str, str, frozenset[tuple[str, str]]]]:
    """The metrics the functions emit (fleetwarden.observability, the EMF record of one invocation), for every
    action an alarm may watch and every kind of outcome: (namespace, metric, dimensions)."""
    from fleetwarden.observability import RunFigures, new_metrics, record_result

    actions = {event["action"] for *_, event, _target in deploy.SCHEDULES} | {"aggregate", "compliance-sync"}
    capsys.readouterr()
    for action in sorted(actions):
        for status, code in (("ok", 0), ("partial", 4), ("error", 1)):
            metrics = new_metrics()
            record_result(metrics, action, RunFigures(status=status, exit_code=code), 0.5)
            metrics.flush_metrics()
    emitted = set()
    for line in capsys.readouterr().out.splitlines():
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dimensions = frozenset((d, blob[d]) for d in dimension_set)
                for metric in directive["Metrics"]:
                    emitted.add((directive["Namespace"], metric["Name"], dimensions))
    assert emitted, "no EMF record was written"
    return emitted


def test_alarms_watch_the_metrics_the_functions_emit(hub: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    alarms = {name: a["Properties"] for name, a in _of_type(hub, "AWS::CloudWatch::Alarm").items()}
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlertsTopic"}], name
        assert alarm["Statistic"] == "Sum" and alarm["Threshold"] == 1, name
    emitted = _emitted_metrics(capsys)
    ours = {n: a for n, a in alarms.items() if a["Namespace"] == deploy.METRICS_NAMESPACE}
    for name, alarm in ours.items():
        dimensions = frozenset((d["Name"], d["Value"]) for d in alarm["Dimensions"])
        # CloudWatch matches a metric only on its exact dimension set: service and Action, nothing more or less.
        assert (alarm["Namespace"], alarm["MetricName"], dimensions) in emitted, name
    silent = alarms["GuardSilentAlarm"]
    assert (silent["MetricName"], silent["ComparisonOperator"]) == ("Runs", "LessThanThreshold")
    assert {d["Name"]: d["Value"] for d in silent["Dimensions"]} == {"service": "fleetwarden", "Action": "guard"}
    assert silent["Period"] * silent["EvaluationPeriods"] == 15 * 60 and silent["DatapointsToAlarm"] == 3
    assert silent["TreatMissingData"] == "breaching"  # no run at all is exactly what it must catch
    watched = {
        (a["MetricName"], next(d["Value"] for d in a["Dimensions"] if d["Name"] == "Action"))
        for a in ours.values()
        if a["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    }
    for *_, event, _target in deploy.SCHEDULES:
        assert {("PartialRuns", event["action"]), ("FailedRuns", event["action"])} <= watched, event
    errors = {
        a["Dimensions"][0]["Value"]["Ref"]
        for a in alarms.values()
        if (a["Namespace"], a["MetricName"]) == ("AWS/Lambda", "Errors")
    }
    assert errors == set(_of_type(hub, "AWS::Lambda::Function"))
    failed = {
        a["Dimensions"][0]["Value"]["Ref"]
        for a in alarms.values()
        if (a["Namespace"], a["MetricName"]) == ("AWS/States", "ExecutionsFailed")
    }
    assert failed == set(_of_type(hub, "AWS::StepFunctions::StateMachine"))
    assert all(
        a["Dimensions"][0]["Name"] == "StateMachineArn" for a in alarms.values() if a["Namespace"] == "AWS/States"
    )
    names = [_sub_text(a["AlarmName"]) for a in alarms.values()]
    assert len(set(names)) == len(names) and all(n.startswith("${FunctionName}-") for n in names)


@pytest.mark.parametrize("kind", deploy.KINDS)
def test_templates_pass_cfn_lint(kind: str) -> None:
    """cfn-lint's errors and warnings (its informational notes are left aside)."""
    import cfnlint.api as cfnlint_api  # a dev dependency: the templates are always linted

    problems = [m for m in cfnlint_api.lint_all(deploy.render(kind)) if m.rule.id[0] in "EW"]
    assert not problems, "\n".join(f"{m.rule.id} {m.message} (line {m.linenumber})" for m in problems)


def test_the_config_object_and_kms_are_narrowed_in_the_hub_stack(hub: dict[str, Any]) -> None:
    """The functions read the config object ConfigReference names (when it is in S3), the hub account's
    parameters, and decrypt with KMS only through SSM, Secrets Manager and S3: never any object or key."""
    statements = _policy(hub["Resources"]["FunctionRole"], "fleetwarden-hub-stack")["Statement"]
    [conditional] = [s for s in statements if "Fn::If" in s]
    condition, config_read, otherwise = conditional["Fn::If"]
    assert condition == deploy.CONFIG_IN_S3 and otherwise == {"Ref": "AWS::NoValue"}
    assert config_read["Action"] == ["s3:GetObject"]
    assert hub["Conditions"][deploy.CONFIG_IN_S3]["Fn::Equals"][1] == "s3"
    [ssm] = [s for s in statements if s.get("Action") == ["ssm:GetParameter"]]
    assert ssm["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:ssm:*:${AWS::AccountId}:parameter/*"}
    [kms] = [s for s in statements if s.get("Action") == ["kms:Decrypt"] and s["Resource"] == "*"]
    assert kms["Condition"]["StringLike"]["kms:ViaService"] == [
        "ssm.*.amazonaws.com",
        "secretsmanager.*.amazonaws.com",
        "s3.*.amazonaws.com",
    ]
