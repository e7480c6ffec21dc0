"""The CloudFormation templates that deploy fleetwarden, generated from the parts' IAM declarations.

Two templates (see docs/deploy-templates.md):

- `member_role_template()`: the role each member account gives the hub (deployed as a StackSet), trusted by the
  hub account with an external id, its policy `policy_documents()["member_role"]`;
- `hub_template()`: the hub stack: the DynamoDB state table, the SNS alerts topic (encrypted with its own KMS key)
  and the CloudWatch alarms that publish to it, the Lambda functions and their role (`policy_documents()["hub"]`
  plus logs and the stack's own bucket, key and state machine), the EventBridge schedules, the scan-window state
  machine and the org-run state machine with its run bucket (their definitions read from the package data
  `fleetwarden/statemachines/*.asl.json`).

`render(kind)` is the YAML checked in under `deploy/templates/`; a unit test regenerates it and fails when the
checked-in file is stale, so the templates stay in step with what the code declares (STYLE.md habit 3).
Intrinsic functions are written in long form (`{"Ref": ...}`, `{"Fn::GetAtt": [...]}`), so plain YAML works.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml

from .errors import UsageError
from .handoff import ORG_RUN_ARN_ENV, SHARD_ABOVE_ENV
from .permissions import Tier, policy_documents
from .state.dynamodb import TTL_ATTRIBUTE

if TYPE_CHECKING:
    from .config import Config

Kind = Literal["member", "member-events", "hub", "billing"]
KINDS: tuple[str, ...] = get_args(Kind)
Template = dict[str, Any]

HANDLER = "fleetwarden.lambda_handler.handler"
RUNTIME = "python3.12"
TIMEOUT_SECONDS = 900
# The state table's keys: what `DynamoDbStore.init()` creates (tests/unit/test_deploy.py compares the two).
TABLE_KEYS: tuple[tuple[str, str], ...] = (("pk", "HASH"), ("sk", "RANGE"))
# The Step Functions definitions are package data (`src/fleetwarden/statemachines/NAME.asl.json`, shipped in the
# wheel and the Lambda zip), so every `deploy` command works from an installed wheel, outside a checkout. The
# scan window's is the hub's; its Task states name the worker function's ARN with the substitution below
# (`"Resource": "${FleetwardenFunctionArn}"`).
STATE_MACHINES_DIR = "statemachines"
STATE_MACHINE = "scan-window"
STATE_MACHINE_FILE = Path("src/fleetwarden") / STATE_MACHINES_DIR / f"{STATE_MACHINE}.asl.json"  # in a checkout
FUNCTION_ARN_SUBSTITUTION = "FleetwardenFunctionArn"
# The org-run (docs/deploy.md, "Organization-scale runs"): its definition also names the run bucket. Its name is
# known in advance, so the functions' environment and role name its ARN without referring to the resource (the
# state machine refers to the function: a reference back would be a circular dependency).
ORG_RUN = "org-run"
RUN_BUCKET_SUBSTITUTION = "FleetwardenRunBucket"
RUNS_PREFIX = "runs"  # list-shards' `fragments` is s3://BUCKET/runs: shard lists, fragments, reports
ORG_RUN_NAME = "${FunctionName}-org-run"
ORG_RUN_ARN = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:" + ORG_RUN_NAME
SHARD_ABOVE_DEFAULT = 200
RUN_RETENTION_DAYS = 30
# The functions' CloudWatch metrics (embedded metric format, Powertools): namespace, the service dimension, and
# one `Action` dimension per event action. Runs: 1 per completed run; PartialRuns: exit 4; FailedRuns: exit 1 or 2.
METRICS_NAMESPACE = "Fleetwarden"
METRICS_SERVICE = "fleetwarden"
ACTION_DIMENSION = "Action"
GUARD_SILENT_PERIODS = 3  # of 5 minutes: the guard runs every 5 minutes, so 15 minutes without a run
ALARM_PERIOD_SECONDS = 300
TEMPLATE_FILES: dict[str, Path] = {
    "member": Path("deploy/templates/member-role.yaml"),
    "member-events": Path("deploy/templates/member-events.yaml"),
    "hub": Path("deploy/templates/hub.yaml"),
    "billing": Path("deploy/templates/billing-role.yaml"),
}
REGENERATE = "fleetwarden deploy render --kind {kind} > {path}"
HAS_ORGANIZATION = "HasOrganization"
LAUNCH_BUS_NAME = "${FunctionName}-launches"
# Actions of the hub policy on "*" that the hub template grants on narrower resources instead (see
# _function_stack_statements): the org-run's bucket, the config object, the hub account's parameters, KMS via
# the services that decrypt for fleetwarden.
NARROWED_IN_STACK = ("s3:GetObject", "s3:ListBucket", "ssm:GetParameter", "kms:Decrypt")
KMS_VIA_SERVICES = ("ssm", "secretsmanager", "s3")
CONFIG_IN_S3 = "ConfigInS3"

# (rule resource, schedule parameter, default expression, the event the rule delivers, target function).
# The guard runs on its own function (reserved concurrency 1); everything else on the worker function.
SCHEDULES: tuple[tuple[str, str, str, dict[str, Any], str], ...] = (
    ("GuardScheduleRule", "GuardSchedule", "rate(5 minutes)", {"action": "guard", "apply": True}, "GuardFunction"),
    ("AuditScheduleRule", "AuditSchedule", "cron(0 6 * * ? *)", {"action": "audit"}, "Function"),
    (
        "ComplianceReportScheduleRule",
        "ComplianceReportSchedule",
        "cron(0 7 1 * ? *)",
        {"action": "compliance-report"},
        "Function",
    ),
    ("SpendReportScheduleRule", "SpendReportSchedule", "cron(0 8 * * ? *)", {"action": "spend-report"}, "Function"),
    # Storing a price table changes nothing in the fleet: the schedule applies whatever the config's `apply`.
    (
        "PricesRefreshScheduleRule",
        "PricesRefreshSchedule",
        "cron(0 5 ? * MON *)",
        {"action": "prices-refresh", "apply": True},
        "Function",
    ),
)
SCAN_WINDOW_SCHEDULE = "cron(0 2 ? * SUN *)"
# SSM State Manager association state changes: the handler keeps only the configured associations.
SSM_ASSOCIATION_PATTERN: dict[str, Any] = {
    "source": ["aws.ssm"],
    "detail-type": ["EC2 State Manager Association State Change"],
}


def _ref(name: str) -> dict[str, Any]:
    return {"Ref": name}


def _att(resource: str, attribute: str = "Arn") -> dict[str, Any]:
    return {"Fn::GetAtt": [resource, attribute]}


def _sub(text: str) -> dict[str, Any]:
    return {"Fn::Sub": text}


def _trust(service_or_principal: dict[str, Any], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": service_or_principal, "Action": "sts:AssumeRole"}
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


def _policy(name: str, statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"PolicyName": name, "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}


def _allow(actions: list[str], resources: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


# -- member-account role -------------------------------------------------------------------------------------
def member_role_template(role_name: str = "FleetWarden", config: Config | None = None, tier: Tier = "full") -> Template:
    """The member-account role (deployed to every member account as a StackSet), trusted by the hub account.

    With a config, its policy holds only what the config enables; `tier="read-only"` only Describe/List/Get.
    """
    return _role_template(
        role_name,
        "member_role",
        "fleetwarden member-account role: assumed by the hub account (with an external id) to audit, guard "
        "and scan this account's EC2 fleet. Generated from the code's permission declarations: do not edit.",
        policy_documents(config, tier)["member_role"],
    )


# Event-driven trips (docs/guard.md): launches in a member account, as CloudTrail records them, go to the hub's bus.
LAUNCH_PATTERN: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": ["AWS API Call via CloudTrail"],
    "detail": {"eventSource": ["ec2.amazonaws.com"], "eventName": ["RunInstances", "StartInstances"]},
}


def member_events_template() -> Template:
    """The member account's launch forwarder, deployed as a StackSet to every region of every member account
    (EventBridge rules are regional, CloudTrail delivers each launch in its own region): a rule on the default
    bus that sends RunInstances / StartInstances calls to the hub's launch bus."""
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "fleetwarden member-account launch forwarder: RunInstances and StartInstances calls (CloudTrail management "
            "events) go to the hub's event bus, so the guard evaluates this account within seconds. Deploy to every "
            "region. Generated from the code: do not edit."
        ),
        "Parameters": {
            "HubEventBusArn": {
                "Type": "String",
                "AllowedPattern": r"^arn:aws[a-z-]*:events:[a-z0-9-]+:\d{12}:event-bus/[\w.-]+$",
                "ConstraintDescription": "the hub stack's LaunchEventBusArn output",
                "Description": "The hub's launch event bus (the hub stack's LaunchEventBusArn output).",
            },
        },
        "Resources": {
            "ForwardRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "Description": "fleetwarden: EventBridge forwards launches to the hub's bus",
                    "AssumeRolePolicyDocument": _trust({"Service": "events.amazonaws.com"}),
                    "Policies": [
                        _policy("fleetwarden-forward-launches", [_allow(["events:PutEvents"], _ref("HubEventBusArn"))])
                    ],
                },
            },
            "LaunchForwardRule": {
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "Description": "fleetwarden: RunInstances / StartInstances -> the hub's launch bus",
                    "EventPattern": LAUNCH_PATTERN,
                    "State": "ENABLED",
                    "Targets": [
                        {"Id": "fleetwarden-hub", "Arn": _ref("HubEventBusArn"), "RoleArn": _att("ForwardRole")}
                    ],
                },
            },
        },
        "Outputs": {"RuleArn": {"Description": "The launch forwarder's rule", "Value": _att("LaunchForwardRule")}},
    }


