"""Ec2Actions against the moto server; botocore's Stubber only for error shapes moto cannot produce."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from fleetwarden.actions.ec2 import PERMISSIONS, Ec2Actions
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import ActionOutcome, Instance, JournalEntry

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
AMI = "ami-12345678"
MISSING = "i-0123456789abcdef0"


# -- helpers ----------------------------------------------------------------------------------------------
def _instance(raw: dict[str, Any]) -> Instance:
    """An Instance from one DescribeInstances item (kept here so the test does not depend on collect/)."""
    return Instance(
        id=raw["InstanceId"],
        account_id=ACCOUNT,
        region=REGION,
        state=raw["State"]["Name"],
        instance_type=raw.get("InstanceType", ""),
        launch_time=raw.get("LaunchTime", datetime(2024, 1, 1, tzinfo=UTC)),
        tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
        volume_ids=tuple(m["Ebs"]["VolumeId"] for m in raw.get("BlockDeviceMappings", []) if "Ebs" in m),
    )


def _launch(ec2: Any, count: int, *, extra_volume: bool = False) -> list[Instance]:
    launched = ec2.run_instances(ImageId=AMI, MinCount=count, MaxCount=count)["Instances"]
    ids = [i["InstanceId"] for i in launched]
    if extra_volume:  # a data volume beside the root one (moto drops the root volume if BlockDeviceMappings is given)
        for raw in launched:
            zone = raw["Placement"]["AvailabilityZone"]
            volume = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
            ec2.attach_volume(VolumeId=volume, InstanceId=raw["InstanceId"], Device="/dev/sdf")
    return _describe(ec2, ids)


def _describe(ec2: Any, ids: list[str]) -> list[Instance]:
    found = {
        raw["InstanceId"]: _instance(raw)
        for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
        for raw in r["Instances"]
    }
    return [found[i] for i in ids]


def _states(ec2: Any, ids: list[str]) -> dict[str, str]:
    return {i.id: i.state for i in _describe(ec2, ids)}


def _fake(instance_id: str, state: str = "running", volumes: tuple[str, ...] = ()) -> Instance:
    return Instance(instance_id, ACCOUNT, REGION, state, "t3.micro", datetime(2024, 1, 1, tzinfo=UTC), {}, volumes)


class Journal(list[JournalEntry]):
    """Collects journal entries; `final` maps entry id -> the last entry written under it."""

    def final(self, action: str) -> dict[str, JournalEntry]:
        return {e.id: e for e in self if e.action == action}


def _actions(ec2: Any, journal: Journal, **kwargs: Any) -> Ec2Actions:
    return Ec2Actions(
        ec2,
        account_id=ACCOUNT,
        region=REGION,
        run_id="run-42",
        workflow="audit",
        journal=journal.append,
        wait_delay=0,
        snapshot_wait_delay=0,
        **kwargs,
    )


def _outcomes(results: list[Any]) -> dict[str, tuple[ActionOutcome, str]]:
    return {r.resource_id: (r.outcome, r.reason) for r in results}


@pytest.fixture
def ec2(factory: SessionFactory) -> Any:
    return factory.client("ec2", region=REGION, account_id=None)


# -- against moto -----------------------------------------------------------------------------------------
def test_stop_drops_missing_and_terminated_ids_and_stops_the_rest(ec2: Any, factory: SessionFactory) -> None:
    instances = _launch(ec2, 4)
    ec2.terminate_instances(InstanceIds=[instances[0].id])
    gone = _describe(ec2, [instances[0].id])[0]
    journal = Journal()
    batch = [gone, *instances[1:], _fake(MISSING)]

    results = _actions(ec2, journal).stop(batch, reason="untagged")

    live = [i.id for i in instances[1:]]
    assert set(_states(ec2, live).values()) == {"stopped"}
    # moto would "stop" a terminated instance if asked; it stays terminated because it was never in a call.
    assert _states(ec2, [gone.id]) == {gone.id: "terminated"}
    outcomes = _outcomes(results)
    assert outcomes[gone.id] == (ActionOutcome.SKIPPED, "already terminated")
    assert outcomes[MISSING] == (ActionOutcome.SKIPPED, "not found")
    assert all(outcomes[i][0] is ActionOutcome.DONE for i in live)
    assert [r.resource_id for r in results] == [i.id for i in batch]
    # One failed call (the missing id), one that succeeds for the rest.
    assert factory.counter.calls["ec2:StopInstances"] == 2
    # Planned then final, under one entry id per instance; the terminated one was never journaled.
    assert Counter(e.outcome for e in journal) == {
        ActionOutcome.PLANNED: 4,
        ActionOutcome.DONE: 3,
        ActionOutcome.SKIPPED: 1,
    }
    final = journal.final("stop")
    assert len(final) == 4 and gone.id not in {e.resource_id for e in final.values()}
    assert {e.after.get("state") for e in final.values() if e.outcome is ActionOutcome.DONE} <= {"stopping", "stopped"}


def test_terminate_clears_protection_and_snapshots_every_volume(ec2: Any) -> None:
    instances = _launch(ec2, 3, extra_volume=True)
    protected = instances[0]
    ec2.modify_instance_attribute(InstanceId=protected.id, DisableApiTermination={"Value": True})
    journal = Journal()

    results = _actions(ec2, journal).terminate(instances, reason="missing tags: department")

    ids = [i.id for i in instances]
    assert set(_states(ec2, ids).values()) == {"terminated"}
    assert {r.outcome for r in results} == {ActionOutcome.DONE}
    snaps = ec2.describe_snapshots(Filters=[{"Name": "tag:fleetwarden:run-id", "Values": ["run-42"]}])["Snapshots"]
    volumes = [v for i in instances for v in i.volume_ids]
    assert len(volumes) == 6 and sorted(s["VolumeId"] for s in snaps) == sorted(volumes)
    by_instance = {i.id: set(i.volume_ids) for i in instances}
    for snap in snaps:
        tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
        assert tags["fleetwarden:reason"] == "missing tags: department"
        assert snap["VolumeId"] in by_instance[tags["fleetwarden:instance-id"]]
    # Snapshot ids go into the result and the journal's final terminate entry.
    final = {e.resource_id: e for e in journal.final("terminate").values()}
    for result in results:
        mine = sorted(s["SnapshotId"] for s in snaps if s["VolumeId"] in by_instance[result.resource_id])
        assert sorted(final[result.resource_id].after["snapshot_ids"]) == mine
        assert all(s in result.reason for s in mine)
    assert "disableApiTermination cleared" in _outcomes(results)[protected.id][1]
    clears = [e for e in journal if e.action == "clear-protection"]
    assert [(e.resource_id, e.outcome) for e in clears] == [
        (protected.id, ActionOutcome.PLANNED),
        (protected.id, ActionOutcome.DONE),
    ]
    assert clears[0].id == clears[1].id
    assert clears[1].before["disableApiTermination"] is True and clears[1].after == {"disableApiTermination": False}
    # Entry ids are unique per mutation: 3 terminate + 3 snapshot + 1 clear-protection.
    assert len({e.id for e in journal}) == 7 and len(journal) == 14


def test_stop_protected_instance_is_skipped_unless_overridden(ec2: Any) -> None:
    instances = _launch(ec2, 2)
    protected, plain = instances
    ec2.modify_instance_attribute(InstanceId=protected.id, DisableApiStop={"Value": True})
    journal = Journal()

    results = _outcomes(_actions(ec2, journal).stop(instances, reason="guard halt"))

    assert results[protected.id] == (ActionOutcome.SKIPPED, "stop protection enabled")
    assert results[plain.id][0] is ActionOutcome.DONE
    assert _states(ec2, [protected.id, plain.id]) == {protected.id: "running", plain.id: "stopped"}
    assert not [e for e in journal if e.action == "clear-protection"]

    results = _outcomes(_actions(ec2, journal).stop([protected], reason="guard halt", override_stop_protection=True))

    assert results[protected.id][0] is ActionOutcome.DONE
    assert _states(ec2, [protected.id]) == {protected.id: "stopped"}
    attribute = ec2.describe_instance_attribute(InstanceId=protected.id, Attribute="disableApiStop")
    assert attribute["DisableApiStop"]["Value"] is False
    clears = list(journal.final("clear-protection").values())
    assert len(clears) == 1 and clears[0].before["disableApiStop"] is True
    assert clears[0].after == {"disableApiStop": False}


def test_batch_size_is_honoured(ec2: Any, factory: SessionFactory) -> None:
    instances = _launch(ec2, 5)
    actions = _actions(ec2, Journal(), batch_size=2)

    actions.stop(instances, reason="window close")
    started = actions.start([i.id for i in instances], reason="window open")

    assert factory.counter.calls["ec2:StopInstances"] == 3
    assert factory.counter.calls["ec2:StartInstances"] == 3
    assert {r.outcome for r in started} == {ActionOutcome.DONE}
    assert set(_states(ec2, [i.id for i in instances]).values()) == {"running"}


def test_an_error_naming_no_id_is_bisected_on_moto(ec2: Any, factory: SessionFactory) -> None:
    instances = _launch(ec2, 3)
    # moto answers "The instance ID 'bogus' does not exist": no i-... id to take from the message.
    results = _outcomes(_actions(ec2, Journal()).start(["bogus", *[i.id for i in instances]], reason="window"))

    assert results["bogus"] == (ActionOutcome.SKIPPED, "not found")
    assert all(results[i.id][0] is ActionOutcome.DONE for i in instances)
    # [bogus, a, b, c] fails -> [bogus, a] fails -> [bogus] fails, [a] ok -> [b, c] ok
    assert factory.counter.calls["ec2:StartInstances"] == 5


def _fail_calls_with(aws: EmulatorServer, action: str, ids: list[str], code: str, status: int) -> None:
    """The emulator's ec2_faults: every `action` call that includes one of `ids` fails with `code`, naming no id."""
    rule = {"action": action, "instance_ids": ids, "code": code, "message": "refused", "status": status}
    aws.admin("/_fleetwarden/ec2_faults/rules", {"rules": [rule]})


