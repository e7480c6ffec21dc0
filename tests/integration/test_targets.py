"""Targets: explicit accounts merged with the organization's ACTIVE ones; `regions: all` minus exclusions."""

from __future__ import annotations

from fleetwarden.aws.session import SessionFactory
from fleetwarden.aws.targets import resolve_targets
from fleetwarden.config import parse_config
from fleetwarden.emulator.server import EmulatorServer


def test_organization_active_accounts_merged_with_explicit(aws: EmulatorServer, factory: SessionFactory) -> None:
    org = factory.client("organizations", region="us-east-1")
    org.create_organization(FeatureSet="ALL")
    management = org.describe_organization()["Organization"]["MasterAccountId"]
    ids = []
    for name in ("dev", "prod", "old"):
        status = org.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]
        ids.append(status["AccountId"])
    dev, prod, old = ids
    org.close_account(AccountId=old)
    config = parse_config(
        f"""
accounts:
  - {{id: "{prod}", role_arn: "arn:aws:iam::{prod}:role/Custom", external_id: "x"}}
organization: {{role_name: FleetWarden, external_id: "ext"}}
regions: [us-east-1]
""",
        "t.yaml",
    )
    plan = resolve_targets(config, factory)
    access = {a.account_id: a for a in plan.accounts}
    assert set(access) == {management, dev, prod}  # the closed account is left out
    assert access[management].role_arn is None  # the management account uses the current credentials
    assert access[dev].role_arn == f"arn:aws:iam::{dev}:role/FleetWarden" and access[dev].external_id == "ext"
    assert access[prod].role_arn == f"arn:aws:iam::{prod}:role/Custom"  # an explicit entry wins
    # the member role really is assumed: the client acts in that account
    sts = factory.client("sts", region="us-east-1", account_id=dev)
    assert sts.get_caller_identity()["Account"] == dev


def test_management_account_can_be_left_out(aws: EmulatorServer, factory: SessionFactory) -> None:
    org = factory.client("organizations", region="us-east-1")
    org.create_organization(FeatureSet="ALL")
    member = org.create_account(AccountName="dev", Email="dev@example.com")["CreateAccountStatus"]["AccountId"]
    config = parse_config("organization: {include_management_account: false}\n", "t.yaml")
    assert [a.account_id for a in resolve_targets(config, factory).accounts] == [member]


def test_all_regions_minus_excluded(aws: EmulatorServer, factory: SessionFactory) -> None:
    config = parse_config(
        'accounts: [{id: "111111111111", role_arn: "arn:aws:iam::111111111111:role/FleetWarden"}]\n'
        "regions: all\nexclude_regions: [eu-west-1, us-west-1]\n",
        "t.yaml",
    )
    plan = resolve_targets(config, factory)
    regions = {t.region for t in plan.targets}
    assert {"us-east-1", "eu-central-1", "ap-southeast-2"} <= regions
    assert not regions & {"eu-west-1", "us-west-1"}
    assert {t.account_id for t in plan.targets} == {"111111111111"}
    assert plan.errors == []


def test_no_accounts_means_the_current_account(aws: EmulatorServer, factory: SessionFactory) -> None:
    plan = resolve_targets(parse_config("regions: [eu-west-1]\n", "t.yaml"), factory)
    assert [(t.account_id, t.region) for t in plan.targets] == [("123456789012", "eu-west-1")]
