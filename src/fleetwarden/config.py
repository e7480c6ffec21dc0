"""The YAML config, validated by pydantic models (`extra="forbid"`) before any AWS call (DESIGN.md contract v1)."""

from __future__ import annotations

import gc
import re
import reprlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import regex
import yaml
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

from .errors import ConfigError, ConfigProblem
from .model import Severity

# ASCII only and whole-string (fullmatch): `\d` would also accept other scripts' digits (e.g. Arabic-Indic), and
# `$` accepts a trailing newline.
ACCOUNT_ID = re.compile(r"[0-9]{12}")
REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]")
SECRET_REF = re.compile(r"(ssm:/\S+|secretsmanager:\S+|env:[A-Za-z_][A-Za-z0-9_]*)", re.ASCII)
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/[\w+=,.@/-]+", re.ASCII)


def _account_id(value: str) -> str:
    if not ACCOUNT_ID.fullmatch(value):
        raise ValueError(f"an AWS account id is 12 digits (ASCII 0-9), got {shown(value)}")
    return value


def _region(value: str) -> str:
    if not REGION.fullmatch(value):
        raise ValueError(f"not an AWS region name: {shown(value)} (expected e.g. us-east-1)")
    return value


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


class LockoutConfig(StrictModel):
    mode: Literal["deactivate", "delete", "off"] = "deactivate"
    exempt_users: list[str] = Field(default_factory=list)
    exempt_roles: list[str] = Field(default_factory=list)
    revoke_role_sessions: list[str] = Field(default_factory=list)


class GuardConfig(StrictModel):
    max_running_instances: int | None = Field(default=None, strict=True, ge=0, le=MAX_INSTANCES)
    max_running_instances_org: int | None = Field(default=None, strict=True, ge=0, le=MAX_INSTANCES)
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


def _key_step(name: object, first: bool = False) -> str:
    """One key of a key path: `.name`, or `['na\\nme']` for a key a terminal or a log would not show as written."""
    text = str(name)
    if text and len(text) <= 80 and text.isprintable() and not any(c in text for c in ".[]'\" "):
        return text if first else "." + text
    return f"[{shown(name)}]"


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else _key_step(item, first=not parts))
    return "".join(parts)


