"""Owner attribution: who each instance finding of the tag audit belongs to, and how that was found.

Each finding gets `details.owner` and `details.owner_source`:

- `tag`: the `created_by` tag (`audit.created_by_tag`) names an IAM user of the instance's account;
- `cloudtrail`: the principal of the RunInstances event that created the instance (collect/cloudtrail.py),
  remembered in the state store (records of kind `owner`) so an instance is looked up once;
- `unknown`: neither, with `details.owner_reason` saying why (no event in the 90-day history, the lookup budget
  spent, throttled past the retries, access denied, lookup turned off).

An attribution never fails the target: every error becomes an `unknown` owner with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..collect.cloudtrail import Budget, BudgetSpent, Launcher, find_launchers, outside_history
from ..config import OwnersConfig
from ..model import Finding, Instance, Target
from ..state import StateStore, VersionConflict

log = logging.getLogger(__name__)

KIND = "owner"  # state store records: one per instance whose launcher CloudTrail named
UNKNOWN = "unknown"


def cache_key(account_id: str, region: str, instance_id: str) -> str:
    return f"{account_id}#{region}#{instance_id}"


@dataclass
class OwnerStats:
    """What attribution cost in one target (summed into the run's summary)."""

    by_source: dict[str, int] = field(default_factory=dict)
    lookup_calls: int = 0
    cache_hits: int = 0

    def add(self, other: OwnerStats) -> None:
        for source, n in other.by_source.items():
            self.by_source[source] = self.by_source.get(source, 0) + n
        self.lookup_calls += other.lookup_calls
        self.cache_hits += other.cache_hits


@dataclass
class OwnerResolver:
    """Attributes the instance findings of one target (called from the audit, per target)."""

    config: OwnersConfig
    created_by_tag: str
    store: StateStore
    # The target's CloudTrail client, made only when a lookup is needed.
    cloudtrail: Callable[[Target], Any]
    monotonic: Callable[[], float] = time.monotonic

    def annotate(
        self,
        target: Target,
        findings: list[Finding],
        instances: dict[str, Instance],
        iam_users: Collection[str] | None,
        now: datetime,
        users_error: str | None = None,
    ) -> OwnerStats:
        stats = OwnerStats()
        pending: dict[str, list[Finding]] = {}
        why_not_tag: dict[str, str] = {}
        for finding in findings:
            instance = instances.get(finding.resource_id)
            if instance is None or finding.resource_type != "AwsEc2Instance":
                continue
            creator = instance.tags.get(self.created_by_tag, "").strip()
            if creator and iam_users is not None and creator in iam_users:
                _set(finding, creator, "tag", {"owner_type": "IAMUser"})
                continue
            if not creator:
                why_not_tag[instance.id] = f"no {self.created_by_tag} tag"
            elif iam_users is None:
                why_not_tag[instance.id] = f"IAM users could not be listed ({users_error or 'unknown error'})"
            else:
                why_not_tag[instance.id] = f"{self.created_by_tag}={creator!r} is no IAM user of this account"
            pending.setdefault(instance.id, []).append(finding)

        launches = {i: instances[i].launch_time for i in pending}
        need: dict[str, datetime] = {}
        reasons: dict[str, str] = {}
        for instance_id in sorted(pending):
            cached = self.store.get_record(KIND, cache_key(target.account_id, target.region, instance_id))
            if cached is not None:
                data = cached[0]
                stats.cache_hits += 1
                for finding in pending[instance_id]:
                    _set(finding, str(data["owner"]), "cloudtrail", dict(data.get("details") or {}))
                continue
            if not self.config.cloudtrail:
                reasons[instance_id] = "CloudTrail lookup is off (audit.owners.cloudtrail: false)"
            else:
                need[instance_id] = launches[instance_id]
        for instance_id in outside_history(need, now):
            reasons[instance_id] = "launched before CloudTrail's 90-day event history"
            del need[instance_id]

        found: dict[str, Launcher] = {}
        if need:
            budget = Budget(self.config.max_calls, self.config.max_seconds, clock=self.monotonic)
            failure: str | None = None
            try:
                found = find_launchers(self.cloudtrail(target), need, now, budget, walk_over=self.config.walk_over)
            except BudgetSpent as exc:
                failure = str(exc.args[0])
                found = exc.args[1] if len(exc.args) > 1 else {}
            except ClientError as exc:
                error = exc.response.get("Error", {})
                failure = f"CloudTrail LookupEvents failed: {error.get('Code', 'error')}: {error.get('Message', '')}"
            except BotoCoreError as exc:
                failure = f"CloudTrail LookupEvents failed: {type(exc).__name__}: {exc}"
            stats.lookup_calls = budget.calls
            if failure is not None:
                log.warning("%s: owner lookup: %s", target, failure)
            for instance_id in need:
                launcher = found.get(instance_id)
                if launcher is not None:
                    self._remember(target, instance_id, launcher)
                    for finding in pending[instance_id]:
                        _set(finding, launcher.owner, "cloudtrail", launcher.details())
                else:
                    reasons[instance_id] = failure or "no RunInstances event names it in CloudTrail's event history"
        for instance_id, reason in reasons.items():
            for finding in pending[instance_id]:
                _set(finding, UNKNOWN, UNKNOWN, {"owner_reason": f"{why_not_tag[instance_id]}; {reason}"})

        for finding in findings:
            source = finding.details.get("owner_source")
            if source is not None:
                stats.by_source[str(source)] = stats.by_source.get(str(source), 0) + 1
        return stats

    def _remember(self, target: Target, instance_id: str, launcher: Launcher) -> None:
        key = cache_key(target.account_id, target.region, instance_id)
        data = {"owner": launcher.owner, "details": launcher.details()}
        # A conflict: another run remembered it meanwhile (the same event, the same owner).
        with contextlib.suppress(VersionConflict):
            self.store.put_record(KIND, key, data, expected_version=None)


def _set(finding: Finding, owner: str, source: str, extra: dict[str, Any]) -> None:
    finding.details["owner"] = owner
    finding.details["owner_source"] = source
    finding.details.update(extra)
