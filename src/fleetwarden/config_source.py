"""Where the Lambda handler reads its config from (`FLEETWARDEN_CONFIG`): a file, `s3://bucket/key` or `ssm:/name`.

S3 and SSM reads (and the secrets' reads, fleetwarden.secrets) go through Powertools' Parameters providers, whose
cache outlives one invocation of a warm Lambda container: at most one read per `FLEETWARDEN_CACHE_SECONDS` (see
`cache_seconds` and docs/observability.md, "Caching").
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Literal

from .config import MAX_CONFIG_BYTES, Config, decode_config, endpoint_url_problem, load_config, parse_config
from .errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from .aws.session import SessionFactory

# The config is fetched with the function's own credentials, before any config (and its aws settings) exists.
PERMISSIONS = ("s3:GetObject", "ssm:GetParameter", "kms:Decrypt")

CACHE_ENV = "FLEETWARDEN_CACHE_SECONDS"
# The default max ages in Lambda: a config change takes effect within a minute; a rotated secret within five.
CONFIG_MAX_AGE = 60
SECRETS_MAX_AGE = 300
MAX_CACHE_SECONDS = 86_400
# Set by the Lambda runtime: the cache is on by default there only (see `cache_seconds`).
LAMBDA_ENV = "AWS_LAMBDA_FUNCTION_NAME"
Source = Literal["ssm", "secretsmanager", "s3"]


def cache_seconds(default: int) -> int:
    """How long a fetched config or secret may be reused: `FLEETWARDEN_CACHE_SECONDS` when set (0: never), else
    `default` in Lambda and 0 elsewhere. A CLI run is one process per run, where a cache would only make a
    long-lived embedding of the API read stale values; a warm Lambda container runs many invocations."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if not raw:
        return default if os.environ.get(LAMBDA_ENV) else 0
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_CACHE_SECONDS:
        problem = f"expected a whole number of seconds from 0 (no cache) to {MAX_CACHE_SECONDS}, got {raw[:20]!r}"
        raise ConfigError(CACHE_ENV, [ConfigProblem("", problem)])
    return int(raw)


def _s3_provider_class() -> type[Any]:
    """A Powertools provider for S3 objects (Powertools has SSM, Secrets Manager, AppConfig and DynamoDB ones, not
    S3), on Powertools' `BaseProvider`, so it shares the providers' cache and expiry. The name is `BUCKET/KEY`.

    No ETag check: a conditional GET (IfNoneMatch) would still be one call per invocation, which is what the
    cache saves; a change is seen within the max age, as with SSM."""
    from aws_lambda_powertools.utilities.parameters.base import BaseProvider

    class _S3ObjectProvider(BaseProvider):
        def __init__(self, client: Any) -> None:
            super().__init__(client=client)  # type: ignore[no-untyped-call]
            self.client = client

        def _get(self, name: str, **sdk_options: Any) -> bytes:
            bucket, _, key = name.partition("/")
            # Bounded: a huge object must not exhaust the function's memory (decode_config refuses what is over).
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_CONFIG_BYTES + 1)
            return body

        def _get_multiple(self, path: str, **sdk_options: Any) -> dict[str, str]:
            raise NotImplementedError("one S3 object at a time")

    return _S3ObjectProvider


class WarmCache:
    """Powertools parameter providers that outlive one invocation, so that their caches do (a warm container).

    One provider per (source, region, endpoint): the cache key of a Powertools provider is the name alone. Each
    read hands the provider the caller's client (made by fleetwarden's SessionFactory: its credentials, retries
    and endpoint), so a cache miss is fetched exactly as an uncached read would be. Process-wide by necessity (as
    Powertools' own default providers are); `clear()` empties it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._providers: dict[tuple[str, str, str], Any] = {}

    def get(self, source: Source, client: Any, name: str, max_age: int) -> str | bytes:
        """The value of `name` (an SSM parameter, decrypted; a secret; `BUCKET/KEY`), from the cache when it was
        fetched less than `max_age` seconds ago (0: always fetched, and not kept). Raises Powertools'
        GetParameterError, whose `__context__` is the AWS error."""
        key = (source, str(client.meta.region_name), str(client.meta.endpoint_url))
        with self._lock:  # a provider's store is a plain dict; reads of config and secrets are few
            provider = self._providers.get(key)
            if provider is None:
                provider = self._providers[key] = _new_provider(source, client)
            provider.client = client
            # max_age 0 must also skip a value an earlier caller cached with a longer max age.
            options: dict[str, Any] = {"max_age": max_age, "force_fetch": max_age <= 0}
            if source == "ssm":
                options["decrypt"] = True
            value = provider.get(name, **options)
        if not isinstance(value, str | bytes):
            raise TypeError(f"{source} {name}: unexpected value type {type(value).__name__}")
        return value

    def clear(self) -> None:
        with self._lock:
            self._providers.clear()


def _new_provider(source: Source, client: Any) -> Any:
    if source == "ssm":
        from aws_lambda_powertools.utilities.parameters import SSMProvider

        return SSMProvider(boto3_client=client)
    if source == "secretsmanager":
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        return SecretsProvider(boto3_client=client)
    return _s3_provider_class()(client)


_WARM = WarmCache()


def warm_cache() -> WarmCache:
    """The process's cache of fetched configs and secrets (creating it costs nothing: no import, no client)."""
    return _WARM


