"""WSGI middleware around moto's app: latency and fault injection, call counting and instance back-dating.

Every AWS request is attributed to (service, region) through its SigV4 credential scope
(`Credential=AKID/20250101/eu-west-3/ec2/aws4_request`) and to an action (the query `Action`, the JSON
`X-Amz-Target`, or the REST method and path). The middleware is configured by constructor arguments and by
admin endpoints under `/_fleetwarden/` (see docs/emulator.md); moto's own `/moto-api/reset` resets it too,
back to the constructor's settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .ext import Extension, Request, default_extensions

WsgiApp = Callable[..., Any]
StartResponse = Callable[..., Any]
Latency = float | tuple[float, float] | Sequence[float] | None

ADMIN_PREFIX = "/_fleetwarden/"
MOTO_RESET = "/moto-api/reset"

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_QUERY_SCOPE = re.compile(r"^[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request$")
_FORM = "application/x-www-form-urlencoded"
# Largest form body read to find the query `Action`; larger bodies are passed through untouched.
_MAX_FORM_BYTES = 4 * 1024 * 1024

FaultMode = Literal["unavailable", "throttle"]


class AdminError(ValueError):
    """A bad admin request: answered with HTTP 400 and the message."""


@dataclass(frozen=True)
class FaultRule:
    """Fail matching AWS requests: `unavailable` (HTTP 503) or `throttle` (a throttling code botocore retries).

    `service`, `region` and `action` of None match everything; `limit` caps how many requests the rule fails
    (None: no cap), which makes retry tests deterministic.
    """

    region: str | None = None
    service: str | None = None
    action: str | None = None
    mode: FaultMode = "unavailable"
    probability: float = 1.0
    limit: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> FaultRule:
        known = {"region", "service", "action", "mode", "probability", "limit"}
        unknown = set(raw) - known
        if unknown:
            raise AdminError(f"unknown fault rule keys: {sorted(unknown)} (expected some of {sorted(known)})")
        mode = raw.get("mode", "unavailable")
        if mode not in ("unavailable", "throttle"):
            raise AdminError(f"fault mode must be 'unavailable' or 'throttle', got {mode!r}")
        probability = float(raw.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise AdminError(f"fault probability must be within [0, 1], got {probability}")
        limit = raw.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise AdminError(f"fault limit must be a non-negative integer, got {limit!r}")
        return cls(
            region=_opt_str(raw, "region"),
            service=_opt_str(raw, "service"),
            action=_opt_str(raw, "action"),
            mode=mode,
            probability=probability,
            limit=limit,
        )

    def matches(self, call: CallInfo) -> bool:
        return (
            (self.region is None or self.region == call.region)
            and (self.service is None or self.service == call.service)
            and (self.action is None or self.action == call.action)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "service": self.service,
            "action": self.action,
            "mode": self.mode,
            "probability": self.probability,
            "limit": self.limit,
        }


@dataclass
class KillRule:
    """Signal a process right after the emulator has carried out the Nth matching call (kill-point tests).

    The call's effect is in the emulator's state when the signal is sent, and its response is never read: this
    is "the process died right after the call". `actions` of None match every call; `service` narrows them.
    """

    pid: int
    after: int
    actions: frozenset[str] | None = None
    service: str | None = None
    signal: int = int(signal.SIGKILL)
    seen: int = 0
    fired: bool = False

    @classmethod
    def parse(cls, raw: Any) -> KillRule:
        if not isinstance(raw, dict):
            raise AdminError('kill: POST {"pid": PID, "after": N, "actions": [...], "service": null, "signal": 9}')
        known = {"pid", "after", "actions", "service", "signal"}
        unknown = set(raw) - known
        if unknown:
            raise AdminError(f"unknown kill rule keys: {sorted(unknown)} (expected some of {sorted(known)})")
        pid, after = raw.get("pid"), raw.get("after")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
            raise AdminError("kill: pid must be the id of another process (an integer > 1)")
        if not isinstance(after, int) or isinstance(after, bool) or after < 1:
            raise AdminError("kill: after must be a positive integer (the Nth matching call)")
        actions = raw.get("actions")
        if actions is not None and (not isinstance(actions, list) or not all(isinstance(a, str) for a in actions)):
            raise AdminError("kill: actions must be a list of action names, or null for every call")
        number = raw.get("signal", int(signal.SIGKILL))
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            raise AdminError("kill: signal must be a positive signal number")
        return cls(
            pid=pid,
            after=after,
            actions=frozenset(actions) if actions is not None else None,
            service=_opt_str(raw, "service"),
            signal=number,
        )

    def matches(self, call: CallInfo) -> bool:
        return (self.actions is None or call.action in self.actions) and (
            self.service is None or self.service == call.service
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "after": self.after,
            "actions": sorted(self.actions) if self.actions is not None else None,
            "service": self.service,
            "signal": self.signal,
            "seen": self.seen,
            "fired": self.fired,
        }


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise AdminError(f"fault rule {key!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class CallInfo:
    """Who an AWS request is for, as the middleware sees it."""

    service: str
    region: str
    action: str
    protocol: Literal["ec2", "query", "json", "rest-json", "rest-xml"]


def _parse_latency(value: Any) -> tuple[float, float] | None:
    """`50` -> (50, 50); `[50, 100]` -> (50, 100); None or 0 -> None. Milliseconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AdminError("latency_ms must be a number or a [lo, hi] pair")
    if isinstance(value, int | float):
        lo = hi = float(value)
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise AdminError(f"latency_ms must be a number or a [lo, hi] pair, got {value!r}")
    if lo < 0 or hi < lo:
        raise AdminError(f"latency_ms needs 0 <= lo <= hi, got {value!r}")
    return None if hi == 0 else (lo, hi)


