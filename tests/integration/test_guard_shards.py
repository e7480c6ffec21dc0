"""The guard's organization-wide count limit in an org-run: count shards, the org check, halt shards, aggregate.

Through the real org-run ASL in moto's Step Functions interpreter (the function bridged to the handler, as in
test_org_run.py) and, for the kill point between the org check and the halt and for a shard that never reports,
through the handler's events phase by phase. The fleet: 24 accounts in one region (4 shards of 6), 2 running
instances each (48). With `max_running_instances_org: 40` and a per-account limit of 3, the organization trips
while no account does on its own; the sharded run must give the report a one-process `guard run` gives on the
same fleet (apart from timings and run ids), dry run and apply, and leave every instance stopped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleet import Inbox, cli, drain, launch, role, sns_inbox, states
from sfn import LambdaBridge, create_function, create_state_machine, execution_mode, install_bridge
from sfn import execute as run_execution

from fleetwarden.actions.iam_lockout import LOCKOUT_POLICY
from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.events import EventError, parse_event
from fleetwarden.lambda_handler import handler
from fleetwarden.state import open_store
from fleetwarden.workflows.guard.state import load_org_trip, load_states

pytestmark = pytest.mark.integration

ASL_PATH = Path(__file__).resolve().parents[2] / "src" / "fleetwarden" / "statemachines" / "org-run.asl.json"
FUNCTION = "fleetwarden-guard-org-run-test"
BUCKET = "fleetwarden-guard-runs-test"
FRAGMENTS = f"s3://{BUCKET}/runs"
REGION = "us-east-1"
FLEET = tuple(f"{200000000000 + i:012d}" for i in range(1, 25))  # 24 accounts
SHARD_SIZE = 6  # 4 shards
PER_ACCOUNT = 2


def guard_config(directory: Path, endpoint: str, topic: str | None = None, **guard: Any) -> Path:
    import yaml

    directory.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 8},
        "accounts": [{"id": a, "role_arn": role(a)} for a in FLEET],
        "regions": [REGION],
        "state": f"sqlite:///{directory / 'state.db'}",
        "guard": {"max_running_instances": 3, "max_running_instances_org": 40, **guard},
    }
    if topic is not None:
        config["sinks"] = {"ops": {"type": "sns", "topic_arn": topic}}
        config["guard"]["notify"] = ["ops"]
    path = directory / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def fleet(factory: SessionFactory) -> dict[str, list[str]]:
    factory.client("s3", region=REGION).create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(max_workers=8) as pool:  # seeding 24 accounts one by one is most of a test's time
        seeded = pool.map(lambda account: launch(factory, account, REGION, {}, PER_ACCOUNT), FLEET)
        return dict(zip(FLEET, seeded, strict=True))


def running_states(factory: SessionFactory, fleet: dict[str, list[str]]) -> dict[str, set[str]]:
    return {account: set(states(factory, account, REGION, ids).values()) for account, ids in fleet.items()}


def restart(factory: SessionFactory, fleet: dict[str, list[str]]) -> None:
    """The same fleet running again (for the other run of a comparison)."""
    for account, ids in fleet.items():
        factory.client("ec2", region=REGION, account_id=account).start_instances(InstanceIds=ids)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report apart from timings, run ids, exception ids and the org-run's own bookkeeping (shards, org check)."""

    def clean(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        text = re.sub(r"fleetwarden guard [^:\"]+:", "fleetwarden guard RUN:", text)
        return re.sub(r"do-not-stop [^:\"]+:", "do-not-stop ID:", text)

    timeless = ("first_seen", "last_seen", "id")
    return {
        "workflow": report["workflow"],
        "dry_run": report["dry_run"],
        "targets": sorted(clean(t) for t in report["targets"]),
        "findings": sorted(clean({k: v for k, v in f.items() if k not in timeless}) for f in report["findings"]),
        "actions": sorted(clean(a) for a in report["actions"]),
        "summary": {k: v for k, v in report["summary"].items() if k not in ("shards", "org_check")},
    }


def inbox(factory: SessionFactory) -> Inbox:
    return sns_inbox(factory, "guard")


messages = drain


def iam_user(factory: SessionFactory, account: str) -> str:
    iam = factory.client("iam", region=REGION, account_id=account)
    iam.create_user(UserName="dev")
    return str(iam.create_access_key(UserName="dev")["AccessKey"]["AccessKeyId"])


def key_state(factory: SessionFactory, account: str) -> tuple[set[str], list[str]]:
    iam = factory.client("iam", region=REGION, account_id=account)
    keys = {k["Status"] for k in iam.list_access_keys(UserName="dev")["AccessKeyMetadata"]}
    return keys, list(iam.list_user_policies(UserName="dev")["PolicyNames"])


def unlock(factory: SessionFactory, account: str, key: str) -> None:
    """Undo a lockout by hand (the other run of a comparison starts from the same fleet)."""
    iam = factory.client("iam", region=REGION, account_id=account)
    iam.update_access_key(UserName="dev", AccessKeyId=key, Status="Active")
    iam.delete_user_policy(UserName="dev", PolicyName=LOCKOUT_POLICY)


def do_not_stop(config: Path, account: str, instance_id: str) -> None:
    added = cli(
        "--config", str(config), "exceptions", "add", "--kind", "do-not-stop", "--account", account,
        "--resource-id", instance_id, "--reason", "database migration",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr


def s3_json(factory: SessionFactory, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(factory.client("s3", region=REGION).get_object(Bucket=bucket, Key=key)["Body"].read())


def one_process(monkeypatch: pytest.MonkeyPatch, config: Path, apply: bool) -> dict[str, Any]:
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(config))
    out = handler({"action": "guard", "apply": apply}, None)
    assert out["status"] in ("ok", "partial"), out
    report: dict[str, Any] = out["report"]
    return report


# -- the state machine -------------------------------------------------------------------------------------------
@pytest.fixture
def machine(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, str, LambdaBridge]]:
    bridge = install_bridge(monkeypatch, FUNCTION)
    with execution_mode(aws, monkeypatch):
        function_arn = create_function(factory, REGION, FUNCTION)
        definition = (
            ASL_PATH.read_text()
            .replace("${FleetwardenFunctionArn}", function_arn)
            .replace("${FleetwardenRunBucket}", BUCKET)
        )
        sfn, arn = create_state_machine(factory, REGION, "fleetwarden-guard-org-run", definition)
        yield sfn, arn, bridge


def org_run(machine: tuple[Any, str, LambdaBridge], config: Path, monkeypatch: pytest.MonkeyPatch, apply: bool) -> Any:
    sfn, arn, _ = machine
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(config))
    payload = {"event": {"action": "guard", "apply": apply}, "shard_size": SHARD_SIZE}
    described = run_execution(sfn, arn, payload, 120.0, poll=0.2)
    assert described["status"] == "SUCCEEDED", described
    return json.loads(described["output"])


