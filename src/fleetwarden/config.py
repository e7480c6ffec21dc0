"""The YAML config, validated by pydantic models (`extra="forbid"`) before any AWS call (DESIGN.md contract v1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, ConfigProblem
from .model import Severity

ACCOUNT_ID = re.compile(r"^\d{12}$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
SECRET_REF = re.compile(r"^(ssm:/\S+|secretsmanager:\S+|env:[A-Za-z_][A-Za-z0-9_]*)$")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")


def _account_id(value: str) -> str:
    if not ACCOUNT_ID.match(value):
        raise ValueError(f"an AWS account id is 12 digits, got {value!r}")
    return value


def _region(value: str) -> str:
    if not REGION.match(value):
        raise ValueError(f"not an AWS region name: {value!r} (expected e.g. us-east-1)")
    return value


def _secret_ref(value: str) -> str:
    if not SECRET_REF.match(value):
        raise ValueError(
            "secrets must be references, never literals: use ssm:/path (SecureString), secretsmanager:NAME or env:VAR"
        )
    return value


def _role_arn(value: str) -> str:
    if not ROLE_ARN.match(value):
        raise ValueError(f"not an IAM role ARN: {value!r} (expected arn:aws:iam::123456789012:role/NAME)")
    return value


AccountId = Annotated[str, AfterValidator(_account_id)]
Region = Annotated[str, AfterValidator(_region)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]
RoleArn = Annotated[str, AfterValidator(_role_arn)]


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AwsSettings(StrictModel):
    endpoint_url: str | None = None
    max_attempts: int = Field(default=8, ge=1, le=30)
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    max_concurrency: int = Field(default=32, ge=1, le=512)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    sts_region: str = "us-east-1"


class GuardOverrides(StrictModel):
    """Per-account overrides of guard settings."""

    max_running_instances: int | None = Field(default=None, ge=0)
    spend_max_usd: float | None = Field(default=None, ge=0)


class AccountConfig(StrictModel):
    id: AccountId
    name: str | None = None
    role_arn: RoleArn | None = None
    external_id: str | None = None
    guard: GuardOverrides | None = None


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
            re.compile(rule[3:])
        except re.error as exc:
            raise ValueError(f"tag_values.{key}: bad regex {rule[3:]!r}: {exc}") from None
    elif not rule:
        raise ValueError(f"tag_values.{key}: the list of allowed values is empty")
    return rule


class AuditConfig(StrictModel):
    """The tag audit (`check: tags`) and what to do with violators."""

    required_tags: list[str] = Field(default_factory=lambda: ["created_by", "department", "project"])
    tag_values: dict[str, list[str] | str] = Field(default_factory=dict)
    created_by_tag: str = "created_by"
    created_by_must_be_iam_user: bool = False
    grace_minutes: int = Field(default=45, ge=0)
    action: Literal["report", "stop", "terminate"] = "report"
    snapshot_before_terminate: bool = True
    override_stop_protection: bool = False
    max_actions: int = Field(default=100, ge=0)
    severity: Severity = Severity.MEDIUM
    canary: CanaryConfig | None = None
    notify: list[str] = Field(default_factory=list)

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
    max_usd: float = Field(ge=0)
    window_hours: float = Field(default=6, gt=0)
    sources: list[SpendSourceSpec] = Field(default_factory=_default_sources)
    billing_account: BillingAccount | None = None


class LockoutConfig(StrictModel):
    mode: Literal["deactivate", "delete", "off"] = "deactivate"
    exempt_users: list[str] = Field(default_factory=list)
    exempt_roles: list[str] = Field(default_factory=list)
    revoke_role_sessions: list[str] = Field(default_factory=list)


class GuardConfig(StrictModel):
    max_running_instances: int | None = Field(default=None, ge=0)
    max_running_instances_org: int | None = Field(default=None, ge=0)
    spend: SpendConfig | None = None
    lockout: LockoutConfig = Field(default_factory=LockoutConfig)
    on_unstoppable: Literal["leave", "terminate"] = "leave"
    notify: list[str] = Field(default_factory=list)


class DiscoveryConfig(StrictModel):
    type: Literal["ec2", "config-aggregator"] = "ec2"
    aggregator: str | None = None

    @model_validator(mode="after")
    def _aggregator_named(self) -> DiscoveryConfig:
        if self.type == "config-aggregator" and not self.aggregator:
            raise ValueError("discovery type config-aggregator needs `aggregator: NAME`")
        return self


class WindowConfig(StrictModel):
    settle_minutes: float = Field(default=3, ge=0)
    wait_for_inspector: bool = True
    timeout_minutes: float = Field(default=90, gt=0)
    select_tags: dict[str, str] = Field(default_factory=dict)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)


class ComplianceConfig(StrictModel):
    types: list[str] = Field(default_factory=lambda: ["Custom:InSpec"])
    association_ids: list[str] = Field(default_factory=list)
    document_names: list[str] = Field(default_factory=lambda: ["AWS-RunInspecChecks"])
    notify: list[str] = Field(default_factory=list)
    report_sink: str | None = None


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

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        if not (value.startswith("sqlite:///") or value.startswith("dynamodb://")):
            raise ValueError("state must be sqlite:///PATH or dynamodb://TABLE?region=REGION")
        return value

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
            ("compliance.notify", self.compliance.notify),
            ("compliance.report_sink", [self.compliance.report_sink] if self.compliance.report_sink else []),
        ):
            for name in names:
                if name not in self.sinks:
                    known = ", ".join(sorted(self.sinks)) or "none defined"
                    raise ValueError(f"{section} names sink {name!r}, which is not under `sinks` ({known})")
        return self

    def account(self, account_id: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.id == account_id), None)


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed at `loc`'s parent, for 'unknown key' messages."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(item))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        for arg in getattr(annotation, "__args__", ()):
            nested += [c for c in getattr(arg, "__args__", ()) if isinstance(c, type) and issubclass(c, BaseModel)]
        current = nested[0] if nested else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _child(node: Any, key: int | str) -> Any:
    """The raw config value under `key`, or None when the path leaves the document."""
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[int | str, ...] = (), raw: Any = None
) -> list[ConfigProblem]:
    def user_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
        # pydantic puts union member names into loc, and for a union tagged by `type` the tag's value (e.g.
        # `auth.basic.extra` for `auth: {type: basic, ...}`); drop them so the path is the user's key path.
        out: list[int | str] = []
        node = raw
        for p in loc:
            if isinstance(p, str) and p.startswith(("list[", "literal[", "function-")):
                continue
            if isinstance(node, dict) and p not in node and node.get("type") == p:
                continue
            out.append(p)
            node = _child(node, p)
        return tuple(out)

    problems = []
    errors = exc.errors()
    deep = [user_path(tuple(e["loc"])) for e in errors if e["type"] != "literal_error"]
    for err in errors:
        loc = user_path(tuple(err["loc"]))
        # A union like `list[Region] | "all"` reports the literal branch too: drop it when a deeper error says more.
        if err["type"] == "literal_error" and any(d[: len(loc)] == loc and len(d) > len(loc) for d in deep):
            continue
        loc = tuple(prefix) + loc
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            message = "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] not in ("value_error", "assertion_error") and "input" in err:
                message += f" (got {err['input']!r})"
        problems.append(ConfigProblem(_format_location(loc), message))
    return problems


def parse_config(text: str, source: str) -> Config:
    """Parse and validate config text; raises ConfigError naming the source, key path and expectation."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("", "the top level must be a mapping of keys")])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems_from_validation(exc, Config, raw=raw)) from None
    _validate_sinks(config, source)
    return config


def _validate_sinks(config: Config, source: str) -> None:
    from .sinks import sink_registry

    problems: list[ConfigProblem] = []
    for name, raw in config.sinks.items():
        kind = raw.get("type")
        if kind not in sink_registry:
            known = ", ".join(sink_registry.names())
            problems.append(ConfigProblem(f"sinks.{name}.type", f"unknown sink type {kind!r} (known: {known})"))
            continue
        plugin = sink_registry.get(str(kind))
        try:
            plugin.config_model.model_validate(raw)
        except ValidationError as exc:
            problems += problems_from_validation(exc, plugin.config_model, ("sinks", name), raw=raw)
    if problems:
        raise ConfigError(source, problems)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. No AWS call is made."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), [ConfigProblem("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(p))
