"""Secret references (`ssm:/path`, `secretsmanager:NAME`, `env:VAR`), resolved at use and redacted everywhere."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, quote_plus

from .errors import SecretError

if TYPE_CHECKING:
    from .aws.session import SessionFactory

REDACTED = "***"


class SecretResolver:
    """Resolves secret references once and remembers the values so logs and reports can redact them."""

    def __init__(self, factory: SessionFactory | None, region: str = "us-east-1") -> None:
        self._factory = factory
        self._region = region
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self._extra: list[str] = []  # registered with protect(): secret, but not a reference
        self._encoded_only: list[str] = []  # redacted in base64 only (an SMTP user name as AUTH LOGIN sends it)
        self._pattern: re.Pattern[str] | None = None
        self._pattern_size = (0, 0, 0)

    def resolve(self, ref: str) -> str:
        with self._lock:
            if ref in self._cache:
                return self._cache[ref]
        value = self._fetch(ref)
        with self._lock:
            self._cache[ref] = value
        return value

    def _fetch(self, ref: str) -> str:
        """The secret's value; an SSM or Secrets Manager read goes through the warm cache (a Powertools provider:
        within `FLEETWARDEN_CACHE_SECONDS`, default 300 in Lambda, a later invocation reads it from memory)."""
        if ref.startswith("env:"):
            var = ref[4:]
            if var not in os.environ:
                raise SecretError(f"secret {ref}: environment variable {var} is not set")
            return os.environ[var]
        if self._factory is None:
            raise SecretError(f"secret {ref}: no AWS session to read it with")
        if ref.startswith("ssm:"):
            value = self._cached(ref, "ssm", ref[4:])
        elif ref.startswith("secretsmanager:"):
            value = self._cached(ref, "secretsmanager", ref[len("secretsmanager:") :])
        else:
            raise SecretError(f"secret {ref}: unknown reference scheme")
        if not isinstance(value, str):
            raise SecretError(f"secret {ref} is binary (SecretBinary); fleetwarden reads text secrets (SecretString)")
        return value

    def _cached(self, ref: str, source: Literal["ssm", "secretsmanager"], name: str) -> str | bytes:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        from .config_source import SECRETS_MAX_AGE, cache_seconds, fetch_error, warm_cache
        from .errors import ConfigError

        assert self._factory is not None
        try:
            max_age = cache_seconds(SECRETS_MAX_AGE)
        except ConfigError as exc:
            raise SecretError(f"secret {ref}: {exc}") from None
        client = self._factory.client(source, region=self._region)
        try:
            return warm_cache().get(source, client, name, max_age)
        except GetParameterError as exc:
            raise SecretError(f"secret {ref} could not be read: {fetch_error(exc)}") from None

    def values(self) -> list[str]:
        """The resolved secret values (and those registered with `protect`) long enough to redact anywhere."""
        with self._lock:
            return [v for v in (*self._cache.values(), *self._extra) if len(v) >= MIN_SUBSTRING]

    @property
    def active(self) -> bool:
        """True once there is anything to redact."""
        with self._lock:
            return any(self._cache.values()) or bool(self._extra or self._encoded_only)

    def protect(self, *values: str) -> None:
        """Redact these too: secret strings that are not references, e.g. one derived from a resolved secret."""
        with self._lock:
            self._extra.extend(v for v in values if v and v not in self._extra)
            self._pattern = None

    def protect_login(self, user: str, password: str) -> None:
        """Redact what an SMTP (or HTTP basic) login puts on the wire: AUTH PLAIN's `\\0user\\0password`
        in every form, and AUTH LOGIN's base64 user name (the name itself stays readable)."""
        self.protect(password, f"\0{user}\0{password}", f"{user}:{password}")
        with self._lock:
            if user and user not in self._encoded_only:
                self._encoded_only.append(user)
                self._pattern = None

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `***`: the value itself and its encoded forms (see
        `encoded_forms`). A value shorter than 4 characters is replaced only where it stands alone (no letter
        or digit touching it), so a short secret does not blank every word that happens to contain it; one of
        only punctuation (e.g. `:`) cannot be told from the text's own and is not replaced at all."""
        pattern = self._compiled()
        return text if pattern is None else pattern.sub(REDACTED, text)

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None or self._pattern_size != self._size():
                self._pattern = _build_pattern([*self._cache.values(), *self._extra], self._encoded_only)
                self._pattern_size = self._size()
            return self._pattern if self._pattern is not _NOTHING else None

    def _size(self) -> tuple[int, int, int]:
        return (len(self._cache), len(self._extra), len(self._encoded_only))