def billing_role_template(role_name: str = "FleetWardenBilling", config: Config | None = None) -> Template:
    """The payer account's billing role (`guard.spend.billing_account`): what the spend sources read through."""
    return _role_template(
        role_name,
        "billing_role",
        "fleetwarden billing role in the payer account: assumed by the hub account (with an external id) to "
        "read spend (CloudWatch billing metrics, Cost Explorer, CUR exports) for the runaway guard. Generated "
        "from the code's permission declarations: do not edit.",
        policy_documents(config)["billing_role"],
    )


def _role_template(role_name: str, document: str, description: str, policy: dict[str, Any]) -> Template:
    used_as = (
        "the config's organization.role_name"
        if document == "member_role"
        else "its ARN goes in the config's guard.spend.billing_account.role_arn"
    )
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": description,
        "Parameters": {
            "HubAccountId": {
                "Type": "String",
                "AllowedPattern": r"^\d{12}$",
                "ConstraintDescription": "a 12-digit AWS account id",
                "Description": "The account where the hub stack (fleetwarden's Lambda functions) runs.",
            },
            "ExternalId": {
                "Type": "String",
                "NoEcho": True,
                "MinLength": 2,
                "MaxLength": 1224,
                "AllowedPattern": r"^[\w+=,.@:/-]+$",
                "Description": "The external id the hub passes when it assumes the role (the config's external_id).",
            },
            "RoleName": {
                "Type": "String",
                "Default": role_name,
                "Description": f"The role's name ({used_as}).",
            },
        },
        "Resources": {
            "FleetWardenRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": _ref("RoleName"),
                    "Description": "fleetwarden: assumed by the hub account",
                    "MaxSessionDuration": 3600,
                    "AssumeRolePolicyDocument": _trust(
                        {"AWS": _sub("arn:${AWS::Partition}:iam::${HubAccountId}:root")},
                        {"StringEquals": {"sts:ExternalId": _ref("ExternalId")}},
                    ),
                    "Policies": [
                        {
                            "PolicyName": f"fleetwarden-{document.removesuffix('_role')}",
                            "PolicyDocument": policy,
                        }
                    ],
                },
            }
        },
        "Outputs": {
            "RoleArn": {"Description": "The role the hub assumes in this account", "Value": _att("FleetWardenRole")},
        },
    }


