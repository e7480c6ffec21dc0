"""`fleetwarden compliance sync` and `compliance report`: SSM compliance (InSpec) results as findings with
stable ids; alerts only on what is new or resolved; a periodic full report to S3 and the notify sinks.

An item is resolved only when its instance was scanned after the finding was last produced (a newer
execution of its compliance type) and the item is gone or compliant. Instances that were not scanned keep
their findings; a target in error resolves nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from ..aws.fanout import fan_out
from ..aws.targets import resolve_targets
from ..collect.compliance import ComplianceScan, item_finding, scan
from ..model import ExceptionSet, Finding, FindingStatus, RunReport, TargetResult, TargetStatus
from ..outbox import KIND as KIND_OUTBOX
from ..outbox import Outbox
from ..output import csv_bytes
from ..reconcile import reconcile
from ..sinks import Attachment, Notification, deliver
from .base import RunContext

log = logging.getLogger(__name__)
CHECK = "compliance"
CSV_COLUMNS = (
    "account_id",
    "region",
    "instance_id",
    "compliance_type",
    "item_id",
    "title",
    "severity",
    "status",
    "first_seen",
    "last_seen",
    "execution_time",
    "finding_id",
)


@dataclass
class SyncOptions:
    apply: bool = False
    # An org-run's shard (`{shard: N, fragments: ...}`): its alert is stored in the outbox under this id and not
    # sent; the org-run's aggregate sends one alert for the whole run (`org_run_alert`). None: a run of its own.
    held_alert_id: str | None = None


@dataclass
class ReportOptions:
    apply: bool = False


def compliance_csv(findings: list[Finding]) -> bytes:
    """One row per compliance finding (header included); cells a spreadsheet would run as formulas (an item id
    or title from PutComplianceItems such as `=HYPERLINK(...)`) are neutralised by `output.csv_cell`."""
    return csv_bytes(
        CSV_COLUMNS,
        (
            [
                f.account_id,
                f.region,
                f.resource_id,
                f.details.get("compliance_type", ""),
                f.details.get("item_id", ""),
                f.details.get("title", f.title),
                f.severity.value,
                f.status.value,
                f.first_seen.isoformat(),
                f.last_seen.isoformat(),
                f.details.get("execution_time", ""),
                f.id,
            ]
            for f in sorted(findings, key=lambda f: (f.account_id, f.region, f.resource_id, f.control))
        ),
    )


def _scanned_since(result: ComplianceScan, finding: Finding) -> bool:
    """Was the finding's instance scanned (its compliance type executed) after the finding was last produced?"""
    compliance_type = str(finding.details.get("compliance_type", "")) or None
    latest = result.last_execution(finding.resource_id, compliance_type)
    if latest is None:
        return False
    produced = finding.details.get("execution_time")
    reference = datetime.fromisoformat(str(produced)) if produced else finding.last_seen
    return latest > reference


def _sync_target(ctx: RunContext, result: ComplianceScan, exceptions: ExceptionSet) -> list[Finding]:
    now = ctx.clock()
    current = [item_finding(item, now) for item in result.non_compliant]
    current_ids = {f.id for f in current}
    stored = ctx.store.load_findings(CHECK, result.account_id, result.region)
    # Findings of instances not scanned since are carried over untouched: absence proves nothing there.
    previous = {i: f for i, f in stored.items() if i in current_ids or _scanned_since(result, f)}
    return reconcile(previous, current, now, exceptions)


def run_compliance_sync(ctx: RunContext, options: SyncOptions) -> RunReport:
    config = ctx.config
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow="compliance-sync", dry_run=not options.apply, started_at=now)
    outbox = Outbox(ctx.store, "compliance")
    held = options.held_alert_id is not None
    if options.apply and not held:  # a held shard sends nothing, not even earlier alerts (aggregate does)
        report.deliveries += outbox.flush(config.sinks, report, ctx.sink_context)  # earlier alerts first
    plan = resolve_targets(config, ctx.factory)
    report.targets += plan.errors
    types = list(config.compliance.types)
    exceptions = ExceptionSet(ctx.store.list_exceptions(), now)
    scanned_instances = 0
    for outcome in fan_out(
        plan.targets,
        lambda t: scan(
            ctx.factory.client("ssm", region=t.region, account_id=t.account_id), t.account_id, t.region, types
        ),
        max_concurrency=config.aws.max_concurrency,
        label="compliance",
    ):
        target = outcome.key
        if outcome.value is None:
            report.targets.append(
                TargetResult(
                    account_id=target.account_id, region=target.region, status=TargetStatus.ERROR, error=outcome.error
                )
            )
            continue
        report.targets.append(TargetResult(account_id=target.account_id, region=target.region))
        scanned_instances += len(outcome.value.instances)
        report.findings += _sync_target(ctx, outcome.value, exceptions)
    report.targets.sort(key=lambda t: (t.account_id, t.region))
    new = [f for f in report.findings if f.status == FindingStatus.NEW]
    resolved = [f for f in report.findings if f.status == FindingStatus.RESOLVED]
    still_open = [f for f in report.findings if f.status in (FindingStatus.NEW, FindingStatus.ONGOING)]
    report.summary = {
        "instances_scanned": scanned_instances,
        "new": len(new),
        "resolved": len(resolved),
        "still_open": len(still_open),
        "suppressed": sum(1 for f in report.findings if f.status == FindingStatus.SUPPRESSED),
        "alert": bool(new or resolved),
    }
    if options.apply:
        if (new or resolved) and config.compliance.notify:
            notification = _sync_notification(report, new, resolved, still_open, scanned_instances)
            # Stored before it is sent, and before the findings that it announces are recorded.
            outbox.enqueue(
                options.held_alert_id or ctx.run_id, list(config.compliance.notify), notification, now.isoformat()
            )
        ctx.store.save_findings(report.findings)
        if not held:
            report.deliveries += outbox.flush(config.sinks, report, ctx.sink_context)
    report.finished_at = ctx.clock()
    return report


