"""The SQLite state store: the embedded default, one file, safe across threads and processes.

Each thread gets its own connection (sqlite3 connections must not be shared mid-transaction); the database runs
in WAL mode so readers never block the writer, and every write is one `BEGIN IMMEDIATE` transaction, which
takes SQLite's write lock up front: two writers serialize instead of failing half-way, and a lease or a
versioned record is decided by a single conditional statement inside it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import StateError
from ..model import ExceptionRule, Finding, FindingStatus, JournalEntry
from .base import StateStore, VersionConflict, valid_exceptions

SCHEMA_VERSION = 1
# A writer waits this long for another writer's lock before SQLite says "database is locked", and tries again
# up to BUSY_ATTEMPTS times (see _begin).
BUSY_TIMEOUT_SECONDS = 30.0
BUSY_ATTEMPTS = 3
# Opening a store that other processes are opening too: the schema step is retried (backing off up to 1 s).
SCHEMA_ATTEMPTS = 8

log = logging.getLogger(__name__)

# Whole models are kept as JSON (`data`), so they round-trip exactly; the other columns exist to filter and sort.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS findings (
    id TEXT PRIMARY KEY,
    check_name TEXT NOT NULL,
    account_id TEXT NOT NULL,
    region TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_target ON findings (check_name, account_id, region);
CREATE TABLE IF NOT EXISTS exceptions (
    id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    account_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_order ON journal (at, seq);
CREATE INDEX IF NOT EXISTS journal_run ON journal (run_id);
-- Every journal write reads MAX(seq) inside the write lock: without this index that is a scan of the whole
-- journal, and at 100 accounts x 17 regions the queued writers waited past the busy timeout (bench/guard.md).
CREATE INDEX IF NOT EXISTS journal_seq ON journal (seq);
CREATE TABLE IF NOT EXISTS leases (
    workflow TEXT NOT NULL,
    account_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (workflow, account_id)
);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""


def _time_key(moment: datetime) -> str:
    """A fixed-width UTC timestamp that sorts as text in time order (naive datetimes are taken as UTC)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SqliteStore(StateStore):
    """The state store in one SQLite file; the schema is created on first use (or by `init`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._ready = False

    # -- connections ----------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
        # timeout: how long a writer waits for another writer's lock before "database is locked".
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # In WAL mode NORMAL still survives a killed process (kill -9): a commit is in the WAL before COMMIT
        # returns; only a power loss or OS crash may lose the last commits. It takes the fsync out of every write.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            with self._lock:
                if not self._ready:
                    self._create_schema()
                conn = self._connect()
                self._connections.append(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the SQLite state store {self.path}: {exc}") from exc
        self._local.conn = conn
        return conn

    def _create_schema(self) -> None:
        """The schema (idempotent), retried while other processes hold the file: switching to WAL needs an
        exclusive lock, for which SQLite does not always wait (an immediate "database is locked" when several
        processes, e.g. an org-run's shards, open one store at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            conn = self._connect()
            try:
                # WAL is a property of the file: set once, every later connection uses it. Asking is lock-free.
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                break
            except sqlite3.OperationalError as exc:
                if attempt == SCHEMA_ATTEMPTS or ("locked" not in str(exc) and "busy" not in str(exc)):
                    raise
                log.info("SQLite state store %s: %s while creating the schema; trying again", self.path, exc)
                time.sleep(min(0.05 * 2**attempt, 1.0))
            finally:
                conn.close()
        self._ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its start."""
        conn = self._conn()
        try:
            self._begin(conn)
            try:
                yield conn
            except BaseException:
                # SQLite may have rolled back already (a failed statement under SQLITE_FULL, for one).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"SQLite state store {self.path}: {exc}") from exc

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock up to BUSY_ATTEMPTS busy timeouts: SQLite's busy handler is
        not fair, so under many concurrent writers one may be passed over for a whole timeout. A write the
        journal needs (a `planned` entry before a mutation) must not fail for that: a halt refuses to act
        unjournaled."""
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if attempt == BUSY_ATTEMPTS or ("locked" not in str(exc) and "busy" not in str(exc)):
                    raise
                log.warning("SQLite state store %s: %s; waiting again (%d/%d)", self.path, exc, attempt, BUSY_ATTEMPTS)

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"SQLite state store {self.path}: {exc}") from exc

    # -- lifecycle ------------------------------------------------------------------------------------
    def init(self) -> None:
        """Create the file (and its parent directory) and the tables if absent."""
        self._conn()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            # Threads that still hold the old thread-local reconnect on their next call.
            self._local = threading.local()

    # -- findings -------------------------------------------------------------------------------------
    def load_findings(self, check: str, account_id: str, region: str) -> dict[str, Finding]:
        rows = self._select(
            "SELECT data FROM findings WHERE check_name = ? AND account_id = ? AND region = ? AND status != ?",
            (check, account_id, region, FindingStatus.RESOLVED.value),
        )
        findings = (Finding.model_validate_json(row["data"]) for row in rows)
        return {finding.id: finding for finding in findings}

    def save_findings(self, findings: Iterable[Finding]) -> None:
        rows = [(f.id, f.check, f.account_id, f.region, f.status.value, f.model_dump_json()) for f in findings]
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO findings (id, check_name, account_id, region, status, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def list_findings(
        self,
        check: str | None = None,
        statuses: Iterable[FindingStatus] | None = None,
        account_id: str | None = None,
    ) -> list[Finding]:
        clauses: list[str] = []
        params: list[str] = []
        if check is not None:
            clauses.append("check_name = ?")
            params.append(check)
        if account_id is not None:
            clauses.append("account_id = ?")
            params.append(account_id)
        if statuses is not None:
            wanted = sorted({FindingStatus(s).value for s in statuses})
            if not wanted:
                return []
            clauses.append(f"status IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._select(f"SELECT data FROM findings{where} ORDER BY check_name, account_id, region, id", params)
        return [Finding.model_validate_json(row["data"]) for row in rows]

    # -- exceptions -----------------------------------------------------------------------------------
    def add_exception(self, rule: ExceptionRule) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO exceptions (id, data) VALUES (?, ?)", (rule.id, rule.model_dump_json())
            )

    def _stored_exceptions(self) -> list[ExceptionRule]:
        rows = self._select("SELECT data FROM exceptions ORDER BY id")
        return sorted(valid_exceptions(row["data"] for row in rows), key=_exception_order)

    def _remove_stored_exception(self, exception_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM exceptions WHERE id = ?", (exception_id,)).rowcount > 0

    # -- journal --------------------------------------------------------------------------------------
    def journal(self, entry: JournalEntry) -> None:
        self.journal_many([entry])

    def journal_many(self, entries: Sequence[JournalEntry]) -> None:
        if not entries:
            return
        with self._write() as conn:  # one transaction (one sync) for the whole batch
            for entry in entries:
                # seq breaks ties between entries of the same instant: the later write sorts later.
                conn.execute(
                    "INSERT INTO journal (id, at, seq, run_id, workflow, account_id, data)"
                    " VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal), ?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET at = excluded.at, seq = excluded.seq, run_id = excluded.run_id,"
                    " workflow = excluded.workflow, account_id = excluded.account_id, data = excluded.data",
                    (
                        entry.id,
                        _time_key(entry.at),
                        entry.run_id,
                        entry.workflow,
                        entry.account_id,
                        entry.model_dump_json(),
                    ),
                )

    def list_journal(
        self,
        *,
        run_id: str | None = None,
        account_id: str | None = None,
        workflow: str | None = None,
    ) -> list[JournalEntry]:
        clauses: list[str] = []
        params: list[str] = []
        for column, value in (("run_id", run_id), ("account_id", account_id), ("workflow", workflow)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._select(f"SELECT data FROM journal{where} ORDER BY at, seq", params)
        return [JournalEntry.model_validate_json(row["data"]) for row in rows]

    # -- leases ---------------------------------------------------------------------------------------
    def acquire_lease(self, workflow: str, account_id: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        expires = _time_key(now + timedelta(seconds=ttl_seconds))
        with self._write() as conn:
            # One statement decides: insert if free, take over if expired or ours, else change nothing.
            cursor = conn.execute(
                "INSERT INTO leases (workflow, account_id, owner, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (workflow, account_id) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at WHERE leases.expires_at <= ? OR leases.owner = excluded.owner",
                (workflow, account_id, owner, expires, _time_key(now)),
            )
            return cursor.rowcount == 1

    def release_lease(self, workflow: str, account_id: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM leases WHERE workflow = ? AND account_id = ? AND owner = ?", (workflow, account_id, owner)
            )

    def get_lease(self, workflow: str, account_id: str) -> tuple[str, datetime] | None:
        rows = self._select(
            "SELECT owner, expires_at FROM leases WHERE workflow = ? AND account_id = ?", (workflow, account_id)
        )
        if not rows:
            return None
        return str(rows[0]["owner"]), _parse_time_key(str(rows[0]["expires_at"]))

    def break_lease(self, workflow: str, account_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE workflow = ? AND account_id = ?", (workflow, account_id))

    # -- records --------------------------------------------------------------------------------------
    def get_record(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        rows = self._select("SELECT data, version FROM records WHERE kind = ? AND key = ?", (kind, key))
        if not rows:
            return None
        return _load_data(rows[0]["data"]), int(rows[0]["version"])

    def put_record(self, kind: str, key: str, data: dict[str, Any], *, expected_version: int | None) -> int:
        payload = _dump_data(data)
        with self._write() as conn:
            if expected_version is None:
                cursor = conn.execute(
                    "INSERT INTO records (kind, key, version, data) VALUES (?, ?, 1, ?) ON CONFLICT DO NOTHING",
                    (kind, key, payload),
                )
                new_version = 1
            else:
                cursor = conn.execute(
                    "UPDATE records SET data = ?, version = version + 1 WHERE kind = ? AND key = ? AND version = ?",
                    (payload, kind, key, expected_version),
                )
                new_version = expected_version + 1
            if cursor.rowcount != 1:
                raise VersionConflict(_conflict_message(kind, key, expected_version))
        return new_version

    def list_records(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        rows = self._select("SELECT key, data, version FROM records WHERE kind = ? ORDER BY key", (kind,))
        return [(row["key"], _load_data(row["data"]), int(row["version"])) for row in rows]

    def delete_record(self, kind: str, key: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))


def _exception_order(rule: ExceptionRule) -> tuple[str, str]:
    return _time_key(rule.created_at), rule.id


def _dump_data(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _load_data(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StateError(f"corrupt record in the state store: expected a JSON object, got {type(value).__name__}")
    return value


def _conflict_message(kind: str, key: str, expected_version: int | None) -> str:
    if expected_version is None:
        return f"record {kind}/{key} already exists"
    return f"record {kind}/{key} is no longer at version {expected_version}"


def _parse_time_key(text: str) -> datetime:
    """The inverse of `_time_key`: an aware UTC datetime."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
