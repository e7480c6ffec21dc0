"""Loopback networking for integration tests without port races: servers bind port 0 and report the port the
OS gave them, and an "unreachable" port stays bound (not listening) for as long as a test needs it refused."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller

# What connect() to a bound, non-listening loopback port raises, as str(OSError) shows it ("[Errno 111] Connection
# refused" on Linux); built from errno so the text is right on any platform.
CONNECTION_REFUSED = f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"


class LoopbackController(Controller):
    """aiosmtpd's Controller on 127.0.0.1 and a port the OS picks at bind time (no free-port-then-bind race).

    The stock Controller binds `port` and then connects to that same number to check the server started, so
    `port=0` alone fails; here the real port is read from the listening socket before that check runs.
    """

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections for as long as the block runs.

    The socket is bound but never listens: no other process can take the port meanwhile (unlike the port of a
    closed socket), and the kernel answers every connection attempt with a reset (ECONNREFUSED).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port
