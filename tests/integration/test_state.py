"""The state store contract, one suite over both backends (SQLite file; DynamoDB on the embedded moto server)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetwarden.aws.session import SessionFactory
from fleetwarden.errors import StateError
from fleetwarden.model import ActionOutcome, ExceptionKind, ExceptionRule, Finding, FindingStatus, JournalEntry
from fleetwarden.state import StateStore, VersionConflict, open_store
from fleetwarden.state.dynamodb import INIT_PERMISSIONS, PERMISSIONS, DynamoDbStore
from fleetwarden.state.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TABLE = "fleetwarden-state"


def _make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "nested" / "dir" / "state.db")
    factory: SessionFactory = request.getfixturevalue("factory")
    return DynamoDbStore(TABLE, "us-east-1", factory)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    backend = _make_store(request.param, request, tmp_path)
    backend.init()
    yield backend
    backend.close()


@pytest.fixture
def reopen(request: pytest.FixtureRequest, tmp_path: Path, store: StateStore) -> Callable[[], StateStore]:
    """A second, independent store on the same data (another process, in effect)."""
    kind = "sqlite" if isinstance(store, SqliteStore) else "dynamodb"
    return lambda: _make_store(kind, request, tmp_path)


def finding(
    resource: str,
    *,
    check: str = "tags",
    account: str = "111111111111",
    region: str = "us-east-1",
    status: FindingStatus = FindingStatus.NEW,
    now: datetime = T0,
) -> Finding:
    made = Finding.create(
        check=check,
        account_id=account,
        region=region,
        resource_id=resource,
        control="required-tags",
        title=f"{resource} lacks required tags",
        now=now,
        details={"missing": ["project", "department"], "invalid": {"created_by": "nobody"}, "count": 2, "ratio": 0.5},
    )
    return made.model_copy(update={"status": status})


def entry(entry_id: str, at: datetime, **fields: str) -> JournalEntry:
    values = {"run_id": "run-1", "workflow": "audit", "account_id": "111111111111"} | fields
    return JournalEntry(
        id=entry_id,
        run_id=values["run_id"],
        workflow=values["workflow"],
        account_id=values["account_id"],
        region="us-east-1",
        resource_id="i-0123",
        action="stop",
        outcome=ActionOutcome.PLANNED,
        at=at,
        before={"state": "running"},
    )


# -- findings ---------------------------------------------------------------------------------------------
def test_findings_round_trip_exactly(store: StateStore) -> None:
    saved = [finding(f"i-{n:04d}") for n in range(60)]  # more than one 25-item batch
    store.save_findings(saved)
    loaded = store.load_findings("tags", "111111111111", "us-east-1")
    assert loaded == {f.id: f for f in saved}
    one = loaded[saved[0].id]
    assert one.first_seen == T0 and one.first_seen.utcoffset() == timedelta(0)
    assert one.details == {
        "missing": ["project", "department"],
        "invalid": {"created_by": "nobody"},
        "count": 2,
        "ratio": 0.5,
    }


def test_load_findings_returns_only_open_findings_of_that_target(store: StateStore) -> None:
    wanted = [finding("i-new"), finding("i-ongoing", status=FindingStatus.ONGOING)]
    wanted.append(finding("i-snoozed", status=FindingStatus.SUPPRESSED))
    others = [
        finding("i-resolved", status=FindingStatus.RESOLVED),
        finding("i-other-check", check="exposure"),
        finding("i-other-account", account="222222222222"),
        finding("i-other-region", region="eu-west-1"),
    ]
    store.save_findings(wanted + others)
    loaded = store.load_findings("tags", "111111111111", "us-east-1")
    assert sorted(f.resource_id for f in loaded.values()) == ["i-new", "i-ongoing", "i-snoozed"]
    assert store.load_findings("tags", "333333333333", "us-east-1") == {}


def test_save_replaces_by_id_and_keeps_first_seen(store: StateStore) -> None:
    first = finding("i-1")
    store.save_findings([first])
    later = T0 + timedelta(hours=6)
    again = first.model_copy(update={"status": FindingStatus.ONGOING, "last_seen": later, "details": {"missing": []}})
    store.save_findings([again])
    stored = store.list_findings()
    assert len(stored) == 1
    assert stored[0].first_seen == T0
    assert (stored[0].status, stored[0].last_seen, stored[0].details) == (FindingStatus.ONGOING, later, {"missing": []})
    # Resolved: no longer loaded for reconciliation, still listed.
    store.save_findings([again.model_copy(update={"status": FindingStatus.RESOLVED})])
    assert store.load_findings("tags", "111111111111", "us-east-1") == {}
    assert [f.status for f in store.list_findings()] == [FindingStatus.RESOLVED]


def test_list_findings_filters(store: StateStore) -> None:
    store.save_findings(
        [
            finding("a", status=FindingStatus.NEW),
            finding("b", status=FindingStatus.RESOLVED),
            finding("c", account="222222222222", status=FindingStatus.ONGOING),
            finding("d", check="exposure", status=FindingStatus.NEW),
            finding("e", check="exposure", account="222222222222", region="eu-west-1"),
        ]
    )

    def resources(
        check: str | None = None, statuses: list[FindingStatus] | None = None, account_id: str | None = None
    ) -> list[str]:
        return sorted(f.resource_id for f in store.list_findings(check, statuses, account_id))

    assert resources() == ["a", "b", "c", "d", "e"]
    assert resources(check="tags") == ["a", "b", "c"]
    assert resources(account_id="222222222222") == ["c", "e"]
    assert resources(check="exposure", account_id="222222222222") == ["e"]
    assert resources(statuses=[FindingStatus.NEW, FindingStatus.ONGOING]) == ["a", "c", "d", "e"]
    assert resources(check="tags", statuses=[FindingStatus.RESOLVED]) == ["b"]
    assert resources(statuses=[]) == []
    assert resources(check="inspector") == []


# -- exceptions -------------------------------------------------------------------------------------------
def rule(rule_id: str, created: datetime, **scope: str) -> ExceptionRule:
    return ExceptionRule(
        id=rule_id,
        kind=ExceptionKind.DO_NOT_STOP,
        reason="batch job",
        owner="alice",
        created_at=created,
        expires_at=created + timedelta(days=7),
        **scope,
    )


def test_exceptions_add_list_remove(store: StateStore) -> None:
    assert store.list_exceptions() == []
    first = rule("ex-b", T0, account_id="111111111111", resource_id="i-1")
    second = rule("ex-a", T0 + timedelta(minutes=1), region="eu-west-1")
    expired = rule("ex-c", T0 - timedelta(days=30))
    for item in (first, second, expired):
        store.add_exception(item)
    # Oldest first, expired ones included, every field as given.
    assert store.list_exceptions() == [expired, first, second]
    store.add_exception(first.model_copy(update={"reason": "still running"}))
    assert [r.reason for r in store.list_exceptions() if r.id == "ex-b"] == ["still running"]
    assert store.remove_exception("ex-b") is True
    assert store.remove_exception("ex-b") is False
    assert store.remove_exception("no-such-id") is False
    assert [r.id for r in store.list_exceptions()] == ["ex-c", "ex-a"]


# -- journal ----------------------------------------------------------------------------------------------
def test_journal_order_filters_and_replacement(store: StateStore) -> None:
    store.journal(entry("e3", T0 + timedelta(seconds=3)))
    store.journal(entry("e1", T0 + timedelta(seconds=1), account_id="222222222222"))
    store.journal(entry("e2", T0 + timedelta(seconds=2), run_id="run-2", workflow="guard"))
    store.journal(entry("e0", T0))
    assert [e.id for e in store.list_journal()] == ["e0", "e1", "e2", "e3"]
    assert [e.id for e in store.list_journal(run_id="run-1")] == ["e0", "e1", "e3"]
    assert [e.id for e in store.list_journal(account_id="222222222222")] == ["e1"]
    assert [e.id for e in store.list_journal(workflow="guard", run_id="run-2")] == ["e2"]
    assert store.list_journal(workflow="guard", run_id="run-1") == []
    # The outcome of a mutation replaces its planned record (same id), and moves to when it happened.
    done = entry("e0", T0 + timedelta(seconds=4)).model_copy(update={"outcome": ActionOutcome.DONE, "after": {"s": 1}})
    store.journal(done)
    entries = store.list_journal()
    assert [e.id for e in entries] == ["e1", "e2", "e3", "e0"]
    assert entries[-1] == done


def test_journal_same_instant_keeps_write_order(store: StateStore) -> None:
    for entry_id in ("z", "m", "a"):
        store.journal(entry(entry_id, T0))
    assert [e.id for e in store.list_journal()] == ["z", "m", "a"]


def test_journal_many_stores_a_batch_and_replaces_by_id(store: StateStore) -> None:
    planned = [entry(f"b{n:02d}", T0 + timedelta(seconds=n)) for n in range(30)]  # over one DynamoDB batch of 25
    store.journal_many(planned)
    assert [e.id for e in store.list_journal()] == [e.id for e in planned]
    finals = [e.model_copy(update={"outcome": ActionOutcome.DONE, "at": T0 + timedelta(minutes=1)}) for e in planned]
    store.journal_many(finals)
    stored = store.list_journal()
    assert len(stored) == 30 and {e.outcome for e in stored} == {ActionOutcome.DONE}
    store.journal_many([])  # nothing to write is fine


# -- leases -----------------------------------------------------------------------------------------------
def test_leases(store: StateStore) -> None:
    acct = "111111111111"
    assert store.acquire_lease("audit", acct, "run-a", T0, 60) is True
    assert store.acquire_lease("audit", acct, "run-b", T0 + timedelta(seconds=30), 60) is False
    # Another workflow or another account is a different lease.
    assert store.acquire_lease("guard", acct, "run-b", T0, 60) is True
    assert store.acquire_lease("audit", "222222222222", "run-b", T0, 60) is True
    # The holder renews: the expiry moves on, so run-b is still refused after the first expiry.
    assert store.acquire_lease("audit", acct, "run-a", T0 + timedelta(seconds=50), 60) is True
    assert store.acquire_lease("audit", acct, "run-b", T0 + timedelta(seconds=70), 60) is False
    # Expired: taken over, and the old holder is now refused.
    assert store.acquire_lease("audit", acct, "run-b", T0 + timedelta(seconds=111), 60) is True
    assert store.acquire_lease("audit", acct, "run-a", T0 + timedelta(seconds=112), 60) is False
    # Only the holder releases.
    store.release_lease("audit", acct, "run-a")
    assert store.acquire_lease("audit", acct, "run-c", T0 + timedelta(seconds=113), 60) is False
    store.release_lease("audit", acct, "run-b")
    assert store.acquire_lease("audit", acct, "run-c", T0 + timedelta(seconds=114), 60) is True
    store.release_lease("audit", "999999999999", "nobody")  # nothing held: no error


def test_get_and_break_lease(store: StateStore, reopen: Callable[[], StateStore]) -> None:
    acct = "111111111111"
    assert store.get_lease("guard", acct) is None
    assert store.acquire_lease("guard", acct, "run-a", T0, 120)
    assert store.get_lease("guard", acct) == ("run-a", T0 + timedelta(seconds=120))
    # Breaking removes it whoever holds it (seen from another store too); then another run takes it at once.
    reopen().break_lease("guard", acct)
    assert store.get_lease("guard", acct) is None
    assert store.acquire_lease("guard", acct, "run-b", T0 + timedelta(seconds=1), 120)
    assert store.get_lease("guard", acct) == ("run-b", T0 + timedelta(seconds=121))
    store.break_lease("guard", "999999999999")  # nothing held: no error


def test_an_invalid_stored_exception_is_ignored_not_fatal(store: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    good = ExceptionRule(
        id="good",
        kind=ExceptionKind.DO_NOT_STOP,
        account_id="111111111111",
        reason="db",
        owner="me",
        created_at=T0,
        organization_wide=False,
    )
    store.add_exception(good)
    # A row edited by hand into something the model refuses (a new-style rule with no scope at all).
    bad = good.model_copy(update={"id": "bad", "account_id": None})
    if isinstance(store, SqliteStore):
        with store._write() as conn:
            conn.execute("INSERT INTO exceptions (id, data) VALUES (?, ?)", ("bad", bad.model_dump_json()))
    else:
        store._call(
            "put_item",
            Item={"pk": {"S": "exception"}, "sk": {"S": "bad"}, "data": {"S": bad.model_dump_json()}},
        )
    with caplog.at_level("WARNING", logger="fleetwarden"):
        assert [r.id for r in store.list_exceptions()] == ["good"]
    assert "exception bad in the state store is invalid and is ignored" in caplog.text


def test_lease_is_visible_to_another_store(store: StateStore, reopen: Callable[[], StateStore]) -> None:
    assert store.acquire_lease("window", "111111111111", "run-a", T0, 3600)
    other = reopen()
    try:
        assert other.acquire_lease("window", "111111111111", "run-b", T0, 3600) is False
    finally:
        other.close()


def test_concurrent_lease_acquisition_has_one_winner(store: StateStore) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    results: dict[str, bool] = {}

    def contend(owner: str) -> None:
        barrier.wait()
        results[owner] = store.acquire_lease("guard", "111111111111", owner, T0, 300)

    workers = [threading.Thread(target=contend, args=(f"run-{n}",)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=20)
    assert len(results) == threads
    winners = [owner for owner, won in results.items() if won]
    assert len(winners) == 1
    # The lease really is the winner's: it renews, and everyone else is still refused.
    assert store.acquire_lease("guard", "111111111111", winners[0], T0, 300) is True
    assert store.acquire_lease("guard", "111111111111", "run-late", T0, 300) is False


# -- records ----------------------------------------------------------------------------------------------
def test_records_versioned_writes(store: StateStore) -> None:
    assert store.get_record("ledger", "w-1") is None
    data = {"instances": {"i-1": {"state": "stopped"}}, "opened": "2026-03-01T12:00:00Z", "n": 1.5, "ok": True}
    assert store.put_record("ledger", "w-1", data, expected_version=None) == 1
    assert store.get_record("ledger", "w-1") == (data, 1)
    with pytest.raises(VersionConflict):
        store.put_record("ledger", "w-1", {"other": 1}, expected_version=None)
    assert store.put_record("ledger", "w-1", {**data, "n": 2}, expected_version=1) == 2
    with pytest.raises(VersionConflict):
        store.put_record("ledger", "w-1", {"stale": True}, expected_version=1)
    with pytest.raises(VersionConflict):
        store.put_record("ledger", "absent", {"x": 1}, expected_version=1)
    assert store.get_record("ledger", "w-1") == ({**data, "n": 2}, 2)
    assert store.get_record("ledger", "absent") is None


def test_records_list_and_delete(store: StateStore) -> None:
    store.put_record("guard", "222222222222", {"tripped": True}, expected_version=None)
    store.put_record("guard", "111111111111", {"tripped": False}, expected_version=None)
    store.put_record("outbox", "111111111111", {"msg": "hi"}, expected_version=None)
    assert store.list_records("guard") == [
        ("111111111111", {"tripped": False}, 1),
        ("222222222222", {"tripped": True}, 1),
    ]
    store.delete_record("guard", "111111111111")
    store.delete_record("guard", "never-existed")
    assert [key for key, _, _ in store.list_records("guard")] == ["222222222222"]
    assert store.get_record("guard", "111111111111") is None
    assert store.list_records("outbox") == [("111111111111", {"msg": "hi"}, 1)]
    assert store.list_records("nothing") == []
    # A deleted record can be created afresh.
    assert store.put_record("guard", "111111111111", {"tripped": True}, expected_version=None) == 1


def test_concurrent_record_updates_have_one_winner(store: StateStore) -> None:
    store.put_record("ledger", "w", {"v": 0}, expected_version=None)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def update(n: int) -> None:
        barrier.wait()
        try:
            store.put_record("ledger", "w", {"v": n}, expected_version=1)
            outcome = f"won:{n}"
        except VersionConflict:
            outcome = "lost"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=update, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=20)
    won = [o for o in outcomes if o.startswith("won")]
    assert (len(outcomes), len(won)) == (8, 1)
    assert store.get_record("ledger", "w") == ({"v": int(won[0].split(":")[1])}, 2)


def test_data_survives_reopening(store: StateStore, reopen: Callable[[], StateStore]) -> None:
    store.save_findings([finding("i-1")])
    store.add_exception(rule("ex-1", T0))
    store.close()
    other = reopen()
    try:
        assert [f.resource_id for f in other.list_findings()] == ["i-1"]
        assert [r.id for r in other.list_exceptions()] == ["ex-1"]
    finally:
        other.close()


# -- open_store -------------------------------------------------------------------------------------------
def test_open_store_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///state/fw.db")
    assert isinstance(relative, SqliteStore) and relative.path == Path("state/fw.db")
    relative.put_record("k", "x", {"a": 1}, expected_version=None)
    relative.close()
    assert (tmp_path / "state" / "fw.db").is_file()

    absolute = open_store(f"sqlite:///{tmp_path}/abs/fw.db")  # sqlite:////abs/... (four slashes)
    assert isinstance(absolute, SqliteStore) and absolute.path == tmp_path / "abs" / "fw.db"
    absolute.init()
    absolute.close()
    assert (tmp_path / "abs" / "fw.db").is_file()


def test_open_store_dynamodb_urls(factory: SessionFactory) -> None:
    DynamoDbStore("fw-state", "eu-west-1", factory).init()
    DynamoDbStore("fw-state", "us-east-1", factory).init()
    store = open_store("dynamodb://fw-state?region=eu-west-1", factory)
    assert isinstance(store, DynamoDbStore) and (store.table, store.region) == ("fw-state", "eu-west-1")
    default = open_store("dynamodb://fw-state", factory)
    assert isinstance(default, DynamoDbStore) and default.region == "us-east-1"
    # Each URL reaches its own table: what one writes, the other does not see.
    store.add_exception(rule("ex-1", T0))
    assert [r.id for r in store.list_exceptions()] == ["ex-1"]
    assert default.list_exceptions() == []


@pytest.mark.parametrize(
    "url",
    [
        "postgres://localhost/db",
        "state.db",
        "sqlite://state.db",
        "sqlite:///",
        "sqlite:///dir/",
        "dynamodb://",
        "dynamodb:table",
        "dynamodb://ab",
        "dynamodb://bad*name",
        "dynamodb://table/extra",
        "dynamodb://table?region=",
        "dynamodb://table?region=moon",
        "dynamodb://table?region=us-east-1&region=eu-west-1",
        "dynamodb://table?regoin=us-east-1",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(StateError, match="state"):
        open_store(url)


def test_missing_dynamodb_table(factory: SessionFactory) -> None:
    with pytest.raises(StateError, match="fleetwarden state init"):
        open_store("dynamodb://not-created?region=us-east-1", factory)
    # `state init` opens with create=True, then creates the table; later operations on a vanished table say the same.
    store = open_store("dynamodb://not-created?region=us-east-1", factory, create=True)
    with pytest.raises(StateError, match="fleetwarden state init"):
        store.list_exceptions()
    store.init()
    store.init()  # idempotent
    assert store.list_exceptions() == []
    client = factory.client("dynamodb", region="us-east-1")
    table = client.describe_table(TableName="not-created")["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName="not-created")["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at_epoch")
    client.delete_table(TableName="not-created")
    with pytest.raises(StateError, match="fleetwarden state init"):
        store.acquire_lease("audit", "111111111111", "run", T0, 60)


def test_dynamodb_permissions_cover_every_call(factory: SessionFactory) -> None:
    store = DynamoDbStore(TABLE, "us-east-1", factory)
    store.init()
    init_calls = set(factory.counter.calls)
    store.check()
    store.save_findings([finding("i-1")])
    store.load_findings("tags", "111111111111", "us-east-1")
    store.list_findings(statuses=[FindingStatus.NEW])
    store.add_exception(rule("ex-1", T0))
    store.list_exceptions()
    store.remove_exception("ex-1")
    store.journal(entry("e1", T0))
    store.list_journal(run_id="run-1")
    store.acquire_lease("audit", "111111111111", "run", T0, 60)
    store.release_lease("audit", "111111111111", "run")
    store.put_record("k", "x", {}, expected_version=None)
    store.get_record("k", "x")
    store.list_records("k")
    store.delete_record("k", "x")
    run_calls = set(factory.counter.calls) - init_calls | {"dynamodb:DescribeTable"}
    assert run_calls == set(PERMISSIONS)
    assert init_calls <= set(PERMISSIONS) | set(INIT_PERMISSIONS)


def test_sqlite_journal_write_waits_out_a_writer_that_holds_the_lock_past_one_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `planned` entry must not be lost to "database is locked" because another writer held the lock for one busy
    timeout (SQLite's busy handler is not fair under many writers): the write waits again, up to BUSY_ATTEMPTS."""
    import sqlite3

    from fleetwarden.state import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.2)
    store = sqlite_store.SqliteStore(tmp_path / "busy.db")
    store.init()
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))  # longer than one timeout, shorter than 3
    release.start()
    try:
        store.journal(entry("held-1", datetime(2026, 11, 1, tzinfo=UTC)))
    finally:
        release.join()
        holder.close()
    assert [e.id for e in store.list_journal()] == ["held-1"]
    store.close()


def _open_and_write(args: tuple[str, int]) -> str | None:
    """In a process of its own: open the store, write a record; the error text, if any."""
    path, n = args
    store = SqliteStore(path)
    try:
        store.put_record("shard", str(n), {"n": n}, expected_version=None)
        return None
    except StateError as exc:
        return str(exc)
    finally:
        store.close()


def test_many_processes_opening_a_new_sqlite_store_at_once(tmp_path: Path) -> None:
    """An org-run's shards open one store at the same moment: switching a new file to WAL needs an exclusive lock,
    for which SQLite does not wait, so opening is retried (without the retry, 20 rounds of 8 failed 3 runs in 3)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        for round_ in range(20):
            path = str(tmp_path / f"round-{round_}" / "state.db")
            errors = [e for e in pool.map(_open_and_write, [(path, n) for n in range(8)]) if e]
            assert errors == []
            store = SqliteStore(path)
            try:
                assert len(store.list_records("shard")) == 8
            finally:
                store.close()