def test_the_org_limit_trips_through_the_state_machine_like_one_process(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fleet: dict[str, list[str]],
    machine: tuple[Any, str, LambdaBridge],
) -> None:
    """48 running > 40 while no account passes its own limit (2 <= 3): every account trips on the org count. A dry
    run first: the one-process plan, nothing halted, nothing recorded or sent. Then with apply: everything ends
    stopped but the instance a do-not-stop exception covers, the users are locked out, one message."""
    kept_account = FLEET[13]
    kept = fleet[kept_account][0]
    keys = {account: iam_user(factory, account) for account in (FLEET[0], FLEET[7])}
    box = inbox(factory)
    single = guard_config(tmp_path / "single", aws.url, topic=box[0])
    sharded = guard_config(tmp_path / "sharded", aws.url, topic=box[0])
    for config in (single, sharded):
        do_not_stop(config, kept_account, kept)

    dry_one = one_process(monkeypatch, single, apply=False)
    dry = org_run(machine, sharded, monkeypatch, apply=False)
    assert dry["status"] == "ok" and dry["dry_run"] is True, dry
    assert set().union(*running_states(factory, fleet).values()) == {"running"}
    dry_report = s3_json(factory, dry["report_uri"])
    assert comparable(dry_report) == comparable(dry_one)
    planned = [a for a in dry_report["actions"] if a["action"] == "stop" and a["outcome"] == "planned"]
    assert len(planned) == 47  # all 48 but the excepted one
    assert messages(box) == []
    store = open_store(f"sqlite:///{tmp_path / 'sharded' / 'state.db'}")
    try:
        assert load_org_trip(store) is None and load_states(store) == {}  # nothing recorded
    finally:
        store.close()

    one = one_process(monkeypatch, single, apply=True)
    assert one["summary"]["tripped"] == sorted(FLEET)
    assert len(messages(box)) == 1
    restart(factory, fleet)
    for account, key in keys.items():
        unlock(factory, account, key)
    assert set().union(*running_states(factory, fleet).values()) == {"running"}

    bridge = machine[2]
    bridge.events.clear()
    output = org_run(machine, sharded, monkeypatch, apply=True)
    actions = bridge.actions()
    assert actions[0] == "list-shards" and actions[-1] == "aggregate" and "guard-org-check" in actions
    halts = [e for e in bridge.events if e.get("phase") == "halt"]
    assert len(halts) == len(FLEET) // SHARD_SIZE
    assert sorted(a for e in halts for a in e["accounts"]) == sorted(FLEET)
    assert output["status"] == "ok" and output["exit_code"] == 0, output
    assert output["shards"]["halt"] == {"expected": 4, "reported": 4, "missing": []}
    # Observable: every instance is stopped but the excepted one; the users' keys are off, the deny policy on.
    assert states(factory, kept_account, REGION, [kept]) == {kept: "running"}
    fleet[kept_account].remove(kept)
    assert set().union(*running_states(factory, fleet).values()) == {"stopped"}
    assert all(key_state(factory, account) == ({"Inactive"}, [LOCKOUT_POLICY]) for account in keys)
    report = s3_json(factory, output["report_uri"])
    assert comparable(report) == comparable(one)
    org_text = "48 running+pending instances in the organization > limit 40"
    assert set(map(tuple, report["summary"]["triggers"].values())) == {(org_text,)}
    assert report["summary"]["org_check"] == {
        "total": 48, "limit": 40, "lower_bound": False, "tripped": True, "latched": True,
    }  # fmt: skip
    sent = messages(box)  # one message for the org-run, from aggregate; the shards sent none
    assert len(sent) == 1 and "TRIPPED" in sent[0] and org_text in sent[0] and FLEET[23] in sent[0], sent
    store = open_store(f"sqlite:///{tmp_path / 'sharded' / 'state.db'}")
    try:
        trips = load_states(store)
        assert sorted(a for a, s in trips.items() if s.tripped) == sorted(FLEET)
        assert {s.scope for s in trips.values()} == {"org"} and all(s.notified for s in trips.values())
        org = load_org_trip(store)
        assert org is not None and org.finished_at is not None and (org.total, org.limit) == (48, 40)
    finally:
        store.close()


