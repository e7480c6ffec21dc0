"""The OpenSearch sink against a loopback server that speaks enough of the OpenSearch REST protocol for
opensearch-py (`GET /`, `POST /_bulk` with NDJSON and per-item results): the exact documents and `_id`s, basic
auth over HTTP (loopback) and HTTPS (a throwaway CA), SigV4 signing, idempotent retries and per-item errors."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from netutil import CONNECTION_REFUSED, refused_port
from pydantic import ValidationError

from fleetwarden.aws.session import SessionFactory
from fleetwarden.model import FindingStatus
from fleetwarden.secrets import SecretResolver
from fleetwarden.sinks import Notification, SinkContext, deliver
from fleetwarden.sinks.opensearch import OpenSearchSink, OpenSearchSinkConfig, flatten_details
from sample_reports import DEV, NOW, PROD, make_report

USER = "fleetwarden"
PASSWORD = "os-Pa55word-loopback-secret"
RUN_ID = "20260304T103000Z-ab12"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOpenSearch:
    """A loopback OpenSearch: `GET /` and `_bulk` (index actions), documents kept by (index, _id)."""

    url: str = ""
    auth: str | None = None  # the expected Authorization header; None: any (SigV4 is checked by the test)
    fail_ids: dict[str, str] = field(default_factory=dict)  # _id -> error type to answer for that item
    requests: list[Request] = field(default_factory=list)
    documents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bulk_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path.split("?")[0].endswith("/_bulk")]

    def actions(self, request: Request) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        lines = [json.loads(line) for line in request.body.decode("utf-8").splitlines() if line.strip()]
        return list(zip(lines[0::2], lines[1::2], strict=True))

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(Request(method, path, headers, body))
        if self.auth is not None and headers.get("authorization") != self.auth:
            reason = "missing authentication credentials for REST request [/_bulk]"
            return 401, {"error": {"type": "security_exception", "reason": reason}, "status": 401}
        route = path.split("?")[0]
        if method == "GET" and route.rstrip("/") in ("", "/search"):
            return 200, {
                "name": "loopback",
                "cluster_name": "fleetwarden-test",
                "version": {"distribution": "opensearch", "number": "2.17.0", "lucene_version": "9.11.1"},
                "tagline": "The OpenSearch Project: https://opensearch.org/",
            }
        if method in ("POST", "PUT") and route.endswith("/_bulk"):
            return 200, self._bulk(self.actions(Request(method, path, headers, body)))
        return 404, {"error": {"type": "no_handler", "reason": f"no handler for {method} {route}"}, "status": 404}

    def _bulk(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
        items = []
        for action, source in pairs:
            ((op, meta),) = action.items()
            index, doc_id = meta["_index"], meta["_id"]
            if doc_id in self.fail_ids:
                error = {"type": self.fail_ids[doc_id], "reason": f"failed to parse field [age_minutes] of {doc_id}"}
                items.append({op: {"_index": index, "_id": doc_id, "status": 400, "error": error}})
                continue
            with self.lock:
                existed = (index, doc_id) in self.documents
                self.documents[(index, doc_id)] = source
            result, status = ("updated", 200) if existed else ("created", 201)
            items.append(
                {
                    op: {
                        "_index": index,
                        "_id": doc_id,
                        "_version": 2 if existed else 1,
                        "result": result,
                        "status": status,
                    }
                }
            )
        return {"took": 3, "errors": any("error" in next(iter(i.values())) for i in items), "items": items}


def _serve(fake: FakeOpenSearch, tls: ssl.SSLContext | None = None) -> Iterator[FakeOpenSearch]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 expects from a real cluster

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    fake.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def cluster() -> Iterator[FakeOpenSearch]:
    yield from _serve(FakeOpenSearch(auth=_basic(USER, PASSWORD)))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (the client trusts it through ca_certs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetwarden test cluster")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("os-tls")
    cert_file, key_file = directory / "cluster.pem", directory / "cluster.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def tls_cluster(tls_files: tuple[Path, Path]) -> Iterator[FakeOpenSearch]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    yield from _serve(FakeOpenSearch(auth=_basic(USER, PASSWORD)), tls=context)


@pytest.fixture
def context(monkeypatch: pytest.MonkeyPatch) -> SinkContext:
    monkeypatch.setenv("FLEETWARDEN_OS_PASSWORD", PASSWORD)
    # env: references need no AWS: the factory is never asked for a client.
    return SinkContext(SessionFactory(run_id="test"), SecretResolver(None))


def _config(cluster: FakeOpenSearch, **changes: Any) -> dict[str, Any]:
    auth = {"type": "basic", "username": USER, "password": "env:FLEETWARDEN_OS_PASSWORD"}
    return {
        "type": "opensearch",
        "url": cluster.url,
        "index": "aws-audits",
        "auth": auth,
        "timeout_seconds": 5,
        **changes,
    }


def _notification(**data: Any) -> Notification:
    return Notification("fleetwarden audit: 3 violators (2 new) in 2 accounts [dry run]", "text", data=data)


def _send(config: dict[str, Any], context: SinkContext, notification: Notification | None = None) -> tuple[str, str]:
    deliveries = deliver(["search"], {"search": config}, notification or _notification(), make_report(), context)
    assert [d.sink for d in deliveries] == ["search"]
    return deliveries[0].outcome, deliveries[0].error or ""


def test_bulk_indexes_a_rollup_and_one_document_per_finding(cluster: FakeOpenSearch, context: SinkContext) -> None:
    report = make_report()
    notification = _notification(required_tags=["created_by", "department", "project"])

    assert _send(_config(cluster), context, notification) == ("sent", "")

    [bulk] = cluster.bulk_requests()
    assert bulk.method in ("POST", "PUT") and bulk.path.split("?")[0] == "/_bulk"
    assert bulk.headers["authorization"] == _basic(USER, PASSWORD)
    assert bulk.headers["content-type"].startswith("application/json")
    pairs = cluster.actions(bulk)
    # index actions (never create: a retry replaces), no mapping types, one stable _id each
    assert [next(iter(a)) for a, _ in pairs] == ["index"] * 6
    assert all(set(a["index"]) == {"_index", "_id"} and a["index"]["_index"] == "aws-audits" for a, _ in pairs)
    ids = [a["index"]["_id"] for a, _ in pairs]
    assert ids == [RUN_ID] + [f"{RUN_ID}-{f.id}" for f in report.findings]

    rollup = pairs[0][1]
    assert rollup == {
        "@timestamp": NOW.isoformat(),
        "doc_type": "run",
        "run_id": RUN_ID,
        "workflow": "audit",
        "dry_run": True,
        "started_at": NOW.isoformat(),
        "finished_at": (NOW + dt.timedelta(seconds=95)).isoformat(),
        "accounts": [DEV, PROD, "333333333333"],
        "regions": ["ap-south-1", "eu-west-1", "us-east-1"],
        "targets_ok": 3,
        "targets_error": 1,
        "target_errors": ["333333333333/ap-south-1: AssumeRole: AccessDenied: not authorized to assume FleetWarden"],
        "finding_count": 5,
        "violator_count": 3,
        "violators": ["i-0new0000000000001", "i-0new0000000000002", "i-0ongoing000000003"],
        "findings_by_status": {"new": 2, "ongoing": 1, "resolved": 1, "suppressed": 1},
        "findings_by_severity": {"HIGH": 1, "MEDIUM": 4},
        "findings_by_check": {"tags": 5},
        "actions_by_outcome": {"planned": 1, "failed": 1, "skipped": 1},
        "subject": notification.subject,
        "summary": {"instances_audited": 1234, "violators": 3, "warning": "the plan exceeds audit.max_actions=2"},
        "tag_scheme": ["created_by", "department", "project"],
    }

    second = report.findings[1]
    assert pairs[2][1] == {
        "@timestamp": NOW.isoformat(),
        "doc_type": "finding",
        "run_id": RUN_ID,
        "workflow": "audit",
        "dry_run": True,
        "finding_id": second.id,
        "check": "tags",
        "control": "required-tags",
        "account_id": DEV,
        "region": "eu-west-1",
        "resource_id": "i-0new0000000000002",
        "resource_type": "AwsEc2Instance",
        "status": "new",
        "severity": "MEDIUM",
        "title": "i-0new0000000000002 is missing required tags",
        "first_seen": (NOW - dt.timedelta(days=2)).isoformat(),
        "last_seen": NOW.isoformat(),
        "missing": ["department", "project"],
        "invalid_keys": ["created_by"],
        "invalid": ["created_by: 'nobody' is not an IAM user of this account"],
    }
    assert {s["status"] for _, s in pairs[1:]} == {s.value for s in FindingStatus}
    assert len(cluster.documents) == 6


def test_a_retried_delivery_sends_the_same_ids_and_duplicates_nothing(
    cluster: FakeOpenSearch, context: SinkContext
) -> None:
    assert _send(_config(cluster), context) == ("sent", "")
    assert _send(_config(cluster), context) == ("sent", "")

    first, second = cluster.bulk_requests()
    assert [a for a, _ in cluster.actions(first)] == [a for a, _ in cluster.actions(second)]
    assert len(cluster.documents) == 6


def test_item_errors_fail_the_delivery_with_a_summary(cluster: FakeOpenSearch, context: SinkContext) -> None:
    bad = f"{RUN_ID}-{make_report().findings[2].id}"
    cluster.fail_ids[bad] = "mapper_parsing_exception"

    outcome, error = _send(_config(cluster), context)

    assert outcome == "failed"
    assert error == (
        f"OpenSearchError: OpenSearch {cluster.url} index aws-audits: 1 of 6 documents refused: {bad} (HTTP 400): "
        f"mapper_parsing_exception: failed to parse field [age_minutes] of {bad}"
    )
    assert len(cluster.documents) == 5  # the others were indexed
    assert len(cluster.bulk_requests()) == 1  # a 400 is not retried
    assert PASSWORD not in error


def test_a_wrong_password_is_a_failed_delivery_without_the_password(
    cluster: FakeOpenSearch, context: SinkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-os-password-value"
    monkeypatch.setenv("FLEETWARDEN_OS_PASSWORD", wrong)

    outcome, error = _send(_config(cluster), context)

    assert outcome == "failed"
    assert (
        error
        == f"OpenSearchError: OpenSearch {cluster.url} index aws-audits: _bulk failed: HTTP 401: security_exception"
    )
    assert cluster.documents == {}


def test_date_suffix_and_a_url_path_prefix(cluster: FakeOpenSearch, context: SinkContext) -> None:
    config = _config(cluster, url=f"{cluster.url}/search/", index_date_suffix=True)

    assert _send(config, context) == ("sent", "")

    [bulk] = cluster.bulk_requests()
    assert bulk.path.split("?")[0] == "/search/_bulk"
    assert {a["index"]["_index"] for a, _ in cluster.actions(bulk)} == {"aws-audits-2026.03"}


def test_https_with_a_private_ca(
    tls_cluster: FakeOpenSearch, tls_files: tuple[Path, Path], context: SinkContext
) -> None:
    assert _send(_config(tls_cluster, ca_certs=str(tls_files[0])), context) == ("sent", "")
    [bulk] = tls_cluster.bulk_requests()
    assert bulk.headers["authorization"] == _basic(USER, PASSWORD)
    assert len(tls_cluster.documents) == 6


def test_an_untrusted_certificate_fails_before_anything_is_sent(
    tls_cluster: FakeOpenSearch, context: SinkContext
) -> None:
    outcome, error = _send(_config(tls_cluster), context)  # the system CAs do not know the test certificate

    assert outcome == "failed"
    # The tail names the line of CPython's _ssl.c that raised, which varies with the Python build.
    assert error.startswith(
        f"OpenSearchError: OpenSearch {tls_cluster.url} index aws-audits: _bulk failed: "
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    assert tls_cluster.requests == []


def test_an_unreachable_cluster_is_a_failed_delivery(context: SinkContext) -> None:
    with refused_port() as port:  # bound, never listening: refused for the whole test
        outcome, error = _send(_config(FakeOpenSearch(url=f"http://127.0.0.1:{port}")), context)

    assert outcome == "failed"
    # The middle is urllib3's name for the connection (its wording differs between urllib3 1.x and 2.x).
    assert error.startswith(f"OpenSearchError: OpenSearch http://127.0.0.1:{port} index aws-audits: _bulk failed: ")
    assert error.endswith(f": Failed to establish a new connection: {CONNECTION_REFUSED}")


def test_aws_sigv4_signs_each_request_with_the_base_credentials() -> None:
    secret = "sigv4-secret-access-key-value"
    session = boto3.Session(aws_access_key_id="AKIDFLEETWARDEN", aws_secret_access_key=secret, region_name="eu-west-1")
    context = SinkContext(SessionFactory(run_id="test", base_session=session), SecretResolver(None))
    for fake in _serve(FakeOpenSearch()):
        config = {"type": "opensearch", "url": fake.url, "auth": {"type": "aws-sigv4", "region": "eu-west-1"}}

        assert _send(config, context) == ("sent", "")

        [bulk] = fake.bulk_requests()
        authorization = bulk.headers["authorization"]
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDFLEETWARDEN/")
        assert "/eu-west-1/es/aws4_request" in authorization
        assert "x-amz-content-sha256" in authorization.split("SignedHeaders=")[1].split(",")[0]
        assert bulk.headers["x-amz-content-sha256"] == hashlib.sha256(bulk.body).hexdigest()
        assert secret not in json.dumps(bulk.headers)
        assert len(fake.documents) == 6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "http://search.example.com:9200"}, "https://"),
        ({"url": "https://admin:secret@search.example.com"}, "no credentials in the url"),
        ({"url": "search.example.com"}, "https://"),
        ({"index": "AWS-Audits"}, "not an index name"),
        ({"index": "_audits"}, "not an index name"),
        ({"auth": {"type": "basic", "username": "u", "password": "literal-password"}}, "must be references"),
        ({"auth": {"type": "aws-sigv4", "region": "europe"}}, "not an AWS region"),
        ({"auth": {"type": "aws-sigv4", "region": "eu-west-1", "service": "s3"}}, "'es' or 'aoss'"),
        ({"auth": {"type": "kerberos"}}, "does not match any of the expected tags"),
        ({"doc_type": "aws_tag_audit"}, "Extra inputs are not permitted"),
    ],
)
def test_config_is_checked_before_any_request(changes: dict[str, Any], message: str) -> None:
    raw = {"type": "opensearch", "url": "https://search-fleet.eu-west-1.es.amazonaws.com", **changes}
    with pytest.raises(ValidationError, match=message):
        OpenSearchSinkConfig.model_validate(raw)


def test_config_defaults_and_declared_permissions() -> None:
    cfg = OpenSearchSinkConfig.model_validate({"type": "opensearch", "url": "https://search.example.com/"})
    assert (cfg.url, cfg.index, cfg.index_date_suffix, cfg.verify_certs, cfg.auth) == (
        "https://search.example.com",
        "aws-audits",
        False,
        True,
        None,
    )
    assert OpenSearchSinkConfig.model_validate({"type": "opensearch", "url": "http://localhost:9200"}).url
    assert {"es:ESHttpPost", "es:ESHttpPut", "ssm:GetParameter"} <= set(OpenSearchSink.permissions)


def test_details_are_flattened_to_stable_field_types() -> None:
    details = {
        "tags": {"Name": "web", "department": "eng"},
        "missing": ["project"],
        "invalid": {"department": "'x' is not one of eng"},
        "age_minutes": 95,
        "state": "running",
        "score": 7.5,
        "ok": False,
        "ports": [22, 3389],
        "rule": {"port": 22, "cidr": "0.0.0.0/0"},
        "nested": [{"a": 1}],
    }
    assert flatten_details(details) == {
        "tags": ["Name=web", "department=eng"],
        "missing": ["project"],
        "invalid_keys": ["department"],
        "invalid": ["department: 'x' is not one of eng"],
        "age_minutes": 95,
        "details": {
            "state": "running",
            "score": "7.5",
            "ok": "false",
            "ports": ["22", "3389"],
            "rule": ["cidr=0.0.0.0/0", "port=22"],
            "nested": ['{"a": 1}'],
        },
    }