def _emulator_calls(aws: EmulatorServer, action: str) -> int:
    """How many `action` requests reached the emulator (retries included)."""
    return sum(c["count"] for c in aws.client.calls()["calls"] if c["service"] == "ec2" and c["action"] == action)


def test_error_naming_no_id_bisects_to_the_culprit(aws: EmulatorServer, ec2: Any) -> None:
    # ec2_faults fails StartInstances/StopInstances only; terminate goes through the same batch loop (_mutate).
    a, b, c, d = _launch(ec2, 4)
    ids = [a.id, b.id, c.id, d.id]
    _fail_calls_with(aws, "StopInstances", [d.id], "InvalidInstanceID.Malformed", 400)
    aws.client.reset_calls()

    results = _outcomes(_actions(ec2, Journal()).stop([a, b, c, d], reason="x"))

    assert results == {
        a.id: (ActionOutcome.DONE, "x"),
        b.id: (ActionOutcome.DONE, "x"),
        c.id: (ActionOutcome.DONE, "x"),
        d.id: (ActionOutcome.FAILED, "malformed instance id"),
    }
    assert _states(ec2, ids) == {a.id: "stopped", b.id: "stopped", c.id: "stopped", d.id: "running"}
    # [a, b, c, d] fails -> [a, b] ok, [c, d] fails -> [c] ok, [d] fails
    assert _emulator_calls(aws, "StopInstances") == 5