def test_one_account_trips_alone_and_the_others_are_left_running(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fleet: dict[str, list[str]],
    machine: tuple[Any, str, LambdaBridge],
) -> None:
    """One account runs 5 (> 3): it trips in the count phase and is halted there; the organization (51) stays
    under its limit of 60, so no halt phase runs."""
    hot = FLEET[7]
    extra = launch(factory, hot, REGION, {}, 3)
    fleet = {**fleet, hot: fleet[hot] + extra}
    # burn-rate under a limit it never reaches: the summary's price table is the store's, not the shards' added up
    spend = {"max_usd": 1_000_000, "sources": ["burn-rate"]}
    single = guard_config(tmp_path / "single", aws.url, max_running_instances_org=60, spend=spend)
    sharded = guard_config(tmp_path / "sharded", aws.url, max_running_instances_org=60, spend=spend)
    one = one_process(monkeypatch, single, apply=True)
    assert one["summary"]["tripped"] == [hot]
    assert one["summary"]["price_table"]["source"] == "shipped" and "shipped table" in one["summary"]["prices"]
    restart(factory, fleet)

    output = org_run(machine, sharded, monkeypatch, apply=True)
    assert output["status"] == "ok" and output["exit_code"] == 0, output
    assert not [e for e in machine[2].events if e.get("phase") == "halt"]
    after = running_states(factory, fleet)
    assert after.pop(hot) == {"stopped"}
    assert set().union(*after.values()) == {"running"}
    report = s3_json(factory, output["report_uri"])
    assert comparable(report) == comparable(one)
    assert report["summary"]["org_check"]["tripped"] is False


