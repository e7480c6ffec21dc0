"""The scan-window ledger in the state store: windows, the instances each one started, per-target locks.

Every instance is written to the ledger (with the state it had) BEFORE the window starts it, so a close in a
later process, after a crash, knows exactly what to return to stopped, and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...model import ActionOutcome, Target
from ...state import StateStore, VersionConflict

WINDOW = "window"
INSTANCE = "window-instance"
LOCK = "window-lock"


@dataclass
class WindowRecord:
    window_id: str
    status: str  # "opening" | "open" | "closed"
    opened_at: str
    run_id: str
    targets: list[list[str]] = field(default_factory=list)  # [[account, region], ...]
    closed_at: str | None = None
    closed_by: str | None = None
    version: int | None = None

    def data(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("version")
        return out


@dataclass
class LedgerEntry:
    """One instance the window started (or tried to): its prior state and what became of it."""

    window_id: str
    account_id: str
    region: str
    instance_id: str
    prior_state: str
    # planned: written before the start call; done | failed: its outcome; not-started: an interrupted open never
    # made the call (no journal entry), so the instance is not the window's to stop.
    start: str = "planned"
    start_error: str | None = None
    stop: str | None = None  # done | failed | skipped
    stop_reason: str | None = None
    final_state: str | None = None
    version: int | None = None

    @property
    def key(self) -> str:
        return f"{self.window_id}|{self.account_id}|{self.region}|{self.instance_id}"

    @property
    def target(self) -> Target:
        return Target(self.account_id, self.region)

    def data(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("version")
        return out


class Ledger:
    """Typed access to the window records of a state store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # windows
    def windows(self, *, status: str | None = None) -> list[WindowRecord]:
        out = []
        for _, data, version in self.store.list_records(WINDOW):
            record = WindowRecord(**data, version=version)
            if status is None or record.status == status:
                out.append(record)
        return sorted(out, key=lambda w: w.opened_at)

    def window(self, window_id: str) -> WindowRecord | None:
        found = self.store.get_record(WINDOW, window_id)
        return WindowRecord(**found[0], version=found[1]) if found else None

    def save_window(self, record: WindowRecord) -> None:
        record.version = self.store.put_record(WINDOW, record.window_id, record.data(), expected_version=record.version)

    # instances
    def entries(self, window_id: str) -> list[LedgerEntry]:
        prefix = f"{window_id}|"
        return sorted(
            (
                LedgerEntry(**data, version=version)
                for key, data, version in self.store.list_records(INSTANCE)
                if key.startswith(prefix)
            ),
            key=lambda e: (e.account_id, e.region, e.instance_id),
        )

    def save_entry(self, entry: LedgerEntry) -> None:
        entry.version = self.store.put_record(INSTANCE, entry.key, entry.data(), expected_version=entry.version)

    def start_attempts(self, window: WindowRecord) -> dict[str, ActionOutcome]:
        """What the journal says of the window's start calls, by instance id: `planned` means the run died around
        the call (it may have started the instance), `done`/`failed`/`skipped` its outcome. An instance absent
        here was never in a start call."""
        attempts: dict[str, ActionOutcome] = {}
        for entry in self.store.list_journal(run_id=window.run_id, workflow="window"):
            if entry.action == "start":
                attempts[entry.resource_id] = entry.outcome
        return attempts

    def started_instance_ids(self) -> set[str]:
        """Instances started by windows that are still open (the guard does not count them)."""
        open_ids = {w.window_id for w in self.windows(status="open")} | {
            w.window_id for w in self.windows(status="opening")
        }
        return {
            data["instance_id"]
            for _, data, _ in self.store.list_records(INSTANCE)
            if data["window_id"] in open_ids and data.get("start") == "done"
        }

    # locks: one open window per account-region
    def lock(self, target: Target, window_id: str) -> str | None:
        """Take the target's lock for this window; returns the id of the window holding it if taken."""
        key = f"{target.account_id}|{target.region}"
        try:
            self.store.put_record(LOCK, key, {"window_id": window_id}, expected_version=None)
            return None
        except VersionConflict:
            held = self.store.get_record(LOCK, key)
            holder = str(held[0].get("window_id")) if held else "?"
            return None if holder == window_id else holder

    def holder(self, target: Target) -> str | None:
        held = self.store.get_record(LOCK, f"{target.account_id}|{target.region}")
        return str(held[0].get("window_id")) if held else None

    def delete_window(self, window_id: str) -> None:
        self.store.delete_record(WINDOW, window_id)

    def unlock(self, target: Target, window_id: str) -> None:
        key = f"{target.account_id}|{target.region}"
        held = self.store.get_record(LOCK, key)
        if held and held[0].get("window_id") == window_id:
            self.store.delete_record(LOCK, key)
