"""EC2 mutations (stop, start, terminate with snapshots) in batches where one instance never blocks the others.

EC2 fails a whole StopInstances/StartInstances/TerminateInstances call when a single id in it is bad. Each batch
is therefore retried after dealing with the ids the error names: missing ids are dropped, protection flags are
cleared (terminate, or stop with an explicit override) or the instance is skipped, instances in a transitional
state are waited for once. An error that names no id of the batch splits it in halves until the culprit is alone.
Throttling is not handled here: botocore retries it (the session factory sets the retry mode).

Every mutation is journaled twice under one entry id: `planned` before the call, then its final outcome.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from botocore.exceptions import ClientError, WaiterError

from ..aws.targets import error_text
from ..model import ActionOutcome, ActionResult, Instance, JournalEntry, utcnow
from .base import JournaledActions

log = logging.getLogger(__name__)

# IAM actions each action needs ("stop" needs ModifyInstanceAttribute only with override_stop_protection;
# DescribeInstances and DescribeSnapshots are what the waiters call).
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "stop": ("ec2:StopInstances", "ec2:ModifyInstanceAttribute", "ec2:DescribeInstances"),
    "start": ("ec2:StartInstances", "ec2:DescribeInstances"),
    "terminate": (
        "ec2:TerminateInstances",
        "ec2:CreateSnapshots",
        "ec2:CreateTags",
        "ec2:ModifyInstanceAttribute",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
    ),
    "snapshot": ("ec2:CreateSnapshots", "ec2:CreateTags", "ec2:DescribeSnapshots"),
    "clear-protection": ("ec2:ModifyInstanceAttribute",),
}

# `\b` keeps ids inside other ids (ami-..., eni-...) from matching.
_INSTANCE_ID = re.compile(r"\bi-[0-9a-f]+\b")
_NOT_FOUND = "InvalidInstanceID.NotFound"
_MALFORMED = "InvalidInstanceID.Malformed"
_NOT_PERMITTED = "OperationNotPermitted"
_WRONG_STATE = "IncorrectInstanceState"
# Codes that concern individual instances; any other error (access denied, retries exhausted, ...) fails the
# whole batch at once, since splitting it would only repeat the same failure.
_PER_INSTANCE = frozenset({_NOT_FOUND, _MALFORMED, _NOT_PERMITTED, _WRONG_STATE})
# Codes caused by some instances of a batch but naming none (capacity for one type or zone, an instance kind
# that cannot take the action, an IAM or SCP deny conditioned on tags or resources): the batch is split in
# halves until the culprits are alone, and only they fail. A deny that covers every instance costs 2n-1 calls
# for n instances; a halt pays that rather than leave one stoppable instance running.
_DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
_SPLIT = frozenset({"InsufficientInstanceCapacity", "UnsupportedOperation", "Unsupported"}) | _DENIED
# The protection attributes as EC2 names them in messages -> modify_instance_attribute parameter.
_PROTECTIONS = {"disableApiTermination": "DisableApiTermination", "disableApiStop": "DisableApiStop"}
_GONE = frozenset({"shutting-down", "terminated"})
_TAG_VALUE_MAX = 256
_SNAPSHOT_WAIT_GROUP = 200
_SNAPSHOT_NOT_FOUND_RETRIES = 3

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


@dataclass
class _Outcome:
    """The final fate of one instance in one action."""

    outcome: ActionOutcome
    reason: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Spec:
    """How one EC2 state-change call is made and read."""

    action: str
    operation: str  # client method name
    response_key: str
    waiter: str  # what to wait for on IncorrectInstanceState
    settled: frozenset[str]  # states in which the action has nothing left to do


_STOP = _Spec(
    "stop", "stop_instances", "StoppingInstances", "instance_running", frozenset({"stopping", "stopped"}) | _GONE
)
_START = _Spec("start", "start_instances", "StartingInstances", "instance_stopped", frozenset({"pending", "running"}))
_TERMINATE = _Spec("terminate", "terminate_instances", "TerminatingInstances", "instance_running", _GONE)


class Ec2Actions(JournaledActions):
    """Batched, journaled EC2 mutations on one (account, region) target; every id gets done/skipped/failed."""

    def __init__(
        self,
        client: Any,
        *,
        account_id: str,
        region: str,
        run_id: str,
        workflow: str,
        journal: Callable[[JournalEntry], None],
        clock: Callable[[], datetime] = utcnow,
        journal_many: Callable[[Sequence[JournalEntry]], None] | None = None,
        batch_size: int = 500,
        wait_delay: int = 5,
        wait_attempts: int = 6,
        snapshot_wait_delay: int = 15,
        snapshot_wait_attempts: int = 40,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.client = client
        self.account_id = account_id
        self.region = region
        self.run_id = run_id
        self.workflow = workflow
        self.journal = journal
        self.journal_batch = journal_many
        self.clock = clock
        self.batch_size = batch_size
        # Waits are bounded: a pending instance gets wait_delay x wait_attempts seconds, snapshots likewise.
        self.wait_config = {"Delay": wait_delay, "MaxAttempts": wait_attempts}
        self.snapshot_wait_config = {"Delay": snapshot_wait_delay, "MaxAttempts": snapshot_wait_attempts}

    # -- public actions -------------------------------------------------------------------------------
    def stop(
        self, instances: Sequence[Instance], *, reason: str, override_stop_protection: bool = False
    ) -> list[ActionResult]:
        """Stop the instances; a stop-protected one is skipped unless `override_stop_protection` clears the flag."""
        pending, results = self._admit(instances, _STOP)

        def on_protection(instance_id: str, attribute: str) -> _Outcome | None:
            if attribute != "disableApiStop":
                return _Outcome(ActionOutcome.FAILED, f"{attribute} prevents stopping")
            if not override_stop_protection:
                return _Outcome(ActionOutcome.SKIPPED, "stop protection enabled")
            return self._clear_protection(instance_id, attribute, reason)

        for batch in _chunks(pending, self.batch_size):
            entries = self._plan(_STOP.action, batch, reason)
            outcomes = self._mutate(_STOP, [i.id for i in batch], on_protection)
            results.update(self._finish(_STOP.action, entries, outcomes, reason))
        return [results[i.id] for i in _unique(instances)]

    def start(self, instance_ids: Sequence[str], *, reason: str) -> list[ActionResult]:
        """Start the instances (the scan window's job); a stopping instance is waited for once."""
        ids = list(dict.fromkeys(instance_ids))

        def on_protection(instance_id: str, attribute: str) -> _Outcome | None:
            return _Outcome(ActionOutcome.FAILED, f"{attribute} prevents starting")

        results: dict[str, ActionResult] = {}
        for batch in _chunks(ids, self.batch_size):
            entries = self._plan_ids(_START.action, batch, {i: {"state": None} for i in batch}, reason)
            outcomes = self._mutate(_START, batch, on_protection)
            results.update(self._finish(_START.action, entries, outcomes, reason))
        return [results[i] for i in ids]

    def terminate(self, instances: Sequence[Instance], *, reason: str, snapshot: bool = True) -> list[ActionResult]:
        """Terminate the instances, clearing termination (and stop) protection when EC2 reports it.

        With `snapshot`, every EBS volume of an instance is snapshotted first and the snapshots waited for;
        an instance whose snapshot fails (or does not complete in time) is not terminated.
        """
        pending, results = self._admit(instances, _TERMINATE)

        def on_protection(instance_id: str, attribute: str) -> _Outcome | None:
            return self._clear_protection(instance_id, attribute, reason)

        for batch in _chunks(pending, self.batch_size):
            entries = self._plan(_TERMINATE.action, batch, reason)
            blocked: dict[str, _Outcome] = {}
            snapshots: dict[str, list[str]] = {}
            if snapshot:
                snapshots, blocked = self._snapshot(batch, reason)
            ids = [i.id for i in batch if i.id not in blocked]
            outcomes = self._mutate(_TERMINATE, ids, on_protection) if ids else {}
            for instance_id, snapshot_ids in snapshots.items():
                outcome = outcomes.get(instance_id)
                if outcome is not None:
                    outcome.after["snapshot_ids"] = snapshot_ids
                    if outcome.outcome is ActionOutcome.DONE:
                        outcome.reason = _join(outcome.reason, f"snapshots: {', '.join(snapshot_ids) or 'none'}")
            outcomes.update(blocked)
            results.update(self._finish(_TERMINATE.action, entries, outcomes, reason))
        return [results[i.id] for i in _unique(instances)]

    # -- the batch loop -------------------------------------------------------------------------------
    def _mutate(
        self, spec: _Spec, ids: list[str], on_protection: Callable[[str, str], _Outcome | None]
    ) -> dict[str, _Outcome]:
        """Call `spec.operation` on the ids until each has an outcome, one bad id never blocking the rest."""
        outcomes: dict[str, _Outcome] = {}
        notes: dict[str, list[str]] = {}
        waited: set[str] = set()
        cleared: set[tuple[str, str]] = set()
        queue: deque[list[str]] = deque([ids])
        while queue:
            batch = queue.popleft()
            if not batch:
                continue
            try:
                response = getattr(self.client, spec.operation)(InstanceIds=batch)
            except ClientError as exc:
                code, message = _error_code(exc), _error_message(exc)
                if code in _SPLIT and len(batch) > 1:
                    half = len(batch) // 2
                    log.info("%s: %s for a batch of %d; splitting it", spec.action, code, len(batch))
                    queue.extendleft([batch[half:], batch[:half]])
                    continue
                if code not in _PER_INSTANCE:
                    for instance_id in batch:
                        outcomes[instance_id] = _Outcome(ActionOutcome.FAILED, error_text(exc))
                    continue
                named = [i for i in dict.fromkeys(_INSTANCE_ID.findall(message)) if i in batch]
                if not named and len(batch) > 1:
                    half = len(batch) // 2
                    log.info("%s: %s names no id of a batch of %d; splitting it", spec.action, code, len(batch))
                    queue.extendleft([batch[half:], batch[:half]])
                    continue
                named = named or batch
                log.info("%s: %s for %s", spec.action, code, ", ".join(named))
                if code == _NOT_FOUND:
                    outcomes.update({i: _Outcome(ActionOutcome.SKIPPED, "not found") for i in named})
                elif code == _MALFORMED:
                    outcomes.update({i: _Outcome(ActionOutcome.FAILED, "malformed instance id") for i in named})
                elif code == _NOT_PERMITTED:
                    attribute = next((a for a in _PROTECTIONS if a.lower() in message.lower()), None)
                    for instance_id in named:
                        if attribute is None or (instance_id, attribute) in cleared:
                            outcomes[instance_id] = _Outcome(ActionOutcome.FAILED, error_text(exc))
                            continue
                        cleared.add((instance_id, attribute))
                        verdict = on_protection(instance_id, attribute)
                        if verdict is None:
                            notes.setdefault(instance_id, []).append(f"{attribute} cleared")
                        else:
                            outcomes[instance_id] = verdict
                else:  # _WRONG_STATE: wait for the transition once, then retry
                    again = [i for i in named if i in waited]
                    outcomes.update({i: _Outcome(ActionOutcome.FAILED, error_text(exc)) for i in again})
                    fresh = [i for i in named if i not in waited]
                    waited.update(fresh)
                    outcomes.update(self._wait_for_state(spec, fresh, exc))
                rest = [i for i in batch if i not in outcomes]
                if rest:
                    queue.appendleft(rest)
                continue
            for change in response.get(spec.response_key, []):
                outcomes[change["InstanceId"]] = _Outcome(
                    ActionOutcome.DONE,
                    "; ".join(notes.get(change["InstanceId"], [])),
                    before={"state": change.get("PreviousState", {}).get("Name")},
                    after={"state": change.get("CurrentState", {}).get("Name")},
                )
            for instance_id in batch:
                outcomes.setdefault(instance_id, _Outcome(ActionOutcome.DONE, "; ".join(notes.get(instance_id, []))))
        return outcomes

    def _wait_for_state(self, spec: _Spec, ids: list[str], cause: ClientError) -> dict[str, _Outcome]:
        """Wait (bounded) until each id can take the action; those that cannot get their outcome here.

        One id at a time, so that one instance reaching a failure state does not end the wait for the others.
        """
        outcomes: dict[str, _Outcome] = {}
        waiter = self.client.get_waiter(spec.waiter)
        for instance_id in ids:
            try:
                waiter.wait(InstanceIds=[instance_id], WaiterConfig=self.wait_config)
                continue
            except WaiterError as exc:
                state = _instance_states(exc.last_response).get(instance_id)
            if state in spec.settled:
                outcomes[instance_id] = _Outcome(ActionOutcome.SKIPPED, f"already {state}", after={"state": state})
            elif state != _target_state(spec.waiter):
                where = f"instance is {state}" if state else "state unknown"
                outcomes[instance_id] = _Outcome(ActionOutcome.FAILED, f"{error_text(cause)} ({where} after waiting)")
        return outcomes

    # -- protection and snapshots ---------------------------------------------------------------------
    def _clear_protection(self, instance_id: str, attribute: str, reason: str) -> _Outcome | None:
        """Set the protection attribute to false (journaled); None when cleared, else the failure."""
        entry = self._entry("clear-protection", instance_id, before={attribute: True, "reason": reason})
        self.journal(entry)
        try:
            self.client.modify_instance_attribute(InstanceId=instance_id, **{_PROTECTIONS[attribute]: {"Value": False}})
        except ClientError as exc:
            self.journal(self._final(entry, ActionOutcome.FAILED, {attribute: True}, error_text(exc)))
            return _Outcome(ActionOutcome.FAILED, f"could not clear {attribute}: {error_text(exc)}")
        self.journal(self._final(entry, ActionOutcome.DONE, {attribute: False}))
        return None

    def restore_protection(self, entries: Sequence[JournalEntry], *, apply: bool = True) -> list[ActionResult]:
        """Set back the protection flags that journaled `clear-protection` entries of this target turned off
        (release of a guard trip). Terminated instances are skipped: there is nothing left to protect."""
        cleared = {
            (e.resource_id, attribute)
            for e in entries
            if e.action == "clear-protection"
            # `planned`: the run died around the call. EC2 reported the flag set before it, so setting it again
            # is right whether or not the call went through.
            and e.outcome in (ActionOutcome.DONE, ActionOutcome.PLANNED)
            and e.account_id == self.account_id
            and e.region == self.region
            for attribute, value in e.before.items()
            if attribute in _PROTECTIONS and value is True
        }
        results: list[ActionResult] = []
        for instance_id, attribute in sorted(cleared):
            if not apply:
                results.append(
                    self._result("restore-protection", instance_id, ActionOutcome.PLANNED, f"set {attribute} again")
                )
                continue
            entry = self._entry("restore-protection", instance_id, before={attribute: False})
            self.journal(entry)
            try:
                flag = {_PROTECTIONS[attribute]: {"Value": True}}
                self.client.modify_instance_attribute(InstanceId=instance_id, **flag)
            except ClientError as exc:
                code = _error_code(exc)
                outcome = ActionOutcome.SKIPPED if code in (_NOT_FOUND, _WRONG_STATE) else ActionOutcome.FAILED
                self.journal(self._final(entry, outcome, {}, error_text(exc)))
                results.append(self._result("restore-protection", instance_id, outcome, error_text(exc)))
                continue
            self.journal(self._final(entry, ActionOutcome.DONE, {attribute: True}))
            done = f"{attribute} set again"
            results.append(self._result("restore-protection", instance_id, ActionOutcome.DONE, done))
        return results

    def _snapshot(self, batch: list[Instance], reason: str) -> tuple[dict[str, list[str]], dict[str, _Outcome]]:
        """Snapshot every EBS volume of each instance and wait; returns (snapshot ids, instances to keep)."""
        blocked: dict[str, _Outcome] = {}
        started: dict[str, tuple[JournalEntry, list[str]]] = {}
        for instance in batch:
            entry = self._entry("snapshot", instance.id, before={"volume_ids": list(instance.volume_ids)})
            self.journal(entry)
            try:
                response = self.client.create_snapshots(
                    InstanceSpecification={"InstanceId": instance.id, "ExcludeBootVolume": False},
                    Description=f"fleetwarden {self.run_id}: before terminating {instance.id}"[:255],
                    CopyTagsFromSource="volume",
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": self._snapshot_tags(instance.id, reason)}],
                )
            except ClientError as exc:
                self.journal(self._final(entry, ActionOutcome.FAILED, {}, error_text(exc)))
                if _error_code(exc) == _NOT_FOUND:
                    blocked[instance.id] = _Outcome(ActionOutcome.SKIPPED, "not found")
                else:
                    blocked[instance.id] = _Outcome(ActionOutcome.FAILED, f"snapshot failed: {error_text(exc)}")
                continue
            started[instance.id] = (entry, [s["SnapshotId"] for s in response.get("Snapshots", [])])
        states = self._wait_for_snapshots([s for _, ids in started.values() for s in ids])
        snapshots: dict[str, list[str]] = {}
        for instance_id, (entry, snapshot_ids) in started.items():
            bad = [f"{s} {states.get(s, 'unknown')}" for s in snapshot_ids if states.get(s) != "completed"]
            after = {"snapshot_ids": snapshot_ids}
            if bad:
                why = f"snapshot not completed: {', '.join(bad)}"
                self.journal(self._final(entry, ActionOutcome.FAILED, after, why))
                blocked[instance_id] = _Outcome(ActionOutcome.FAILED, f"{why}; not terminated", after=after)
            else:
                self.journal(self._final(entry, ActionOutcome.DONE, after))
                snapshots[instance_id] = snapshot_ids
        return snapshots, blocked

    def _wait_for_snapshots(self, snapshot_ids: list[str]) -> dict[str, str]:
        """The state of each snapshot after a bounded wait ("completed", "error", "pending", "unknown")."""
        states: dict[str, str] = {}
        waiter = self.client.get_waiter("snapshot_completed")
        for group in _chunks(snapshot_ids, _SNAPSHOT_WAIT_GROUP):
            remaining = group
            # DescribeSnapshots is eventually consistent: a just-created snapshot may be "not found" briefly.
            not_found_retries = _SNAPSHOT_NOT_FOUND_RETRIES
            while remaining:
                try:
                    waiter.wait(SnapshotIds=remaining, WaiterConfig=self.snapshot_wait_config)
                    states.update(dict.fromkeys(remaining, "completed"))
                    break
                except WaiterError as exc:
                    last: dict[str, Any] = exc.last_response or {}
                if last.get("Error", {}).get("Code") == "InvalidSnapshot.NotFound" and not_found_retries > 0:
                    not_found_retries -= 1
                    time.sleep(self.snapshot_wait_config["Delay"])
                    continue
                seen = {s["SnapshotId"]: str(s.get("State", "unknown")) for s in last.get("Snapshots", [])}
                states.update({s: seen.get(s, "unknown") for s in remaining})
                errored = [s for s in remaining if seen.get(s) == "error"]
                # One failed snapshot ends the waiter: keep waiting for the others. A timeout ends the wait.
                remaining = [s for s in remaining if seen.get(s) == "pending"] if errored else []
        return states

    def _snapshot_tags(self, instance_id: str, reason: str) -> list[dict[str, str]]:
        return [
            {"Key": "fleetwarden:run-id", "Value": self.run_id[:_TAG_VALUE_MAX]},
            {"Key": "fleetwarden:reason", "Value": reason[:_TAG_VALUE_MAX]},
            {"Key": "fleetwarden:instance-id", "Value": instance_id},
        ]

    # -- admission, journal and results ---------------------------------------------------------------
    def _admit(self, instances: Sequence[Instance], spec: _Spec) -> tuple[list[Instance], dict[str, ActionResult]]:
        """Dedupe; instances already terminated are skipped without a call (that state is final)."""
        pending: list[Instance] = []
        results: dict[str, ActionResult] = {}
        for instance in _unique(instances):
            if (instance.account_id, instance.region) != (self.account_id, self.region):
                raise ValueError(
                    f"{instance.id} is in {instance.account_id}/{instance.region}, not {self.account_id}/{self.region}"
                )
            if instance.state in _GONE:
                results[instance.id] = self._result(
                    spec.action, instance.id, ActionOutcome.SKIPPED, f"already {instance.state}"
                )
            else:
                pending.append(instance)
        return pending, results

    def _plan(self, action: str, batch: list[Instance], reason: str) -> dict[str, JournalEntry]:
        return self._plan_ids(action, [i.id for i in batch], {i.id: {"state": i.state} for i in batch}, reason)

    def _plan_ids(
        self, action: str, ids: list[str], before: dict[str, dict[str, Any]], reason: str
    ) -> dict[str, JournalEntry]:
        entries = {i: self._entry(action, i, before={**before[i], "reason": reason}) for i in ids}
        self.journal_many(list(entries.values()))  # every planned entry is stored before the call is made
        return entries

    def _finish(
        self, action: str, entries: dict[str, JournalEntry], outcomes: dict[str, _Outcome], reason: str
    ) -> dict[str, ActionResult]:
        results: dict[str, ActionResult] = {}
        finals: list[JournalEntry] = []
        for instance_id, entry in entries.items():
            outcome = outcomes.get(instance_id) or _Outcome(ActionOutcome.FAILED, "no outcome recorded")
            before = {**entry.before, **{k: v for k, v in outcome.before.items() if v is not None}}
            error = None if outcome.outcome is ActionOutcome.DONE else outcome.reason
            finals.append(self._final(entry, outcome.outcome, outcome.after, error, before=before))
            text = _join(reason, outcome.reason) if outcome.outcome is ActionOutcome.DONE else outcome.reason
            results[instance_id] = self._result(action, instance_id, outcome.outcome, text)
        self.journal_many(finals)
        return results

    def _final(
        self,
        entry: JournalEntry,
        outcome: ActionOutcome,
        after: dict[str, Any],
        error: str | None = None,
        *,
        before: dict[str, Any] | None = None,
    ) -> JournalEntry:
        changes: dict[str, Any] = {"outcome": outcome, "at": self.clock(), "after": after, "error": error}
        if before is not None:
            changes["before"] = before
        return entry.model_copy(update=changes)


def _unique(instances: Sequence[Instance]) -> list[Instance]:
    """The instances without repeated ids, first occurrence kept, order kept."""
    seen: dict[str, Instance] = {}
    for instance in instances:
        seen.setdefault(instance.id, instance)
    return list(seen.values())


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _target_state(waiter: str) -> str:
    return waiter.removeprefix("instance_")


def _instance_states(response: dict[str, Any] | None) -> dict[str, str]:
    """Instance id -> state name from a DescribeInstances response (a waiter's last response)."""
    return {
        instance["InstanceId"]: instance.get("State", {}).get("Name", "")
        for reservation in (response or {}).get("Reservations", [])
        for instance in reservation.get("Instances", [])
    }
