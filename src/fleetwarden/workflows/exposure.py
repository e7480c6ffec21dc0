"""`fleetwarden findings exposure`: the network exposure check alone, read-only on the fleet.

targets -> DescribeInstances and the network path per account-region (concurrently; a failing target is reported,
the others complete) -> ExposureCheck -> reconcile with the state store (new / ongoing / resolved, snoozes) ->
RunReport.
"""

from __future__ import annotations

from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError

from ..aws.fanout import fan_out
from ..aws.session import SessionFactory
from ..aws.targets import error_text, resolve_targets
from ..checks.exposure import ExposureCheck
from ..checks.exposure_compare import compare, unavailable
from ..collect.ec2 import instance_from_api, iter_raw_instances
from ..collect.inspector_network import reachability
from ..collect.network import collect_network, interfaces_from_api
from ..model import ExceptionSet, Finding, RunReport, Target, TargetResult, TargetStatus
from ..reconcile import reconcile
from .base import RunContext
from .findings import summarize

WORKFLOW = "findings-exposure"


def compare_with_inspector(
    factory: SessionFactory, target: Target, findings: list[Finding], check: ExposureCheck, now: datetime
) -> list[Finding]:
    """The target's exposure findings beside Inspector's NETWORK_REACHABILITY findings (one ListFindings walk);
    Inspector unreadable (not enabled, access denied): the findings are kept, each saying so."""
    try:
        client = factory.client("inspector2", region=target.region, account_id=target.account_id)
        reaches = reachability(client, target.account_id)
    except (ClientError, BotoCoreError) as exc:
        return unavailable(findings, f"Amazon Inspector could not be read: {error_text(exc)}")
    return compare(findings, reaches, check, target.account_id, target.region, now)


def run_exposure_findings(ctx: RunContext) -> RunReport:
    """Decide, for every instance of every target, which ports the internet reaches; record them (check
    `exposure`) with the config's `audit.exposure` severities."""
    config = ctx.config
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=True, started_at=ctx.clock())
    plan = resolve_targets(config, ctx.factory)
    report.targets += plan.errors
    check = ExposureCheck(config.audit.exposure)
    now = ctx.clock()

    def collect(target: Target) -> list[Finding]:
        ec2 = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
        addressed = []
        for raw in iter_raw_instances(ec2):
            interfaces = interfaces_from_api(raw)
            if any(i.public_ipv4 or i.ipv6 for i in interfaces):
                addressed.append((instance_from_api(raw, target.account_id, target.region), interfaces))
        found: list[Finding] = []
        if addressed:
            network = collect_network(ec2)
            found = [
                f for instance, interfaces in addressed for f in check.evaluate(instance, interfaces, network, now)
            ]
        if config.audit.exposure.compare_inspector:
            found = compare_with_inspector(ctx.factory, target, found, check, now)
        return found

    collected: dict[Target, list[Finding]] = {}
    with ctx.account_leases(WORKFLOW, [a.account_id for a in plan.accounts]):
        for outcome in fan_out(plan.targets, collect, max_concurrency=config.aws.max_concurrency, label="exposure"):
            target = outcome.key
            if outcome.value is not None:
                collected[target] = outcome.value
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
        exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
        findings: list[Finding] = []
        # Only healthy targets reconcile: a target in error never resolves anything.
        for target in sorted(collected, key=lambda t: (t.account_id, t.region)):
            previous = ctx.store.load_findings(check.name, target.account_id, target.region)
            findings += reconcile(previous, collected[target], now, exceptions)
        ctx.store.save_findings(findings)

    report.targets.sort(key=lambda t: (t.account_id, t.region))
    report.findings = sorted(findings, key=lambda f: (-f.severity.rank, f.account_id, f.region, f.resource_id))
    report.summary = summarize(report)
    report.finished_at = ctx.clock()
    return report
