"""S3 sink: writes a notification's files (and the RunReport) under a dated prefix of a bucket."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import field_validator, model_validator

from ..config import AccountId, Region
from ..model import RunReport
from .base import Notification, Sink, SinkConfig, SinkContext, sink_registry

BUCKET_NAME = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
JSON = "application/json"


def dated_key(filename: str, when: datetime) -> str:
    """`YYYY/MM/<filename>` for `when` (in UTC): the key suffix every file of a month shares."""
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return f"{when:%Y}/{when:%m}/{safe_filename(filename)}"


def safe_filename(filename: str) -> str:
    """A file name that stays one key segment: path separators and control characters become `_`."""
    name = "".join("_" if ch in "/\\" or not ch.isprintable() else ch for ch in filename).strip()
    if name in ("", ".", ".."):
        raise ValueError(f"not a usable file name: {filename!r}")
    return name


class S3SinkConfig(SinkConfig):
    bucket: str
    prefix: str = "fleetwarden"
    region: Region | None = None  # the bucket's region; default: aws.sts_region
    write_report: bool = True  # also write <run_id>.json (the RunReport) beside the files
    sse: Literal["AES256", "aws:kms"] | None = None  # default: the bucket's own default encryption
    kms_key_id: str | None = None  # with sse: aws:kms; default: the AWS managed key aws/s3
    expected_bucket_owner: AccountId | None = None  # refuse to write if the bucket belongs to another account

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_NAME.match(value):
            raise ValueError(f"not an S3 bucket name: {value!r} (a name, not an s3:// URL or an ARN)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value and any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError(f"prefix {value!r} has an empty, '.' or '..' segment")
        return value

    @model_validator(mode="after")
    def _kms(self) -> S3SinkConfig:
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse: aws:kms")
        return self


@sink_registry.register("s3")
class S3Sink(Sink):
    """Store files in S3: each attachment at `<prefix>/YYYY/MM/<filename>` and the run as `<run_id>.json`."""

    type_name = "s3"
    config_model = S3SinkConfig
    permissions = ("s3:PutObject",)

    def __init__(self, name: str, config: SinkConfig, context: SinkContext) -> None:
        super().__init__(name, config, context)
        self.written: list[str] = []  # the s3:// URLs `send` wrote, in order

    @property
    def settings(self) -> S3SinkConfig:
        assert isinstance(self.config, S3SinkConfig)
        return self.config

    def key(self, key_suffix: str) -> str:
        """The full object key for a suffix: `<prefix>/<suffix>`."""
        suffix = key_suffix.lstrip("/")
        if not suffix:
            raise ValueError("an empty key suffix")
        return f"{self.settings.prefix}/{suffix}" if self.settings.prefix else suffix

    def put_object(self, key_suffix: str, data: bytes, content_type: str) -> str:
        """Write `data` at `<prefix>/<key_suffix>` (for workflows that choose the key, e.g. the compliance
        report's `YYYY/MM/compliance-<timestamp>.csv`); return its `s3://bucket/key` URL."""
        cfg = self.settings
        key = self.key(key_suffix)
        kwargs: dict[str, Any] = {"Bucket": cfg.bucket, "Key": key, "Body": data, "ContentType": content_type}
        if cfg.sse is not None:
            kwargs["ServerSideEncryption"] = cfg.sse
        if cfg.kms_key_id is not None:
            kwargs["SSEKMSKeyId"] = cfg.kms_key_id
        if cfg.expected_bucket_owner is not None:
            kwargs["ExpectedBucketOwner"] = cfg.expected_bucket_owner
        region = cfg.region or self.context.factory.settings.sts_region
        self.context.factory.client("s3", region=region).put_object(**kwargs)
        return f"s3://{cfg.bucket}/{key}"

    def send(self, notification: Notification, report: RunReport) -> None:
        # The run's start time dates the files, so every file of one run lands in the same month folder.
        urls = [
            self.put_object(dated_key(a.filename, report.started_at), a.content, a.content_type)
            for a in notification.attachments
        ]
        if self.settings.write_report:
            report_key = dated_key(f"{report.run_id}.json", report.started_at)
            urls.append(self.put_object(report_key, report.to_json().encode("utf-8"), JSON))
        self.written.extend(urls)
