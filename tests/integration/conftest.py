"""Fixtures shared by the integration tests (the emulator fixtures live in tests/conftest.py), and the
`integration` marker on every test under this directory, so `-m "not integration"` runs the unit tests only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_fake import FakeSlack, serve_fake_slack

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items (unit tests too): mark only the ones that live under here.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """A loopback Slack Web API (see slack_fake.py)."""
    with serve_fake_slack() as fake:
        yield fake
