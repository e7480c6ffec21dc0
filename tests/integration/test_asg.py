"""AsgProcesses against the moto server.

moto 5.2.5 implements SuspendProcesses, ResumeProcesses and SuspendedProcesses in DescribeAutoScalingGroups (and
pages DescribeAutoScalingGroups by 50), so no Stubber is needed here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleetwarden.actions.asg import GUARD_PROCESSES, PERMISSIONS, RESUME, SUSPEND, AsgProcesses
from fleetwarden.aws.session import SessionFactory
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
