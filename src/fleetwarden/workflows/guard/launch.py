"""Event-driven trips (docs/guard.md "Event-driven trips"): a RunInstances or StartInstances call in a member
account reaches the hub's event bus within seconds, and the guard evaluates that account at once.

A burst of launches is coalesced through one state-store record per account (kind `guard-launch`):

- an evaluation that started at least MARGIN after the event's call already saw what the call launched
  (DescribeInstances is eventually consistent for a few seconds): the event is covered, nothing runs;
- an evaluation in flight that started before the call: the event sets `pending`, and that evaluation looks once
  more when it ends;
- otherwise this invocation claims the record (a versioned write: of two concurrent invocations one wins, the
  other is coalesced) and evaluates.

So at most one evaluation per account is in flight and no launch goes unseen. A claim older than IN_FLIGHT (an
invocation that died) no longer counts as in flight. The five-minute poll stays as the backstop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ...state.base import VersionConflict

KIND = "guard-launch"
MARGIN = timedelta(seconds=5)
IN_FLIGHT = timedelta(minutes=5)
MAX_ROUNDS = 3  # evaluations one invocation makes for pending launches; later ones are the next event's or poll's


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def claim(store: Any, account_id: str, event_time: datetime, now: datetime) -> str | None:
    """None when this invocation should evaluate the account (the claim is recorded); else why it need not."""
    for _attempt in range(3):
        found = store.get_record(KIND, account_id)
        data, version = found if found is not None else ({}, None)
        started, finished = _when(data.get("started_at")), _when(data.get("finished_at"))
        if started is not None and started >= event_time + MARGIN:
            return f"covered by the evaluation that started at {started.isoformat()}"
        in_flight = started is not None and finished is None and now - started < IN_FLIGHT
        try:
            if in_flight:
                store.put_record(KIND, account_id, {**data, "pending": True}, expected_version=version)
                return "an evaluation of this account is in flight; it looks again when it ends"
            claimed = {"started_at": now.isoformat(), "finished_at": None, "pending": False}
            store.put_record(KIND, account_id, claimed, expected_version=version)
            return None
        except VersionConflict:
            continue  # another invocation wrote in between: look again
    return "coalesced with concurrent invocations for this account"


def finish(store: Any, account_id: str, now: datetime) -> bool:
    """End this invocation's evaluation; True when launches arrived meanwhile and it must look once more (the
    record is then claimed again, from now)."""
    for _attempt in range(3):
        found = store.get_record(KIND, account_id)
        if found is None:
            return False
        data, version = found
        again = bool(data.get("pending"))
        update = (
            {"started_at": now.isoformat(), "finished_at": None, "pending": False}
            if again
            else {**data, "finished_at": now.isoformat()}
        )
        try:
            store.put_record(KIND, account_id, update, expected_version=version)
            return again
        except VersionConflict:
            continue
    return False
