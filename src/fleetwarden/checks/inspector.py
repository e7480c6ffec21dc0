"""The inspector check: active Amazon Inspector (v2) findings on EC2 instances, one finding per vulnerability.

Findings are produced from ListFindings by `fleetwarden.collect.inspector`; this class carries the check's
metadata (registry, config model, permissions) like every other check.
"""

from __future__ import annotations

from typing import ClassVar

from ..collect.inspector import PERMISSIONS
from ..config import WindowConfig
from ..model import Severity
from . import Check, check_registry


@check_registry.register("inspector")
class InspectorCheck(Check):
    """Amazon Inspector reports a vulnerability (or network exposure) on an instance."""

    name = "inspector"
    config_model = WindowConfig
    default_severity = Severity.MEDIUM  # each finding takes Inspector's severity
    permissions: ClassVar[tuple[str, ...]] = PERMISSIONS
    remediation = "Patch or rebuild the instance; Inspector closes the finding, and the next collection resolves it."