def _parse_launch_time(value: Any) -> datetime:
    """An ISO 8601 time -> the naive-UTC datetime moto keeps in `Instance.launch_time`."""
    if not isinstance(value, str):
        raise AdminError("launch_time must be an ISO 8601 string, e.g. 2025-01-01T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"launch_time is not ISO 8601: {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


class FleetwardenMiddleware:
    """Wraps moto's WSGI app with fleetwarden's emulator extensions (thread-safe)."""

    def __init__(
        self,
        app: WsgiApp,
        latency_ms: Latency = None,
        faults: Iterable[FaultRule | Mapping[str, Any]] = (),
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        extensions: Sequence[Extension] | None = None,
    ) -> None:
        self.app = app
        self.extensions = list(default_extensions() if extensions is None else extensions)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._initial_latency = _parse_latency(latency_ms)
        self._initial_faults = [f if isinstance(f, FaultRule) else FaultRule.parse(f) for f in faults]
        self._latency = self._initial_latency
        self._faults: list[FaultRule] = list(self._initial_faults)
        self._fault_hits: list[int] = [0] * len(self._faults)
        self._calls: dict[tuple[str, str, str], int] = {}
        self._injected: dict[tuple[str, str, str], int] = {}
        self._kill: KillRule | None = None

    # -- settings (also reachable in-process) ------------------------------------------------------------
    def set_latency(self, latency_ms: Latency) -> None:
        parsed = _parse_latency(latency_ms)
        with self._lock:
            self._latency = parsed

    def set_faults(self, faults: Iterable[FaultRule | Mapping[str, Any]]) -> None:
        rules = [f if isinstance(f, FaultRule) else FaultRule.parse(f) for f in faults]
        with self._lock:
            self._faults = rules
            self._fault_hits = [0] * len(rules)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._injected.clear()

    def reset(self) -> None:
        """Back to the constructor's latency and faults; counters cleared; extensions emptied."""
        for extension in self.extensions:
            extension.reset()
        with self._lock:
            self._latency = self._initial_latency
            self._faults = list(self._initial_faults)
            self._fault_hits = [0] * len(self._faults)
            self._calls.clear()
            self._injected.clear()
            self._kill = None

    def set_kill(self, rule: KillRule | None) -> None:
        with self._lock:
            self._kill = rule

    def kill_state(self) -> dict[str, Any]:
        with self._lock:
            return {"kill": self._kill.as_dict() if self._kill else None}

    def _after_call(self, call: CallInfo) -> None:
        """Count the call against the kill rule; signal its process once the Nth matching call is done."""
        with self._lock:
            rule = self._kill
            if rule is None or rule.fired or not rule.matches(call):
                return
            rule.seen += 1
            if rule.seen < rule.after:
                return
            rule.fired = True
        with contextlib.suppress(ProcessLookupError):  # the process already ended
            os.kill(rule.pid, rule.signal)

    def calls(self) -> dict[str, Any]:
        """Call counts per (service, region, action), and how many of them got an injected fault."""
        with self._lock:
            calls = sorted(self._calls.items())
            injected = dict(self._injected)
        rows = [
            {"service": s, "region": r, "action": a, "count": n, "faults": injected.get((s, r, a), 0)}
            for (s, r, a), n in calls
        ]
        return {"total": sum(n for _, n in calls), "faults": sum(injected.values()), "calls": rows}

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return {
                "latency_ms": list(self._latency) if self._latency else None,
                "faults": [
                    {**rule.as_dict(), "hits": hits} for rule, hits in zip(self._faults, self._fault_hits, strict=True)
                ],
            }

    # -- WSGI -------------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(ADMIN_PREFIX):
            return self._admin(path[len(ADMIN_PREFIX) :].strip("/"), environ, start_response)
        if path.startswith("/moto-api/"):
            if path.rstrip("/") == MOTO_RESET and environ.get("REQUEST_METHOD") == "POST":
                self.reset()
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        call = self._identify(environ)
        with self._lock:
            key = (call.service, call.region, call.action)
            self._calls[key] = self._calls.get(key, 0) + 1
            latency = self._latency
            fault = self._pick_fault(call)
            if fault is not None:
                self._injected[key] = self._injected.get(key, 0) + 1
        if latency is not None:
            lo, hi = latency
            self._sleep((lo if lo == hi else self._random.uniform(lo, hi)) / 1000.0)
        if fault is not None:
            return _fault_response(fault, call, start_response)
        answered = self._extend(call, environ, start_response) if self.extensions else None
        if answered is None:
            answered = self.app(environ, start_response)
        self._after_call(call)
        return answered

    def _extend(self, call: CallInfo, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes] | None:
        """Offer the request to each extension; the body is buffered and handed on to moto unchanged."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        request = Request(call.service, call.region, call.action, _account_of(environ), body, environ)
        for extension in self.extensions:
            answered = extension.handle(request, start_response)
            if answered is not None:
                return answered
        environ["wsgi.input"] = io.BytesIO(body)
        return None

    def _pick_fault(self, call: CallInfo) -> FaultRule | None:
        # Called under the lock: hit counts and the random generator are shared.
        for index, rule in enumerate(self._faults):
            if not rule.matches(call):
                continue
            if rule.limit is not None and self._fault_hits[index] >= rule.limit:
                continue
            if rule.probability >= 1.0 or self._random.random() < rule.probability:
                self._fault_hits[index] += 1
                return rule
        return None

    def _identify(self, environ: dict[str, Any]) -> CallInfo:
        query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
        region, service = "unknown", "unknown"
        match = _SCOPE.search(str(environ.get("HTTP_AUTHORIZATION", "")))
        if match:
            region, service = match.group(1), match.group(2)
        elif "X-Amz-Credential" in query:
            qmatch = _QUERY_SCOPE.match(query["X-Amz-Credential"][0])
            if qmatch:
                region, service = qmatch.group(1), qmatch.group(2)
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return CallInfo(service, region, str(target).rsplit(".", 1)[-1], "json")
        action = query.get("Action", [None])[0] or self._form_action(environ)
        if action:
            return CallInfo(service, region, action, "ec2" if service == "ec2" else "query")
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", "/"))
        if service == "s3":
            parts = [p for p in path.split("/") if p]
            return CallInfo(service, region, f"{method} {'object' if len(parts) > 1 else 'bucket'}", "rest-xml")
        protocol: Literal["rest-json", "rest-xml"] = "rest-xml" if service in ("route53", "cloudfront") else "rest-json"
        return CallInfo(service, region, f"{method} {path}", protocol)

    @staticmethod
    def _form_action(environ: dict[str, Any]) -> str | None:
        """The `Action` of a query-protocol POST; the body is buffered and handed on to moto unchanged."""
        if not str(environ.get("CONTENT_TYPE", "")).startswith(_FORM):
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        if length <= 0 or length > _MAX_FORM_BYTES:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        values = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action")
        return values[0] if values else None

    # -- admin endpoints ----------------------------------------------------------------------------------
    def _admin(self, name: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        try:
            body = _read_json(environ) if method == "POST" else None
            result = self._dispatch(name, method, body)
        except AdminError as exc:
            return _json_response(start_response, 400, {"error": str(exc)})
        if result is None:
            return _json_response(start_response, 404, {"error": f"no admin endpoint {method} {ADMIN_PREFIX}{name}"})
        return _json_response(start_response, 200, result)

    def _dispatch(self, name: str, method: str, body: Any) -> dict[str, Any] | None:
        head, _, rest = name.partition("/")
        for extension in self.extensions:
            if extension.name == head:
                return extension.admin(rest, method, body)
        if method == "GET":
            if name == "calls":
                return self.calls()
            if name in ("settings", "faults", "latency"):
                return self.settings()
            if name == "kill":
                return self.kill_state()
            return None
        if method != "POST":
            return None
        if name == "faults":
            rules = body.get("rules", body.get("faults")) if isinstance(body, dict) else body
            if rules is None:
                rules = []
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                raise AdminError('faults: POST a list of rules, or {"rules": [...]}; an empty list clears them')
            self.set_faults(rules)
            return self.settings()
        if name == "latency":
            value = body.get("latency_ms") if isinstance(body, dict) else body
            self.set_latency(value)
            return self.settings()
        if name == "calls/reset":
            self.reset_calls()
            return self.calls()
        if name == "reset":
            self.reset()
            return self.settings()
        if name == "launch-time":
            return _backdate(body)
        if name == "kill":
            self.set_kill(None if body is None else KillRule.parse(body))
            return self.kill_state()
        return None


def _account_of(environ: dict[str, Any]) -> str:
    """The account moto maps the request's access key to (assumed-role keys map to their account)."""
    match = re.search(r"Credential=([^/,\s]+)/", str(environ.get("HTTP_AUTHORIZATION", "")))
    if match:
        from moto.iam.models import get_account_id_from

        return str(get_account_id_from(match.group(1)))
    return "123456789012"


def _backdate(body: Any) -> dict[str, Any]:
    """Set `launch_time` of instances inside moto's EC2 backend (there is no API for it)."""
    if not isinstance(body, dict):
        raise AdminError('launch-time: POST {"account_id", "region", "instance_ids": [...], "launch_time": ISO}')
    account_id, region, ids = body.get("account_id"), body.get("region"), body.get("instance_ids")
    if not isinstance(account_id, str) or not re.fullmatch(r"\d{12}", account_id):
        raise AdminError("launch-time: account_id must be a 12-digit string")
    if not isinstance(region, str) or not region:
        raise AdminError("launch-time: region is required")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AdminError("launch-time: instance_ids must be a list of instance ids")
    launch_time = _parse_launch_time(body.get("launch_time"))

    from moto.ec2.models import ec2_backends

    if region not in ec2_backends[account_id]:
        raise AdminError(f"launch-time: unknown region {region!r}")
    backend = ec2_backends[account_id][region]
    wanted = set(ids)
    updated: list[str] = []
    for reservation in list(backend.reservations.values()):
        for instance in reservation.instances:
            if instance.id in wanted:
                # moto keeps a naive UTC datetime here and serialises it as LaunchTime.
                instance.launch_time = launch_time
                updated.append(instance.id)
    found = set(updated)
    return {
        "updated": sorted(updated),
        "missing": sorted(i for i in ids if i not in found),
        "launch_time": launch_time.isoformat() + "Z",
    }


def _read_json(environ: dict[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdminError(f"the body is not JSON: {exc}") from None


def _json_response(start_response: StartResponse, status: int, payload: Any) -> list[bytes]:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


# What each protocol's services answer, by mode: (HTTP status, error code). botocore retries all of them:
# 503 is a retryable status, and these throttling codes are in its throttling list.
_FAULT_CODES: dict[str, dict[str, tuple[int, str]]] = {
    "ec2": {"unavailable": (503, "Unavailable"), "throttle": (503, "RequestLimitExceeded")},
    "query": {"unavailable": (503, "ServiceUnavailable"), "throttle": (400, "Throttling")},
    "json": {"unavailable": (503, "ServiceUnavailableException"), "throttle": (400, "ThrottlingException")},
    "rest-json": {"unavailable": (503, "ServiceUnavailableException"), "throttle": (429, "ThrottlingException")},
    "rest-xml": {"unavailable": (503, "ServiceUnavailable"), "throttle": (503, "SlowDown")},
}
_REASONS = {400: "Bad Request", 429: "Too Many Requests", 503: "Service Unavailable"}


def _fault_response(rule: FaultRule, call: CallInfo, start_response: StartResponse) -> list[bytes]:
    status, code = _FAULT_CODES[call.protocol][rule.mode]
    if rule.mode == "throttle":
        message = "Rate exceeded (injected by the fleetwarden emulator)"
    else:
        message = f"Service unavailable in {call.region} (injected by the fleetwarden emulator)"
    request_id = str(uuid.uuid4())
    headers = [("x-amzn-RequestId", request_id)]
    if call.protocol == "ec2":
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        content_type = "text/xml"
    elif call.protocol == "query":
        kind = "Receiver" if status >= 500 else "Sender"
        body = (
            "<ErrorResponse><Error>"
            f"<Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        content_type = "text/xml"
    elif call.protocol == "rest-xml":
        body = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
        content_type = "application/xml"
    else:
        body = json.dumps({"__type": code, "message": message})
        content_type = "application/x-amz-json-1.1" if call.protocol == "json" else "application/json"
        headers.append(("x-amzn-ErrorType", code))
    data = body.encode()
    headers += [("Content-Type", content_type), ("Content-Length", str(len(data)))]
    start_response(f"{status} {_REASONS[status]}", headers)
    return [data]
