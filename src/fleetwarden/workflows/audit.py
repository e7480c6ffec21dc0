"""`fleetwarden audit`: the tag audit across every account and region, and what to do with violators; with
`audit.exposure.enabled`, also the (report-only) network exposure check on the same DescribeInstances answer.

collect (per target, streamed) -> evaluate (TagCheck, canary identity) -> reconcile (state store) -> plan
(exceptions, the canary, blast radius) -> execute (only with --apply) -> deliver (audit.notify) -> RunReport.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from ..actions.ec2 import Ec2Actions
from ..aws.fanout import fan_out
from ..aws.targets import error_text, resolve_targets
from ..checks.exposure import ExposureCheck
from ..checks.tags import CONTROL, TagCheck, canary_tags, has_canary_tags, judge_canaries
from ..collect.ec2 import instance_from_api, iter_raw_instances
from ..collect.iam import PerAccount, list_users
from ..collect.network import Interface, collect_network, interfaces_from_api
from ..errors import FleetwardenError, SafetyRefusal
from ..model import (
    ActionOutcome,
    ActionResult,
    ExceptionKind,
    ExceptionSet,
    Finding,
    FindingStatus,
    Instance,
    RunReport,
    Target,
    TargetResult,
    TargetStatus,
)
from ..owners import OwnerResolver, OwnerStats
from ..reconcile import reconcile
from ..sinks import Notification, deliver
from .base import RunContext

log = logging.getLogger(__name__)

WORKFLOW = "audit"
STOPPABLE = frozenset({"pending", "running"})


class CanaryMissing(FleetwardenError):
    """The region's canary instance was not found: its (possibly empty) answer is not trusted."""


@dataclass
class AuditOptions:
    apply: bool = False
    confirm_terminate: bool = False
    # Called with the account ids about to see terminations; returns True if the user confirmed them.
    confirm_prompt: Callable[[list[str]], bool] | None = None


@dataclass
class TargetAudit:
    """One target's evaluation: its findings and the violating instances (nothing else is kept)."""

    target: Target
    findings: list[Finding] = field(default_factory=list)
    violators: dict[str, Instance] = field(default_factory=dict)
    canaries: set[str] = field(default_factory=set)  # the region's one canary (empty without one)
    instances_seen: int = 0
    exposure: list[Finding] = field(default_factory=list)  # report-only: never planned for an action
    # Every instance a finding is about (violators and canary candidates), for owner attribution.
    subjects: dict[str, Instance] = field(default_factory=dict)


def _audit_target(ctx: RunContext, check: TagCheck, users: PerAccount, target: Target) -> TargetAudit:
    now = ctx.clock()
    names: set[str] | None = None
    if check.needs_iam_users():
        names = {u.name for u in users.get(target.account_id)}
    wanted_canary = canary_tags(ctx.config.audit, target.region)
    result = TargetAudit(target)
    candidates: list[Instance] = []
    ec2 = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
    exposure = ExposureCheck(ctx.config.audit.exposure) if ctx.config.audit.exposure.enabled else None
    addressed: list[tuple[Instance, tuple[Interface, ...]]] = []
    for raw in iter_raw_instances(ec2):
        instance = instance_from_api(raw, target.account_id, target.region)
        result.instances_seen += 1
        if exposure is not None:
            interfaces = interfaces_from_api(raw)
            if any(i.public_ipv4 or i.ipv6 for i in interfaces):
                addressed.append((instance, interfaces))
        if has_canary_tags(instance, wanted_canary):
            candidates.append(instance)
            result.subjects[instance.id] = instance
        finding = check.evaluate(instance, names, now)
        if finding is not None:
            result.findings.append(finding)
            result.violators[instance.id] = instance
            result.subjects[instance.id] = instance
    if exposure is not None and addressed:
        # Only instances with an internet-routable address can be reached; without any, no network call is made.
        network = collect_network(ec2)
        for instance, interfaces in addressed:
            result.exposure += exposure.evaluate(instance, interfaces, network, now)
    if exposure is not None and ctx.config.audit.exposure.compare_inspector:
        from .exposure import compare_with_inspector

        result.exposure = compare_with_inspector(ctx.factory, target, result.exposure, exposure, now)
    if wanted_canary is None:
        return result
    verdict = judge_canaries(candidates, now, check.grace)
    if not verdict.stopped and not verdict.lookalikes:
        shown = ", ".join(f"{k}={v}" for k, v in wanted_canary.items())
        lookalikes = (
            f" ({', '.join(verdict.lookalikes)} carry its tags but are not stopped)" if verdict.lookalikes else ""
        )
        raise CanaryMissing(
            f"stopped canary instance ({shown}) not found{lookalikes}: this region's answer is not trusted"
        )
    if verdict.canary is not None:
        result.canaries.add(verdict.canary)
    elif not verdict.stopped:
        # The answer holds the canary's tags, so it is not an empty or wrong answer; but nothing here is the
        # canary: the instances carrying its tags are audited (and acted on) like any other, with a finding.
        log.warning("%s: no stopped canary; %s carry its tags and are audited", target, ", ".join(verdict.lookalikes))
    else:
        log.warning("%s: %d stopped instances carry the canary tags; none is exempt", target, len(verdict.stopped))
    result.findings += verdict.findings
    return result


