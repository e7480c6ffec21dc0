"""The guard's containment beyond the halt: the quarantine SCP (attached from the management account to a tripped
account, created once and reused, exactly detached on release, never on the management account, reported where
SCPs are not enabled) and the sweep of the enabled regions the config does not list.

moto implements Organizations policies (create, update, attach, detach, list for a target) but does not enforce
SCPs: what is checked is the attachment, the policy document and the release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from fleet import cli, launch, states

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

REGION = "us-east-1"
UNLISTED = "eu-west-1"
NAME = "fleetwarden-quarantine"
BREAK_GLASS = "arn:aws:iam::*:role/BreakGlass"


def _org(factory: SessionFactory, *, scps: bool = True) -> tuple[Any, str, str, str]:
    org = factory.client("organizations", region=REGION)
    org.create_organization(FeatureSet="ALL")
    management = org.describe_organization()["Organization"]["MasterAccountId"]
    a, b = (org.create_account(AccountName=n, Email=f"{n}@example.com")["CreateAccountStatus"]["AccountId"]
            for n in ("dev", "prod"))  # fmt: skip
    if scps:
        root = org.list_roots()["Roots"][0]["Id"]
        org.enable_policy_type(RootId=root, PolicyType="SERVICE_CONTROL_POLICY")
    return org, management, a, b


def _config(tmp_path: Path, aws: EmulatorServer) -> str:
    config = {
        "aws": {"endpoint_url": aws.url, "max_attempts": 2, "max_concurrency": 8},
        "organization": {"role_name": "FleetWarden"},
        "regions": [REGION],
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "guard": {
            "max_running_instances": 1,
            "lockout": {"mode": "off"},
            "quarantine": {"enabled": True, "exempt_principals": [BREAK_GLASS]},
        },
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _attached(org: Any, account_id: str) -> list[str]:
    """The SCPs on an account besides FullAWSAccess (attached to every account by default, as in AWS)."""
    listed = org.list_policies_for_target(TargetId=account_id, Filter="SERVICE_CONTROL_POLICY")["Policies"]
    return [p["Name"] for p in listed if p["Name"] != "FullAWSAccess"]


def _register(factory: SessionFactory, *accounts: str) -> None:
    from fleetwarden.aws.session import AccountAccess

    for account_id in accounts:
        factory.register_account(AccountAccess(account_id, f"arn:aws:iam::{account_id}:role/FleetWarden"))


def test_a_trip_quarantines_the_account_and_release_detaches_exactly(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    org, management, a, b = _org(factory)
    _register(factory, a, b)
    tripping = launch(factory, a, REGION, {}, count=2)
    hidden = launch(factory, a, UNLISTED, {}, count=2)  # a region the config does not list
    quiet = launch(factory, b, REGION, {})
    on_management = launch(factory, management, REGION, {}, count=2)
    config = _config(tmp_path, aws)

    dry = cli("--config", config, "--json", "guard", "run")
    assert dry.exit_code == 0, dry.stderr
    planned = {(x["account_id"], x["outcome"]) for x in dry.report["actions"] if x["action"] == "quarantine"}
    assert (a, "planned") in planned and _attached(org, a) == []
    assert not org.list_policies(Filter="SERVICE_CONTROL_POLICY")["Policies"] or all(
        p["Name"] != NAME for p in org.list_policies(Filter="SERVICE_CONTROL_POLICY")["Policies"]
    )

    run = cli("--config", config, "--json", "guard", "run", "--apply")
    assert run.exit_code == 0, run.stderr
    quarantine = {x["account_id"]: x for x in run.report["actions"] if x["action"] == "quarantine"}
    assert quarantine[a]["outcome"] == "done"
    assert quarantine[management]["outcome"] == "skipped" and "management account" in quarantine[management]["reason"]
    assert b not in quarantine
    assert _attached(org, a) == [NAME] and _attached(org, b) == [] and _attached(org, management) == []
    # The halt reached the region the config does not list, and says so.
    assert run.report["summary"]["unlisted_regions"][a] == {UNLISTED: 2}
    assert set(states(factory, a, UNLISTED, hidden).values()) == {"stopped"}
    assert set(states(factory, a, REGION, tripping).values()) == {"stopped"}
    assert states(factory, b, REGION, quiet) == {quiet[0]: "running"}
    assert set(states(factory, management, REGION, on_management).values()) == {"stopped"}

    (policy,) = [p for p in org.list_policies(Filter="SERVICE_CONTROL_POLICY")["Policies"] if p["Name"] == NAME]
    document = json.loads(org.describe_policy(PolicyId=policy["Id"])["Policy"]["Content"])
    (statement,) = document["Statement"]
    assert statement["Effect"] == "Deny" and statement["Resource"] == "*"
    assert {"ec2:RunInstances", "ec2:StartInstances", "iam:CreateAccessKey", "iam:CreateUser", "lambda:CreateFunction",
            "ecs:RunTask", "iam:UpdateAccessKey", "iam:CreateLoginProfile"} <= set(statement["Action"])  # fmt: skip
    exempt = statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    # fleetwarden's member role (with and without a path), the principal it runs as, the break-glass role.
    assert {"arn:aws:iam::*:role/FleetWarden", "arn:aws:iam::*:role/*/FleetWarden", BREAK_GLASS} <= set(exempt)
    identity = factory.client("sts", region=REGION).get_caller_identity()["Arn"]
    assert any(identity == arn or arn.endswith(identity.split("/")[-1]) for arn in exempt)

    again = cli("--config", config, "--json", "guard", "run", "--apply")
    assert [x["outcome"] for x in again.report["actions"] if x["action"] == "quarantine" and x["account_id"] == a] == [
        "skipped"
    ]
    assert len([p for p in org.list_policies(Filter="SERVICE_CONTROL_POLICY")["Policies"] if p["Name"] == NAME]) == 1

    released = cli("--config", config, "--json", "guard", "release", "--account", a, "--apply")
    assert released.exit_code == 0, released.stderr
    assert [x["outcome"] for x in released.report["actions"] if x["action"] == "unquarantine"] == ["done"]
    assert _attached(org, a) == []


def test_an_attachment_made_by_someone_else_is_reused_and_left_on_release(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    org, _management, a, _b = _org(factory)
    _register(factory, a)
    # Someone made a policy of that name (stale content) and attached it to the account before the trip.
    stale = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    policy = org.create_policy(Name=NAME, Type="SERVICE_CONTROL_POLICY", Content=json.dumps(stale), Description="x")
    policy_id = policy["Policy"]["PolicySummary"]["Id"]
    org.attach_policy(PolicyId=policy_id, TargetId=a)
    launch(factory, a, REGION, {}, count=2)
    config = _config(tmp_path, aws)
    run = cli("--config", config, "--json", "guard", "run", "--apply")
    assert run.exit_code == 0, run.stderr
    (action,) = [x for x in run.report["actions"] if x["action"] == "quarantine" and x["account_id"] == a]
    assert action["outcome"] == "skipped" and "already quarantined" in action["reason"]
    content = json.loads(org.describe_policy(PolicyId=policy_id)["Policy"]["Content"])
    assert "ec2:RunInstances" in content["Statement"][0]["Action"]  # brought up to date, reused
    released = cli("--config", config, "--json", "guard", "release", "--account", a, "--apply")
    assert released.exit_code == 0, released.stderr
    assert _attached(org, a) == [NAME]  # not ours to detach


def test_scps_not_enabled_are_reported_and_the_halt_still_happens(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    org, _management, a, _b = _org(factory, scps=False)
    _register(factory, a)
    ids = launch(factory, a, REGION, {}, count=2)
    run = cli("--config", _config(tmp_path, aws), "--json", "guard", "run", "--apply")
    assert run.exit_code == 4  # containment incomplete: partial
    (action,) = [x for x in run.report["actions"] if x["action"] == "quarantine" and x["account_id"] == a]
    assert action["outcome"] == "failed" and "not enabled" in action["reason"]
    assert set(states(factory, a, REGION, ids).values()) == {"stopped"}
    assert _attached(org, a) == []
