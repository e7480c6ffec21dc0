"""State store backends behind one interface; `open_store` picks one from the config's `state` URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StateStore, VersionConflict

if TYPE_CHECKING:
    from ..aws.session import SessionFactory

__all__ = ["StateStore", "VersionConflict", "open_store"]


def open_store(url: str, factory: SessionFactory | None = None) -> StateStore:
    """`sqlite:///path/to/state.db` or `dynamodb://table-name?region=us-east-1`."""
    raise NotImplementedError("state backends are being written (see state/sqlite.py, state/dynamodb.py)")
