"""The typed objects that flow down the pipeline: Instance, Finding, Action results, RunReport."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RUN_SCHEMA = "fleetwarden.run/v1"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock the core reads; tests inject their own)."""
    return datetime.now(UTC)


class Severity(StrEnum):
    """Finding severities, high to low."""

    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    INFORMATIONAL = "INFORMATIONAL"

    @property
    def rank(self) -> int:
        """Higher is more severe (INFORMATIONAL=0 ... CRITICAL=4)."""
        return list(reversed(Severity)).index(self)


class FindingStatus(StrEnum):
    NEW = "new"
    ONGOING = "ongoing"
    RESOLVED = "resolved"
    SUPPRESSED = "suppressed"


class ActionOutcome(StrEnum):
    PLANNED = "planned"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class TargetStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"


class ExceptionKind(StrEnum):
    """What an exception rule affects (DESIGN.md "Exceptions")."""

    SNOOZE = "snooze"
    DO_NOT_START = "do-not-start"
    DO_NOT_STOP = "do-not-stop"
    DO_NOT_TERMINATE = "do-not-terminate"
    LOCKOUT_EXEMPT = "lockout-exempt"


@dataclass(frozen=True, slots=True)
class Target:
    """One (account, region) pair the tool works on."""

    account_id: str
    region: str

    def __str__(self) -> str:
        return f"{self.account_id}/{self.region}"


@dataclass(frozen=True, slots=True)
class Instance:
    """An EC2 instance, normalized from DescribeInstances."""

    id: str
    account_id: str
    region: str
    state: str
    instance_type: str
    launch_time: datetime
    tags: dict[str, str] = field(default_factory=dict)
    volume_ids: tuple[str, ...] = ()
    asg_name: str | None = None
    lifecycle: str = "on-demand"
    root_device_type: str = "ebs"
    spot_request_id: str | None = None

    def age(self, now: datetime) -> timedelta:
        return now - self.launch_time


@dataclass(frozen=True, slots=True)
class IamUser:
    """An IAM user of one account (for `created_by` checks and the guard's lockout)."""

    account_id: str
    name: str
    arn: str
    user_id: str = ""


def finding_id(check: str, account_id: str, region: str, resource_id: str, control: str) -> str:
    """Stable finding id: sha256 of the identifying fields joined with a separator no field contains."""
    raw = "|".join((check, account_id, region, resource_id, control))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class Finding(BaseModel):
    """One finding per (check, account, region, resource, control), with its lifecycle."""

    model_config = ConfigDict(extra="forbid")

    id: str
    check: str
    account_id: str
    region: str
    resource_id: str
    resource_type: str = "AwsEc2Instance"
    control: str
    severity: Severity = Severity.MEDIUM
    title: str
    status: FindingStatus = FindingStatus.NEW
    first_seen: datetime
    last_seen: datetime
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        check: str,
        account_id: str,
        region: str,
        resource_id: str,
        control: str,
        title: str,
        now: datetime,
        severity: Severity = Severity.MEDIUM,
        resource_type: str = "AwsEc2Instance",
        details: dict[str, Any] | None = None,
    ) -> Finding:
        return cls(
            id=finding_id(check, account_id, region, resource_id, control),
            check=check,
            account_id=account_id,
            region=region,
            resource_id=resource_id,
            resource_type=resource_type,
            control=control,
            severity=severity,
            title=title,
            status=FindingStatus.NEW,
            first_seen=now,
            last_seen=now,
            details=details or {},
        )


class ActionResult(BaseModel):
    """What happened (or would happen) to one resource."""

    action: str
    account_id: str
    region: str
    resource_id: str
    outcome: ActionOutcome
    reason: str = ""


class TargetResult(BaseModel):
    account_id: str
    region: str
    status: TargetStatus = TargetStatus.OK
    error: str | None = None


class Delivery(BaseModel):
    sink: str
    outcome: Literal["sent", "failed", "skipped"]
    error: str | None = None


class RunReport(BaseModel):
    """The result of one workflow run (`"schema": "fleetwarden.run/v1"`)."""

    schema_: str = Field(default=RUN_SCHEMA, alias="schema")
    run_id: str
    workflow: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    targets: list[TargetResult] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    actions: list[ActionResult] = Field(default_factory=list)
    deliveries: list[Delivery] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ExceptionRule(BaseModel):
    """An exception: a kind plus a scope (omitted fields match everything), an owner and an optional expiry."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: ExceptionKind
    account_id: str | None = None
    region: str | None = None
    resource_id: str | None = None
    check: str | None = None
    item: str | None = None
    reason: str
    owner: str
    created_at: datetime
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def matches(
        self,
        kind: ExceptionKind,
        *,
        now: datetime,
        account_id: str | None = None,
        region: str | None = None,
        resource_id: str | None = None,
        check: str | None = None,
        item: str | None = None,
    ) -> bool:
        """True if this active rule of `kind` covers the given resource (an omitted scope field matches all)."""
        if self.kind is not kind or not self.active(now):
            return False
        pairs = (
            (self.account_id, account_id),
            (self.region, region),
            (self.resource_id, resource_id),
            (self.check, check),
            (self.item, item),
        )
        return all(scope is None or scope == value for scope, value in pairs)


class ExceptionSet:
    """The active exceptions of a run, queried by kind and resource."""

    def __init__(self, rules: list[ExceptionRule], now: datetime) -> None:
        self.now = now
        self.rules = [r for r in rules if r.active(now)]

    def find(self, kind: ExceptionKind, **scope: str | None) -> ExceptionRule | None:
        for rule in self.rules:
            if rule.matches(kind, now=self.now, **scope):
                return rule
        return None


class JournalEntry(BaseModel):
    """One mutation, recorded before it is made (outcome `planned`) and after (done/failed)."""

    id: str
    run_id: str
    workflow: str
    account_id: str
    region: str
    resource_id: str
    action: str
    outcome: ActionOutcome
    at: datetime
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


_DURATION = re.compile(r"^(\d+)([mhdw])$")


def parse_expiry(text: str, now: datetime) -> datetime:
    """`2027-01-31`, an ISO timestamp, or a duration such as `7d`, `12h`, `30m`, `2w` from now."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}
        return now + delta.get(unit, timedelta(weeks=amount))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expiry {text!r} is neither a date (2027-01-31), a timestamp, nor a duration (7d, 12h, 30m)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
