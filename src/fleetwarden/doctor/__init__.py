"""`fleetwarden doctor`: is a deployment whole? Each check says ok, or what is missing and how to fix it.

Read-only. It looks at the hub stack (status, outputs, every resource it created, the rules' state, the
`Disabled` switch), at what the config points to (the state table, the SNS sinks, the SSM associations), at the
member role in every account the config covers, and at the last successful run of each scheduled job, which the
Lambda handler records with `record_run` after each run. See docs/doctor.md.

Parts: `report` (results and the exit code), `run` (the Doctor, which runs the checks in order), `stack` (the hub
stack), `resources` (resource type -> check), `targets` (what the config points to), `runs` (the last-run records).
"""

from __future__ import annotations

from .report import SCHEMA, STATUSES, CheckResult, DoctorReport, Status, format_line
from .resources import RESOURCE_CHECKS
from .run import DEFAULT_STACK, Doctor, DoctorOptions, run_doctor
from .runs import DEFAULT_MAX_AGE, RUN_KIND, parse_max_age, record_run
from .stack import StackInfo

# What doctor calls, with the operator's credentials in the hub account (never the functions' role), by check.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "credentials": ("sts:GetCallerIdentity",),
    "stack": ("cloudformation:DescribeStacks", "cloudformation:DescribeStackResources"),
    "resources": (
        "lambda:GetFunction",
        "dynamodb:DescribeTable",
        "sns:GetTopicAttributes",
        "events:DescribeRule",
        "events:ListTargetsByRule",
        "lambda:GetPolicy",  # may EventBridge invoke the rule's function?
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


__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_STACK",
    "PERMISSIONS",
    "RESOURCE_CHECKS",
    "RUN_KIND",
    "SCHEMA",
    "STATUSES",
    "CheckResult",
    "Doctor",
    "DoctorOptions",
    "DoctorReport",
    "StackInfo",
    "Status",
    "format_line",
    "parse_max_age",
    "record_run",
    "run_doctor",
]
