"""What every workflow run shares: config, session factory, state store, secrets, run id, clock."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from ..aws.session import SessionFactory
from ..config import Config
from ..errors import EXIT_FINDINGS, EXIT_OK, EXIT_PARTIAL, SafetyRefusal
from ..model import ActionOutcome, FindingStatus, JournalEntry, RunReport, Severity, TargetStatus, utcnow
from ..secrets import SecretResolver
from ..sinks import SinkContext
from ..state import StateStore, open_store

log = logging.getLogger(__name__)

# Leases are short and renewed while a run works (every third of their life), so a run that dies (a Lambda
# timeout, a kill) frees its accounts within two minutes, before the guard's next five-minute poll.
LEASE_TTL_SECONDS = 120


class LeaseKeeper:
    """The (workflow, account) leases one run holds: taken before acting, renewed by a background thread while
    the run works, given back at the end. `break_lease` (an operator's choice) takes over a lease held by another
    run, journaled with the holder it displaced."""

    def __init__(self, ctx: RunContext, workflow: str, *, break_lease: bool = False, ttl: int = LEASE_TTL_SECONDS):
        self.ctx = ctx
        self.workflow = workflow
        self.break_lease = break_lease
        self.ttl = ttl
        self.held: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self, account_id: str) -> str:
        """Who holds the lease on an account, for messages."""
        lease = self.ctx.store.get_lease(self.workflow, account_id)
        if lease is None:
            return "another run"
        owner, expires = lease
        return f"run {owner} (until {expires.strftime('%H:%M:%SZ')} unless renewed)"

    def acquire(self, account_id: str) -> bool:
        """Take the lease (or confirm it is ours); with break_lease, take it over from another holder."""
        store, now = self.ctx.store, self.ctx.clock()
        if not store.acquire_lease(self.workflow, account_id, self.ctx.run_id, now, self.ttl):
            if not self.break_lease:
                return False
            self._journal_break(account_id)
            store.break_lease(self.workflow, account_id)
            if not store.acquire_lease(self.workflow, account_id, self.ctx.run_id, self.ctx.clock(), self.ttl):
                return False
        with self._lock:
            if account_id not in self.held:
                self.held.append(account_id)
        self._start()
        return True

    def _journal_break(self, account_id: str) -> None:
        lease = self.ctx.store.get_lease(self.workflow, account_id)
        owner, expires = lease if lease else ("", None)
        now = self.ctx.clock()
        entry = JournalEntry(
            id=str(uuid.uuid4()),
            run_id=self.ctx.run_id,
            workflow=self.workflow,
            account_id=account_id,
            region="global",
            resource_id=f"lease:{self.workflow}",
            action="break-lease",
            outcome=ActionOutcome.DONE,
            at=now,
            before={"owner": owner, "expires_at": expires.isoformat() if expires else None},
            after={"owner": self.ctx.run_id},
        )
        self.ctx.store.journal(entry)
        log.warning("%s lease on %s broken by operator request (held by %s)", self.workflow, account_id, owner)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
            self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl / 3)):
            with self._lock:
                held = list(self.held)
            for account_id in held:
                try:
                    kept = self.ctx.store.acquire_lease(
                        self.workflow, account_id, self.ctx.run_id, self.ctx.clock(), self.ttl
                    )
                except Exception:  # a store hiccup must not kill the renewal of the other leases
                    log.warning("could not renew the %s lease on %s", self.workflow, account_id, exc_info=True)
                    continue
                if not kept:
                    log.warning("the %s lease on %s was taken over by another run", self.workflow, account_id)

    def release_all(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            held, self.held = list(self.held), []
        for account_id in held:
            self.ctx.store.release_lease(self.workflow, account_id, self.ctx.run_id)


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
        store.config_exceptions = tuple(config.exception_rules(clock()))
        return cls(config, factory, store, SecretResolver(factory, config.aws.sts_region), run_id, clock, sleep)

    @property
    def sink_context(self) -> SinkContext:
        return SinkContext(self.factory, self.secrets)

    @contextmanager
    def account_leases(self, workflow: str, account_ids: list[str], *, break_lease: bool = False) -> Iterator[None]:
        """Hold (and renew) the (workflow, account) leases for the block; refuse (exit 5) if another run holds
        one, unless break_lease."""
        keeper = LeaseKeeper(self, workflow, break_lease=break_lease)
        try:
            for account_id in sorted(set(account_ids)):
                if not keeper.acquire(account_id):
                    raise SafetyRefusal(
                        f"{keeper.holder(account_id)} holds the {workflow} lock on account {account_id}; nothing "
                        f"was done (a lease of a run that died expires within {LEASE_TTL_SECONDS} s; "
                        "--break-lease takes it over)"
                    )
            yield
        finally:
            keeper.release_all()


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
