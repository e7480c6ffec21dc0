"""`fleetwarden guard` end to end against the emulator: trips, halt across regions, lockout, notify, release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, Inbox, cli, drain, ec2, launch, role, sns_inbox, states

from fleetwarden.actions.iam_lockout import LOCKOUT_POLICY
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A, B, C = ACCOUNTS
REGIONS = ["us-east-1", "eu-west-1"]


def guard_config(tmp_path: Path, endpoint: str, topic: str | None = None, **guard: Any) -> Path:
    config: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
        "regions": REGIONS,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "guard": {"max_running_instances": 4, "lockout": {"exempt_users": ["breakglass"]}, **guard},
    }
    if topic:
        config["sinks"] = {"ops": {"type": "sns", "topic_arn": topic}}
        config["guard"]["notify"] = ["ops"]
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def inbox(factory: SessionFactory) -> Inbox:
    return sns_inbox(factory, "alerts")


messages = drain


def iam_user(factory: SessionFactory, account: str, name: str, keys: int = 1) -> list[str]:
    iam = factory.client("iam", region="us-east-1", account_id=account)
    iam.create_user(UserName=name)
    return [iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"] for _ in range(keys)]


def key_status(factory: SessionFactory, account: str, user: str) -> dict[str, str]:
    iam = factory.client("iam", region="us-east-1", account_id=account)
    return {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}


def user_policies(factory: SessionFactory, account: str, user: str) -> list[str]:
    iam = factory.client("iam", region="us-east-1", account_id=account)
    return list(iam.list_user_policies(UserName=user)["PolicyNames"])


@pytest.fixture
def tripping(factory: SessionFactory) -> dict[str, Any]:
    """Account A runs 5 instances over two regions (limit 4); account B runs exactly 4 (at the limit)."""
    out: dict[str, Any] = {
        "a_east": launch(factory, A, "us-east-1", {}, 3),
        "a_west": launch(factory, A, "eu-west-1", {}, 2),
        "b_east": launch(factory, B, "us-east-1", {}, 4),
    }
    out["a_keys"] = iam_user(factory, A, "dev", keys=2)
    iam = factory.client("iam", region="us-east-1", account_id=A)
    iam.update_access_key(UserName="dev", AccessKeyId=out["a_keys"][1], Status="Inactive")
    out["glass_keys"] = iam_user(factory, A, "breakglass")
    out["b_keys"] = iam_user(factory, B, "dev")
    return out


def test_dry_run_evaluates_and_plans_only(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory, inbox: Any
) -> None:
    config = guard_config(tmp_path, aws.url, topic=inbox[0])
    result = cli("--config", str(config), "--json", "guard", "run")
    assert result.exit_code == 0, result.stderr
    report = result.report
    assert report["summary"]["tripped"] == [A]
    assert report["summary"]["running_by_account"] == {A: 5, B: 4}
    planned = {a["resource_id"] for a in report["actions"] if a["action"] == "stop" and a["outcome"] == "planned"}
    assert planned == set(tripping["a_east"] + tripping["a_west"])
    assert set(states(factory, A, "us-east-1", tripping["a_east"]).values()) == {"running"}
    assert key_status(factory, A, "dev")[tripping["a_keys"][0]] == "Active"
    assert messages(inbox) == []  # nothing sent
    status = cli("--config", str(config), "--json", "guard", "status")
    assert json.loads(status.stdout) == {"schema": "fleetwarden.guard-status/v1", "accounts": []}  # none recorded


def test_trip_halts_locks_out_notifies_once_and_release_restores(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory, inbox: Any
) -> None:
    config = guard_config(tmp_path, aws.url, topic=inbox[0])
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    # A is halted in both regions; B, at its limit, is untouched
    assert set(states(factory, A, "us-east-1", tripping["a_east"]).values()) == {"stopped"}
    assert set(states(factory, A, "eu-west-1", tripping["a_west"]).values()) == {"stopped"}
    assert set(states(factory, B, "us-east-1", tripping["b_east"]).values()) == {"running"}
    # lockout: the active key is deactivated, the already-inactive one stays as it was, the deny policy is on
    assert set(key_status(factory, A, "dev").values()) == {"Inactive"}
    assert user_policies(factory, A, "dev") == [LOCKOUT_POLICY]
    assert key_status(factory, A, "breakglass") == {tripping["glass_keys"][0]: "Active"}  # exempt
    assert user_policies(factory, A, "breakglass") == []
    assert key_status(factory, B, "dev") == {tripping["b_keys"][0]: "Active"}
    sent = messages(inbox)
    assert len(sent) == 1 and A in sent[0] and "5 running+pending instances > limit 4" in sent[0]
    assert result.report["findings"][0]["check"] == "runaway" and result.report["findings"][0]["resource_id"] == A

    # A repeat run while tripped and with nothing running: no new message.
    again = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert again.exit_code == 0 and messages(inbox) == []
    # Someone starts an instance while tripped: the halt is enforced again, and that is worth a message.
    ec2(factory, A, "eu-west-1").start_instances(InstanceIds=tripping["a_west"][:1])
    enforce = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert states(factory, A, "eu-west-1", tripping["a_west"][:1])[tripping["a_west"][0]] == "stopped"
    assert len(messages(inbox)) == 1 and enforce.exit_code == 0

    status = json.loads(cli("--config", str(config), "--json", "guard", "status").stdout)["accounts"]
    assert [(s["account_id"], s["tripped"]) for s in status] == [(A, True)]

    dry = cli("--config", str(config), "--json", "guard", "release", "--account", A)
    assert dry.exit_code == 0 and set(key_status(factory, A, "dev").values()) == {"Inactive"}
    released = cli(
        "--config", str(config), "--json", "guard", "release", "--account", A, "--apply", "--start-instances"
    )
    assert released.exit_code == 0, released.stderr
    keys = key_status(factory, A, "dev")
    assert keys == {tripping["a_keys"][0]: "Active", tripping["a_keys"][1]: "Inactive"}
    assert user_policies(factory, A, "dev") == []
    assert set(states(factory, A, "us-east-1", tripping["a_east"]).values()) == {"running"}
    status = json.loads(cli("--config", str(config), "--json", "guard", "status").stdout)["accounts"]
    assert [(s["account_id"], s["tripped"]) for s in status] == [(A, False)]
    assert any(f"guard release of account {A}" in m for m in messages(inbox))


def test_nothing_over_the_limit_does_nothing(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory, inbox: Any
) -> None:
    ids = launch(factory, A, "us-east-1", {}, 4)
    keys = iam_user(factory, A, "dev")
    config = guard_config(tmp_path, aws.url, topic=inbox[0])
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0
    assert result.report["summary"]["tripped"] == [] and result.report["actions"] == []
    assert set(states(factory, A, "us-east-1", ids).values()) == {"running"}
    assert key_status(factory, A, "dev") == {keys[0]: "Active"}
    assert messages(inbox) == []


def test_per_account_override_and_org_limit(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    launch(factory, A, "us-east-1", {}, 3)
    launch(factory, B, "us-east-1", {}, 3)
    config = guard_config(tmp_path, aws.url, max_running_instances=10, max_running_instances_org=5)
    report = cli("--config", str(config), "--json", "guard", "run").report
    assert report["summary"]["tripped"] == [A, B]  # 6 in the organization > 5
    data = yaml.safe_load(config.read_text())
    data["guard"]["max_running_instances_org"] = None
    data["accounts"][0]["guard"] = {"max_running_instances": 2}
    config.write_text(yaml.safe_dump(data))
    report = cli("--config", str(config), "--json", "guard", "run").report
    assert report["summary"]["tripped"] == [A]


def test_region_failing_mid_halt_does_not_stop_the_others(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory
) -> None:
    aws.client.set_faults([{"region": "eu-west-1", "service": "ec2", "action": "StopInstances"}])
    config = guard_config(tmp_path, aws.url)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    aws.client.set_faults([])
    assert result.exit_code == 4
    assert set(states(factory, A, "us-east-1", tripping["a_east"]).values()) == {"stopped"}
    assert set(states(factory, A, "eu-west-1", tripping["a_west"]).values()) == {"running"}
    failed = {a["resource_id"] for a in result.report["actions"] if a["outcome"] == "failed"}
    assert failed == set(tripping["a_west"])


def test_throttled_stop_is_retried(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory
) -> None:
    aws.client.set_faults([{"service": "ec2", "action": "StopInstances", "mode": "throttle", "limit": 1}])
    config = guard_config(tmp_path, aws.url)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    faults = aws.client.calls()["faults"]
    aws.client.set_faults([])
    assert result.exit_code == 0, result.stderr
    assert faults == 1
    assert set(states(factory, A, "eu-west-1", tripping["a_west"]).values()) == {"stopped"}


def test_asg_processes_suspended_and_resumed(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    client = ec2(factory, A, "us-east-1")
    autoscaling = factory.client("autoscaling", region="us-east-1", account_id=A)
    template = client.create_launch_template(
        LaunchTemplateName="web", LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": "t3.micro"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="web",
        LaunchTemplate={"LaunchTemplateId": template},
        MinSize=5,
        MaxSize=5,
        DesiredCapacity=5,
        AvailabilityZones=["us-east-1a"],
    )
    autoscaling.suspend_processes(AutoScalingGroupName="web", ScalingProcesses=["AZRebalance"])
    config = guard_config(tmp_path, aws.url)
    assert cli("--config", str(config), "--json", "guard", "run", "--apply").exit_code == 0

    def suspended() -> set[str]:
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])["AutoScalingGroups"][0]
        return {p["ProcessName"] for p in group["SuspendedProcesses"]}

    assert suspended() == {"Launch", "HealthCheck", "ReplaceUnhealthy", "AZRebalance"}
    released = cli("--config", str(config), "--json", "guard", "release", "--account", A, "--apply")
    assert released.exit_code == 0, released.stderr
    assert [a["outcome"] for a in released.report["actions"]] == ["done"]
    assert suspended() == {"AZRebalance"}  # only what the guard suspended is resumed


def test_burn_rate_spend_trip(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    client = ec2(factory, A, "us-east-1")
    ids = [
        i["InstanceId"]
        for i in client.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, InstanceType="p4d.24xlarge")[
            "Instances"
        ]
    ]
    launch(factory, B, "us-east-1", {}, 2)  # t2.micro: cheap
    config = guard_config(
        tmp_path,
        aws.url,
        max_running_instances=100,
        spend={"max_usd": 100, "window_hours": 6, "sources": ["burn-rate"]},
    )
    report = cli("--config", str(config), "--json", "guard", "run", "--apply").report
    assert report["summary"]["tripped"] == [A]
    assert report["summary"]["spend_by_account"][A]["burn-rate"] > 100
    assert set(states(factory, A, "us-east-1", ids).values()) == {"stopped"}


def test_unreadable_spend_source_is_reported_not_zero(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    launch(factory, A, "us-east-1", {}, 1)
    config = guard_config(
        tmp_path,
        aws.url,
        spend={"max_usd": 100, "sources": [{"type": "cur", "bucket": "no-such-bucket", "prefix": "cur"}]},
    )
    result = cli("--config", str(config), "--json", "guard", "run")
    assert result.exit_code == 4
    errors = [(t["account_id"], t["region"], t["error"]) for t in result.report["targets"] if t["status"] == "error"]
    assert errors == [
        (
            "*",
            "global",
            "spend source: cur: reading the CUR 2.0 export at s3://no-such-bucket/cur with the current credentials: "
            "ListObjectsV2 failed: NoSuchBucket: The specified bucket does not exist",
        )
    ]
    assert result.report["summary"]["tripped"] == []  # an unreadable source is not zero spend, nor a trip


def test_stop_protection_cleared_by_the_halt_is_restored_on_release(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory
) -> None:
    protected = tripping["a_west"][0]
    client = ec2(factory, A, "eu-west-1")
    client.modify_instance_attribute(InstanceId=protected, DisableApiStop={"Value": True})
    config = guard_config(tmp_path, aws.url)
    halted = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert halted.exit_code == 0, halted.stderr
    assert states(factory, A, "eu-west-1", [protected])[protected] == "stopped"  # the halt cleared it to stop it

    def stop_protected() -> bool:
        return bool(
            client.describe_instance_attribute(InstanceId=protected, Attribute="disableApiStop")["DisableApiStop"][
                "Value"
            ]
        )

    assert stop_protected() is False
    plan = cli("--config", str(config), "--json", "guard", "release", "--account", A).report
    assert ("restore-protection", protected, "planned") in {
        (a["action"], a["resource_id"], a["outcome"]) for a in plan["actions"]
    }
    assert stop_protected() is False  # the dry run changed nothing
    released = cli("--config", str(config), "--json", "guard", "release", "--account", A, "--apply")
    assert released.exit_code == 0, released.stderr
    assert stop_protected() is True


def _set_instance_attributes(account: str, region: str, ids: list[str], **attributes: Any) -> None:
    """Set attributes moto has no API for on its in-process instances (the test server runs in this process):
    an instance-store root device, or the spot request id moto leaves out of DescribeInstances."""
    from moto.ec2.models import ec2_backends

    wanted = set(ids)
    found = [i for r in ec2_backends[account][region].reservations.values() for i in r.instances if i.id in wanted]
    assert {i.id for i in found} == wanted
    for instance in found:
        for name, value in attributes.items():
            setattr(instance, name, value)


def _unstoppable(factory: SessionFactory) -> dict[str, Any]:
    """Account A in us-east-1: 3 ordinary instances, one with an instance-store root, one one-time spot."""
    client = ec2(factory, A, "us-east-1")
    out: dict[str, Any] = {"plain": launch(factory, A, "us-east-1", {}, 3)}
    out["store"] = launch(factory, A, "us-east-1", {})[0]
    _set_instance_attributes(A, "us-east-1", [out["store"]], root_device_type="instance-store")
    request = client.request_spot_instances(
        InstanceCount=1, Type="one-time", LaunchSpecification={"ImageId": "ami-12345678", "InstanceType": "t3.micro"}
    )["SpotInstanceRequests"][0]
    out["spot"] = request["InstanceId"]
    _set_instance_attributes(A, "us-east-1", [out["spot"]], spot_instance_request_id=request["SpotInstanceRequestId"])
    return out


def test_unstoppable_instances_are_left_running_by_default(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    fleet = _unstoppable(factory)
    config = guard_config(tmp_path, aws.url, lockout={"mode": "off"})
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    assert result.report["summary"]["tripped"] == [A]
    everything = [*fleet["plain"], fleet["store"], fleet["spot"]]
    assert states(factory, A, "us-east-1", everything) == {
        **{i: "stopped" for i in fleet["plain"]},
        fleet["store"]: "running",
        fleet["spot"]: "running",
    }
    outcomes = {a["resource_id"]: (a["action"], a["outcome"], a["reason"]) for a in result.report["actions"]}
    assert outcomes[fleet["store"]] == (
        "stop",
        "skipped",
        "cannot be stopped (instance-store root volume); on_unstoppable: leave",
    )
    assert outcomes[fleet["spot"]] == (
        "stop",
        "skipped",
        "cannot be stopped (one-time spot instance); on_unstoppable: leave",
    )
    assert {outcomes[i][:2] for i in fleet["plain"]} == {("stop", "done")}
    assert not [a for a in result.report["actions"] if a["action"] == "terminate"]


def test_unstoppable_instances_are_snapshotted_then_terminated(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    fleet = _unstoppable(factory)
    client = ec2(factory, A, "us-east-1")
    unstoppable = [fleet["store"], fleet["spot"]]
    volumes = {
        raw["InstanceId"]: {m["Ebs"]["VolumeId"] for m in raw["BlockDeviceMappings"]}
        for r in client.describe_instances(InstanceIds=unstoppable)["Reservations"]
        for raw in r["Instances"]
    }
    assert all(volumes[i] for i in unstoppable)  # each has a volume to snapshot
    config = guard_config(tmp_path, aws.url, on_unstoppable="terminate", lockout={"mode": "off"})

    plan = cli("--config", str(config), "--json", "guard", "run")
    assert plan.exit_code == 0, plan.stderr
    planned = {(a["action"], a["resource_id"], a["outcome"]) for a in plan.report["actions"]}
    assert {("terminate", i, "planned") for i in unstoppable} <= planned
    assert set(states(factory, A, "us-east-1", unstoppable).values()) == {"running"}  # the dry run changed nothing

    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    assert states(factory, A, "us-east-1", [*fleet["plain"], *unstoppable]) == {
        **{i: "stopped" for i in fleet["plain"]},
        **{i: "terminated" for i in unstoppable},
    }
    snapshots = client.describe_snapshots(
        Filters=[{"Name": "tag:fleetwarden:instance-id", "Values": unstoppable}], OwnerIds=["self"]
    )["Snapshots"]
    by_instance: dict[str, set[str]] = {}
    for snap in snapshots:
        tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
        by_instance.setdefault(tags["fleetwarden:instance-id"], set()).add(snap["VolumeId"])
        assert snap["State"] == "completed"
    assert by_instance == volumes  # every volume of each terminated instance was snapshotted
    terminated = {a["resource_id"]: a for a in result.report["actions"] if a["action"] == "terminate"}
    assert set(terminated) == set(unstoppable)
    for instance_id, action in terminated.items():
        mine = sorted(s["SnapshotId"] for s in snapshots if s["VolumeId"] in volumes[instance_id])
        assert action["outcome"] == "done" and action["reason"].endswith(f"snapshots: {', '.join(mine)}")


def test_a_failing_region_still_trips_on_the_partial_count(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    """docs/guard.md: a region that cannot be counted makes the count a lower bound; the account still trips
    if the regions that answered already pass the limit (and is only reported as partial otherwise)."""
    a_east = launch(factory, A, "us-east-1", {}, 3)
    a_west = launch(factory, A, "eu-west-1", {}, 2)
    b_east = launch(factory, B, "us-east-1", {}, 1)
    b_west = launch(factory, B, "eu-west-1", {}, 5)  # B is over the limit too, but only in the region that fails
    keys = iam_user(factory, A, "dev")
    aws.client.set_faults([{"region": "eu-west-1", "service": "ec2", "action": "DescribeInstances"}])
    config = guard_config(tmp_path, aws.url, max_running_instances=2)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    aws.client.set_faults([])
    assert result.exit_code == 4
    summary = result.report["summary"]
    assert summary["running_by_account"] == {A: 3, B: 1}
    assert summary["tripped"] == [A] and summary["newly_tripped"] == [A]
    errors = {(t["account_id"], t["region"]) for t in result.report["targets"] if t["status"] == "error"}
    assert errors == {(A, "eu-west-1"), (B, "eu-west-1")}
    # A is halted where it could be counted, and locked out; the region nobody could read is untouched.
    assert set(states(factory, A, "us-east-1", a_east).values()) == {"stopped"}
    assert set(states(factory, A, "eu-west-1", a_west).values()) == {"running"}
    assert key_status(factory, A, "dev") == {keys[0]: "Inactive"}
    # B (1 counted of a real 6) does not trip on what was seen; nothing of B changes.
    assert set(states(factory, B, "us-east-1", b_east).values()) == {"running"}
    assert set(states(factory, B, "eu-west-1", b_west).values()) == {"running"}
    status = json.loads(cli("--config", str(config), "--json", "guard", "status").stdout)["accounts"]
    assert [(s["account_id"], s["tripped"]) for s in status] == [(A, True)]


def test_a_failed_lockout_is_reported_and_the_halt_still_happens(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory
) -> None:
    aws.client.set_faults([{"service": "iam", "action": "ListUsers"}])
    config = guard_config(tmp_path, aws.url)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    aws.client.set_faults([])
    assert result.exit_code == 4
    assert set(states(factory, A, "us-east-1", tripping["a_east"]).values()) == {"stopped"}
    assert set(states(factory, A, "eu-west-1", tripping["a_west"]).values()) == {"stopped"}
    # Without the user list nothing can be locked: reported as one failed lockout action of account A.
    failed = [a for a in result.report["actions"] if a["outcome"] == "failed"]
    assert [(a["account_id"], a["action"], a["resource_id"]) for a in failed] == [(A, "deny-user", "*")]
    assert failed[0]["reason"].startswith("cannot list users: ") and "ServiceUnavailable" in failed[0]["reason"]
    # Nothing of the lockout happened: the active key is still active, no deny policy.
    assert key_status(factory, A, "dev") == {tripping["a_keys"][0]: "Active", tripping["a_keys"][1]: "Inactive"}
    assert user_policies(factory, A, "dev") == []
    status = json.loads(cli("--config", str(config), "--json", "guard", "status").stdout)["accounts"]
    assert [(s["account_id"], s["tripped"]) for s in status] == [(A, True)]


def test_a_failed_lockout_is_retried_by_the_next_run(
    aws: EmulatorServer, tmp_path: Path, tripping: dict[str, Any], factory: SessionFactory
) -> None:
    aws.client.set_faults([{"service": "iam", "action": "ListUsers"}])
    config = guard_config(tmp_path, aws.url)
    assert cli("--config", str(config), "--json", "guard", "run", "--apply").exit_code == 4
    aws.client.set_faults([])
    again = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert again.exit_code == 0, again.stderr
    assert set(key_status(factory, A, "dev").values()) == {"Inactive"}
    assert user_policies(factory, A, "dev") == [LOCKOUT_POLICY]
