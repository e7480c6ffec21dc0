"""The last run of each scheduled job: `record_run` (the Lambda handler, after each run) and the check of their age."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import StateError

if TYPE_CHECKING:
    from .run import Doctor

log = logging.getLogger(__name__)

# Where the Lambda handler records each run (state store records of this kind, keyed by the event's action).
RUN_KIND = "last-run"
# How old the last successful run of a scheduled job may be: a few schedule periods, so one missed run is tolerated.
DEFAULT_MAX_AGE: dict[str, timedelta] = {
    "guard": timedelta(minutes=15),  # every 5 minutes
    "audit": timedelta(hours=26),  # daily
    "compliance-report": timedelta(days=32),  # monthly
    "spend-report": timedelta(hours=26),  # daily
    "prices-refresh": timedelta(days=8),  # weekly
}


def record_run(store: Any, action: str, result: dict[str, Any], now: datetime, *, attempts: int = 5) -> bool:
    """Remember one run of `action` (the Lambda handler's result) as the `last-run` record of that action:
    `last_attempt` always, `last_success` only when the run succeeded (status `ok`: exit 0, or 3 for findings).

    Never raises for a store failure (the run's own result matters more): logs a warning and returns False.
    """
    from ..state import VersionConflict

    at = now.astimezone(UTC).isoformat()
    attempt = {"at": at, "status": str(result.get("status", "")), "exit_code": _int(result.get("exit_code"))}
    for key in ("run_id", "error"):
        if result.get(key) is not None:
            attempt[key] = str(result[key])[:500]
    try:
        for _ in range(attempts):
            current = store.get_record(RUN_KIND, action)
            data, version = current if current is not None else ({}, None)
            success = attempt if attempt["status"] == "ok" else data.get("last_success")
            record = {"action": action, "last_attempt": attempt, "last_success": success}
            try:
                store.put_record(RUN_KIND, action, record, expected_version=version)
                return True
            except VersionConflict:
                continue  # another run of the same action wrote first: read it again
        log.warning("could not record the run of %s: the record kept changing", action)
    except (StateError, ClientError, BotoCoreError) as exc:
        log.warning("could not record the run of %s: %s", action, exc)
    return False


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def parse_max_age(items: list[str] | tuple[str, ...]) -> dict[str, timedelta]:
    """`--max-age ACTION=DURATION` (`guard=20m`, `audit=30h`, `compliance-report=35d`) over the defaults."""
    ages = dict(DEFAULT_MAX_AGE)
    for item in items:
        action, _, text = item.partition("=")
        match = DURATION.match(text)
        if not action.strip() or not match or int(match.group(1)) == 0:
            raise ValueError(f"--max-age {item!r}: expected ACTION=DURATION, as in guard=20m, audit=30h or 35d")
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        ages[action.strip()] = timedelta(**{unit: int(match.group(1))})
    return ages


def check_last_runs(doctor: Doctor) -> None:
    assert doctor.config is not None
    from ..deploy import SCHEDULES
    from ..state import open_store

    jobs = [(rule, str(event["action"])) for rule, _p, _d, event, _t in SCHEDULES]
    if doctor.stack is None:
        doctor.emit("last-run", "not-checked", "no stack: nothing is scheduled")
        return
    if doctor.stack.parameters.get("RulesState") == "DISABLED":
        doctor.emit("last-run", "not-checked", "the stack's RulesState is DISABLED: no schedule fires")
        return
    if doctor.stack.disabled:
        doctor.emit("last-run", "not-checked", "switched off (see `disabled`): every run is a no-op")
        return
    try:
        store = open_store(doctor.config.state, doctor.factory)
    except (StateError, ClientError, BotoCoreError) as exc:
        doctor.emit("last-run", "not-checked", f"cannot open the state store: {exc}")
        return
    now = doctor.options.now or datetime.now(UTC)
    try:
        for rule, action in jobs:
            _last_run(doctor, store, rule, action, now)
    finally:
        store.close()


def _last_run(doctor: Doctor, store: Any, rule: str, action: str, now: datetime) -> None:
    assert doctor.stack is not None
    check = f"last-run:{action}"
    if rule in doctor.stack.missing or rule not in {r.get("LogicalResourceId") for r in doctor.stack.resources}:
        doctor.emit(check, "not-checked", f"its rule {rule} is missing (see resource:{rule})")
        return
    limit = doctor.options.max_age.get(action)
    if limit is None:
        doctor.emit(check, "not-checked", f"no maximum age for {action}", f"--max-age {action}=DURATION")
        return
    logs = f"aws logs tail /aws/lambda/{_function_of(doctor, rule)} --since {_age(limit)}"
    try:
        found = store.get_record(RUN_KIND, action)
    except (StateError, ClientError, BotoCoreError) as exc:
        doctor.emit(check, "not-checked", f"cannot read the last-run record: {exc}")
        return
    data = found[0] if found else {}
    success = data.get("last_success") or {}
    attempt = data.get("last_attempt") or {}
    tried = ""
    if attempt and attempt != success:
        why = f": {attempt['error']}" if attempt.get("error") else ""
        ended = f"{attempt.get('status')} (exit {attempt.get('exit_code')})"
        tried = f"; last attempt {attempt.get('at')} ended {ended}{why}"
    if not success.get("at"):
        doctor.emit(check, "problem", f"no successful {action} run recorded{tried}", f"look at its logs: {logs}")
        return
    when = datetime.fromisoformat(str(success["at"]))
    age = now - when
    if age > limit:
        doctor.emit(
            check,
            "problem",
            f"last successful {action} run {success['at']}, {_age(age)} ago (limit {_age(limit)}){tried}",
            f"look at its logs: {logs}",
        )
    else:
        doctor.emit(check, "ok", f"last successful run {_age(age)} ago (limit {_age(limit)}){tried}")


def _function_of(doctor: Doctor, rule: str) -> str:
    from ..deploy import SCHEDULES

    target = next((t for r, _p, _d, _e, t in SCHEDULES if r == rule), "Function")
    name = doctor.stack.parameters.get("FunctionName", "fleetwarden") if doctor.stack else "fleetwarden"
    return f"{name}-guard" if target == "GuardFunction" else name


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{max(seconds, 0) // 60}m"
