"""The Lambda events fleetwarden accepts, as pydantic models, and `parse_event` that maps one to an action.

Our own action events (`{"action": "guard", "apply": true}`) forbid unknown keys, so a typo such as `"aply"`
fails loudly instead of silently running a dry run. AWS's events (EventBridge scheduled events, CloudWatch
alarm state changes, SSM association state changes) allow extra keys: AWS adds fields over time.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import UsageError

Action = Literal[
    "audit",
    "guard",
    "guard-release",
    "window-open",
    "window-status",
    "window-close",
    "compliance-sync",
    "compliance-report",
    "spend-report",
    "prices-refresh",
    "list-targets",
    "list-shards",
    "guard-org-check",
    "aggregate",
    "pass",
]
ACTIONS: tuple[str, ...] = get_args(Action)
M = TypeVar("M", bound=BaseModel)
Trigger = Literal["invoke", "schedule", "alarm", "ssm-association", "launch"]

SCHEDULED = "Scheduled Event"
ALARM_CHANGE = "CloudWatch Alarm State Change"
SSM_ASSOCIATION_CHANGE = "EC2 State Manager Association State Change"
CLOUDTRAIL_CALL = "AWS API Call via CloudTrail"
LAUNCH_CALLS = ("RunInstances", "StartInstances")
# Matched whole (fullmatch) and ASCII only: `\d` accepts other scripts' digits and `$` a trailing newline.
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
_WINDOW_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
# A run id names S3 keys (runs/RUN_ID/...): a safe subset, no '/'.
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_S3_PREFIX = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[A-Za-z0-9!_.*'()/-]{0,512})?")
MAX_SHARD_ACCOUNTS = 1000  # a shard is one Lambda invocation: a few dozen accounts is the intended size
# An event is small (Lambda caps an asynchronous payload at 256 KB, a synchronous one at 6 MB); a JSON string event
# larger than this is refused before it is decoded.
MAX_EVENT_CHARS = 6 * 1024 * 1024
MAX_PROBLEMS = 10  # problems listed in one error; the rest are counted

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 2
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4


def _shown(value: object) -> str:
    """repr() bounded in length and depth: an event's values are echoed in errors, and an event can be hostile."""
    return _short.repr(value)


def _plain(value: str | None) -> str:
    """An event's string as it reads in a reason (an ARN, an id): as is when short and printable, else _shown()."""
    if value is not None and len(value) <= 200 and value.isprintable():
        return value
    return _shown(value)


WINDOW_ACTIONS = frozenset({"window-open", "window-status", "window-close"})


class EventError(UsageError):
    """The Lambda event is malformed or unknown: nothing was done (exit 2)."""


def _account_id(value: str) -> str:
    if not _ACCOUNT_ID.fullmatch(value):
        raise ValueError(f"an AWS account id is 12 digits (ASCII 0-9), got {_shown(value)}")
    return value


AccountId = Annotated[str, Field(strict=True), AfterValidator(_account_id)]


def _region(value: str) -> str:
    if not _REGION.fullmatch(value):
        raise ValueError(f"a region name looks like us-east-1, got {_shown(value)}")
    return value


def _run_id(value: str) -> str:
    if not _RUN_ID.fullmatch(value):
        raise ValueError(f"a run id is 1-64 ASCII letters, digits, '.', '_' or '-', got {_shown(value)}")
    return value


def _s3_prefix(value: str) -> str:
    if not _S3_PREFIX.fullmatch(value) or "//" in value[5:] or ".." in value:
        raise ValueError(f"expected s3://BUCKET or s3://BUCKET/PREFIX, got {_shown(value)}")
    return value.rstrip("/")


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("lists each item once")
    return values


RegionName = Annotated[str, Field(strict=True), AfterValidator(_region)]
RunId = Annotated[str, Field(strict=True), AfterValidator(_run_id)]
S3Prefix = Annotated[str, Field(strict=True), AfterValidator(_s3_prefix)]
ShardAccounts = Annotated[list[AccountId], Field(min_length=1, max_length=MAX_SHARD_ACCOUNTS), AfterValidator(_unique)]
ShardRegions = Annotated[list[RegionName], Field(min_length=1, max_length=64), AfterValidator(_unique)]


