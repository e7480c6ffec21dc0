"""SSM compliance and managed-node information, which moto lacks, in AWS's documented JSON 1.1 shapes.

Operations (target prefix `AmazonSSM.`, signing name `ssm`): `PutComplianceItems`, `ListComplianceItems`,
`ListResourceComplianceSummaries` and `DescribeInstanceInformation`. Every other SSM request goes on to moto.

Data is kept per (account moto maps the access key to, region). Managed nodes are the running instances of
moto's EC2 backend there, adjusted by admin marks. `ListComplianceItems` takes at most one resource id per call,
as on AWS. Lists page with opaque tokens naming the last key returned. The full rules: docs/compliance-collect.md.

Admin (`/_fleetwarden/ssm_compliance/...`): `POST reset`; `POST managed`
`{"account_id", "region", "instance_ids": [...], "managed": true|false}`; `GET state`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import Extension, Request, StartResponse, json_error, json_response

TARGET_PREFIX = "AmazonSSM."
RESOURCE_TYPE = "ManagedInstance"
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")
STATUSES = ("COMPLIANT", "NON_COMPLIANT")
UPLOAD_TYPES = ("COMPLETE", "PARTIAL")
FILTER_TYPES = ("EQUAL", "NOT_EQUAL", "BEGIN_WITH", "LESS_THAN", "GREATER_THAN")
# The pattern botocore's service model gives ComplianceType.
COMPLIANCE_TYPE = re.compile(r"^([A-Za-z0-9_\-]\w+|Custom:[a-zA-Z0-9_\-]\w+)$")
MAX_ITEMS_PER_PUT = 10_000
MAX_FILTER_VALUES = 20
DEFAULT_PAGE = 10
MAX_PAGE = 50
DESCRIBE_MIN_PAGE = 5

_SEVERITY_RANK = {s: rank for rank, s in enumerate(reversed(SEVERITIES))}
# SeveritySummary member per severity: CRITICAL -> CriticalCount, ...
_SUMMARY_COUNTS = {s: f"{s.capitalize()}Count" for s in SEVERITIES}
# Filter keys each list accepts; a value is read from the entry, or else from its ExecutionSummary.
_ITEM_FILTERS = frozenset(
    {"ComplianceType", "ResourceType", "Status", "Severity", "Id", "Title", "ExecutionId", "ExecutionType"}
)
_SUMMARY_FILTERS = frozenset(
    {"ComplianceType", "ResourceType", "ResourceId", "Status", "OverallSeverity", "ExecutionId"}
)
# DescribeInstanceInformation filter keys (besides InstanceIds and tags) -> the InstanceInformation member.
_INSTANCE_FILTER_FIELDS = {
    "PingStatus": "PingStatus",
    "PlatformTypes": "PlatformType",
    "ResourceType": "ResourceType",
    "AgentVersion": "AgentVersion",
}
AGENT_VERSION = "3.3.1142.0"


class ApiError(Exception):
    """An AWS error reply: HTTP status, `__type` code and message."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class _Record:
    """One compliance type on one resource: the last execution and the items it left."""

    resource_id: str
    compliance_type: str
    execution: dict[str, Any]
    content_hash: str | None
    items: dict[str, dict[str, Any]]  # item key (Id, else Title) -> ComplianceItem in the API's shape

    def summary(self) -> dict[str, Any]:
        """The ResourceComplianceSummaryItem of this record."""
        compliant = [i for i in self.items.values() if i["Status"] == "COMPLIANT"]
        non_compliant = [i for i in self.items.values() if i["Status"] != "COMPLIANT"]
        # The highest severity among the non-compliant items; with none, among all items.
        pool = non_compliant or compliant
        overall = max((i["Severity"] for i in pool), key=_SEVERITY_RANK.__getitem__, default="UNSPECIFIED")
        return {
            "ComplianceType": self.compliance_type,
            "ResourceType": RESOURCE_TYPE,
            "ResourceId": self.resource_id,
            "Status": "NON_COMPLIANT" if non_compliant else "COMPLIANT",
            "OverallSeverity": overall,
            "ExecutionSummary": dict(self.execution),
            "CompliantSummary": {"CompliantCount": len(compliant), "SeveritySummary": _severity_counts(compliant)},
            "NonCompliantSummary": {
                "NonCompliantCount": len(non_compliant),
                "SeveritySummary": _severity_counts(non_compliant),
            },
        }


