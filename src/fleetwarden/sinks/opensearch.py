"""OpenSearch/Elasticsearch sink: one rollup document per run and one document per finding, written with the
`_bulk` API (no mapping types) over HTTPS with basic auth or AWS SigV4, each with a stable `_id` so a retried
delivery replaces documents instead of duplicating them."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import Region, SecretRef
from ..errors import FleetwardenError
from ..model import Finding, FindingStatus, RunReport
from .base import Notification, Sink, SinkConfig, sink_registry
from .email import is_loopback

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

# OpenSearch index names: lowercase, none of \ / * ? " < > | space , # :, not starting with - _ +, not . or ..
INDEX_NAME = re.compile(r"^(?![-_+])(?!\.{1,2}$)[^A-Z\\/*?\"<>| ,#:]{1,200}$")
MAX_ERRORS_SHOWN = 5
BULK_CHUNK = 500
OPEN_STATUSES = (FindingStatus.NEW, FindingStatus.ONGOING)


class OpenSearchError(FleetwardenError):
    """Indexing into OpenSearch failed: the request, or some documents of the `_bulk` answer."""


class _AuthModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class BasicAuth(_AuthModel):
    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretRef  # by reference: ssm:/..., secretsmanager:..., env:...


class SigV4Auth(_AuthModel):
    type: Literal["aws-sigv4"]
    region: Region
    service: Literal["es", "aoss"] = "es"  # es: OpenSearch Service domains; aoss: OpenSearch Serverless


class OpenSearchSinkConfig(SinkConfig):
    url: str
    index: str = "aws-audits"
    index_date_suffix: bool = False  # aws-audits-2026.11: the year and month of the run's start (UTC)
    auth: Annotated[BasicAuth | SigV4Auth, Field(discriminator="type")] | None = None
    verify_certs: bool = True
    ca_certs: str | None = None  # a PEM bundle to trust instead of the system CAs (a cluster with its own CA)
    timeout_seconds: int = Field(default=30, ge=1, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError("put no credentials in the url: use auth: {type: basic, username, password: ssm:/...}")
        if parts.query or parts.fragment:
            raise ValueError(f"the url takes no query or fragment, got {value!r}")
        # Plain HTTP was one of the old tool's defects: documents and credentials travel in clear.
        secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or ""))
        if not parts.hostname or not secure:
            raise ValueError(f"url must be https:// (http:// only on loopback), got {value!r}")
        return value.rstrip("/")

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        if not INDEX_NAME.match(value):
            raise ValueError(
                f'not an index name: {value!r} (lowercase; no spaces or \\ / * ? " < > | , # :; '
                "not starting with - _ +)"
            )
        return value


def index_name(config: OpenSearchSinkConfig, report: RunReport) -> str:
    """The index for this run: `index`, or `index-YYYY.MM` (the run's start, UTC) with `index_date_suffix`."""
    if not config.index_date_suffix:
        return config.index
    return f"{config.index}-{report.started_at.astimezone(UTC):%Y.%m}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float) or value is None:
        return "" if value is None else str(value)
    return json.dumps(value, sort_keys=True, default=str)


def flatten_details(details: dict[str, Any]) -> dict[str, Any]:
    """A finding's details as fields that map the same way for every check: the well-known tag-audit fields
    typed (`tags` as "k=v" strings, `missing`, `invalid_keys`, `invalid`, `age_minutes`), everything else under
    `details` as strings or lists of strings, so one check's numbers never clash with another's text."""
    out: dict[str, Any] = {}
    rest: dict[str, str | list[str]] = {}
    for key, value in details.items():
        if key == "tags" and isinstance(value, dict):
            out["tags"] = sorted(f"{k}={v}" for k, v in value.items())
        elif key == "missing" and isinstance(value, list):
            out["missing"] = [_text(v) for v in value]
        elif key == "invalid" and isinstance(value, dict):
            out["invalid_keys"] = sorted(str(k) for k in value)
            out["invalid"] = [f"{k}: {_text(v)}" for k, v in sorted(value.items())]
        elif key == "age_minutes" and isinstance(value, int) and not isinstance(value, bool):
            out["age_minutes"] = value
        elif isinstance(value, dict):
            rest[key] = sorted(f"{k}={_text(v)}" for k, v in value.items())
        elif isinstance(value, list):
            rest[key] = [_text(v) for v in value]
        else:
            rest[key] = _text(value)
    if rest:
        out["details"] = rest
    return out


def rollup_document(report: RunReport, notification: Notification) -> dict[str, Any]:
    """One document per run: when, what, where, and the counts (the old `aws_tag_audit` document, extended)."""
    open_findings = [f for f in report.findings if f.status in OPEN_STATUSES]
    doc: dict[str, Any] = {
        "@timestamp": report.started_at.isoformat(),
        "doc_type": "run",
        "run_id": report.run_id,
        "workflow": report.workflow,
        "dry_run": report.dry_run,
        "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "accounts": sorted({t.account_id for t in report.targets} | {f.account_id for f in report.findings}),
        "regions": sorted({t.region for t in report.targets}),
        "targets_ok": sum(1 for t in report.targets if t.status.value == "ok"),
        "targets_error": sum(1 for t in report.targets if t.status.value == "error"),
        "target_errors": [f"{t.account_id}/{t.region}: {t.error}" for t in report.targets if t.error],
        "finding_count": len(report.findings),
        "violator_count": len(open_findings),
        "violators": sorted({f.resource_id for f in open_findings}),
        "findings_by_status": dict(Counter(f.status.value for f in report.findings)),
        "findings_by_severity": dict(Counter(f.severity.value for f in report.findings)),
        "findings_by_check": dict(Counter(f.check for f in report.findings)),
        "actions_by_outcome": dict(Counter(a.outcome.value for a in report.actions)),
        "subject": notification.subject,
    }
    # Scalars only: the summary's nested counters are above, and free-form objects would grow the mapping.
    doc["summary"] = {k: v for k, v in report.summary.items() if isinstance(v, str | int | float | bool)}
    required = notification.data.get("required_tags", report.summary.get("required_tags"))
    if isinstance(required, list | tuple):
        doc["tag_scheme"] = [str(t) for t in required]
    return doc


def finding_document(finding: Finding, report: RunReport) -> dict[str, Any]:
    """One document per finding of the run (the old `aws_tag_violator` document, for every check)."""
    return {
        "@timestamp": report.started_at.isoformat(),
        "doc_type": "finding",
        "run_id": report.run_id,
        "workflow": report.workflow,
        "dry_run": report.dry_run,
        "finding_id": finding.id,
        "check": finding.check,
        "control": finding.control,
        "account_id": finding.account_id,
        "region": finding.region,
        "resource_id": finding.resource_id,
        "resource_type": finding.resource_type,
        "status": finding.status.value,
        "severity": finding.severity.value,
        "title": finding.title,
        "first_seen": finding.first_seen.isoformat(),
        "last_seen": finding.last_seen.isoformat(),
        **flatten_details(finding.details),
    }


def bulk_actions(index: str, report: RunReport, notification: Notification) -> list[dict[str, Any]]:
    """The `_bulk` index actions: the rollup (`_id` = run id), then each finding (`_id` = run id + finding id).
    `index` (not `create`) replaces a document with the same `_id`, so delivering the same run twice is harmless."""
    actions = [
        {"_op_type": "index", "_index": index, "_id": report.run_id, "_source": rollup_document(report, notification)}
    ]
    for finding in report.findings:
        actions.append(
            {
                "_op_type": "index",
                "_index": index,
                "_id": f"{report.run_id}-{finding.id}",
                "_source": finding_document(finding, report),
            }
        )
    return actions


def _bulk_error_summary(errors: list[dict[str, Any]], total: int) -> str:
    lines = []
    for entry in errors[:MAX_ERRORS_SHOWN]:
        item: dict[str, Any] = next(iter(entry.values()), {})
        error = item.get("error")
        if isinstance(error, dict):
            reason = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
        else:
            reason = str(error)
        lines.append(f"{item.get('_id')} (HTTP {item.get('status')}): {reason}")
    more = f"; and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
    return f"{len(errors)} of {total} documents refused: " + "; ".join(lines) + more


@sink_registry.register("opensearch")
class OpenSearchSink(Sink):
    """Index a rollup document per run and one document per finding into OpenSearch or Elasticsearch (`_bulk`)."""

    type_name = "opensearch"
    config_model = OpenSearchSinkConfig
    # es:ESHttpPost/ESHttpPut for aws-sigv4 on an OpenSearch Service domain (aoss:APIAccessAll for Serverless
    # is granted in the collection's data access policy too); reading a basic-auth password otherwise.
    permissions = (
        "es:ESHttpPost",
        "es:ESHttpPut",
        "aoss:APIAccessAll",
        "ssm:GetParameter",
        "secretsmanager:GetSecretValue",
    )

    @property
    def settings(self) -> OpenSearchSinkConfig:
        assert isinstance(self.config, OpenSearchSinkConfig)
        return self.config

    def _http_auth(self) -> Any:
        auth = self.settings.auth
        if isinstance(auth, BasicAuth):
            password = self.context.secrets.resolve(auth.password)
            # The Authorization header is base64("user:password"): an echo of it is redacted too.
            self.context.secrets.protect_login(auth.username, password)
            return (auth.username, password)
        if isinstance(auth, SigV4Auth):
            from opensearchpy import Urllib3AWSV4SignerAuth

            # The base credentials (the principal fleetwarden runs as), refreshed by botocore when they expire.
            credentials = self.context.factory.credentials()
            if credentials is None:
                raise OpenSearchError("OpenSearch aws-sigv4: no AWS credentials found to sign the requests with")
            return Urllib3AWSV4SignerAuth(credentials, auth.region, auth.service)
        return None

    def _client(self) -> OpenSearch:
        from opensearchpy import OpenSearch

        cfg = self.settings
        parts = urlsplit(cfg.url)
        https = parts.scheme == "https"
        host: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port or (443 if https else 80),
            "scheme": parts.scheme,
        }
        if parts.path.strip("/"):
            host["url_prefix"] = parts.path
        kwargs: dict[str, Any] = {}
        if https:
            kwargs = {"use_ssl": True, "verify_certs": cfg.verify_certs, "ssl_show_warn": not cfg.verify_certs}
            if cfg.ca_certs:
                kwargs["ca_certs"] = cfg.ca_certs
        return OpenSearch(
            hosts=[host],
            http_auth=self._http_auth(),
            timeout=cfg.timeout_seconds,
            max_retries=2,
            retry_on_timeout=True,
            **kwargs,
        )

    def send(self, notification: Notification, report: RunReport) -> None:
        try:
            import opensearchpy  # noqa: F401  (an optional dependency: the `opensearch` extra)
        except ImportError:
            raise OpenSearchError(
                "the opensearch sink needs opensearch-py: pip install 'fleetwarden[opensearch]'"
            ) from None
        from opensearchpy import helpers
        from opensearchpy.exceptions import ImproperlyConfigured, OpenSearchException, TransportError

        cfg = self.settings
        index = index_name(cfg, report)
        actions = bulk_actions(index, report, notification)
        where = f"OpenSearch {cfg.url} index {index}"
        try:
            client = self._client()
            try:
                # raise_on_error=False: collect every refused document (all chunks go out), then fail with a summary.
                # max_retries retries only documents answered 429 (too many requests), with backoff.
                _, errors = helpers.bulk(
                    client, actions, chunk_size=BULK_CHUNK, raise_on_error=False, max_retries=2, initial_backoff=1
                )
            finally:
                client.close()
        except TransportError as exc:  # HTTP errors (401, 403, 413, 5xx) and connection, TLS and timeout errors
            detail = f"HTTP {exc.status_code}: {exc.error}" if isinstance(exc.status_code, int) else str(exc.info)
            raise OpenSearchError(self.context.secrets.redact(f"{where}: _bulk failed: {detail}")) from None
        except (OpenSearchException, ImproperlyConfigured) as exc:  # serialization, missing CA bundle
            message = f"{where}: {type(exc).__name__}: {exc}"
            raise OpenSearchError(self.context.secrets.redact(message)) from None
        if errors:
            summary = _bulk_error_summary(list(errors), len(actions))
            raise OpenSearchError(self.context.secrets.redact(f"{where}: {summary}"))
