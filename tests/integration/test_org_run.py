"""Organization-scale runs: shard events, list-shards, aggregate, and the org-run state machine.

The org-run ASL (src/fleetwarden/statemachines/org-run.asl.json) is EXECUTED by moto's Step Functions interpreter
(execution mode): its Distributed Map reads the shard items inline or from S3 (ItemReader), runs one Lambda Task per
shard and writes a ResultWriter manifest; the Lambda function is bridged to `fleetwarden.lambda_handler.handler` in
this process, as in test_statemachine.py (moto without Docker never runs a function's code). The audit of a
52-account fleet run sharded through the state machine must give the report a one-process run gives on the same
fleet (findings, actions, targets, summary), apart from timings and run ids.

What moto's interpreter does not do, and is therefore checked on the ASL's structure only: ToleratedFailurePercentage
(moto parses it and logs that it has no effect: a failed iteration leaves the Map SUCCEEDED, so the Map's Catch to
Aggregate is never taken here; the crashed-shard test sees Aggregate report the missing shard either way),
MaxConcurrency as a real limit (moto starts that many workers), ResultWriter's result files (moto writes only the
manifest, with empty ResultFiles; fleetwarden does not need them: every shard writes its own fragment), and
JitterStrategy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import GOOD_TAGS, launch, write_config
from sfn import LambdaBridge, create_function, create_state_machine, execution_mode, install_bridge
from sfn import execute as run_execution

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.lambda_handler import handler
from fleetwarden.state import open_store

ASL_PATH = Path(__file__).resolve().parents[2] / "src" / "fleetwarden" / "statemachines" / "org-run.asl.json"
FUNCTION_PLACEHOLDER = "${FleetwardenFunctionArn}"
BUCKET_PLACEHOLDER = "${FleetwardenRunBucket}"
FUNCTION = "fleetwarden-org-run-test"
BUCKET = "fleetwarden-runs-test"
REGION = "us-east-1"
LAMBDA_THROTTLING = {"Lambda.TooManyRequestsException", "Lambda.ServiceException"}
FLEET = tuple(f"{100000000000 + i:012d}" for i in range(1, 53))  # 52 accounts


def asl() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ASL_PATH.read_text())
    return loaded


# -- 1. structure --------------------------------------------------------------------------------------
def _maps(states: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in states.items() if s["Type"] == "Map"}


def test_the_asl_is_a_distributed_map_between_list_shards_and_aggregate() -> None:
    states = asl()["States"]
    assert states["Defaults"]["Result"]["max_concurrency"] == 100
    maps = _maps(states)
    assert set(maps) == {"ShardsInline", "ShardsFromS3", "HaltShards"}
    assert {c["Next"] for c in states["Listed?"]["Choices"]} | {states["Listed?"]["Default"]} == {
        "ListShardsFailed",
        "ShardsInline",
        "ShardsFromS3",
    }
    for name, state in maps.items():
        assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED", name
        assert 0 < state["ToleratedFailurePercentage"] < 100, name
        # The execution input's max_concurrency (default 100: bench/guard.md, 5,000 accounts within 5 minutes).
        assert state["MaxConcurrencyPath"] == "$.settings.max_concurrency" and "MaxConcurrency" not in state, name
        assert state["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject", name
        assert state["ResultWriter"]["Parameters"]["Bucket"] == BUCKET_PLACEHOLDER, name
        # Past the tolerated failures the Map fails: the run goes on (the guard's org check counts what reported,
        # Aggregate reports the missing shards).
        after = "Aggregate" if name == "HaltShards" else "OrgCheck?"
        assert state["Next"] == after and [c["Next"] for c in state["Catch"]] == [after], name
        assert state["Catch"][0]["ResultPath"] not in ("$", "$.listing", "$.org"), name
        shard = state["ItemProcessor"]["States"]["Shard"]
        assert shard["Resource"] == FUNCTION_PLACEHOLDER and "Parameters" not in shard  # the item is the event
    assert maps["ShardsFromS3"]["ItemReader"] == {
        "Resource": "arn:aws:states:::s3:getObject",
        "ReaderConfig": {"InputType": "JSON"},
        "Parameters": {"Bucket.$": "$.listing.bucket", "Key.$": "$.listing.key"},
    }
    assert maps["HaltShards"]["ItemReader"]["Parameters"] == {"Bucket.$": "$.org.bucket", "Key.$": "$.org.key"}
    assert maps["ShardsInline"]["ItemsPath"] == "$.listing.shards"
    # The guard's org check runs only for an org-run list-shards marks (org limit set); the halt only on a trip.
    assert states["OrgCheck?"]["Choices"] == [
        {"Variable": "$.listing.org_check", "BooleanEquals": True, "Next": "GuardOrgCheck"}
    ]
    assert states["OrgCheck?"]["Default"] == "Aggregate"
    assert states["GuardOrgCheck"]["Parameters"] == {
        "action": "guard-org-check",
        "run_id.$": "$.listing.run_id",
        "fragments.$": "$.listing.fragments",
    }
    assert states["GuardOrgCheck"]["Next"] == "Halt?" and states["GuardOrgCheck"]["Catch"][0]["Next"] == "Aggregate"
    assert {c["Next"] for c in states["Halt?"]["Choices"]} == {"HaltShards"}
    assert states["Halt?"]["Default"] == "Aggregate"
    assert states["ListShards"]["Parameters"]["action"] == "list-shards"
    assert states["ListShards"]["Parameters"]["fragments"] == f"s3://{BUCKET_PLACEHOLDER}/runs"
    assert states["Aggregate"]["Parameters"] == {
        "action": "aggregate",
        "run_id.$": "$.listing.run_id",
        "fragments.$": "$.listing.fragments",
    }


def test_every_lambda_task_retries_throttling_and_every_state_is_reachable() -> None:
    definition = asl()
    states = definition["States"]
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    for m in _maps(states).values():
        tasks.update({f"map:{n}": s for n, s in m["ItemProcessor"]["States"].items()})
    assert {n for n in tasks if not n.startswith("map:")} == {"ListShards", "GuardOrgCheck", "Aggregate"}
    for name, task in tasks.items():
        assert task["Resource"] == FUNCTION_PLACEHOLDER, name
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
        assert retried >= LAMBDA_THROTTLING, name
        assert all(r["BackoffRate"] > 1 and r["MaxAttempts"] >= 3 for r in task["Retry"]), name

    def successors(state: dict[str, Any]) -> list[str]:
        out = [state["Next"]] if "Next" in state else []
        out += [c["Next"] for c in state.get("Choices", []) + state.get("Catch", [])]
        return out + ([state["Default"]] if "Default" in state else [])

    seen, todo = set(), [definition["StartAt"]]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += successors(states[name])
    assert seen == set(states)
    placeholders = {p for p in (FUNCTION_PLACEHOLDER, BUCKET_PLACEHOLDER) if p in ASL_PATH.read_text()}
    assert placeholders == {FUNCTION_PLACEHOLDER, BUCKET_PLACEHOLDER}


# -- fleet and configs -------------------------------------------------------------------------------------
def seed(factory: SessionFactory) -> None:
    """Each account: one good instance and one bad one; every fourth account also a second bad kind."""
    for n, account in enumerate(FLEET):
        launch(factory, account, REGION, GOOD_TAGS)
        launch(factory, account, REGION, {"created_by": "alice", "department": "eng"})
        if n % 4 == 0:
            launch(factory, account, REGION, {**GOOD_TAGS, "department": "marketing"}, 2, state="stopped")


def configs(tmp_path: Path, aws: EmulatorServer, topic: str | None = None) -> tuple[Path, Path]:
    """Two configs of the same fleet with separate state stores: one-process and sharded."""
    out = []
    for name in ("single", "sharded"):
        directory = tmp_path / name
        directory.mkdir()
        top: dict[str, Any] = {}
        extra: dict[str, Any] = {"created_by_must_be_iam_user": False, "action": "stop", "max_actions": 500}
        if topic is not None:
            top["sinks"] = {"ops": {"type": "sns", "topic_arn": topic}}
            extra["notify"] = ["ops"]
        out.append(write_config(directory, aws.url, FLEET, [REGION], top=top, **extra))
    return out[0], out[1]


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report apart from timings and run ids."""
    timeless = ("first_seen", "last_seen")
    return {
        "workflow": report["workflow"],
        "dry_run": report["dry_run"],
        "targets": sorted(json.dumps(t, sort_keys=True) for t in report["targets"]),
        "findings": sorted(json.dumps({k: v for k, v in f.items() if k not in timeless}) for f in report["findings"]),
        "actions": sorted(json.dumps(a, sort_keys=True) for a in report["actions"]),
        "summary": {k: v for k, v in report["summary"].items() if k != "shards"},
    }


