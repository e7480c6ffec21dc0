"""The guard's heartbeat (workflows/guard/heartbeat.py) against the emulator: a real guard run, then
`maybe_heartbeat` as run_guard calls it; the message is observed where it arrives (an SQS queue subscribed to
the SNS topic of the guard's sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fleet import ACCOUNTS, Inbox, drain, launch, role, sns_inbox

from fleetwarden.aws.session import SessionFactory
from fleetwarden.aws.targets import Scope, narrowed
from fleetwarden.config import Config
from fleetwarden.config.models import SpendConfig
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import RunReport, utcnow
from fleetwarden.state import open_store
from fleetwarden.workflows.base import RunContext
from fleetwarden.workflows.guard import GuardOptions, run_guard
from fleetwarden.workflows.guard.heartbeat import KEY, KIND, maybe_heartbeat

A, B, _ = ACCOUNTS
REGIONS = ["us-east-1", "eu-west-1"]
TAGS = {"created_by": "alice", "department": "eng", "project": "web"}


@pytest.fixture
def inbox(factory: SessionFactory) -> Inbox:
    return sns_inbox(factory, "guard")


received = drain


def config(aws: EmulatorServer, tmp_path: Any, topic: str, state: str | None = None, **heartbeat: Any) -> Config:
    return Config.model_validate(
        {
            "aws": {"endpoint_url": aws.url, "max_attempts": 2, "max_concurrency": 8},
            "accounts": [{"id": a, "role_arn": role(a)} for a in (A, B)],
            "regions": REGIONS,
            "state": state or f"sqlite:///{tmp_path / 'state.db'}",
            "sinks": {"ops": {"type": "sns", "topic_arn": topic}},
            "guard": {
                "max_running_instances": 4,
                "lockout": {"mode": "off"},
                "notify": ["ops"],
                "heartbeat": {"enabled": True, "every_hours": 24, **heartbeat},
            },
        }
    )


def guard_run(cfg: Config) -> tuple[RunContext, RunReport]:
    """An applied guard run that leaves the heartbeat to the test: run_guard's own call sees it switched off, then
    the context gets the config with the heartbeat on."""
    off = cfg.guard.heartbeat.model_copy(update={"enabled": False})
    ctx = RunContext.create(cfg.model_copy(update={"guard": cfg.guard.model_copy(update={"heartbeat": off})}))
    report = run_guard(ctx, GuardOptions(apply=True))
    ctx.config = cfg
    return ctx, report


def heartbeat(cfg: Config, at: timedelta = timedelta(0)) -> bool:
    """One applied guard run, then the heartbeat as run_guard calls it, `at` after now."""
    ctx, report = guard_run(cfg)
    try:
        return maybe_heartbeat(ctx, report, utcnow() + at)
    finally:
        ctx.store.close()


def test_a_quiet_run_sends_one_heartbeat_per_period(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 2)
    launch(factory, A, "eu-west-1", TAGS, 1)
    launch(factory, B, "us-east-1", TAGS, 1)
    cfg = config(aws, tmp_path, inbox[0])

    assert heartbeat(cfg) is True
    [message] = received(inbox)
    assert "no account over its limits" in message
    assert "Checked: 2 account(s), 2 region(s) (eu-west-1, us-east-1)" in message
    assert "Running+pending instances: 4 in all" in message
    assert f"  {A}: 3 of 4" in message and f"  {B}: 1 of 4" in message
    assert "Targets failed: none" in message and "Last trip: none on record" in message

    assert heartbeat(cfg, timedelta(hours=23)) is False  # within the period: nothing
    assert received(inbox) == []
    assert heartbeat(cfg, timedelta(hours=24, minutes=1)) is True  # the next period: one again
    assert len(received(inbox)) == 1


def test_the_heartbeat_says_which_price_table_burn_rate_used(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    cfg = config(aws, tmp_path, inbox[0])
    cfg = cfg.model_copy(
        update={"guard": cfg.guard.model_copy(update={"spend": SpendConfig(max_usd=1000, sources=["burn-rate"])})}
    )
    assert heartbeat(cfg) is True
    [message] = received(inbox)
    assert "Prices (burn-rate): shipped table (compiled 2024-06-15" in message


def test_run_guard_sends_it_itself_once_per_period(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    cfg = config(aws, tmp_path, inbox[0])
    for _ in range(2):
        ctx = RunContext.create(cfg)
        try:
            report = run_guard(ctx, GuardOptions(apply=True))
        finally:
            ctx.store.close()
        assert report.summary.get("tripped") in (None, [], {})
    [beat] = received(inbox)  # the first run's; the second is within the period
    assert "no account over its limits" in beat


def test_a_tripped_run_sends_its_trip_notice_and_no_heartbeat(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 5)
    cfg = config(aws, tmp_path, inbox[0])
    assert heartbeat(cfg) is False
    [message] = received(inbox)
    assert f"Account {A}: TRIPPED" in message and "no account over its limits" not in message


def test_a_partial_run_says_which_targets_were_not_checked(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    aws.client.set_faults([{"region": "eu-west-1", "service": "ec2", "mode": "unavailable"}])
    cfg = config(aws, tmp_path, inbox[0])
    assert heartbeat(cfg) is True
    aws.client.set_faults([])
    messages = received(inbox)
    # The guard's own failure notice, and the heartbeat, which says what it could not check.
    [beat] = [m for m in messages if "no account over its limits" in m]
    assert "NOT CHECKED: 2 target(s) failed" in beat
    assert f"{A}/eu-west-1" in beat and f"{B}/eu-west-1" in beat


def test_the_last_trip_is_reported_once_released(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    from fleetwarden.workflows.guard import ReleaseOptions, release_guard

    ids = launch(factory, A, "us-east-1", TAGS, 5)
    cfg = config(aws, tmp_path, inbox[0])
    assert heartbeat(cfg) is False  # trips A
    factory.client("ec2", region="us-east-1", account_id=A).terminate_instances(InstanceIds=ids)
    ctx = RunContext.create(cfg)
    release_guard(ctx, ReleaseOptions(account_id=A, apply=True))
    ctx.store.close()
    received(inbox)
    assert heartbeat(cfg) is True
    [beat] = [m for m in received(inbox) if "no account over its limits" in m]
    assert f"(account {A})" in beat and "Last trip: none" not in beat


class Interleaved:
    """A state store through which another guard run completes its heartbeat between this run's read of the
    heartbeat record and its conditional write: two runs at the same time, made deterministic."""

    def __init__(self, store: Any, other: Callable[[], bool]) -> None:
        self._store = store
        self._other: Callable[[], bool] | None = other
        self.other_sent: bool | None = None

    def get_record(self, kind: str, key: str) -> Any:
        got = self._store.get_record(kind, key)
        if kind == KIND and self._other is not None:
            other, self._other = self._other, None
            self.other_sent = other()
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_two_concurrent_runs_send_one_heartbeat(
    backend: str, aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    state = "dynamodb://fleetwarden-state?region=us-east-1" if backend == "dynamodb" else None
    cfg = config(aws, tmp_path, inbox[0], state)
    if state is not None:
        store = open_store(state, factory, create=True)
        store.init()  # `fleetwarden state init`
        store.close()
    first, first_report = guard_run(cfg)
    second, second_report = guard_run(cfg)
    now = utcnow()
    interleaved = Interleaved(first.store, lambda: maybe_heartbeat(second, second_report, now))
    first.store = interleaved  # type: ignore[assignment]
    try:
        first_sent = maybe_heartbeat(first, first_report, now)
    finally:
        interleaved._store.close()
        second.store.close()
    assert interleaved.other_sent is True and first_sent is False
    assert len([m for m in received(inbox) if "no account over its limits" in m]) == 1


def test_a_heartbeat_nobody_received_is_tried_again_by_the_next_run(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    missing = inbox[0].rsplit(":", 1)[0] + ":no-such-topic"
    broken = config(aws, tmp_path, missing)
    ctx, report = guard_run(broken)
    assert maybe_heartbeat(ctx, report, utcnow()) is False
    assert [d.outcome for d in report.deliveries if d.sink == "ops"][-1] == "failed"  # reported: the run is partial
    stored = ctx.store.get_record(KIND, KEY)
    ctx.store.close()
    assert stored is not None and stored[0].get("sent_at") is None
    assert heartbeat(config(aws, tmp_path, inbox[0])) is True
    assert len(received(inbox)) == 1


def test_no_heartbeat_from_a_dry_run_or_when_disabled(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    cfg = config(aws, tmp_path, inbox[0])
    ctx = RunContext.create(cfg)
    assert maybe_heartbeat(ctx, run_guard(ctx, GuardOptions(apply=False)), utcnow()) is False
    ctx.store.close()
    assert heartbeat(config(aws, tmp_path, inbox[0], enabled=False)) is False
    assert received(inbox) == []


def test_its_own_sinks_and_their_validation(aws: EmulatorServer, tmp_path: Any, inbox: tuple[str, Any, str]) -> None:
    cfg = config(aws, tmp_path, inbox[0], sinks=["ops"])
    assert cfg.guard.heartbeat_sinks == ["ops"]
    for bad in ({"sinks": ["nope"]}, {"sinks": []}, {"every_hours": 0}, {"evry_hours": 24}):
        with pytest.raises(ValueError, match="heartbeat"):
            config(aws, tmp_path, inbox[0], **bad)


def test_each_shard_of_an_org_run_keeps_its_own_period(
    aws: EmulatorServer, factory: SessionFactory, inbox: tuple[str, Any, str], tmp_path: Any
) -> None:
    launch(factory, A, "us-east-1", TAGS, 1)
    launch(factory, B, "us-east-1", TAGS, 2)
    cfg = config(aws, tmp_path, inbox[0])
    for account_id in (A, B):
        with narrowed(Scope(accounts=frozenset({account_id}))):
            assert heartbeat(cfg) is True
            assert heartbeat(cfg, timedelta(hours=1)) is False
    beats = received(inbox)
    assert len(beats) == 2 and all("one shard of an org-run (shard of 1 accounts)" in b for b in beats)
    assert "Checked: 1 account(s)" in beats[0] and f"  {A}: 1 of 4" in beats[0] and f"  {B}: 2 of 4" in beats[1]


def test_an_org_run_sends_one_heartbeat_from_aggregate_and_none_from_its_shards(
    aws: EmulatorServer,
    factory: SessionFactory,
    inbox: tuple[str, Any, str],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the handler's events, as the org-run state machine sends them: list-shards, one shard per account,
    aggregate. The shards stay silent (each would otherwise claim a period of its own); aggregate sends the
    organization's one heartbeat, with every account's figures."""
    import json

    from fleetwarden.lambda_handler import handler

    launch(factory, A, "us-east-1", TAGS, 1)
    launch(factory, B, "us-east-1", TAGS, 2)
    factory.client("s3", region="us-east-1").create_bucket(Bucket="heartbeat-runs")
    cfg = config(aws, tmp_path, inbox[0])
    path = tmp_path / "fleetwarden.json"  # JSON is YAML
    path.write_text(json.dumps(cfg.model_dump(mode="json", exclude_unset=True)))
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    event = {"action": "guard", "apply": True}
    fragments = "s3://heartbeat-runs/runs"
    listing = handler({"action": "list-shards", "event": event, "size": 1, "fragments": fragments}, None)
    assert listing["status"] == "ok" and listing["count"] == 2, listing
    for item in listing["shards"]:
        assert handler(item, None)["status"] == "ok"
    assert received(inbox) == []  # no shard sent one
    result = handler({"action": "aggregate", "run_id": listing["run_id"], "fragments": fragments}, None)
    assert result["status"] == "ok", result
    [message] = received(inbox)
    assert "no account over its limits" in message and "one shard" not in message
    assert f"  {A}: 1 of 4" in message and f"  {B}: 2 of 4" in message


@pytest.fixture(autouse=True)
def _no_faults(aws: EmulatorServer) -> Iterator[None]:
    yield
    aws.client.set_faults([])
