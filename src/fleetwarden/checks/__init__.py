"""Checks: pure functions of an inventory snapshot and the config; they never call AWS."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from ..model import Severity
from ..registry import Registry


class Check:
    """Metadata every check declares: its name, config model, severity, the permissions its inputs need."""

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    default_severity: ClassVar[Severity] = Severity.MEDIUM
    permissions: ClassVar[tuple[str, ...]] = ()
    remediation: ClassVar[str] = ""


check_registry: Registry[type[Check]] = Registry("check")


def load_checks() -> Registry[type[Check]]:
    """Import the built-in checks (registration happens at their definition site)."""
    from . import compliance, exposure, inspector, runaway, tags  # noqa: F401

    return check_registry