def s3_json(factory: SessionFactory, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(factory.client("s3", region=REGION).get_object(Bucket=bucket, Key=key)["Body"].read())


# -- 2. the handler's shard events, in-process ---------------------------------------------------------------
def test_a_shard_runs_only_its_accounts_and_regions_and_never_widens(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = FLEET[:3]
    for account in (a, b, c):
        launch(factory, account, REGION, {})
        launch(factory, account, "eu-west-1", {})
    path = write_config(tmp_path, aws.url, (a, b, c), [REGION, "eu-west-1"], created_by_must_be_iam_user=False)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    stranger = "999999999999"  # not in the config: never audited
    out = handler({"action": "audit", "accounts": [b, stranger], "regions": ["eu-west-1", "ap-south-1"]}, None)
    assert out["status"] == "ok", out
    assert [(t["account_id"], t["region"]) for t in out["report"]["targets"]] == [(b, "eu-west-1")]
    assert {(f["account_id"], f["region"]) for f in out["report"]["findings"]} == {(b, "eu-west-1")}
    shared = handler({"action": "list-targets", "accounts": [a, c], "run_id": "org-1"}, None)
    assert {(t["account_id"], t["region"]) for t in shared["targets"]} == {
        (a, REGION),
        (a, "eu-west-1"),
        (c, REGION),
        (c, "eu-west-1"),
    }
    run = handler({"action": "audit", "accounts": [a], "run_id": "org-run-7"}, None)
    assert run["run_id"] == "org-run-7" and run["report"]["run_id"] == "org-run-7"
    assert run["invocation_run_id"].startswith("org-run-7.")
    # Another invocation of the same shard still holds the account's audit lease (a retry while the first one
    # runs): the shared run id does not let the second one in.
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert store.acquire_lease("audit", a, "org-run-7.00003.0badcafe", datetime.now(UTC), 120)
    finally:
        store.close()
    again = handler({"action": "audit", "accounts": [a], "run_id": "org-run-7", "shard": 3}, None)
    assert again["status"] == "refused" and again["exit_code"] == 5 and "org-run-7.00003.0badcafe" in again["error"]
    for inner in ({"action": "window-open"}, {"action": "audit", "accounts": [a]}, {"action": "nope"}):
        refused = handler({"action": "list-shards", "event": inner}, None)
        assert refused["status"] == "error" and refused["exit_code"] == 2, refused


def test_a_sharded_audit_that_may_act_needs_its_share_of_max_actions(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = FLEET[:2]
    bad = {account: launch(factory, account, REGION, {}, 3) for account in (a, b)}
    path = write_config(tmp_path, aws.url, (a, b), [REGION], created_by_must_be_iam_user=False, action="stop")
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    refused = handler({"action": "audit", "apply": True, "accounts": [a]}, None)
    assert refused["status"] == "refused" and refused["exit_code"] == 5, refused
    # A share of 2 (list-shards' share of the organization's limit) refuses a plan of 3: nothing stopped.
    over = handler({"action": "audit", "apply": True, "accounts": [a], "max_actions": 2}, None)
    assert over["status"] == "refused" and "max_actions=2" in over["error"], over
    ec2 = factory.client("ec2", region=REGION, account_id=a)
    described = ec2.describe_instances(InstanceIds=bad[a])["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in described} == {"running"}
    # The share never raises the config's limit (100): 10**6 acts like 100.
    ok = handler({"action": "audit", "apply": True, "accounts": [a], "max_actions": 10**6}, None)
    assert ok["status"] == "ok" and ok["summary"]["actions_by_outcome"] == {"done": 3}, ok


def test_a_guard_shard_runs_per_account_limits_and_refuses_the_org_wide_one_outside_an_org_run(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = FLEET[:2]
    many = launch(factory, a, REGION, {}, 3)
    launch(factory, b, REGION, {}, 3)
    path = write_config(tmp_path, aws.url, (a, b), [REGION], top={"guard": {"max_running_instances": 2}})
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    out = handler({"action": "guard", "apply": True, "accounts": [a]}, None)
    assert out["status"] == "ok", out
    assert {t["account_id"] for t in out["report"]["targets"]} == {a}
    ec2 = factory.client("ec2", region=REGION, account_id=a)
    halted = ec2.describe_instances(InstanceIds=many)["Reservations"][0]["Instances"]
    assert {i["State"]["Name"] for i in halted} == {"stopped"}  # the per-account trip halted a, and only a
    other = factory.client("ec2", region=REGION, account_id=b).describe_instances()["Reservations"]
    assert {i["State"]["Name"] for r in other for i in r["Instances"]} == {"running"}
    # An organization-wide limit: a shard outside an org-run (no fragments) would count only its own accounts with
    # no org check after it, so it refuses (exit 2), as does list-shards without fragments (test_guard_shards.py
    # runs the org-run's two phases).
    path.write_text(path.read_text().replace("max_running_instances: 2", "max_running_instances_org: 4"))
    refused = handler({"action": "guard", "apply": True, "accounts": [b]}, None)
    assert refused["status"] == "error" and refused["exit_code"] == 2, refused
    assert "max_running_instances_org" in refused["error"]
    listing = handler({"action": "list-shards", "event": {"action": "guard"}}, None)
    assert listing["exit_code"] == 2 and "max_running_instances_org" in listing["error"], listing
    after = factory.client("ec2", region=REGION, account_id=b).describe_instances()["Reservations"]
    assert {i["State"]["Name"] for r in after for i in r["Instances"]} == {"running"}


def test_list_shards_then_shards_then_aggregate_equals_one_process(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(factory)
    factory.client("s3", region=REGION).create_bucket(Bucket=BUCKET)
    single, sharded = configs(tmp_path, aws)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(single))
    one = handler({"action": "audit"}, None)
    assert one["status"] == "ok", one
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(sharded))
    listing = handler(
        {"action": "list-shards", "event": {"action": "audit"}, "size": 7, "fragments": f"s3://{BUCKET}/runs"}, None
    )
    assert listing["status"] == "ok" and listing["count"] == 8 and listing["accounts"] == len(FLEET), listing
    items = s3_json(factory, f"s3://{BUCKET}/{listing['key']}")
    assert items == listing["shards"]
    assert sorted(a for item in items for a in item["accounts"]) == sorted(FLEET)
    for item in items:
        out = handler(item, None)
        assert out["status"] == "ok" and "report" not in out and out["fragment"].endswith(f"{item['shard']:05d}.json")
    merged = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": f"s3://{BUCKET}/runs"}, None)
    assert merged["status"] == "ok" and merged["exit_code"] == 0, merged
    assert merged["shards"] == {"expected": 8, "reported": 8, "missing": [], "errors": []}
    report = s3_json(factory, merged["report_uri"])
    assert report["run_id"] == listing["run_id"]
    # A run id list-shards never wrote: nothing to merge, an error (exit 1), no report written.
    unknown = handler({"action": "aggregate", "run_id": "no-such-run", "fragments": f"s3://{BUCKET}/runs"}, None)
    assert unknown["status"] == "error" and unknown["exit_code"] == 1 and "no-such-run" in unknown["error"], unknown
    listed = factory.client("s3", region=REGION).list_objects_v2(Bucket=BUCKET, Prefix="runs/no-such-run")
    assert listed["KeyCount"] == 0
    assert comparable(report) == comparable(one["report"])
    assert report["summary"]["violators"] == len(FLEET) + 2 * 13 and report["summary"]["accounts"] == len(FLEET)


def test_a_sharded_guard_dry_run_equals_one_process(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-account limits only: 12 accounts, every third over its limit of 2 running instances."""
    fleet = FLEET[:12]
    for n, account in enumerate(fleet):
        launch(factory, account, REGION, GOOD_TAGS, 3 if n % 3 == 0 else 1)
    factory.client("s3", region=REGION).create_bucket(Bucket=BUCKET)
    paths = []
    for name in ("single", "sharded"):
        (tmp_path / name).mkdir()
        top = {"guard": {"max_running_instances": 2}}
        paths.append(write_config(tmp_path / name, aws.url, fleet, [REGION], top=top))
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(paths[0]))
    one = handler({"action": "guard"}, None)
    assert one["status"] == "ok", one
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(paths[1]))
    listing = handler(
        {"action": "list-shards", "event": {"action": "guard"}, "size": 5, "fragments": f"s3://{BUCKET}/runs"}, None
    )
    assert listing["count"] == 3, listing
    for item in listing["shards"]:
        assert handler(item, None)["status"] == "ok"
    merged = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": f"s3://{BUCKET}/runs"}, None)
    assert merged["status"] == "ok", merged
    report = s3_json(factory, merged["report_uri"])
    assert comparable(report) == comparable(one["report"])
    assert {f["account_id"] for f in report["findings"]} == {a for n, a in enumerate(fleet) if n % 3 == 0}


# -- 3. the state machine, executed by moto ------------------------------------------------------------------
@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> LambdaBridge:
    return install_bridge(monkeypatch, FUNCTION)


@pytest.fixture
def sfn_mode(aws: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with execution_mode(aws, monkeypatch):
        yield


def deploy(factory: SessionFactory) -> tuple[Any, str]:
    function_arn = create_function(factory, REGION, FUNCTION)
    factory.client("s3", region=REGION).create_bucket(Bucket=BUCKET)
    definition = ASL_PATH.read_text().replace(FUNCTION_PLACEHOLDER, function_arn).replace(BUCKET_PLACEHOLDER, BUCKET)
    return create_state_machine(factory, REGION, "fleetwarden-org-run", definition)


def execute(sfn: Any, machine: str, payload: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    return run_execution(sfn, machine, payload, timeout, poll=0.2)


@pytest.fixture
def org(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sfn_mode: None,
    bridge: LambdaBridge,
) -> dict[str, Any]:
    seed(factory)
    sns = factory.client("sns", region=REGION)
    sqs = factory.client("sqs", region=REGION)
    topic = sns.create_topic(Name="fleetwarden-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    single, sharded = configs(tmp_path, aws, topic)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(single))
    one = handler({"action": "audit"}, None)
    assert one["status"] == "ok" and one["report"]["deliveries"][0]["outcome"] == "sent", one
    sqs.purge_queue(QueueUrl=queue)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(sharded))
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    sfn, machine = deploy(factory)
    return {"one": one, "sfn": sfn, "machine": machine, "sqs": sqs, "queue": queue, "config": sharded}


def messages(org: dict[str, Any]) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = (
        org["sqs"].receive_message(QueueUrl=org["queue"], MaxNumberOfMessages=10).get("Messages", [])
    )
    return got


@pytest.mark.parametrize("inline_max", [40, 0], ids=["items-inline", "items-from-s3"])
def test_org_run_executes_and_equals_a_one_process_audit(
    inline_max: int, factory: SessionFactory, bridge: LambdaBridge, org: dict[str, Any]
) -> None:
    payload = {"event": {"action": "audit"}, "shard_size": 6, "inline_max": inline_max}
    described = execute(org["sfn"], org["machine"], payload)
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    shards = -(-len(FLEET) // 6)
    actions = bridge.actions()
    assert actions[0] == "list-shards" and actions[-1] == "aggregate"
    assert sorted(actions[1:-1]) == ["audit"] * shards
    shard_events = bridge.events[1:-1]
    assert sorted(a for e in shard_events for a in e["accounts"]) == sorted(FLEET)  # each account in one shard
    assert {e["run_id"] for e in shard_events} == {output["run_id"]}
    assert output["status"] == "ok" and output["exit_code"] == 0, output
    assert output["shards"] == {"expected": shards, "reported": shards, "missing": [], "errors": []}
    report = s3_json(factory, output["report_uri"])
    assert comparable(report) == comparable(org["one"]["report"])
    # One delivery, from the aggregate: the shards' notify lists were cleared.
    assert report["deliveries"] == [{"sink": "ops", "outcome": "sent", "error": None}]
    sent = messages(org)
    assert len(sent) == 1 and str(report["summary"]["violators"]) in sent[0]["Body"]


def test_a_shard_that_crashes_makes_the_aggregate_partial(
    factory: SessionFactory, bridge: LambdaBridge, org: dict[str, Any]
) -> None:
    bridge.crash_shards = {2}
    described = execute(org["sfn"], org["machine"], {"event": {"action": "audit"}, "shard_size": 6})
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["status"] == "partial" and output["exit_code"] == 4, output
    assert output["shards"]["missing"] == [2]
    lost = {e["account_id"] for e in output["targets_in_error"]}
    assert lost == set(sorted(FLEET)[12:18])
    report = s3_json(factory, output["report_uri"])
    assert {t["account_id"] for t in report["targets"] if t["status"] == "error"} == lost
    # The other shards' findings are all there.
    expected = {f["resource_id"] for f in org["one"]["report"]["findings"] if f["account_id"] not in lost}
    assert {f["resource_id"] for f in report["findings"]} == expected
    assert len(messages(org)) == 1


@pytest.mark.parametrize("limit", [40, 2 * len(FLEET)], ids=["over-the-limit", "within-the-limit"])
def test_an_org_run_that_acts_keeps_to_the_organization_wide_limit(
    limit: int, factory: SessionFactory, bridge: LambdaBridge, org: dict[str, Any]
) -> None:
    """Each shard gets its share of audit.max_actions from list-shards: the shares add up to at most the limit.
    52 violators to stop: with a limit of 40 every shard's plan (6) is over its share (4) and refuses, so nothing
    is stopped and the aggregate's exit status is the refusal's (5, DESIGN.md's order); with 104, all 52 stop."""
    config = yaml.safe_load(org["config"].read_text())
    config["audit"]["max_actions"] = limit
    org["config"].write_text(yaml.safe_dump(config))
    described = execute(org["sfn"], org["machine"], {"event": {"action": "audit", "apply": True}, "shard_size": 6})
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    shard_events = [e for e in bridge.events if e.get("action") == "audit"]
    assert sum(e["max_actions"] for e in shard_events) <= limit
    ec2_states = []
    for account in FLEET:
        ec2 = factory.client("ec2", region=REGION, account_id=account)
        for reservation in ec2.describe_instances()["Reservations"]:
            ec2_states += [i["State"]["Name"] for i in reservation["Instances"]]
    if limit == 40:
        assert output["status"] == "refused" and output["exit_code"] == 5, output
        assert len(output["shards"]["errors"]) == len(shard_events)
        assert ec2_states.count("stopped") == 2 * 13  # only the instances stopped from the start
    else:
        assert output["status"] == "ok" and output["exit_code"] == 0, output
        assert output["summary"]["actions_by_outcome"] == {"done": len(FLEET), "skipped": 2 * 13}
        assert ec2_states.count("running") == len(FLEET)  # the good ones


def test_a_bad_org_run_input_fails_at_list_shards_and_runs_nothing(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sfn_mode: None,
    bridge: LambdaBridge,
) -> None:
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(write_config(tmp_path, aws.url, FLEET[:2], [REGION])))
    sfn, machine = deploy(factory)
    for event in ({"action": "window-open"}, {"action": "audit", "aply": True}):
        described = execute(sfn, machine, {"event": event})
        assert described["status"] == "FAILED" and described.get("error") == "ListShardsFailed", described
    assert bridge.actions() == ["list-shards", "list-shards"]
