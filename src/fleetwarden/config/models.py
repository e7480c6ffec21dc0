"""The config's pydantic models (`extra="forbid"` everywhere) and the validators of its values."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
import reprlib
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import regex
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..model import ExceptionKind, ExceptionRule, Severity

# ASCII only and whole-string (fullmatch): `\d` would also accept other scripts' digits (e.g. Arabic-Indic), and
# `$` accepts a trailing newline.
ACCOUNT_ID = re.compile(r"[0-9]{12}")
REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]")
SECRET_REF = re.compile(r"(ssm:/\S+|secretsmanager:\S+|env:[A-Za-z_][A-Za-z0-9_]*)", re.ASCII)
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/[\w+=,.@/-]+", re.ASCII)


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlong = 40
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """A bounded repr for messages: a 1 MB string or a deeply nested value takes a few dozen characters."""
    try:
        return _SHOWN.repr(value)
    except ValueError:  # an integer past Python's int-to-str digit limit
        return "<a number too large to show>"


def _account_id(value: str) -> str:
    if not ACCOUNT_ID.fullmatch(value):
        raise ValueError(f"an AWS account id is 12 digits (ASCII 0-9), got {shown(value)}")
    return value


@functools.cache
def known_regions() -> frozenset[str]:
    """Every region of every partition botocore knows (partitions.json), without the `*-global` pseudo-regions."""
    import botocore
    import botocore.loaders

    data = botocore.loaders.create_loader().load_data("partitions")
    return frozenset(
        name for partition in data["partitions"] for name in partition["regions"] if not name.endswith("-global")
    )


def partition_regions(region: str) -> frozenset[str]:
    """The regions of the partition `region` belongs to (aws, aws-cn, aws-us-gov, ...); empty if none knows it."""
    import botocore.loaders

    data = botocore.loaders.create_loader().load_data("partitions")
    for partition in data["partitions"]:
        if region in partition["regions"]:
            return frozenset(name for name in partition["regions"] if not name.endswith("-global"))
    return frozenset()


def _region(value: str) -> str:
    if value in known_regions():
        return value
    if not REGION.fullmatch(value):
        raise ValueError(f"not an AWS region name: {shown(value)} (expected e.g. us-east-1)")
    import botocore

    close = difflib.get_close_matches(value, sorted(known_regions()), n=1, cutoff=0.6)
    hint = f" - did you mean {close[0]}?" if close else ""
    raise ValueError(
        f"unknown AWS region {value!r}{hint} (botocore {botocore.__version__} knows no region of that name; if the "
        "region is newer than that botocore, upgrade it)"
    )


def _secret_ref(value: str) -> str:
    # Never echo the value: a literal here is most likely the secret itself.
    if not SECRET_REF.fullmatch(value):
        raise ValueError(
            "secrets must be references, never literals: use ssm:/path (SecureString), secretsmanager:NAME or env:VAR"
        )
    return value


def _role_arn(value: str) -> str:
    if not ROLE_ARN.fullmatch(value):
        raise ValueError(
            f"not an IAM role ARN: {shown(value)} (expected arn:aws:iam::123456789012:role/NAME, 12 ASCII digits)"
        )
    return value


def endpoint_url_problem(value: str) -> str | None:
    """What is wrong with an AWS endpoint override (`aws.endpoint_url`, `AWS_ENDPOINT_URL`), or None if it is usable.

    The value is not echoed: an endpoint URL can carry credentials (`https://user:pass@host`)."""
    expected = "expected an http:// or https:// URL with a host, e.g. http://127.0.0.1:5000 or https://ec2.example.com"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"contains whitespace or control characters; {expected}"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        return f"not a URL; {expected}"
    if parts.scheme not in ("http", "https"):
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"{scheme}: {expected}"
    if not parts.hostname:
        return f"no host: {expected}"
    if parts.username is not None or parts.password is not None:
        return "put no credentials in the endpoint URL (credentials come from the AWS credential chain)"
    if port == 0:
        return f"port 0: {expected}"
    return None


def _endpoint_url(value: str) -> str:
    problem = endpoint_url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class _Secret:
    """Annotation marker of a secret-typed field: errors never show its value."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _Secret()
