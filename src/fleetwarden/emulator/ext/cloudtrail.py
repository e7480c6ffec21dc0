"""CloudTrail LookupEvents, which moto lacks, in AWS's documented request and response shapes.

`LookupEvents` (awsJson1.1, `X-Amz-Target: CloudTrail_20131101.LookupEvents`) answers from the events seeded for
the caller's account (moto's access-key mapping) and the region of the signature, newest first, as AWS does:

- `LookupAttributes`: at most one attribute (AWS: "the list can contain only one item"), one of `EventId`,
  `EventName`, `ReadOnly`, `Username`, `ResourceType`, `ResourceName`, `EventSource`, `AccessKeyId`; more than
  one, or an unknown key, is `InvalidLookupAttributesException`.
- `StartTime` / `EndTime` (inclusive); a start after the end is `InvalidTimeRangeException`. Without a start,
  the last 90 days (the event history's window).
- `MaxResults` 1-50 (default 50; else `InvalidMaxResultsException`); `NextToken` from the previous page of the
  same query (else `InvalidNextTokenException`).
- A rate limit per account and region, as AWS's (2 requests per second): a token bucket (burst 2, 2 per second
  by default); a request over it is answered `ThrottlingException` (HTTP 400), which botocore retries.

Seeding, through admin endpoints under `/_fleetwarden/cloudtrail/`:

- `POST events` `{"account_id", "region", "events": [...]}`: each event is either an `Events` item of AWS's
  shape (with `CloudTrailEvent` as a JSON string), or a shorthand
  `{"event_name": "RunInstances", "event_time": ISO, "user_identity": {...}, "instance_ids": [...]}` that
  builds one (the `CloudTrailEvent` record with `userIdentity` and `responseElements.instancesSet`, and one
  `AWS::EC2::Instance` resource per instance).
- `POST rate` `{"per_second": 2.0, "burst": 2}`: the rate limit (`per_second: null` turns it off).
- `GET events`: what is stored, for debugging.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import (
    BadToken,
    Extension,
    Request,
    StartResponse,
    json_error,
    json_response,
    page_token,
    query_digest,
    token_offset,
)

MAX_RESULTS = 50
HISTORY = timedelta(days=90)
DEFAULT_RATE = 2.0  # requests per second per account and region (AWS's LookupEvents limit)
DEFAULT_BURST = 2
_TARGET = "LookupEvents"

# LookupAttributes keys -> how each reads an event of the Events shape.
_ATTRIBUTES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "EventId": lambda e: [str(e.get("EventId", ""))],
    "EventName": lambda e: [str(e.get("EventName", ""))],
    "ReadOnly": lambda e: [str(e.get("ReadOnly", "false")).lower()],
    "Username": lambda e: [str(e.get("Username", ""))],
    "ResourceType": lambda e: [str(r.get("ResourceType", "")) for r in e.get("Resources") or []],
    "ResourceName": lambda e: [str(r.get("ResourceName", "")) for r in e.get("Resources") or []],
    "EventSource": lambda e: [str(e.get("EventSource", ""))],
    "AccessKeyId": lambda e: [str(e.get("AccessKeyId", ""))],
}


class _Invalid(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdminBadRequest(ValueError):
    """A bad admin body (HTTP 400)."""


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _State:
    events: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    per_second: float | None = DEFAULT_RATE
    burst: int = DEFAULT_BURST


class CloudTrailExtension(Extension):
    """LookupEvents over seeded events, with AWS's paging, validation and rate limit."""

    name = "cloudtrail"

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state = _State()

    def reset(self) -> None:
        with self._lock:
            self._state = _State()

    # -- AWS requests --------------------------------------------------------------------------------------
    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "cloudtrail" or request.action != _TARGET:
            return None
        if not self._admit(request.account_id, request.region):
            return json_error(start_response, 400, "ThrottlingException", "Rate exceeded")
        try:
            body = request.json()
            if not isinstance(body, dict):
                raise _Invalid("ValidationException", "the request body must be a JSON object")
            payload = self._lookup(request.account_id, request.region, body)
        except json.JSONDecodeError as exc:
            return json_error(start_response, 400, "ValidationException", str(exc))
        except _Invalid as exc:
            return json_error(start_response, 400, exc.code, str(exc))
        return json_response(start_response, payload)

    def _admit(self, account_id: str, region: str) -> bool:
        """Take a token from the (account, region) bucket; False when it is empty."""
        now = self._monotonic()
        with self._lock:
            rate, burst = self._state.per_second, self._state.burst
            if rate is None:
                return True
            bucket = self._state.buckets.setdefault((account_id, region), _Bucket(float(burst), now))
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True

    def _lookup(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        attributes = body.get("LookupAttributes") or []
        if not isinstance(attributes, list) or len(attributes) > 1:
            raise _Invalid("InvalidLookupAttributesException", "You cannot specify more than one lookup attribute.")
        wanted: tuple[str, str] | None = None
        if attributes:
            item = attributes[0]
            key = item.get("AttributeKey") if isinstance(item, dict) else None
            value = item.get("AttributeValue") if isinstance(item, dict) else None
            if key not in _ATTRIBUTES or not isinstance(value, str) or not value:
                raise _Invalid(
                    "InvalidLookupAttributesException",
                    f"AttributeKey must be one of {', '.join(_ATTRIBUTES)} with a non-empty AttributeValue",
                )
            wanted = (str(key), value)
        end = _time(body.get("EndTime"), "EndTime") or datetime.now(UTC).timestamp()
        start = _time(body.get("StartTime"), "StartTime") or (datetime.now(UTC) - HISTORY).timestamp()
        if start > end:
            raise _Invalid("InvalidTimeRangeException", "StartTime must be before EndTime")
        limit = body.get("MaxResults", MAX_RESULTS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_RESULTS:
            raise _Invalid("InvalidMaxResultsException", f"MaxResults must be between 1 and {MAX_RESULTS}")
        # The same query's pages share the token (defaulted times move on, so the request's own values count).
        asked = [wanted, body.get("StartTime"), body.get("EndTime"), limit]
        query = query_digest(asked)
        offset = _offset(body.get("NextToken"), query)
        with self._lock:
            events = list(self._state.events.get((account_id, region), []))
        matching = [
            e
            for e in events
            if start <= float(e["EventTime"]) <= end and (wanted is None or wanted[1] in _ATTRIBUTES[wanted[0]](e))
        ]
        matching.sort(key=lambda e: -float(e["EventTime"]))
        page = matching[offset : offset + limit]
        result: dict[str, Any] = {"Events": page}
        if offset + limit < len(matching):
            result["NextToken"] = page_token(query, offset + limit)
        return result

    # -- admin ---------------------------------------------------------------------------------------------
    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        from ..middleware import AdminError

        try:
            if path == "events" and method == "POST":
                return self._seed(body)
            if path == "rate" and method == "POST":
                return self._rate(body)
        except AdminBadRequest as exc:
            raise AdminError(f"cloudtrail/{path}: {exc}") from None
        if path == "events" and method == "GET":
            with self._lock:
                return {f"{a}/{r}": list(v) for (a, r), v in self._state.events.items()}
        return None

    def _seed(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            raise AdminBadRequest('POST {"account_id", "region", "events": [...]}')
        account_id, region = body.get("account_id"), body.get("region")
        if not isinstance(account_id, str) or not isinstance(region, str) or not account_id or not region:
            raise AdminBadRequest("account_id and region are required strings")
        events = [_event(raw, account_id, region) for raw in body["events"]]
        with self._lock:
            self._state.events.setdefault((account_id, region), []).extend(events)
            total = len(self._state.events[(account_id, region)])
        return {"added": len(events), "total": total, "event_ids": [e["EventId"] for e in events]}

    def _rate(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise AdminBadRequest('POST {"per_second": 2.0, "burst": 2}')
        rate, burst = body.get("per_second", DEFAULT_RATE), body.get("burst", DEFAULT_BURST)
        if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 0):
            raise AdminBadRequest("per_second must be a non-negative number or null")
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
            raise AdminBadRequest("burst must be a non-negative integer")
        with self._lock:
            self._state.per_second = None if rate is None else float(rate)
            self._state.burst = burst
            self._state.buckets.clear()
        return {"per_second": rate, "burst": burst}


def _time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _Invalid("ValidationException", f"{what} is not a timestamp: {value!r}") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise _Invalid("ValidationException", f"{what} is not a timestamp")


def _offset(token: Any, query: str) -> int:
    try:
        return token_offset(token, query)
    except BadToken:
        raise _Invalid("InvalidNextTokenException", "A token that is not valid was provided.") from None


def _event(raw: Any, account_id: str, region: str) -> dict[str, Any]:
    """One stored event in the Events shape (EventTime as epoch seconds)."""
    if not isinstance(raw, dict):
        raise AdminBadRequest("each event must be an object")
    if "EventName" in raw:
        event = dict(raw)
        event.setdefault("EventId", str(uuid.uuid4()))
        event["EventTime"] = _admin_time(event.get("EventTime"))
        event.setdefault("Resources", [])
        if not isinstance(event.get("CloudTrailEvent", ""), str):
            event["CloudTrailEvent"] = json.dumps(event["CloudTrailEvent"])
        return event
    name = raw.get("event_name", "RunInstances")
    identity = raw.get("user_identity")
    if not isinstance(identity, dict):
        raise AdminBadRequest("a shorthand event needs user_identity (CloudTrail's userIdentity object)")
    ids = raw.get("instance_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AdminBadRequest("instance_ids must be a list of instance ids")
    when = _admin_time(raw.get("event_time"))
    event_id = str(uuid.uuid4())
    record = {
        "eventVersion": "1.09",
        "userIdentity": identity,
        "eventTime": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": "203.0.113.10",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-12345678", "minCount": len(ids)}]}},
        "responseElements": {"instancesSet": {"items": [{"instanceId": i} for i in ids]}},
        "eventID": event_id,
        "readOnly": False,
        "eventType": "AwsApiCall",
        "recipientAccountId": account_id,
    }
    return {
        "EventId": event_id,
        "EventName": name,
        "ReadOnly": "false",
        "AccessKeyId": str(identity.get("accessKeyId", "AKIAEXAMPLE")),
        "EventTime": when,
        "EventSource": "ec2.amazonaws.com",
        "Username": _username(identity),
        "Resources": [{"ResourceType": "AWS::EC2::Instance", "ResourceName": i} for i in ids],
        "CloudTrailEvent": json.dumps(record),
    }


def _username(identity: dict[str, Any]) -> str:
    """The event's Username as CloudTrail fills it: the user name, or the session name of a role."""
    if identity.get("userName"):
        return str(identity["userName"])
    arn = str(identity.get("arn", ""))
    return arn.rsplit("/", 1)[-1] if "/" in arn else str(identity.get("type", ""))


def _admin_time(value: Any) -> float:
    if value is None:
        return datetime.now(UTC).timestamp()
    try:
        parsed = _time(value, "event_time")
    except _Invalid as exc:
        raise AdminBadRequest(str(exc)) from None
    assert parsed is not None
    return parsed
