"""`fleetwarden findings inspector`: the fleet's Amazon Inspector (v2) findings, by severity and account.

targets -> ListFindings per account-region (concurrently; a failing target is reported, the others complete)
-> reconcile with the state store (new / ongoing / resolved, snoozes) -> RunReport. Read-only on the fleet.
"""

from __future__ import annotations

from ..aws.fanout import fan_out
from ..aws.targets import resolve_targets
from ..collect.inspector import CHECK, fleet_findings
from ..model import ExceptionSet, Finding, FindingStatus, RunReport, Severity, Target, TargetResult, TargetStatus
from ..reconcile import reconcile
from .base import RunContext

WORKFLOW = "findings-inspector"


def run_inspector_findings(ctx: RunContext) -> RunReport:
    """Collect every target's active Inspector findings on EC2 instances and record them (check `inspector`)."""
    config = ctx.config
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=True, started_at=ctx.clock())
    plan = resolve_targets(config, ctx.factory)
    report.targets += plan.errors
    now = ctx.clock()

    def collect(target: Target) -> list[Finding]:
        client = ctx.factory.client("inspector2", region=target.region, account_id=target.account_id)
        return list(fleet_findings(client, target.account_id, target.region, now))

    collected: dict[Target, list[Finding]] = {}
    with ctx.account_leases(WORKFLOW, [a.account_id for a in plan.accounts]):
        for outcome in fan_out(
            plan.targets, collect, max_concurrency=config.aws.max_concurrency, label="inspector findings"
        ):
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
            previous = ctx.store.load_findings(CHECK, target.account_id, target.region)
            findings += reconcile(previous, collected[target], now, exceptions)
        ctx.store.save_findings(findings)

    report.targets.sort(key=lambda t: (t.account_id, t.region))
    report.findings = sorted(findings, key=lambda f: (-f.severity.rank, f.account_id, f.region, f.resource_id))
    report.summary = summarize(report)
    report.finished_at = ctx.clock()
    return report


def summarize(report: RunReport) -> dict[str, object]:
    """Open findings (new, ongoing) by severity and by account, plus target and status counts."""
    open_findings = [f for f in report.findings if f.status in (FindingStatus.NEW, FindingStatus.ONGOING)]
    by_severity = {s.value: 0 for s in Severity}
    by_account: dict[str, dict[str, int]] = {}
    by_status: dict[str, int] = {}
    for f in report.findings:
        by_status[f.status.value] = by_status.get(f.status.value, 0) + 1
    for f in open_findings:
        by_severity[f.severity.value] += 1
        per_account = by_account.setdefault(f.account_id, {})
        per_account[f.severity.value] = per_account.get(f.severity.value, 0) + 1
    return {
        "open_findings": len(open_findings),
        "by_severity": by_severity,
        "by_account": {a: by_account[a] for a in sorted(by_account)},
        "findings_by_status": by_status,
        "instances_with_findings": len({(f.account_id, f.region, f.resource_id) for f in open_findings}),
        "accounts": len({t.account_id for t in report.targets}),
        "targets_ok": sum(1 for t in report.targets if t.status == TargetStatus.OK),
        "targets_error": sum(1 for t in report.targets if t.status == TargetStatus.ERROR),
    }
