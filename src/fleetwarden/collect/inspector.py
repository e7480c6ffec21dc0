"""Amazon Inspector (v2): scan coverage of EC2 instances (ListCoverage) and their findings (ListFindings).

Inspector only scans running instances with the SSM agent; `coverage` and `scanned_since` tell whether an
instance has been scanned since a given time (the scan window waits on that), and `instance_findings` /
`fleet_findings` turn Inspector findings into fleetwarden findings (`check: "inspector"`), one per
(instance, vulnerability).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..model import Finding, Severity

CHECK = "inspector"
PERMISSIONS = ("inspector2:ListCoverage", "inspector2:ListFindings")
# Read in the delegated administrator account when the config names it (inspector.delegated_admin).
ADMIN_PERMISSIONS = ("inspector2:ListMembers", "inspector2:ListFindings")
# Inspector accepts at most 10 values per filter, so resource ids (and accounts) are asked about 10 at a time.
FILTER_CHUNK = 10
FINDINGS_PAGE = 100  # ListFindings' largest page
MEMBERS_PAGE = 50  # ListMembers' largest page
EC2_RESOURCE = "AWS_EC2_INSTANCE"
DESCRIPTION_MAX = 500
SUPPRESSED_BY = "an Amazon Inspector suppression rule"
PACKAGES_MAX = 10

_SEVERITIES = {
    "CRITICAL": Severity.CRITICAL,
    "HIGH": Severity.HIGH,
    "MEDIUM": Severity.MEDIUM,
    "LOW": Severity.LOW,
    "INFORMATIONAL": Severity.INFORMATIONAL,
    # Inspector has not rated it yet: reported, never alarming.
    "UNTRIAGED": Severity.INFORMATIONAL,
}


@dataclass(frozen=True)
class Coverage:
    """One instance's Inspector coverage: ACTIVE/INACTIVE, why, and when it was last scanned (None: never)."""

    instance_id: str
    status_code: str
    reason: str
    last_scanned_at: datetime | None


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _equals(values: Iterable[str]) -> list[dict[str, str]]:
    return [{"comparison": "EQUALS", "value": v} for v in values]


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def coverage(client: Any, instance_ids: Sequence[str]) -> dict[str, Coverage]:
    """Coverage of the given instances by id; an instance Inspector does not cover is absent."""
    result: dict[str, Coverage] = {}
    paginator = client.get_paginator("list_coverage")
    for chunk in _chunks(sorted(set(instance_ids)), FILTER_CHUNK):
        criteria = {"resourceType": _equals([EC2_RESOURCE]), "resourceId": _equals(chunk)}
        for page in paginator.paginate(filterCriteria=criteria):
            for raw in page.get("coveredResources", []):
                status = raw.get("scanStatus") or {}
                result[raw["resourceId"]] = Coverage(
                    instance_id=raw["resourceId"],
                    status_code=status.get("statusCode", "INACTIVE"),
                    reason=status.get("reason", ""),
                    last_scanned_at=_aware(raw.get("lastScannedAt")),
                )
    return result


def scanned_since(cov: Coverage | None, since: datetime) -> bool:
    """True if the instance has been scanned at or after `since` (a completed scan, whatever its status now)."""
    return cov is not None and cov.last_scanned_at is not None and cov.last_scanned_at >= since


def _convert(raw: dict[str, Any], account_id: str, region: str, now: datetime) -> list[Finding]:
    """One fleetwarden finding per EC2 instance the Inspector finding names."""
    vulnerability = raw.get("packageVulnerabilityDetails") or {}
    vulnerability_id = vulnerability.get("vulnerabilityId")
    title = str(raw.get("title") or vulnerability_id or raw.get("findingArn", "Inspector finding"))
    inspector_severity = str(raw.get("severity", "UNTRIAGED"))
    description = str(raw.get("description", ""))
    if len(description) > DESCRIPTION_MAX:
        description = description[: DESCRIPTION_MAX - 3] + "..."
    packages = [
        f"{p.get('name', '?')} {p.get('version', '')}".strip()
        for p in (vulnerability.get("vulnerablePackages") or [])[:PACKAGES_MAX]
    ]
    details: dict[str, Any] = {
        "findingArn": raw.get("findingArn"),
        "type": raw.get("type"),
        "description": description,
        "vulnerabilityId": vulnerability_id,
        "inspectorSeverity": inspector_severity,
        "inspectorScore": raw.get("inspectorScore"),
        "fixAvailable": raw.get("fixAvailable"),
        "exploitAvailable": raw.get("exploitAvailable"),
        "packages": packages,
        "sourceUrl": vulnerability.get("sourceUrl"),
        "firstObservedAt": _iso(raw.get("firstObservedAt")),
        "lastObservedAt": _iso(raw.get("lastObservedAt")),
    }
    if raw.get("status") == "SUPPRESSED":
        # reconcile() reports a finding its source already suppresses as suppressed, never as open.
        details["inspectorStatus"] = "SUPPRESSED"
        details["suppressed_by"] = SUPPRESSED_BY
    findings = []
    for resource in raw.get("resources") or []:
        if resource.get("type") != EC2_RESOURCE or not resource.get("id"):
            continue
        findings.append(
            Finding.create(
                check=CHECK,
                account_id=account_id,
                region=resource.get("region") or region,
                resource_id=resource["id"],
                control=str(vulnerability_id or title),
                title=title,
                now=now,
                severity=_SEVERITIES.get(inspector_severity, Severity.INFORMATIONAL),
                details={k: v for k, v in details.items() if v not in (None, [], "")},
            )
        )
    return findings


