"""SSM compliance results (InSpec and other types) of one target: which instances have them, and every item.

Which instances: `ListResourceComplianceSummaries` filtered by compliance type gives exactly the resources that
hold results of those types, stopped instances included (DescribeInstanceInformation omits stopped nodes, whose
results still stand, and lists nodes that never ran a scan). `DescribeInstanceInformation` only complements it:
online managed instances without results are reported as `unscanned`, never read item by item.

Which items: `ListComplianceItems` takes ONE resource id per call, so one paginated call per instance. Compliant
items are read too: their execution time tells what was scanned, which is what lets a workflow resolve a finding
only when its instance was scanned again. Every list is paginated to its end; a missing page must never look
like a resolved item.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from ..model import Finding, Severity

PERMISSIONS = (
    "ssm:ListResourceComplianceSummaries",
    "ssm:ListComplianceItems",
    "ssm:DescribeInstanceInformation",
)
CHECK = "compliance"
RESOURCE_TYPE = "ManagedInstance"
# The largest page each of these APIs returns (MaxResults 1-50; DescribeInstanceInformation 5-50).
PAGE_SIZE = 50
# A ComplianceStringFilter takes at most 20 values: more types are read in several passes.
MAX_FILTER_VALUES = 20

SEVERITIES: dict[str, Severity] = {
    "CRITICAL": Severity.CRITICAL,
    "HIGH": Severity.HIGH,
    "MEDIUM": Severity.MEDIUM,
    "LOW": Severity.LOW,
    "INFORMATIONAL": Severity.INFORMATIONAL,
    "UNSPECIFIED": Severity.INFORMATIONAL,
}
_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True)
class ComplianceItem:
    """One compliance item of one instance, as the last execution of its compliance type left it."""

    account_id: str
    region: str
    instance_id: str
    compliance_type: str
    item_id: str
    title: str
    status: str  # COMPLIANT | NON_COMPLIANT
    severity: str  # CRITICAL | HIGH | MEDIUM | LOW | INFORMATIONAL | UNSPECIFIED
    execution_time: datetime
    execution_id: str
    details: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def compliant(self) -> bool:
        return self.status == "COMPLIANT"

    @property
    def control(self) -> str:
        """What the finding is about: `Custom:InSpec:<item id or title>` (the type never holds a second colon)."""
        return f"{self.compliance_type}:{self.item_id or self.title}"


@dataclass(frozen=True)
class ComplianceScan:
    """Every compliance item of one target, with when each instance last ran each compliance type."""

    account_id: str
    region: str
    compliance_types: tuple[str, ...]
    items: tuple[ComplianceItem, ...]
    # (instance id, compliance type) -> the execution time of its latest results.
    executions: dict[tuple[str, str], datetime] = field(default_factory=dict, hash=False)
    # Online managed instances with no results of these types (never scanned, or the scan never reported).
    unscanned: tuple[str, ...] = ()

    @property
    def instances(self) -> tuple[str, ...]:
        """The instances with results of these types."""
        return tuple(sorted({instance for instance, _ in self.executions}))

    @property
    def last_executions(self) -> dict[str, datetime]:
        """Per instance, the latest execution time over the compliance types."""
        latest: dict[str, datetime] = {}
        for (instance, _), when in self.executions.items():
            if instance not in latest or when > latest[instance]:
                latest[instance] = when
        return latest

    def last_execution(self, instance_id: str, compliance_type: str | None = None) -> datetime | None:
        """When the instance last reported results (of one compliance type, or of any); None: never."""
        if compliance_type is not None:
            return self.executions.get((instance_id, compliance_type))
        return self.last_executions.get(instance_id)

    @property
    def non_compliant(self) -> tuple[ComplianceItem, ...]:
        return tuple(item for item in self.items if not item.compliant)


def _type_filters(compliance_types: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    """The Filters argument for each pass: one per 20 types; no filter at all when no type is given."""
    types = list(dict.fromkeys(compliance_types))
    if not types:
        yield []
        return
    for start in range(0, len(types), MAX_FILTER_VALUES):
        chunk = types[start : start + MAX_FILTER_VALUES]
        yield [{"Key": "ComplianceType", "Values": chunk, "Type": "EQUAL"}]


def _timestamp(value: Any) -> datetime:
    """An API timestamp as aware UTC (boto3 parses them into local-zone datetimes)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if not isinstance(value, datetime):
        return _EPOCH
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resource_summaries(client: Any, compliance_types: Sequence[str]) -> list[dict[str, Any]]:
    """ListResourceComplianceSummaries of managed instances for these types (all types when none), every page."""
    wanted = set(compliance_types)
    rows: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_resource_compliance_summaries")
    for filters in _type_filters(compliance_types):
        for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}):
            for raw in page.get("ResourceComplianceSummaryItems", []):
                if raw.get("ResourceType", RESOURCE_TYPE) != RESOURCE_TYPE:
                    continue
                if wanted and raw.get("ComplianceType") not in wanted:
                    continue
                rows.append(raw)
    return rows


