"""A hand-built RunReport for the output tests: findings of every status, a target in error, actions of several
outcomes and a failed delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetwarden.model import (
    ActionOutcome,
    ActionResult,
    Delivery,
    Finding,
    FindingStatus,
    RunReport,
    Severity,
    TargetResult,
    TargetStatus,
)

NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
DEV, PROD, SHARED = "111111111111", "222222222222", "333333333333"
SCRIPT = "<script>alert('x')</script>"


def sample_finding(
    account: str,
    region: str,
    instance: str,
    status: FindingStatus,
    severity: Severity = Severity.MEDIUM,
    **details: object,
) -> Finding:
    finding = Finding.create(
        check="tags",
        account_id=account,
        region=region,
        resource_id=instance,
        control="required-tags",
        title=f"{instance} is missing required tags",
        now=NOW - timedelta(days=2),
        severity=severity,
        details=dict(details),
    )
    return finding.model_copy(update={"status": status, "last_seen": NOW})


def make_report(dry_run: bool = True) -> RunReport:
    """Findings of every status, one target in error, actions of several outcomes and a failed delivery."""
    findings = [
        sample_finding(DEV, "us-east-1", "i-0new0000000000001", FindingStatus.NEW, Severity.HIGH, missing=["project"]),
        sample_finding(
            DEV,
            "eu-west-1",
            "i-0new0000000000002",
            FindingStatus.NEW,
            missing=["department", "project"],
            invalid={"created_by": "'nobody' is not an IAM user of this account"},
        ),
        sample_finding(
            PROD,
            "us-east-1",
            "i-0ongoing000000003",
            FindingStatus.ONGOING,
            invalid={"department": f"{SCRIPT!r} is not one of sysops, eng"},
        ),
        sample_finding(PROD, "us-east-1", "i-0resolved00000004", FindingStatus.RESOLVED, missing=["project"]),
        sample_finding(DEV, "us-east-1", "i-0snoozed000000005", FindingStatus.SUPPRESSED, missing=["project"]),
    ]
    return RunReport(
        run_id="20260304T103000Z-ab12",
        workflow="audit",
        dry_run=dry_run,
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=95),
        targets=[
            TargetResult(account_id=DEV, region="us-east-1"),
            TargetResult(account_id=DEV, region="eu-west-1"),
            TargetResult(account_id=PROD, region="us-east-1"),
            TargetResult(
                account_id=SHARED,
                region="ap-south-1",
                status=TargetStatus.ERROR,
                error="AssumeRole: AccessDenied: not authorized to assume FleetWarden",
            ),
        ],
        findings=findings,
        actions=[
            ActionResult(
                action="stop",
                account_id=DEV,
                region="us-east-1",
                resource_id="i-0new0000000000001",
                outcome=ActionOutcome.PLANNED,
                reason="missing required tags",
            ),
            ActionResult(
                action="stop",
                account_id=PROD,
                region="us-east-1",
                resource_id="i-0ongoing000000003",
                outcome=ActionOutcome.FAILED,
                reason="OperationNotPermitted: stop protection",
            ),
            ActionResult(
                action="stop",
                account_id=DEV,
                region="us-east-1",
                resource_id="i-0snoozed000000005",
                outcome=ActionOutcome.SKIPPED,
                reason="do-not-stop exception ex-42",
            ),
        ],
        deliveries=[
            Delivery(sink="ops", outcome="sent"),
            Delivery(sink="chat", outcome="failed", error="chat.postMessage: channel_not_found"),
        ],
        summary={
            "instances_audited": 1234,
            "violators": 3,
            "findings_by_status": {"new": 2},
            "warning": "the plan exceeds audit.max_actions=2",
        },
    )