def test_an_authorisation_denial_is_bisected_so_every_other_instance_stops(aws: EmulatorServer, ec2: Any) -> None:
    # e.g. a deny conditioned on one instance's tags: EC2 fails the whole call and names no instance.
    a, b, c, d = _launch(ec2, 4)
    ids = [a.id, b.id, c.id, d.id]
    _fail_calls_with(aws, "StopInstances", [b.id], "UnauthorizedOperation", 403)
    aws.client.reset_calls()

    results = _outcomes(_actions(ec2, Journal()).stop([a, b, c, d], reason="halt"))

    assert _states(ec2, ids) == {a.id: "stopped", b.id: "running", c.id: "stopped", d.id: "stopped"}
    assert {i: o for i, (o, _) in results.items()} == {
        a.id: ActionOutcome.DONE,
        b.id: ActionOutcome.FAILED,
        c.id: ActionOutcome.DONE,
        d.id: ActionOutcome.DONE,
    }
    assert "UnauthorizedOperation" in results[b.id][1]
    # [a, b, c, d] fails -> [a, b] fails -> [a] ok, [b] fails -> [c, d] ok
    assert _emulator_calls(aws, "StopInstances") == 5


def test_a_denial_of_every_instance_fails_each_of_them(aws: EmulatorServer, ec2: Any) -> None:
    a, b = _launch(ec2, 2)
    _fail_calls_with(aws, "StopInstances", [a.id, b.id], "UnauthorizedOperation", 403)
    aws.client.reset_calls()

    results = _outcomes(_actions(ec2, Journal()).stop([a, b], reason="halt"))

    assert _states(ec2, [a.id, b.id]) == {a.id: "running", b.id: "running"}
    assert {o for o, _ in results.values()} == {ActionOutcome.FAILED}
    assert all("UnauthorizedOperation" in why for _, why in results.values())
    assert _emulator_calls(aws, "StopInstances") == 3  # 2n-1: [a, b], [a], [b]


