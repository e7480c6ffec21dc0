"""Run the real CLI in a child process, optionally killed (SIGKILL by the emulator) right after its Nth mutating
AWS call; and the state-store chores kill-point tests need. A helper module, not a test module."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import AwsSettings
from fleetwarden.emulator.server import EmulatorServer

# Every AWS call that changes something, for the workflows under test.
MUTATIONS = [
    "StartInstances",
    "StopInstances",
    "TerminateInstances",
    "ModifyInstanceAttribute",
    "CreateSnapshots",
    "SuspendProcesses",
    "ResumeProcesses",
    "UpdateAccessKey",
    "PutUserPolicy",
    "DeleteUserPolicy",
    "PutRolePolicy",
    "DeleteRolePolicy",
    "DeleteAccessKey",
    "DeleteLoginProfile",
    "CreateTags",
    "DeleteTags",
]
# The child waits for a line on stdin before it starts, so the kill point is armed with its pid first.
LAUNCHER = (
    "import sys; sys.stdin.readline(); from fleetwarden.cli import run; sys.argv = ['fleetwarden', *sys.argv[1:]]; "
    "run()"
)
MAX_POINTS = 30
KILLED = -9


def cli_child(aws: EmulatorServer, config: Path, *args: str, kill_after: int | None = None) -> tuple[int, str]:
    """Run `fleetwarden -c CONFIG ARGS` in a child process; with kill_after, SIGKILL it after that mutation."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "-c", str(config), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        if kill_after is not None:
            aws.client.set_kill(proc.pid, kill_after, MUTATIONS)
        out, err = proc.communicate(input=b"go\n", timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if kill_after is not None:
        aws.client.clear_kill()
    return proc.returncode, (out + err).decode("utf-8", "replace")


def expire_leases(config: Path) -> None:
    """Two minutes pass: every lease a killed run left behind is expired."""
    path = yaml.safe_load(config.read_text())["state"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE leases SET expires_at = '2000-01-01T00:00:00.000000Z'")


def fresh_state(config: Path) -> None:
    path = Path(yaml.safe_load(config.read_text())["state"].removeprefix("sqlite:///"))
    path.unlink(missing_ok=True)


def fresh_factory(aws: EmulatorServer) -> SessionFactory:
    """A new factory after a reset: moto forgets assumed-role keys on reset, so cached sessions would act in its
    default account."""
    return SessionFactory(AwsSettings(endpoint_url=aws.url, max_attempts=2, max_concurrency=8), run_id="test-run")


def kill_each_mutation(
    aws: EmulatorServer,
    config: Path,
    args: tuple[str, ...],
    *,
    prepare: Callable[[], None],
    converged: Callable[[int], None],
    finished: Callable[[], None],
) -> int:
    """Run `fleetwarden ARGS` killed after its 1st mutating call, then its 2nd, ... until a run ends on its own.

    Before each run `prepare()` sets up a fresh fleet and state; after a kill at call n, the run's leases are
    expired (two minutes pass) and `converged(n)` runs what comes next and checks the fleet converged; the run
    that was not killed is checked by `finished()`. Returns how many kill points there were.
    """
    for n in range(1, MAX_POINTS + 1):
        prepare()
        code, out = cli_child(aws, config, *args, kill_after=n)
        if code != KILLED:
            assert code == 0, out  # ran to the end: every mutation before this has been a kill point
            finished()
            return n - 1
        expire_leases(config)
        converged(n)
    raise AssertionError(f"{' '.join(args)} was still killed after {MAX_POINTS} mutations")
