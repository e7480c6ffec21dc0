"""The typed objects that flow down the pipeline: Instance, Finding, Action results, RunReport."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

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


ACCOUNT_ID = re.compile(r"[0-9]{12}")  # ASCII digits only: str.isdigit() also accepts other scripts' digits

# The scope fields an exception can narrow, with the CLI option that sets each one.
SCOPE_FIELDS: dict[str, str] = {
    "account_id": "--account",
    "region": "--region",
    "resource_id": "--resource-id",
    "check": "--check",
    "item": "--item",
}


class ExceptionRule(BaseModel):
    """An exception: a kind plus a scope (omitted fields match everything), a reason, an owner, an optional expiry.

    A rule can never cover everything by accident: it needs a non-blank reason and at least one scope field, or
    `organization_wide=True` (and then no scope field). `check` and `item` narrow snoozes only (nothing else is
    matched by them). `organization_wide=None` means a row stored before the field existed: it is honoured as it
    was written, and one without any scope reports `legacy_unscoped` (and `covers_organization`) so that
    `exceptions list`, the audit and the guard can flag it. Validating with `context={"strict_scope": True}` (for
    new input, e.g. a config file) refuses a missing `organization_wide` too.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: ExceptionKind
    account_id: str | None = None
    region: str | None = None
    resource_id: str | None = None
    check: str | None = None
    item: str | None = None
    organization_wide: bool | None = None
    reason: str
    owner: str
    created_at: datetime
    expires_at: datetime | None = None
    # Where the rule lives: "store" (exceptions add), or the config entry it comes from. Never stored.
    source: str = Field(default="store", exclude=True)

    @model_validator(mode="after")
    def _scope_is_deliberate(self, info: ValidationInfo) -> ExceptionRule:
        strict = bool(info.context and info.context.get("strict_scope"))
        if self.organization_wide is None and not strict:
            return self  # a row from before scopes were required: honoured, flagged by legacy_unscoped
        problems = self.scope_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def scope_problems(self) -> list[str]:
        """Why this rule is not deliberate enough to be accepted as new input (empty when it is)."""
        problems: list[str] = []
        if not self.reason.strip():
            problems.append("the reason must not be blank: say why the exception exists")
        for name, option in SCOPE_FIELDS.items():
            value = getattr(self, name)
            if value is not None and not value.strip():
                problems.append(f"{option} must not be blank")
        if self.account_id is not None and not ACCOUNT_ID.fullmatch(self.account_id):
            problems.append(f"the account must be 12 digits 0-9, got {self.account_id!r}")
        if self.kind is not ExceptionKind.SNOOZE and (self.check is not None or self.item is not None):
            problems.append(f"--check and --item narrow snoozes only: a {self.kind.value} exception ignores them")
        scoped = sorted(SCOPE_FIELDS[name] for name in self.scope)
        if self.organization_wide is None:
            problems.append("say whether the exception is organization-wide (organization_wide: true or false)")
        elif self.organization_wide and scoped:
            problems.append(f"an organization-wide exception takes no scope, got {', '.join(scoped)}")
        elif not self.organization_wide and not scoped:
            problems.append(
                "an exception needs a scope (--account, --region, --resource-id, --check or --item), "
                "or --organization-wide to cover every account and region"
            )
        return problems

    @property
    def scope(self) -> dict[str, str]:
        """The scope fields that are set (field name -> value)."""
        return {name: value for name in SCOPE_FIELDS if (value := getattr(self, name)) is not None}

    @property
    def legacy_unscoped(self) -> bool:
        """A row stored before scopes were required, with no scope at all: it covers the whole organization."""
        return self.organization_wide is None and not self.scope

    @property
    def covers_organization(self) -> bool:
        """True if the rule applies in every account and region (deliberately, or as a legacy unscoped row)."""
        return bool(self.organization_wide) or self.legacy_unscoped

    @property
    def covers_account(self) -> bool:
        """True if the rule applies to a whole account: an account, but no region and no resource."""
        return self.account_id is not None and self.region is None and self.resource_id is None

    @property
    def breadth(self) -> str | None:
        """What a broad rule covers, for warnings ("the whole organization", "all of account ..."), else None."""
        if self.covers_organization:
            return "the whole organization" + (" (stored without any scope)" if self.legacy_unscoped else "")
        if self.covers_account:
            return f"all of account {self.account_id}"
        return None

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
        """True if this active rule of `kind` covers the given resource (an omitted scope field matches all).

        Lockout-exempt resource ids are IAM user or role names, which IAM compares case-insensitively.
        """
        if self.kind is not kind or not self.active(now):
            return False
        if kind is ExceptionKind.LOCKOUT_EXEMPT and self.resource_id is not None and resource_id is not None:
            if self.resource_id.lower() != resource_id.lower():
                return False
            resource_id = self.resource_id
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

    def broad(self, kinds: Collection[ExceptionKind] | None = None) -> list[ExceptionRule]:
        """The active rules (of `kinds`, default all) that cover a whole account or the whole organization."""
        return [r for r in self.rules if (kinds is None or r.kind in kinds) and r.breadth is not None]


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
