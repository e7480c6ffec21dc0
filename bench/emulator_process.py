"""The emulator in a separate process for the benchmarks (so its CPU is not the tool's): started, waited for
(`READY <url>` on stdout), checked to be on loopback, and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path

from fleetwarden.emulator.server import EmulatorAdmin

ROOT = Path(__file__).resolve().parents[1]


class EmulatorProcess:
    """`command` must print `READY http://127.0.0.1:PORT` on its first stdout line."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> EmulatorProcess:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = lines[0].strip() if lines else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"emulator did not start within {timeout}s (got {line!r}); see {self.log_path}")
        self.url = line.split(" ", 1)[1]
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"emulator is not on loopback: {self.url}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin(self) -> EmulatorAdmin:
        return EmulatorAdmin(self.url, timeout=120)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