def _printable(text: str) -> str:
    """`text` with every non-printable character escaped: one line, and no terminal escape sequence."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def config_error(source: str, problems: list[ConfigProblem]) -> ConfigError:
    """The ConfigError for `problems`: each one printable on one line, at most MAX_PROBLEMS of them listed."""
    shown_problems = [ConfigProblem(_printable(p.location), _printable(p.message)) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown_problems.append(ConfigProblem("", f"and {len(problems) - MAX_PROBLEMS} more problems"))
    return ConfigError(_printable(source), shown_problems)


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


# Keys whose values are secrets even where the model types them loosely (a sink's raw mapping, an unknown key).
_SECRET_NAME = re.compile(r"password|passwd|passphrase|secret|token|api_?key|credential|private_?key", re.IGNORECASE)


def _has_secret_marker(annotation: Any) -> bool:
    if SECRET in getattr(annotation, "__metadata__", ()):
        return True
    return any(_has_secret_marker(arg) for arg in get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def is_secret_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> bool:
    """Whether the value at `loc` (a user key path under `model`) is secret-typed (SecretRef) or secret-named."""
    if any(isinstance(item, str) and _SECRET_NAME.search(item) for item in loc):
        return True
    models = [model]
    for item in loc:
        if isinstance(item, int):
            continue
        fields = [f for m in models for name, f in m.model_fields.items() if item in (name, f.alias)]
        if any(SECRET in f.metadata or _has_secret_marker(f.annotation) for f in fields):
            return True
        models = [m for f in fields for m in _models_in(f.annotation)]
        if not models:
            return False
    return False


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[int | str, ...] = (), raw: Any = None
) -> list[ConfigProblem]:
    def user_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
        # pydantic puts union member names into loc, and for a union tagged by `type` the tag's value (e.g.
        # `auth.basic.extra` for `auth: {type: basic, ...}`); drop them so the path is the user's key path.
        out: list[int | str] = []
        node = raw
        for p in loc:
            if isinstance(p, str) and p.startswith(("list[", "literal[", "function-", "constrained-")):
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
        secret = is_secret_path(model, loc)
        key_problem = bool(loc) and loc[-1] == "[key]"  # a mapping's key itself (e.g. a number) is wrong
        loc = tuple(prefix) + (loc[:-1] if key_problem else loc)
        if key_problem:
            message = f"the key {shown(loc[-1]) if loc else ''} must be a string: {err['msg']}"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[len(prefix) :])
            message = "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if secret:
                message += " (the value is not shown: this key holds a secret reference)"
            elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
                message += f" (got {shown(err['input'])})"
        problems.append(ConfigProblem(_format_location(loc), message))
    return problems


# -- reading the YAML --------------------------------------------------------------------------------------------
# Hostile input is refused before any Python object is built from it, in bounded time and memory.
MAX_CONFIG_BYTES = 4_000_000
MAX_DEPTH = 64  # the real config nests 6 levels; libyaml itself stops at 1,000
MAX_PROBLEMS = 20  # listed in one error; the rest are counted
MAX_ALIAS_VALUES = 10_000  # values that `*alias` references may add to the document ("billion laughs" adds 10^9)
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = yaml.resolver.Resolver.yaml_implicit_resolvers


class _Refused(Exception):
    """The document is refused before its objects are built (a duplicate key, too deep, an alias bomb)."""

    def __init__(self, problem: ConfigProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: the pure-Python parser (slower; deep nesting caught below)
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


def _label(parent: yaml.Node, index: int) -> str:
    """The key-path step from `parent` to its `index`-th child (for a mapping: keys and values alternate)."""
    if isinstance(parent, yaml.MappingNode):
        key = parent.value[index // 2][0]
        step = _key_step(key.value) if isinstance(key, yaml.ScalarNode) else ".?"
        return step if index % 2 else step + " (the key)"
    return f"[{index}]"


def _path(stack: list[list[Any]], last: str = "") -> str:
    """The key path of the top frame's node: each frame below it is on the child that leads up the stack."""
    return ("".join(_label(frame[0], frame[2] - 1) for frame in stack[:-1]) + last).lstrip(".")