# -- hub stack -----------------------------------------------------------------------------------------------
def _hub_parameters() -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "CodeBucket": {"Type": "String", "Description": "S3 bucket holding the Lambda package (zip)."},
        "CodeKey": {
            "Type": "String",
            "Default": "fleetwarden-lambda.zip",
            "Description": "S3 key of the Lambda package built by `fleetwarden deploy package` (docs/deploy.md).",
        },
        "ConfigReference": {
            "Type": "String",
            "AllowedPattern": r"^(s3://[^/]+/.+|ssm:/.+)$",
            "ConstraintDescription": "s3://BUCKET/KEY or ssm:/NAME",
            "Description": "Where the functions read fleetwarden.yaml (FLEETWARDEN_CONFIG).",
        },
        "Disabled": {
            "Type": "String",
            "Default": "false",
            "AllowedValues": ["false", "true"],
            "Description": "FLEETWARDEN_DISABLED: true makes every invocation a no-op (a kill switch for fleetwarden).",
        },
        "FunctionName": {
            "Type": "String",
            "Default": "fleetwarden",
            "Description": "Name of the worker function; the guard's is <name>-guard, the state machine's too.",
        },
        "TableName": {
            "Type": "String",
            "Default": "fleetwarden-state",
            "Description": "The DynamoDB state table (the config's state: dynamodb://<name>?region=<region>).",
        },
        "AlertsTopicName": {"Type": "String", "Default": "fleetwarden-alerts", "Description": "The SNS alerts topic."},
        "MemorySize": {"Type": "Number", "Default": 1024, "MinValue": 256, "MaxValue": 10240},
        "LogRetentionDays": {"Type": "Number", "Default": 90, "Description": "How long the functions' logs are kept."},
        "RulesState": {
            "Type": "String",
            "Default": "ENABLED",
            "AllowedValues": ["ENABLED", "DISABLED"],
            "Description": "State of every EventBridge rule (DISABLED: deploy, invoke by hand, then enable).",
        },
        "ShardAboveAccounts": {
            "Type": "Number",
            "Default": SHARD_ABOVE_DEFAULT,
            "MinValue": 0,
            "Description": "FLEETWARDEN_SHARD_ABOVE: over this many accounts, a scheduled audit, guard or compliance "
            "sync is handed off to the org-run state machine (0: never; docs/deploy-templates.md, Hand-off).",
        },
        "OrganizationId": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^(o-[a-z0-9]{10,32})?$",
            "Description": "The organization's id (o-...): its member accounts may send launches to the hub's launch "
            "bus (event-driven trips, docs/guard.md). Empty: no account may.",
        },
        "RunRetentionDays": {
            "Type": "Number",
            "Default": RUN_RETENTION_DAYS,
            "MinValue": 1,
            "Description": f"Days the run bucket keeps {RUNS_PREFIX}/ (the org-runs' shard lists, fragments, reports).",
        },
    }
    for _rule, parameter, default, event, _target in SCHEDULES:
        parameters[parameter] = {
            "Type": "String",
            "Default": default,
            "Description": f"EventBridge schedule for {json.dumps(event)}.",
        }
    parameters["ScanWindowSchedule"] = {
        "Type": "String",
        "Default": SCAN_WINDOW_SCHEDULE,
        "Description": "EventBridge schedule of the scan-window state machine.",
    }
    return parameters


def _function(name: Any, role: str, reserved: int | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "FunctionName": name,
        "Description": "fleetwarden (see docs/lambda.md)",
        "Runtime": RUNTIME,
        "Handler": HANDLER,
        "Code": {"S3Bucket": _ref("CodeBucket"), "S3Key": _ref("CodeKey")},
        "Role": _att(role),
        "Timeout": TIMEOUT_SECONDS,
        "MemorySize": _ref("MemorySize"),
        "Environment": {
            "Variables": {
                "FLEETWARDEN_CONFIG": _ref("ConfigReference"),
                "FLEETWARDEN_DISABLED": _ref("Disabled"),
                # The hand-off to the org-run (fleetwarden.handoff): over ShardAboveAccounts accounts.
                SHARD_ABOVE_ENV: _ref("ShardAboveAccounts"),
                ORG_RUN_ARN_ENV: _sub(ORG_RUN_ARN),
            }
        },
    }
    if reserved is not None:
        properties["ReservedConcurrentExecutions"] = reserved
    return {"Type": "AWS::Lambda::Function", "Properties": properties}


