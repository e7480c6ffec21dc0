"""Per-instance EC2 failures moto cannot produce: a StartInstances or StopInstances call that includes a
configured instance fails as AWS fails it (the whole call, with an error naming no instance).

Admin: POST `/_fleetwarden/ec2_faults/rules` `{"rules": [{"action": "StartInstances", "instance_ids": [...],
"code": "InsufficientInstanceCapacity", "message": "...", "status": 500}]}`; an empty list clears them.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import escape

from . import Extension, Request, StartResponse

_DEFAULT_MESSAGE = "We currently do not have sufficient capacity in the Availability Zone you requested."


class Ec2Faults(Extension):
    """Fail EC2 calls that include chosen instance ids."""

    name = "ec2_faults"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self._lock:
            self._rules = []

    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        if path != "rules":
            return None
        if method == "POST":
            rules = body.get("rules", []) if isinstance(body, dict) else body or []
            with self._lock:
                self._rules = [dict(r) for r in rules]
        with self._lock:
            return {"rules": list(self._rules)}

    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "ec2":
            return None
        with self._lock:
            rules = [r for r in self._rules if r.get("action") == request.action]
        if not rules:
            return None
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        ids = {v[0] for k, v in form.items() if k.startswith("InstanceId.")}
        for rule in rules:
            if ids & set(rule.get("instance_ids", [])):
                code = str(rule.get("code", "InsufficientInstanceCapacity"))
                message = escape(str(rule.get("message", _DEFAULT_MESSAGE)))
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message></Error></Errors><RequestID>fleetwarden-emulator</RequestID></Response>"
                ).encode()
                status = int(rule.get("status", 500))
                start_response(f"{status} Error", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
                return [body]
        return None
