"""Hostile data end to end (issue 8, defects 6 and 12a): compliance items whose ids and titles are spreadsheet
formulas, seeded in the emulator, arrive neutralised in every CSV (the bytes Slack received, the S3 object, the
mail attachment, the files in --output-dir); an SMTP relay that echoes the base64 credentials back leaves no form
of the password in run.json, report.html or the logs; mrkdwn in a value cannot mention or link in Slack."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from fleet import ACCOUNTS, cli, launch, role
from netutil import LoopbackController
from slack_fake import CHANNEL, FakeSlack

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.secrets import REDACTED

pytestmark = pytest.mark.integration

A = ACCOUNTS[0]
REGION = "us-east-1"
SLACK_TOKEN_ENV = "FLEETWARDEN_SLACK_TOKEN"
SMTP_PASSWORD_ENV = "FLEETWARDEN_SMTP_PASSWORD"
SMTP_USER = "fleet-user"
# '/' and '+' make the URL-safe base64 differ from the standard one; the length leaves padding; '"', ' ', '&'
# make the JSON, percent and HTML forms differ from the password itself.
SMTP_PASSWORD = 'Sm?p/Pa55+wd "q" &z~~!'
# (item id, title): every cell trigger OWASP names, in ids and in titles.
# What a spreadsheet reads as the start of a formula (OWASP), with the full-width forms.
TRIGGERS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
HOSTILE_ITEMS = [
    ('=HYPERLINK("http://x","y")', '=HYPERLINK("http://x","y")'),
    ("@SUM(A1)", "@SUM(A1)"),
    ("+1", "+1"),
    ("-2+3", "-2+3"),
    ("\t=1", "\t=1"),
    ("\r=1", "\r=1"),
    ("plain-id", "\uff1dSUM(A1)"),
]


# -- a loopback SMTP relay ----------------------------------------------------------------------------------
@dataclass
class Relay:
    """What the relay saw; with `echo`, it refuses every login and echoes the credentials back, encoded."""

    echo: bool = False
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        parsed = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append(parsed)
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login, auth_data.password
        with self.lock:
            self.logins.append((user.decode(), password.decode()))
        # A hostile (or merely chatty) relay: what it received, in the encodings a client sends or logs.
        echoed = " ".join(
            [
                base64.b64encode(b"\0" + user + b"\0" + password).decode(),  # AUTH PLAIN
                base64.b64encode(user).decode(),  # AUTH LOGIN, the user line
                base64.b64encode(password).decode(),  # AUTH LOGIN, the password line
                base64.urlsafe_b64encode(password).decode().rstrip("="),
                quote_plus(password.decode()),
                quote(password.decode(), safe=""),
                json.dumps(password.decode()),
            ]
        )
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 Authentication failed for {echoed}")


@pytest.fixture
def relay() -> Iterator[Callable[..., Relay]]:
    controllers: list[LoopbackController] = []

    def start(echo: bool = False) -> Relay:
        box = Relay(echo=echo)
        options: dict[str, Any] = {}
        if echo:
            options = {"authenticator": box.authenticate, "auth_require_tls": False}
        controller = LoopbackController(box, **options)
        controller.start()
        controllers.append(controller)
        box.port = controller.port
        return box

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()


def _mail_sink(box: Relay, login: bool = False) -> dict[str, Any]:
    sink: dict[str, Any] = {
        "type": "email",
        "host": "127.0.0.1",
        "port": box.port,
        "starttls": False,
        "from": "fleetwarden@example.com",
        "to": ["ops@example.com"],
        "timeout_seconds": 5,
    }
    if login:
        sink |= {"username": SMTP_USER, "password": f"env:{SMTP_PASSWORD_ENV}", "allow_plain_auth": True}
    return sink


def _config(tmp_path: Path, endpoint: str, sinks: dict[str, Any], **compliance: Any) -> Path:
    data: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint, "max_attempts": 2, "max_concurrency": 4},
        "accounts": [{"id": A, "role_arn": role(A)}],
        "regions": [REGION],
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "sinks": sinks,
    }
    if compliance:
        data["compliance"] = compliance
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def formula_cells(data: bytes) -> list[str]:
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    return [c for row in rows for c in row if c[:1] in TRIGGERS or c.lstrip()[:1] in TRIGGERS]


def column(data: bytes, name: str) -> list[str]:
    return sorted(r[name] for r in csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


# -- defect 6: CSV formula injection --------------------------------------------------------------------------
@pytest.fixture
def hostile_compliance(factory: SessionFactory) -> str:
    """One instance whose InSpec results (reported through PutComplianceItems, as any instance role can) carry
    formulas in their ids and titles."""
    instance = launch(factory, A, REGION, {})[0]
    factory.client("ssm", region=REGION, account_id=A).put_compliance_items(
        ResourceId=instance,
        ResourceType="ManagedInstance",
        ComplianceType="Custom:InSpec",
        ExecutionSummary={"ExecutionTime": datetime.now(UTC), "ExecutionId": "exec-1", "ExecutionType": "Command"},
        Items=[
            {"Id": item_id, "Title": title, "Severity": "HIGH", "Status": "NON_COMPLIANT", "Details": {}}
            for item_id, title in HOSTILE_ITEMS
        ],
        UploadType="COMPLETE",
    )
    return instance


def test_formula_cells_are_neutralised_in_every_csv_sent_or_written(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    slack: FakeSlack,
    relay: Callable[..., Relay],
    hostile_compliance: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SLACK_TOKEN_ENV, slack.token)
    factory.client("s3", region=REGION).create_bucket(Bucket="fw-reports")
    box = relay()
    sinks = {
        "chat": {
            "type": "slack",
            "channel": CHANNEL,
            "token": f"env:{SLACK_TOKEN_ENV}",
            "api_url": f"{slack.url}/api/",
        },
        "mail": _mail_sink(box),
        "reports": {"type": "s3", "bucket": "fw-reports", "prefix": "fleetwarden"},
    }
    path = _config(tmp_path, aws.url, sinks, notify=["chat", "mail"], report_sink="reports")
    expected_ids = sorted("'" + item_id if item_id != "plain-id" else item_id for item_id, _ in HOSTILE_ITEMS)
    expected_titles = sorted("'" + title for _, title in HOSTILE_ITEMS)

    synced = cli("--config", str(path), "--json", "compliance", "sync", "--apply")
    assert synced.exit_code == 0, synced.stderr
    assert synced.report["summary"]["new"] == len(HOSTILE_ITEMS)
    [(_, sync_slack)] = slack.uploads.items()
    [sync_mail] = [m for m in box.messages]
    [part] = list(sync_mail.iter_attachments())
    sync_attachment = part.get_payload(decode=True)
    assert isinstance(sync_attachment, bytes)
    assert sync_attachment == sync_slack  # the same file went to both

    out = tmp_path / "out"
    reported = cli("--config", str(path), "--json", "--output-dir", str(out), "compliance", "report", "--apply")
    assert reported.exit_code == 0, reported.stderr
    url = reported.report["summary"]["csv_url"]
    stored = factory.client("s3", region=REGION).get_object(Bucket="fw-reports", Key=url.split("/", 3)[3])
    s3_csv = stored["Body"].read()
    [local_compliance] = list(out.glob("compliance-*.csv"))
    report_mail = box.messages[-1]
    [report_part] = list(report_mail.iter_attachments())
    report_attachment = report_part.get_payload(decode=True)
    assert isinstance(report_attachment, bytes)

    listed = cli("--config", str(path), "--json", "--output-dir", str(tmp_path / "all"), "report")
    assert listed.exit_code == 0, listed.stderr
    findings_csv = (tmp_path / "all" / "findings.csv").read_bytes()

    compliance_files = {
        "slack (sync)": sync_slack,
        "email (sync)": sync_attachment,
        "s3 (report)": s3_csv,
        "email (report)": report_attachment,
        "output dir (report)": local_compliance.read_bytes(),
    }
    for where, data in compliance_files.items():
        assert formula_cells(data) == [], where
        assert column(data, "item_id") == expected_ids, where
        assert column(data, "title") == expected_titles, where
    assert formula_cells(findings_csv) == []
    assert column(findings_csv, "title") == expected_titles


# -- defect 12a: encoded secrets --------------------------------------------------------------------------------
def _password_forms() -> dict[str, str]:
    raw = SMTP_PASSWORD.encode()
    forms = {
        "raw": SMTP_PASSWORD,
        "json": json.dumps(SMTP_PASSWORD)[1:-1],
        "html": html.escape(SMTP_PASSWORD),
        "html (jinja)": SMTP_PASSWORD.replace("&", "&amp;").replace('"', "&#34;"),
        "quote": quote(SMTP_PASSWORD, safe=""),
        "quote_plus": quote_plus(SMTP_PASSWORD),
        "plain": base64.b64encode(b"\0" + SMTP_USER.encode() + b"\0" + raw).decode(),
    }
    for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
        forms[name] = encode(raw).decode()
        forms[f"{name} unpadded"] = encode(raw).decode().rstrip("=")
    return forms


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_credentials_echoed_by_the_relay_reach_no_output(
    aws: EmulatorServer, tmp_path: Path, relay: Callable[..., Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SMTP_PASSWORD_ENV, SMTP_PASSWORD)
    box = relay(echo=True)
    path = _config(tmp_path, aws.url, {"mail": _mail_sink(box, login=True)})
    out = tmp_path / "out"

    result = cli("--config", str(path), "-vv", "--json", "--output-dir", str(out), "report", "--sink", "mail")

    assert result.exit_code == 4, result.stderr  # a failed delivery
    assert box.logins and set(box.logins) == {(SMTP_USER, SMTP_PASSWORD)}  # the relay really got (and echoed) it
    [delivery] = result.report["deliveries"]
    assert delivery["outcome"] == "failed"
    assert f"login as '{SMTP_USER}' refused: 535 5.7.8 Authentication failed for {REDACTED}" in delivery["error"]
    run_json = (out / "run.json").read_text("utf-8")
    report_html = (out / "report.html").read_text("utf-8")
    logs = result.stderr
    assert "delivery to sink mail failed" in logs and REDACTED in logs
    assert REDACTED in run_json and REDACTED in report_html
    for where, text in {
        "run.json": run_json,
        "report.html": report_html,
        "logs": logs,
        "stdout": result.stdout,
    }.items():
        leaked = [name for name, form in _password_forms().items() if form in text]
        assert leaked == [], f"{where} holds the password as {leaked}"


# -- Slack mrkdwn from untrusted values ---------------------------------------------------------------------------
def test_item_titles_cannot_mention_or_link_in_slack(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLACK_TOKEN_ENV, slack.token)
    instance = launch(factory, A, REGION, {})[0]
    title = "<!channel> <https://evil.example|click> ``` @here *bold* & done"
    factory.client("ssm", region=REGION, account_id=A).put_compliance_items(
        ResourceId=instance,
        ResourceType="ManagedInstance",
        ComplianceType="Custom:InSpec",
        ExecutionSummary={"ExecutionTime": datetime.now(UTC)},
        Items=[{"Id": "c-1", "Title": title, "Severity": "HIGH", "Status": "NON_COMPLIANT", "Details": {}}],
        UploadType="COMPLETE",
    )
    sinks = {
        "chat": {"type": "slack", "channel": CHANNEL, "token": f"env:{SLACK_TOKEN_ENV}", "api_url": f"{slack.url}/api/"}
    }
    path = _config(tmp_path, aws.url, sinks, notify=["chat"])

    assert cli("--config", str(path), "--json", "compliance", "sync", "--apply").exit_code == 0

    [post] = slack.calls("chat.postMessage")
    blocks = post.params["blocks"]
    sections = [b["text"] for b in blocks if b["type"] == "section"]
    text = "\n".join(s["text"] for s in sections)
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt;" in text and "&amp; done" in text
    assert "<!channel>" not in json.dumps(post.params) and "<https://" not in json.dumps(post.params)
    # verbatim: Slack does not turn @here or bare URLs into mentions or links
    assert all(s["verbatim"] is True for s in sections)
    assert all(e["verbatim"] is True for b in blocks if b["type"] == "context" for e in b["elements"])
    # The title's ``` cannot close the code block it is shown in: each section has exactly its own two fences.
    assert all(s["text"].count("```") == 2 and s["text"].startswith("```") for s in sections)