def _log_group(name: str) -> dict[str, Any]:
    return {
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": _sub(name),
            "RetentionInDays": _ref("LogRetentionDays"),
        },
    }


def _schedule_rule(parameter: str, description: str, target: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": description,
            "ScheduleExpression": _ref(parameter),
            "State": _ref("RulesState"),
            "Targets": [target],
        },
    }


def _invoke_permission(function: str, rule: str) -> dict[str, Any]:
    return {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "FunctionName": _att(function),
            "Action": "lambda:InvokeFunction",
            "Principal": "events.amazonaws.com",
            "SourceArn": _att(rule),
        },
    }


def hub_template(
    state_machine_definition: dict[str, Any],
    config: Config | None = None,
    org_run_definition: dict[str, Any] | None = None,
) -> Template:
    """The hub stack: state table, alerts topic and its key, alarms, functions and role, schedules, the scan-window
    state machine, and the org-run state machine with its run bucket.

    `state_machine_definition` is the ASL of `fleetwarden/statemachines/scan-window.asl.json`; its Task states name
    the worker function as `${FleetwardenFunctionArn}` (a DefinitionSubstitutions key). `org_run_definition` is the
    org-run's (default: the packaged `org-run.asl.json`, read now), whose role is derived from its states. With a
    config, the functions' `fleetwarden-hub` policy holds only what the config enables
    (`policy_documents(config)["hub"]`); the stack's own resources are granted by `fleetwarden-hub-stack`.
    """
    org_run = org_run_definition if org_run_definition is not None else load_state_machine(name=ORG_RUN)
    worker_logs = "/aws/lambda/${FunctionName}"
    guard_logs = "/aws/lambda/${FunctionName}-guard"
    resources: dict[str, Any] = {
        "StateTable": {
            "Type": "AWS::DynamoDB::Table",
            # The findings, exceptions and journal outlive the stack: deleting the stack keeps the table.
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": _ref("TableName"),
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name, _ in TABLE_KEYS],
                "KeySchema": [{"AttributeName": name, "KeyType": key_type} for name, key_type in TABLE_KEYS],
                "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},
            },
        },
        "AlertsTopic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {"TopicName": _ref("AlertsTopicName"), "KmsMasterKeyId": _ref("AlertsKey")},
        },
        "FunctionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "fleetwarden hub: the functions' role (assumes the member-account roles)",
                "AssumeRolePolicyDocument": _trust({"Service": "lambda.amazonaws.com"}),
                "Policies": [
                    {"PolicyName": "fleetwarden-hub", "PolicyDocument": _hub_policy(config)},
                    _policy(
                        "fleetwarden-logs",
                        [
                            _allow(
                                ["logs:CreateLogStream", "logs:PutLogEvents"],
                                [
                                    _sub(
                                        f"arn:${{AWS::Partition}}:logs:${{AWS::Region}}:${{AWS::AccountId}}:log-group:{g}:*"
                                    )
                                    for g in (worker_logs, guard_logs)
                                ],
                            )
                        ],
                    ),
                    _policy("fleetwarden-hub-stack", _function_stack_statements()),
                ],
            },
        },
        "FunctionLogGroup": _log_group(worker_logs),
        "GuardFunctionLogGroup": _log_group(guard_logs),
        "Function": {
            **_function(_ref("FunctionName"), "FunctionRole", None),
            "DependsOn": ["FunctionLogGroup"],
        },
        # The guard has its own function so that a long audit or a scan-window fan-out never delays it, and
        # reserved concurrency 1 so that two guard runs never overlap (a late one waits, then runs).
        "GuardFunction": {
            **_function(_sub("${FunctionName}-guard"), "FunctionRole", 1),
            "DependsOn": ["GuardFunctionLogGroup"],
        },
    }
    for rule, parameter, _default, event, target in SCHEDULES:
        resources[rule] = _schedule_rule(
            parameter,
            f"fleetwarden: {json.dumps(event)}",
            {"Id": "fleetwarden", "Arn": _att(target), "Input": json.dumps(event)},
        )
        resources[f"{rule}Permission"] = _invoke_permission(target, rule)
    resources["ComplianceSyncRule"] = {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Description": "fleetwarden: SSM association state changes -> compliance sync",
            "EventPattern": SSM_ASSOCIATION_PATTERN,
            "State": _ref("RulesState"),
            "Targets": [{"Id": "fleetwarden", "Arn": _att("Function")}],
        },
    }
    resources["ComplianceSyncRulePermission"] = _invoke_permission("Function", "ComplianceSyncRule")
    resources.update(_launch_bus_resources())
    resources.update(_scan_window_resources(state_machine_definition))
    resources.update(_run_bucket_resources())
    resources.update(_org_run_resources(org_run))
    resources.update(_alerts_key_resources())
    resources.update(_alarms())
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "fleetwarden hub: state table, alerts topic (KMS-encrypted) and alarms, Lambda functions, schedules, the "
            "scan-window and org-run state machines and the run bucket. Generated from the code's permission "
            "declarations: do not edit."
        ),
        "Parameters": _hub_parameters(),
        "Conditions": {
            # ConfigReference is s3://BUCKET/KEY (else ssm:/NAME): its first ':'-separated part is "s3".
            CONFIG_IN_S3: {"Fn::Equals": [{"Fn::Select": [0, {"Fn::Split": [":", _ref("ConfigReference")]}]}, "s3"]},
            HAS_ORGANIZATION: {"Fn::Not": [{"Fn::Equals": [_ref("OrganizationId"), ""]}]},
        },
        "Resources": resources,
        "Outputs": _hub_outputs(),
    }