# -- the handler's events, phase by phase -----------------------------------------------------------------------
def count_phase(monkeypatch: pytest.MonkeyPatch, config: Path, *, skip: int | None = None) -> dict[str, Any]:
    """list-shards and the count shards (all but shard `skip`), apply."""
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(config))
    event = {"action": "guard", "apply": True}
    listing = handler({"action": "list-shards", "event": event, "size": SHARD_SIZE, "fragments": FRAGMENTS}, None)
    assert listing["status"] == "ok" and listing["org_check"] is True and listing["count"] == 4, listing
    for item in listing["shards"]:
        if item["shard"] != skip:
            assert handler(item, None)["status"] == "ok"
    return listing


def test_the_org_trip_is_latched_before_any_halt_and_the_next_guard_run_finishes_it(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: Any
) -> None:
    """The org-run dies after the org check (no halt shard ran): the trip is on record, nothing is stopped yet,
    and a one-process `guard run --apply` halts every account of it."""
    config = guard_config(tmp_path / "org", aws.url)
    listing = count_phase(monkeypatch, config)
    check = handler({"action": "guard-org-check", "run_id": listing["run_id"], "fragments": FRAGMENTS}, None)
    assert check["status"] == "ok" and check["tripped"] and check["latched"], check
    assert (check["total"], check["limit"], check["accounts_to_halt"], check["halt"]) == (48, 40, 24, True)
    store = open_store(f"sqlite:///{tmp_path / 'org' / 'state.db'}")
    try:
        org = load_org_trip(store)
        assert org is not None and org.run_id == listing["run_id"] and org.accounts == sorted(FLEET)
        assert org.finished_at is None and load_states(store) == {}
    finally:
        store.close()
    assert set().union(*running_states(factory, fleet).values()) == {"running"}  # killed before any halt
    # The halt items are there for the second Map.
    items = s3_json(factory, f"s3://{BUCKET}/{check['key']}")
    assert [i["phase"] for i in items] == ["halt"] * 4

    result = cli("--config", str(config), "--json", "guard", "run", "--apply")
    assert result.exit_code == 0, result.stderr
    assert set().union(*running_states(factory, fleet).values()) == {"stopped"}
    assert result.report["summary"]["newly_tripped"] == sorted(FLEET)
    texts = result.report["summary"]["triggers"][FLEET[0]]
    assert texts == ["48 running+pending instances in the organization > limit 40"]
    store = open_store(f"sqlite:///{tmp_path / 'org' / 'state.db'}")
    try:
        assert all(s.tripped and s.scope == "org" for s in load_states(store).values())
        finished = load_org_trip(store)
        assert finished is not None and finished.finished_at is not None
    finally:
        store.close()


