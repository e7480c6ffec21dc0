"""Bounded concurrency over targets: each target's failure is captured while the others complete."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def _progress_enabled(show: bool | None) -> bool:
    if show is not None:
        return show
    return sys.stderr.isatty() and logging.getLogger("fleetwarden").getEffectiveLevel() <= logging.INFO


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
    if _progress_enabled(show_progress):
        progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        progress.start()
        task = progress.add_task(label, total=len(keys))
    workers = max(1, min(max_concurrency, len(keys)))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fw") as pool:
            pending: dict[Future[T], K] = {pool.submit(work, key): key for key in keys}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    if progress is not None and task is not None:
                        progress.advance(task)
                    yield _outcome(key, future)
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
