"""Secret references (`ssm:/path`, `secretsmanager:NAME`, `env:VAR`), resolved at use and redacted everywhere."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

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

    def resolve(self, ref: str) -> str:
        with self._lock:
            if ref in self._cache:
                return self._cache[ref]
        value = self._fetch(ref)
        with self._lock:
            self._cache[ref] = value
        return value

    def _fetch(self, ref: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        if ref.startswith("env:"):
            var = ref[4:]
            if var not in os.environ:
                raise SecretError(f"secret {ref}: environment variable {var} is not set")
            return os.environ[var]
        if self._factory is None:
            raise SecretError(f"secret {ref}: no AWS session to read it with")
        try:
            if ref.startswith("ssm:"):
                ssm = self._factory.client("ssm", region=self._region)
                return str(ssm.get_parameter(Name=ref[4:], WithDecryption=True)["Parameter"]["Value"])
            if ref.startswith("secretsmanager:"):
                sm = self._factory.client("secretsmanager", region=self._region)
                return str(sm.get_secret_value(SecretId=ref[len("secretsmanager:") :])["SecretString"])
        except (ClientError, BotoCoreError) as exc:
            raise SecretError(f"secret {ref} could not be read: {exc}") from None
        raise SecretError(f"secret {ref}: unknown reference scheme")

    def values(self) -> list[str]:
        with self._lock:
            return [v for v in self._cache.values() if len(v) >= 4]

    def redact(self, text: str) -> str:
        for value in self.values():
            text = text.replace(value, REDACTED)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that replaces every resolved secret value in log messages."""

    def __init__(self, resolver: SecretResolver) -> None:
        super().__init__()
        self.resolver = resolver

    def filter(self, record: logging.LogRecord) -> bool:
        if self.resolver.values():
            record.msg = self.resolver.redact(record.getMessage())
            record.args = None
        return True