def fetch_error(exc: BaseException) -> str:
    """One line for a failed provider read: the AWS error it wraps (error code and message), else its text."""
    from botocore.exceptions import BotoCoreError, ClientError

    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, ClientError):
        return _client_error(cause)
    if isinstance(cause, BotoCoreError):
        return str(cause)
    return str(exc)


def default_region() -> str:
    """The region for S3 and SSM config fetches: the function's own region (Lambda sets AWS_REGION)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def load_config_from(ref: str, factory: SessionFactory | None = None) -> Config:
    """Read and validate the config named by `ref`; any failure is a ConfigError naming `ref` (exit 2).

    `ref` is a local path (`file://` optional), `s3://bucket/key` (GetObject) or `ssm:/name` (GetParameter with
    decryption, so a SecureString works). `factory` makes the S3/SSM client; None means a default SessionFactory
    (current credentials, `AWS_ENDPOINT_URL` honoured).
    """
    ref = ref.strip()
    if not ref:
        raise ConfigError("FLEETWARDEN_CONFIG", [ConfigProblem("", "empty config reference")])
    if ref.startswith("s3://"):
        return parse_config(_read_s3(ref, factory), ref)
    if ref.startswith("ssm:"):
        return parse_config(_read_ssm(ref, factory), ref)
    if "://" in ref and not ref.startswith("file://"):
        scheme = ref.split("://", 1)[0]
        raise ConfigError(ref, [ConfigProblem("", f"unsupported scheme {scheme}://; use a path, s3:// or ssm:/")])
    return load_config(ref.removeprefix("file://"))


def _factory(factory: SessionFactory | None) -> SessionFactory:
    if factory is not None:
        return factory
    from .aws.session import SessionFactory

    return SessionFactory()


def _client(factory: SessionFactory | None, service: str, ref: str) -> Any:
    """The client for the config fetch; an invalid endpoint override is a config error, not botocore's ValueError.

    The config's own `aws.endpoint_url` is not known yet here, so AWS_ENDPOINT_URL is what a default factory uses."""
    if factory is None:
        url = os.environ.get("AWS_ENDPOINT_URL")
        problem = endpoint_url_problem(url) if url else None
        if problem is not None:
            raise ConfigError(ref, [ConfigProblem("AWS_ENDPOINT_URL", problem)])
    try:
        return _factory(factory).client(service, region=default_region())
    except ValueError:  # botocore's "Invalid endpoint: URL" (e.g. AWS_ENDPOINT_URL_S3); the URL is not echoed
        problem = f"an endpoint override for {service} is not a valid URL (AWS_ENDPOINT_URL_{service.upper()}?)"
        raise ConfigError(ref, [ConfigProblem("", problem)]) from None


def _read_s3(ref: str, factory: SessionFactory | None) -> str:
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    bucket, _, key = ref[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ConfigError(ref, [ConfigProblem("", "expected s3://BUCKET/KEY")])
    max_age = cache_seconds(CONFIG_MAX_AGE)
    s3 = _client(factory, "s3", ref)
    try:
        body = warm_cache().get("s3", s3, f"{bucket}/{key}", max_age)
    except GetParameterError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read from S3: {fetch_error(exc)}")]) from None
    return decode_config(body if isinstance(body, bytes) else body.encode("utf-8"), ref)


def _read_ssm(ref: str, factory: SessionFactory | None) -> str:
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    name = ref[len("ssm:") :]
    if name.strip("/") == "":
        raise ConfigError(ref, [ConfigProblem("", "expected ssm:/PARAMETER-NAME")])
    max_age = cache_seconds(CONFIG_MAX_AGE)
    ssm = _client(factory, "ssm", ref)
    try:
        value = warm_cache().get("ssm", ssm, name, max_age)
    except GetParameterError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read the SSM parameter: {fetch_error(exc)}")]) from None
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _client_error(exc: Exception) -> str:
    from .aws.targets import error_text

    return error_text(exc)
