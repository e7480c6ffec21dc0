"""Fixtures shared by the integration tests (the emulator fixtures live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_fake import FakeSlack, serve_fake_slack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """A loopback Slack Web API (see slack_fake.py)."""
    with serve_fake_slack() as fake:
        yield fake
