"""Where the Lambda handler reads its config from (`FLEETWARDEN_CONFIG`): a file, `s3://bucket/key` or `ssm:/name`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .config import MAX_CONFIG_BYTES, Config, decode_config, endpoint_url_problem, load_config, parse_config
from .errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from .aws.session import SessionFactory

# The config is fetched with the function's own credentials, before any config (and its aws settings) exists.
PERMISSIONS = ("s3:GetObject", "ssm:GetParameter", "kms:Decrypt")


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
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = ref[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ConfigError(ref, [ConfigProblem("", "expected s3://BUCKET/KEY")])
    try:
        s3 = _client(factory, "s3", ref)
        # Bounded: a huge object must not exhaust the function's memory (decode_config refuses what is over).
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_CONFIG_BYTES + 1)
    except ClientError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read from S3: {_client_error(exc)}")]) from None
    except BotoCoreError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read from S3: {exc}")]) from None
    return decode_config(body, ref)


def _read_ssm(ref: str, factory: SessionFactory | None) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    name = ref[len("ssm:") :]
    if name.strip("/") == "":
        raise ConfigError(ref, [ConfigProblem("", "expected ssm:/PARAMETER-NAME")])
    try:
        ssm = _client(factory, "ssm", ref)
        value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read the SSM parameter: {_client_error(exc)}")]) from None
    except BotoCoreError as exc:
        raise ConfigError(ref, [ConfigProblem("", f"cannot read the SSM parameter: {exc}")]) from None
    return str(value)


def _client_error(exc: Exception) -> str:
    from .aws.targets import error_text

    return error_text(exc)