def _iso(value: Any) -> str | None:
    moment = _aware(value)
    return moment.isoformat() if moment else None


def _list(client: Any, criteria: dict[str, list[dict[str, str]]]) -> Iterator[dict[str, Any]]:
    pages = client.get_paginator("list_findings").paginate(
        filterCriteria=criteria, PaginationConfig={"PageSize": FINDINGS_PAGE}
    )
    for page in pages:
        yield from page.get("findings", [])


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per id (instance, vulnerability): the most severe one wins."""
    best: dict[str, Finding] = {}
    for finding in findings:
        prior = best.get(finding.id)
        if prior is None or finding.severity.rank > prior.severity.rank:
            best[finding.id] = finding
    return list(best.values())


def _base_criteria(*account_ids: str) -> dict[str, list[dict[str, str]]]:
    return {
        "awsAccountId": _equals(account_ids),
        # SUPPRESSED: what Inspector's suppression rules hide is still reported, as suppressed (CLOSED resolves).
        "findingStatus": _equals(["ACTIVE", "SUPPRESSED"]),
        "resourceType": _equals([EC2_RESOURCE]),
    }


def instance_findings(
    client: Any, account_id: str, region: str, instance_ids: Sequence[str], now: datetime
) -> list[Finding]:
    """The active (and suppressed) Inspector findings of the given instances, as `inspector` findings."""
    out: list[Finding] = []
    for chunk in _chunks(sorted(set(instance_ids)), FILTER_CHUNK):
        criteria = {**_base_criteria(account_id), "resourceId": _equals(chunk)}
        for raw in _list(client, criteria):
            out += [f for f in _convert(raw, account_id, region, now) if f.resource_id in chunk]
    return _dedupe(out)


def fleet_findings(client: Any, account_id: str, region: str, now: datetime | None = None) -> Iterator[Finding]:
    """Every active or suppressed Inspector finding on the EC2 instances of one account-region (a suppressed one
    carries `suppressed_by`, and reconcile() reports it as suppressed)."""
    moment = now or datetime.now(UTC)
    yield from _dedupe(
        f for raw in _list(client, _base_criteria(account_id)) for f in _convert(raw, account_id, region, moment)
    )


def associated_members(client: Any) -> set[str]:
    """The accounts whose findings the delegated administrator sees: its ENABLED members (ListMembers, paged)."""
    members: set[str] = set()
    pages = client.get_paginator("list_members").paginate(
        onlyAssociated=True, PaginationConfig={"PageSize": MEMBERS_PAGE}
    )
    for page in pages:
        members.update(m["accountId"] for m in page.get("members", []) if m.get("relationshipStatus") == "ENABLED")
    return members


def organization_findings(
    client: Any, region: str, account_ids: Sequence[str], now: datetime | None = None
) -> dict[str, list[Finding]]:
    """From the delegated administrator (one region): the active or suppressed findings on EC2 instances of the
    given accounts, by account. Accounts are asked about 10 at a time (Inspector's limit per filter), each query
    paged at 100; every asked account is in the result, with no findings when it has none."""
    moment = now or datetime.now(UTC)
    wanted = sorted(set(account_ids))
    raw_by_account: dict[str, list[Finding]] = {a: [] for a in wanted}
    for chunk in _chunks(wanted, FILTER_CHUNK):
        for raw in _list(client, _base_criteria(*chunk)):
            account_id = str(raw.get("awsAccountId", ""))
            if account_id in raw_by_account:
                raw_by_account[account_id] += _convert(raw, account_id, region, moment)
    return {a: _dedupe(found) for a, found in raw_by_account.items()}
