"""Kill-point tests: a run killed (SIGKILL) right after each mutating AWS call converges on the next run.

Each workflow runs in a child process (the real CLI). The emulator is told to send SIGKILL to that process right
after it has carried out the Nth mutating call (`POST /_fleetwarden/kill`, docs/emulator.md): the call's effect is
in AWS, its response is never read, and nothing after it runs. N goes 1, 2, ... until a run finishes without
being killed, so every mutating call of the workflow is a kill point. After each kill, the next run (not killed)
must leave the fleet exactly where an uninterrupted run would have.

A lease left by a killed run expires by itself (two minutes). The tests do not sleep that long: they move the
lease's expiry into the past in the SQLite store, as the passing of time would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from childrun import cli_child, fresh_factory, fresh_state, kill_each_mutation
from fleet import launch, states, users, write_config

from fleetwarden.actions.iam_lockout import LOCKOUT_POLICY
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.state.sqlite import SqliteStore
from fleetwarden.workflows.guard.state import load_states
from fleetwarden.workflows.window.ledger import Ledger

pytestmark = pytest.mark.integration

ACCOUNT = "111111111111"
REGIONS = ["us-east-1", "eu-west-1"]


def base_config(tmp_path: Path, endpoint: str, **sections: Any) -> Path:
    """The shared test config for ACCOUNT in REGIONS (fleet.write_config), with these sections."""
    return write_config(tmp_path, endpoint, (ACCOUNT,), REGIONS, top=sections)


# -- the guard ------------------------------------------------------------------------------------------------
class GuardFleet:
    """One account, two regions, 3 running instances in each (one stop-protected), three users with keys."""

    def __init__(self, aws: EmulatorServer, factory: SessionFactory) -> None:
        aws.reset()
        self.factory = factory = fresh_factory(aws)
        self.instances = {r: launch(factory, ACCOUNT, r, {"team": "x"}, count=3) for r in REGIONS}
        self.protected = self.instances[REGIONS[0]][0]
        self.ec2(REGIONS[0]).modify_instance_attribute(InstanceId=self.protected, DisableApiStop={"Value": True})
        self.iam = factory.client("iam", region="us-east-1", account_id=ACCOUNT)
        self.keys: dict[str, dict[str, str]] = {}
        for user, statuses in (("alice", ["Active"]), ("bob", ["Active", "Inactive"]), ("breakglass", ["Active"])):
            self.iam.create_user(UserName=user)
            for status in statuses:
                key = self.iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
                if status == "Inactive":
                    self.iam.update_access_key(UserName=user, AccessKeyId=key, Status="Inactive")
                self.keys[key] = {"user": user, "before": status}

    def ec2(self, region: str) -> Any:
        return self.factory.client("ec2", region=region, account_id=ACCOUNT)

    def instance_states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for region, ids in self.instances.items():
            out.update(states(self.factory, ACCOUNT, region, ids))
        return out

    def key_states(self) -> dict[str, str]:
        out = {}
        for user in ("alice", "bob", "breakglass"):
            for key in self.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
                out[key["AccessKeyId"]] = key["Status"]
        return out

    def denied_users(self) -> set[str]:
        return {
            u
            for u in ("alice", "bob", "breakglass")
            if LOCKOUT_POLICY in self.iam.list_user_policies(UserName=u)["PolicyNames"]
        }

    def stop_protected(self) -> bool:
        attribute = self.ec2(REGIONS[0]).describe_instance_attribute(
            InstanceId=self.protected, Attribute="disableApiStop"
        )
        return bool(attribute["DisableApiStop"]["Value"])

    def assert_halted(self, why: str) -> None:
        assert set(self.instance_states().values()) <= {"stopping", "stopped"}, why
        expected = {k: ("Active" if v["user"] == "breakglass" else "Inactive") for k, v in self.keys.items()}
        assert self.key_states() == expected, why
        assert self.denied_users() == {"alice", "bob"}, why

    def assert_restored(self, why: str) -> None:
        assert set(self.instance_states().values()) <= {"pending", "running"}, why
        assert self.key_states() == {k: v["before"] for k, v in self.keys.items()}, why
        assert self.denied_users() == set(), why
        assert self.stop_protected(), why


def guard_config(tmp_path: Path, endpoint: str) -> Path:
    guard = {"max_running_instances": 2, "lockout": {"exempt_users": ["breakglass"]}}
    return base_config(tmp_path, endpoint, guard=guard)


def store(config: Path) -> SqliteStore:
    return SqliteStore(yaml.safe_load(config.read_text())["state"].removeprefix("sqlite:///"))


def tripped(config: Path) -> bool:
    """What `guard status` would say of the account (read from the state store, as it does)."""
    states = load_states(store(config))
    return ACCOUNT in states and states[ACCOUNT].tripped


def test_guard_run_killed_after_each_mutation_converges(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    config = guard_config(tmp_path, aws.url)
    fleets: list[GuardFleet] = []

    def prepare() -> None:
        fleets.append(GuardFleet(aws, factory))
        fresh_state(config)

    def converged(n: int) -> None:
        fleet, why = fleets[-1], f"killed after mutation {n}"
        # The trip is on record before the first halt call, so status and release know of it at once.
        assert tripped(config), why
        code, out = cli_child(aws, config, "guard", "run", "--apply")
        assert code == 0, f"{why}: {out}"
        fleet.assert_halted(why)
        code, out = cli_child(aws, config, "guard", "release", "--account", ACCOUNT, "--apply", "--start-instances")
        assert code == 0, f"{why}: {out}"
        fleet.assert_restored(why)
        assert not tripped(config), why

    def finished() -> None:
        fleets[-1].assert_halted("an uninterrupted run")

    args = ("guard", "run", "--apply")
    points = kill_each_mutation(aws, config, args, prepare=prepare, converged=converged, finished=finished)
    # Lockout (2 users: deny + key each), the protected stop (fails, clear, retry) and the other region's stop.
    assert points >= 7


def test_guard_release_killed_after_each_mutation_converges(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    config = guard_config(tmp_path, aws.url)
    fleets: list[GuardFleet] = []
    args = ("guard", "release", "--account", ACCOUNT, "--apply", "--start-instances")

    def prepare() -> None:
        fleets.append(GuardFleet(aws, factory))
        fresh_state(config)
        code, out = cli_child(aws, config, "guard", "run", "--apply")
        assert code == 0, out
        fleets[-1].assert_halted("the halt before the release")

    def converged(n: int) -> None:
        fleet, why = fleets[-1], f"release killed after mutation {n}"
        assert tripped(config), why  # a release that did not finish leaves the trip on record
        if n == 2:  # once is enough (each child run costs seconds): after a key was re-activated
            # The guard's next poll leaves a half-released account alone (and says so) rather than re-halt it.
            before = (fleet.instance_states(), fleet.key_states())
            code, out = cli_child(aws, config, "guard", "run", "--apply")
            assert code == 4 and "did not finish" in out, f"{why}: {out}"
            assert (fleet.instance_states(), fleet.key_states()) == before, why
        code, out = cli_child(aws, config, *args)
        assert code == 0, f"{why}: {out}"
        fleet.assert_restored(why)
        assert not tripped(config), why

    def finished() -> None:
        fleets[-1].assert_restored("an uninterrupted release")

    points = kill_each_mutation(aws, config, args, prepare=prepare, converged=converged, finished=finished)
    assert points >= 5


# -- the scan window ------------------------------------------------------------------------------------------
def window_config(tmp_path: Path, endpoint: str) -> Path:
    return base_config(
        tmp_path,
        endpoint,
        window={"settle_minutes": 0, "timeout_minutes": 30},
        guard={"max_running_instances": 100},
    )


class WindowFleet:
    """Two regions, each with 2 stopped instances (the window's) and 1 running one (not the window's)."""

    def __init__(self, aws: EmulatorServer, factory: SessionFactory) -> None:
        aws.reset()
        self.factory = factory = fresh_factory(aws)
        self.stopped = {r: launch(factory, ACCOUNT, r, {"team": "x"}, count=2, state="stopped") for r in REGIONS}
        self.running = {r: launch(factory, ACCOUNT, r, {"team": "y"}, count=1) for r in REGIONS}

    def states(self, which: dict[str, list[str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for region, ids in which.items():
            out.update(states(self.factory, ACCOUNT, region, ids))
        return out

    def assert_closed(self, why: str) -> None:
        assert set(self.states(self.stopped).values()) == {"stopped"}, why
        assert set(self.states(self.running).values()) == {"running"}, why  # never the window's to stop


def open_windows(config: Path) -> list[str]:
    """The statuses of the windows `window status` lists (not closed), from the state store."""
    return [w.status for w in Ledger(store(config)).windows() if w.status != "closed"]


def test_window_open_killed_after_each_start_is_closed_by_the_next_close(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    config = window_config(tmp_path, aws.url)
    fleets: list[WindowFleet] = []

    def prepare() -> None:
        fleets.append(WindowFleet(aws, factory))
        fresh_state(config)

    def converged(n: int) -> None:
        fleet, why = fleets[-1], f"open killed after start call {n}"
        assert "running" in set(fleet.states(fleet.stopped).values()), why  # the kill came after a start
        # The window the killed open left is found, and close returns what it may have started to stopped.
        assert open_windows(config) == ["opening"], why
        code, out = cli_child(aws, config, "window", "close", "--apply")
        assert code == 0, f"{why}: {out}"
        fleet.assert_closed(why)
        assert open_windows(config) == [], why

    def finished() -> None:
        assert set(fleets[-1].states(fleets[-1].stopped).values()) == {"running"}

    args = ("window", "open", "--apply")
    points = kill_each_mutation(aws, config, args, prepare=prepare, converged=converged, finished=finished)
    assert points == len(REGIONS)  # one StartInstances per region


def test_window_close_killed_after_each_stop_converges(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    config = window_config(tmp_path, aws.url)
    fleets: list[WindowFleet] = []

    def prepare() -> None:
        fleets.append(WindowFleet(aws, factory))
        fresh_state(config)
        code, out = cli_child(aws, config, "window", "open", "--apply")
        assert code == 0, out

    def converged(n: int) -> None:
        fleet, why = fleets[-1], f"close killed after stop call {n}"
        assert len(open_windows(config)) == 1, why  # not marked closed
        code, out = cli_child(aws, config, "window", "close", "--apply")
        assert code == 0, f"{why}: {out}"
        fleet.assert_closed(why)
        assert open_windows(config) == [], why

    def finished() -> None:
        fleets[-1].assert_closed("an uninterrupted close")

    args = ("window", "close", "--apply")
    points = kill_each_mutation(aws, config, args, prepare=prepare, converged=converged, finished=finished)
    assert points == len(REGIONS)


# -- the audit ------------------------------------------------------------------------------------------------
class AuditFleet:
    """Two regions, each with 2 violators (one termination-protected in the first region) and 1 compliant one."""

    def __init__(self, aws: EmulatorServer, factory: SessionFactory) -> None:
        aws.reset()
        self.factory = factory = fresh_factory(aws)
        users(factory, ACCOUNT, "alice")
        good = {"created_by": "alice", "department": "eng", "project": "web"}
        self.violators = {r: launch(factory, ACCOUNT, r, {"department": "eng"}, count=2) for r in REGIONS}
        self.compliant = {r: launch(factory, ACCOUNT, r, good, count=1) for r in REGIONS}
        self.protected = self.violators[REGIONS[0]][0]
        ec2 = factory.client("ec2", region=REGIONS[0], account_id=ACCOUNT)
        ec2.modify_instance_attribute(InstanceId=self.protected, DisableApiTermination={"Value": True})

    def states(self, which: dict[str, list[str]]) -> set[str]:
        return {s for region, ids in which.items() for s in states(self.factory, ACCOUNT, region, ids).values()}

    def snapshotted(self) -> set[str]:
        """Instances with at least one completed snapshot taken by fleetwarden."""
        out = set()
        for region in REGIONS:
            ec2 = self.factory.client("ec2", region=region, account_id=ACCOUNT)
            filters = [{"Name": "tag-key", "Values": ["fleetwarden:instance-id"]}]
            for snap in ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]:
                tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
                if snap["State"] == "completed":
                    out.add(tags["fleetwarden:instance-id"])
        return out

    def assert_done(self, why: str) -> None:
        assert self.states(self.violators) == {"terminated"}, why
        assert self.states(self.compliant) == {"running"}, why
        # Never terminated without its snapshots, however the runs before were cut short.
        assert self.snapshotted() == {i for ids in self.violators.values() for i in ids}, why


def test_audit_terminate_killed_after_each_mutation_converges(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    audit = {
        "required_tags": ["created_by", "department", "project"],
        "grace_minutes": 45,
        "action": "terminate",
        "snapshot_before_terminate": True,
    }
    config = base_config(tmp_path, aws.url, audit=audit)
    fleets: list[AuditFleet] = []
    args = ("audit", "--apply", "--confirm-terminate")

    def prepare() -> None:
        fleets.append(AuditFleet(aws, factory))
        fresh_state(config)

    def converged(n: int) -> None:
        code, out = cli_child(aws, config, *args)
        assert code == 0, f"audit killed after mutation {n}: {out}"
        fleets[-1].assert_done(f"audit killed after mutation {n}")

    def finished() -> None:
        fleets[-1].assert_done("an uninterrupted audit")

    points = kill_each_mutation(aws, config, args, prepare=prepare, converged=converged, finished=finished)
    # Per region: a snapshot per violator, then the terminate (the protected one: refused, cleared, retried).
    assert points >= 7


def test_audit_notice_killed_after_each_mark_converges(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    """audit.notice_days: a run killed after any CreateTags leaves every violator marked by the next run, none
    stopped (the notice is never shortened by a crash), the compliant ones untouched."""
    audit = {"required_tags": ["created_by", "department", "project"], "action": "stop", "notice_days": 3}
    config = base_config(tmp_path, aws.url, audit=audit)
    fleets: list[AuditFleet] = []
    args = ("audit", "--apply")

    def prepare() -> None:
        fleets.append(AuditFleet(aws, factory))
        fresh_state(config)

    def marked(why: str) -> None:
        fleet = fleets[-1]
        assert fleet.states(fleet.violators) == {"running"} and fleet.states(fleet.compliant) == {"running"}, why
        for region, ids in fleet.violators.items():
            ec2 = fleet.factory.client("ec2", region=region, account_id=ACCOUNT)
            for reservation in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    assert tags.get("fleetwarden:action-after", "").startswith("stop@"), why
        records = store(config).list_records("audit-notice")
        assert len(records) == 4 and all(data["tagged"] for _key, data, _v in records), why

    def converged(n: int) -> None:
        code, out = cli_child(aws, config, *args)
        assert code == 0, f"audit killed after mark {n}: {out}"
        marked(f"audit killed after mark {n}")

    points = kill_each_mutation(
        aws, config, args, prepare=prepare, converged=converged, finished=lambda: marked("an uninterrupted audit")
    )
    assert points == 4  # one CreateTags per violator
