"""Issue 8's fail-safe defects, one test each, on the emulator: a failed identity call, a wrong account label, a
denied stop, leases, an unwritable output directory, missing credentials, an unverified window close, lockout
first. (The kill-point tests are in test_killpoints.py.)"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from childrun import MUTATIONS, cli_child
from fleet import cli, launch, role, states, write_config

from fleetwarden.actions.iam_lockout import LOCKOUT_POLICY
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.state.sqlite import SqliteStore
from fleetwarden.workflows.guard.state import load_states

A = "111111111111"
BASE = "123456789012"  # the account moto gives the test credentials
REGIONS = ["us-east-1", "eu-west-1"]


def write(tmp_path: Path, endpoint: str, **config: Any) -> Path:
    """The shared test config (fleet.write_config) for A in REGIONS with a guard limit of 1; `config` overrides."""
    guard = {"max_running_instances": 1, "lockout": {"exempt_users": ["breakglass"]}}
    return write_config(tmp_path, endpoint, (A,), REGIONS, top={"guard": guard, **config})


def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "state.db")


@pytest.fixture
def tripping(factory: SessionFactory) -> dict[str, Any]:
    """Account A over its limit of 1 in both regions, a user `dev` with an Active key."""
    ids = {r: launch(factory, A, r, {"team": "x"}, count=2) for r in REGIONS}
    iam = factory.client("iam", region="us-east-1", account_id=A)
    iam.create_user(UserName="dev")
    key = iam.create_access_key(UserName="dev")["AccessKey"]["AccessKeyId"]
    return {"ids": ids, "iam": iam, "key": key}


def key_status(tripping: dict[str, Any]) -> str:
    return str(tripping["iam"].list_access_keys(UserName="dev")["AccessKeyMetadata"][0]["Status"])


def denied(tripping: dict[str, Any]) -> bool:
    return LOCKOUT_POLICY in tripping["iam"].list_user_policies(UserName="dev")["PolicyNames"]


def all_states(factory: SessionFactory, account: str, ids: dict[str, list[str]]) -> set[str]:
    return {s for region, group in ids.items() for s in states(factory, account, region, group).values()}


# -- 2: identity before lockout ------------------------------------------------------------------------------
def test_no_lockout_when_the_acting_principal_cannot_be_told(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    config = write(tmp_path, aws.url)
    aws.client.set_faults([{"service": "sts", "action": "GetCallerIdentity", "mode": "unavailable"}])
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 4, result.stderr
    # The halt went ahead; the lockout did not (it could have locked fleetwarden itself out).
    assert all_states(factory, A, tripping["ids"]) == {"stopped"}
    assert key_status(tripping) == "Active" and not denied(tripping)
    failed = [a for a in result.report["actions"] if a["outcome"] == "failed"]
    assert [(a["action"], a["resource_id"]) for a in failed] == [("lockout", A)]
    assert failed[0]["reason"].startswith("not locked out: cannot tell which principal fleetwarden runs as")
    state = load_states(store(tmp_path))[A]
    assert state.tripped and not state.lockout_done
    # Once the identity answers, the next run finishes the lockout of the trip.
    aws.client.set_faults([])
    again = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert again.exit_code == 0, again.stderr
    assert key_status(tripping) == "Inactive" and denied(tripping)
    assert load_states(store(tmp_path))[A].lockout_done


# -- 3: latch first, leases ----------------------------------------------------------------------------------
def test_a_lease_held_by_a_live_run_refuses_the_halt_and_break_lease_takes_it_over(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    from datetime import UTC, datetime

    config = write(tmp_path, aws.url)
    cli("--config", str(config), "state", "init")
    db = store(tmp_path)
    assert db.acquire_lease("guard", A, "other-run", datetime.now(UTC), 120)
    refused = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert refused.exit_code == 4
    errors = [t for t in refused.report["targets"] if t["status"] == "error"]
    assert [(t["account_id"], t["region"]) for t in errors] == [(A, "global")]
    assert errors[0]["error"].startswith("run other-run (until ")
    assert "holds the guard lock on this account" in errors[0]["error"]
    assert all_states(factory, A, tripping["ids"]) == {"running"} and key_status(tripping) == "Active"
    assert A not in load_states(db)  # nothing latched by a run that did not act

    taken = cli("--config", str(config), "--json", "guard", "run", "--apply", "--break-lease")
    assert taken.exit_code == 0, taken.stderr
    assert all_states(factory, A, tripping["ids"]) == {"stopped"} and key_status(tripping) == "Inactive"
    broken = [e for e in db.list_journal(account_id=A) if e.action == "break-lease"]
    assert len(broken) == 1 and broken[0].before["owner"] == "other-run"
    assert db.get_lease("guard", A) is None  # given back at the end


def test_an_expired_lease_of_a_dead_run_does_not_block(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    from datetime import UTC, datetime, timedelta

    config = write(tmp_path, aws.url)
    cli("--config", str(config), "state", "init")
    store(tmp_path).acquire_lease("guard", A, "dead-run", datetime.now(UTC) - timedelta(minutes=3), 120)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    assert all_states(factory, A, tripping["ids"]) == {"stopped"}


def test_leases_are_short_and_renewed_while_the_run_works(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from fleetwarden.workflows.base import LEASE_TTL_SECONDS, LeaseKeeper

    class Ctx:  # the two things LeaseKeeper reads from a RunContext
        def __init__(self) -> None:
            self.store = store(tmp_path)
            self.store.init()
            self.run_id = "run-1"

        @staticmethod
        def clock() -> datetime:
            return datetime.now(UTC)

    ctx = Ctx()
    keeper = LeaseKeeper(ctx, "guard", ttl=3)  # type: ignore[arg-type]
    assert keeper.acquire(A)
    first = ctx.store.get_lease("guard", A)
    assert first is not None and first[0] == "run-1"
    import time

    time.sleep(2.5)  # the renewal thread runs every ttl/3 (at least 1 s)
    renewed = ctx.store.get_lease("guard", A)
    assert renewed is not None and renewed[1] > first[1]
    keeper.release_all()
    assert ctx.store.get_lease("guard", A) is None
    assert LEASE_TTL_SECONDS <= 120


# -- 4: the account label must match the credentials ----------------------------------------------------------
def test_an_account_without_role_arn_must_be_the_credentials_own(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    ec2 = factory.client("ec2", region="us-east-1")  # the base credentials: account 123456789012
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12345678", MinCount=3, MaxCount=3)["Instances"]]
    config = write(tmp_path, aws.url, accounts=[{"id": "999999999999"}], regions=["us-east-1"])
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 4
    assert result.report["actions"] == [] and result.report["summary"]["running_by_account"] == {}
    errors = result.report["targets"]
    assert [(t["account_id"], t["status"]) for t in errors] == [("999999999999", "error")]
    assert "the current credentials belong to account 123456789012, not 999999999999" in errors[0]["error"]
    assert set(states(factory, BASE, "us-east-1", ids).values()) == {"running"}
    # The same account id as the credentials' is fine.
    ok = write(tmp_path, aws.url, accounts=[{"id": BASE}], regions=["us-east-1"], guard={"max_running_instances": 5})
    assert cli("--config", str(ok), "--json", "guard", "run").exit_code == 0


def test_a_role_arn_of_another_account_is_refused(aws: EmulatorServer, tmp_path: Path) -> None:
    config = write(tmp_path, aws.url, accounts=[{"id": A, "role_arn": role("222222222222")}])
    aws.client.reset_calls()
    result = cli("--config", str(config), "--json", "audit")
    assert result.exit_code == 2
    assert "accounts[0].role_arn: the role is in account 222222222222, not in this entry's account" in result.stderr
    assert aws.client.calls()["total"] == 0


def test_the_run_time_check_refuses_a_role_of_another_account(factory: SessionFactory) -> None:
    # The config refuses it first; a plan built another way (the Lambda's shards, the API) is checked again.
    from fleetwarden.aws.session import AccountAccess
    from fleetwarden.aws.targets import verify_accounts

    errors = verify_accounts(
        [AccountAccess(A, role("222222222222")), AccountAccess("222222222222", role("222222222222"))], factory
    )
    assert [(e.account_id, e.error) for e in errors] == [
        (A, f"role_arn {role('222222222222')} is not a role of account {A}")
    ]


# -- 5: a denied stop does not keep the rest running -----------------------------------------------------------
def test_a_halt_routes_around_an_instance_whose_stop_is_denied(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    east = tripping["ids"]["us-east-1"]
    more = launch(factory, A, "us-east-1", {"team": "y"}, count=6)
    refused = more[2]
    aws.client.request(
        "/_fleetwarden/ec2_faults/rules",
        {
            "rules": [
                {
                    "action": "StopInstances",
                    "instance_ids": [refused],
                    "code": "UnauthorizedOperation",
                    "message": "You are not authorized to perform this operation.",
                    "status": 403,
                }
            ]
        },
    )
    config = write(tmp_path, aws.url)
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 4
    now = states(factory, A, "us-east-1", [*east, *more])
    assert {i: s for i, s in now.items() if s != "stopped"} == {refused: "running"}
    failed = [a for a in result.report["actions"] if a["outcome"] == "failed"]
    assert [(a["action"], a["resource_id"]) for a in failed] == [("stop", refused)]
    assert "UnauthorizedOperation" in failed[0]["reason"]


# -- 10 (run time): exclusions that leave nothing -------------------------------------------------------------
def test_exclusions_covering_every_enabled_region_are_an_error_not_all_clear(
    aws: EmulatorServer, tmp_path: Path
) -> None:
    regions = [
        r["RegionName"] for r in SessionFactory().client("ec2", region="us-east-1").describe_regions()["Regions"]
    ]
    config = write(tmp_path, aws.url, regions="all", exclude_regions=sorted(regions))
    result = cli("--config", str(config), "--json", "guard", "run")
    assert result.exit_code == 4
    assert [(t["account_id"], t["region"], t["status"]) for t in result.report["targets"]] == [(A, "*", "error")]
    assert result.report["targets"][0]["error"].startswith("no region left to check: exclude_regions removes every")


# -- 11: expected failures are one line, before anything is done ------------------------------------------------
def test_no_accounts_and_sts_unreachable_is_one_line_exit_2(aws: EmulatorServer, tmp_path: Path) -> None:
    config = write(tmp_path, aws.url, accounts=[])
    aws.client.set_faults([{"service": "sts", "mode": "unavailable"}])
    result = cli("--config", str(config), "guard", "run")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot use the AWS credentials: GetCallerIdentity")
    assert "Traceback" not in result.stderr


def test_no_credentials_at_all_is_one_line_exit_2(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, aws.url, accounts=[])
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    result = cli("--config", str(config), "audit")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no AWS credentials found (environment, profile, SSO or instance role); nothing was done"
    )


def test_an_unwritable_output_dir_is_refused_before_acting(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    config = write(tmp_path, aws.url)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    aws.client.reset_calls()
    result = cli("--config", str(config), "--output-dir", str(blocker / "out"), "guard", "run", "--apply")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: --output-dir {blocker / 'out'}: cannot write there")
    assert aws.client.calls()["total"] == 0  # nothing acted, nothing notified
    assert all_states(factory, A, tripping["ids"]) == {"running"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_a_read_only_output_dir_is_refused_before_acting(aws: EmulatorServer, tmp_path: Path) -> None:
    config = write(tmp_path, aws.url)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = cli("--config", str(config), "--output-dir", str(out), "audit")
    finally:
        out.chmod(0o700)
    assert result.exit_code == 2 and "cannot write there" in result.stderr


# -- 13: the lockout comes first ------------------------------------------------------------------------------
def test_the_lockout_is_the_first_mutation_of_a_halt(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    # One worker makes the order observable: the first mutating call of the halt is the lockout's, so a run
    # killed right after it has locked the attacker's credentials out before stopping anything.
    config = write(tmp_path, aws.url, aws={"endpoint_url": aws.url, "max_attempts": 2, "max_concurrency": 1})
    code, out = cli_child(aws, config, "guard", "run", "--apply", kill_after=1)
    assert code == -9, out
    assert denied(tripping)
    assert all_states(factory, A, tripping["ids"]) == {"running"}
    assert "PutUserPolicy" in MUTATIONS


# -- 1 (verified close): a window is closed only when its instances are verified stopped ------------------------
def test_a_window_whose_instance_fails_to_stop_stays_open_until_a_close_succeeds(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    stopped = launch(factory, A, "us-east-1", {"team": "x"}, count=3, state="stopped")
    config = write(tmp_path, aws.url, regions=["us-east-1"], guard={"max_running_instances": 100})
    opened = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opened.exit_code == 0 and opened.report["summary"]["started"] == 3
    rule = {"action": "StopInstances", "instance_ids": [stopped[0]], "code": "InternalError", "status": 500}
    aws.client.request("/_fleetwarden/ec2_faults/rules", {"rules": [rule]})
    closed = cli("--config", str(config), "--json", "window", "close", "--apply")
    assert closed.exit_code == 4
    assert closed.report["summary"]["closed"] == [] and len(closed.report["summary"]["left_open"]) == 1
    assert states(factory, A, "us-east-1", stopped)[stopped[0]] == "running"
    status = json.loads(cli("--config", str(config), "--json", "window", "status").stdout)
    assert [w["status"] for w in status["windows"]] == ["open"]
    aws.client.request("/_fleetwarden/ec2_faults/rules", {"rules": []})
    again = cli("--config", str(config), "--json", "window", "close", "--apply")
    assert again.exit_code == 0 and len(again.report["summary"]["closed"]) == 1
    assert set(states(factory, A, "us-east-1", stopped).values()) == {"stopped"}


def test_an_unverifiable_account_is_an_error_and_the_others_go_on(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    # The base identity does not answer: the account reached with the current credentials cannot be vouched for
    # (an error target), while the account reached through its role is halted as usual.
    accounts = [{"id": A, "role_arn": role(A)}, {"id": BASE}]
    config = write(tmp_path, aws.url, accounts=accounts)
    aws.client.set_faults([{"service": "sts", "action": "GetCallerIdentity", "mode": "unavailable"}])
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 4
    errors = [t for t in result.report["targets"] if t["status"] == "error"]
    assert [(t["account_id"], t["region"]) for t in errors] == [(BASE, "*")]
    assert errors[0]["error"].startswith("cannot tell which account the current credentials act in: ")
    assert all_states(factory, A, tripping["ids"]) == {"stopped"}


# -- a trip is announced even when the run that latched it died ------------------------------------------------
def test_a_trip_latched_by_a_killed_run_is_announced_once_by_the_next(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, tripping: dict[str, Any]
) -> None:
    sns = factory.client("sns", region="us-east-1")
    sqs = factory.client("sqs", region="us-east-1")
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})

    def received() -> list[str]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        for message in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return [m["Body"] for m in got]

    guard = {"max_running_instances": 1, "lockout": {"exempt_users": ["breakglass"]}, "notify": ["ops"]}
    config = write(tmp_path, aws.url, guard=guard, sinks={"ops": {"type": "sns", "topic_arn": topic}})
    code, out = cli_child(aws, config, "guard", "run", "--apply", kill_after=1)
    assert code == -9, out
    assert received() == []  # died before telling anyone
    store(tmp_path).break_lease("guard", A)  # two minutes pass
    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    (message,) = received()
    assert f"Account {A}: TRIPPED" in message
    # The count depends on whether the killed run's first call was a stop (2 left running) or the lockout (4).
    assert re.search(r"trigger: [24] running\+pending instances > limit 1", message), message
    assert result.report["summary"]["newly_tripped"] == [A]
    # Told once: a later run with nothing left to do sends nothing.
    again = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert again.exit_code == 0 and received() == []