AccountId = Annotated[str, AfterValidator(_account_id)]
Region = Annotated[str, AfterValidator(_region)]
SecretRef = Annotated[str, AfterValidator(_secret_ref), SECRET]
RoleArn = Annotated[str, AfterValidator(_role_arn)]
EndpointUrl = Annotated[str, AfterValidator(_endpoint_url)]

# Sane maxima for every number, so an absurd value (1e30, a 5,000-digit integer, .inf) is a config error instead of
# an OverflowError at run time or a guard that silently never trips. Integers are strict: 45.0 or "45" is an error.
MINUTES_PER_YEAR = 525_600
MAX_INSTANCES = 10_000_000
MAX_USD = 1e12


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors."""

    # pydantic's own rendering (str(ValidationError)) shows no input values: a mistyped secret is never echoed.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class AwsSettings(StrictModel):
    # A named profile of the AWS config files (as `aws --profile`); None: the default chain (AWS_PROFILE, ...).
    profile: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\w+=,.@:/-]+$")
    endpoint_url: EndpointUrl | None = None
    max_attempts: int = Field(default=8, strict=True, ge=1, le=30)
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    max_concurrency: int = Field(default=32, strict=True, ge=1, le=512)
    connect_timeout: float = Field(default=5.0, strict=True, gt=0, le=300, allow_inf_nan=False)
    read_timeout: float = Field(default=30.0, strict=True, gt=0, le=900, allow_inf_nan=False)
    sts_region: Region = "us-east-1"


class GuardOverrides(StrictModel):
    """Per-account overrides of guard settings."""

    max_running_instances: int | None = Field(default=None, strict=True, ge=0, le=MAX_INSTANCES)
    spend_max_usd: float | None = Field(default=None, strict=True, ge=0, le=MAX_USD, allow_inf_nan=False)


class AccountConfig(StrictModel):
    id: AccountId
    name: str | None = None
    role_arn: RoleArn | None = None
    external_id: str | None = None
    guard: GuardOverrides | None = None

    @field_validator("role_arn")
    @classmethod
    def _role_in_this_account(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A role of another account would act there while every result is labelled with this entry's id.
        match = ROLE_ARN.fullmatch(value) if value else None
        account = info.data.get("id")
        if match and account and match.group(1) != account:
            raise ValueError(f"the role is in account {match.group(1)}, not in this entry's account {account}")
        return value


class OrganizationConfig(StrictModel):
    role_name: str = "FleetWarden"
    external_id: str | None = None
    include_management_account: bool = True


class CanaryConfig(StrictModel):
    """A per-region canary: an instance with these tags (`{region}` is substituted) must exist."""

    tags: dict[str, str] = Field(min_length=1)


def _check_tag_rule(key: str, rule: list[str] | str) -> list[str] | str:
    if isinstance(rule, str):
        if not rule.startswith("re:"):
            raise ValueError(f"tag_values.{key}: a string rule must be a 're:' pattern, or use a list of values")
        try:
            regex.compile(rule[3:])  # the engine the tag check matches with (re's syntax, plus a timeout)
        except (regex.error, re.error) as exc:
            raise ValueError(f"tag_values.{key}: bad regex {rule[3:]!r}: {exc}") from None
    elif not rule:
        raise ValueError(f"tag_values.{key}: the list of allowed values is empty")
    return rule


Port = Annotated[int, Field(strict=True, ge=0, le=65535)]
# SQL Server, Oracle, MySQL, PostgreSQL, CouchDB, Cassandra, InfluxDB, Elasticsearch/OpenSearch, Memcached, MongoDB.
DATABASE_PORTS = [1433, 1521, 3306, 5432, 5984, 6379, 7000, 7001, 8086, 9042, 9200, 9300, 11211, 27017, 27018]


class ExposureConfig(StrictModel):
    """The network exposure check (`check: exposure`): which instances the internet can reach, on which ports."""

    enabled: bool = False
    # Every port of a protocol open (protocol -1, or 0-65535).
    all_ports: Severity = Severity.CRITICAL
    high_ports: list[Port] = Field(default_factory=lambda: [22, 3389, *DATABASE_PORTS])
    high: Severity = Severity.HIGH
    informational_ports: list[Port] = Field(default_factory=lambda: [80, 443])
    informational: Severity = Severity.INFORMATIONAL
    other: Severity = Severity.MEDIUM
    # Also read Amazon Inspector's NETWORK_REACHABILITY findings and say where they and the check disagree.
    compare_inspector: bool = False


EMAIL = re.compile(r"[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>.]+", re.ASCII)
SLACK_USER = re.compile(r"(slack:)?([UW][A-Z0-9]{8,})", re.ASCII)
RULE_FIELDS = frozenset({"user", "role"})


def contact_kind(value: str) -> Literal["email", "slack"] | None:
    """What a contact is: an email address, a Slack user id (`U0123ABCD`, or `slack:U0123ABCD`), or neither."""
    if SLACK_USER.fullmatch(value):
        return "slack"
    if EMAIL.fullmatch(value):
        return "email"
    return None


class OwnerNotifyConfig(StrictModel):
    """Owner notifications: one digest per owner per day, to the owner's contact (email or Slack direct message)."""

    # An `email` sink (its relay and sender; the owner's address replaces `to`) and a `slack` sink (its token and
    # api_url; a direct message replaces the channel). A contact of a kind without its sink goes to the fallback.
    email_sink: str | None = None
    slack_sink: str | None = None
    # Sinks that receive the digest of the owners without a contact (unknown owners included).
    fallback: list[str] = Field(default_factory=list)
    # Where a contact comes from, first match wins: `contacts` (owner, or an assumed role's role -> contact), the
    # IAM user's tag `contact_tag` (iam:ListUserTags), then `address_rule` (`{user}@example.com`).
    contacts: dict[str, str] = Field(default_factory=dict)
    contact_tag: str | None = Field(default=None, min_length=1, max_length=128)
    address_rule: str | None = None
    # A directory whose templates (owner_digest.txt.j2, owner_digest_subject.txt.j2) replace the shipped ones.
    templates_dir: str | None = None

    @field_validator("contacts")
    @classmethod
    def _contacts(cls, value: dict[str, str]) -> dict[str, str]:
        for owner, contact in value.items():
            if contact_kind(contact) is None:
                raise ValueError(
                    f"contacts.{owner}: {shown(contact)} is neither an email address nor a Slack user id (U0123ABCD)"
                )
        return value

    @field_validator("address_rule")
    @classmethod
    def _rule(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = set(re.findall(r"\{([^{}]*)\}", value))
        if "user" not in fields or fields - RULE_FIELDS:
            raise ValueError(f"address_rule needs {{user}} and knows only {{user}} and {{role}}, got {shown(value)}")
        if contact_kind(value.replace("{user}", "alice").replace("{role}", "role")) != "email":
            raise ValueError(f"address_rule must make an email address, as in {{user}}@example.com, got {shown(value)}")
        return value


class OwnersConfig(StrictModel):
    """Owner attribution of tag findings: the created_by tag naming an IAM user, else CloudTrail's RunInstances."""

    enabled: bool = True
    cloudtrail: bool = True  # look up the RunInstances event when the tag names no IAM user
    # Per target: LookupEvents allows 2 requests per second per account and region; past these, owners are unknown.
    max_calls: int = Field(default=10, strict=True, ge=1, le=1000)
    max_seconds: float = Field(default=20.0, strict=True, gt=0, le=900, allow_inf_nan=False)
    # Up to this many instances to look up in a target: one ResourceName lookup each; more: one RunInstances walk.
    walk_over: int = Field(default=1, strict=True, ge=0, le=1000)
    notify: OwnerNotifyConfig | None = None


class AuditConfig(StrictModel):
    """The tag audit (`check: tags`) and what to do with violators."""

    required_tags: list[str] = Field(default_factory=lambda: ["created_by", "department", "project"])
    tag_values: dict[str, list[str] | str] = Field(default_factory=dict)
    created_by_tag: str = "created_by"
    created_by_must_be_iam_user: bool = False
    grace_minutes: int = Field(default=45, strict=True, ge=0, le=MINUTES_PER_YEAR)
    action: Literal["report", "stop", "terminate"] = "report"
    snapshot_before_terminate: bool = True
    override_stop_protection: bool = False
    max_actions: int = Field(default=100, strict=True, ge=0, le=MAX_INSTANCES)
    severity: Severity = Severity.MEDIUM
    canary: CanaryConfig | None = None
    notify: list[str] = Field(default_factory=list)
    exposure: ExposureConfig = Field(default_factory=ExposureConfig)
    # Notice before action: the first run marks a violator; the action applies only after this many days.
    notice_days: float = Field(default=0, strict=False, ge=0, le=365, allow_inf_nan=False)
    notice_tag: str = "fleetwarden:action-after"

    @field_validator("notice_tag")
    @classmethod
    def _tag_key(cls, key: str) -> str:
        if not key.strip() or len(key) > 128 or key.lower().startswith("aws:"):
            raise ValueError("must be a tag key of 1 to 128 characters, not starting with aws:")
        return key

    @model_validator(mode="after")
    def _notice_needs_an_action(self) -> AuditConfig:
        if self.notice_days and self.action == "report":
            raise ValueError("notice_days gives notice before an action: set audit.action to stop or terminate")
        if self.notice_tag in self.required_tags:
            raise ValueError(f"notice_tag {self.notice_tag!r} is also a required tag")
        return self

    owners: OwnersConfig = Field(default_factory=OwnersConfig)

    @field_validator("required_tags")
    @classmethod
    def _no_blank_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key.strip():
                raise ValueError("a required tag key is empty")
        return keys

    @field_validator("tag_values")
    @classmethod
    def _rules(cls, rules: dict[str, list[str] | str]) -> dict[str, list[str] | str]:
        return {key: _check_tag_rule(key, rule) for key, rule in rules.items()}


class SpendSource(StrictModel):
    type: Literal["burn-rate", "cloudwatch", "cost-explorer", "cur"]
    bucket: str | None = None
    prefix: str | None = None
    price_file: str | None = None


class BillingAccount(StrictModel):
    role_arn: RoleArn | None = None
    external_id: str | None = None


SpendSourceSpec = SpendSource | Literal["burn-rate", "cloudwatch", "cost-explorer"]


def _default_sources() -> list[SpendSourceSpec]:
    return ["burn-rate"]


class SpendConfig(StrictModel):
    max_usd: float = Field(strict=True, ge=0, le=MAX_USD, allow_inf_nan=False)
    window_hours: float = Field(default=6, strict=True, gt=0, le=24 * 31, allow_inf_nan=False)
    sources: list[SpendSourceSpec] = Field(default_factory=_default_sources)
    billing_account: BillingAccount | None = None


class SpendReportSource(StrictModel):
    """Where the spend report reads daily cost: Cost Explorer, or a CUR 2.0 data export (gzip CSV) in S3."""

    type: Literal["cost-explorer", "cur"]
    bucket: str | None = None
    prefix: str | None = None

    @model_validator(mode="after")
    def _cur_needs_a_bucket(self) -> SpendReportSource:
        if self.type == "cur" and not self.bucket:
            raise ValueError("a cur source needs `bucket:` (and `prefix:`) of the CUR 2.0 data export")
        if self.type == "cost-explorer" and (self.bucket or self.prefix):
            raise ValueError("bucket and prefix go with type: cur")
        return self


class SpendReportConfig(StrictModel):
    """`fleetwarden spend report` (docs/spend.md "Spend report"): cost by day and service per account for the month
    so far, its annualised run rate and the largest changes against the same days of the previous month."""

    source: SpendReportSource | Literal["cost-explorer", "cur"] = "cost-explorer"
    notify: list[str] = Field(default_factory=list)
    # The payer account's billing role; default: guard.spend.billing_account, else the current credentials.
    billing_account: BillingAccount | None = None
    top_changes: int = Field(default=10, strict=True, ge=1, le=100)
    min_change_usd: float = Field(default=1.0, strict=False, ge=0, le=MAX_USD, allow_inf_nan=False)

    @property
    def source_spec(self) -> SpendReportSource:
        if isinstance(self.source, SpendReportSource):
            return self.source
        if self.source == "cur":
            raise ValueError("a cur source needs `bucket:` (and `prefix:`): write source: {type: cur, bucket: B}")
        return SpendReportSource(type=self.source)

    @field_validator("source")
    @classmethod
    def _cur_as_a_mapping(cls, value: Any) -> Any:
        if value == "cur":
            raise ValueError("a cur source needs `bucket:` (and `prefix:`): write source: {type: cur, bucket: B}")
        return value


class LockoutConfig(StrictModel):
    mode: Literal["deactivate", "delete", "off"] = "deactivate"
    exempt_users: list[str] = Field(default_factory=list)
    exempt_roles: list[str] = Field(default_factory=list)
    revoke_role_sessions: list[str] = Field(default_factory=list)


class HeartbeatConfig(StrictModel):
    """The guard's "all quiet" message: at most once every `every_hours`, from a run that tripped nothing, so that
    silence is never mistaken for safety (docs/guard.md, "Heartbeat")."""

    enabled: bool = False
    every_hours: int = Field(default=24, strict=True, ge=1, le=24 * 31)
    # None: the guard's own `notify` sinks.
    sinks: list[str] | None = None
    # How many accounts the message lists by running instances (the total always counts them all).
    top: int = Field(default=10, strict=True, ge=1, le=100)


POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(iam|sts)::([0-9]{12}|\*):[\w+=,.@/*-]+", re.ASCII)


class QuarantineConfig(StrictModel):
    """The guard's quarantine SCP (docs/guard.md "Containment"): off unless enabled."""

    enabled: bool = False
    policy_name: str = "fleetwarden-quarantine"
    # The management account's (or Organizations' delegated administrator's) role; None: the current credentials.
    role_arn: RoleArn | None = None
    external_id: str | None = None
    # Break-glass principals the policy never denies (IAM role or user ARNs; `*` allowed as in aws:PrincipalArn).
    exempt_principals: list[str] = Field(default_factory=list)

    @field_validator("policy_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POLICY_NAME.fullmatch(value):
            raise ValueError("must be 1 to 128 of letters, digits and +=,.@_-")
        return value

    @field_validator("exempt_principals")
    @classmethod
    def _principals(cls, values: list[str]) -> list[str]:
        for value in values:
            if not PRINCIPAL_ARN.fullmatch(value):
                raise ValueError(f"{value!r} is not an IAM principal ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        return values


class GuardConfig(StrictModel):
    max_running_instances: int | None = Field(default=None, strict=True, ge=0, le=MAX_INSTANCES)
    max_running_instances_org: int | None = Field(default=None, strict=True, ge=0, le=MAX_INSTANCES)
    spend: SpendConfig | None = None
    lockout: LockoutConfig = Field(default_factory=LockoutConfig)
    on_unstoppable: Literal["leave", "terminate"] = "leave"
    notify: list[str] = Field(default_factory=list)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)

    @model_validator(mode="after")
    def _heartbeat_has_a_sink(self) -> GuardConfig:
        heartbeat = self.heartbeat
        if heartbeat.enabled and not (self.notify if heartbeat.sinks is None else heartbeat.sinks):
            raise ValueError("heartbeat is enabled but has no sink: list them in guard.heartbeat.sinks or guard.notify")
        return self

    @property
    def heartbeat_sinks(self) -> list[str]:
        """The sinks the heartbeat goes to: its own, else the guard's notify sinks."""
        return list(self.notify if self.heartbeat.sinks is None else self.heartbeat.sinks)


class DiscoveryConfig(StrictModel):
    type: Literal["ec2", "config-aggregator"] = "ec2"
    aggregator: str | None = None

    @model_validator(mode="after")
    def _aggregator_named(self) -> DiscoveryConfig:
        if self.type == "config-aggregator" and not self.aggregator:
            raise ValueError("discovery type config-aggregator needs `aggregator: NAME`")
        return self


class WindowConfig(StrictModel):
    settle_minutes: float = Field(default=3, strict=True, ge=0, le=24 * 60, allow_inf_nan=False)
    wait_for_inspector: bool = True
    timeout_minutes: float = Field(default=90, strict=True, gt=0, le=7 * 24 * 60, allow_inf_nan=False)
    select_tags: dict[str, str] = Field(default_factory=dict)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)


class ComplianceConfig(StrictModel):
    types: list[str] = Field(default_factory=lambda: ["Custom:InSpec"])
    association_ids: list[str] = Field(default_factory=list)
    document_names: list[str] = Field(default_factory=lambda: ["AWS-RunInspecChecks"])
    notify: list[str] = Field(default_factory=list)
    report_sink: str | None = None


class ExceptionEntry(StrictModel):
    """An exception kept in the config (exceptions as code: reviewed and versioned with it), merged with the state
    store's. The same rules as `exceptions add`: a reason, an owner, a scope or `organization_wide: true`; and an
    expiry, unless `permanent: true` says it is meant to last."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    kind: Literal["snooze", "do-not-start", "do-not-stop", "do-not-terminate", "lockout-exempt"]
    account: AccountId | None = None
    region: Region | None = None
    resource_id: str | None = Field(default=None, min_length=1, max_length=256)
    check: str | None = Field(default=None, min_length=1, max_length=64)
    item: str | None = Field(default=None, min_length=1, max_length=512)
    organization_wide: bool = False
    reason: str = Field(min_length=1, max_length=2000)
    owner: str = Field(min_length=1, max_length=256)
    expires: datetime | date | None = None
    permanent: bool = False

    @model_validator(mode="after")
    def _expiry_or_permanent(self) -> ExceptionEntry:
        if self.expires is None and not self.permanent:
            raise ValueError("needs `expires` (a date or timestamp), or `permanent: true` if it is meant to last")
        if self.expires is not None and self.permanent:
            raise ValueError("has both `expires` and `permanent: true`: keep one")
        try:
            self.rule(datetime(2000, 1, 1, tzinfo=UTC))
        except ValidationError as exc:
            problems = [str(e["msg"]).removeprefix("Value error, ").replace("--", "") for e in exc.errors()]
            raise ValueError("; ".join(problems)) from None
        return self

    def stable_id(self) -> str:
        """The id given, else one derived from what the entry says (kind, scope, reason), stable across runs."""
        if self.id:
            return self.id
        basis = json.dumps(
            self.model_dump(mode="json", exclude={"id", "owner", "expires", "permanent"}), sort_keys=True
        )
        return "cfg-" + hashlib.sha256(basis.encode()).hexdigest()[:12]

    def rule(self, loaded_at: datetime, source: str = "config") -> ExceptionRule:
        """The entry as the rule the workflows apply (created_at: when the config was read)."""
        return ExceptionRule(
            id=self.stable_id(),
            kind=ExceptionKind(self.kind),
            account_id=self.account,
            region=self.region,
            resource_id=self.resource_id,
            check=self.check,
            item=self.item,
            organization_wide=self.organization_wide,
            reason=self.reason.strip(),
            owner=self.owner,
            created_at=loaded_at,
            expires_at=self.expires_at(),
            source=source,
        )

    def expires_at(self) -> datetime | None:
        """The expiry as an aware UTC time (a date ends at its midnight UTC)."""
        value = self.expires
        if value is None:
            return None
        if not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value if value.tzinfo else value.replace(tzinfo=UTC)


KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[\w/+=,.@-]+", re.ASCII)


class InspectorAdmin(StrictModel):
    """Amazon Inspector's delegated administrator: findings of the whole organization are read from it."""

    account_id: AccountId
    # How to reach it when it is not one of the fleet's accounts (or through another role than the fleet's).
    role_arn: RoleArn | None = None
    external_id: str | None = None

    @model_validator(mode="after")
    def _role_in_the_account(self) -> InspectorAdmin:
        match = ROLE_ARN.fullmatch(self.role_arn) if self.role_arn else None
        if match and match.group(1) != self.account_id:
            raise ValueError(f"role_arn is in account {match.group(1)}, not in account_id {self.account_id}")
        return self


class InspectorExportConfig(StrictModel):
    """`findings inspector --export`: CreateFindingsReport's format and KMS key, and how long to wait on it."""

    format: Literal["csv", "json"] = "csv"
    kms_key_arn: str | None = None
    timeout_seconds: float = Field(default=900, strict=True, gt=0, le=6 * 3600, allow_inf_nan=False)
    poll_seconds: float = Field(default=10, strict=True, gt=0, le=600, allow_inf_nan=False)

    @field_validator("kms_key_arn")
    @classmethod
    def _kms_arn(cls, value: str | None) -> str | None:
        if value is not None and not KMS_KEY_ARN.fullmatch(value):
            raise ValueError("must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), in the bucket's region")
        return value


class InspectorConfig(StrictModel):
    delegated_admin: InspectorAdmin | None = None
    export: InspectorExportConfig = Field(default_factory=InspectorExportConfig)


class Config(StrictModel):
    """The whole fleetwarden.yaml."""

    apply: bool = False
    aws: AwsSettings = Field(default_factory=AwsSettings)
    accounts: list[AccountConfig] = Field(default_factory=list)
    organization: OrganizationConfig | None = None
    regions: list[Region] | Literal["all"] = Field(default_factory=lambda: ["us-east-1"])
    exclude_regions: list[Region] = Field(default_factory=list)
    state: str = "sqlite:///fleetwarden-state.db"
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    compliance: ComplianceConfig = Field(default_factory=ComplianceConfig)
    inspector: InspectorConfig = Field(default_factory=InspectorConfig)
    spend_report: SpendReportConfig = Field(default_factory=SpendReportConfig)
    exceptions: list[ExceptionEntry] = Field(default_factory=list)

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        if not (value.startswith("sqlite:///") or value.startswith("dynamodb://")):
            raise ValueError("state must be sqlite:///PATH or dynamodb://TABLE?region=REGION")
        return value

    @field_validator("regions")
    @classmethod
    def _some_region(cls, value: list[str] | str) -> list[str] | str:
        if not value:
            raise ValueError("an empty list selects no region: name at least one, or use `all`")
        return value

    @field_validator("exclude_regions")
    @classmethod
    def _not_every_region(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # `regions: all` minus exclusions is checked at run time, against each account's enabled regions.
        regions = info.data.get("regions")
        if isinstance(regions, list) and regions and set(regions) <= set(value):
            raise ValueError("removes every region listed under `regions`: nothing would be audited or guarded")
        return value

    @field_validator("exceptions")
    @classmethod
    def _unique_exception_ids(cls, entries: list[ExceptionEntry]) -> list[ExceptionEntry]:
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            ident = entry.stable_id()
            if ident in seen:
                raise ValueError(f"exceptions[{index}] has the same id as exceptions[{seen[ident]}] ({ident})")
            seen[ident] = index
        return entries

    @property
    def spend_report_billing(self) -> BillingAccount | None:
        """The billing role the spend report reads Cost Explorer through (its own, else the guard's)."""
        if self.spend_report.billing_account is not None:
            return self.spend_report.billing_account
        return self.guard.spend.billing_account if self.guard.spend else None

    def exception_rules(self, loaded_at: datetime) -> list[ExceptionRule]:
        """The config's exceptions as rules, each marked with where it is written."""
        return [entry.rule(loaded_at, f"config exceptions[{i}]") for i, entry in enumerate(self.exceptions)]

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, accounts: list[AccountConfig]) -> list[AccountConfig]:
        seen: set[str] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"account {account.id} is listed twice")
            seen.add(account.id)
        return accounts

    @model_validator(mode="after")
    def _sink_references(self) -> Config:
        for section, names in (
            ("audit.notify", self.audit.notify),
            ("guard.notify", self.guard.notify),
            ("guard.heartbeat.sinks", self.guard.heartbeat.sinks or []),
            ("compliance.notify", self.compliance.notify),
            ("compliance.report_sink", [self.compliance.report_sink] if self.compliance.report_sink else []),
            ("spend_report.notify", self.spend_report.notify),
            *self._owner_sinks(),
        ):
            for name in names:
                if name not in self.sinks:
                    known = ", ".join(sorted(self.sinks)) or "none defined"
                    raise ValueError(f"{section} names sink {name!r}, which is not under `sinks` ({known})")
        return self

    def _owner_sinks(self) -> list[tuple[str, list[str]]]:
        notify = self.audit.owners.notify
        if notify is None:
            return []
        for key, kind in (("email_sink", "email"), ("slack_sink", "slack")):
            name = getattr(notify, key)
            if name is not None and name in self.sinks and self.sinks[name].get("type") != kind:
                raise ValueError(f"audit.owners.notify.{key} names sink {name!r}, which is not of type {kind}")
        return [
            ("audit.owners.notify.email_sink", [notify.email_sink] if notify.email_sink else []),
            ("audit.owners.notify.slack_sink", [notify.slack_sink] if notify.slack_sink else []),
            ("audit.owners.notify.fallback", list(notify.fallback)),
        ]

    def account(self, account_id: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.id == account_id), None)