def _attribute(
    ctx: RunContext, resolver: OwnerResolver, users: PerAccount, audit: TargetAudit, stats: OwnerStats
) -> TargetAudit:
    """Give each instance finding of the target its owner (never fails the target: see owners/resolve.py)."""
    if not audit.findings:
        return audit
    names: set[str] | None = None
    users_error: str | None = None
    try:
        names = {u.name for u in users.get(audit.target.account_id)}
    except (ClientError, BotoCoreError) as exc:
        users_error = error_text(exc)
    found = resolver.annotate(audit.target, audit.findings, audit.subjects, names, ctx.clock(), users_error)
    with _STATS_LOCK:
        stats.add(found)
    return audit


_STATS_LOCK = threading.Lock()


def _plan(
    ctx: RunContext, audits: list[TargetAudit], findings: list[Finding], exceptions: ExceptionSet
) -> tuple[dict[Target, list[Instance]], list[ActionResult], Counter[str]]:
    """Which violators the configured action applies to; everything else is reported as skipped.

    Also returns how many actions exceptions skipped, by exception kind.
    """
    action = ctx.config.audit.action
    plan: dict[Target, list[Instance]] = {}
    results: list[ActionResult] = []
    by_exception: Counter[str] = Counter()
    if action == "report":
        return plan, results, by_exception
    by_target = {a.target: a for a in audits}
    blocking_kind = ExceptionKind.DO_NOT_STOP if action == "stop" else ExceptionKind.DO_NOT_TERMINATE
    for finding in findings:
        # Only the tag rule leads to an action: a canary finding alone never does.
        if finding.control != CONTROL or finding.status not in (FindingStatus.NEW, FindingStatus.ONGOING):
            continue
        target = Target(finding.account_id, finding.region)
        audit = by_target[target]
        instance = audit.violators[finding.resource_id]

        def skip(reason: str, instance: Instance = instance) -> None:
            results.append(
                ActionResult(
                    action=action,
                    account_id=instance.account_id,
                    region=instance.region,
                    resource_id=instance.id,
                    outcome=ActionOutcome.SKIPPED,
                    reason=reason,
                )
            )

        rule = exceptions.find(
            blocking_kind, account_id=instance.account_id, region=instance.region, resource_id=instance.id
        )
        if instance.id in audit.canaries:
            skip("canary instances are never acted on")
        elif rule is not None:
            skip(f"{blocking_kind.value} exception {rule.id}: {rule.reason}")
            by_exception[blocking_kind.value] += 1
        elif action == "stop" and instance.state not in STOPPABLE:
            skip(f"already {instance.state}")
        else:
            plan.setdefault(target, []).append(instance)
    return plan, results, by_exception


def _confirm_terminate(options: AuditOptions, plan: dict[Target, list[Instance]]) -> None:
    if options.confirm_terminate or not plan:
        return
    accounts = sorted({t.account_id for t in plan})
    if options.confirm_prompt is not None and options.confirm_prompt(accounts):
        return
    raise SafetyRefusal(
        f"terminating {sum(len(v) for v in plan.values())} instance(s) in account(s) {', '.join(accounts)} "
        "needs --confirm-terminate (or typing the account ids at the prompt); nothing was done"
    )