# -- our action events ---------------------------------------------------------------------------------
class ActionEvent(BaseModel):
    """`{"action": A, "apply": bool}`: `apply` omitted (or null) leaves the decision to the config's `apply`."""

    # Strict booleans: "apply": "false" must not become a truthy string, nor be coerced either way.
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    apply: StrictBool | None = None

    def params(self) -> dict[str, Any]:
        """The action's own parameters (everything but `action` and `apply`)."""
        return self.model_dump(exclude={"action", "apply"})


SHARD_KEYS = ("accounts", "regions", "run_id", "shard", "fragments", "max_actions")


class ShardableEvent(ActionEvent):
    """A workflow event that may carry a shard (docs/lambda.md, "Shards"): run on only these accounts (and
    regions) of the config, never more, under the org-run's shared `run_id`; with `fragments`, the RunReport
    fragment goes to `FRAGMENTS/RUN_ID/fragments/SHARD.json` and the result stays small."""

    accounts: ShardAccounts | None = None
    regions: ShardRegions | None = None
    run_id: RunId | None = None
    shard: StrictInt | None = Field(default=None, ge=0, le=99_999)
    fragments: S3Prefix | None = None

    @model_validator(mode="after")
    def _fragments_need_a_shard(self) -> ShardableEvent:
        if self.fragments is not None and (self.run_id is None or self.shard is None):
            raise ValueError("fragments needs run_id and shard (list-shards gives all three)")
        if self.shard is not None and self.accounts is None:
            raise ValueError("shard needs accounts")
        return self

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"action", "apply", *SHARD_KEYS})

    def shard_params(self) -> dict[str, Any]:
        """The shard's fields, None when absent."""
        return {k: getattr(self, k, None) for k in SHARD_KEYS}


class AuditEvent(ShardableEvent):
    """Run the tag audit; `confirm_terminate` is the event's equivalent of `--confirm-terminate`.

    In a shard, `max_actions` is the shard's share of `audit.max_actions` (list-shards computes it): the
    blast-radius limit then holds for the whole organization; it only ever lowers the config's limit.
    """

    action: Literal["audit"]
    confirm_terminate: StrictBool = False
    max_actions: StrictInt | None = Field(default=None, ge=0)


class GuardEvent(ShardableEvent):
    """Run the runaway guard (`guard run`).

    In an org-run (docs/deploy.md, "The guard's two phases"), `phase` is `count` for the shards of the first
    Distributed Map (per-account triggers, the organization-wide limit left to `guard-org-check`) and `halt` for
    those of the second: trip these accounts on the organization-wide count that `guard-org-check` recorded
    (`FRAGMENTS/RUN_ID/org-check.json`), latch and halt them.
    """

    action: Literal["guard"]
    phase: Literal["count", "halt"] = "count"

    @model_validator(mode="after")
    def _halt_needs_the_org_run(self) -> GuardEvent:
        if self.phase == "halt" and self.fragments is None:
            raise ValueError("phase halt needs accounts, run_id, shard and fragments (guard-org-check gives them)")
        return self


class GuardReleaseEvent(ActionEvent):
    """Release one account's guard trip (`guard release --account ID [--start-instances]`)."""

    action: Literal["guard-release"]
    account: AccountId
    start_instances: StrictBool = False


def _window_id(value: str) -> str:
    if not _WINDOW_ID.fullmatch(value):
        raise ValueError(f"a window id is 1-128 ASCII letters, digits, '.', '_', ':' or '-', got {_shown(value)}")
    return value


WindowId = Annotated[str, Field(strict=True), AfterValidator(_window_id)]


class WindowEvent(ShardableEvent):
    """A scan-window event; `compact` leaves the bulky parts (the report, per-instance lists) out of the result,
    which keeps it under Step Functions' 256 KB state payload limit (docs/deploy.md)."""

    compact: StrictBool = False


class WindowOpenEvent(WindowEvent):
    """Open a scan window (`window open`); the result carries the new window's id as `window_id`."""

    action: Literal["window-open"]


class WindowStatusEvent(WindowEvent):
    """Open windows (or one) with Inspector coverage; `complete` is true once scanned or timed out."""

    action: Literal["window-status"]
    window_id: WindowId | None = None


class WindowCloseEvent(WindowEvent):
    """Close one window (`window_id`) or, without one, every open window; collect Inspector findings first."""

    action: Literal["window-close"]
    window_id: WindowId | None = None
    collect_findings: StrictBool = True


class ComplianceEvent(ShardableEvent):
    """Sync SSM compliance results, or send the periodic compliance report."""

    action: Literal["compliance-sync", "compliance-report"]


