"""Runs moto's server in a thread on 127.0.0.1 (a free port), with fleetwarden's WSGI middleware around it."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

WsgiApp = Callable[..., Any]


class EmulatorServer:
    """moto in server mode, in-process, on loopback. `wrap` adds WSGI middleware around moto's app."""

    def __init__(self, port: int = 0, wrap: Callable[[WsgiApp], WsgiApp] | None = None) -> None:
        self._port = port
        self._wrap = wrap
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app: WsgiApp = DomainDispatcherApplication(create_backend_app)
        if self._wrap is not None:
            app = self._wrap(app)
        self._server = make_server("127.0.0.1", self._port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        self.admin("/moto-api/config", {"lambda": {"use_docker": False}})
        return self

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def admin(self, path: str, body: Any = None) -> bytes:
        """POST to one of moto's (or the middleware's) admin endpoints."""
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        req = urllib.request.Request(self.url + path, data=data or b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bytes(resp.read())

    def reset(self) -> None:
        self.admin("/moto-api/reset")
        self.admin("/moto-api/config", {"lambda": {"use_docker": False}})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
