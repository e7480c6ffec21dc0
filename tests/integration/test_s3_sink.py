"""The S3 sink against the emulator: files under `<prefix>/YYYY/MM/`, the RunReport beside them, keys chosen by
a workflow, server-side encryption, and failures as Deliveries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fleetwarden.aws.session import SessionFactory
from fleetwarden.output import findings_csv
from fleetwarden.secrets import SecretResolver
from fleetwarden.sinks import Attachment, Notification, SinkContext, build_sink, deliver
from fleetwarden.sinks.s3 import S3Sink, S3SinkConfig, dated_key
from sample_reports import NOW, make_report

REGION = "eu-west-1"
BUCKET = "fleetwarden-reports"


@pytest.fixture
def context(factory: SessionFactory) -> SinkContext:
    s3 = factory.client("s3", region=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return SinkContext(factory, SecretResolver(factory))


def _objects(factory: SessionFactory) -> dict[str, dict[str, Any]]:
    s3 = factory.client("s3", region=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {key: s3.get_object(Bucket=BUCKET, Key=key) for key in keys}


def _s3_sink(context: SinkContext, **extra: Any) -> S3Sink:
    sink = build_sink("reports", {"type": "s3", "bucket": BUCKET, "region": REGION, **extra}, context)
    assert isinstance(sink, S3Sink)
    return sink


def test_send_writes_each_attachment_and_the_run_report_under_the_month(
    context: SinkContext, factory: SessionFactory
) -> None:
    report = make_report()  # started 2026-03-04
    csv = findings_csv(report.findings)
    notification = Notification("s", "t", [Attachment("findings.csv", csv), Attachment("a/b.txt", b"x", "text/plain")])
    sinks = {"reports": {"type": "s3", "bucket": BUCKET, "region": REGION}}

    deliveries = deliver(["reports"], sinks, notification, report, context)

    assert [(d.outcome, d.error) for d in deliveries] == [("sent", None)]
    objects = _objects(factory)
    assert sorted(objects) == [
        "fleetwarden/2026/03/20260304T103000Z-ab12.json",
        "fleetwarden/2026/03/a_b.txt",  # a path separator in a file name never makes a new folder
        "fleetwarden/2026/03/findings.csv",
    ]
    stored = objects["fleetwarden/2026/03/findings.csv"]
    assert stored["Body"].read() == csv and stored["ContentType"] == "text/csv"
    run = objects["fleetwarden/2026/03/20260304T103000Z-ab12.json"]
    assert run["ContentType"] == "application/json"
    assert json.loads(run["Body"].read()) == report.to_dict()


def test_write_report_false_writes_only_the_files(context: SinkContext, factory: SessionFactory) -> None:
    sink = _s3_sink(context, write_report=False, prefix="/audits/eng/")
    sink.send(Notification("s", "t", [Attachment("findings.csv", b"id\r\n")]), make_report())

    assert sorted(_objects(factory)) == ["audits/eng/2026/03/findings.csv"]
    assert sink.written == [f"s3://{BUCKET}/audits/eng/2026/03/findings.csv"]


def test_put_object_takes_the_key_a_workflow_chooses(context: SinkContext, factory: SessionFactory) -> None:
    sink = _s3_sink(context)
    suffix = dated_key("compliance-20260304T103000Z.csv", NOW)

    url = sink.put_object(suffix, b"id,title\r\n", "text/csv")

    assert suffix == "2026/03/compliance-20260304T103000Z.csv"
    assert url == f"s3://{BUCKET}/fleetwarden/2026/03/compliance-20260304T103000Z.csv"
    assert _objects(factory)["fleetwarden/2026/03/compliance-20260304T103000Z.csv"]["Body"].read() == b"id,title\r\n"


def test_an_empty_prefix_writes_at_the_top_of_the_bucket(context: SinkContext, factory: SessionFactory) -> None:
    assert _s3_sink(context, prefix="").put_object("2026/03/x.csv", b"x", "text/csv") == f"s3://{BUCKET}/2026/03/x.csv"
    assert list(_objects(factory)) == ["2026/03/x.csv"]


def test_server_side_encryption_sse_s3_and_kms(context: SinkContext, factory: SessionFactory) -> None:
    s3 = factory.client("s3", region=REGION)
    key_id = factory.client("kms", region=REGION).create_key()["KeyMetadata"]["KeyId"]

    _s3_sink(context, sse="AES256").put_object("a.csv", b"a", "text/csv")
    _s3_sink(context, sse="aws:kms", kms_key_id=key_id).put_object("b.csv", b"b", "text/csv")

    assert s3.head_object(Bucket=BUCKET, Key="fleetwarden/a.csv")["ServerSideEncryption"] == "AES256"
    head = s3.head_object(Bucket=BUCKET, Key="fleetwarden/b.csv")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]


def test_a_missing_bucket_is_a_failed_delivery(context: SinkContext) -> None:
    sinks = {"gone": {"type": "s3", "bucket": "no-such-bucket-here", "region": REGION}}

    deliveries = deliver(["gone"], sinks, Notification("s", "t"), make_report(), context)

    assert deliveries[0].outcome == "failed" and "NoSuchBucket" in (deliveries[0].error or "")


def test_the_region_defaults_to_the_home_region(factory: SessionFactory) -> None:
    factory.client("s3", region="us-east-1").create_bucket(Bucket="home-bucket")
    context = SinkContext(factory, SecretResolver(factory))
    sink = build_sink("r", {"type": "s3", "bucket": "home-bucket"}, context)
    assert isinstance(sink, S3Sink)

    sink.send(Notification("s", "t"), make_report())

    listed = factory.client("s3", region="us-east-1").list_objects_v2(Bucket="home-bucket")["Contents"]
    assert [o["Key"] for o in listed] == ["fleetwarden/2026/03/20260304T103000Z-ab12.json"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bucket": "s3://my-bucket"}, "not an S3 bucket name"),
        ({"bucket": "My_Bucket"}, "not an S3 bucket name"),
        ({"kms_key_id": "alias/x"}, "kms_key_id needs sse: aws:kms"),
        ({"sse": "aws:kms:dsse"}, "Input should be"),
        ({"prefix": "a//b"}, "empty, '.' or '..' segment"),
        ({"prefix": "a/../b"}, "empty, '.' or '..' segment"),
        ({"region": "europe"}, "not an AWS region name"),
        ({"expected_bucket_owner": "123"}, "12 digits"),
    ],
)
def test_config_is_checked_before_any_call(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        S3SinkConfig.model_validate({"type": "s3", "bucket": BUCKET, **changes})


def test_declared_permissions() -> None:
    assert S3Sink.permissions == ("s3:PutObject",)
