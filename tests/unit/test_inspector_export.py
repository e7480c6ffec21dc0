"""The export's pieces that need no AWS: the S3 URI, the filter, and the wait's ending (a clock given)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from fleetwarden.collect.inspector_export import TIMED_OUT, ExportJob, ExportSpec, criteria, parse_s3_uri, wait


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://bucket", ("bucket", "")), ("s3://my.bucket/a/b/", ("my.bucket", "a/b")), ("s3://b-1/x", ("b-1", "x"))],
)
def test_s3_uris(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["bucket/x", "https://bucket/x", "s3://", "s3://UPPER/x", "s3://a..b/x", "s3://ab"])
def test_bad_s3_uris_name_the_problem(uri: str) -> None:
    with pytest.raises(ValueError, match="S3"):
        parse_s3_uri(uri)


def test_criteria_keep_the_commands_findings() -> None:
    got = criteria(["111111111111"], ("informational", "HIGH"))
    assert [f["value"] for f in got["findingStatus"]] == ["ACTIVE", "SUPPRESSED"]
    assert [f["value"] for f in got["severity"]] == ["HIGH", "INFORMATIONAL", "UNTRIAGED"]
    assert [f["value"] for f in got["awsAccountId"]] == ["111111111111"]
    assert "awsAccountId" not in criteria(None, ()) and "severity" not in criteria(None, ())


def _client(statuses: list[str], report_id: str, error_code: str | None = None) -> tuple[Any, Stubber]:
    """A real inspector2 client whose GetFindingsReportStatus answers come from botocore's Stubber, in order."""
    client = boto3.client("inspector2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    for status in statuses:
        answer: dict[str, Any] = {"reportId": report_id, "status": status}
        if status == "FAILED" and error_code:
            answer |= {"errorCode": error_code, "errorMessage": "denied"}
        stubber.add_response("get_findings_report_status", answer, {"reportId": report_id})
    stubber.activate()
    return client, stubber


def test_wait_polls_until_done_and_ends_at_the_timeout() -> None:
    """Uses botocore's Stubber for the status calls: the clock is the test's, so the timeout is exact."""
    now = [0.0]
    spec = ExportSpec("b", "p", "CSV", "arn:aws:kms:us-east-1:111111111111:key/k", timeout_seconds=30, poll_seconds=10)
    done, done_stub = _client(["IN_PROGRESS", "FAILED"], "a", "INVALID_PERMISSIONS")
    slow, slow_stub = _client(["IN_PROGRESS"] * 4, "b")
    jobs = [
        (done, ExportJob("1", "r", None, "a", "IN_PROGRESS")),
        (slow, ExportJob("1", "r", None, "b", "IN_PROGRESS")),
    ]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    wait(jobs, spec, clock=lambda: now[0], sleep=sleep)
    assert jobs[0][1].status == "FAILED" and jobs[0][1].error == "INVALID_PERMISSIONS: denied"
    done_stub.assert_no_pending_responses()  # asked twice, not again once done
    assert jobs[1][1].status == TIMED_OUT and "--report-id b" in (jobs[1][1].error or "")
    slow_stub.assert_no_pending_responses()  # at 0, 10, 20 and 30 s, then the wait ended
    assert now[0] == 30
