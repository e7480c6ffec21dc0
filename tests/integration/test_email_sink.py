"""The email sink against a real SMTP server on loopback (aiosmtpd): the message as received (subject,
recipients, body, the exact CSV bytes), STARTTLS with a verified throwaway certificate, login, implicit TLS,
and every refusal (no STARTTLS offered, untrusted certificate, wrong password, refused recipients) as a failed
Delivery that never contains the password."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from netutil import CONNECTION_REFUSED, LoopbackController, refused_port
from pydantic import ValidationError

from fleetwarden.aws.session import SessionFactory
from fleetwarden.output import findings_csv, summary_subject, summary_text
from fleetwarden.secrets import SecretResolver
from fleetwarden.sinks import Attachment, Notification, SinkContext, deliver
from fleetwarden.sinks.email import EmailSink, EmailSinkConfig
from sample_reports import make_report

USER = "fleetwarden-smtp"
PASSWORD = "smtp-Pa55word-loopback-secret"
SENDER = "FleetWarden <fleetwarden@example.com>"
RECIPIENTS = ["ops@example.com", "Security Team <security@example.com>"]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Mailbox:
    """What the loopback server saw: delivered messages and login attempts (user, password, accepted)."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # recipient addresses to answer 550
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        content = envelope.original_content or b""
        # session.ssl is set after STARTTLS; under implicit TLS the transport itself is the TLS one.
        transport = server.transport
        tls = session.ssl is not None or (transport is not None and transport.get_extra_info("ssl_object") is not None)
        with self.lock:
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content, tls, login))
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (user, password) == (USER, PASSWORD)
        with self.lock:
            self.logins.append((user, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost; the client trusts it through ca_file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetwarden test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "relay.pem", directory / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Certificate(cert_file, key_file)


Relay = Callable[..., Mailbox]


@pytest.fixture
def relay() -> Iterator[Relay]:
    """Start loopback SMTP servers with the given aiosmtpd options; all are stopped after the test."""
    controllers: list[LoopbackController] = []

    def start(**options: Any) -> Mailbox:
        mailbox = Mailbox()
        if options.pop("auth", False):
            options["authenticator"] = mailbox.authenticate
        controller = LoopbackController(mailbox, **options)
        controller.start()
        controllers.append(controller)
        mailbox.port = controller.port
        return mailbox

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()


@pytest.fixture
def context(monkeypatch: pytest.MonkeyPatch) -> SinkContext:
    monkeypatch.setenv("FLEETWARDEN_SMTP_PASSWORD", PASSWORD)
    # env: references need no AWS: the factory is never asked for a client.
    return SinkContext(SessionFactory(run_id="test"), SecretResolver(None))


def _config(mailbox: Mailbox, **changes: Any) -> dict[str, Any]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": mailbox.port,
        "username": USER,
        "password": "env:FLEETWARDEN_SMTP_PASSWORD",
        "from": SENDER,
        "to": RECIPIENTS,
        "timeout_seconds": 5,
        **changes,
    }


def _notification() -> tuple[Notification, bytes]:
    report = make_report()
    csv = findings_csv(report.findings)
    return Notification(summary_subject(report), summary_text(report), [Attachment("findings.csv", csv)]), csv


def _send(config: dict[str, Any], context: SinkContext, notification: Notification | None = None) -> tuple[str, str]:
    deliveries = deliver(["mail"], {"mail": config}, notification or _notification()[0], make_report(), context)
    assert [d.sink for d in deliveries] == ["mail"]
    return deliveries[0].outcome, deliveries[0].error or ""


def test_starttls_login_and_the_exact_message(relay: Relay, certificate: Certificate, context: SinkContext) -> None:
    mailbox = relay(tls_context=certificate.server_context(), require_starttls=True, auth=True, auth_require_tls=True)
    notification, csv = _notification()
    config = _config(mailbox, subject_prefix="[fleetwarden prod]", ca_file=str(certificate.cert_file))

    assert _send(config, context, notification) == ("sent", "")

    assert mailbox.logins == [(USER, PASSWORD, True)]
    [received] = mailbox.messages
    assert received.tls and received.login == USER
    assert received.mail_from == "fleetwarden@example.com"
    assert received.rcpt_tos == ["ops@example.com", "security@example.com"]
    message = received.message
    assert message["Subject"] == f"[fleetwarden prod] {notification.subject}"
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(RECIPIENTS)
    assert message["X-Fleetwarden-Run-Id"] == make_report().run_id
    assert message["Message-ID"].endswith("@example.com>") and message["Date"]
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n").rstrip("\n") == notification.text.rstrip("\n")
    assert "i-0new0000000000002: missing: department, project" in body.get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_filename() == "findings.csv"
    assert attachment.get_payload(decode=True) == csv  # byte for byte, CRLF line ends included
    assert PASSWORD.encode() not in received.content


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls(relay: Relay, certificate: Certificate, context: SinkContext) -> None:
    # aiosmtpd offers AUTH under implicit TLS only with auth_require_tls=False (it only counts STARTTLS as TLS).
    mailbox = relay(ssl_context=certificate.server_context(), auth=True, auth_require_tls=False)
    config = _config(mailbox, starttls=False, implicit_tls=True, ca_file=str(certificate.cert_file))

    assert _send(config, context) == ("sent", "")

    assert mailbox.logins == [(USER, PASSWORD, True)]
    assert [m.tls for m in mailbox.messages] == [True]


def test_a_refused_login_is_a_failed_delivery_without_the_password(
    relay: Relay, certificate: Certificate, context: SinkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = relay(tls_context=certificate.server_context(), require_starttls=True, auth=True)
    wrong = "wrong-Pa55word-value"
    monkeypatch.setenv("FLEETWARDEN_SMTP_PASSWORD", wrong)

    outcome, error = _send(_config(mailbox, ca_file=str(certificate.cert_file)), context)

    assert outcome == "failed"
    assert error == (
        f"EmailError: email via 127.0.0.1:{mailbox.port}: "
        "login as 'fleetwarden-smtp' refused: 535 5.7.8 Authentication credentials invalid"
    )
    # smtplib tries each mechanism both sides offer (PLAIN, then LOGIN); every attempt was refused.
    assert mailbox.logins and set(mailbox.logins) == {(USER, wrong, False)}
    assert mailbox.messages == []


def test_a_relay_without_starttls_is_refused_before_the_password_is_sent(relay: Relay, context: SinkContext) -> None:
    mailbox = relay(auth=True, auth_require_tls=False)  # no TLS at all: a misconfigured or tampered relay

    outcome, error = _send(_config(mailbox), context)

    assert outcome == "failed"
    assert error == (
        f"EmailError: email via 127.0.0.1:{mailbox.port}: the relay does not offer STARTTLS; refusing to send in clear"
    )
    assert mailbox.logins == [] and mailbox.messages == []


def test_an_untrusted_certificate_fails_the_handshake(
    relay: Relay, certificate: Certificate, context: SinkContext
) -> None:
    mailbox = relay(tls_context=certificate.server_context(), require_starttls=True, auth=True)

    outcome, error = _send(_config(mailbox), context)  # no ca_file: the system CAs do not know this certificate

    assert outcome == "failed"
    # The tail names the line of CPython's _ssl.c that raised, which varies with the Python build.
    assert error.startswith(
        f"EmailError: email via 127.0.0.1:{mailbox.port}: STARTTLS failed: SSLCertVerificationError: "
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    assert mailbox.logins == [] and mailbox.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_plain_auth_only_when_allowed_on_loopback(relay: Relay, context: SinkContext) -> None:
    mailbox = relay(auth=True, auth_require_tls=False)

    config = _config(mailbox, starttls=False, allow_plain_auth=True)
    assert _send(config, context) == ("sent", "")

    assert mailbox.logins == [(USER, PASSWORD, True)]
    assert [(m.tls, m.login) for m in mailbox.messages] == [(False, USER)]


def test_without_credentials_no_login_is_attempted(relay: Relay, context: SinkContext) -> None:
    mailbox = relay()
    config = _config(mailbox, starttls=False)
    del config["username"], config["password"]

    assert _send(config, context) == ("sent", "")

    assert mailbox.logins == []
    assert [(m.tls, m.login) for m in mailbox.messages] == [(False, None)]


def test_refused_recipients_fail_the_delivery_and_are_named(
    relay: Relay, certificate: Certificate, context: SinkContext
) -> None:
    mailbox = relay(tls_context=certificate.server_context(), auth=True)
    mailbox.refuse = {"security@example.com"}

    outcome, error = _send(_config(mailbox, ca_file=str(certificate.cert_file)), context)

    assert outcome == "failed"
    where = f"EmailError: email via 127.0.0.1:{mailbox.port}: "
    assert error == where + "some recipients were refused: security@example.com (550 5.1.1 mailbox unavailable)"
    assert [m.rcpt_tos for m in mailbox.messages] == [["ops@example.com"]]  # the others still got it

    mailbox.refuse = {"ops@example.com", "security@example.com"}
    outcome, error = _send(_config(mailbox, ca_file=str(certificate.cert_file)), context)
    assert outcome == "failed"
    assert error == where + (
        "every recipient was refused: ops@example.com (550 5.1.1 mailbox unavailable), "
        "security@example.com (550 5.1.1 mailbox unavailable)"
    )
    assert len(mailbox.messages) == 1


def test_an_unreachable_relay_is_a_failed_delivery(context: SinkContext) -> None:
    with refused_port() as port:  # bound, never listening: refused for the whole test
        outcome, error = _send(_config(Mailbox(port=port), timeout_seconds=2), context)

    assert outcome == "failed"
    assert (
        error == f"EmailError: email via 127.0.0.1:{port}: connect failed: ConnectionRefusedError: {CONNECTION_REFUSED}"
    )


def test_password_from_an_ssm_securestring(relay: Relay, certificate: Certificate, factory: SessionFactory) -> None:
    factory.client("ssm", region="us-east-1").put_parameter(
        Name="/fleetwarden/smtp-password", Value=PASSWORD, Type="SecureString"
    )
    context = SinkContext(factory, SecretResolver(factory, region="us-east-1"))
    mailbox = relay(tls_context=certificate.server_context(), require_starttls=True, auth=True)
    config = _config(mailbox, password="ssm:/fleetwarden/smtp-password", ca_file=str(certificate.cert_file))

    assert _send(config, context) == ("sent", "")
    assert mailbox.logins == [(USER, PASSWORD, True)]


def test_attachments_keep_their_content_type_and_long_subjects_are_cut(
    relay: Relay, certificate: Certificate, context: SinkContext
) -> None:
    mailbox = relay(tls_context=certificate.server_context(), auth=True)
    files = [
        Attachment("run.json", b'{"schema": "fleetwarden.run/v1"}', "application/json"),
        Attachment("resolved.csv", "id\r\né\r\n".encode()),
    ]
    notification = Notification("line one\nline two " + "x" * 400, "2 new, 1 resolved", files)

    assert _send(_config(mailbox, ca_file=str(certificate.cert_file)), context, notification) == ("sent", "")

    message = mailbox.messages[0].message
    subject = message["Subject"]
    assert subject.startswith("line one line two x") and len(subject) <= 200 and "\n" not in subject
    parts = list(message.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("run.json", "application/json"),
        ("resolved.csv", "text/csv"),
    ]
    assert [p.get_payload(decode=True) for p in parts] == [a.content for a in files]


BASE = {"type": "email", "host": "smtp.example.com", "username": USER, "password": "ssm:/fw/smtp", "from": SENDER}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"starttls": False}, "refusing to send the SMTP password over an unencrypted connection"),
        ({"starttls": False, "allow_plain_auth": True}, "only accepted for a loopback host"),
        ({"implicit_tls": True}, "not both"),
        ({"password": None}, "username and password go together"),
        ({"password": "hunter2-literal"}, "secrets must be references"),
        ({"to": ["ops"]}, "not an email address"),
        ({"to": ["a@example.com, b@example.com"]}, "not an email address"),
        ({"to": []}, "at least 1 item"),
        ({"from": "nobody"}, "not an email address"),
        ({"host": "smtp://smtp.example.com"}, "host is a host name"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"cc": ["x@example.com"]}, "Extra inputs are not permitted"),
    ],
)
def test_config_is_checked_before_any_connection(changes: dict[str, Any], message: str) -> None:
    raw = {**BASE, "to": ["ops@example.com"], **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        EmailSinkConfig.model_validate(raw)


def test_config_defaults_and_declared_permissions() -> None:
    cfg = EmailSinkConfig.model_validate({**BASE, "to": ["ops@example.com"]})
    assert (cfg.port, cfg.starttls, cfg.implicit_tls, cfg.allow_plain_auth) == (587, True, False, False)
    assert cfg.from_ == SENDER
    # Without a password, a plain connection is acceptable (nothing secret travels); STARTTLS stays the default.
    anonymous = EmailSinkConfig.model_validate({"type": "email", "host": "relay", "from": SENDER, "to": ["a@b.io"]})
    assert anonymous.starttls and anonymous.password is None
    assert EmailSinkConfig.model_validate(
        {**BASE, "to": ["a@b.io"], "host": "::1", "starttls": False, "allow_plain_auth": True}
    ).allow_plain_auth
    assert set(EmailSink.permissions) == {"ssm:GetParameter", "secretsmanager:GetSecretValue"}
