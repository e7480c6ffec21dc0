"""AsgProcesses against the moto server, and the guard's halt deciding where and when it suspends them.

moto 5.2.5 implements SuspendProcesses, ResumeProcesses and SuspendedProcesses in DescribeAutoScalingGroups (and
pages DescribeAutoScalingGroups by 50), so no Stubber is needed here. moto launches a group's instances when the
group is created, tagged `aws:autoscaling:groupName`, and runs no health checks (a group whose instances are
terminated behind its back keeps its desired capacity and launches nothing: the case a real group would refill).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.client
import pytest
import yaml
from fleet import cli, ec2, launch, role, states

from fleetwarden.actions.asg import GUARD_PROCESSES, PERMISSIONS, RESUME, SUSPEND, AsgProcesses
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import ActionOutcome, ActionResult, JournalEntry

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _clients(factory: SessionFactory, region: str = REGION) -> tuple[Any, Any]:
    return factory.client("autoscaling", region=region), factory.client("ec2", region=region)


def _group(asg: Any, ec2: Any, name: str, region: str = REGION, suspended: tuple[str, ...] = ()) -> None:
    template = f"lt-{name}"
    ec2.create_launch_template(
        LaunchTemplateName=template, LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": "t3.micro"}
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": template},
        MinSize=0,
        MaxSize=2,
        AvailabilityZones=[f"{region}a"],
    )
    if suspended:
        asg.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=list(suspended))


def _suspended(asg: Any, name: str) -> set[str]:
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return {p["ProcessName"] for p in group.get("SuspendedProcesses", [])}


def _processes(asg: Any, journal: list[JournalEntry], region: str = REGION) -> AsgProcesses:
    return AsgProcesses(
        asg, account_id=ACCOUNT, region=region, run_id="run-9", journal=journal.append, clock=lambda: NOW
    )


def _by(results: list[ActionResult]) -> dict[str, ActionResult]:
    return {r.resource_id: r for r in results}


def test_suspend_adds_only_missing_processes_and_resume_removes_only_those(factory: SessionFactory) -> None:
    asg, ec2 = _clients(factory)
    _group(asg, ec2, "web", suspended=("AZRebalance",))
    _group(asg, ec2, "workers")
    _group(asg, ec2, "frozen", suspended=GUARD_PROCESSES)
    journal: list[JournalEntry] = []
    processes = _processes(asg, journal)

    results = _by(processes.suspend())

    assert _suspended(asg, "web") == set(GUARD_PROCESSES)
    assert _suspended(asg, "workers") == set(GUARD_PROCESSES)
    assert (results["web"].outcome, results["workers"].outcome) == (ActionOutcome.DONE, ActionOutcome.DONE)
    assert results["frozen"].outcome is ActionOutcome.SKIPPED
    web = [e for e in journal if e.resource_id == "web"]
    assert [e.outcome for e in web] == ["planned", "done"] and web[0].id == web[1].id
    assert web[0].before == {
        "already_suspended": ["AZRebalance"],
        "processes": ["Launch", "HealthCheck", "ReplaceUnhealthy"],
    }
    assert web[1].after == {"suspended": ["Launch", "HealthCheck", "ReplaceUnhealthy"]}
    assert not [e for e in journal if e.resource_id == "frozen"]
    assert all((e.account_id, e.region, e.action, e.workflow) == (ACCOUNT, REGION, SUSPEND, "guard") for e in journal)

    suspend_entries = list(journal)
    resumed = _by(processes.resume(suspend_entries))

    assert _suspended(asg, "web") == {"AZRebalance"}
    assert _suspended(asg, "workers") == set()
    assert _suspended(asg, "frozen") == set(GUARD_PROCESSES), "what the guard did not suspend stays suspended"
    assert resumed["web"].outcome is ActionOutcome.DONE and "frozen" not in resumed
    assert {e.action for e in journal[len(suspend_entries) :]} == {RESUME}

    # Idempotent: a second resume changes nothing.
    again = processes.resume(suspend_entries)
    assert {r.outcome for r in again} == {ActionOutcome.SKIPPED}
    assert _suspended(asg, "web") == {"AZRebalance"}


def test_repeat_suspend_journals_nothing_new(factory: SessionFactory) -> None:
    asg, ec2 = _clients(factory)
    _group(asg, ec2, "web", suspended=("AZRebalance",))
    journal: list[JournalEntry] = []
    processes = _processes(asg, journal)
    processes.suspend()
    first = len(journal)

    assert {r.outcome for r in processes.suspend()} == {ActionOutcome.SKIPPED}
    assert len(journal) == first
    processes.resume(journal)
    assert _suspended(asg, "web") == {"AZRebalance"}


def test_plan_mutates_nothing_and_plan_resume_too(factory: SessionFactory) -> None:
    asg, ec2 = _clients(factory)
    _group(asg, ec2, "web", suspended=("AZRebalance",))
    journal: list[JournalEntry] = []
    processes = _processes(asg, journal)

    planned = _by(processes.plan())

    assert planned["web"].outcome is ActionOutcome.PLANNED
    assert planned["web"].reason == "Launch, HealthCheck, ReplaceUnhealthy"
    assert _suspended(asg, "web") == {"AZRebalance"} and journal == []

    processes.suspend()
    entries = list(journal)
    assert _by(processes.plan_resume(entries))["web"].outcome is ActionOutcome.PLANNED
    assert _suspended(asg, "web") == set(GUARD_PROCESSES) and journal == entries


def test_every_page_of_groups_and_only_its_own_region(factory: SessionFactory) -> None:
    asg, ec2 = _clients(factory)
    names = [f"g{i:02d}" for i in range(53)]  # moto pages DescribeAutoScalingGroups by 50
    for name in names:
        _group(asg, ec2, name)
    other_asg, other_ec2 = _clients(factory, "eu-west-1")
    _group(other_asg, other_ec2, "elsewhere", region="eu-west-1")
    journal: list[JournalEntry] = []

    results = _processes(asg, journal).suspend()

    assert sorted(r.resource_id for r in results if r.outcome is ActionOutcome.DONE) == names
    assert _suspended(asg, "g52") == set(GUARD_PROCESSES)
    assert _suspended(other_asg, "elsewhere") == set()

    # A resume bound to another region ignores this region's entries; this region's resume covers every page.
    other_asg.suspend_processes(AutoScalingGroupName="elsewhere", ScalingProcesses=["Launch"])
    assert _processes(other_asg, [], region="eu-west-1").resume(journal) == []
    assert _suspended(other_asg, "elsewhere") == {"Launch"}
    resumed = _processes(asg, journal).resume(journal)
    assert len([r for r in resumed if r.outcome is ActionOutcome.DONE]) == len(names)
    assert _suspended(asg, "g00") == set() and _suspended(asg, "g52") == set()


def test_a_deleted_group_is_skipped_on_resume(factory: SessionFactory) -> None:
    asg, ec2 = _clients(factory)
    _group(asg, ec2, "web")
    _group(asg, ec2, "gone")
    journal: list[JournalEntry] = []
    processes = _processes(asg, journal)
    processes.suspend()
    asg.delete_auto_scaling_group(AutoScalingGroupName="gone", ForceDelete=True)

    resumed = _by(processes.resume(journal))

    assert resumed["gone"].outcome is ActionOutcome.SKIPPED and "no longer exists" in resumed["gone"].reason
    assert resumed["web"].outcome is ActionOutcome.DONE and _suspended(asg, "web") == set()


def test_permissions() -> None:
    assert {"autoscaling:SuspendProcesses", "autoscaling:ResumeProcesses"} <= set(PERMISSIONS)


# -- the guard's halt: where and when Auto Scaling is suspended -------------------------------------------------

TRIPPED = "111111111111"
TAGGED, SWEPT, EMPTY = "us-east-1", "eu-west-1", "us-west-2"


def _guard_config(tmp_path: Path, endpoint: str) -> Path:
    config: dict[str, Any] = {
        # One halt worker: the pool runs its jobs in the order they were queued, so the order is observable.
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 1},
        "accounts": [{"id": TRIPPED, "role_arn": role(TRIPPED)}],
        "regions": [TAGGED, SWEPT, EMPTY],
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "guard": {"max_running_instances": 1, "lockout": {"mode": "off"}},
    }
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _account_group(factory: SessionFactory, region: str, name: str, desired: int) -> tuple[Any, list[str]]:
    """A group in the tripped account with `desired` instances (launched by moto, tagged with the group)."""
    client = ec2(factory, TRIPPED, region)
    autoscaling = factory.client("autoscaling", region=region, account_id=TRIPPED)
    template = client.create_launch_template(
        LaunchTemplateName=f"lt-{name}",
        LaunchTemplateData={"ImageId": "ami-12345678", "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template},
        MinSize=0,
        MaxSize=desired,
        DesiredCapacity=desired,
        AvailabilityZones=[f"{region}a"],
    )
    (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return autoscaling, [i["InstanceId"] for i in group["Instances"]]


class _Calls:
    """Every AWS call the CLI makes in this process: (service, operation, region, start, end)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[tuple[str, str, str, float, float]] = []
        lock = threading.Lock()
        original = botocore.client.BaseClient._make_api_call

        def recorded(client: Any, operation: str, params: Any) -> Any:
            started = time.monotonic()
            try:
                return original(client, operation, params)
            finally:
                row = (client.meta.service_model.service_name, operation, client.meta.region_name)
                with lock:
                    if self.recording:
                        self.rows.append((*row, started, time.monotonic()))

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recorded)
        self.recording = True

    def stop(self) -> None:
        """Keep what was recorded so far (the test's own checks that follow are not the CLI's calls)."""
        self.rows = list(self.rows)
        self.recording = False

    def of(self, service: str, region: str | None = None) -> list[tuple[str, str, str, float, float]]:
        return [r for r in self.rows if r[0] == service and (region is None or r[2] == region)]