def test_a_silent_shard_makes_the_total_a_lower_bound_and_a_halt_needs_the_org_checks_trip(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet: Any
) -> None:
    """Shard 1 never reports: 39 counted of 51. Under a limit of 42 the org check is partial (exit 4), never read
    as zero, and nothing is halted; over a limit of 30 the organization trips anyway and the halt covers the silent
    shard's accounts too. One account of shard 0 runs 3 more (5 > 3): the count phase halts it at once, and the
    merged report gives it both triggers, as one process does. A halt event without the org check's trip (forged,
    replayed, or before the check) is refused and halts nothing; an account whose lease another run holds is left
    to it and reported."""
    hot = FLEET[2]
    fleet = {**fleet, hot: fleet[hot] + launch(factory, hot, REGION, {}, 3)}
    config = guard_config(tmp_path / "org", aws.url, max_running_instances_org=42)
    listing = count_phase(monkeypatch, config, skip=1)
    assert set(states(factory, hot, REGION, fleet[hot]).values()) == {"stopped"}  # at once, before any org check
    fleet.pop(hot)
    halt_event = {**listing["shards"][0], "phase": "halt"}
    refused = handler(halt_event, None)
    assert refused["status"] == "error" and refused["exit_code"] == 2 and "org-check.json" in refused["error"]
    org_check = {"action": "guard-org-check", "run_id": listing["run_id"], "fragments": FRAGMENTS}

    under = handler(org_check, None)
    assert (under["total"], under["lower_bound"], under["missing"]) == (39, True, [1]), under
    assert under["status"] == "partial" and under["exit_code"] == 4 and not under["tripped"] and not under["halt"]
    assert handler(halt_event, None)["exit_code"] == 2  # the check did not trip: still no halt
    assert set().union(*running_states(factory, fleet).values()) == {"running"}
    merged = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": FRAGMENTS}, None)
    assert merged["exit_code"] == 4 and merged["shards"]["missing"] == [1], merged
    silent = set(listing["shards"][1]["accounts"])
    assert {t["account_id"] for t in merged["targets_in_error"]} == silent

    config.write_text(config.read_text().replace("max_running_instances_org: 42", "max_running_instances_org: 30"))
    over = handler(org_check, None)
    assert over["tripped"] and over["lower_bound"] and over["accounts_to_halt"] == 23 and over["status"] == "ok"
    # Another guard run holds one account's lease: the halt shard leaves it alone and says so, as one process does.
    busy = FLEET[5]
    store = open_store(f"sqlite:///{tmp_path / 'org' / 'state.db'}")
    try:
        assert store.acquire_lease("guard", busy, "another-guard-run", datetime.now(UTC), 120)
    finally:
        store.close()
    for item in s3_json(factory, f"s3://{BUCKET}/{over['key']}"):
        halted = handler(item, None)
        assert halted["status"] == ("partial" if busy in item["accounts"] else "ok"), halted
    assert set(states(factory, busy, REGION, fleet.pop(busy)).values()) == {"running"}
    assert set().union(*running_states(factory, fleet).values()) == {"stopped"}
    merged = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": FRAGMENTS}, None)
    assert merged["exit_code"] == 4 and merged["shards"]["halt"] == {"expected": 4, "reported": 4, "missing": []}
    held = [t for t in merged["targets_in_error"] if t["account_id"] == busy]
    assert len(held) == 1 and "another-guard-run" in held[0]["error"], merged["targets_in_error"]
    assert merged["summary"]["tripped"] == sorted(FLEET)  # the silent shard's accounts too
    org_text = "39 running+pending instances in the organization > limit 30"
    assert merged["summary"]["triggers"][hot] == ["5 running+pending instances > limit 3", org_text]
    assert merged["summary"]["triggers"][FLEET[0]] == [org_text]
    store = open_store(f"sqlite:///{tmp_path / 'org' / 'state.db'}")
    try:
        trips = load_states(store)
        assert [t["kind"] for t in trips[hot].triggers] == ["count", "org-count"] and trips[hot].scope == "account"
    finally:
        store.close()


# -- events -------------------------------------------------------------------------------------------------------
EVENTS = Path(__file__).resolve().parents[1] / "events" / "shards"


def test_the_sample_guard_phase_events_parse_and_a_halt_needs_the_org_run() -> None:
    check = parse_event(json.loads((EVENTS / "guard_org_check.json").read_text()))
    assert check.action == "guard-org-check" and check.params["fragments"].startswith("s3://")
    halt = parse_event(json.loads((EVENTS / "guard_halt_shard.json").read_text()))
    assert halt.action == "guard" and halt.params == {"phase": "halt"} and halt.shard["shard"] == 0
    with pytest.raises(EventError, match="phase halt needs"):
        parse_event({"action": "guard", "phase": "halt", "accounts": [FLEET[0]]})