def held_alert_id(run_id: str, shard: int) -> str:
    """The outbox id of an org-run shard's held alert."""
    return f"{run_id}/shard-{shard:05d}"


def org_run_alert(ctx: RunContext, report: RunReport) -> None:
    """An org-run's one compliance alert, from the merged report (aggregate, with apply).

    Each shard stored its alert in the outbox, unsent, before recording its findings (so a new item is announced
    even if the org-run dies before this step: the next sync sends the shards' alerts one by one). Here the
    merged alert is stored first, then the shards' alerts of this run are dropped, then the outbox is flushed:
    a crash in between sends an item twice, never zero times (outbox.py)."""
    config = ctx.config
    new = [f for f in report.findings if f.status == FindingStatus.NEW]
    resolved = [f for f in report.findings if f.status == FindingStatus.RESOLVED]
    still_open = [f for f in report.findings if f.status in (FindingStatus.NEW, FindingStatus.ONGOING)]
    outbox = Outbox(ctx.store, "compliance")
    if (new or resolved) and config.compliance.notify:
        scanned = int(report.summary.get("instances_scanned", 0) or 0)
        notification = _sync_notification(report, new, resolved, still_open, scanned)
        outbox.enqueue(report.run_id, list(config.compliance.notify), notification, ctx.clock().isoformat())
    for alert_id, _data, _version in outbox.pending():
        if alert_id.startswith(f"{report.run_id}/shard-"):
            ctx.store.delete_record(KIND_OUTBOX, alert_id)
    report.deliveries += outbox.flush(config.sinks, report, ctx.sink_context)


def _sync_notification(
    report: RunReport, new: list[Finding], resolved: list[Finding], still_open: list[Finding], scanned: int
) -> Notification:
    lines = [
        f"fleetwarden compliance sync {report.run_id}",
        f"Instances scanned: {scanned}",
        f"New non-compliant items: {len(new)}",
        f"Resolved items: {len(resolved)}",
        f"Still open: {len(still_open)}",
    ]
    by_severity = Counter(f.severity.value for f in new)
    if by_severity:
        lines.append("New by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(by_severity.items())))
    for f in new[:20]:
        lines.append(f"  NEW {f.severity.value} {f.account_id}/{f.region}/{f.resource_id}: {f.title}")
    for f in resolved[:20]:
        lines.append(f"  RESOLVED {f.account_id}/{f.region}/{f.resource_id}: {f.title}")
    attachments = [Attachment(f"compliance-new-{report.run_id}.csv", compliance_csv(new))] if new else []
    subject = f"fleetwarden compliance: {len(new)} new, {len(resolved)} resolved, {len(still_open)} open"
    return Notification(subject=subject, text="\n".join(lines), attachments=attachments)


def run_compliance_report(ctx: RunContext, options: ReportOptions) -> RunReport:
    """All open compliance findings as CSV (to the report sink with --apply) and a summary to the notify sinks."""
    config = ctx.config
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow="compliance-report", dry_run=not options.apply, started_at=now)
    findings = ctx.store.list_findings(CHECK, statuses=[FindingStatus.NEW, FindingStatus.ONGOING])
    report.findings = findings
    data = compliance_csv(findings)
    filename = f"compliance-{now.strftime('%Y%m%dT%H%M%SZ')}.csv"
    instances = {(f.account_id, f.region, f.resource_id) for f in findings}
    report.summary = {
        "affected_instances": len(instances),
        "open_items": len(findings),
        "by_severity": dict(Counter(f.severity.value for f in findings)),
        "by_account": dict(Counter(f.account_id for f in findings)),
        "csv_filename": filename,
        "csv_bytes": len(data),
    }
    if options.apply:
        url = None
        if config.compliance.report_sink:
            from ..sinks import build_sink
            from ..sinks.s3 import S3Sink

            sink = build_sink(
                config.compliance.report_sink, config.sinks[config.compliance.report_sink], ctx.sink_context
            )
            if isinstance(sink, S3Sink):
                url = sink.put_object(f"{now:%Y}/{now:%m}/{filename}", data, "text/csv")
                report.summary["csv_url"] = url
        if config.compliance.notify:
            lines = [
                f"fleetwarden monthly compliance report {now:%Y-%m-%d}",
                f"Affected instances: {len(instances)}",
                f"Open non-compliant items: {len(findings)}",
                "By severity: " + ", ".join(f"{k} {v}" for k, v in sorted(report.summary["by_severity"].items())),
                "By account: " + ", ".join(f"{k} {v}" for k, v in sorted(report.summary["by_account"].items())),
            ]
            if url:
                lines.append(f"Full CSV: {url}")
            notification = Notification(
                subject=f"fleetwarden compliance report: {len(findings)} open items on {len(instances)} instances",
                text="\n".join(lines),
                attachments=[Attachment(filename, data)],
            )
            report.deliveries += deliver(config.compliance.notify, config.sinks, notification, report, ctx.sink_context)
    report.finished_at = ctx.clock()
    return report
