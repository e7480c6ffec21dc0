"""Bounded concurrency over targets: each target's failure is captured while the others complete."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import FleetwardenError
from .targets import error_text

log = logging.getLogger(__name__)

K = TypeVar("K")
T = TypeVar("T")


@dataclass
class Outcome(Generic[K, T]):
    """The result of one unit of work: a value, or the error that stopped it."""

    key: K
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


ProgressMode = Literal["off", "auto"]
# Whether fan-outs report progress on stderr. Off unless the command line turns it on (a Lambda's or a library
# caller's stderr is a log, not a person); `--quiet` keeps it off. A context variable: a fan-out inside a worker
# thread (a nested one) starts with the default and stays silent, so only the outer loop reports.
_mode: ContextVar[ProgressMode] = ContextVar("fleetwarden_progress", default="off")
# Without a terminal: one line per this many seconds while the work lasts (none at all for a run shorter).
LINE_EVERY_SECONDS = 10.0


@contextmanager
def progress_reporting(mode: ProgressMode) -> Iterator[None]:
    """Within the block, fan-outs report progress as `mode` says: `auto` is a live bar on a terminal and a line
    every LINE_EVERY_SECONDS otherwise; `off` is nothing."""
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


def _progress_enabled(show: bool | None) -> bool:
    if show is not None:
        return show
    return _mode.get() == "auto" and sys.stderr.isatty()


class _Ticker:
    """Progress for a log rather than a terminal: done of total, errors so far, elapsed and an estimate of what is
    left, at most once per `every` seconds."""

    def __init__(self, label: str, total: int, every: float) -> None:
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.monotonic()
        self.done = self.errors = 0

    def advance(self, error: bool) -> None:
        self.done += 1
        self.errors += error

    def maybe_print(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        left = f", ~{elapsed / self.done * (self.total - self.done):.0f}s left" if self.done else ""
        print(
            f"{self.label}: {self.done}/{self.total} done, {self.errors} error(s), {elapsed:.0f}s elapsed{left}",
            file=sys.stderr,
            flush=True,
        )


def fan_out(
    keys: Sequence[K],
    work: Callable[[K], T],
    *,
    max_concurrency: int,
    label: str = "targets",
    show_progress: bool | None = None,
) -> Iterator[Outcome[K, T]]:
    """Run `work` over `keys` with at most `max_concurrency` at once; yield outcomes as they complete.

    An AWS error (or any other) in one key is captured in its Outcome; the others go on. Results are
    yielded as soon as each finishes, so callers can stream them without holding all in memory.
    """
    if not keys:
        return
    progress = None
    task = None
    ticker = None
    if _progress_enabled(show_progress):
        progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[errors]} error(s)"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        progress.start()
        task = progress.add_task(label, total=len(keys), errors=0)
    elif show_progress is None and _mode.get() == "auto":
        ticker = _Ticker(label, len(keys), LINE_EVERY_SECONDS)
    workers = max(1, min(max_concurrency, len(keys)))
    errors = 0
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fw") as pool:
            pending: dict[Future[T], K] = {pool.submit(work, key): key for key in keys}
            while pending:
                timeout = ticker.every if ticker is not None else None
                done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    outcome = _outcome(key, future)
                    errors += not outcome.ok
                    if progress is not None and task is not None:
                        progress.update(task, advance=1, errors=errors)
                    if ticker is not None:
                        ticker.advance(not outcome.ok)
                    yield outcome
                if ticker is not None:
                    ticker.maybe_print()
    finally:
        if progress is not None:
            progress.stop()


def _outcome(key: K, future: Future[T]) -> Outcome[K, T]:
    try:
        return Outcome(key, value=future.result())
    except (ClientError, BotoCoreError, FleetwardenError) as exc:
        log.warning("%s: %s", key, error_text(exc))
        return Outcome(key, error=error_text(exc))
    except Exception as exc:  # a bug in one target must not stop the others; it is reported, not hidden
        log.exception("%s: unexpected error", key)
        return Outcome(key, error=f"unexpected {error_text(exc)}")
