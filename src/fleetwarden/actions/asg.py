"""Suspends the Auto Scaling processes that would undo a halt, and resumes exactly those the guard suspended.

A halted account's Auto Scaling groups would launch replacements for the instances the guard stopped (Launch,
HealthCheck, ReplaceUnhealthy) or move capacity between zones (AZRebalance). The guard suspends those processes on
every group of a region, journaling per group which processes THIS run suspended; a process that was already
suspended is left out of the journal, so resuming never resumes what someone else had suspended.

Every mutation is journaled twice under one entry id: `planned` before the call, then its final outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from ..aws.targets import error_text
from ..model import ActionOutcome, ActionResult, JournalEntry, utcnow
from .base import JournaledActions

log = logging.getLogger(__name__)

GUARD_PROCESSES = ("Launch", "HealthCheck", "ReplaceUnhealthy", "AZRebalance")
SUSPEND = "suspend-processes"
RESUME = "resume-processes"

PERMISSIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:SuspendProcesses",
    "autoscaling:ResumeProcesses",
)

# DescribeAutoScalingGroups takes at most this many names per call, and returns at most this many groups per page
# (MaxRecords; the default is 50): a region of up to 100 groups is one call.
_NAMES_PER_DESCRIBE = 100
_GROUPS_PER_PAGE = 100


class AsgProcesses(JournaledActions):
    """Suspends and resumes the guard's Auto Scaling processes in one (account, region)."""

    def __init__(
        self,
        client: Any,
        *,
        account_id: str,
        region: str,
        run_id: str,
        workflow: str = "guard",
        journal: Callable[[JournalEntry], None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.account_id = account_id
        self.region = region
        self.run_id = run_id
        self.workflow = workflow
        self.journal = journal
        self.clock = clock

    # -- public API -----------------------------------------------------------------------------------
    def plan(self) -> list[ActionResult]:
        """What `suspend()` would do, per group: `planned` or `skipped`; no mutation."""
        return self._suspend(apply=False)

    def suspend(self) -> list[ActionResult]:
        """Suspend the GUARD_PROCESSES not already suspended on every group of the region."""
        return self._suspend(apply=True)

    def plan_resume(self, entries: Sequence[JournalEntry]) -> list[ActionResult]:
        """What `resume(entries)` would do; no mutation."""
        return self._resume(entries, apply=False)

    def resume(self, entries: Sequence[JournalEntry]) -> list[ActionResult]:
        """Resume only what the journal says the guard suspended here (entries of other targets are ignored).

        Idempotent: processes already resumed, and groups since deleted, are skipped.
        """
        return self._resume(entries, apply=True)

    # -- suspend --------------------------------------------------------------------------------------
    def _suspend(self, *, apply: bool) -> list[ActionResult]:
        try:
            groups = list(self._groups())
        except ClientError as exc:
            return [self._result(SUSPEND, "*", ActionOutcome.FAILED, f"cannot list groups: {error_text(exc)}")]
        results: list[ActionResult] = []
        for group in groups:
            name = group["AutoScalingGroupName"]
            already = _suspended(group)
            missing = [p for p in GUARD_PROCESSES if p not in already]
            if not missing:
                results.append(self._result(SUSPEND, name, ActionOutcome.SKIPPED, "already suspended"))
            elif not apply:
                results.append(self._result(SUSPEND, name, ActionOutcome.PLANNED, ", ".join(missing)))
            else:
                before = {"already_suspended": sorted(already), "processes": missing}
                results.append(self._mutate(SUSPEND, name, before, "suspend_processes", missing))
        return results

    def _groups(self, names: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("describe_auto_scaling_groups")
        paging = {"PageSize": _GROUPS_PER_PAGE}
        if not names:
            for page in paginator.paginate(PaginationConfig=paging):
                yield from page.get("AutoScalingGroups", [])
            return
        for start in range(0, len(names), _NAMES_PER_DESCRIBE):
            chunk = list(names[start : start + _NAMES_PER_DESCRIBE])
            for page in paginator.paginate(AutoScalingGroupNames=chunk, PaginationConfig=paging):
                yield from page.get("AutoScalingGroups", [])

    # -- resume ---------------------------------------------------------------------------------------
    def _resume(self, entries: Sequence[JournalEntry], *, apply: bool) -> list[ActionResult]:
        suspended = self._journaled(entries)
        if not suspended:
            return []
        try:
            groups = {g["AutoScalingGroupName"]: g for g in self._groups(list(suspended))}
        except ClientError as exc:
            why = f"cannot describe groups: {error_text(exc)}"
            return [self._result(RESUME, name, ActionOutcome.FAILED, why) for name in suspended]
        results: list[ActionResult] = []
        for name, processes in suspended.items():
            group = groups.get(name)
            if group is None:
                results.append(self._result(RESUME, name, ActionOutcome.SKIPPED, "group no longer exists"))
                continue
            current = _suspended(group)
            to_resume = [p for p in processes if p in current]
            if not to_resume:
                results.append(self._result(RESUME, name, ActionOutcome.SKIPPED, "already resumed"))
            elif not apply:
                results.append(self._result(RESUME, name, ActionOutcome.PLANNED, ", ".join(to_resume)))
            else:
                before = {"suspended": sorted(current), "processes": to_resume}
                results.append(self._mutate(RESUME, name, before, "resume_processes", to_resume))
        return results

    def _journaled(self, entries: Sequence[JournalEntry]) -> dict[str, list[str]]:
        """Group name -> the processes the guard suspended there, from this target's entries.

        An entry counts when its last record is `done`, or still `planned` (the run died during the call);
        `resume` only resumes what is currently suspended, so counting a call that never happened is harmless.
        """
        last: dict[str, JournalEntry] = {}
        for entry in entries:
            if (entry.account_id, entry.region, entry.action) == (self.account_id, self.region, SUSPEND):
                last[entry.id] = entry
        suspended: dict[str, list[str]] = {}
        for entry in last.values():
            if entry.outcome not in (ActionOutcome.DONE, ActionOutcome.PLANNED):
                continue
            processes = suspended.setdefault(entry.resource_id, [])
            for process in entry.before.get("processes", []):
                if process in GUARD_PROCESSES and process not in processes:
                    processes.append(process)
        return {name: processes for name, processes in suspended.items() if processes}

    # -- journal and results --------------------------------------------------------------------------
    def _mutate(
        self, action: str, group: str, before: dict[str, Any], operation: str, processes: list[str]
    ) -> ActionResult:
        """Journal `planned`, call suspend/resume for one group, journal `done` or `failed`; one result."""
        entry = self._entry(action, group, before)
        self.journal(entry)
        try:
            getattr(self.client, operation)(AutoScalingGroupName=group, ScalingProcesses=processes)
        except ClientError as exc:
            log.info("%s %s in %s/%s failed: %s", action, group, self.account_id, self.region, error_text(exc))
            self.journal(entry.model_copy(update=self._final(ActionOutcome.FAILED, {}, error_text(exc))))
            return self._result(action, group, ActionOutcome.FAILED, error_text(exc))
        after_key = "suspended" if action == SUSPEND else "resumed"
        self.journal(entry.model_copy(update=self._final(ActionOutcome.DONE, {after_key: processes})))
        return self._result(action, group, ActionOutcome.DONE, ", ".join(processes))

    def _final(self, outcome: ActionOutcome, after: dict[str, Any], error: str | None = None) -> dict[str, Any]:
        return {"outcome": outcome, "at": self.clock(), "after": after, "error": error}


def _suspended(group: dict[str, Any]) -> set[str]:
    return {str(p.get("ProcessName")) for p in group.get("SuspendedProcesses", [])}