class SpendReportEvent(ActionEvent):
    """The daily spend summary (`fleetwarden spend report`): `as_of` (YYYY-MM-DD, default today UTC) and `resend`
    as the command's options; `apply` delivers it to spend_report.notify."""

    action: Literal["spend-report"]
    as_of: date | None = None
    resend: StrictBool = False

    @field_validator("as_of", mode="before")
    @classmethod
    def _iso_day(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)):
            raise ValueError("as_of must be a date as YYYY-MM-DD")
        return value


class PricesRefreshEvent(ActionEvent):
    """Rebuild burn-rate's price table from the AWS Price List (`fleetwarden prices refresh`); `apply` stores it."""

    action: Literal["prices-refresh"]


class ListTargetsEvent(ShardableEvent):
    """List the (account, region) targets the config resolves to; changes nothing."""

    action: Literal["list-targets"]


SHARDABLE = ("audit", "guard", "window-open", "compliance-sync", "list-targets")


class ListShardsEvent(ActionEvent):
    """Split the organization's accounts into shards of `size` for an org-run of `event` (a workflow event
    without shard fields). Each shard item is that event plus the shard's fields; with `fragments`, the list is
    also written to S3 (FRAGMENTS/RUN_ID/shards.json), and returned inline only up to `inline_max` shards."""

    action: Literal["list-shards"]
    event: dict[str, Any]
    size: StrictInt = Field(default=25, ge=1, le=MAX_SHARD_ACCOUNTS)
    regions: ShardRegions | None = None
    fragments: S3Prefix | None = None
    inline_max: StrictInt = Field(default=40, ge=0, le=1000)
    run_id: RunId | None = None


class GuardOrgCheckEvent(ActionEvent):
    """The guard's org check in an org-run: add up the shards' `running`, and over
    `guard.max_running_instances_org` latch one org trip before any halt and list the shards to halt."""

    action: Literal["guard-org-check"]
    run_id: RunId
    fragments: S3Prefix


class AggregateEvent(ActionEvent):
    """Merge an org-run's RunReport fragments (FRAGMENTS/RUN_ID/fragments/*.json) into one RunReport: written to
    FRAGMENTS/RUN_ID/report.json, delivered once, one exit status."""

    action: Literal["aggregate"]
    run_id: RunId
    fragments: S3Prefix


class PassEvent(ActionEvent):
    """Do nothing, and say so (a way to park a schedule without deleting it)."""

    action: Literal["pass"]


ACTION_MODELS: dict[str, type[ActionEvent]] = {
    "audit": AuditEvent,
    "guard": GuardEvent,
    "guard-release": GuardReleaseEvent,
    "window-open": WindowOpenEvent,
    "window-status": WindowStatusEvent,
    "window-close": WindowCloseEvent,
    "compliance-sync": ComplianceEvent,
    "compliance-report": ComplianceEvent,
    "spend-report": SpendReportEvent,
    "prices-refresh": PricesRefreshEvent,
    "list-targets": ListTargetsEvent,
    "list-shards": ListShardsEvent,
    "guard-org-check": GuardOrgCheckEvent,
    "aggregate": AggregateEvent,
    "pass": PassEvent,
}


# -- AWS events ----------------------------------------------------------------------------------------
class AwsEvent(BaseModel):
    """The EventBridge envelope; AWS adds fields over time, so unknown keys are allowed."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    detail_type: str = Field(alias="detail-type")
    source: str
    id: str | None = None
    account: str | None = None
    region: str | None = None
    time: str | None = None
    resources: list[str] = Field(default_factory=list)


class ScheduledEvent(AwsEvent):
    """A raw EventBridge scheduled event (a rule without a constant input): it runs the guard."""

    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")
    source: Literal["aws.events"]


class AlarmState(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    value: str
    reason: str | None = None
    timestamp: str | None = None


class AlarmDetail(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    alarmName: str
    state: AlarmState
    previousState: AlarmState | None = None


class AlarmEvent(AwsEvent):
    """A CloudWatch alarm state change delivered by an EventBridge rule."""

    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    source: Literal["aws.cloudwatch"]
    detail: AlarmDetail


class AlarmActionEvent(BaseModel):
    """A CloudWatch alarm that invokes the function directly as its alarm action (no EventBridge envelope)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: Literal["aws.cloudwatch"]
    alarmArn: str
    alarmData: AlarmDetail


