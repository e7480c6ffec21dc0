"""Findings as OCSF Detection Findings (class_uid 2004, OCSF 1.1.0), written as JSON lines for data lakes
(Amazon Security Lake custom sources, SIEMs)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from .stats import compact_json, finding_problems

OCSF_VERSION = "1.1.0"
CLASS_UID = 2004
CLASS_NAME = "Detection Finding"
CATEGORY_UID = 2
CATEGORY_NAME = "Findings"
VENDOR_NAME = "fleetwarden"
AWS_ACCOUNT_TYPE_ID = 10  # OCSF account type "AWS Account"

# activity_id: 1 Create, 2 Update, 3 Close
ACTIVITY: dict[FindingStatus, tuple[int, str]] = {
    FindingStatus.NEW: (1, "Create"),
    FindingStatus.ONGOING: (2, "Update"),
    FindingStatus.SUPPRESSED: (2, "Update"),
    FindingStatus.RESOLVED: (3, "Close"),
}
# status_id: 1 New, 2 In Progress, 3 Suppressed, 4 Resolved
STATUS: dict[FindingStatus, tuple[int, str]] = {
    FindingStatus.NEW: (1, "New"),
    FindingStatus.ONGOING: (2, "In Progress"),
    FindingStatus.SUPPRESSED: (3, "Suppressed"),
    FindingStatus.RESOLVED: (4, "Resolved"),
}
# severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical
SEVERITY: dict[Severity, tuple[int, str]] = {
    Severity.INFORMATIONAL: (1, "Informational"),
    Severity.LOW: (2, "Low"),
    Severity.MEDIUM: (3, "Medium"),
    Severity.HIGH: (4, "High"),
    Severity.CRITICAL: (5, "Critical"),
}


def epoch_ms(value: datetime) -> int:
    """OCSF timestamps are milliseconds since the epoch."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _description(finding: Finding) -> str:
    problems = finding_problems(finding)
    text = finding.title.rstrip(".") + "." + (f" {problems[:1].upper()}{problems[1:]}." if problems else "")
    return truncate(text, DESCRIPTION_MAX)


def to_ocsf(finding: Finding, now: datetime) -> dict[str, Any]:
    """One finding as an OCSF 1.1.0 Detection Finding event (cloud profile), timed `now`.

    A region `global` stays `global` in `cloud.region`, and resources carry no region then.
    """
    activity_id, activity_name = ACTIVITY[finding.status]
    status_id, status = STATUS[finding.status]
    severity_id, severity = SEVERITY[finding.severity]
    regional = finding.region != GLOBAL_REGION
    partition = partition_for(finding.region) if regional else "aws"
    resource: dict[str, Any] = {
        "uid": resource_uid(finding, finding.region),
        "name": finding.resource_id,
        "type": resource_type(finding),
        "cloud_partition": partition,
        "owner": {"account": {"uid": finding.account_id, "type_id": AWS_ACCOUNT_TYPE_ID, "type": "AWS Account"}},
    }
    if regional:
        resource["region"] = finding.region
    return {
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"{CLASS_NAME}: {activity_name}",
        "time": epoch_ms(now),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "message": truncate(finding.title, 256),
        "finding_info": {
            "uid": finding.id,
            "title": truncate(finding.title, 256),
            "desc": _description(finding),
            "first_seen_time": epoch_ms(finding.first_seen),
            "last_seen_time": epoch_ms(finding.last_seen),
            "types": finding_types(finding.check),
            "analytic": {"uid": f"{finding.check}/{finding.control}", "name": finding.check, "type_id": 1},
        },
        "resources": [resource],
        "cloud": {
            "provider": "AWS",
            "region": finding.region,
            "account": {"uid": finding.account_id, "type_id": AWS_ACCOUNT_TYPE_ID, "type": "AWS Account"},
        },
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "fleetwarden", "vendor_name": VENDOR_NAME, "version": __version__},
            "profiles": ["cloud"],
        },
        "unmapped": {
            "check": finding.check,
            "control": finding.control,
            "resource_type": finding.resource_type,
            "details": json.loads(compact_json(finding.details)),
        },
    }


def ocsf_lines(findings: Iterable[Finding], now: datetime) -> bytes:
    """The findings as OCSF JSON lines (UTF-8, one event per line)."""
    return b"".join(
        (json.dumps(to_ocsf(f, now), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8") for f in findings
    )


def write_ocsf(findings: Iterable[Finding], path: Path | str, now: datetime | None = None) -> Path:
    """Write the findings as OCSF JSON lines to `path` (atomically: beside it, then renamed); return the path."""
    path = Path(path)
    data = ocsf_lines(findings, now or utcnow())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
