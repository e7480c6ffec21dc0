"""What every journaled action class shares: the journal entry it writes before a mutation, and its result."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..model import ActionOutcome, ActionResult, JournalEntry


class JournaledActions:
    """Base of the action classes bound to one target (account, and region or "global")."""

    run_id: str
    workflow: str
    account_id: str
    region: str
    clock: Callable[[], datetime]
    journal: Callable[[JournalEntry], None]
    # Where the journal can store several entries in one transaction (StateStore.journal_many); else one by one.
    journal_batch: Callable[[Sequence[JournalEntry]], None] | None = None

    def journal_many(self, entries: Sequence[JournalEntry]) -> None:
        if self.journal_batch is not None:
            self.journal_batch(entries)
        else:
            for entry in entries:
                self.journal(entry)

    def _entry(self, action: str, resource_id: str, before: dict[str, Any]) -> JournalEntry:
        """A new journal entry (outcome planned), written before the mutation; its final state reuses the id."""
        return JournalEntry(
            id=str(uuid.uuid4()),
            run_id=self.run_id,
            workflow=self.workflow,
            account_id=self.account_id,
            region=self.region,
            resource_id=resource_id,
            action=action,
            outcome=ActionOutcome.PLANNED,
            at=self.clock(),
            before=before,
        )

    def _result(self, action: str, resource_id: str, outcome: ActionOutcome, reason: str) -> ActionResult:
        return ActionResult(
            action=action,
            account_id=self.account_id,
            region=self.region,
            resource_id=resource_id,
            outcome=outcome,
            reason=reason,
        )