@dataclass
class _Target:
    """Everything the emulator keeps for one (account, region)."""

    records: dict[tuple[str, str], _Record] = field(default_factory=dict)  # (resource id, compliance type)
    managed: set[str] = field(default_factory=set)
    unmanaged: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Filter:
    key: str
    values: tuple[str, ...]
    type: str

    def matches(self, value: str | None) -> bool:
        if value is None:
            return self.type == "NOT_EQUAL"
        if self.type == "EQUAL":
            return value in self.values
        if self.type == "NOT_EQUAL":
            return value not in self.values
        if self.type == "BEGIN_WITH":
            return any(value.startswith(v) for v in self.values)
        if self.type == "LESS_THAN":
            return any(value < v for v in self.values)
        return any(value > v for v in self.values)


@dataclass(frozen=True)
class _Ec2Instance:
    id: str
    state: str  # EC2's state name, or "hybrid" for a node marked managed that is not an EC2 instance
    platform: str | None
    private_ip: str | None
    private_dns: str | None
    tags: dict[str, str]


class SsmComplianceExtension(Extension):
    """SSM Compliance and DescribeInstanceInformation over moto's EC2 backend."""

    name = "ssm_compliance"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], _Target] = {}
        self._clock = clock
        self._handlers: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
            "PutComplianceItems": self.put_compliance_items,
            "ListComplianceItems": self.list_compliance_items,
            "ListResourceComplianceSummaries": self.list_resource_compliance_summaries,
            "DescribeInstanceInformation": self.describe_instance_information,
        }

    # -- the hook ---------------------------------------------------------------------------------------
    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        target = str(request.environ.get("HTTP_X_AMZ_TARGET", ""))
        handler = self._handlers.get(request.action)
        if request.service != "ssm" or handler is None or not target.startswith(TARGET_PREFIX):
            return None
        try:
            body = request.json()
        except ValueError:
            return json_error(start_response, 400, "SerializationException", "the request body is not JSON")
        if not isinstance(body, dict):
            return json_error(start_response, 400, "SerializationException", "the request body must be an object")
        try:
            payload = handler(request.account_id, request.region, body)
        except ApiError as exc:
            return json_error(start_response, exc.status, exc.code, exc.message)
        return json_response(start_response, payload)

    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        if path == "reset" and method == "POST":
            self.reset()
            return {"reset": True}
        if path == "managed" and method == "POST":
            return self._set_managed(body)
        if path == "state" and method == "GET":
            return self.state()
        return None

    def reset(self) -> None:
        with self._lock:
            self._targets.clear()

    def state(self) -> dict[str, Any]:
        """Counts per target, and the managed/unmanaged marks (for tests and the demo)."""
        with self._lock:
            rows = [
                {
                    "account_id": account,
                    "region": region,
                    "resources": len({rid for rid, _ in t.records}),
                    "records": len(t.records),
                    "items": sum(len(r.items) for r in t.records.values()),
                    "managed": sorted(t.managed),
                    "unmanaged": sorted(t.unmanaged),
                }
                for (account, region), t in sorted(self._targets.items())
            ]
        return {"targets": rows}

    def _set_managed(self, body: Any) -> dict[str, Any]:
        from ..middleware import AdminError

        usage = 'managed: POST {"account_id", "region", "instance_ids": [...], "managed": true|false}'
        if not isinstance(body, dict):
            raise AdminError(usage)
        account_id, region, ids = body.get("account_id"), body.get("region"), body.get("instance_ids")
        managed = body.get("managed", True)
        if not isinstance(account_id, str) or not re.fullmatch(r"\d{12}", account_id):
            raise AdminError(f"{usage}: account_id must be a 12-digit string")
        if not isinstance(region, str) or not region:
            raise AdminError(f"{usage}: region is required")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise AdminError(f"{usage}: instance_ids must be a list of ids")
        if not isinstance(managed, bool):
            raise AdminError(f"{usage}: managed must be true or false")
        with self._lock:
            target = self._target(account_id, region)
            marked, cleared = (target.managed, target.unmanaged) if managed else (target.unmanaged, target.managed)
            marked.update(ids)
            cleared.difference_update(ids)
            return {
                "account_id": account_id,
                "region": region,
                "managed": sorted(target.managed),
                "unmanaged": sorted(target.unmanaged),
            }

    def _target(self, account_id: str, region: str) -> _Target:
        # Called under the lock.
        return self._targets.setdefault((account_id, region), _Target())

    # -- PutComplianceItems -----------------------------------------------------------------------------
    def put_compliance_items(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        resource_id = _required(body, "ResourceId", max_len=100)
        resource_type = _required(body, "ResourceType", max_len=50)
        if resource_type != RESOURCE_TYPE:
            raise ApiError("InvalidResourceType", f"resource type {resource_type!r} is not valid: use {RESOURCE_TYPE}")
        compliance_type = _compliance_type(body.get("ComplianceType"))
        execution = _execution_summary(body.get("ExecutionSummary"))
        raw_items = body.get("Items")
        if not isinstance(raw_items, list):
            raise ApiError("ValidationException", "Items is required and must be a list")
        if len(raw_items) > MAX_ITEMS_PER_PUT:
            raise ApiError(
                "ValidationException", f"Items has {len(raw_items)} members; at most {MAX_ITEMS_PER_PUT} are allowed"
            )
        entries = [_item_entry(raw, index) for index, raw in enumerate(raw_items)]
        upload_type = body.get("UploadType", "COMPLETE")
        if upload_type not in UPLOAD_TYPES:
            raise ApiError("ValidationException", f"UploadType must be one of {list(UPLOAD_TYPES)}")
        content_hash = _string(body, "ItemContentHash", max_len=256)

        with self._lock:
            known = self._targets.get((account_id, region))
            explicitly_managed = known is not None and resource_id in known.managed
        if not explicitly_managed and not _ec2_instance_exists(account_id, region, resource_id):
            raise ApiError("InvalidResourceId", f"the resource ID {resource_id!r} is not valid in {region}")

        with self._lock:
            target = self._target(account_id, region)
            key = (resource_id, compliance_type)
            current = target.records.get(key)
            if current is not None and content_hash and current.content_hash == content_hash:
                return {}  # AWS ignores a put whose content hash matches the stored one
            items = dict(current.items) if current is not None and upload_type == "PARTIAL" else {}
            for item_key, entry in entries:
                item: dict[str, Any] = {
                    "ComplianceType": compliance_type,
                    "ResourceType": RESOURCE_TYPE,
                    "ResourceId": resource_id,
                }
                item.update(entry)
                item["ExecutionSummary"] = dict(execution)
                items[item_key] = item
            target.records[key] = _Record(resource_id, compliance_type, execution, content_hash, items)
        return {}

    # -- ListComplianceItems ----------------------------------------------------------------------------
    def list_compliance_items(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        resource_ids = _string_list(body, "ResourceIds", max_len=100)
        if resource_ids is not None and len(resource_ids) > 1:
            raise ApiError(
                "ValidationException",
                f"ResourceIds has {len(resource_ids)} members: currently you can only specify one resource ID",
            )
        resource_types = _string_list(body, "ResourceTypes", max_len=50)
        if resource_types is not None and any(t != RESOURCE_TYPE for t in resource_types):
            raise ApiError("InvalidResourceType", f"the only supported resource type is {RESOURCE_TYPE}")
        filters = _compliance_filters(body.get("Filters"), _ITEM_FILTERS)
        limit = _max_results(body, minimum=1)
        wanted = resource_ids[0] if resource_ids else None
        with self._lock:
            target = self._targets.get((account_id, region)) or _Target()
            rows = [
                ((rid, ctype, item_key), dict(item, ExecutionSummary=dict(item["ExecutionSummary"])))
                for (rid, ctype), record in target.records.items()
                if wanted is None or rid == wanted
                for item_key, item in record.items.items()
                if all(f.matches(_field(item, f.key)) for f in filters)
            ]
        page, token = _page(rows, body, limit)
        return _with_token({"ComplianceItems": page}, token)

    # -- ListResourceComplianceSummaries ----------------------------------------------------------------
    def list_resource_compliance_summaries(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        filters = _compliance_filters(body.get("Filters"), _SUMMARY_FILTERS)
        limit = _max_results(body, minimum=1)
        with self._lock:
            target = self._targets.get((account_id, region)) or _Target()
            summaries = [(key, record.summary()) for key, record in target.records.items()]
        rows = [(key, s) for key, s in summaries if all(f.matches(_field(s, f.key)) for f in filters)]
        page, token = _page(rows, body, limit)
        return _with_token({"ResourceComplianceSummaryItems": page}, token)

    # -- DescribeInstanceInformation --------------------------------------------------------------------
    def describe_instance_information(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        filters = _instance_filters(body)
        limit = _max_results(body, minimum=DESCRIBE_MIN_PAGE)
        ec2 = {i.id: i for i in _ec2_instances(account_id, region)}
        with self._lock:
            target = self._targets.get((account_id, region)) or _Target()
            managed, unmanaged = set(target.managed), set(target.unmanaged)
        now = self._clock()
        nodes: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        for instance in ec2.values():
            if instance.state == "running" and instance.id not in unmanaged:
                nodes[instance.id] = (_ec2_node(instance, now), instance.tags)
        for node_id in managed - set(ec2) - unmanaged:
            nodes[node_id] = (_ec2_node(_Ec2Instance(node_id, "hybrid", None, None, None, {}), now), {})
        for f in filters:
            if f.key == "InstanceIds":
                unknown = [i for i in f.values if i not in ec2 and i not in managed]
                if unknown:
                    raise ApiError("InvalidInstanceId", f"instance IDs not valid in {region}: {unknown}")
        rows = [
            ((node_id,), node)
            for node_id, (node, tags) in nodes.items()
            if all(_instance_filter_matches(f, node, tags) for f in filters)
        ]
        page, token = _page(rows, body, limit)
        return _with_token({"InstanceInformationList": page}, token)


# -- request parsing --------------------------------------------------------------------------------------
def _required(body: Mapping[str, Any], key: str, *, max_len: int) -> str:
    value = _string(body, key, max_len=max_len)
    if value is None:
        raise ApiError("ValidationException", f"{key} is required")
    return value


def _string(body: Mapping[str, Any], key: str, *, max_len: int | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError("ValidationException", f"{key} must be a non-empty string")
    if max_len is not None and len(value) > max_len:
        raise ApiError("ValidationException", f"{key} must be at most {max_len} characters")
    return value


def _string_list(body: Mapping[str, Any], key: str, *, max_len: int) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ApiError("ValidationException", f"{key} must be a list of at least one member")
    if not all(isinstance(v, str) and 0 < len(v) <= max_len for v in value):
        raise ApiError("ValidationException", f"every member of {key} must be a string of 1-{max_len} characters")
    return value


def _compliance_type(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 100 or not COMPLIANCE_TYPE.match(value):
        raise ApiError(
            "ValidationException",
            f"ComplianceType {value!r} must match {COMPLIANCE_TYPE.pattern} (e.g. Custom:InSpec)",
        )
    return value


def _epoch(value: Any, key: str) -> float:
    """A JSON 1.1 timestamp: epoch seconds (what botocore sends), or an ISO 8601 string."""
    if isinstance(value, bool):
        raise ApiError("ValidationException", f"{key} must be a timestamp")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ApiError("ValidationException", f"{key} must be a timestamp, got {value!r}")


def _execution_summary(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("ExecutionTime") is None:
        raise ApiError("ValidationException", "ExecutionSummary with an ExecutionTime is required")
    summary: dict[str, Any] = {"ExecutionTime": _epoch(value["ExecutionTime"], "ExecutionSummary.ExecutionTime")}
    for key, max_len in (("ExecutionId", 100), ("ExecutionType", 50)):
        text = _string(value, key, max_len=max_len)
        if text is not None:
            summary[key] = text
    return summary


def _item_entry(raw: Any, index: int) -> tuple[str, dict[str, Any]]:
    """A ComplianceItemEntry, validated, and the key that identifies it on its resource."""
    where = f"Items[{index}]"
    if not isinstance(raw, dict):
        raise ApiError("ValidationException", f"{where} must be an object")
    severity, status = raw.get("Severity"), raw.get("Status")
    if severity not in SEVERITIES:
        raise ApiError("ValidationException", f"{where}.Severity must be one of {list(SEVERITIES)}")
    if status not in STATUSES:
        raise ApiError("ValidationException", f"{where}.Status must be one of {list(STATUSES)}")
    entry: dict[str, Any] = {"Severity": severity, "Status": status}
    item_id = raw.get("Id")
    title = _string(raw, "Title", max_len=500)
    if item_id is not None:
        if not isinstance(item_id, str):
            raise ApiError("ValidationException", f"{where}.Id must be a string")
        entry["Id"] = item_id
    if title is not None:
        entry["Title"] = title
    details = raw.get("Details") or {}
    if not isinstance(details, dict) or not all(
        isinstance(k, str) and 0 < len(k) <= 64 and isinstance(v, str) and len(v) <= 4096 for k, v in details.items()
    ):
        raise ApiError("ValidationException", f"{where}.Details must map names (1-64 chars) to strings (<= 4096)")
    entry["Details"] = dict(details)
    key = item_id or title or f"#{index}"
    return key, entry


def _compliance_filters(raw: Any, known: frozenset[str]) -> list[_Filter]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError("InvalidFilter", "Filters must be a list")
    filters: list[_Filter] = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise ApiError("InvalidFilter", "each filter must be an object with Key, Values and Type")
        key, values, kind = entry.get("Key"), entry.get("Values"), entry.get("Type", "EQUAL")
        if key not in known:
            raise ApiError("InvalidFilter", f"filter key {key!r} is not supported; use one of {sorted(known)}")
        if (
            not isinstance(values, list)
            or not 1 <= len(values) <= MAX_FILTER_VALUES
            or not all(isinstance(v, str) for v in values)
        ):
            raise ApiError("InvalidFilter", f"filter {key}: Values must be 1-{MAX_FILTER_VALUES} strings")
        if kind not in FILTER_TYPES:
            raise ApiError("InvalidFilter", f"filter {key}: Type must be one of {list(FILTER_TYPES)}")
        filters.append(_Filter(str(key), tuple(values), str(kind)))
    return filters


def _instance_filters(body: Mapping[str, Any]) -> list[_Filter]:
    """Filters (Key/Values, tag:KEY too) or the legacy InstanceInformationFilterList (key/valueSet), not both."""
    legacy, modern = body.get("InstanceInformationFilterList") or [], body.get("Filters") or []
    if legacy and modern:
        raise ApiError("ValidationException", "use either InstanceInformationFilterList or Filters, not both")
    if not isinstance(legacy, list) or not isinstance(modern, list):
        raise ApiError("ValidationException", "filters must be lists")
    names = ("key", "valueSet") if legacy else ("Key", "Values")
    filters: list[_Filter] = []
    for entry in legacy or modern:
        if not isinstance(entry, dict):
            raise ApiError("ValidationException", "each filter must be an object")
        key, values = entry.get(names[0]), entry.get(names[1])
        if not isinstance(key, str) or not (
            key == "InstanceIds"
            or key in _INSTANCE_FILTER_FIELDS
            or (not legacy and (key == "tag-key" or key.startswith("tag:")))
        ):
            raise ApiError("InvalidFilterKey", f"filter key {key!r} is not supported")
        if not isinstance(values, list) or not 1 <= len(values) <= 100 or not all(isinstance(v, str) for v in values):
            raise ApiError("InvalidInstanceInformationFilterValue", f"filter {key}: 1-100 string values")
        filters.append(_Filter(key, tuple(values), "EQUAL"))
    return filters


def _field(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry[key] if key in entry else entry.get("ExecutionSummary", {}).get(key)
    return None if value is None else str(value)


def _instance_filter_matches(f: _Filter, node: Mapping[str, Any], tags: Mapping[str, str]) -> bool:
    if f.key == "InstanceIds":
        return str(node["InstanceId"]) in f.values
    if f.key == "tag-key":
        return any(k in tags for k in f.values)
    if f.key.startswith("tag:"):
        return f.matches(tags.get(f.key[4:]))
    value = node.get(_INSTANCE_FILTER_FIELDS[f.key])
    return f.matches(str(value) if value is not None else None)


def _max_results(body: Mapping[str, Any], *, minimum: int) -> int:
    value = body.get("MaxResults")
    if value is None:
        return DEFAULT_PAGE
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_PAGE:
        raise ApiError("ValidationException", f"MaxResults must be an integer from {minimum} to {MAX_PAGE}")
    return value


# -- paging -----------------------------------------------------------------------------------------------
def _query_digest(body: Mapping[str, Any]) -> str:
    """What a token is bound to: the request minus its paging fields (a token of another query is refused)."""
    query = {k: v for k, v in body.items() if k not in ("NextToken", "MaxResults")}
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _page(
    unsorted: Sequence[tuple[tuple[str, ...], dict[str, Any]]], body: Mapping[str, Any], limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    rows = sorted(unsorted, key=lambda row: row[0])
    digest = _query_digest(body)
    token = body.get("NextToken")
    if token:
        after = _decode_token(token, digest)
        rows = [row for row in rows if row[0] > after]
    page = rows[:limit]
    more = len(rows) > limit
    next_token = _encode_token(page[-1][0], digest) if more and page else None
    return [payload for _, payload in page], next_token


def _encode_token(after: tuple[str, ...], digest: str) -> str:
    raw = json.dumps({"after": list(after), "q": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: Any, digest: str) -> tuple[str, ...]:
    invalid = ApiError("InvalidNextToken", "the NextToken is not valid for this request")
    if not isinstance(token, str):
        raise invalid
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError:
        raise invalid from None
    if not isinstance(data, dict) or data.get("q") != digest:
        raise invalid
    after = data.get("after")
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise invalid
    return tuple(after)


def _with_token(payload: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        payload["NextToken"] = token
    return payload


def _severity_counts(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(_SUMMARY_COUNTS.values(), 0)
    for item in items:
        counts[_SUMMARY_COUNTS[item["Severity"]]] += 1
    return counts


# -- moto's EC2 backend -----------------------------------------------------------------------------------
def _ec2_instances(account_id: str, region: str) -> list[_Ec2Instance]:
    """The instances moto's EC2 backend holds for one account and region (read in-process)."""
    from moto.ec2.models import ec2_backends

    if region not in ec2_backends[account_id]:
        return []
    backend = ec2_backends[account_id][region]
    found: list[_Ec2Instance] = []
    for reservation in list(backend.reservations.values()):
        for instance in reservation.instances:
            found.append(
                _Ec2Instance(
                    id=instance.id,
                    state=instance.state,
                    platform=instance.platform,
                    private_ip=instance.private_ip,
                    private_dns=instance.private_dns_name if instance.private_ip else None,
                    tags=dict(backend.tags.get(instance.id, {})),
                )
            )
    return found


def _ec2_instance_exists(account_id: str, region: str, instance_id: str) -> bool:
    return any(i.id == instance_id and i.state != "terminated" for i in _ec2_instances(account_id, region))


def _ec2_node(instance: _Ec2Instance, now: float) -> dict[str, Any]:
    """An InstanceInformation entry; a node that is not an EC2 instance is a hybrid (`ManagedInstance`) one."""
    windows = (instance.platform or "").lower() == "windows"
    hybrid = instance.state == "hybrid"
    node: dict[str, Any] = {
        "InstanceId": instance.id,
        "PingStatus": "Online",
        "LastPingDateTime": now,
        "AgentVersion": AGENT_VERSION,
        "IsLatestVersion": True,
        "PlatformType": "Windows" if windows else "Linux",
        "PlatformName": "Microsoft Windows Server 2022 Datacenter" if windows else "Amazon Linux",
        "PlatformVersion": "10.0.20348" if windows else "2023",
        "ResourceType": "ManagedInstance" if hybrid else "EC2Instance",
        "SourceId": instance.id,
        "SourceType": "AWS::SSM::ManagedInstance" if hybrid else "AWS::EC2::Instance",
    }
    if instance.private_ip:
        node["IPAddress"] = instance.private_ip
    if instance.private_dns:
        node["ComputerName"] = instance.private_dns
    return node
