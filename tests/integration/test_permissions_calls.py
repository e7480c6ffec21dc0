"""The config-derived policies against real runs: each sample config's workflows run on the emulator, and every
AWS call they make must be allowed by `policy_documents(config)` (hub + member role); a report-only config's
member role allows no write at all. (The whole-declaration check of one terminate run is in test_audit.py:
`test_declared_permissions_cover_every_call`; this extends it to the policies each config derives.)"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import yaml
from fleet import ACCOUNTS, GOOD_TAGS, cli, launch, role, states, users

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.permissions import is_read_only, policy_documents

A, B, _ = ACCOUNTS
REGIONS = ["us-east-1", "eu-west-1"]
# API operations whose IAM action has another name.
IAM_NAMES = {"s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject"}
# Needs no permission (AWS answers it for any principal).
UNGATED = {"sts:GetCallerIdentity"}


def _config(tmp_path: Path, endpoint: str, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
        "regions": REGIONS,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        **sections,
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _allowed(config: Path) -> tuple[set[str], dict[str, Any]]:
    docs = policy_documents(load_config(config))
    granted = {a for d in ("hub", "member_role") for s in docs[d]["Statement"] for a in s["Action"]}
    return granted, docs


@cache
def _rest_operation(service: str, request: str) -> str:
    """A REST call the emulator records as "METHOD /path" (Security Hub, Inspector v2), as its operation name."""
    method, _, path = request.partition(" ")
    model = botocore.session.get_session().get_service_model(service)
    for name in model.operation_names:
        http = model.operation_model(name).http
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", http["requestUri"].split("?")[0])
        if http["method"] == method and re.fullmatch(pattern, path.split("?")[0]):
            return name
    raise AssertionError(f"no {service} operation for {request}")


def _made(aws: EmulatorServer) -> set[str]:
    """The IAM actions of the calls the emulator saw."""
    made = set()
    for call in aws.client.calls()["calls"]:
        action = call["action"]
        if " " in action:
            action = _rest_operation(call["service"], action)
        name = f"{call['service']}:{action}"
        made.add(IAM_NAMES.get(name, name))
    return made


def _run(config: Path, *commands: tuple[str, ...]) -> None:
    for args in commands:
        result = cli("--config", str(config), "--json", *args)
        assert result.exit_code == 0, (args, result.stderr)


def _assert_covered(aws: EmulatorServer, config: Path, expected_writes: set[str]) -> dict[str, Any]:
    made = _made(aws)
    allowed, docs = _allowed(config)
    assert made - UNGATED <= allowed, f"called but not in the config's policy: {sorted(made - UNGATED - allowed)}"
    # The runs really did the config's writes (so the policy is exercised, not vacuously broad).
    assert expected_writes <= made, f"expected writes not made: {sorted(expected_writes - made)}"
    return docs


def _tag_fleet(factory: SessionFactory) -> dict[str, list[str]]:
    users(factory, A, "alice")
    users(factory, B, "alice")
    return {
        "good": launch(factory, A, "us-east-1", GOOD_TAGS, 2),
        "bad": launch(factory, A, "us-east-1", {"created_by": "alice"}, 2) + launch(factory, B, "eu-west-1", {}, 1),
    }


AUDIT = {"required_tags": ["created_by", "department", "project"], "grace_minutes": 45}


def test_report_only_audit_runs_within_a_read_only_member_role(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    fleet = _tag_fleet(factory)
    config = _config(tmp_path, aws.url, audit={**AUDIT, "action": "report"})
    aws.client.reset_calls()
    _run(config, ("audit", "--apply"), ("audit",))
    docs = _assert_covered(aws, config, {"ec2:DescribeInstances"})
    member = {a for s in docs["member_role"]["Statement"] for a in s["Action"]}
    assert member and all(is_read_only(a) for a in member), sorted(a for a in member if not is_read_only(a))
    assert set(states(factory, A, "us-east-1", fleet["bad"][:2]).values()) == {"running"}


def test_stop_audit_and_guard_deactivate(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    fleet = _tag_fleet(factory)
    iam = factory.client("iam", region="us-east-1", account_id=A)
    iam.create_access_key(UserName="alice")
    launch(factory, A, "eu-west-1", GOOD_TAGS, 2)  # A: 4 good + 2 bad running, limit 3
    config = _config(
        tmp_path,
        aws.url,
        audit={**AUDIT, "action": "stop"},
        guard={"max_running_instances": 3, "lockout": {"mode": "deactivate", "revoke_role_sessions": ["ci"]}},
    )
    iam.create_role(RoleName="ci", AssumeRolePolicyDocument="{}")
    aws.client.reset_calls()
    _run(
        config,
        ("audit", "--apply"),
        ("guard", "run", "--apply"),
        ("guard", "release", "--account", A, "--apply", "--start-instances"),
    )
    writes = {"ec2:StopInstances", "ec2:StartInstances", "iam:UpdateAccessKey", "iam:PutUserPolicy"}
    docs = _assert_covered(aws, config, writes | {"iam:DeleteUserPolicy", "iam:PutRolePolicy"})
    member = {a for s in docs["member_role"]["Statement"] for a in s["Action"]}
    assert not {"ec2:TerminateInstances", "ec2:CreateSnapshots", "iam:DeleteAccessKey"} & member
    assert set(states(factory, A, "us-east-1", fleet["good"]).values()) == {"running"}  # released


def test_terminate_audit_guard_delete_and_security_hub(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    fleet = _tag_fleet(factory)
    factory.client("iam", region="us-east-1", account_id=B).create_access_key(UserName="alice")
    launch(factory, B, "us-east-1", GOOD_TAGS, 3)  # B: 3 good after the audit terminates its bad one, limit 2
    config = _config(
        tmp_path,
        aws.url,
        sinks={"hub": {"type": "securityhub"}},
        audit={**AUDIT, "action": "terminate", "notify": ["hub"]},
        guard={"max_running_instances": 2, "lockout": {"mode": "delete"}},
    )
    aws.client.reset_calls()
    _run(config, ("audit", "--apply", "--confirm-terminate"), ("guard", "run", "--apply"))
    writes = {"ec2:TerminateInstances", "ec2:CreateSnapshots", "securityhub:BatchImportFindings"}
    docs = _assert_covered(aws, config, writes | {"ec2:StopInstances", "iam:DeleteAccessKey", "iam:PutUserPolicy"})
    member = {a for s in docs["member_role"]["Statement"] for a in s["Action"]}
    assert "iam:UpdateAccessKey" not in member
    assert set(states(factory, A, "us-east-1", fleet["bad"][:2]).values()) <= {"terminated", "shutting-down"}


def test_window_and_compliance(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    stopped = launch(factory, A, "us-east-1", {"team": "web"}, 2, state="stopped")
    config = _config(
        tmp_path,
        aws.url,
        window={"settle_minutes": 0, "timeout_minutes": 30},
        compliance={"types": ["Custom:InSpec"]},
    )
    aws.client.reset_calls()
    _run(
        config,
        ("window", "open", "--apply"),
        ("window", "close", "--apply"),
        ("compliance", "sync"),
        ("--output-dir", str(tmp_path / "out"), "findings", "inspector"),
    )
    expected = {"ec2:StartInstances", "ec2:StopInstances", "ssm:ListResourceComplianceSummaries"}
    docs = _assert_covered(aws, config, expected | {"inspector2:ListFindings"})
    member = {a for s in docs["member_role"]["Statement"] for a in s["Action"]}
    # No guard limit, no audit action: nothing that terminates or locks anyone out.
    assert not {a for a in member if a.startswith("iam:") and not is_read_only(a)}
    assert "ec2:TerminateInstances" not in member
    assert set(states(factory, A, "us-east-1", stopped).values()) == {"stopped"}


def test_read_only_tier_covers_a_report_only_audit(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    _tag_fleet(factory)
    config = _config(tmp_path, aws.url, audit={**AUDIT, "action": "report"})
    aws.client.reset_calls()
    _run(config, ("audit",))
    docs = policy_documents(load_config(config), "read-only")
    granted = {a for d in ("hub", "member_role") for s in docs[d]["Statement"] for a in s["Action"]}
    assert _made(aws) - UNGATED <= granted


class _Clock:
    """Moves only when the workflow sleeps (the window's settle and coverage polls), as in test_window_run.py."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_window_run_waiting_for_inspector(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    from fleetwarden.workflows.base import RunContext
    from fleetwarden.workflows.window import RunOptions, run_window

    stopped = launch(factory, A, "us-east-1", {}, 2, state="stopped")
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 1}})
    config = _config(tmp_path, aws.url, window={"settle_minutes": 1, "timeout_minutes": 30})
    aws.client.reset_calls()
    clock = _Clock()
    report = run_window(RunContext.create(load_config(config), clock=clock, sleep=clock.sleep), RunOptions(apply=True))
    assert report.summary["coverage"]["complete"] is True
    _assert_covered(aws, config, {"ec2:StartInstances", "ec2:StopInstances", "inspector2:ListCoverage"})
    assert set(states(factory, A, "us-east-1", stopped).values()) == {"stopped"}


def test_spend_report_reads_cost_explorer_through_the_billing_role(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    billing_role = "arn:aws:iam::999999999999:role/FleetWardenBilling"
    lines = [{"date": "2026-11-02", "account": A, "service": "Amazon Elastic Compute Cloud - Compute", "usd": "9.5"}]
    aws.admin("/_fleetwarden/ce/costs", {"account_id": "999999999999", "lines": lines})
    config = _config(tmp_path, aws.url, spend_report={"billing_account": {"role_arn": billing_role}})
    _run(config, ("spend", "report", "--as-of", "2026-11-16"))
    made = _made(aws)
    docs = policy_documents(load_config(config))
    billing = {a for s in docs["billing_role"]["Statement"] for a in s["Action"]}
    assert "ce:GetCostAndUsage" in made and billing == {"ce:GetCostAndUsage"}
    assume = [s for s in docs["hub"]["Statement"] if "sts:AssumeRole" in s["Action"]]
    assert any(billing_role in s["Resource"] for s in assume), assume
    hub_and_member = {a for d in ("hub", "member_role") for s in docs[d]["Statement"] for a in s["Action"]}
    assert made - UNGATED - {"ce:GetCostAndUsage"} <= hub_and_member
