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


def test_a_hub_outside_the_management_account_reaches_it_through_the_role(
    aws: EmulatorServer, factory: SessionFactory
) -> None:
    """A hub in a dedicated account (docs/deploy.md): its credentials are not the management account's, so the
    management account is reached through the organization's role like a member, not reported as an error."""
    import boto3

    org = factory.client("organizations", region="us-east-1")
    org.create_organization(FeatureSet="ALL")
    management = org.describe_organization()["Organization"]["MasterAccountId"]
    hub = org.create_account(AccountName="hub", Email="hub@example.com")["CreateAccountStatus"]["AccountId"]
    # The hub's own credentials: a role session in the hub account (moto maps it to that account).
    creds = factory.client("sts", region="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{hub}:role/HubFunction", RoleSessionName="hub"
    )["Credentials"]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name="us-east-1",
    )
    from_hub = SessionFactory(factory.settings, base_session=session)
    assert from_hub.caller_identity()["account_id"] == hub
    config = parse_config("organization: {role_name: FleetWarden}\nregions: [us-east-1]\n", "t.yaml")
    # moto keeps an organization per calling account, so the hub's calls would see none: the listing is the one
    # the organization's API gives (read here with the management account's credentials), supplied as a shard's is.
    from fleetwarden.aws.targets import _organization_accounts, org_listing

    with org_listing(_organization_accounts(config, factory)):
        plan = resolve_targets(config, from_hub)
    access = {a.account_id: a for a in plan.accounts}
    assert access[management].role_arn == f"arn:aws:iam::{management}:role/FleetWarden"
    assert access[hub].role_arn == f"arn:aws:iam::{hub}:role/FleetWarden"
    assert plan.errors == [], plan.errors
