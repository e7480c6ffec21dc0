"""Shared fixtures: one embedded moto server per test process (127.0.0.1, free port), reset per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import AwsSettings
from fleetwarden.emulator.server import EmulatorServer

# Never let a test reach a real AWS account: fake credentials, no profiles, no instance metadata.
_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    saved = {k: os.environ.get(k) for k in _FAKE_ENV}
    os.environ.update(_FAKE_ENV)
    try:
        server = EmulatorServer().start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def aws(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """A freshly reset emulator, with AWS_ENDPOINT_URL pointing at it."""
    emulator.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
    return emulator


@pytest.fixture
def factory(aws: EmulatorServer) -> SessionFactory:
    """A session factory on the emulator with few retries, so error tests stay fast."""
    return SessionFactory(AwsSettings(endpoint_url=aws.url, max_attempts=2, max_concurrency=8), run_id="test-run")
