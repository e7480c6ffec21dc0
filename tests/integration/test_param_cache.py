"""The warm cache of the config and the secrets (Powertools Parameters, config_source.WarmCache) against the
emulator: reads counted by the emulator's own call log, values changed in SSM, S3 and Secrets Manager."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config_source import CACHE_ENV, LAMBDA_ENV, cache_seconds, load_config_from, warm_cache
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.errors import ConfigError, SecretError
from fleetwarden.secrets import SecretResolver

REGION = "us-east-1"
CONFIG_V1 = "apply: false\naccounts: [{id: '111111111111'}]\n"
CONFIG_V2 = "apply: true\naccounts: [{id: '111111111111'}]\n"


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    warm_cache().clear()
    yield
    warm_cache().clear()  # nothing cached here is seen by a later test


@pytest.fixture
def in_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAMBDA_ENV, "fleetwarden")
    monkeypatch.delenv(CACHE_ENV, raising=False)


def calls(aws: EmulatorServer, action: str) -> int:
    """How many calls of `action` the emulator served (S3 calls are named by method: `GET object`)."""
    return sum(row["count"] for row in aws.client.calls()["calls"] if row["action"] == action)


def put_ssm(factory: SessionFactory, name: str, value: str, kind: str = "String") -> None:
    ssm = factory.client("ssm", region=REGION)
    ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


def test_two_config_loads_within_max_age_read_ssm_once(
    aws: EmulatorServer, factory: SessionFactory, in_lambda: None
) -> None:
    put_ssm(factory, "/fleetwarden/config", CONFIG_V1, "SecureString")
    aws.client.reset_calls()
    first = load_config_from("ssm:/fleetwarden/config")
    put_ssm(factory, "/fleetwarden/config", CONFIG_V2, "SecureString")
    second = load_config_from("ssm:/fleetwarden/config")
    assert first.apply is False and second.apply is False  # the cached value, within the 60 s default
    assert calls(aws, "GetParameter") == 1


def test_a_changed_config_is_seen_once_max_age_has_passed(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch, in_lambda: None
) -> None:
    monkeypatch.setenv(CACHE_ENV, "1")
    put_ssm(factory, "/fleetwarden/config", CONFIG_V1)
    aws.client.reset_calls()
    assert load_config_from("ssm:/fleetwarden/config").apply is False
    put_ssm(factory, "/fleetwarden/config", CONFIG_V2)
    assert load_config_from("ssm:/fleetwarden/config").apply is False
    time.sleep(1.1)
    assert load_config_from("ssm:/fleetwarden/config").apply is True  # never cached longer than max_age
    assert calls(aws, "GetParameter") == 2


def test_the_s3_config_is_cached_and_refreshed_the_same_way(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch, in_lambda: None
) -> None:
    monkeypatch.setenv(CACHE_ENV, "1")
    s3 = factory.client("s3", region=REGION)
    s3.create_bucket(Bucket="fleetwarden-config")
    s3.put_object(Bucket="fleetwarden-config", Key="prod/fleetwarden.yaml", Body=CONFIG_V1.encode())
    aws.client.reset_calls()
    ref = "s3://fleetwarden-config/prod/fleetwarden.yaml"
    assert load_config_from(ref).apply is False
    s3.put_object(Bucket="fleetwarden-config", Key="prod/fleetwarden.yaml", Body=CONFIG_V2.encode())
    assert load_config_from(ref).apply is False
    assert calls(aws, "GET object") == 1
    time.sleep(1.1)
    assert load_config_from(ref).apply is True
    assert calls(aws, "GET object") == 2


def test_outside_lambda_every_load_reads_aws(aws: EmulatorServer, factory: SessionFactory) -> None:
    """The CLI (no AWS_LAMBDA_FUNCTION_NAME) reads the config at each load, and a value cached by a Lambda-mode
    load in the same process is not used."""
    put_ssm(factory, "/fleetwarden/config", CONFIG_V1)
    with pytest.MonkeyPatch.context() as lambda_env:
        lambda_env.setenv(LAMBDA_ENV, "fleetwarden")
        assert load_config_from("ssm:/fleetwarden/config").apply is False
    put_ssm(factory, "/fleetwarden/config", CONFIG_V2)
    aws.client.reset_calls()
    assert load_config_from("ssm:/fleetwarden/config").apply is True
    assert load_config_from("ssm:/fleetwarden/config").apply is True
    assert calls(aws, "GetParameter") == 2


def test_zero_disables_the_cache_in_lambda(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch, in_lambda: None
) -> None:
    monkeypatch.setenv(CACHE_ENV, "0")
    put_ssm(factory, "/fleetwarden/config", CONFIG_V1)
    aws.client.reset_calls()
    load_config_from("ssm:/fleetwarden/config")
    load_config_from("ssm:/fleetwarden/config")
    assert calls(aws, "GetParameter") == 2


@pytest.mark.parametrize("raw", ["-1", "sixty", "1e3", "86401", "١٢"])
def test_a_bad_cache_setting_is_a_config_error_naming_it(
    raw: str, aws: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, raw)
    with pytest.raises(ConfigError, match=CACHE_ENV):
        load_config_from("ssm:/fleetwarden/config")


def test_errors_still_name_the_aws_error(aws: EmulatorServer, in_lambda: None) -> None:
    with pytest.raises(ConfigError, match="ParameterNotFound"):
        load_config_from("ssm:/fleetwarden/missing")
    with pytest.raises(ConfigError, match="NoSuchBucket"):
        load_config_from("s3://no-such-bucket/fleetwarden.yaml")


def test_secrets_are_read_once_across_invocations_within_max_age(
    aws: EmulatorServer, factory: SessionFactory, in_lambda: None
) -> None:
    """Each invocation has a resolver of its own (a new run); the warm cache spans them (300 s by default)."""
    put_ssm(factory, "/fleetwarden/slack-token", "xoxb-ssm-token-1", "SecureString")
    sm = factory.client("secretsmanager", region=REGION)
    sm.create_secret(Name="fleetwarden/webhook", SecretString="hook-secret-1")
    aws.client.reset_calls()
    for _ in range(3):
        resolver = SecretResolver(factory, REGION)
        assert resolver.resolve("ssm:/fleetwarden/slack-token") == "xoxb-ssm-token-1"
        assert resolver.resolve("secretsmanager:fleetwarden/webhook") == "hook-secret-1"
        assert "xoxb-ssm-token-1" in resolver.values()  # still redacted, cached or not
    assert calls(aws, "GetParameter") == 1 and calls(aws, "GetSecretValue") == 1


def test_a_rotated_secret_is_seen_once_max_age_has_passed(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch, in_lambda: None
) -> None:
    monkeypatch.setenv(CACHE_ENV, "1")
    sm = factory.client("secretsmanager", region=REGION)
    sm.create_secret(Name="fleetwarden/webhook", SecretString="hook-secret-1")
    assert SecretResolver(factory, REGION).resolve("secretsmanager:fleetwarden/webhook") == "hook-secret-1"
    sm.put_secret_value(SecretId="fleetwarden/webhook", SecretString="hook-secret-2")
    assert SecretResolver(factory, REGION).resolve("secretsmanager:fleetwarden/webhook") == "hook-secret-1"
    time.sleep(1.1)
    assert SecretResolver(factory, REGION).resolve("secretsmanager:fleetwarden/webhook") == "hook-secret-2"


def test_a_missing_or_binary_secret_is_a_secret_error(
    aws: EmulatorServer, factory: SessionFactory, in_lambda: None
) -> None:
    resolver = SecretResolver(factory, REGION)
    with pytest.raises(SecretError, match="ParameterNotFound"):
        resolver.resolve("ssm:/fleetwarden/nope")
    sm = factory.client("secretsmanager", region=REGION)
    sm.create_secret(Name="fleetwarden/binary", SecretBinary=b"\x00\x01")
    with pytest.raises(SecretError, match="binary"):
        resolver.resolve("secretsmanager:fleetwarden/binary")


def test_cache_seconds_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv(LAMBDA_ENV, raising=False)
    assert cache_seconds(60) == 0
    monkeypatch.setenv(LAMBDA_ENV, "fleetwarden")
    assert cache_seconds(60) == 60 and cache_seconds(300) == 300
    monkeypatch.setenv(CACHE_ENV, "15")
    assert cache_seconds(60) == cache_seconds(300) == 15