def _kids(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Loader(_BaseLoader):
    """yaml's safe loader, checked: duplicate keys, depth and alias expansion are refused; every value it cannot
    construct (`!!int x`, `2024-13-45`, a 5,000-digit number) is a problem at its key path, never a traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.root: yaml.Node | None = None

    def check(self, root: yaml.Node) -> None:
        """Walk the composed node graph once (iteratively): depth, alias budget, recursive aliases, duplicate keys."""
        self.root = root
        size: dict[int, int] = {}  # values under a collection node (itself included), aliases expanded
        height: dict[int, int] = {}  # levels of collections, itself included
        added = 0
        # Frames: [node, children, next child index, size so far, height so far]; the stack's length is the depth.
        stack: list[list[Any]] = [[root, _kids(root), 0, 1, 1]]
        active = {id(root)}
        self._check_keys(root, stack)
        while stack:
            frame = stack[-1]
            node, kids, i = frame[0], frame[1], frame[2]
            if i == len(kids):
                stack.pop()
                active.discard(id(node))
                size[id(node)], height[id(node)] = frame[3], frame[4]
                if stack:
                    stack[-1][3] += frame[3]
                    stack[-1][4] = max(stack[-1][4], frame[4] + 1)
                continue
            frame[2] = i + 1
            kid = kids[i]
            if isinstance(kid, yaml.ScalarNode):
                frame[3] += 1
                continue
            key = id(kid)
            if key in active:
                raise _Refused(self._problem(stack, "an alias refers to a value that contains it (a recursive alias)"))
            if key in size:  # reached again: through an alias
                added += size[key]
                if added > MAX_ALIAS_VALUES:
                    line = kid.start_mark.line + 1
                    raise _Refused(
                        self._problem(
                            stack,
                            f"aliases expand the document by more than {MAX_ALIAS_VALUES} values (the anchor at line "
                            f"{line} is repeated): write the values out, or use fewer aliases",
                        )
                    )
                if len(stack) + height[key] > MAX_DEPTH:
                    raise _Refused(self._problem(stack, f"nested deeper than {MAX_DEPTH} levels"))
                frame[3] += size[key]
                frame[4] = max(frame[4], height[key] + 1)
                continue
            if len(stack) + 1 > MAX_DEPTH:
                raise _Refused(self._problem(stack, f"nested deeper than {MAX_DEPTH} levels"))
            active.add(key)
            stack.append([kid, _kids(kid), 0, 1, 1])
            self._check_keys(kid, stack)

    def _check_keys(self, node: yaml.Node, stack: list[list[Any]]) -> None:
        """A key given twice in one mapping is an error: last-wins would let `action: terminate` hide below."""
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[Any, yaml.Mark] = {}
        for index, (key_node, _) in enumerate(node.value):
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *base` merges (explicit keys override it); complex keys are refused when built
            try:
                key = key_node.value if key_node.tag == _STR else self.construct_object(key_node)
            except _Refused as exc:
                where = _path(stack, _label(node, 2 * index))
                raise _Refused(ConfigProblem(where, exc.problem.message)) from None
            if key in seen:
                first, again = seen[key], key_node.start_mark
                where = f"lines {first.line + 1} and {again.line + 1}"
                if first.line == again.line:
                    where = f"line {first.line + 1}, columns {first.column + 1} and {again.column + 1}"
                problem = f"duplicate key ({where}): give each key once"
                raise _Refused(ConfigProblem(_path(stack, _label(node, 2 * index + 1)), problem))
            seen[key] = key_node.start_mark

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """yaml's Resolver.resolve for scalars without the path and wildcard resolvers this loader never has: called
        once per scalar from C, it is a large part of the load time of a big config."""
        if kind is yaml.ScalarNode:
            if implicit[0]:
                for tag, regexp in _IMPLICIT.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return _STR
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_scalar_value(self, node: yaml.Node, build: Callable[[Any, Any], Any]) -> Any:
        """`build(self, node)`, with the ValueError, OverflowError or LookupError of a bad scalar (`!!int x`, `!!int`
        with no value, `2024-13-45`, a 5,000-digit number, `!!bool maybe`) as a problem at its key path."""
        try:
            return build(self, node)
        except (ValueError, OverflowError, LookupError, AttributeError, TypeError):  # yaml assumes a well-formed value
            # Not the exception's text: it would echo the value, which may be a mistyped secret.
            kind = node.tag.rsplit(":", 1)[-1]
            where = self._path_of(node)
            raise _Refused(ConfigProblem(where, f"line {node.start_mark.line + 1}: not a valid {kind} value")) from None

    @staticmethod
    def _problem(stack: list[list[Any]], message: str) -> ConfigProblem:
        """A problem at the child the top frame is on (a deep path is cut after a few levels)."""
        where = _path([*stack[:6], []]) + ("..." if len(stack) > 6 else "")
        return ConfigProblem(where, message)

    def _path_of(self, target: yaml.Node) -> str:
        """The key path of `target`, searched from the root (only when reporting an error)."""
        if self.root is None:
            return ""
        todo: list[tuple[yaml.Node, str]] = [(self.root, "")]
        seen: set[int] = set()
        while todo:
            node, path = todo.pop()
            if node is target:
                return path.lstrip(".")
            if id(node) in seen:
                continue
            seen.add(id(node))
            todo += [(kid, path + _label(node, i)) for i, kid in enumerate(_kids(node))]
        return ""


def _guarded(build: Callable[[Any, Any], Any]) -> Callable[[_Loader, yaml.Node], Any]:
    return lambda loader, node: loader.construct_scalar_value(node, build)


for _tag, _build in (
    ("int", yaml.SafeLoader.construct_yaml_int),
    ("float", yaml.SafeLoader.construct_yaml_float),
    ("bool", yaml.SafeLoader.construct_yaml_bool),
    ("timestamp", yaml.SafeLoader.construct_yaml_timestamp),
):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _guarded(_build))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> ConfigProblem:
    """One line for a YAML syntax error: where (line, column) and what."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 0
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return ConfigProblem(f"line {line}", f"not valid YAML: character #x{char:04x} is not allowed ({exc.reason})")
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
    return ConfigProblem(where, " ".join(message.split()))


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` as Python values, after the checks above; raises ConfigError naming `source`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigProblem("", f"larger than {MAX_CONFIG_BYTES // 1_000_000} MB")])
    try:
        loader = _Loader(text)
    except UnicodeError:  # an unpaired surrogate in a str that never came from a file
        raise ConfigError(source, [ConfigProblem("", "not valid Unicode text")]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        loader.check(root)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise config_error(source, [_yaml_problem(exc, text)]) from None
    except _Refused as exc:
        raise config_error(source, [exc.problem]) from None
    except UnicodeError:  # an unpaired surrogate in a str that never came from a file
        raise ConfigError(source, [ConfigProblem("", "not valid Unicode text")]) from None
    except (ValueError, LookupError, OverflowError, TypeError, AttributeError):  # a constructor not guarded above
        raise ConfigError(source, [ConfigProblem("", "a value cannot be read as YAML")]) from None
    except RecursionError:  # only the pure-Python parser recurses while composing
        raise ConfigError(source, [ConfigProblem("", f"nested deeper than {MAX_DEPTH} levels")]) from None
    finally:
        loader.dispose()


def decode_config(data: bytes, source: str) -> str:
    """Config bytes as text: UTF-8 (a byte-order mark is allowed), no NUL bytes, at most MAX_CONFIG_BYTES."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigProblem("", f"larger than {MAX_CONFIG_BYTES // 1_000_000} MB")])
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(source, [ConfigProblem("line 1", "UTF-16 or UTF-32 text, not UTF-8; save the file as UTF-8")])
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ConfigError(source, [ConfigProblem(f"line {line}", "a binary file (NUL byte), not YAML text")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        problem = f"not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8"
        raise ConfigError(source, [ConfigProblem(f"line {line}", problem)]) from None


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: loading builds ~10^5 long-lived containers, and the collector's repeated
    passes over them were two thirds of the time of a 1 MB config (1.0 s -> 0.4 s). Loading makes no cycles worth
    collecting (a recursive alias is refused), and the collector runs again as soon as the config is built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_config(text: str, source: str) -> Config:
    """Parse and validate config text; raises ConfigError naming the source, key path and expectation."""
    with _no_cyclic_gc():
        return _parse_config(text, source)


def _parse_config(text: str, source: str) -> Config:
    raw = load_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("", "the top level must be a mapping of keys")])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise config_error(source, problems_from_validation(exc, Config, raw=raw)) from None
    _validate_sinks(config, source)
    return config


def _validate_sinks(config: Config, source: str) -> None:
    from .sinks import sink_registry

    problems: list[ConfigProblem] = []
    for name, raw in config.sinks.items():
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in sink_registry:
            known = ", ".join(sink_registry.names())
            where = _format_location(("sinks", name, "type"))
            problems.append(ConfigProblem(where, f"unknown sink type {shown(kind)} (known: {known})"))
            continue
        plugin = sink_registry.get(kind)
        try:
            plugin.config_model.model_validate(raw)
        except ValidationError as exc:
            problems += problems_from_validation(exc, plugin.config_model, ("sinks", name), raw=raw)
    if problems:
        raise config_error(source, problems)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. No AWS call is made."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded: the path may be /dev/zero or a huge file
    except FileNotFoundError:
        raise ConfigError(str(p), [ConfigProblem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), [ConfigProblem("", "is a directory, not a config file")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_config(decode_config(data, str(p)), str(p))
