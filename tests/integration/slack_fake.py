"""A loopback Slack Web API for tests: the methods the Slack sink uses (chat.postMessage,
files.getUploadURLExternal, files.completeUploadExternal, and conversations.open for direct messages) plus the
upload URLs it hands out. The `slack`
fixture (tests/integration/conftest.py) serves one on 127.0.0.1 per test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TOKEN = "xoxb-1111-2222-loopback-secret"
CHANNEL = "C0123ABCD9"
POSTED_TS = "1772620200.000100"
API_METHODS = ("chat.postMessage", "files.getUploadURLExternal", "files.completeUploadExternal", "conversations.open")


@dataclass
class Request:
    path: str
    method: str  # the Web API method, or "upload" for a POST to an upload URL
    headers: dict[str, str]
    body: bytes
    params: dict[str, Any]
    at: float = 0.0  # time.monotonic() when it arrived


@dataclass
class FakeSlack:
    """A loopback server speaking the three Web API methods the sink uses, plus the upload URLs it hands out."""

    token: str
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    fail: dict[str, str] = field(default_factory=dict)  # method -> Slack error code to answer with
    # method -> how many more calls to answer with HTTP 429 ("ratelimited", Retry-After: retry_after); -1: forever
    rate_limited: dict[str, int] = field(default_factory=dict)
    retry_after: str = "0"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The status, JSON body and extra headers of the answer (a 429 carries Retry-After)."""
        status, payload = self._answer(path, headers, body)
        if status == 429:
            return status, payload, {"Retry-After": self.retry_after}
        return status, payload, {}

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        method = "upload" if parts.path.startswith("/upload/") else parts.path.rsplit("/", 1)[-1]
        params: dict[str, Any] = dict(parse_qsl(parts.query))
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/json"):
            params.update(json.loads(body))
        elif content_type.startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode("utf-8")))
        with self.lock:
            self.requests.append(Request(parts.path, method, headers, body, params, time.monotonic()))
            n = sum(r.method == method for r in self.requests)
        if method == "upload":
            file_id = parts.path.rsplit("/", 1)[-1]
            with self.lock:
                self.uploads[file_id] = body
            return 200, {}
        if method not in API_METHODS:
            return 404, {"ok": False, "error": "unknown_method"}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}
        with self.lock:
            left = self.rate_limited.get(method, 0)
            if left:
                self.rate_limited[method] = left - 1 if left > 0 else left
        if left:
            return 429, {"ok": False, "error": "ratelimited"}
        if method in self.fail:
            return 200, {"ok": False, "error": self.fail[method]}
        if method == "conversations.open":
            # A direct-message channel per user, as Slack answers for a bot opening a DM (im:write).
            return 200, {"ok": True, "channel": {"id": "D" + str(params["users"]).split(",")[0][1:]}}
        if method == "chat.postMessage":
            return 200, {"ok": True, "channel": params["channel"], "ts": POSTED_TS, "message": {"text": "x"}}
        if method == "files.getUploadURLExternal":
            file_id = f"F{n:08d}"  # F00000001, F00000002, ...
            return 200, {"ok": True, "file_id": file_id, "upload_url": f"{self.url}/upload/{file_id}"}
        files = json.loads(params["files"])
        return 200, {"ok": True, "files": [{"id": f["id"], "title": f["title"]} for f in files]}


@contextmanager
def serve_fake_slack(token: str = TOKEN) -> Iterator[FakeSlack]:
    """A FakeSlack listening on 127.0.0.1 (a free port) for the duration; stopped afterwards."""
    fake = FakeSlack(token)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = fake.handle(self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
