"""Amazon Inspector (v2) ListCoverage and ListFindings, which moto lacks (404) or answers wrongly (it ignores
`filterCriteria` and returns nothing).

Both are REST-JSON `POST /coverage/list` and `POST /findings/list`, answered in AWS's documented shapes for the
caller's account (moto's access-key mapping) and the region of the signature. An account sees its own findings,
and a delegated administrator also those of its ENABLED members: the members moto records when that account calls
AssociateMember in the region (moto's own EnableDelegatedAdminAccount / AssociateMember / DisassociateMember).
Findings are listed in a stable order (account, then finding ARN), 100 at most per page, and a filter takes 1 to
10 values (ValidationException otherwise), as Inspector does.

Also answered here:

- `POST /members/list` (ListMembers), which moto answers without paging: `maxResults` 1-50 with a nextToken, and
  `onlyAssociated` (true: ENABLED members only);
- `POST /reporting/create` (CreateFindingsReport) and `POST /reporting/status/get` (GetFindingsReportStatus): a
  report is IN_PROGRESS for `status_polls` status calls (default 1), then done: FAILED with BUCKET_NOT_FOUND (no
  such bucket in moto's S3), INCOMPATIBLE_BUCKET_REGION (the bucket is not in the call's region),
  MALFORMED_KMS_KEY (the key's ARN is not a KMS key of the bucket's region), NO_FINDINGS_FOUND (the filter
  matches none), or the code set with `fail_with`; else SUCCEEDED, with the report written into moto's S3 as
  `<keyPrefix>/<reportId>.csv|json` (CSV: one row per finding and resource; JSON: `{"findings": [...]}`).

Seeding, through admin endpoints under `/_fleetwarden/inspector2/`:

- `POST coverage` with `{"region", "coveredResources": [CoveredResource, ...]}`: fixed coverage records (AWS's
  CoveredResource shape; `accountId` required, the rest defaulted; times as ISO 8601 or epoch seconds). A fixed
  record wins over the rule below for the same resource.
- `POST coverage` with `{"rule": {"scan_after_polls": N, "account_id"?, "region"?, "never_scan"?: [ids],
  "scanned_at"?: ISO}}` (`{"rule": null}` removes it): every live EC2 instance of the rule's scope in moto is
  covered. A running instance is scanned N ListCoverage polls after the poll that first saw it running (a poll
  is a first page, without nextToken, whose filters ask about that instance); N=0 scans it at first sight. Its
  `lastScannedAt` becomes the time of that poll (or `scanned_at`). Stopping an instance ends its running period
  (`INACTIVE`, `EC2_INSTANCE_STOPPED`, last scan kept); starting it again starts a new one, scanned again N polls
  later. `never_scan` instances stay `INACTIVE`, `UNMANAGED_EC2_INSTANCE` (no SSM agent), for timeout tests.
- `POST findings` with `{"findings": [Finding, ...]}`: findings in AWS's Finding shape; `awsAccountId` and
  `resources[0].id` required, `resources[].region` defaults to the body's `region`; missing arn, status, type,
  times, title and description are filled in.
- `POST reports` with `{"status_polls"?: N, "fail_with"?: ReportingErrorCode | null}`: how the next reports
  behave; `GET reports`: every report asked for.
- `GET coverage` / `GET findings`: what is stored, for debugging.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import Extension, Request, StartResponse, json_error, json_response

COVERAGE_MAX_RESULTS = 200
FINDINGS_MAX_RESULTS = 100
MEMBERS_MAX_RESULTS = 50
REPORT_ERRORS = (
    "INTERNAL_ERROR",
    "INVALID_PERMISSIONS",
    "NO_FINDINGS_FOUND",
    "BUCKET_NOT_FOUND",
    "INCOMPATIBLE_BUCKET_REGION",
    "MALFORMED_KMS_KEY",
)
_KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:([a-z0-9-]+):[0-9]{12}:(key|alias)/.+")
_EC2 = "AWS_EC2_INSTANCE"
_LIVE = ("pending", "running", "stopping", "stopped")
_REST_JSON = "application/json"

Getter = Callable[[dict[str, Any]], str | None]

# The filters each operation emulates; any other filter is refused rather than silently ignored.
_COVERAGE_FIELDS: dict[str, Getter] = {
    "resourceId": lambda r: r.get("resourceId"),
    "accountId": lambda r: r.get("accountId"),
    "resourceType": lambda r: r.get("resourceType"),
    "scanType": lambda r: r.get("scanType"),
    "scanStatusCode": lambda r: (r.get("scanStatus") or {}).get("statusCode"),
    "scanStatusReason": lambda r: (r.get("scanStatus") or {}).get("reason"),
}
_FINDING_FIELDS: dict[str, Getter] = {
    "findingArn": lambda f: f.get("findingArn"),
    "awsAccountId": lambda f: f.get("awsAccountId"),
    "findingType": lambda f: f.get("type"),
    "findingStatus": lambda f: f.get("status"),
    "severity": lambda f: f.get("severity"),
    "title": lambda f: f.get("title"),
    "resourceType": lambda f: (f["resources"][0] if f.get("resources") else {}).get("type"),
    "resourceId": lambda f: (f["resources"][0] if f.get("resources") else {}).get("id"),
    "vulnerabilityId": lambda f: (f.get("packageVulnerabilityDetails") or {}).get("vulnerabilityId"),
}


class BadRequest(ValueError):
    """Answered as ValidationException (HTTP 400)."""


class NotFound(ValueError):
    """Answered as ResourceNotFoundException (HTTP 404)."""


class AdminBadRequest(ValueError):
    """A bad admin body (HTTP 400 through the middleware's AdminError)."""


@dataclass
class ScanRule:
    """Instances of the scope become scanned `scan_after_polls` polls after they are first seen running."""

    scan_after_polls: int
    account_id: str | None = None
    region: str | None = None
    never_scan: frozenset[str] = frozenset()
    scanned_at: float | None = None

    def applies(self, account_id: str, region: str) -> bool:
        return self.account_id in (None, account_id) and self.region in (None, region)


@dataclass
class _Tracked:
    """One instance's running period as the scan rule sees it."""

    polls_running: int | None = None  # None: not in a running period
    scanned_this_period: bool = False
    last_scanned_at: float | None = None


@dataclass
class _Report:
    """One CreateFindingsReport: its request, and how many status calls it has answered."""

    report_id: str
    account_id: str
    region: str
    report_format: str
    destination: dict[str, Any]
    criteria: dict[str, list[dict[str, str]]]
    raw_criteria: dict[str, Any]
    polls_left: int
    fail_with: str | None
    status: str = "IN_PROGRESS"
    error_code: str | None = None
    error_message: str | None = None
    polls: int = 0


@dataclass
class _State:
    coverage: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    tracked: dict[tuple[str, str, str], _Tracked] = field(default_factory=dict)
    findings: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    rule: ScanRule | None = None
    reports: dict[str, _Report] = field(default_factory=dict)
    report_polls: int = 1
    report_fail_with: str | None = None


class Inspector2Extension(Extension):
    """ListCoverage (fixed records or a scan rule over moto's EC2 instances) and ListFindings with filters."""

    name = "inspector2"

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._state = _State()

    def reset(self) -> None:
        with self._lock:
            self._state = _State()

    # -- AWS requests --------------------------------------------------------------------------------------
    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        operations: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
            "POST /coverage/list": self._list_coverage,
            "POST /findings/list": self._list_findings,
            "POST /members/list": self._list_members,
            "POST /reporting/create": self._create_report,
            "POST /reporting/status/get": self._report_status,
        }
        operation = operations.get(request.action) if request.service == "inspector2" else None
        if operation is None:
            return None
        try:
            body = request.json()
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            payload = operation(request.account_id, request.region, body)
        except (BadRequest, json.JSONDecodeError) as exc:
            return json_error(start_response, 400, "ValidationException", str(exc), rest=True)
        except NotFound as exc:
            return json_error(start_response, 404, "ResourceNotFoundException", str(exc), rest=True)
        return json_response(start_response, payload, content_type=_REST_JSON)

    def _list_coverage(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        criteria = _criteria(body.get("filterCriteria"), _COVERAGE_FIELDS)
        limit = _max_results(body.get("maxResults"), COVERAGE_MAX_RESULTS)
        first_page = not body.get("nextToken")
        with self._lock:
            if first_page:
                self._poll(account_id, region, criteria)
            records = self._coverage_records(account_id, region)
        matching = [r for r in records if _matches(r, criteria, _COVERAGE_FIELDS)]
        matching.sort(key=lambda r: str(r["resourceId"]))
        page, token = _page(matching, body.get("nextToken"), limit)
        return {"coveredResources": page, **({"nextToken": token} if token else {})}

    def _list_findings(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        criteria = _criteria(body.get("filterCriteria"), _FINDING_FIELDS)
        limit = _max_results(body.get("maxResults"), FINDINGS_MAX_RESULTS)
        matching = self._visible_findings(account_id, region, criteria)
        page, token = _page(matching, body.get("nextToken"), limit)
        return {"findings": page, **({"nextToken": token} if token else {})}

    def _visible_findings(
        self, account_id: str, region: str, criteria: dict[str, list[dict[str, str]]]
    ) -> list[dict[str, Any]]:
        """The caller's findings and, for a delegated administrator, its ENABLED members', in a stable order."""
        members = _members(account_id, region)
        accounts = {account_id} | {m["accountId"] for m in members if m["relationshipStatus"] == "ENABLED"}
        with self._lock:
            findings = [f for a in sorted(accounts) for f in self._state.findings.get((a, region), [])]
        matching = [f for f in findings if _matches(f, criteria, _FINDING_FIELDS)]
        return sorted(matching, key=lambda f: (str(f["awsAccountId"]), str(f["findingArn"])))

    def _list_members(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        limit = _max_results(body.get("maxResults"), MEMBERS_MAX_RESULTS)
        members = _members(account_id, region)
        if body.get("onlyAssociated"):
            members = [m for m in members if m["relationshipStatus"] == "ENABLED"]
        page, token = _page(members, body.get("nextToken"), limit)
        return {"members": page, **({"nextToken": token} if token else {})}

    # -- findings reports ----------------------------------------------------------------------------------
    def _create_report(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        report_format = body.get("reportFormat")
        if report_format not in ("CSV", "JSON"):
            raise BadRequest("reportFormat must be CSV or JSON")
        destination = body.get("s3Destination")
        if not isinstance(destination, dict) or not destination.get("bucketName") or not destination.get("kmsKeyArn"):
            raise BadRequest("s3Destination needs bucketName and kmsKeyArn")
        raw_criteria = body.get("filterCriteria") or {}
        criteria = _criteria(raw_criteria, _FINDING_FIELDS)
        report_id = str(uuid.uuid4())
        with self._lock:
            self._state.reports[report_id] = _Report(
                report_id=report_id,
                account_id=account_id,
                region=region,
                report_format=report_format,
                destination=dict(destination),
                criteria=criteria,
                raw_criteria=raw_criteria,
                polls_left=self._state.report_polls,
                fail_with=self._state.report_fail_with,
            )
        return {"reportId": report_id}

    def _report_status(self, account_id: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        report_id = body.get("reportId")
        with self._lock:
            report = self._state.reports.get(str(report_id))
        if report is None or (report.account_id, report.region) != (account_id, region):
            raise NotFound(f"no findings report {report_id!r} in this account and region")
        with self._lock:
            report.polls += 1
            due = report.status == "IN_PROGRESS" and report.polls > report.polls_left
        if due:
            self._finish(report)
        answer: dict[str, Any] = {
            "reportId": report.report_id,
            "status": report.status,
            "destination": report.destination,
            "filterCriteria": report.raw_criteria,
        }
        if report.error_code:
            answer["errorCode"] = report.error_code
            answer["errorMessage"] = report.error_message
        return answer

    def _finish(self, report: _Report) -> None:
        """Decide the report's outcome the way Inspector would, and write it into moto's S3 when it succeeds."""
        destination = report.destination
        bucket = _bucket(str(destination["bucketName"]))
        kms = _KMS_ARN.fullmatch(str(destination["kmsKeyArn"]))
        findings = self._visible_findings(report.account_id, report.region, report.criteria)
        failure: tuple[str, str] | None = None
        if report.fail_with:
            failure = (report.fail_with, "set through the emulator's admin endpoint")
        elif bucket is None:
            failure = ("BUCKET_NOT_FOUND", f"The bucket {destination['bucketName']} does not exist")
        elif bucket.region_name != report.region:
            failure = ("INCOMPATIBLE_BUCKET_REGION", f"The bucket is in {bucket.region_name}, not {report.region}")
        elif kms is None or kms.group(1) != bucket.region_name:
            failure = ("MALFORMED_KMS_KEY", "The KMS key is not a key of the bucket's region")
        elif not findings:
            failure = ("NO_FINDINGS_FOUND", "No findings match the filter criteria")
        if failure is None:
            extension = "csv" if report.report_format == "CSV" else "json"
            prefix = str(destination.get("keyPrefix") or "").strip("/")
            key = f"{prefix}/{report.report_id}.{extension}" if prefix else f"{report.report_id}.{extension}"
            if report.report_format == "CSV":
                body = _report_csv(findings)
            else:
                body = json.dumps({"findings": findings}, default=str)
            _put_object(str(destination["bucketName"]), key, body.encode())
        with self._lock:
            if failure is None:
                report.status = "SUCCEEDED"
            else:
                report.status, (report.error_code, report.error_message) = "FAILED", failure

    # -- coverage ------------------------------------------------------------------------------------------
    def _poll(self, account_id: str, region: str, criteria: dict[str, list[dict[str, str]]]) -> None:
        """Advance the scan rule for the instances this first page asks about (called under the lock)."""
        rule = self._state.rule
        if rule is None or not rule.applies(account_id, region):
            return
        now = rule.scanned_at if rule.scanned_at is not None else self._clock().timestamp()
        ask = {k: v for k, v in criteria.items() if k in ("resourceId", "accountId", "resourceType")}
        for instance in _instances(account_id, region):
            probe = {"resourceId": instance.id, "accountId": account_id, "resourceType": _EC2}
            if not _matches(probe, ask, _COVERAGE_FIELDS):
                continue
            tracked = self._state.tracked.setdefault((account_id, region, instance.id), _Tracked())
            if instance.state != "running":
                tracked.polls_running, tracked.scanned_this_period = None, False
                continue
            tracked.polls_running = 0 if tracked.polls_running is None else tracked.polls_running + 1
            due = tracked.polls_running >= rule.scan_after_polls and not tracked.scanned_this_period
            if due and instance.id not in rule.never_scan:
                tracked.scanned_this_period, tracked.last_scanned_at = True, now

    def _coverage_records(self, account_id: str, region: str) -> list[dict[str, Any]]:
        fixed = self._state.coverage.get((account_id, region), {})
        records = dict(fixed)
        rule = self._state.rule
        if rule is not None and rule.applies(account_id, region):
            for instance in _instances(account_id, region):
                if instance.id in fixed:
                    continue
                tracked = self._state.tracked.get((account_id, region, instance.id), _Tracked())
                records[instance.id] = _auto_record(account_id, instance, tracked, instance.id in rule.never_scan)
        return list(records.values())

    # -- admin ---------------------------------------------------------------------------------------------
    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        from ..middleware import AdminError

        try:
            if path == "coverage" and method == "POST":
                return self._admin_coverage(body)
            if path == "findings" and method == "POST":
                return self._admin_findings(body)
            if path == "reports" and method == "POST":
                return self._admin_reports(body)
        except AdminBadRequest as exc:
            raise AdminError(f"inspector2/{path}: {exc}") from None
        if method == "GET" and path == "reports":
            with self._lock:
                return {
                    "reports": [
                        {"reportId": r.report_id, "accountId": r.account_id, "region": r.region, "status": r.status,
                         "errorCode": r.error_code, "filterCriteria": r.raw_criteria, "destination": r.destination,
                         "polls": r.polls}
                        for r in self._state.reports.values()
                    ]
                }  # fmt: skip
        if method == "GET" and path in ("coverage", "findings"):
            with self._lock:
                store = self._state.coverage if path == "coverage" else self._state.findings
                return {f"{a}/{r}": list(v.values()) if isinstance(v, dict) else v for (a, r), v in store.items()}
        return None

    def _admin_coverage(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not ({"rule", "coveredResources"} & set(body)):
            raise AdminBadRequest('POST {"region", "coveredResources": [...]} or {"rule": {"scan_after_polls": N}}')
        result: dict[str, Any] = {}
        if "rule" in body:
            rule = _parse_rule(body["rule"])
            with self._lock:
                self._state.rule = rule
            result["rule"] = None if rule is None else {"scan_after_polls": rule.scan_after_polls}
        if "coveredResources" in body:
            region = _required_str(body, "region")
            records = body["coveredResources"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise AdminBadRequest("coveredResources must be a list of CoveredResource objects")
            parsed = [_coverage_record(r) for r in records]
            with self._lock:
                for record in parsed:
                    self._state.coverage.setdefault((record["accountId"], region), {})[record["resourceId"]] = record
            result["coveredResources"] = len(parsed)
        return result

    def _admin_reports(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) - {"status_polls", "fail_with"}:
            raise AdminBadRequest('POST {"status_polls"?: N, "fail_with"?: ReportingErrorCode | null}')
        polls = body.get("status_polls", 1)
        if not isinstance(polls, int) or isinstance(polls, bool) or polls < 0:
            raise AdminBadRequest("status_polls must be a non-negative integer")
        fail_with = body.get("fail_with")
        if fail_with is not None and fail_with not in REPORT_ERRORS:
            raise AdminBadRequest(f"fail_with must be one of {', '.join(REPORT_ERRORS)} or null")
        with self._lock:
            self._state.report_polls, self._state.report_fail_with = polls, fail_with
        return {"status_polls": polls, "fail_with": fail_with}

    def _admin_findings(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("findings"), list):
            raise AdminBadRequest('POST {"region"?, "findings": [Finding, ...]}')
        default_region = body.get("region")
        now = self._clock().timestamp()
        parsed = [_finding(f, default_region, now) for f in body["findings"]]
        with self._lock:
            for finding in parsed:
                key = (finding["awsAccountId"], finding["resources"][0]["region"])
                self._state.findings.setdefault(key, []).append(finding)
        return {"added": len(parsed), "findingArns": [f["findingArn"] for f in parsed]}


# -- helpers ---------------------------------------------------------------------------------------------------
def _instances(account_id: str, region: str) -> list[Any]:
    """moto's live instances of one account-region, without creating backends that do not exist yet."""
    from moto.ec2.models import ec2_backends

    account = dict.get(ec2_backends, account_id)
    backend = dict.get(account, region) if account is not None else None
    if backend is None:
        return []
    return [i for r in list(backend.reservations.values()) for i in r.instances if i.state in _LIVE]


def _members(account_id: str, region: str) -> list[dict[str, Any]]:
    """The members moto records for an administrator account in a region (AssociateMember), by account id."""
    from moto.inspector2.models import inspector2_backends

    account = dict.get(inspector2_backends, account_id)
    backend = dict.get(account, region) if account is not None else None
    if backend is None:
        return []
    return sorted((m.to_json() for m in list(backend.members.values())), key=lambda m: str(m["accountId"]))


def _bucket(name: str) -> Any:
    """moto's bucket of that name (in whichever account owns it), or None."""
    from moto.s3.models import s3_backends

    owner = s3_backends.bucket_accounts.get(name)
    if owner is None:
        return None
    partition, account_id = owner
    return dict.get(s3_backends[account_id], partition).buckets.get(name)  # type: ignore[union-attr]


def _put_object(bucket_name: str, key: str, body: bytes) -> None:
    from moto.s3.models import s3_backends

    partition, account_id = s3_backends.bucket_accounts[bucket_name]
    s3_backends[account_id][partition].put_object(bucket_name, key, body)


_REPORT_COLUMNS = ("AWS Account Id", "Severity", "Finding Status", "Finding Type", "Title", "Vulnerability Id",
                   "Resource Type", "Resource Id", "Region", "Finding ARN", "First Seen", "Last Seen")  # fmt: skip


def _report_csv(findings: list[dict[str, Any]]) -> str:
    from ...output import csv_bytes  # the package's one CSV writer

    rows = [
        [
            finding.get("awsAccountId"), finding.get("severity"), finding.get("status"), finding.get("type"),
            finding.get("title"), (finding.get("packageVulnerabilityDetails") or {}).get("vulnerabilityId", ""),
            resource.get("type"), resource.get("id"), resource.get("region"), finding.get("findingArn"),
            finding.get("firstObservedAt"), finding.get("lastObservedAt"),
        ]
        for finding in findings
        for resource in finding.get("resources") or []
    ]  # fmt: skip
    return csv_bytes(_REPORT_COLUMNS, rows).decode("utf-8")


def _auto_record(account_id: str, instance: Any, tracked: _Tracked, never: bool) -> dict[str, Any]:
    if never:
        status = {"statusCode": "INACTIVE", "reason": "UNMANAGED_EC2_INSTANCE"}
    elif instance.state in ("stopped", "stopping"):
        status = {"statusCode": "INACTIVE", "reason": "EC2_INSTANCE_STOPPED"}
    elif tracked.last_scanned_at is None:
        status = {"statusCode": "ACTIVE", "reason": "PENDING_INITIAL_SCAN"}
    else:
        status = {"statusCode": "ACTIVE", "reason": "SUCCESSFUL"}
    tags = dict(instance.ec2_backend.tags.get(instance.id, {}))
    record: dict[str, Any] = {
        "resourceType": _EC2,
        "resourceId": instance.id,
        "accountId": account_id,
        "scanType": "PACKAGE",
        "scanStatus": status,
        "scanMode": "EC2_SSM_AGENT_BASED",
        "resourceMetadata": {"ec2": {"tags": tags, "amiId": instance.image_id, "platform": "LINUX"}},
    }
    if tracked.last_scanned_at is not None:
        record["lastScannedAt"] = tracked.last_scanned_at
    return record


def _criteria(raw: Any, fields: dict[str, Getter]) -> dict[str, list[dict[str, str]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("filterCriteria must be an object")
    out: dict[str, list[dict[str, str]]] = {}
    for key, filters in raw.items():
        if key not in fields:
            raise BadRequest(f"filterCriteria.{key} is not emulated (emulated: {', '.join(sorted(fields))})")
        if not isinstance(filters, list) or not 1 <= len(filters) <= 10:
            raise BadRequest(f"filterCriteria.{key} must be a list of 1 to 10 string filters")
        for f in filters:
            if not isinstance(f, dict) or f.get("comparison") not in ("EQUALS", "NOT_EQUALS", "PREFIX"):
                raise BadRequest(f"filterCriteria.{key}: each filter needs comparison EQUALS, NOT_EQUALS or PREFIX")
            if not isinstance(f.get("value"), str):
                raise BadRequest(f"filterCriteria.{key}: each filter needs a string value")
        out[key] = filters
    return out


def _matches(item: dict[str, Any], criteria: dict[str, list[dict[str, str]]], fields: dict[str, Getter]) -> bool:
    """Filters of different keys are ANDed; within a key, EQUALS/PREFIX are ORed and NOT_EQUALS exclude."""
    for key, filters in criteria.items():
        value = fields[key](item)
        positive = [f for f in filters if f["comparison"] != "NOT_EQUALS"]
        if any(f["comparison"] == "NOT_EQUALS" and value == f["value"] for f in filters):
            return False
        if positive and not any(
            value == f["value"] if f["comparison"] == "EQUALS" else str(value or "").startswith(f["value"])
            for f in positive
        ):
            return False
    return True


def _max_results(raw: Any, maximum: int) -> int:
    if raw is None:
        return maximum
    if not isinstance(raw, int) or not 1 <= raw <= maximum:
        raise BadRequest(f"maxResults must be between 1 and {maximum}")
    return raw


def _page(items: list[dict[str, Any]], token: Any, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    offset = 0
    if token:
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(str(token)))["offset"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BadRequest("nextToken is invalid") from None
    end = offset + limit
    next_token = base64.urlsafe_b64encode(json.dumps({"offset": end}).encode()).decode() if end < len(items) else None
    return items[offset:end], next_token


def _timestamp(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise AdminBadRequest(f"{what} is not ISO 8601: {value!r}") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise AdminBadRequest(f"{what} must be an ISO 8601 string or epoch seconds")


def _required_str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise AdminBadRequest(f"{key} is required (a non-empty string)")
    return value


def _parse_rule(raw: Any) -> ScanRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise AdminBadRequest("rule must be an object or null")
    unknown = set(raw) - {"scan_after_polls", "account_id", "region", "never_scan", "scanned_at"}
    if unknown:
        raise AdminBadRequest(f"unknown rule keys {sorted(unknown)}")
    polls = raw.get("scan_after_polls")
    if not isinstance(polls, int) or isinstance(polls, bool) or polls < 0:
        raise AdminBadRequest("rule.scan_after_polls must be a non-negative integer")
    never = raw.get("never_scan") or []
    if not isinstance(never, list) or not all(isinstance(i, str) for i in never):
        raise AdminBadRequest("rule.never_scan must be a list of instance ids")
    scanned_at = raw.get("scanned_at")
    return ScanRule(
        scan_after_polls=polls,
        account_id=raw.get("account_id"),
        region=raw.get("region"),
        never_scan=frozenset(never),
        scanned_at=None if scanned_at is None else _timestamp(scanned_at, "rule.scanned_at"),
    )


def _coverage_record(raw: dict[str, Any]) -> dict[str, Any]:
    record = dict(raw)
    _required_str(record, "resourceId")
    _required_str(record, "accountId")
    record.setdefault("resourceType", _EC2)
    record.setdefault("scanType", "PACKAGE")
    record.setdefault("scanStatus", {"statusCode": "ACTIVE", "reason": "SUCCESSFUL"})
    if record.get("lastScannedAt") is not None:
        record["lastScannedAt"] = _timestamp(record["lastScannedAt"], "lastScannedAt")
    return record


def _finding(raw: Any, default_region: Any, now: float) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise AdminBadRequest("each finding must be an object")
    finding = dict(raw)
    account_id = _required_str(finding, "awsAccountId")
    resources = finding.get("resources")
    if not isinstance(resources, list) or not resources or not all(isinstance(r, dict) for r in resources):
        raise AdminBadRequest("each finding needs resources: [{type, id, region}]")
    finding["resources"] = [dict(r) for r in resources]
    for resource in finding["resources"]:
        _required_str(resource, "id")
        resource.setdefault("type", _EC2)
        resource.setdefault("region", default_region)
        resource.setdefault("partition", "aws")
        _required_str(resource, "region")
    region = finding["resources"][0]["region"]
    finding.setdefault("findingArn", f"arn:aws:inspector2:{region}:{account_id}:finding/{uuid.uuid4().hex}")
    finding.setdefault("type", "PACKAGE_VULNERABILITY")
    finding.setdefault("status", "ACTIVE")
    finding.setdefault("severity", "MEDIUM")
    vulnerability = (finding.get("packageVulnerabilityDetails") or {}).get("vulnerabilityId")
    finding.setdefault("title", vulnerability or "Inspector finding")
    finding.setdefault("description", finding["title"])
    finding.setdefault("remediation", {"recommendation": {"text": "None Provided"}})
    for key in ("firstObservedAt", "lastObservedAt", "updatedAt"):
        finding[key] = _timestamp(finding[key], key) if key in finding else now
    if isinstance(finding.get("packageVulnerabilityDetails"), dict):
        finding["packageVulnerabilityDetails"] = {"source": "NVD", **finding["packageVulnerabilityDetails"]}
    return finding
