"""`fleetwarden permissions`: the hub and member policies derived from what the config enables (issue 9 item 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fleetwarden import deploy
from fleetwarden.cli import main
from fleetwarden.config import Config
from fleetwarden.config.loader import parse_config
from fleetwarden.permissions import declared, features, is_read_only, policy_documents

ROLE = "arn:aws:iam::111111111111:role/FleetWarden"
TOPIC = "arn:aws:sns:us-east-1:123456789012:fleetwarden-alerts"
WRITES = {
    "ec2:StopInstances",
    "ec2:StartInstances",
    "ec2:TerminateInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:CreateSnapshots",
    "ec2:CreateTags",
    "autoscaling:SuspendProcesses",
    "autoscaling:ResumeProcesses",
    "iam:UpdateAccessKey",
    "iam:PutUserPolicy",
    "iam:DeleteUserPolicy",
    "iam:DeleteAccessKey",
    "iam:DeleteLoginProfile",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "securityhub:BatchImportFindings",
}


def config(**sections: Any) -> Config:
    raw: dict[str, Any] = {"accounts": [{"id": "111111111111", "role_arn": ROLE}], **sections}
    return parse_config(yaml.safe_dump(raw), "test.yaml")


def actions(document: dict[str, Any]) -> set[str]:
    return {a for statement in document["Statement"] for a in statement["Action"]}


def statement_of(document: dict[str, Any], action: str) -> dict[str, Any]:
    (statement,) = [s for s in document["Statement"] if action in s["Action"]]
    return statement


def member(cfg: Config | None, tier: Any = "full") -> set[str]:
    return actions(policy_documents(cfg, tier)["member_role"])


def test_without_a_config_every_feature_is_in() -> None:
    full = member(None)
    assert full >= WRITES
    everything = {a for part in declared().values() for a in part}
    hub = actions(policy_documents()["hub"])
    assert full | hub | actions(policy_documents()["billing_role"]) == everything


def test_report_only_audit_is_read_only() -> None:
    cfg = config(audit={"action": "report"})
    granted = member(cfg)
    assert granted and all(is_read_only(a) for a in granted), sorted(a for a in granted if not is_read_only(a))
    assert {"ec2:DescribeInstances", "iam:ListUsers"} <= granted
    hub = actions(policy_documents(cfg)["hub"])
    # No sink, no Organizations, no DynamoDB (SQLite state): assume the role, read the config, nothing more.
    assert hub == {"sts:AssumeRole", "sts:GetCallerIdentity", "s3:GetObject", "ssm:GetParameter", "kms:Decrypt"}
    assert statement_of(policy_documents(cfg)["hub"], "sts:AssumeRole")["Resource"] == ROLE


def test_stop_and_terminate_appear_only_as_configured() -> None:
    stop = member(config(audit={"action": "stop"}))
    assert "ec2:StopInstances" in stop
    assert not {"ec2:TerminateInstances", "ec2:ModifyInstanceAttribute", "ec2:CreateSnapshots"} & stop
    assert "ec2:ModifyInstanceAttribute" in member(config(audit={"action": "stop", "override_stop_protection": True}))
    terminate = member(config(audit={"action": "terminate"}))
    assert {"ec2:TerminateInstances", "ec2:CreateSnapshots", "ec2:CreateTags"} <= terminate
    assert "ec2:StopInstances" not in terminate
    bare = member(config(audit={"action": "terminate", "snapshot_before_terminate": False}))
    assert "ec2:TerminateInstances" in bare and not {"ec2:CreateSnapshots", "ec2:CreateTags"} & bare


def test_guard_halt_and_lockout_modes() -> None:
    assert not WRITES & member(config(guard={"lockout": {"mode": "delete"}}))  # no limit: the guard never halts
    deactivate = member(config(guard={"max_running_instances": 10}))
    halt = {"ec2:StopInstances", "ec2:ModifyInstanceAttribute", "autoscaling:SuspendProcesses"}
    assert halt | {"autoscaling:ResumeProcesses", "ec2:StartInstances"} <= deactivate
    assert {"iam:UpdateAccessKey", "iam:PutUserPolicy", "iam:DeleteUserPolicy"} <= deactivate
    assert not {"iam:DeleteAccessKey", "iam:DeleteLoginProfile", "iam:PutRolePolicy", "ec2:TerminateInstances"} & (
        deactivate
    )
    delete = member(config(guard={"max_running_instances": 10, "lockout": {"mode": "delete"}}))
    assert {"iam:DeleteAccessKey", "iam:DeleteLoginProfile", "iam:PutUserPolicy"} <= delete
    assert "iam:UpdateAccessKey" not in delete
    off = member(config(guard={"spend": {"max_usd": 50}, "lockout": {"mode": "off"}}))
    assert "ec2:StopInstances" in off and not {a for a in off if a.startswith("iam:") and not is_read_only(a)}
    terminating = member(config(guard={"max_running_instances": 1, "on_unstoppable": "terminate"}))
    assert {"ec2:TerminateInstances", "ec2:CreateSnapshots"} <= terminating
    # A per-account limit alone is a guard limit too.
    per_account = config(accounts=[{"id": "111111111111", "role_arn": ROLE, "guard": {"max_running_instances": 3}}])
    assert "guard.halt" in features(per_account)


def test_revoked_role_sessions_narrow_to_the_named_roles() -> None:
    cfg = config(guard={"max_running_instances": 1, "lockout": {"revoke_role_sessions": ["ci-deploy"]}})
    statement = statement_of(policy_documents(cfg)["member_role"], "iam:PutRolePolicy")
    assert statement["Resource"] == ["arn:aws:iam::*:role/ci-deploy", "arn:aws:iam::*:role/*/ci-deploy"]
    assert "iam:PutRolePolicy" not in member(config(guard={"max_running_instances": 1}))


def test_resources_and_conditions_are_narrowed() -> None:
    document = policy_documents(config(audit={"action": "terminate"}, guard={"max_running_instances": 1}))
    member_doc = document["member_role"]
    for action in ("ec2:StopInstances", "ec2:TerminateInstances", "ec2:ModifyInstanceAttribute"):
        assert statement_of(member_doc, action)["Resource"] == "arn:aws:ec2:*:*:instance/*"
    tags = statement_of(member_doc, "ec2:CreateTags")
    assert tags["Resource"] == "arn:aws:ec2:*::snapshot/*"
    assert tags["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}}
    for action in ("iam:PutUserPolicy", "iam:DeleteUserPolicy", "iam:UpdateAccessKey"):
        assert statement_of(member_doc, action)["Resource"] == "arn:aws:iam::*:user/*"
    assert statement_of(member_doc, "autoscaling:SuspendProcesses")["Resource"].startswith("arn:aws:autoscaling:")
    assert statement_of(member_doc, "ec2:DescribeInstances")["Resource"] == "*"  # Describe* has no resource type


def test_sinks_state_and_organization_narrow_the_hub() -> None:
    cfg = config(
        organization={"role_name": "FleetWarden", "include_management_account": False},
        state="dynamodb://fleetwarden-state?region=eu-west-1",
        sinks={"ops": {"type": "sns", "topic_arn": TOPIC}, "hub": {"type": "securityhub"}},
    )
    docs = policy_documents(cfg)
    assert statement_of(docs["hub"], "sns:Publish")["Resource"] == TOPIC
    assert statement_of(docs["hub"], "dynamodb:PutItem")["Resource"] == (
        "arn:aws:dynamodb:eu-west-1:*:table/fleetwarden-state"
    )
    assert statement_of(docs["hub"], "sts:AssumeRole")["Resource"] == ["arn:aws:iam::*:role/FleetWarden", ROLE]
    assert "organizations:ListAccounts" in actions(docs["hub"])
    # Security Hub imports in each member account, through the role: member policy, not hub.
    assert "securityhub:BatchImportFindings" in actions(docs["member_role"])
    assert "securityhub:BatchImportFindings" not in actions(docs["hub"])
    assert "securityhub:BatchImportFindings" not in member(config())
    product = statement_of(docs["member_role"], "securityhub:BatchImportFindings")["Resource"]
    assert product == "arn:aws:securityhub:*:*:product/*/default"


def test_s3_sink_writes_only_under_its_prefix() -> None:
    cfg = config(sinks={"a": {"type": "s3", "bucket": "reports"}, "b": {"type": "s3", "bucket": "raw", "prefix": ""}})
    statement = statement_of(policy_documents(cfg)["hub"], "s3:PutObject")
    assert statement["Resource"] == ["arn:aws:s3:::raw/*", "arn:aws:s3:::reports/fleetwarden/*"]


def test_window_and_compliance_reads_only_when_configured() -> None:
    plain = member(config())
    assert not {a for a in plain if a.startswith(("inspector2:", "ssm:"))}
    window = member(config(window={"settle_minutes": 0}))
    assert {"ec2:StartInstances", "ec2:StopInstances", "inspector2:ListCoverage"} <= window
    compliance = member(config(compliance={"types": ["Custom:InSpec"]}))
    assert "ssm:ListComplianceItems" in compliance and "ec2:StartInstances" not in compliance
    # An empty section is enough to turn the job on (its defaults apply).
    assert {"window", "inspector", "compliance"} <= features(config(window={}, compliance={}))
    aggregator = config(window={"discovery": {"type": "config-aggregator", "aggregator": "org"}})
    assert "config:SelectAggregateResourceConfig" in actions(policy_documents(aggregator)["hub"])


def test_read_only_tier_has_only_reads_whatever_the_config() -> None:
    cfg = config(audit={"action": "terminate"}, guard={"max_running_instances": 1, "lockout": {"mode": "delete"}})
    for which in (cfg, None):
        granted = member(which, "read-only")
        assert granted and all(a.partition(":")[2].startswith(("Describe", "List", "Get", "Lookup")) for a in granted)
        assert "ec2:DescribeInstances" in granted
    with pytest.raises(ValueError, match="tier"):
        policy_documents(cfg, "admin")  # type: ignore[arg-type]


def test_hub_credentials_on_a_target_fold_the_member_actions_in() -> None:
    cfg = config(accounts=[{"id": "111111111111"}], audit={"action": "stop"})
    assert "ec2:StopInstances" in actions(policy_documents(cfg)["hub"])


def test_cli_permissions_with_config_and_tier(tmp_path: Path) -> None:
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(
        yaml.safe_dump({"accounts": [{"id": "111111111111", "role_arn": ROLE}], "audit": {"action": "stop"}})
    )
    result = CliRunner().invoke(main, ["--config", str(path), "permissions"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert "ec2:StopInstances" in actions(printed["member_role"])
    assert printed == policy_documents(parse_config(path.read_text(), str(path)))
    read_only = CliRunner().invoke(main, ["--config", str(path), "permissions", "--tier", "read-only"])
    assert read_only.exit_code == 0, read_only.output
    assert "ec2:StopInstances" not in actions(json.loads(read_only.output)["member_role"])
    assert CliRunner().invoke(main, ["--config", str(path), "permissions", "--tier", "admin"]).exit_code == 2


def test_templates_built_from_a_config() -> None:
    cfg = config(audit={"action": "report"}, sinks={"ops": {"type": "sns", "topic_arn": TOPIC}})
    role = deploy.member_role_template(config=cfg)["Resources"]["FleetWardenRole"]["Properties"]
    assert role["Policies"][0]["PolicyDocument"] == policy_documents(cfg)["member_role"]
    assert all(is_read_only(a) for a in actions(role["Policies"][0]["PolicyDocument"]))
    read_only = deploy.member_role_template(config=None, tier="read-only")["Resources"]["FleetWardenRole"]
    assert actions(read_only["Properties"]["Policies"][0]["PolicyDocument"]) == member(None, "read-only")
    hub = deploy.hub_template(deploy.load_state_machine(), config=cfg)["Resources"]["FunctionRole"]["Properties"]
    (hub_policy,) = [p["PolicyDocument"] for p in hub["Policies"] if p["PolicyName"] == "fleetwarden-hub"]
    # The config's hub document, less what the stack grants on its own narrower resources (fleetwarden-hub-stack).
    assert actions(hub_policy) == actions(policy_documents(cfg)["hub"]) - set(deploy.NARROWED_IN_STACK)
    assert hub_policy == deploy._hub_policy(cfg)
    assert not {"dynamodb:PutItem", "organizations:ListAccounts"} & actions(hub_policy)


def test_billing_role_holds_only_the_configured_sources() -> None:
    cfg = config(guard={"spend": {"max_usd": 10, "sources": ["burn-rate", "cost-explorer"]}})
    assert actions(policy_documents(cfg)["billing_role"]) == {"ce:GetCostAndUsage"}
    assert "cloudwatch:GetMetricData" in actions(policy_documents()["billing_role"])


def test_secrets_manager_only_for_the_secrets_the_sinks_name() -> None:
    slack = {"type": "slack", "channel": "C0123ABCD", "token": "secretsmanager:fleetwarden/slack"}
    docs = policy_documents(config(sinks={"chat": slack}))
    statement = statement_of(docs["hub"], "secretsmanager:GetSecretValue")
    assert statement["Resource"] == "arn:aws:secretsmanager:*:*:secret:fleetwarden/slack-??????"
    by_ssm = policy_documents(config(sinks={"chat": {**slack, "token": "ssm:/fleetwarden/slack"}}))
    assert "secretsmanager:GetSecretValue" not in actions(by_ssm["hub"])
    assert "ssm:GetParameter" in actions(by_ssm["hub"])
    assert "secretsmanager:GetSecretValue" in actions(policy_documents()["hub"])  # no config: every sink


def test_owner_lookup_and_contacts_appear_only_as_configured() -> None:
    default = member(config())
    assert "cloudtrail:LookupEvents" in default and "iam:ListUserTags" not in default
    assert "cloudtrail:LookupEvents" not in member(config(audit={"owners": {"enabled": False}}))
    assert "cloudtrail:LookupEvents" not in member(config(audit={"owners": {"cloudtrail": False}}))
    sinks = {"mail": {"type": "email", "host": "smtp.example.com", "from": "fw@example.com", "to": ["a@example.com"]}}
    notify = {"email_sink": "mail", "contact_tag": "email"}
    assert "iam:ListUserTags" in member(config(sinks=sinks, audit={"owners": {"notify": notify}}))
    assert "cloudtrail:LookupEvents" in member(config(), "read-only")