def _launch_bus_resources() -> dict[str, Any]:
    """The bus the member accounts' forwarders send launches to, open to the organization's accounts only, and
    its rule to the worker function (not the guard's: its reserved concurrency of 1 would queue an event behind a
    scheduled run; the guard's per-account lease keeps the two from acting on one account at once)."""
    return {
        "LaunchEventBus": {"Type": "AWS::Events::EventBus", "Properties": {"Name": _sub(LAUNCH_BUS_NAME)}},
        "LaunchEventBusPolicy": {
            "Type": "AWS::Events::EventBusPolicy",
            "Condition": HAS_ORGANIZATION,
            "Properties": {
                "EventBusName": _sub(LAUNCH_BUS_NAME),
                "StatementId": "fleetwarden-organization-launches",
                "Statement": {
                    "Sid": "fleetwarden-organization-launches",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "events:PutEvents",
                    "Resource": _att("LaunchEventBus"),
                    "Condition": {"StringEquals": {"aws:PrincipalOrgID": _ref("OrganizationId")}},
                },
            },
        },
        "LaunchRule": {
            "Type": "AWS::Events::Rule",
            # The bus by name (what Ref gives), written out: moto's CloudFormation passes a Ref'd bus as an object.
            "DependsOn": ["LaunchEventBus"],
            "Properties": {
                "Description": "fleetwarden: a member account's RunInstances / StartInstances -> the guard, at once",
                "EventBusName": _sub(LAUNCH_BUS_NAME),
                "EventPattern": LAUNCH_PATTERN,
                "State": _ref("RulesState"),
                "Targets": [{"Id": "fleetwarden", "Arn": _att("Function")}],
            },
        },
        "LaunchRulePermission": _invoke_permission("Function", "LaunchRule"),
    }


def _scan_window_resources(definition: dict[str, Any]) -> dict[str, Any]:
    function_arns = [_att("Function"), _sub("${Function.Arn}:*")]
    return {
        "ScanWindowRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "fleetwarden hub: the scan-window state machine (invokes the worker function)",
                "AssumeRolePolicyDocument": _trust({"Service": "states.amazonaws.com"}),
                "Policies": [_policy("fleetwarden-invoke", [_allow(["lambda:InvokeFunction"], function_arns)])],
            },
        },
        "ScanWindowStateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "StateMachineName": _sub("${FunctionName}-scan-window"),
                "RoleArn": _att("ScanWindowRole"),
                "DefinitionString": json.dumps(definition, indent=2) + "\n",
                "DefinitionSubstitutions": {FUNCTION_ARN_SUBSTITUTION: _att("Function")},
            },
        },
        "ScanWindowScheduleRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "fleetwarden hub: lets the schedule start the scan-window state machine",
                "AssumeRolePolicyDocument": _trust({"Service": "events.amazonaws.com"}),
                "Policies": [
                    _policy("fleetwarden-start", [_allow(["states:StartExecution"], _ref("ScanWindowStateMachine"))])
                ],
            },
        },
        "ScanWindowScheduleRule": _schedule_rule(
            "ScanWindowSchedule",
            "fleetwarden: the weekly scan window",
            {
                "Id": "fleetwarden",
                "Arn": _ref("ScanWindowStateMachine"),
                "RoleArn": _att("ScanWindowScheduleRole"),
                "Input": "{}",
            },
        ),
    }


def _hub_policy(config: Config | None) -> dict[str, Any]:
    """`policy_documents(config)["hub"]` without the actions the stack narrows (NARROWED_IN_STACK, granted by
    `fleetwarden-hub-stack` on what the stack knows) in its statements on "*"."""
    document = policy_documents(config)["hub"]
    statements = []
    for statement in document["Statement"]:
        if statement.get("Resource") == "*" and "Condition" not in statement:
            actions = [a for a in statement["Action"] if a not in NARROWED_IN_STACK]
            if not actions:
                continue
            statement = {**statement, "Action": actions}
        statements.append(statement)
    return {**document, "Statement": statements}


def _config_object_arn() -> dict[str, Any]:
    """arn:PARTITION:s3:::BUCKET/KEY from ConfigReference (s3://BUCKET/KEY). The split is of the reference plus
    "//", so that index 1 exists for an ssm:/ reference too (the statement is then left out: CONFIG_IN_S3)."""
    with_tail = {"Fn::Join": ["", [_ref("ConfigReference"), "//"]]}
    object_path = {"Fn::Select": [1, {"Fn::Split": ["//", with_tail]}]}
    return {"Fn::Join": ["", ["arn:", _ref("AWS::Partition"), ":s3:::", object_path]]}


