"""The halt: stop every running and pending instance of a tripped account, region by region, as soon as each
region's inventory arrives; suspend its Auto Scaling processes; deal with unstoppable instances.

Auto Scaling, per region of a halted account (the processes are suspended on every group of the region either
way, whatever its desired capacity, so a group with no instance right now cannot launch after the halt):
- a region where an instance being halted carries `aws:autoscaling:groupName`: its groups are suspended at once,
  beside the stop, since the group would replace what the halt stops;
- any other region is swept once every stop of the run has been queued (`wait`): its sweep never takes a worker
  a stop call could use. Nothing the halt stops there belongs to a group; what the sweep covers is a group with
  no pending or running instance (desired > 0 and nothing launched yet, or its instances already stopped or
  terminated). EC2's inventory cannot tell whether such a group exists, so the sweep still costs one
  DescribeAutoScalingGroups per region: see bench/guard.md, "Auto Scaling in the halt".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from ...actions.asg import AsgProcesses
from ...actions.ec2 import Ec2Actions
from ...aws.targets import error_text
from ...collect.ec2 import one_time_spot_ids
from ...errors import FleetwardenError
from ...model import ActionOutcome, ActionResult, ExceptionKind, ExceptionSet, Instance, Target
from ..base import LeaseKeeper, RunContext

log = logging.getLogger(__name__)

WORKFLOW = "guard"


@dataclass
class _Job:
    target: Target
    action: str
    instance_ids: list[str]


class Halter:
    """Runs halt work on its own pool while the inventory is still streaming in: an account's lockout is
    submitted first (credentials are what an attacker holds), its regions' stops run beside it."""

    def __init__(self, ctx: RunContext, exceptions: ExceptionSet, *, apply: bool, break_lease: bool = False) -> None:
        self.ctx = ctx
        self.exceptions = exceptions
        self.apply = apply
        self.reason = f"fleetwarden guard {ctx.run_id}: runaway limit passed"
        self._pool = ThreadPoolExecutor(max_workers=ctx.config.aws.max_concurrency, thread_name_prefix="halt")
        self._lock = threading.Lock()
        self._jobs: list[tuple[_Job, Future[list[ActionResult]]]] = []
        self._asg_done: set[Target] = set()
        self._asg_later: dict[Target, None] = {}  # regions swept in wait(), after every stop queued (in order)
        self._leases = LeaseKeeper(ctx, WORKFLOW, break_lease=break_lease)
        self.claimed: set[str] = set()
        self.refused: dict[str, str] = {}

    # -- accounts ----------------------------------------------------------------------------------------
    def claim(self, account_id: str) -> bool:
        """Take the (guard, account) lease before acting; a lease held elsewhere makes the account an error."""
        if account_id in self.claimed:
            return True
        if account_id in self.refused:
            return False
        if not self.apply:
            self.claimed.add(account_id)
            return True
        if self._leases.acquire(account_id):
            self.claimed.add(account_id)
            return True
        self.refused[account_id] = (
            f"{self._leases.holder(account_id)} holds the guard lock on this account; it was not halted by this run "
            "(the lock of a run that died expires within two minutes; --break-lease takes it over)"
        )
        return False

    def release_leases(self) -> None:
        if self.apply:
            self._leases.release_all()

    # -- work --------------------------------------------------------------------------------------------
    def submit_lockout(self, account_id: str, lockout: Callable[[], list[ActionResult]]) -> None:
        """Lock an account's principals out, on the pool beside its stops."""
        self.submit_account(account_id, "lockout", lockout)

    def submit_account(self, account_id: str, action: str, work: Callable[[], list[ActionResult]]) -> None:
        """Account-wide work (the lockout, the quarantine), on the pool beside the account's stops."""
        with self._lock:
            job = _Job(Target(account_id, "global"), action, [])
            self._jobs.append((job, self._pool.submit(work)))

    def submit(self, target: Target, instances: list[Instance]) -> None:
        """Halt one region of a claimed account: stop its instances and (once) suspend its ASG processes: at once
        where a halted instance belongs to a group, else in `wait()` after every stop queued by then."""
        with self._lock:
            if instances:
                job = _Job(target, "stop", [i.id for i in instances])
                self._jobs.append((job, self._pool.submit(self._stop, target, instances)))
            if target in self._asg_done:
                return
            if any(i.asg_name for i in instances):
                self._asg_later.pop(target, None)
                self._submit_suspend(target)
            else:
                self._asg_later[target] = None

    def _submit_suspend(self, target: Target) -> None:
        self._asg_done.add(target)
        job = _Job(target, "suspend-processes", [])
        self._jobs.append((job, self._pool.submit(self._suspend, target)))

    def wait(self) -> list[ActionResult]:
        """Sweep the regions left for later, then every result; a region whose work raised reports each of its
        instances as failed."""
        results: list[ActionResult] = []
        with self._lock:
            for target in self._asg_later:
                self._submit_suspend(target)
            self._asg_later.clear()
            jobs = list(self._jobs)
        for job, future in jobs:
            try:
                results += future.result()
            except (ClientError, BotoCoreError, FleetwardenError) as exc:
                message = error_text(exc)
                log.warning("%s: %s failed: %s", job.target, job.action, message)
                ids = job.instance_ids or [
                    job.target.account_id if job.target.region == "global" else f"asg:{job.target.region}"
                ]
                results += [
                    ActionResult(
                        action=job.action,
                        account_id=job.target.account_id,
                        region=job.target.region,
                        resource_id=i,
                        outcome=ActionOutcome.FAILED,
                        reason=message,
                    )
                    for i in ids
                ]
        self._pool.shutdown(wait=True)
        return results

    def _stop(self, target: Target, instances: list[Instance]) -> list[ActionResult]:
        client = self.ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
        results: list[ActionResult] = []
        stoppable: list[Instance] = []
        unstoppable: list[tuple[Instance, str]] = []
        try:
            one_time = one_time_spot_ids(client, instances)
        except (ClientError, BotoCoreError) as exc:
            # Not knowing which spot instances are one-time must not keep the others running: each is tried,
            # and EC2's refusal for a one-time one is isolated by the batch split.
            log.warning("%s: cannot read spot requests (%s); stopping every instance", target, error_text(exc))
            one_time = set()
        for instance in instances:
            rule = self.exceptions.find(
                ExceptionKind.DO_NOT_STOP,
                account_id=instance.account_id,
                region=instance.region,
                resource_id=instance.id,
            )
            if rule is not None:
                results.append(
                    self._result(instance, "stop", ActionOutcome.SKIPPED, f"do-not-stop {rule.id}: {rule.reason}")
                )
            elif instance.root_device_type == "instance-store":
                unstoppable.append((instance, "instance-store root volume"))
            elif instance.id in one_time:
                unstoppable.append((instance, "one-time spot instance"))
            else:
                stoppable.append(instance)
        if not self.apply:
            results += [
                self._result(i, "stop", ActionOutcome.PLANNED, "dry run: use --apply to halt") for i in stoppable
            ]
            results += [self._unstoppable_plan(i, why) for i, why in unstoppable]
            return results
        actions = Ec2Actions(
            client,
            account_id=target.account_id,
            region=target.region,
            run_id=self.ctx.run_id,
            workflow=WORKFLOW,
            journal=self.ctx.store.journal,
            journal_many=self.ctx.store.journal_many,
            clock=self.ctx.clock,
            batch_size=1000,
        )
        if stoppable:
            results += actions.stop(stoppable, reason=self.reason, override_stop_protection=True)
        if unstoppable:
            if self.ctx.config.guard.on_unstoppable == "terminate":
                results += actions.terminate([i for i, _ in unstoppable], reason=self.reason, snapshot=True)
            else:
                results += [
                    self._result(i, "stop", ActionOutcome.SKIPPED, f"cannot be stopped ({why}); on_unstoppable: leave")
                    for i, why in unstoppable
                ]
        return results

    def _unstoppable_plan(self, instance: Instance, why: str) -> ActionResult:
        if self.ctx.config.guard.on_unstoppable == "terminate":
            return self._result(instance, "terminate", ActionOutcome.PLANNED, f"cannot be stopped ({why})")
        return self._result(
            instance, "stop", ActionOutcome.SKIPPED, f"cannot be stopped ({why}); on_unstoppable: leave"
        )

    def _suspend(self, target: Target) -> list[ActionResult]:
        client = self.ctx.factory.client("autoscaling", region=target.region, account_id=target.account_id)
        processes = AsgProcesses(
            client,
            account_id=target.account_id,
            region=target.region,
            run_id=self.ctx.run_id,
            workflow=WORKFLOW,
            journal=self.ctx.store.journal,
            clock=self.ctx.clock,
        )
        return processes.suspend() if self.apply else processes.plan()

    @staticmethod
    def _result(instance: Instance, action: str, outcome: ActionOutcome, reason: str) -> ActionResult:
        return ActionResult(
            action=action,
            account_id=instance.account_id,
            region=instance.region,
            resource_id=instance.id,
            outcome=outcome,
            reason=reason,
        )