def managed_instances(client: Any, compliance_types: Sequence[str]) -> list[str]:
    """The managed instances holding results of these compliance types (stopped ones too), sorted."""
    return sorted({str(raw["ResourceId"]) for raw in resource_summaries(client, compliance_types)})


def online_instances(client: Any) -> list[str]:
    """Every node DescribeInstanceInformation lists (online or not; stopped instances are never listed)."""
    found: set[str] = set()
    paginator = client.get_paginator("describe_instance_information")
    for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE}):
        for raw in page.get("InstanceInformationList", []):
            found.add(str(raw["InstanceId"]))
    return sorted(found)


def item_from_api(raw: dict[str, Any], account_id: str, region: str) -> ComplianceItem:
    """Normalize one ListComplianceItems entry."""
    summary = raw.get("ExecutionSummary") or {}
    return ComplianceItem(
        account_id=account_id,
        region=region,
        instance_id=str(raw.get("ResourceId", "")),
        compliance_type=str(raw.get("ComplianceType", "")),
        item_id=str(raw.get("Id") or ""),
        title=str(raw.get("Title") or ""),
        status=str(raw.get("Status", "")),
        severity=str(raw.get("Severity", "UNSPECIFIED")),
        execution_time=_timestamp(summary.get("ExecutionTime")),
        execution_id=str(summary.get("ExecutionId") or ""),
        details={str(k): str(v) for k, v in (raw.get("Details") or {}).items()},
    )


def instance_items(
    client: Any, instance_id: str, compliance_types: Sequence[str], account_id: str, region: str
) -> list[ComplianceItem]:
    """Every item (compliant ones too) of one instance for these types: one resource id per call, every page."""
    items: list[ComplianceItem] = []
    paginator = client.get_paginator("list_compliance_items")
    for filters in _type_filters(compliance_types):
        pages = paginator.paginate(
            ResourceIds=[instance_id],
            ResourceTypes=[RESOURCE_TYPE],
            Filters=filters,
            PaginationConfig={"PageSize": PAGE_SIZE},
        )
        for page in pages:
            for raw in page.get("ComplianceItems", []):
                items.append(item_from_api({"ResourceId": instance_id, **raw}, account_id, region))
    return items


def scan(client: Any, account_id: str, region: str, compliance_types: Sequence[str]) -> ComplianceScan:
    """All compliance items of one target, and when each instance last ran each type.

    An instance whose results vanish between the summary and its items (deregistered: InvalidResourceId) is
    left out altogether, so nothing claims it was scanned. Any other error propagates: a partial read must fail
    the target, never look like resolved items.
    """
    executions: dict[tuple[str, str], datetime] = {}
    for raw in resource_summaries(client, compliance_types):
        key = (str(raw["ResourceId"]), str(raw.get("ComplianceType", "")))
        when = _timestamp((raw.get("ExecutionSummary") or {}).get("ExecutionTime"))
        if key not in executions or when > executions[key]:
            executions[key] = when
    items: list[ComplianceItem] = []
    for instance_id in sorted({instance for instance, _ in executions}):
        try:
            found = instance_items(client, instance_id, compliance_types, account_id, region)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidResourceId":
                raise
            executions = {k: v for k, v in executions.items() if k[0] != instance_id}
            continue
        for item in found:
            # An item newer than its summary (read between two uploads) still proves the instance was scanned.
            key = (item.instance_id, item.compliance_type)
            if key not in executions or item.execution_time > executions[key]:
                executions[key] = item.execution_time
        items.extend(found)
    scanned = {instance for instance, _ in executions}
    unscanned = tuple(i for i in online_instances(client) if i not in scanned)
    items.sort(key=lambda i: (i.instance_id, i.compliance_type, i.item_id, i.title))
    return ComplianceScan(
        account_id=account_id,
        region=region,
        compliance_types=tuple(compliance_types),
        items=tuple(items),
        executions=executions,
        unscanned=unscanned,
    )


def item_finding(item: ComplianceItem, now: datetime) -> Finding:
    """The finding of one compliance item: stable id over (account, region, instance, type and item)."""
    return Finding.create(
        check=CHECK,
        account_id=item.account_id,
        region=item.region,
        resource_id=item.instance_id,
        resource_type="AwsEc2Instance" if item.instance_id.startswith("i-") else "Other",
        control=item.control,
        title=item.title or item.item_id or item.compliance_type,
        now=now,
        severity=SEVERITIES.get(item.severity, Severity.INFORMATIONAL),
        details={
            "compliance_type": item.compliance_type,
            "item_id": item.item_id,
            "title": item.title,
            "execution_time": item.execution_time.isoformat(),
            "execution_id": item.execution_id,
            "details": dict(item.details),
        },
    )
