"""Findings as OCSF Detection Findings (class_uid 2004), built and serialized with py-ocsf-models (the OCSF library
Prowler uses), written as JSON lines for data lakes (Amazon Security Lake custom sources, SIEMs)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from py_ocsf_models import OCSF_VERSION as _LIBRARY_OCSF_VERSION
from py_ocsf_models.events.findings.activity_id import ActivityID
from py_ocsf_models.events.findings.detection_finding import DetectionFinding
from py_ocsf_models.events.findings.detection_finding_type_id import DetectionFindingTypeID
from py_ocsf_models.events.findings.severity_id import SeverityID
from py_ocsf_models.events.findings.status_id import StatusID
from py_ocsf_models.objects.account import Account, TypeID
from py_ocsf_models.objects.analytic import Analytic
from py_ocsf_models.objects.cloud import Cloud
from py_ocsf_models.objects.finding_info import FindingInformation
from py_ocsf_models.objects.metadata import Metadata
from py_ocsf_models.objects.product import Product
from py_ocsf_models.objects.resource_details import ResourceDetails
from py_ocsf_models.objects.user import User

from .. import __version__
from ..model import Finding, FindingStatus, Severity, utcnow
from .asff import (
    DESCRIPTION_MAX,
    GLOBAL_REGION,
    finding_types,
    partition_for,
    resource_type,
    resource_uid,
    truncate,
)
from .compliance_map import related_controls
from .stats import compact_json, finding_problems

# The records are the library's models, so they claim the OCSF version the library models.
OCSF_VERSION: str = _LIBRARY_OCSF_VERSION
CLASS_UID = 2004
CLASS_NAME = "Detection Finding"
CATEGORY_UID = 2
CATEGORY_NAME = "Findings"
VENDOR_NAME = "fleetwarden"
PRODUCT_NAME = "fleetwarden"
AWS_ACCOUNT_TYPE_ID = int(TypeID.AWS_Account)  # 10, OCSF account type "AWS Account"
AWS_ACCOUNT_TYPE = "AWS Account"
ANALYTIC_RULE = 1  # analytic type_id 1: Rule
USER_TYPE_OTHER = 99  # user type_id 99 Other: the owner is an AWS account (its root principal), not a person
TITLE_MAX = 256

# activity_id: 1 Create, 2 Update, 3 Close
ACTIVITY: dict[FindingStatus, tuple[ActivityID, str]] = {
    FindingStatus.NEW: (ActivityID.Create, "Create"),
    FindingStatus.ONGOING: (ActivityID.Update, "Update"),
    FindingStatus.SUPPRESSED: (ActivityID.Update, "Update"),
    FindingStatus.RESOLVED: (ActivityID.Close, "Close"),
}
# status_id: 1 New, 2 In Progress, 3 Suppressed, 4 Resolved (the captions are OCSF's, with their spaces)
STATUS: dict[FindingStatus, tuple[StatusID, str]] = {
    FindingStatus.NEW: (StatusID.New, "New"),
    FindingStatus.ONGOING: (StatusID.InProgress, "In Progress"),
    FindingStatus.SUPPRESSED: (StatusID.Suppressed, "Suppressed"),
    FindingStatus.RESOLVED: (StatusID.Resolved, "Resolved"),
}
# severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical
SEVERITY: dict[Severity, tuple[SeverityID, str]] = {
    Severity.INFORMATIONAL: (SeverityID.Informational, "Informational"),
    Severity.LOW: (SeverityID.Low, "Low"),
    Severity.MEDIUM: (SeverityID.Medium, "Medium"),
    Severity.HIGH: (SeverityID.High, "High"),
    Severity.CRITICAL: (SeverityID.Critical, "Critical"),
}
# JSON allows these raw inside strings, but str.splitlines() (and some line readers) break a line at them: written
# escaped, each record stays on one line and parses back to the same text.
_LINE_BREAKS_IN_STRINGS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def epoch_ms(value: datetime) -> int:
    """OCSF timestamps are milliseconds since the epoch."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _description(finding: Finding) -> str:
    problems = finding_problems(finding)
    text = finding.title.rstrip(".") + "." + (f" {problems[:1].upper()}{problems[1:]}." if problems else "")
    return truncate(text, DESCRIPTION_MAX)


