"""The audit's notice marks (`audit.notice_days`, docs/audit.md "Notice before action"): a tag on the instance
that says which action applies after which date, and the state-store record that is the authority for it.

Every mark and clear is journaled `planned` before its first write and `done`/`failed` after. The record is
written first, as `tagged: false`, then the tag, then the record as `tagged: true`: a run that dies in between
leaves a record whose tag is not confirmed, and the next run tags again and restarts the notice period from then.
So a crash can only delay an action, never bring it forward. The tag is never read back as the authority: an
instance's tags are editable by whoever owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from ..aws.targets import error_text
from ..model import ActionOutcome, ActionResult, JournalEntry
from ..state.base import VersionConflict
from .base import JournaledActions

RECORD_KIND = "audit-notice"
PERMISSIONS = ("ec2:CreateTags", "ec2:DeleteTags")
MARK, CLEAR = "notice", "clear-notice"
_GONE = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")


def record_key(account_id: str, region: str, instance_id: str) -> str:
    return f"{account_id}/{region}/{instance_id}"


def tag_value(action: str, after: datetime) -> str:
    """`stop@2026-12-09T02:30Z`: the action and the moment after which it applies (UTC)."""
    return f"{action}@{after:%Y-%m-%dT%H:%MZ}"


@dataclass(frozen=True)
class Mark:
    instance_id: str
    action: str
    after: datetime
    marked_at: datetime
    version: int | None  # the record's version to replace (None: there is none yet)


class NoticeTags(JournaledActions):
    """Marks and clears of one (account, region) target."""

    def __init__(
        self,
        client: Any,
        store: Any,
        *,
        tag_key: str,
        account_id: str,
        region: str,
        run_id: str,
        workflow: str,
        clock: Callable[[], datetime],
    ) -> None:
        self.client = client
        self.store = store
        self.tag_key = tag_key
        self.account_id = account_id
        self.region = region
        self.run_id = run_id
        self.workflow = workflow
        self.clock = clock
        self.journal = store.journal
        self.journal_batch = store.journal_many

    def mark(self, marks: Sequence[Mark]) -> list[ActionResult]:
        """Record, tag and confirm each mark; a failed tag leaves the record unconfirmed (tagged again next run)."""
        results = []
        for mark in marks:
            value = tag_value(mark.action, mark.after)
            key = record_key(self.account_id, self.region, mark.instance_id)
            entry = self._entry(MARK, mark.instance_id, before={"tag": self.tag_key, "value": value})
            self.journal(entry)
            data = {
                "action": mark.action,
                "after": mark.after.isoformat(),
                "marked_at": mark.marked_at.isoformat(),
                "tagged": False,
                "run_id": self.run_id,
            }
            try:
                version = self.store.put_record(RECORD_KIND, key, data, expected_version=mark.version)
                self.client.create_tags(Resources=[mark.instance_id], Tags=[{"Key": self.tag_key, "Value": value}])
                self.store.put_record(RECORD_KIND, key, {**data, "tagged": True}, expected_version=version)
            except (ClientError, VersionConflict) as exc:
                why = error_text(exc) if isinstance(exc, ClientError) else "another run changed the notice record"
                self.journal(self._done(entry, ActionOutcome.FAILED, why))
                results.append(self._result(MARK, mark.instance_id, ActionOutcome.FAILED, why))
                continue
            self.journal(self._done(entry, ActionOutcome.DONE))
            text = f"notice: {mark.action} after {mark.after:%Y-%m-%d %H:%M} UTC unless the required tags are fixed"
            results.append(self._result(MARK, mark.instance_id, ActionOutcome.DONE, text))
        return results

    def clear(self, instance_ids: Sequence[str]) -> list[ActionResult]:
        """Remove the tag and then the record of instances that no longer violate (or no longer exist)."""
        results = []
        for instance_id in instance_ids:
            entry = self._entry(CLEAR, instance_id, before={"tag": self.tag_key})
            self.journal(entry)
            reason = "the required tags are fixed: notice withdrawn"
            try:
                self.client.delete_tags(Resources=[instance_id], Tags=[{"Key": self.tag_key}])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _GONE:
                    self.journal(self._done(entry, ActionOutcome.FAILED, error_text(exc)))
                    results.append(self._result(CLEAR, instance_id, ActionOutcome.FAILED, error_text(exc)))
                    continue
                reason = "the instance is gone: notice withdrawn"
            self.store.delete_record(RECORD_KIND, record_key(self.account_id, self.region, instance_id))
            self.journal(self._done(entry, ActionOutcome.DONE))
            results.append(self._result(CLEAR, instance_id, ActionOutcome.DONE, reason))
        return results

    def _done(self, entry: JournalEntry, outcome: ActionOutcome, error: str | None = None) -> JournalEntry:
        return entry.model_copy(update={"outcome": outcome, "at": self.clock(), "error": error})