class AssociationDetail(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    association_id: str = Field(alias="association-id")
    document_name: str | None = Field(default=None, alias="document-name")
    status: str | None = None


class AssociationEvent(AwsEvent):
    """An SSM State Manager association state change: a compliance sync if the association is ours."""

    detail_type: Literal["EC2 State Manager Association State Change"] = Field(alias="detail-type")
    source: Literal["aws.ssm"]
    detail: AssociationDetail


class LaunchDetail(BaseModel):
    """The CloudTrail record of a RunInstances / StartInstances call (the fields the guard reads)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    eventSource: Literal["ec2.amazonaws.com"]
    eventName: str
    eventTime: AwareDatetime
    awsRegion: RegionName
    recipientAccountId: AccountId | None = None
    errorCode: str | None = None


class LaunchEvent(AwsEvent):
    """A RunInstances or StartInstances call, forwarded by the member account's EventBridge rule to the hub's bus
    (docs/guard.md "Event-driven trips"): the guard evaluates that account at once."""

    detail_type: Literal["AWS API Call via CloudTrail"] = Field(alias="detail-type")
    source: Literal["aws.ec2"]
    detail: LaunchDetail


# -- parsing -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedEvent:
    """What an event asks for: an action, the event's own `apply` (None: the config decides), parameters."""

    action: Action
    apply: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    trigger: Trigger = "invoke"
    # Why this action: shown in the result and the log (for `pass`, why nothing is done).
    reason: str = ""
    # A shard's fields (accounts, regions, run_id, shard, fragments, max_actions); empty for a whole-config run.
    shard: dict[str, Any] = field(default_factory=dict)


def parse_event(event: object) -> ParsedEvent:
    """Map a Lambda event to the action it asks for; raises EventError (and nothing else) for any other value."""
    if isinstance(event, str | bytes):
        # A console test invocation or a CLI payload sometimes arrives double-encoded.
        if len(event) > MAX_EVENT_CHARS:
            raise EventError(f"the event is a string of {len(event)} characters; expected a JSON object")
        try:
            event = json.loads(event)
        except ValueError:  # also bytes that are not UTF-8
            raise EventError("the event is a string that is not JSON; expected a JSON object") from None
        except RecursionError:
            raise EventError("the event is a string of JSON nested too deeply; expected a JSON object") from None
    if not isinstance(event, Mapping):
        raise EventError(f"the event must be a JSON object, got {_json_type(event)}")
    if "action" in event:
        return _parse_action(event)
    if "detail-type" in event:
        return _parse_eventbridge(event)
    if event.get("source") == "aws.cloudwatch" and "alarmData" in event:
        return _from_alarm(_validate(AlarmActionEvent, event, "CloudWatch alarm action").alarmData, "alarm action")
    expected = ", ".join(ACTIONS)
    raise EventError(
        'unrecognized event: expected {"action": ...} with an action among '
        f"{expected}, or an EventBridge scheduled, CloudWatch alarm or SSM association event"
    )


def _parse_action(event: Mapping[str, Any]) -> ParsedEvent:
    action = event["action"]
    if not isinstance(action, str) or action not in ACTION_MODELS:
        raise EventError(f"unknown action {_shown(action)}; expected one of: {', '.join(ACTIONS)}")
    model = _validate(ACTION_MODELS[action], event, f"{action!r} event")
    reason = 'the event is {"action": "pass"}' if action == "pass" else f"the event asks for {action}"
    shard: dict[str, Any] = {}
    if isinstance(model, ShardableEvent):
        shard = {k: v for k, v in model.shard_params().items() if v is not None}
        if shard and action not in SHARDABLE:
            raise EventError(
                f"malformed {action!r} event: {', '.join(sorted(shard))}: a shard is accepted only by "
                f"{', '.join(SHARDABLE)} (a window's own targets are fixed when it opens)"
            )
        if "accounts" in shard:
            reason += f" on a shard of {len(shard['accounts'])} account(s)"
    return ParsedEvent(action=model.action, apply=model.apply, params=model.params(), reason=reason, shard=shard)


def _parse_eventbridge(event: Mapping[str, Any]) -> ParsedEvent:
    kind = event.get("detail-type")
    if kind == SCHEDULED:
        scheduled = _validate(ScheduledEvent, event, "scheduled event")
        rule = _plain(scheduled.resources[0]) if scheduled.resources else "an EventBridge rule"
        # A rule with a constant input delivers our action event instead; a raw scheduled event means the guard.
        return ParsedEvent(action="guard", trigger="schedule", reason=f"scheduled event from {rule}")
    if kind == ALARM_CHANGE:
        return _from_alarm(_validate(AlarmEvent, event, "CloudWatch alarm event").detail, "alarm state change")
    if kind == SSM_ASSOCIATION_CHANGE:
        detail = _validate(AssociationEvent, event, "SSM association event").detail
        params = {"association_id": detail.association_id, "document_name": detail.document_name}
        return ParsedEvent(
            action="compliance-sync",
            params=params,
            trigger="ssm-association",
            reason=f"SSM association {_plain(detail.association_id)} ({_plain(detail.document_name)}) changed state",
        )
    if kind == CLOUDTRAIL_CALL:
        return _from_launch(_validate(LaunchEvent, event, "CloudTrail launch event"))
    raise EventError(
        f"unsupported EventBridge event detail-type {_shown(kind)}; expected {SCHEDULED!r}, {ALARM_CHANGE!r}, "
        f"{SSM_ASSOCIATION_CHANGE!r} or {CLOUDTRAIL_CALL!r}"
    )


def _from_launch(event: LaunchEvent) -> ParsedEvent:
    """The guard on the launching account only, now (its per-account triggers; the poll keeps the rest)."""
    detail = event.detail
    account = detail.recipientAccountId or event.account
    if account is None or not _ACCOUNT_ID.fullmatch(account):
        raise EventError(f"malformed CloudTrail launch event: no account id (account {_shown(event.account)})")
    name = detail.eventName
    if name not in LAUNCH_CALLS or detail.errorCode:
        why = f"a failed {name} ({_plain(detail.errorCode)})" if detail.errorCode else f"{_plain(name)}"
        return ParsedEvent(
            action="pass", trigger="launch", reason=f"CloudTrail event {why} in {account}: nothing to evaluate"
        )
    params = {"event_time": detail.eventTime.isoformat(), "event_name": name, "event_region": detail.awsRegion}
    return ParsedEvent(
        action="guard",
        trigger="launch",
        params=params,
        shard={"accounts": [account]},
        reason=f"{name} in {account} {detail.awsRegion} at {detail.eventTime.isoformat()}",
    )


def _from_alarm(detail: AlarmDetail, how: str) -> ParsedEvent:
    state = detail.state.value
    if state != "ALARM":
        shown_state = _plain(state)
        return ParsedEvent(
            action="pass",
            trigger="alarm",
            reason=f"alarm {_shown(detail.alarmName)} changed to {shown_state}: the guard runs only when an alarm "
            "enters ALARM",
        )
    reason = f"alarm {_shown(detail.alarmName)} entered ALARM ({how})"
    return ParsedEvent(action="guard", trigger="alarm", reason=reason)


def association_matches(parsed: ParsedEvent, association_ids: list[str], document_names: list[str]) -> str | None:
    """Why an SSM association event concerns us (`compliance.association_ids` / `document_names`), or None."""
    association_id = parsed.params.get("association_id")
    document_name = parsed.params.get("document_name")
    if association_id in association_ids:
        return f"association {association_id} is in compliance.association_ids"
    if document_name is not None and document_name in document_names:
        return f"document {document_name} is in compliance.document_names"
    return None


def _validate(model: type[M], event: Mapping[str, Any], what: str) -> M:
    try:
        return model.model_validate(dict(event))
    except ValidationError as exc:
        raise EventError(f"malformed {what}: {_problems(exc, model)}") from None


def _problems(exc: ValidationError, model: type[BaseModel]) -> str:
    keys = ", ".join(f.alias or name for name, f in model.model_fields.items())
    parts = []
    for err in exc.errors():
        where = ".".join(_shown(p) if not isinstance(p, str) or len(p) > 60 else p for p in err["loc"]) or "(event)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key (expected: {keys})")
        elif err["type"] == "missing":
            parts.append(f"{where}: required")
        elif err["type"] == "value_error":
            parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        else:
            parts.append(f"{where}: {err['msg']} (got {_shown(err.get('input'))})")
    if len(parts) > MAX_PROBLEMS:
        parts[MAX_PROBLEMS:] = [f"and {len(parts) - MAX_PROBLEMS} more"]
    return "; ".join(parts)


def _json_type(value: object) -> str:
    names = {list: "an array", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


__all__ = [
    "ACTIONS",
    "SHARDABLE",
    "SHARD_KEYS",
    "WINDOW_ACTIONS",
    "Action",
    "EventError",
    "ParsedEvent",
    "association_matches",
    "parse_event",
]
