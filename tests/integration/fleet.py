"""Helpers for integration tests: seed instances and users in the emulator, back-date launch times, run the CLI.

Back-dating goes straight into moto's in-process backend: the test server runs in this process, and EC2 has
no API to set a launch time (see ../shared/MOTO.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.cli import main

ACCOUNTS = ("111111111111", "222222222222", "333333333333")
WINDOW_REGIONS = ["us-east-1", "eu-west-1"]
GOOD_TAGS = {"created_by": "alice", "department": "eng", "project": "web"}


def role(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:role/FleetWarden"


def register(factory: SessionFactory, *accounts: str) -> None:
    for account_id in accounts:
        factory.register_account(AccountAccess(account_id, role(account_id)))


Inbox = tuple[str, Any, str]


def sns_inbox(factory: SessionFactory, name: str, region: str = "us-east-1") -> Inbox:
    """An SNS topic `fleetwarden-<name>` with an SQS queue subscribed (raw delivery), where a test reads what the
    tool published: (topic arn, sqs client, queue url)."""
    sns, sqs = factory.client("sns", region=region), factory.client("sqs", region=region)
    topic = sns.create_topic(Name=f"fleetwarden-{name}")["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    return topic, sqs, queue


def drain(inbox: Inbox) -> list[str]:
    """Every message body waiting in the inbox's queue, oldest first; the queue is left empty."""
    _, sqs, queue = inbox
    out: list[str] = []
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in got:
            out.append(message["Body"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return out


def ec2(factory: SessionFactory, account_id: str, region: str) -> Any:
    register(factory, account_id)
    return factory.client("ec2", region=region, account_id=account_id)


def launch(
    factory: SessionFactory,
    account_id: str,
    region: str,
    tags: dict[str, str],
    count: int = 1,
    *,
    age_minutes: int = 180,
    state: str = "running",
    volumes: int = 1,
) -> list[str]:
    """Start `count` instances in one reservation with these tags, launched `age_minutes` ago."""
    client = ec2(factory, account_id, region)
    kwargs: dict[str, Any] = {"ImageId": "ami-12345678", "MinCount": count, "MaxCount": count}
    if tags:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    if volumes > 1:
        devices = ["/dev/sda1"] + [f"/dev/sd{chr(ord('f') + i)}" for i in range(volumes - 1)]
        kwargs["BlockDeviceMappings"] = [{"DeviceName": d, "Ebs": {"VolumeSize": 8}} for d in devices]
    ids = [i["InstanceId"] for i in client.run_instances(**kwargs)["Instances"]]
    if state == "stopped":
        client.stop_instances(InstanceIds=ids)
    backdate(account_id, region, ids, age_minutes)
    return ids


def backdate(account_id: str, region: str, instance_ids: list[str], age_minutes: int) -> None:
    from moto.ec2.models import ec2_backends

    when = (datetime.now(UTC) - timedelta(minutes=age_minutes)).replace(tzinfo=None)
    backend = ec2_backends[account_id][region]
    wanted = set(instance_ids)
    for reservation in backend.reservations.values():
        for instance in reservation.instances:
            if instance.id in wanted:
                instance.launch_time = when


def users(factory: SessionFactory, account_id: str, *names: str) -> None:
    register(factory, account_id)
    iam = factory.client("iam", region="us-east-1", account_id=account_id)
    for name in names:
        iam.create_user(UserName=name)


def states(factory: SessionFactory, account_id: str, region: str, ids: list[str]) -> dict[str, str]:
    client = ec2(factory, account_id, region)
    out = {}
    for page in client.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                out[inst["InstanceId"]] = inst["State"]["Name"]
    return out


def write_config(
    tmp_path: Path,
    endpoint: str,
    accounts: tuple[str, ...],
    regions: list[str],
    top: dict[str, Any] | None = None,
    **audit: Any,
) -> Path:
    """A config for these accounts (by assume-role) and regions; `audit` keys override, `top` adds sections."""
    config: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in accounts],
        "regions": regions,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "audit": {
            "required_tags": ["created_by", "department", "project"],
            "tag_values": {"department": ["sysops", "eng", "finance"], "project": "re:^[a-z0-9-]+$"},
            "created_by_must_be_iam_user": True,
            "grace_minutes": 45,
            **audit,
        },
    }
    config.update(top or {})
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def window_config(tmp_path: Path, endpoint: str, **window: Any) -> Path:
    """A scan-window config for accounts A and B in WINDOW_REGIONS (guard limit 100); `window` keys override."""
    config: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in ACCOUNTS[:2]],
        "regions": WINDOW_REGIONS,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "window": {"settle_minutes": 0, "timeout_minutes": 30, **window},
        "guard": {"max_running_instances": 100},
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


def cli(*args: str, input: str | None = None) -> CliResult:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)
