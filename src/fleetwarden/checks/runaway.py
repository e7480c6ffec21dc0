"""The runaway check: instance counts and spend readings against the guard's limits -> trips (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, GuardConfig
from ..model import Finding, Severity
from . import Check, check_registry

CONTROL = "runaway-guard"


@dataclass(frozen=True)
class Trigger:
    """One reason an account trips: what was measured, the figure and the limit it passed."""

    kind: str  # "count" | "org-count" | "spend"
    value: float
    limit: float
    source: str | None = None  # the spend source
    detail: str = ""

    def describe(self) -> str:
        if self.kind == "count":
            return f"{int(self.value)} running+pending instances > limit {int(self.limit)}"
        if self.kind == "org-count":
            return f"{int(self.value)} running+pending instances in the organization > limit {int(self.limit)}"
        return f"spend ${self.value:,.2f} ({self.source}) > limit ${self.limit:,.2f}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "limit": self.limit,
            "source": self.source,
            "detail": self.detail,
            "text": self.describe(),
        }


@dataclass
class Limits:
    """The limits in force for one account (per-account overrides applied)."""

    max_running: int | None
    max_usd: float | None


def limits_for(config: Config, account_id: str) -> Limits:
    guard = config.guard
    max_running = guard.max_running_instances
    max_usd = guard.spend.max_usd if guard.spend else None
    account = config.account(account_id)
    if account is not None and account.guard is not None:
        if account.guard.max_running_instances is not None:
            max_running = account.guard.max_running_instances
        if account.guard.spend_max_usd is not None:
            max_usd = account.guard.spend_max_usd
    return Limits(max_running, max_usd)


def count_trigger(config: Config, account_id: str, running: int) -> Trigger | None:
    """A count trip: running + pending strictly greater than the account's limit."""
    limit = limits_for(config, account_id).max_running
    if limit is not None and running > limit:
        return Trigger("count", running, limit)
    return None


def org_trigger(config: Config, running_by_account: Mapping[str, int]) -> Trigger | None:
    limit = config.guard.max_running_instances_org
    total = sum(running_by_account.values())
    if limit is not None and total > limit:
        return Trigger("org-count", total, limit)
    return None


def spend_triggers(config: Config, account_id: str, readings: Sequence[tuple[str, float, str]]) -> list[Trigger]:
    """Spend trips: any source whose reading (source, usd, detail) is over the account's limit."""
    limit = limits_for(config, account_id).max_usd
    if limit is None:
        return []
    return [Trigger("spend", usd, limit, source, detail) for source, usd, detail in readings if usd > limit]


@dataclass
class Evaluation:
    """Per account: the figures measured and the triggers that fired."""

    running: dict[str, int] = field(default_factory=dict)
    spend: dict[str, list[tuple[str, float, str]]] = field(default_factory=dict)
    triggers: dict[str, list[Trigger]] = field(default_factory=dict)

    def add(self, account_id: str, trigger: Trigger | None) -> None:
        if trigger is not None:
            self.triggers.setdefault(account_id, []).append(trigger)

    @property
    def tripped(self) -> set[str]:
        return {a for a, t in self.triggers.items() if t}


@check_registry.register("runaway")
class RunawayCheck(Check):
    """An account (or the organization) runs more instances, or spends more, than the guard allows."""

    name = "runaway"
    config_model = GuardConfig
    default_severity = Severity.CRITICAL
    permissions = ("ec2:DescribeInstances",)
    remediation = "Find out who started the instances; `fleetwarden guard release --account ID` once it is safe."

    @staticmethod
    def finding(account_id: str, triggers: Sequence[Trigger], now: Any) -> Finding:
        """One finding per tripped account, listing every trigger that fired."""
        return Finding.create(
            check="runaway",
            account_id=account_id,
            region="global",
            resource_id=account_id,
            resource_type="AwsAccount",
            control=CONTROL,
            title=f"account {account_id} tripped the runaway guard: " + "; ".join(t.describe() for t in triggers),
            now=now,
            severity=Severity.CRITICAL,
            details={"triggers": [t.as_dict() for t in triggers]},
        )
