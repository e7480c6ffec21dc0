"""What every workflow run shares: config, session factory, state store, secrets, run id, clock."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from ..aws.session import SessionFactory
from ..config import Config
from ..errors import EXIT_FINDINGS, EXIT_OK, EXIT_PARTIAL, SafetyRefusal
from ..model import ActionOutcome, FindingStatus, RunReport, Severity, TargetStatus, utcnow
from ..secrets import SecretResolver
from ..sinks import SinkContext
from ..state import StateStore, open_store

log = logging.getLogger(__name__)

LEASE_TTL_SECONDS = 3600


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class RunContext:
    """Everything a workflow needs, built once per run by the CLI or the Lambda handler."""

    config: Config
    factory: SessionFactory
    store: StateStore
    secrets: SecretResolver
    run_id: str
    clock: Callable[[], datetime] = utcnow
    # Waits in minutes (scan window settle, Inspector polling) go through this, so tests inject a fake clock.
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def create(
        cls,
        config: Config,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        factory: SessionFactory | None = None,
        store: StateStore | None = None,
    ) -> RunContext:
        run_id = new_run_id(clock())
        factory = factory or SessionFactory(config.aws, run_id=run_id)
        store = store or open_store(config.state, factory)
        return cls(config, factory, store, SecretResolver(factory, config.aws.sts_region), run_id, clock, sleep)

    @property
    def sink_context(self) -> SinkContext:
        return SinkContext(self.factory, self.secrets)

    @contextmanager
    def account_leases(self, workflow: str, account_ids: list[str]) -> Iterator[None]:
        """Hold the (workflow, account) leases for the block; refuse (exit 5) if another run holds one."""
        taken: list[str] = []
        try:
            for account_id in sorted(set(account_ids)):
                if not self.store.acquire_lease(workflow, account_id, self.run_id, self.clock(), LEASE_TTL_SECONDS):
                    raise SafetyRefusal(
                        f"another {workflow} run holds the lock on account {account_id}; nothing was done "
                        "(it expires after an hour if that run died)"
                    )
                taken.append(account_id)
            yield
        finally:
            for account_id in taken:
                self.store.release_lease(workflow, account_id, self.run_id)


def exit_code(report: RunReport, fail_on: Severity | None = None) -> int:
    """DESIGN.md's exit codes for a finished run (2, 5 and 1 are raised as errors before this)."""
    partial = (
        any(t.status == TargetStatus.ERROR for t in report.targets)
        or any(d.outcome == "failed" for d in report.deliveries)
        or any(a.outcome == ActionOutcome.FAILED for a in report.actions)
    )
    if partial:
        return EXIT_PARTIAL
    if fail_on is not None:
        open_statuses = (FindingStatus.NEW, FindingStatus.ONGOING)
        if any(f.status in open_statuses and f.severity.rank >= fail_on.rank for f in report.findings):
            return EXIT_FINDINGS
    return EXIT_OK
