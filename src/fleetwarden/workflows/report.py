"""`fleetwarden report`: every open finding in the state store, across checks, as one report; optionally
delivered to sinks (Security Hub, OpenSearch, S3, Slack, email, SNS)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import UsageError
from ..model import FindingStatus, RunReport, Severity
from ..output import findings_csv, summary_subject, summary_text
from ..sinks import Attachment, Notification, deliver
from .base import RunContext

OPEN = (FindingStatus.NEW, FindingStatus.ONGOING, FindingStatus.SUPPRESSED)


@dataclass
class ReportOptions:
    checks: list[str] = field(default_factory=list)  # empty: every check
    sinks: list[str] = field(default_factory=list)
    include_resolved: bool = False
    severities: list[Severity] = field(default_factory=list)  # empty: every severity


def run_report(ctx: RunContext, options: ReportOptions) -> RunReport:
    unknown = [s for s in options.sinks if s not in ctx.config.sinks]
    if unknown:
        known = ", ".join(sorted(ctx.config.sinks)) or "none defined"
        raise UsageError(f"--sink {', '.join(unknown)}: not under `sinks` in the config ({known})")
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow="report", dry_run=True, started_at=now)
    statuses = [*OPEN, FindingStatus.RESOLVED] if options.include_resolved else list(OPEN)
    checks: list[str | None] = list(options.checks) or [None]
    findings = []
    for check in checks:
        findings += ctx.store.list_findings(check, statuses=statuses)
    if options.severities:
        # Filtered here, before the summary and the sinks, so the console, the files and the sinks all agree.
        findings = [f for f in findings if f.severity in options.severities]
    report.findings = sorted(findings, key=lambda f: (-f.severity.rank, f.check, f.account_id, f.region, f.resource_id))
    report.summary = {
        "findings": len(report.findings),
        "by_check": dict(Counter(f.check for f in report.findings)),
        "by_severity": dict(Counter(f.severity.value for f in report.findings)),
        "by_account": dict(Counter(f.account_id for f in report.findings)),
        "by_status": dict(Counter(f.status.value for f in report.findings)),
    }
    if options.sinks:
        notification = Notification(
            subject=summary_subject(report),
            text=summary_text(report),
            attachments=[Attachment(f"findings-{now:%Y%m%dT%H%M%SZ}.csv", findings_csv(report.findings))],
        )
        report.deliveries = deliver(options.sinks, ctx.config.sinks, notification, report, ctx.sink_context)
    report.finished_at = ctx.clock()
    return report
