"""The guard's trip state: a record per account in the state store that latches until `guard release`."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...checks.runaway import Trigger
from ...state import StateStore, VersionConflict

KIND = "guard"
# The organization-wide trip of an org-run (one record): latched by guard-org-check before any halt.
ORG_KIND = "guard-org"
ORG_KEY = "org"


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


@dataclass
class OrgTrip:
    """An organization-wide count trip, latched by an org-run's org check before any halt: every account in
    `accounts` (those not tripped yet when it latched) is to be latched with the `org-count` trigger and halted.
    Each guard run that sees an account of it not latched yet does so (the org-run's halt phase, or the next run
    after an org-run killed in between); once all are latched it is marked finished."""

    total: int
    limit: int
    run_id: str
    since: str
    accounts: list[str]
    lower_bound: bool = False  # a shard did not report: the total counts only the shards that did
    finished_at: str | None = None
    version: int | None = None

    def trigger(self) -> Trigger:
        return Trigger("org-count", self.total, self.limit)

    def to_data(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "limit": self.limit,
            "run_id": self.run_id,
            "since": self.since,
            "accounts": self.accounts,
            "lower_bound": self.lower_bound,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any], version: int) -> OrgTrip:
        return cls(
            total=int(data.get("total", 0)),
            limit=int(data.get("limit", 0)),
            run_id=str(data.get("run_id", "")),
            since=str(data.get("since", "")),
            accounts=[str(a) for a in data.get("accounts", [])],
            lower_bound=bool(data.get("lower_bound")),
            finished_at=data.get("finished_at"),
            version=version,
        )


def load_org_trip(store: StateStore) -> OrgTrip | None:
    found = store.get_record(ORG_KIND, ORG_KEY)
    return OrgTrip.from_data(found[0], found[1]) if found is not None else None


def save_org_trip(store: StateStore, trip: OrgTrip) -> OrgTrip:
    """Write the org trip if nobody changed it since it was read (raises VersionConflict otherwise)."""
    trip.version = store.put_record(ORG_KIND, ORG_KEY, trip.to_data(), expected_version=trip.version)
    return trip


def latch_org_trip(store: StateStore, trip: OrgTrip) -> OrgTrip:
    """Record a new org trip. The accounts an unfinished earlier one still had to latch stay on it (with the new
    figures): an org trip is never dropped before each of its accounts is latched."""
    previous = load_org_trip(store)
    if previous is not None:
        trip.accounts = sorted(set(trip.accounts) | org_pending(previous, load_states(store), previous.accounts))
    trip.version = previous.version if previous is not None else None
    return save_org_trip(store, trip)


def org_pending(trip: OrgTrip | None, states: dict[str, TripState], accounts: Iterable[str]) -> set[str]:
    """The accounts among `accounts` that an unfinished org trip still has to latch: not tripped, and not released
    since the org trip latched (a release after it is the operator's decision, never undone by it)."""
    if trip is None or trip.finished_at:
        return set()
    since = datetime.fromisoformat(trip.since) if trip.since else None
    due: set[str] = set()
    for account_id in set(accounts) & set(trip.accounts):
        state = states.get(account_id)
        if state is not None and state.tripped:
            continue
        released = state.released_at if state is not None else None
        if released and since is not None and datetime.fromisoformat(released) >= since:
            continue
        due.add(account_id)
    return due


def finish_org_trip(store: StateStore, now: datetime) -> None:
    """Mark the org trip finished once every account of it is latched (or released since)."""
    trip = load_org_trip(store)
    if trip is None or trip.finished_at or org_pending(trip, load_states(store), trip.accounts):
        return
    trip.finished_at = now.isoformat()
    # Another run may have changed it meanwhile (a new org trip): then it is left to the next run.
    with suppress(VersionConflict):
        save_org_trip(store, trip)


__all__ = [
    "KIND",
    "ORG_KIND",
    "OrgTrip",
    "TripState",
    "VersionConflict",
    "finish_org_trip",
    "latch_org_trip",
    "load_org_trip",
    "load_states",
    "org_pending",
    "save_org_trip",
    "save_state",
]
