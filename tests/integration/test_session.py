"""The session factory against the emulator: assume-role maps to the target account; clients are cached."""

from __future__ import annotations

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.config import AwsSettings
from fleetwarden.emulator.server import EmulatorServer


def test_assume_role_reaches_the_target_account(factory: SessionFactory) -> None:
    factory.register_account(
        AccountAccess("111111111111", "arn:aws:iam::111111111111:role/FleetWarden", external_id="xyz")
    )
    sts = factory.client("sts", region="us-east-1", account_id="111111111111")
    assert sts.get_caller_identity()["Account"] == "111111111111"
    # Resources created through the assumed role live in that account only.
    ec2_a = factory.client("ec2", region="eu-west-1", account_id="111111111111")
    ec2_a.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2)
    ec2_base = factory.client("ec2", region="eu-west-1")
    base_count = sum(len(r["Instances"]) for r in ec2_base.describe_instances()["Reservations"])
    a_count = sum(len(r["Instances"]) for r in ec2_a.describe_instances()["Reservations"])
    assert (a_count, base_count) == (2, 0)


def test_clients_are_cached_and_calls_counted(factory: SessionFactory) -> None:
    one = factory.client("ec2", region="us-east-1")
    assert factory.client("ec2", region="us-east-1") is one
    assert factory.client("ec2", region="eu-west-1") is not one
    before = factory.counter.total
    one.describe_instances()
    assert factory.counter.total == before + 1
    assert factory.counter.calls["ec2:DescribeInstances"] == 1


def test_role_assumed_once_per_account(factory: SessionFactory) -> None:
    factory.register_account(AccountAccess("222222222222", "arn:aws:iam::222222222222:role/FleetWarden"))
    for region in ("us-east-1", "eu-west-1", "ap-south-1"):
        factory.client("ec2", region=region, account_id="222222222222")
    assert factory.counter.calls.get("sts:AssumeRole") == 1


def test_clients_share_their_class_but_not_credentials_or_region(factory: SessionFactory) -> None:
    for account in ("111111111111", "222222222222"):
        factory.register_account(AccountAccess(account, f"arn:aws:iam::{account}:role/FleetWarden"))
    one = factory.client("ec2", region="us-east-1", account_id="111111111111")
    two = factory.client("ec2", region="eu-west-1", account_id="222222222222")
    assert type(one) is type(two)  # built once: the generated class is the costly part of a client
    assert one.meta.region_name == "us-east-1" and two.meta.region_name == "eu-west-1"
    one.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)
    assert len(two.describe_instances()["Reservations"]) == 0  # account 222... sees none of 111...'s
    sts_one = factory.client("sts", region="us-east-1", account_id="111111111111")
    sts_two = factory.client("sts", region="us-east-1", account_id="222222222222")
    assert sts_one.get_caller_identity()["Account"] == "111111111111"
    assert sts_two.get_caller_identity()["Account"] == "222222222222"


def test_client_cache_is_bounded(aws: EmulatorServer) -> None:
    factory = SessionFactory(AwsSettings(endpoint_url=aws.url, max_concurrency=1), run_id="t")
    first = factory.client("ec2", region="us-east-1")
    services = ["sqs", "sns", "iam", "sts", "s3", "ssm", "kms", "ec2", "autoscaling", "cloudwatch"]
    regions = ["eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "ap-south-1", "us-west-1", "us-west-2"]
    for service in services:
        for region in regions:
            factory.client(service, region=region)
    assert len(factory._clients) == 64  # 71 made, the least recently used dropped
    assert factory.client("ec2", region="us-east-1") is not first  # evicted, made again on demand
