"""Runs moto's server in a thread on 127.0.0.1 (a free port), with fleetwarden's WSGI middleware around it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware import FleetwardenMiddleware

WsgiApp = Callable[..., Any]


class EmulatorAdmin:
    """Talks to a running emulator's admin endpoints over HTTP (works for one in another process too)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, path: str, body: Any = None, method: str = "POST") -> bytes:
        """Send `body` (JSON-encoded unless bytes) to an admin path; raises RuntimeError on an HTTP error."""
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        if method == "POST" and data is None:
            data = b""
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise RuntimeError(f"emulator admin {method} {path} failed: HTTP {exc.code}: {detail}") from None

    def _json(self, path: str, body: Any = None, method: str = "POST") -> Any:
        return json.loads(self.request(path, body, method) or b"null")

    def set_latency(self, latency_ms: float | Sequence[float] | None) -> dict[str, Any]:
        """Fixed milliseconds, a [lo, hi] range, or None/0 for none."""
        result: dict[str, Any] = self._json("/_fleetwarden/latency", {"latency_ms": latency_ms})
        return result

    def set_faults(self, rules: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Replace the fault rules (an empty list clears them)."""
        result: dict[str, Any] = self._json("/_fleetwarden/faults", {"rules": list(rules)})
        return result

    def settings(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("/_fleetwarden/settings", method="GET")
        return result

    def calls(self) -> dict[str, Any]:
        """`{"total", "faults", "calls": [{"service", "region", "action", "count", "faults"}]}`."""
        result: dict[str, Any] = self._json("/_fleetwarden/calls", method="GET")
        return result

    def reset_calls(self) -> None:
        self.request("/_fleetwarden/calls/reset", {})

    def set_launch_time(
        self, account_id: str, region: str, instance_ids: Sequence[str], launch_time: datetime
    ) -> dict[str, Any]:
        """Back-date (or forward-date) instances; naive datetimes are taken as UTC."""
        when = launch_time if launch_time.tzinfo else launch_time.replace(tzinfo=UTC)
        body = {
            "account_id": account_id,
            "region": region,
            "instance_ids": list(instance_ids),
            "launch_time": when.astimezone(UTC).isoformat(),
        }
        result: dict[str, Any] = self._json("/_fleetwarden/launch-time", body)
        return result

    def set_kill(
        self, pid: int, after: int, actions: Sequence[str] | None = None, *, service: str | None = None
    ) -> dict[str, Any]:
        """Arm the kill point: SIGKILL `pid` right after the emulator carries out the `after`-th call among
        `actions` (every call when None). One rule at a time; a reset disarms it."""
        body: dict[str, Any] = {"pid": pid, "after": after, "actions": list(actions) if actions is not None else None}
        if service is not None:
            body["service"] = service
        result: dict[str, Any] = self._json("/_fleetwarden/kill", body)
        return result

    def clear_kill(self) -> None:
        """Disarm the kill point."""
        self.request("/_fleetwarden/kill", None)

    def kill_state(self) -> dict[str, Any]:
        """`{"kill": {"pid", "after", "actions", "seen", "fired", ...} or None}`."""
        result: dict[str, Any] = self._json("/_fleetwarden/kill", method="GET")
        return result

    def set_price_products(self, products: Sequence[Mapping[str, Any]], *, replace: bool = False) -> dict[str, Any]:
        """Add Price List products (AWS's item shape or the `{"region", "instance_type", "usd"}` shorthand);
        `replace` drops the catalogue, defaults included, first."""
        body = {"products": [dict(p) for p in products], "replace": replace}
        result: dict[str, Any] = self._json("/_fleetwarden/pricing/products", body)
        return result

    def set_price_faults(self, rules: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Fail GetProducts queries for chosen region codes (`{"region_code", "code", "status", "message"}`)."""
        result: dict[str, Any] = self._json("/_fleetwarden/pricing/faults", {"rules": [dict(r) for r in rules]})
        return result

    def reset(self) -> None:
        """Reset moto's backends and the middleware settings; keep Lambda off Docker."""
        self.request("/moto-api/reset")
        self.request("/moto-api/config", {"lambda": {"use_docker": False}})


class EmulatorServer:
    """moto in server mode, in-process, on loopback, wrapped in fleetwarden's middleware.

    `wrap` replaces the default middleware (`lambda app: app` gives bare moto); `latency_ms`, `faults` and
    `seed` configure the default one; `log_requests=False` drops the access log. `middleware` is the
    FleetwardenMiddleware in use, if any.
    """

    def __init__(
        self,
        port: int = 0,
        wrap: Callable[[WsgiApp], WsgiApp] | None = None,
        *,
        latency_ms: float | Sequence[float] | None = None,
        faults: Iterable[Mapping[str, Any]] = (),
        seed: int | None = None,
        log_requests: bool = True,
    ) -> None:
        self._port = port
        self._log_requests = log_requests
        self._wrap = wrap
        self._latency_ms = latency_ms
        self._faults = list(faults)
        self._seed = seed
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.middleware: FleetwardenMiddleware | None = None

    def start(self) -> EmulatorServer:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from .middleware import FleetwardenMiddleware

        app: WsgiApp = DomainDispatcherApplication(create_backend_app)
        if self._wrap is not None:
            app = self._wrap(app)
        else:
            app = FleetwardenMiddleware(app, latency_ms=self._latency_ms, faults=self._faults, seed=self._seed)
        if isinstance(app, FleetwardenMiddleware):
            self.middleware = app
        handler: type[Any] = MotoRequestHandler
        if not self._log_requests:

            class QuietHandler(MotoRequestHandler):  # type: ignore[misc]
                def log_request(self, *_: Any) -> None:  # no access log line per request
                    pass

            handler = QuietHandler
        self._server = make_server("127.0.0.1", self._port, app, threaded=True, request_handler=handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        self.admin("/moto-api/config", {"lambda": {"use_docker": False}})
        return self

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def client(self) -> EmulatorAdmin:
        """The admin client for this server."""
        return EmulatorAdmin(self.url)

    def admin(self, path: str, body: Any = None) -> bytes:
        """POST to one of moto's (or the middleware's) admin endpoints."""
        return self.client.request(path, body)

    def reset(self) -> None:
        """Reset moto's backends and the middleware (back to this server's constructor settings)."""
        self.client.reset()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