def test_halt_suspends_groups_at_once_where_halted_instances_belong_to_one_and_sweeps_the_other_regions_after_the_stops(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TAGGED: a group's running instances (tagged). SWEPT: untagged instances, and a group that wants 2 instances
    # and has none running (its two were terminated): a real group would launch two after the halt. EMPTY:
    # no instance, no group.
    tagged_asg, web_ids = _account_group(factory, TAGGED, "web", desired=2)
    tagged_asg.suspend_processes(AutoScalingGroupName="web", ScalingProcesses=["AZRebalance"])
    swept_asg, batch_ids = _account_group(factory, SWEPT, "batch", desired=2)
    ec2(factory, TRIPPED, SWEPT).terminate_instances(InstanceIds=batch_ids)
    plain = launch(factory, TRIPPED, SWEPT, {"project": "x"}, count=2)
    calls = _Calls(monkeypatch)

    result = cli("--config", str(_guard_config(tmp_path, aws.url)), "--json", "guard", "run", "--apply")
    calls.stop()

    assert result.exit_code == 0, result.stderr
    assert set(states(factory, TRIPPED, TAGGED, web_ids).values()) == {"stopped"}
    assert set(states(factory, TRIPPED, SWEPT, plain).values()) == {"stopped"}
    assert _suspended(tagged_asg, "web") == set(GUARD_PROCESSES)
    assert _suspended(swept_asg, "batch") == set(GUARD_PROCESSES), "a group with no instance is still suspended"
    # Where a halted instance belongs to a group, its groups are suspended before the next region's stop is made;
    # elsewhere the sweep comes after every stop call (the one worker ran the jobs in the order they were queued).
    stops = calls.of("ec2")
    stop_ends = [r[4] for r in stops if r[1] == "StopInstances"]
    assert len(stop_ends) == 2
    tagged_calls = calls.of("autoscaling", TAGGED)
    assert tagged_calls and max(r[4] for r in tagged_calls) <= max(stop_ends)
    for region in (SWEPT, EMPTY):
        assert min(r[3] for r in calls.of("autoscaling", region)) >= max(stop_ends), region
    # The cost of the sweep: one describe per region; a suspend only where a group is.
    counted: dict[tuple[str, str], int] = {}
    for service, operation, region, _, _ in calls.rows:
        if service == "autoscaling":
            counted[region, operation] = counted.get((region, operation), 0) + 1
    assert counted == {
        (TAGGED, "DescribeAutoScalingGroups"): 1,
        (TAGGED, "SuspendProcesses"): 1,
        (SWEPT, "DescribeAutoScalingGroups"): 1,
        (SWEPT, "SuspendProcesses"): 1,
        (EMPTY, "DescribeAutoScalingGroups"): 1,
    }

    released = cli(
        "--config", str(_guard_config(tmp_path, aws.url)), "--json", "guard", "release", "--account", TRIPPED, "--apply"
    )

    assert released.exit_code == 0, released.stderr
    assert _suspended(tagged_asg, "web") == {"AZRebalance"}, "only what the guard suspended is resumed"
    assert _suspended(swept_asg, "batch") == set()


def test_a_dry_run_plans_the_sweep_and_suspends_nothing(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    swept_asg, batch_ids = _account_group(factory, SWEPT, "batch", desired=1)
    ec2(factory, TRIPPED, SWEPT).stop_instances(InstanceIds=batch_ids)  # stopped: a real group would replace it
    launch(factory, TRIPPED, TAGGED, {"project": "x"}, count=2)

    result = cli("--config", str(_guard_config(tmp_path, aws.url)), "--json", "guard", "run")

    planned = [a for a in result.report["actions"] if a["action"] == SUSPEND]
    assert [(a["region"], a["resource_id"], a["outcome"]) for a in planned] == [(SWEPT, "batch", "planned")]
    assert _suspended(swept_asg, "batch") == set()