def test_other_errors_fail_the_batch_without_splitting(aws: EmulatorServer, ec2: Any) -> None:
    # EC2 unavailable (the emulator's fault rule; retries exhausted): splitting would only repeat the failure.
    a, b = _launch(ec2, 2)
    aws.client.set_faults([{"service": "ec2", "action": "StopInstances"}])
    aws.client.reset_calls()

    results = _outcomes(_actions(ec2, Journal()).stop([a, b], reason="halt"))

    calls = _emulator_calls(aws, "StopInstances")
    aws.client.set_faults([])
    assert _states(ec2, [a.id, b.id]) == {a.id: "running", b.id: "running"}
    assert {o for o, _ in results.values()} == {ActionOutcome.FAILED}
    assert all("Unavailable" in why for _, why in results.values())
    # One batch, never split: the first attempt and botocore's 2 retries (botocore's retries.max_attempts counts
    # retries, not attempts).
    assert calls == 3


def test_permissions_cover_each_action() -> None:
    assert set(PERMISSIONS) == {"stop", "start", "terminate", "snapshot", "clear-protection"}
    assert {"ec2:TerminateInstances", "ec2:CreateSnapshots", "ec2:ModifyInstanceAttribute"} <= set(
        PERMISSIONS["terminate"]
    )
    assert all(a.startswith("ec2:") for actions in PERMISSIONS.values() for a in actions)


# -- Stubber: error shapes the emulator cannot produce --------------------------------------------------------
# (snapshots that fail or stay pending, instances seen pending by a waiter: moto completes both at once)
A, B, C, D = (f"i-0{c * 16}" for c in "abcd")


def _change(instance_id: str, before: str, after: str) -> dict[str, Any]:
    return {"InstanceId": instance_id, "PreviousState": {"Name": before}, "CurrentState": {"Name": after}}


def _described(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"Reservations": [{"Instances": [{"InstanceId": i, "State": {"Name": s}} for i, s in pairs]}]}


def test_snapshot_failure_prevents_termination(ec2: Any) -> None:
    # Stubber: moto's snapshots always succeed at once. Here A's CreateSnapshots fails, B's snapshot ends in
    # `error`, D's stays pending past the bounded wait; only C (snapshot completed) may be terminated.
    journal = Journal()
    snapshot_call = {
        "InstanceSpecification": ANY,
        "Description": ANY,
        "CopyTagsFromSource": "volume",
        "TagSpecifications": ANY,
    }

    def snapshots(*pairs: tuple[str, str]) -> dict[str, Any]:
        return {"Snapshots": [{"SnapshotId": s, "State": state} for s, state in pairs]}

    with Stubber(ec2) as stub:
        stub.add_client_error("create_snapshots", "SnapshotCreationPerVolumeRateExceeded", "slow down")
        for name in ("snap-b", "snap-c", "snap-d"):
            stub.add_response("create_snapshots", {"Snapshots": [{"SnapshotId": name}]}, snapshot_call)
        every = {"SnapshotIds": ["snap-b", "snap-c", "snap-d"]}
        # Eventual consistency first, then B fails (which ends that wait), then D never completes.
        stub.add_client_error("describe_snapshots", "InvalidSnapshot.NotFound", "nope", expected_params=every)
        stub.add_response(
            "describe_snapshots", snapshots(("snap-b", "error"), ("snap-c", "completed"), ("snap-d", "pending")), every
        )
        for _ in range(2):
            stub.add_response("describe_snapshots", snapshots(("snap-d", "pending")), {"SnapshotIds": ["snap-d"]})
        stub.add_response(
            "terminate_instances",
            {"TerminatingInstances": [_change(C, "running", "shutting-down")]},
            {"InstanceIds": [C]},
        )
        actions = _actions(ec2, journal, snapshot_wait_attempts=2)
        results = _outcomes(actions.terminate([_fake(i) for i in (A, B, C, D)], reason="expired", snapshot=True))
        stub.assert_no_pending_responses()

    assert results[A][0] is ActionOutcome.FAILED and "SnapshotCreationPerVolumeRateExceeded" in results[A][1]
    assert results[B] == (ActionOutcome.FAILED, "snapshot not completed: snap-b error; not terminated")
    assert results[C] == (ActionOutcome.DONE, "expired; snapshots: snap-c")
    assert results[D] == (ActionOutcome.FAILED, "snapshot not completed: snap-d pending; not terminated")
    final = {e.resource_id: e for e in journal.final("terminate").values()}
    assert {i: final[i].outcome for i in (A, B, C, D)} == {
        A: ActionOutcome.FAILED,
        B: ActionOutcome.FAILED,
        C: ActionOutcome.DONE,
        D: ActionOutcome.FAILED,
    }
    assert final[C].after == {"state": "shutting-down", "snapshot_ids": ["snap-c"]}
    assert final[D].after == {"snapshot_ids": ["snap-d"]}
    taken = {e.resource_id: e.outcome for e in journal.final("snapshot").values()}
    assert taken == {A: ActionOutcome.FAILED, B: ActionOutcome.FAILED, C: ActionOutcome.DONE, D: ActionOutcome.FAILED}