def _function_stack_statements() -> list[dict[str, Any]]:
    """The functions' grants on the stack's own resources, narrowed to them: the org-run's files in the run bucket
    (`workflows.shards`), starting the org-run (`handoff`), and the alerts topic's key (publishing to an encrypted
    topic needs the key). And what the hub policy would otherwise grant on "*" (NARROWED_IN_STACK): the config
    object named by ConfigReference (`config_source`), the hub account's SSM parameters (the config and the
    sinks' `ssm:/` secrets), and KMS decryption only through SSM, Secrets Manager and S3 (SecureString
    parameters, secrets and objects under a customer managed key)."""
    return [
        {
            "Fn::If": [
                CONFIG_IN_S3,
                _allow(["s3:GetObject"], _config_object_arn()),
                _ref("AWS::NoValue"),
            ]
        },
        _allow(["ssm:GetParameter"], _sub("arn:${AWS::Partition}:ssm:*:${AWS::AccountId}:parameter/*")),
        {
            **_allow(["kms:Decrypt"], "*"),
            "Condition": {"StringLike": {"kms:ViaService": [f"{s}.*.amazonaws.com" for s in KMS_VIA_SERVICES]}},
        },
        _allow(["s3:GetObject", "s3:PutObject"], _sub(f"${{RunBucket.Arn}}/{RUNS_PREFIX}/*")),
        # No s3:prefix condition: S3 answers a GetObject of a missing key with 404 (which the org-run reads as "not
        # written yet") only to a caller with s3:ListBucket, and that check carries no prefix to match.
        _allow(["s3:ListBucket"], _att("RunBucket")),
        _allow(["states:StartExecution"], _sub(ORG_RUN_ARN)),
        _allow(["kms:Decrypt", "kms:GenerateDataKey"], _att("AlertsKey")),
    ]


def _run_bucket_resources() -> dict[str, Any]:
    """The org-runs' bucket: private, encrypted, TLS only, `runs/` expiring after RunRetentionDays."""
    bucket_arn = _att("RunBucket")
    return {
        "RunBucket": {
            "Type": "AWS::S3::Bucket",
            # The merged reports outlive the stack, as the state table does; the lifecycle rule still expires them.
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "LifecycleConfiguration": {
                    "Rules": [
                        {
                            "Id": "expire-runs",
                            "Status": "Enabled",
                            "Prefix": f"{RUNS_PREFIX}/",
                            "ExpirationInDays": _ref("RunRetentionDays"),
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                        }
                    ]
                },
            },
        },
        "RunBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": _ref("RunBucket"),
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [bucket_arn, _sub("${RunBucket.Arn}/*")],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                },
            },
        },
    }


