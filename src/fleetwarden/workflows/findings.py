"""`fleetwarden findings inspector`: the fleet's Amazon Inspector (v2) findings, by severity and account.

targets -> ListFindings per account-region (concurrently; a failing target is reported, the others complete), or
per region from Inspector's delegated administrator for the accounts it sees (inspector.delegated_admin; what it
does not see, or a region where it fails, is read member by member) -> reconcile with the state store (new /
ongoing / resolved, snoozes) -> RunReport; with an export, CreateFindingsReport to S3 and the wait on it.
Read-only on the fleet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws.fanout import fan_out
from ..aws.session import AccountAccess, SessionFactory, reaching
from ..aws.targets import TargetPlan, error_text, resolve_targets
from ..collect import inspector_export
from ..collect.inspector import CHECK, associated_members, fleet_findings, organization_findings
from ..collect.inspector_export import ExportJob, ExportSpec
from ..model import (
    Delivery,
    ExceptionSet,
    Finding,
    FindingStatus,
    RunReport,
    Severity,
    Target,
    TargetResult,
    TargetStatus,
)
from ..reconcile import reconcile
from .base import RunContext

WORKFLOW = "findings-inspector"
# Summary entries of the collection itself, kept when --severity recomputes the summary.
_KEPT = ("collected_via", "delegated_admin", "exports")


class AdminUnreachable(Exception):
    """The config does not say how to reach the delegated administrator account."""


def _admin_factory(ctx: RunContext, plan: TargetPlan) -> SessionFactory:
    """A factory reaching the delegated administrator: through inspector.delegated_admin.role_arn, else as the fleet
    reaches that account (an account of the plan, an `accounts:` entry, the organization's role), else with the
    current credentials when they are that account's."""
    config = ctx.config
    admin = config.inspector.delegated_admin
    assert admin is not None
    account_id = admin.account_id
    if admin.role_arn:
        return reaching(ctx.factory, AccountAccess(account_id, admin.role_arn, admin.external_id, "inspector admin"))
    if any(a.account_id == account_id for a in plan.accounts):
        return ctx.factory
    entry = config.account(account_id)
    if entry is not None:
        return reaching(ctx.factory, AccountAccess(account_id, entry.role_arn, entry.external_id, entry.name))
    if ctx.factory.caller_identity()["account_id"] == account_id:
        return reaching(ctx.factory, AccountAccess(account_id, None, None, "inspector admin"))
    if config.organization is not None:
        role = f"arn:aws:iam::{account_id}:role/{config.organization.role_name}"
        return reaching(ctx.factory, AccountAccess(account_id, role, config.organization.external_id))
    raise AdminUnreachable(
        f"no way to reach the delegated administrator {account_id}: list it under accounts:, or give "
        "inspector.delegated_admin.role_arn"
    )


def _via_admin(
    ctx: RunContext, plan: TargetPlan, now: datetime
) -> tuple[dict[Target, list[Finding]], dict[str, Any], dict[str, set[str]]]:
    """Per region, from the delegated administrator: findings of the plan's accounts it sees. Returns them by
    target, the summary entry, and the accounts it sees per region (for the export)."""
    admin = ctx.config.inspector.delegated_admin
    assert admin is not None
    entry: dict[str, Any] = {"account_id": admin.account_id, "regions": {}}
    try:
        factory = _admin_factory(ctx, plan)
    except (AdminUnreachable, ClientError, BotoCoreError) as exc:  # read member by member
        text = str(exc) if isinstance(exc, AdminUnreachable) else error_text(exc)
        entry["error"] = f"{text}; read member by member"
        return {}, entry, {}
    by_region: dict[str, list[Target]] = {}
    for target in plan.targets:
        by_region.setdefault(target.region, []).append(target)

    def collect(region: str) -> tuple[set[str], dict[str, list[Finding]]]:
        client = factory.client("inspector2", region=region, account_id=admin.account_id)
        seen = associated_members(client) | {admin.account_id}
        wanted = [t.account_id for t in by_region[region] if t.account_id in seen]
        return seen, organization_findings(client, region, wanted, now) if wanted else {}

    found: dict[Target, list[Finding]] = {}
    members: dict[str, set[str]] = {}
    for outcome in fan_out(
        sorted(by_region), collect, max_concurrency=ctx.config.aws.max_concurrency, label="inspector admin"
    ):
        region = outcome.key
        if outcome.value is None:
            entry["regions"][region] = f"failed ({outcome.error}); read member by member"
            continue
        seen, by_account = outcome.value
        members[region] = seen
        for target in by_region[region]:
            if target.account_id in by_account:
                found[target] = by_account[target.account_id]
        unseen = sorted({t.account_id for t in by_region[region]} - seen)
        entry["regions"][region] = f"{len(by_account)} accounts" + (
            f"; not its members, read member by member: {', '.join(unseen)}" if unseen else ""
        )
    return found, entry, members


def run_inspector_findings(ctx: RunContext, export: ExportSpec | None = None) -> RunReport:
    """Collect every target's active Inspector findings on EC2 instances and record them (check `inspector`);
    with `export`, also have Inspector write findings reports to S3 and wait for them."""
    config = ctx.config
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=True, started_at=ctx.clock())
    plan = resolve_targets(config, ctx.factory)
    report.targets += plan.errors
    now = ctx.clock()
    admin_summary: dict[str, Any] | None = None
    via_admin: dict[Target, list[Finding]] = {}
    admin_members: dict[str, set[str]] = {}
    if config.inspector.delegated_admin is not None and plan.targets:
        via_admin, admin_summary, admin_members = _via_admin(ctx, plan, now)

    def collect(target: Target) -> list[Finding]:
        client = ctx.factory.client("inspector2", region=target.region, account_id=target.account_id)
        return list(fleet_findings(client, target.account_id, target.region, now))

    collected: dict[Target, list[Finding]] = dict(via_admin)
    for target in via_admin:
        report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
    members = [t for t in plan.targets if t not in via_admin]
    with ctx.account_leases(WORKFLOW, [a.account_id for a in plan.accounts]):
        for outcome in fan_out(
            members, collect, max_concurrency=config.aws.max_concurrency, label="inspector findings"
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
    if config.inspector.delegated_admin is not None:
        report.summary["collected_via"] = {"delegated_admin": len(via_admin), "member": len(members)}
        report.summary["delegated_admin"] = admin_summary
    if export is not None:
        jobs = _export(ctx, plan, export, admin_members)
        report.summary["exports"] = [job.as_dict(export) for job in jobs]
        report.deliveries += [
            Delivery(
                sink=f"{export.destination} ({job.account_id} {job.region})",
                outcome="sent" if job.ok else "failed",
                error=job.error,
            )
            for job in jobs
        ]
    report.summary = summarize(report)
    report.finished_at = ctx.clock()
    return report


def _export(ctx: RunContext, plan: TargetPlan, spec: ExportSpec, admin_members: dict[str, set[str]]) -> list[ExportJob]:
    """One report per region from the delegated administrator for the accounts it sees (10 per report), one per
    target for the rest; all are created first, then waited on together."""
    admin = ctx.config.inspector.delegated_admin
    planned: list[tuple[Any, ExportJob]] = []
    covered: set[Target] = set()
    if admin is not None and admin_members:
        factory = _admin_factory(ctx, plan)
        for region, seen in sorted(admin_members.items()):
            accounts = sorted({t.account_id for t in plan.targets if t.region == region and t.account_id in seen})
            covered |= {t for t in plan.targets if t.region == region and t.account_id in seen}
            client = factory.client("inspector2", region=region, account_id=admin.account_id)
            for start in range(0, len(accounts), inspector_export.ACCOUNTS_PER_REPORT):
                chunk = accounts[start : start + inspector_export.ACCOUNTS_PER_REPORT]
                planned.append((client, ExportJob(admin.account_id, region, chunk)))
    for target in plan.targets:
        if target in covered:
            continue
        client = ctx.factory.client("inspector2", region=target.region, account_id=target.account_id)
        planned.append((client, ExportJob(target.account_id, target.region, [target.account_id])))
    for client, job in planned:
        inspector_export.start(client, job, spec)
    inspector_export.wait(planned, spec)
    return [job for _client, job in planned]


def summarize(report: RunReport) -> dict[str, object]:
    """Open findings (new, ongoing) by severity and by account, plus target and status counts (and the
    collection's own entries: delegated administrator, exports)."""
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
        **{key: report.summary[key] for key in _KEPT if key in report.summary},
    }
