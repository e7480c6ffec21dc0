"""The state store interface: findings, exceptions, journal, leases and generic records.

Two backends implement it (SQLite, the embedded default; DynamoDB, deployed) and both pass the same test
suite. The store persists; it does not decide: lifecycle rules live in `fleetwarden.reconcile`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..model import ExceptionRule, Finding, FindingStatus, JournalEntry

log = logging.getLogger(__name__)


def valid_exceptions(rows: Iterable[str]) -> list[ExceptionRule]:
    """Stored exception rows (JSON) as rules. A row that breaks the rules (edited by hand, or from a newer
    version) is left out with a warning: an unreadable exception exempts nothing, it never stops a run."""
    rules: list[ExceptionRule] = []
    for raw in rows:
        try:
            rules.append(ExceptionRule.model_validate_json(raw))
        except ValidationError as exc:
            ident = _row_id(raw)
            problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            log.warning("exception %s in the state store is invalid and is ignored (%s)", ident, problem)
    return rules


def _row_id(raw: str) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return "?"
    return str(data.get("id", "?")) if isinstance(data, dict) else "?"


class VersionConflict(Exception):
    """A conditional write lost: the record changed (or appeared) since it was read."""


class StateStore(ABC):
    """Where fleetwarden remembers things between runs."""

    # The config's exceptions (exceptions as code), merged into list_exceptions(); never written to the store.
    config_exceptions: tuple[ExceptionRule, ...] = ()

    # -- lifecycle ------------------------------------------------------------------------------------
    @abstractmethod
    def init(self) -> None:
        """Create the tables if they do not exist (idempotent)."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        """Release connections."""

    # -- findings -------------------------------------------------------------------------------------
    @abstractmethod
    def load_findings(self, check: str, account_id: str, region: str) -> dict[str, Finding]:
        """Every stored finding of one check in one target that is not resolved, by id."""

    @abstractmethod
    def save_findings(self, findings: Iterable[Finding]) -> None:
        """Insert or replace findings by id (status, first_seen and last_seen as given)."""

    @abstractmethod
    def list_findings(
        self,
        check: str | None = None,
        statuses: Iterable[FindingStatus] | None = None,
        account_id: str | None = None,
    ) -> list[Finding]:
        """Stored findings, optionally filtered."""

    # -- exceptions -----------------------------------------------------------------------------------
    @abstractmethod
    def add_exception(self, rule: ExceptionRule) -> None: ...

    def list_exceptions(self) -> list[ExceptionRule]:
        """All exceptions, expired ones included (callers filter with ExceptionRule.active): the store's, then
        the config's (each with its `source`)."""
        return [*self._stored_exceptions(), *self.config_exceptions]

    def remove_exception(self, exception_id: str) -> bool:
        """Delete one stored exception; False if there was none with that id. One from the config is removed by
        editing the config: refused, naming where it is written."""
        from ..errors import UsageError

        written = next((r for r in self.config_exceptions if r.id == exception_id), None)
        if written is not None:
            raise UsageError(
                f"exception {exception_id} is defined in the config ({written.source}): remove it there; "
                "nothing was removed"
            )
        return self._remove_stored_exception(exception_id)

    @abstractmethod
    def _stored_exceptions(self) -> list[ExceptionRule]:
        """The exceptions in the store itself."""

    @abstractmethod
    def _remove_stored_exception(self, exception_id: str) -> bool:
        """Delete one stored exception; False if there was none with that id."""

    # -- journal --------------------------------------------------------------------------------------
    @abstractmethod
    def journal(self, entry: JournalEntry) -> None:
        """Record one mutation (append-only; an entry with the same id replaces the earlier record)."""

    def journal_many(self, entries: Sequence[JournalEntry]) -> None:
        """Record several mutations at once (one transaction or batch where the backend has them); every entry
        is stored when this returns, as with `journal`."""
        for entry in entries:
            self.journal(entry)

    @abstractmethod
    def list_journal(
        self,
        *,
        run_id: str | None = None,
        account_id: str | None = None,
        workflow: str | None = None,
    ) -> list[JournalEntry]:
        """Journal entries, oldest first, optionally filtered."""

    # -- leases ---------------------------------------------------------------------------------------
    @abstractmethod
    def acquire_lease(self, workflow: str, account_id: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Take the lease on (workflow, account) if it is free, expired or already ours (conditional write)."""

    @abstractmethod
    def release_lease(self, workflow: str, account_id: str, owner: str) -> None:
        """Give the lease back if we hold it."""

    @abstractmethod
    def get_lease(self, workflow: str, account_id: str) -> tuple[str, datetime] | None:
        """The holder of the (workflow, account) lease and when it expires (expired ones included), or None."""

    @abstractmethod
    def break_lease(self, workflow: str, account_id: str) -> None:
        """Remove the lease whoever holds it (an operator's `--break-lease`; the caller journals it)."""

    # -- records (guard state, window ledger, outbox: later workflows) ------------------------------------
    @abstractmethod
    def get_record(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        """A record and its version, or None."""

    @abstractmethod
    def put_record(self, kind: str, key: str, data: dict[str, Any], *, expected_version: int | None) -> int:
        """Write a record if its version is still `expected_version` (None: it must not exist yet).

        Returns the new version; raises VersionConflict otherwise.
        """

    @abstractmethod
    def list_records(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        """All records of a kind as (key, data, version)."""

    @abstractmethod
    def delete_record(self, kind: str, key: str) -> None: ...