def _asl_states(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every state of a definition, those inside Map and Parallel states included."""
    out: list[dict[str, Any]] = []
    for state in states.values():
        out.append(state)
        for inner in (state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])):
            if inner:
                out.extend(_asl_states(inner["States"]))
    return out


def _org_run_statements(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """What the org-run's role needs, read from its states: invoking the function (Tasks), reading the shard items
    (ItemReader), writing each ResultWriter's manifest, and running a Distributed Map's child executions."""
    invoke = False
    reads: set[str] = set()
    writes: set[str] = set()
    distributed = False
    function = "${" + FUNCTION_ARN_SUBSTITUTION + "}"
    for state in _asl_states(definition["States"]):
        if state.get("Type") == "Task":
            if state.get("Resource") != function:
                raise UsageError(
                    f"the org-run definition has a Task on {state.get('Resource')!r}: the hub template grants its "
                    "role only the function (extend deploy._org_run_statements)"
                )
            invoke = True
        if state.get("Type") != "Map":
            continue
        if (state.get("ItemProcessor") or {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            distributed = True
        reader = state.get("ItemReader")
        if reader is not None:
            if reader.get("Resource") != "arn:aws:states:::s3:getObject":
                raise UsageError(f"the org-run's ItemReader {reader.get('Resource')!r} is not granted (s3:getObject)")
            # The key comes from list-shards (`$.listing.key`): always under runs/ of the run bucket.
            reads.add(f"{RUNS_PREFIX}/*")
        writer = state.get("ResultWriter")
        if writer is not None:
            prefix = str(writer.get("Parameters", {}).get("Prefix", "")).strip("/")
            if not prefix.startswith(f"{RUNS_PREFIX}/"):
                raise UsageError(f"the org-run's ResultWriter prefix {prefix!r} is not under {RUNS_PREFIX}/")
            writes.add(f"{prefix}/*")
    statements: list[dict[str, Any]] = []
    if invoke:
        statements.append(_allow(["lambda:InvokeFunction"], [_att("Function"), _sub("${Function.Arn}:*")]))
    if reads:
        statements.append(_allow(["s3:GetObject"], [_sub(f"${{RunBucket.Arn}}/{key}") for key in sorted(reads)]))
    if writes:
        # ResultWriter writes the manifest (and result files) as multipart uploads.
        actions = ["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"]
        statements.append(_allow(actions, [_sub(f"${{RunBucket.Arn}}/{key}") for key in sorted(writes)]))
    if distributed:
        executions = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:" + ORG_RUN_NAME
        statements.append(_allow(["states:StartExecution"], _sub(ORG_RUN_ARN)))
        # A Distributed Map's child executions: execution:NAME/MAP-RUN-LABEL:ID (and the parent's own, NAME:ID).
        statements.append(
            _allow(
                ["states:DescribeExecution", "states:StopExecution"],
                [_sub(f"{executions}/*"), _sub(f"{executions}:*")],
            )
        )
    return statements


def _org_run_resources(definition: dict[str, Any]) -> dict[str, Any]:
    return {
        "OrgRunRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "fleetwarden hub: the org-run state machine (shards, run bucket, child executions)",
                "AssumeRolePolicyDocument": _trust({"Service": "states.amazonaws.com"}),
                "Policies": [_policy("fleetwarden-org-run", _org_run_statements(definition))],
            },
        },
        "OrgRunStateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "StateMachineName": _sub(ORG_RUN_NAME),
                "StateMachineType": "STANDARD",
                "RoleArn": _att("OrgRunRole"),
                "DefinitionString": json.dumps(definition, indent=2) + "\n",
                "DefinitionSubstitutions": {
                    FUNCTION_ARN_SUBSTITUTION: _att("Function"),
                    RUN_BUCKET_SUBSTITUTION: _ref("RunBucket"),
                },
            },
        },
    }


def _alerts_key_resources() -> dict[str, Any]:
    """The alerts topic's customer managed key: CloudWatch alarms (and EventBridge rules) can publish to an
    encrypted topic only when its key lets their service use it, which an AWS managed key does not."""
    return {
        "AlertsKey": {
            "Type": "AWS::KMS::Key",
            "Properties": {
                "Description": "fleetwarden hub: encrypts the alerts topic",
                "EnableKeyRotation": True,
                "KeyPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            # The account administers the key; IAM policies (the functions' role) grant its use.
                            "Sid": "AccountAdministers",
                            "Effect": "Allow",
                            "Principal": {"AWS": _sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
                            "Action": "kms:*",
                            "Resource": "*",
                        },
                        {
                            "Sid": "AlarmsAndRulesPublish",
                            "Effect": "Allow",
                            "Principal": {"Service": ["cloudwatch.amazonaws.com", "events.amazonaws.com"]},
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                            "Resource": "*",
                        },
                    ],
                },
            },
        },
        "AlertsKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {"AliasName": _sub("alias/${FunctionName}-alerts"), "TargetKeyId": _ref("AlertsKey")},
        },
    }


def _camel(action: str) -> str:
    return "".join(part.capitalize() for part in action.split("-"))


def _alarm(
    name: str,
    description: str,
    namespace: str,
    metric: str,
    dimensions: dict[str, Any],
    *,
    below: bool = False,
    periods: int = 1,
    missing: str = "notBreaching",
) -> dict[str, Any]:
    """An alarm into the alerts topic: Sum of the metric >= 1 in a 5-minute period (or < 1 over `periods`)."""
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": _sub(f"${{FunctionName}}-{name}"),
            "AlarmDescription": description,
            "Namespace": namespace,
            "MetricName": metric,
            "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
            "Statistic": "Sum",
            "Period": ALARM_PERIOD_SECONDS,
            "EvaluationPeriods": periods,
            "DatapointsToAlarm": periods,
            "Threshold": 1,
            "ComparisonOperator": "LessThanThreshold" if below else "GreaterThanOrEqualToThreshold",
            "TreatMissingData": missing,
            "AlarmActions": [_ref("AlertsTopic")],
        },
    }


def alarmed_actions() -> tuple[str, ...]:
    """The actions whose partial and failed runs raise an alarm: every scheduled one, and `aggregate` (the outcome
    of an org-run, handed-off runs included)."""
    return (*(event["action"] for *_, event, _target in SCHEDULES), "aggregate")


def _alarms() -> dict[str, Any]:
    def runs(action: str) -> dict[str, Any]:
        return {"service": METRICS_SERVICE, ACTION_DIMENSION: action}

    alarms: dict[str, Any] = {
        "FunctionErrorsAlarm": _alarm(
            "errors",
            "fleetwarden: the worker function raised (a bug, a timeout or out of memory): see its log",
            "AWS/Lambda",
            "Errors",
            {"FunctionName": _ref("Function")},
        ),
        "GuardFunctionErrorsAlarm": _alarm(
            "guard-errors",
            "fleetwarden: the guard function raised (a bug, a timeout or out of memory): see its log",
            "AWS/Lambda",
            "Errors",
            {"FunctionName": _ref("GuardFunction")},
        ),
        "GuardSilentAlarm": _alarm(
            "guard-silent",
            "fleetwarden: no guard run completed in 15 minutes (schedule disabled, Disabled=true, or the guard "
            "keeps failing): runaway instances are not being halted",
            METRICS_NAMESPACE,
            "Runs",
            runs("guard"),
            below=True,
            periods=GUARD_SILENT_PERIODS,
            missing="breaching",
        ),
        "OrgRunFailedAlarm": _alarm(
            "org-run-failed",
            "fleetwarden: an org-run execution failed (ListShardsFailed or AggregateFailed): see its history",
            "AWS/States",
            "ExecutionsFailed",
            {"StateMachineArn": _ref("OrgRunStateMachine")},
        ),
        "ScanWindowFailedAlarm": _alarm(
            "scan-window-failed",
            "fleetwarden: a scan-window execution failed: instances may still be running; run "
            "`fleetwarden window close --apply`",
            "AWS/States",
            "ExecutionsFailed",
            {"StateMachineArn": _ref("ScanWindowStateMachine")},
        ),
    }
    for action in alarmed_actions():
        alarms[f"{_camel(action)}PartialRunsAlarm"] = _alarm(
            f"{action}-partial",
            f"fleetwarden: a {action} run was partial (exit 4: some targets could not be read or acted on)",
            METRICS_NAMESPACE,
            "PartialRuns",
            runs(action),
        )
        alarms[f"{_camel(action)}FailedRunsAlarm"] = _alarm(
            f"{action}-failed",
            f"fleetwarden: a {action} run failed (exit 1 or 2: nothing or not everything ran): see the log",
            METRICS_NAMESPACE,
            "FailedRuns",
            runs(action),
        )
    return alarms


def _hub_outputs() -> dict[str, Any]:
    return {
        "StateUrl": {
            "Description": "The config's `state:` value",
            "Value": _sub("dynamodb://${StateTable}?region=${AWS::Region}"),
        },
        "StateTableName": {"Value": _ref("StateTable")},
        "AlertsTopicArn": {"Description": "For a sink {type: sns, topic_arn: ...}", "Value": _ref("AlertsTopic")},
        "FunctionArn": {"Value": _att("Function")},
        "GuardFunctionArn": {"Value": _att("GuardFunction")},
        "LaunchEventBusArn": {
            "Description": "The member-events stacks' HubEventBusArn (event-driven trips)",
            "Value": _att("LaunchEventBus"),
        },
        "FunctionRoleArn": {
            "Description": "The principal that assumes the member-account roles",
            "Value": _att("FunctionRole"),
        },
        "ScanWindowStateMachineArn": {"Value": _ref("ScanWindowStateMachine")},
        "RunBucketName": {
            "Description": f"The org-runs' bucket ({RUNS_PREFIX}/: shard lists, fragments, merged reports)",
            "Value": _ref("RunBucket"),
        },
        "OrgRunStateMachineArn": {
            "Description": "The org-run state machine (FLEETWARDEN_ORG_RUN_ARN of the functions)",
            "Value": _ref("OrgRunStateMachine"),
        },
        "AlertsKeyArn": {"Description": "The KMS key of the alerts topic", "Value": _att("AlertsKey")},
    }


# -- files and rendering ---------------------------------------------------------------------------------------
def source_root() -> Path | None:
    """The checkout's root (where `pyproject.toml` and `deploy/` live), or None when installed from a wheel."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    in_checkout = (root / "src" / "fleetwarden" / "deploy.py").is_file() and pyproject.is_file()
    return root if in_checkout and 'name = "fleetwarden"' in pyproject.read_text(encoding="utf-8") else None


def state_machine_resource(name: str = STATE_MACHINE) -> Traversable:
    """The packaged definition `fleetwarden/statemachines/<name>.asl.json` (readable from a wheel or a zip)."""
    return resources.files("fleetwarden").joinpath(STATE_MACHINES_DIR, f"{name}.asl.json")


def load_state_machine(path: Path | None = None, name: str = STATE_MACHINE) -> dict[str, Any]:
    """A Step Functions definition: the file `path`, else the packaged `statemachines/<name>.asl.json`."""
    source: Path | Traversable = path if path is not None else state_machine_resource(name)
    if not source.is_file():
        raise UsageError(f"the state machine definition {name!r} is not found: {source} (give its path)")
    try:
        loaded = json.loads(source.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(loaded, dict) or "States" not in loaded:
        raise UsageError(f"{source}: not a Step Functions definition (no States)")
    return loaded


def template(
    kind: str, state_machine: Path | None = None, *, config: Config | None = None, tier: Tier = "full"
) -> Template:
    """The template of one kind (`member`, `hub` or `billing`) as a dict; with a config, its policies grant only
    what that config enables (docs/permissions.md); `tier` ("full" | "read-only") applies to the member role."""
    if kind == "member":
        return member_role_template(config=config, tier=tier)
    if kind == "member-events":
        return member_events_template()
    if kind == "hub":
        return hub_template(load_state_machine(state_machine), config=config, org_run_definition=None)
    if kind == "billing":
        return billing_role_template(config=config)
    raise UsageError(f"unknown template kind {kind!r}: expected one of {', '.join(KINDS)}")


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with multi-line strings (the state machine definition) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(kind: str, state_machine: Path | None = None, *, config: Config | None = None, tier: Tier = "full") -> str:
    """The template as YAML, with a header saying how it was made (what `deploy/templates/` holds)."""
    body = yaml.dump(
        template(kind, state_machine, config=config, tier=tier), Dumper=_Dumper, sort_keys=False, width=120
    )
    command = REGENERATE.format(kind=kind, path=TEMPLATE_FILES[kind])
    if config is not None or tier != "full":
        command = f"fleetwarden --config CONFIG deploy render --kind {kind} --from-config" + (
            f" --tier {tier}" if tier != "full" else ""
        )
    return (
        f"# Generated by `{command}` from the IAM permissions the code declares.\n"
        "# Do not edit: change the code (src/fleetwarden/deploy.py, the declarations) and regenerate.\n"
        f"{body}"
    )


__all__ = [
    "KINDS",
    "TEMPLATE_FILES",
    "hub_template",
    "load_state_machine",
    "member_role_template",
    "render",
    "template",
]
