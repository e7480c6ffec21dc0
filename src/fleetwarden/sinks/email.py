"""Email sink: the notification as a plain-text mail, with its attachments (e.g. findings.csv), through an SMTP
relay (Amazon SES's SMTP interface, a corporate relay) with the standard library's smtplib."""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Self

from pydantic import Field, field_validator, model_validator

from ..config import SecretRef
from ..errors import FleetwardenError
from ..model import RunReport
from .base import Notification, Sink, SinkConfig, sink_registry

SUBJECT_MAX = 200  # RFC 5322 allows longer (folded) subjects; mail clients show far less


class EmailError(FleetwardenError):
    """Sending mail failed: connection, TLS, login or a refusal by the relay. Never carries the password."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): the only hosts where plain auth may go."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(value: str) -> str:
    """The bare address of `Name <addr>` or `addr`; refuse anything that is not one plain address."""
    _, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or any(c.isspace() for c in addr) or "," in value:
        raise ValueError(f"not an email address: {value!r}")
    return addr


class EmailSinkConfig(SinkConfig):
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True  # upgrade the connection with STARTTLS (submission port 587); refuse if the relay can't
    implicit_tls: bool = False  # TLS from the first byte instead (SMTPS, port 465); excludes starttls
    username: str | None = None
    password: SecretRef | None = None  # by reference: ssm:/..., secretsmanager:..., env:...
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject_prefix: str | None = None
    timeout_seconds: int = Field(default=30, ge=1, le=300)
    ca_file: str | None = None  # a PEM bundle to trust instead of the system CAs (a relay with an internal CA)
    allow_plain_auth: bool = False  # send the password without TLS: only to a loopback relay (a local test server)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        _address(value)
        return value

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        for item in value:
            _address(item)
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "://" in value or "/" in value or any(c.isspace() for c in value):
            raise ValueError(f"host is a host name or address (e.g. email-smtp.eu-west-1.amazonaws.com), got {value!r}")
        return value

    @model_validator(mode="after")
    def _security(self) -> Self:
        if self.starttls and self.implicit_tls:
            raise ValueError("choose one of starttls (port 587) and implicit_tls (port 465), not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (both for a relay that needs a login, else neither)")
        if self.allow_plain_auth and not is_loopback(self.host):
            raise ValueError(f"allow_plain_auth is only accepted for a loopback host, not {self.host!r}")
        if self.password is not None and not self.encrypted and not self.allow_plain_auth:
            raise ValueError(
                "refusing to send the SMTP password over an unencrypted connection: "
                "set starttls: true (port 587) or implicit_tls: true (port 465)"
            )
        return self

    @property
    def encrypted(self) -> bool:
        return self.starttls or self.implicit_tls


def build_message(config: EmailSinkConfig, notification: Notification, report: RunReport) -> EmailMessage:
    """The mail: subject (with the prefix), the plain-text body and each attachment with its content type."""
    subject = " ".join(notification.subject.split()) or f"fleetwarden {report.workflow}"
    if config.subject_prefix:
        subject = f"{' '.join(config.subject_prefix.split())} {subject}"
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 1].rstrip() + "…"
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = config.from_
    message["To"] = ", ".join(config.to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=_address(config.from_).rpartition("@")[2])
    message["X-Fleetwarden-Run-Id"] = report.run_id
    message.set_content(notification.text or subject)
    for attachment in notification.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        # Bytes are sent base64-encoded, so a CSV arrives byte for byte (CRLF line ends, UTF-8) whatever relays do.
        message.add_attachment(
            attachment.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename.replace("/", "_"),
        )
    return message


@sink_registry.register("email")
class EmailSink(Sink):
    """Mail the summary to a list of recipients through an SMTP relay (STARTTLS by default), with attachments."""

    type_name = "email"
    config_model = EmailSinkConfig
    # AWS permissions only: reading the SMTP password. (For Amazon SES's SMTP interface, the SMTP credentials
    # belong to an IAM user with ses:SendRawEmail; fleetwarden itself calls no SES API.)
    permissions = ("ssm:GetParameter", "secretsmanager:GetSecretValue")

    @property
    def settings(self) -> EmailSinkConfig:
        assert isinstance(self.config, EmailSinkConfig)
        return self.config

    def _tls_context(self) -> ssl.SSLContext:
        # Certificate and host name verified, TLS 1.2 or later (the default context's floor).
        return ssl.create_default_context(cafile=self.settings.ca_file)

    def send(self, notification: Notification, report: RunReport) -> None:
        cfg = self.settings
        message = build_message(cfg, notification, report)
        recipients = [_address(a) for a in cfg.to]
        # Resolve before connecting: a missing secret is a SecretError, not a half-open SMTP session.
        password = self.context.secrets.resolve(cfg.password) if cfg.password is not None else None
        if cfg.username is not None and password is not None:
            # AUTH PLAIN sends base64("\\0user\\0password"), AUTH LOGIN base64(user) then base64(password): a relay
            # that echoes either back in its refusal must not put them into the delivery error.
            self.context.secrets.protect_login(cfg.username, password)
        step = "connect"
        try:
            smtp: smtplib.SMTP
            if cfg.implicit_tls:
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self._tls_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
            with smtp:
                step = "EHLO"
                smtp.ehlo()
                if cfg.starttls:
                    step = "STARTTLS"
                    if not smtp.has_extn("starttls"):
                        # Never fall back to plain text: the relay (or something in between) stripped STARTTLS.
                        raise EmailError(self._where("the relay does not offer STARTTLS; refusing to send in clear"))
                    smtp.starttls(context=self._tls_context())
                    smtp.ehlo()
                if cfg.username is not None and password is not None:
                    step = "login"
                    if not isinstance(smtp.sock, ssl.SSLSocket) and not cfg.allow_plain_auth:
                        raise EmailError(self._where("refusing to send the password over an unencrypted connection"))
                    smtp.login(cfg.username, password)
                step = "send"
                refused = smtp.send_message(message, from_addr=_address(cfg.from_), to_addrs=recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise EmailError(self._where(f"login as {cfg.username!r} refused: {self._reply(exc)}")) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise EmailError(self._where("every recipient was refused: " + self._refusals(exc.recipients))) from None
        except smtplib.SMTPResponseException as exc:
            raise EmailError(self._where(f"{step} failed: {self._reply(exc)}")) from None
        except smtplib.SMTPException as exc:  # no AUTH offered, disconnected, sender refused without a code
            raise EmailError(self._where(f"{step} failed: {type(exc).__name__}: {self._redact(str(exc))}")) from None
        except OSError as exc:  # connection refused, DNS, timeouts, TLS errors (ssl.SSLError is an OSError)
            raise EmailError(self._where(f"{step} failed: {type(exc).__name__}: {self._redact(str(exc))}")) from None
        if refused:
            # The others got it: the delivery is failed so the user sees who did not (a retry may repeat it).
            raise EmailError(self._where("some recipients were refused: " + self._refusals(refused)))

    def _where(self, text: str) -> str:
        return f"email via {self.settings.host}:{self.settings.port}: {text}"

    def _redact(self, text: str) -> str:
        return self.context.secrets.redact(text)

    def _reply(self, exc: smtplib.SMTPResponseException) -> str:
        error = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return self._redact(f"{exc.smtp_code} {' '.join(error.split())}")

    def _refusals(self, refused: dict[str, tuple[int, bytes]]) -> str:
        parts = []
        for addr, (code, reply) in sorted(refused.items()):
            parts.append(f"{addr} ({code} {' '.join(reply.decode('utf-8', 'replace').split())})")
        return self._redact(", ".join(parts))