def test_incorrect_state_waits_then_retries_once(ec2: Any) -> None:
    # Stubber: moto changes states instantly, so it never answers IncorrectInstanceState.
    journal = Journal()
    with Stubber(ec2) as stub:
        # A is pending: wait until running, then retry; B and C ride along.
        stub.add_client_error(
            "stop_instances",
            "IncorrectInstanceState",
            f"The instance '{A}' is not in a state from which it can be stopped.",
            expected_params={"InstanceIds": [A, B, C, D]},
        )
        stub.add_response("describe_instances", _described((A, "pending")), {"InstanceIds": [A]})
        stub.add_response("describe_instances", _described((A, "running")), {"InstanceIds": [A]})
        # Next, C turns out terminated (stale state): skipped after the waiter sees it.
        stub.add_client_error(
            "stop_instances",
            "IncorrectInstanceState",
            f"The instance '{C}' is not in a state from which it can be stopped.",
            expected_params={"InstanceIds": [A, B, C, D]},
        )
        stub.add_response("describe_instances", _described((C, "terminated")), {"InstanceIds": [C]})
        # D stays pending through the bounded wait: failed, and the rest go on.
        stub.add_client_error(
            "stop_instances",
            "IncorrectInstanceState",
            f"The instance '{D}' is not in a state from which it can be stopped.",
            expected_params={"InstanceIds": [A, B, D]},
        )
        stub.add_response("describe_instances", _described((D, "pending")), {"InstanceIds": [D]})
        stub.add_response("describe_instances", _described((D, "pending")), {"InstanceIds": [D]})
        stub.add_response(
            "stop_instances",
            {"StoppingInstances": [_change(A, "running", "stopping"), _change(B, "running", "stopping")]},
            {"InstanceIds": [A, B]},
        )
        actions = _actions(ec2, journal, wait_attempts=2)
        results = _outcomes(actions.stop([_fake(i) for i in (A, B, C, D)], reason="halt"))
        stub.assert_no_pending_responses()

    assert results[A][0] is ActionOutcome.DONE and results[B][0] is ActionOutcome.DONE
    assert results[C] == (ActionOutcome.SKIPPED, "already terminated")
    assert results[D][0] is ActionOutcome.FAILED
    assert "IncorrectInstanceState" in results[D][1] and "instance is pending after waiting" in results[D][1]
    final = {e.resource_id: e for e in journal.final("stop").values()}
    assert final[A].before["state"] == "running" and final[A].after == {"state": "stopping"}
    assert final[D].error == results[D][1]


def test_same_incorrect_state_after_waiting_fails_instead_of_looping(ec2: Any) -> None:
    error = f"The instance '{A}' is not in a state from which it can be stopped."
    with Stubber(ec2) as stub:
        stub.add_client_error("stop_instances", "IncorrectInstanceState", error, expected_params={"InstanceIds": [A]})
        stub.add_response("describe_instances", _described((A, "running")), {"InstanceIds": [A]})
        stub.add_client_error("stop_instances", "IncorrectInstanceState", error, expected_params={"InstanceIds": [A]})
        results = _outcomes(_actions(ec2, Journal()).stop([_fake(A)], reason="halt"))
        stub.assert_no_pending_responses()

    assert results[A][0] is ActionOutcome.FAILED and "IncorrectInstanceState" in results[A][1]


def test_instances_of_another_target_are_refused(ec2: Any) -> None:
    stray = Instance(A, "999999999999", REGION, "running", "t3.micro", datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="999999999999"):
        _actions(ec2, Journal()).stop([stray], reason="x")