def _execute(ctx: RunContext, plan: dict[Target, list[Instance]]) -> list[ActionResult]:
    audit_cfg = ctx.config.audit
    reason = f"fleetwarden audit {ctx.run_id}: required tags missing or invalid"

    def act(target: Target) -> list[ActionResult]:
        client = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
        actions = Ec2Actions(
            client,
            account_id=target.account_id,
            region=target.region,
            run_id=ctx.run_id,
            workflow=WORKFLOW,
            journal=ctx.store.journal,
            journal_many=ctx.store.journal_many,
            clock=ctx.clock,
        )
        instances = plan[target]
        if audit_cfg.action == "stop":
            return actions.stop(instances, reason=reason, override_stop_protection=audit_cfg.override_stop_protection)
        return actions.terminate(instances, reason=reason, snapshot=audit_cfg.snapshot_before_terminate)

    results: list[ActionResult] = []
    for outcome in fan_out(list(plan), act, max_concurrency=ctx.config.aws.max_concurrency, label="acting"):
        if outcome.value is not None:
            results += outcome.value
        else:
            target = outcome.key
            results += [
                ActionResult(
                    action=audit_cfg.action,
                    account_id=target.account_id,
                    region=target.region,
                    resource_id=i.id,
                    outcome=ActionOutcome.FAILED,
                    reason=outcome.error or "failed",
                )
                for i in plan[target]
            ]
    return results


def run_audit(ctx: RunContext, options: AuditOptions) -> RunReport:
    """Run the tag audit; raises SafetyRefusal (exit 5) before doing anything a safety rule forbids."""
    config = ctx.config
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=not options.apply, started_at=ctx.clock())
    check = TagCheck(config.audit)
    target_plan = resolve_targets(config, ctx.factory)
    report.targets += target_plan.errors
    iam_region = config.aws.sts_region
    users = PerAccount(lambda acct: list_users(ctx.factory.client("iam", region=iam_region, account_id=acct), acct))
    owners = config.audit.owners
    resolver = (
        OwnerResolver(
            owners,
            config.audit.created_by_tag,
            ctx.store,
            lambda t: ctx.factory.client("cloudtrail", region=t.region, account_id=t.account_id),
        )
        if owners.enabled
        else None
    )
    owner_stats = OwnerStats()

    def audit_one(target: Target) -> TargetAudit:
        audit = _audit_target(ctx, check, users, target)
        return audit if resolver is None else _attribute(ctx, resolver, users, audit, owner_stats)

    with ctx.account_leases(WORKFLOW, [a.account_id for a in target_plan.accounts]):
        audits: list[TargetAudit] = []
        for outcome in fan_out(
            target_plan.targets,
            audit_one,
            max_concurrency=config.aws.max_concurrency,
            label="auditing",
        ):
            target = outcome.key
            if outcome.value is not None:
                audits.append(outcome.value)
                report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
            else:
                report.targets.append(
                    TargetResult(
                        account_id=target.account_id,
                        region=target.region,
                        status=TargetStatus.ERROR,
                        error=outcome.error,
                    )
                )
        audits.sort(key=lambda a: (a.target.account_id, a.target.region))
        report.targets.sort(key=lambda t: (t.account_id, t.region))

        now = ctx.clock()
        exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
        findings: list[Finding] = []
        # Only healthy targets reconcile: a target in error never resolves anything.
        for audit in audits:
            previous = ctx.store.load_findings(check.name, audit.target.account_id, audit.target.region)
            findings += reconcile(previous, audit.findings, now, exceptions)
            if config.audit.exposure.enabled:
                previous = ctx.store.load_findings(ExposureCheck.name, audit.target.account_id, audit.target.region)
                findings += reconcile(previous, audit.exposure, now, exceptions)

        plan, skipped, by_exception = _plan(ctx, audits, findings, exceptions)
        notice = None
        if config.audit.notice_days:
            from .notice import decide

            notice = decide(ctx, audits, plan, now)
            plan = notice.act
        broad = _broad_exceptions(exceptions, config.audit.action)
        planned = sum(len(v) for v in plan.values())
        limit = config.audit.max_actions
        over_limit = planned > limit
        if options.apply:
            if over_limit:
                raise SafetyRefusal(
                    f"the plan would {config.audit.action} {planned} instances, over audit.max_actions={limit}; "
                    "nothing was done (raise audit.max_actions to allow it)"
                )
            if config.audit.action == "terminate":
                _confirm_terminate(options, plan)

        ctx.store.save_findings(findings)
        report.findings = findings
        report.actions = skipped
        if notice is not None:
            from .notice import carry_out

            report.actions += carry_out(ctx, notice, apply=options.apply)
        if options.apply and plan:
            report.actions += _execute(ctx, plan)
        else:
            report.actions += [
                ActionResult(
                    action=config.audit.action,
                    account_id=i.account_id,
                    region=i.region,
                    resource_id=i.id,
                    outcome=ActionOutcome.PLANNED,
                    reason="dry run: use --apply to act" if not over_limit else f"over max_actions={limit}",
                )
                for instances in plan.values()
                for i in instances
            ]

    report.summary = _summary(report, audits, over_limit, limit)
    report.summary.update(_exception_summary(report, by_exception, broad))
    report.summary["required_tags"] = list(config.audit.required_tags)
    if notice is not None:
        report.summary["notice"] = {"days": config.audit.notice_days, **{k: notice.counts[k] for k in
                                    ("marked", "waiting", "due", "cleared")}}  # fmt: skip
    if resolver is not None:
        report.summary["owners"] = {
            "by_source": dict(sorted(owner_stats.by_source.items())),
            "cloudtrail_calls": owner_stats.lookup_calls,
            "cached": owner_stats.cache_hits,
        }
    if config.audit.exposure.enabled:
        report.summary["exposed_ports"] = sum(
            1
            for f in report.findings
            if f.check == ExposureCheck.name and f.status in (FindingStatus.NEW, FindingStatus.ONGOING)
        )
    if config.audit.notify:
        from ..output import summary_subject, summary_text

        notification = Notification(
            subject=summary_subject(report),
            text=summary_text(report),
            data={"required_tags": list(config.audit.required_tags)},
        )
        report.deliveries = deliver(config.audit.notify, config.sinks, notification, report, ctx.sink_context)
    if resolver is not None and config.audit.owners.notify is not None:
        from ..owners.notify import notify_owners

        report.deliveries += notify_owners(ctx, report, apply=options.apply)
    report.finished_at = ctx.clock()
    return report


