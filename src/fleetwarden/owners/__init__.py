"""Owners: who each instance finding belongs to (resolve.py) and the daily digest each owner gets (notify.py)."""

from __future__ import annotations

from .resolve import KIND, UNKNOWN, OwnerResolver, OwnerStats, cache_key

__all__ = ["KIND", "UNKNOWN", "OwnerResolver", "OwnerStats", "cache_key"]