def _account(finding: Finding) -> Account:
    # The finding knows no account name: the id is the name (Account.name is required).
    return Account(uid=finding.account_id, name=finding.account_id, type_id=TypeID.AWS_Account, type=AWS_ACCOUNT_TYPE)


def _owner(finding: Finding, partition: str) -> User:
    """The resource's owner: the AWS account, as its root principal (User needs account, name, uid, type_id)."""
    return User(
        account=_account(finding),
        name=finding.account_id,
        uid=f"arn:{partition}:iam::{finding.account_id}:root",
        type_id=USER_TYPE_OTHER,
        type=AWS_ACCOUNT_TYPE,
    )


def ocsf_event(finding: Finding, now: datetime) -> DetectionFinding:
    """One finding as a py-ocsf-models DetectionFinding (cloud profile), timed `now`.

    A region `global` stays `global` in `cloud.region`, and resources carry no region then.
    """
    activity_id, activity_name = ACTIVITY[finding.status]
    status_id, status = STATUS[finding.status]
    severity_id, severity = SEVERITY[finding.severity]
    regional = finding.region != GLOBAL_REGION
    partition = partition_for(finding.region) if regional else "aws"
    title = truncate(finding.title, TITLE_MAX)
    return DetectionFinding(
        activity_id=activity_id,
        activity_name=activity_name,
        type_uid=DetectionFindingTypeID(CLASS_UID * 100 + activity_id),
        type_name=f"{CLASS_NAME}: {activity_name}",
        time=epoch_ms(now),
        severity_id=severity_id,
        severity=severity,
        status_id=status_id,
        status=status,
        message=title,
        finding_info=FindingInformation(
            uid=finding.id,
            title=title,
            desc=_description(finding),
            first_seen_time=epoch_ms(finding.first_seen),
            last_seen_time=epoch_ms(finding.last_seen),
            types=finding_types(finding.check),
            analytic=Analytic(
                uid=f"{finding.check}/{finding.control}", name=finding.check, type_id=ANALYTIC_RULE, type="Rule"
            ),
        ),
        resources=[
            ResourceDetails(
                uid=resource_uid(finding, finding.region),
                name=finding.resource_id,
                type=resource_type(finding),
                cloud_partition=partition,
                region=finding.region if regional else None,
                owner=_owner(finding, partition),
            )
        ],
        cloud=Cloud(provider="AWS", region=finding.region, account=_account(finding)),
        metadata=Metadata(
            version=OCSF_VERSION,
            product=Product(name=PRODUCT_NAME, vendor_name=VENDOR_NAME, version=__version__),
            profiles=["cloud"],
            event_code=finding.check,
        ),
        unmapped={
            "check": finding.check,
            "control": finding.control,
            "resource_type": finding.resource_type,
            "details": json.loads(compact_json(finding.details)),
            # Related FSBP / CIS controls by framework, as Prowler's `compliance` ({} when none)
            "compliance": related_controls(finding),
        },
    )


def _json_line(event: DetectionFinding) -> str:
    text: str = event.model_dump_json(exclude_none=True)
    for raw, escaped in _LINE_BREAKS_IN_STRINGS.items():
        text = text.replace(raw, escaped)
    return text


def to_ocsf(finding: Finding, now: datetime) -> dict[str, Any]:
    """One finding as an OCSF Detection Finding event (a JSON-ready dict, fields that are unset left out)."""
    data: dict[str, Any] = json.loads(_json_line(ocsf_event(finding, now)))
    return data


def ocsf_lines(findings: Iterable[Finding], now: datetime) -> bytes:
    """The findings as OCSF JSON lines (UTF-8, one event per line)."""
    return b"".join((_json_line(ocsf_event(f, now)) + "\n").encode("utf-8") for f in findings)


def write_ocsf(findings: Iterable[Finding], path: Path | str, now: datetime | None = None) -> Path:
    """Write the findings as OCSF JSON lines to `path` (atomically: beside it, then renamed); return the path."""
    path = Path(path)
    data = ocsf_lines(findings, now or utcnow())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
