"""Emulated AWS operations that moto lacks, in AWS's documented request and response shapes.

Each extension module defines one `Extension` subclass; `default_extensions()` builds one of each. The
middleware offers every AWS request to each extension in turn (after latency and faults, before moto): an
extension either answers it or returns None to let moto answer. Extensions that need moto's data read the
in-process backends (the emulator runs moto in the same process). Admin endpoints under
`/_fleetwarden/<extension name>/...` seed them; `/moto-api/reset` resets them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Request:
    """One AWS request as the middleware identified it, with its body read."""

    service: str  # the SigV4 signing name, e.g. "inspector2", "ssm", "config"
    region: str
    action: str  # query Action, JSON X-Amz-Target operation, or "METHOD /path" for REST
    account_id: str  # from the access key (moto's mapping), "123456789012" by default
    body: bytes
    environ: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


class Extension:
    """Base of an emulated service extension."""

    name: ClassVar[str]

    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        """Answer the request, or return None to pass it to moto."""
        return None

    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        """An admin endpoint `/_fleetwarden/<name>/<path>`; None if unknown."""
        return None

    def reset(self) -> None:
        """Forget everything (on `/moto-api/reset`)."""


def json_response(
    start_response: StartResponse, payload: Any, status: int = 200, content_type: str = "application/x-amz-json-1.1"
) -> list[bytes]:
    body = json.dumps(payload, default=str).encode()
    start_response(
        f"{status} {'OK' if status == 200 else 'Error'}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


def json_error(
    start_response: StartResponse, status: int, code: str, message: str, *, rest: bool = False
) -> list[bytes]:
    """An error in the JSON protocols' shape (`__type` for awsJson, `x-amzn-ErrorType` header for REST-JSON)."""
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("x-amzn-ErrorType", code)]
    start_response(f"{status} Error", headers)
    return [body]


class BadToken(ValueError):
    """A page token this query did not hand out (each service answers it with its own error code)."""


def query_digest(asked: Any) -> str:
    """A short digest of what a request asks (everything but its page token): a token is good for that query only."""
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def page_token(query: str, offset: int) -> str:
    """An opaque page token: where the next page of this query starts."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset, "query": query}).encode()).decode()


def token_offset(token: Any, query: str) -> int:
    """Where the page of `token` starts (0 without a token); BadToken for one of another query, or garbage."""
    if token is None or token == "":
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(str(token)))
        if data["query"] != query:
            raise ValueError("another query")
        return int(data["offset"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BadToken(str(token)) from None


def default_extensions() -> list[Extension]:
    """One instance of every extension module in this package (imported here, never at package import)."""
    import importlib
    import pkgutil

    found: list[Extension] = []
    for module in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(mod).values():
            if (
                isinstance(value, type)
                and issubclass(value, Extension)
                and value is not Extension
                and value.__module__ == mod.__name__
            ):
                found.append(value())
    return sorted(found, key=lambda e: e.name)