# A value at least this long is redacted wherever it appears; shorter ones only as whole tokens.
MIN_SUBSTRING = 4
# The base64 of a secret inside a longer base64 blob (e.g. AUTH PLAIN's) is matched by the characters only the
# secret's bytes decide; shorter runs than this would match unrelated text too often to be worth it.
MIN_EMBEDDED = 6
_NOTHING = re.compile(r"(?!)")
_TOKEN_EDGE = "A-Za-z0-9"


def _base64_forms(raw: bytes) -> set[str]:
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        full = encode(raw).decode("ascii")
        forms |= {full, full.rstrip("=")}
    return forms


def _embedded_base64(raw: bytes) -> set[str]:
    """The base64 characters that `raw` alone decides at each of the three byte alignments it can have inside a
    longer encoded string (standard and URL-safe alphabets)."""
    forms = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in (0, 1, 2):
            encoded = encode(b"\0" * shift + raw).decode("ascii")
            start = -(-shift * 8 // 6)  # the first character with no bit of the filler
            end = (shift + len(raw)) * 8 // 6  # past the last character with no bit of what follows
            core = encoded[start:end]
            if len(core) >= MIN_EMBEDDED:
                forms.add(core)
    return forms


def _jinja_escape(value: str) -> str:
    # What Jinja's autoescape (markupsafe) writes into report.html: numeric entities for quotes.
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )


def encoded_forms(value: str) -> set[str]:
    """Every form of `value` that is redacted: itself, JSON-escaped (ASCII or not), percent-encoded (`quote`
    with and without `/` kept, `quote_plus`), HTML-escaped (as `html.escape` and as Jinja writes it), Python
    repr, and base64 (standard and URL-safe, with and without padding, and embedded in a longer base64 string
    at any alignment)."""
    raw = value.encode("utf-8")
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        quote_plus(value, safe=""),
        html.escape(value),
        html.escape(value, quote=False),
        _jinja_escape(value),
        repr(value)[1:-1],
    }
    forms |= _base64_forms(raw)
    forms |= _embedded_base64(raw)
    return {f for f in forms if f}


def _build_pattern(values: list[str], encoded_only: list[str]) -> re.Pattern[str]:
    anywhere: set[str] = set()
    alone: set[str] = set()
    for value in filter(None, values):
        forms = encoded_forms(value)
        if len(value) >= MIN_SUBSTRING:
            anywhere |= forms
        elif any(ch.isalnum() for ch in value):
            embedded = _embedded_base64(value.encode("utf-8"))
            anywhere |= embedded
            alone |= forms - embedded
    for value in filter(None, encoded_only):
        (anywhere if len(value) >= MIN_SUBSTRING else alone).update(_base64_forms(value.encode("utf-8")))
    alone -= anywhere
    # Longest first: where a secret's escaped form and the secret itself both match, the whole form goes.
    parts = [re.escape(f) for f in sorted(anywhere, key=len, reverse=True)]
    parts += [f"(?<![{_TOKEN_EDGE}]){re.escape(f)}(?![{_TOKEN_EDGE}])" for f in sorted(alone, key=len, reverse=True)]
    return re.compile("|".join(parts)) if parts else _NOTHING


class RedactingFilter(logging.Filter):
    """A logging filter that replaces every resolved secret value in log messages."""

    def __init__(self, resolver: SecretResolver) -> None:
        super().__init__()
        self.resolver = resolver

    def filter(self, record: logging.LogRecord) -> bool:
        if self.resolver.active:
            record.msg = self.resolver.redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                # A traceback's text is formatted later by the handler: format it now, redacted.
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.resolver.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.resolver.redact(record.stack_info)
        return True
