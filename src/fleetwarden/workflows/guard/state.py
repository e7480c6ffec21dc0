"""The guard's trip state: a record per account in the state store that latches until `guard release`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...state import StateStore, VersionConflict

KIND = "guard"


@dataclass
class TripState:
    account_id: str
    tripped: bool
    since: str | None = None
    run_id: str | None = None
    scope: str = "account"  # "account" | "org"
    triggers: list[dict[str, Any]] = field(default_factory=list)
    lockout_done: bool = False
    released_at: str | None = None
    released_by: str | None = None
    # The run id of a `guard release --apply` that has started and not finished (it died, or is running):
    # guard runs leave such an account alone and say so, until a release completes.
    releasing: str | None = None
    # False from the latch until a trip message has gone out: a run killed before notifying leaves it to the next.
    notified: bool = True
    version: int | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "tripped": self.tripped,
            "since": self.since,
            "run_id": self.run_id,
            "scope": self.scope,
            "triggers": self.triggers,
            "lockout_done": self.lockout_done,
            "released_at": self.released_at,
            "released_by": self.released_by,
            "releasing": self.releasing,
            "notified": self.notified,
        }

    @classmethod
    def from_data(cls, account_id: str, data: dict[str, Any], version: int) -> TripState:
        return cls(
            account_id=account_id,
            tripped=bool(data.get("tripped")),
            since=data.get("since"),
            run_id=data.get("run_id"),
            scope=data.get("scope", "account"),
            triggers=list(data.get("triggers", [])),
            lockout_done=bool(data.get("lockout_done")),
            released_at=data.get("released_at"),
            released_by=data.get("released_by"),
            releasing=data.get("releasing"),
            notified=bool(data.get("notified", True)),
            version=version,
        )

    @property
    def since_dt(self) -> datetime | None:
        return datetime.fromisoformat(self.since) if self.since else None


def load_states(store: StateStore) -> dict[str, TripState]:
    return {key: TripState.from_data(key, data, version) for key, data, version in store.list_records(KIND)}


def save_state(store: StateStore, state: TripState) -> TripState:
    """Write the state if nobody changed it since it was read (raises VersionConflict otherwise)."""
    version = store.put_record(KIND, state.account_id, state.to_data(), expected_version=state.version)
    state.version = version
    return state


__all__ = ["KIND", "TripState", "VersionConflict", "load_states", "save_state"]