def _broad_exceptions(exceptions: ExceptionSet, action: str) -> list[str]:
    """Warnings (also logged) for active exceptions this audit honours that cover a whole account or the org."""
    kinds = {ExceptionKind.SNOOZE}
    if action != "report":
        kinds.add(ExceptionKind.DO_NOT_STOP if action == "stop" else ExceptionKind.DO_NOT_TERMINATE)
    warnings = []
    for rule in exceptions.broad(kinds):
        warning = f"{rule.id} ({rule.kind.value}) covers {rule.breadth}"
        log.warning("exception %s", warning)
        warnings.append(warning)
    return warnings


def _exception_summary(report: RunReport, by_exception: Counter[str], broad: list[str]) -> dict[str, object]:
    """What exceptions did in this run: actions skipped by kind, snoozed findings, broad exceptions."""
    skipped = sum(by_exception.values())
    snoozed = sum(1 for f in report.findings if f.status is FindingStatus.SUPPRESSED)
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(by_exception.items()))
    summary: dict[str, object] = {
        "skipped_by_exception": dict(sorted(by_exception.items())),
        "exceptions": f"{skipped} action(s) skipped"
        + (f" ({kinds})" if kinds else "")
        + f", {snoozed} finding(s) snoozed",
    }
    if broad:
        summary["broad_exceptions"] = "; ".join(broad)
    return summary


def _summary(report: RunReport, audits: list[TargetAudit], over_limit: bool, limit: int) -> dict[str, object]:
    by_status: dict[str, int] = {}
    for f in report.findings:
        by_status[f.status.value] = by_status.get(f.status.value, 0) + 1
    by_outcome: dict[str, int] = {}
    for a in report.actions:
        by_outcome[a.outcome.value] = by_outcome.get(a.outcome.value, 0) + 1
    summary: dict[str, object] = {
        "instances_audited": sum(a.instances_seen for a in audits),
        "accounts": len({t.account_id for t in report.targets}),
        "targets_ok": sum(1 for t in report.targets if t.status == TargetStatus.OK),
        "targets_error": sum(1 for t in report.targets if t.status == TargetStatus.ERROR),
        "violators": sum(
            1
            for f in report.findings
            if f.check != ExposureCheck.name and f.status in (FindingStatus.NEW, FindingStatus.ONGOING)
        ),
        "findings_by_status": by_status,
        "actions_by_outcome": by_outcome,
    }
    if over_limit:
        summary["warning"] = f"the plan exceeds audit.max_actions={limit}: --apply would be refused"
    return summary
