"""Amazon Inspector (v2) findings reports exported to S3: CreateFindingsReport, then GetFindingsReportStatus until
each report is done (`fleetwarden findings inspector --export s3://BUCKET/PREFIX`, docs/inspector.md).

Inspector writes the report itself (CSV or JSON, encrypted with the KMS key given), so nothing passes through
fleetwarden; a report is asked for per (account, region), or per region from the delegated administrator for the
accounts it sees (at most 10 accounts per report: Inspector's limit on values per filter). botocore has no waiter
for GetFindingsReportStatus: it is polled here, every `poll_seconds`, until `timeout_seconds`. A report still in
progress then is reported as such (with its id), never as failed or done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

PERMISSIONS = ("inspector2:CreateFindingsReport", "inspector2:GetFindingsReportStatus")
DONE = ("SUCCEEDED", "FAILED", "CANCELLED")
ACCOUNTS_PER_REPORT = 10  # values per filter
TIMED_OUT = "TIMED_OUT"  # ours, not Inspector's: still IN_PROGRESS when the wait ended
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_s3_uri(text: str) -> tuple[str, str]:
    """s3://bucket[/prefix] -> (bucket, prefix without surrounding slashes); ValueError names what is wrong."""
    if not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an S3 URI: write s3://BUCKET/PREFIX")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class ExportSpec:
    """Where and how: the bucket, key prefix, CSV or JSON, the KMS key, the wait, and the severities kept."""

    bucket: str
    prefix: str
    report_format: str  # "CSV" or "JSON", as CreateFindingsReport takes it
    kms_key_arn: str
    timeout_seconds: float = 900
    poll_seconds: float = 10
    severities: tuple[str, ...] = ()

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass
class ExportJob:
    """One findings report: asked for in `account_id`/`region` (the delegated administrator's, or the target's),
    covering `accounts` (None: every account that account sees)."""

    account_id: str
    region: str
    accounts: list[str] | None
    report_id: str | None = None
    status: str = "PENDING"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "SUCCEEDED"

    def as_dict(self, spec: ExportSpec) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "region": self.region,
            "accounts": self.accounts,
            "report_id": self.report_id,
            "status": self.status,
            "format": spec.report_format,
            "destination": spec.destination,
            "error": self.error,
        }


def _equals(values: Sequence[str]) -> list[dict[str, str]]:
    return [{"comparison": "EQUALS", "value": v} for v in values]


def criteria(accounts: Sequence[str] | None, severities: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """The same findings `findings inspector` reads (active and suppressed, on EC2 instances), of those accounts
    and severities. CreateFindingsReport includes only ACTIVE ones unless findingStatus says otherwise."""
    out = {
        "findingStatus": _equals(["ACTIVE", "SUPPRESSED"]),
        "resourceType": _equals(["AWS_EC2_INSTANCE"]),
    }
    if accounts:
        out["awsAccountId"] = _equals(accounts)
    if severities:
        # fleetwarden's INFORMATIONAL also stands for Inspector's UNTRIAGED (collect/inspector.py).
        upper = {s.upper() for s in severities}
        out["severity"] = _equals(sorted(upper | ({"UNTRIAGED"} if "INFORMATIONAL" in upper else set())))
    return out


def _error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()
    return str(exc)


def start(client: Any, job: ExportJob, spec: ExportSpec) -> ExportJob:
    """CreateFindingsReport for one job; a refusal (permissions, a bad key, validation) fails that job only."""
    destination = {"bucketName": spec.bucket, "kmsKeyArn": spec.kms_key_arn}
    if spec.prefix:
        destination["keyPrefix"] = spec.prefix
    try:
        answer = client.create_findings_report(
            reportFormat=spec.report_format,
            s3Destination=destination,
            filterCriteria=criteria(job.accounts, spec.severities),
        )
    except (ClientError, BotoCoreError) as exc:
        job.status, job.error = "FAILED", f"CreateFindingsReport: {_error(exc)}"
        return job
    job.report_id, job.status = answer["reportId"], "IN_PROGRESS"
    return job


def wait(
    jobs: Sequence[tuple[Any, ExportJob]],
    spec: ExportSpec,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll GetFindingsReportStatus for every job in progress until each is done or `timeout_seconds` passed. A
    status call that fails is retried at the next poll (botocore already retried it); its last error is kept."""
    deadline = clock() + spec.timeout_seconds
    pending = [(client, job) for client, job in jobs if job.status == "IN_PROGRESS"]
    while pending:
        still: list[tuple[Any, ExportJob]] = []
        for client, job in pending:
            try:
                answer = client.get_findings_report_status(reportId=job.report_id)
            except (ClientError, BotoCoreError) as exc:
                job.error = f"GetFindingsReportStatus: {_error(exc)}"
                still.append((client, job))
                continue
            job.status = str(answer.get("status", "IN_PROGRESS"))
            if job.status in DONE:
                code, message = answer.get("errorCode"), answer.get("errorMessage")
                job.error = None if job.ok else ": ".join(str(p) for p in (code, message) if p) or job.status
            else:
                job.error = None
                still.append((client, job))
        pending = still
        if not pending:
            return
        if clock() + spec.poll_seconds > deadline:
            break
        sleep(spec.poll_seconds)
    for _client, job in pending:
        job.status = TIMED_OUT
        job.error = (
            f"still in progress after {spec.timeout_seconds:g} s (inspector.export.timeout_seconds); check later "
            f"with: aws inspector2 get-findings-report-status --report-id {job.report_id} --region {job.region}"
        )
