"""The compliance check: SSM compliance (InSpec) items that are non-compliant, one finding per item.

Findings are produced from the collected items by `fleetwarden.collect.compliance.item_finding`; this class
carries the check's metadata (registry, config model, permissions) like every other check.
"""

from __future__ import annotations

from typing import ClassVar

from ..collect.compliance import PERMISSIONS
from ..config import ComplianceConfig
from ..model import Severity
from . import Check, check_registry


@check_registry.register("compliance")
class ComplianceCheck(Check):
    """A managed instance reports a non-compliant item of a configured compliance type (e.g. Custom:InSpec)."""

    name = "compliance"
    config_model = ComplianceConfig
    default_severity = Severity.MEDIUM  # each finding takes the item's own severity
    permissions: ClassVar[tuple[str, ...]] = PERMISSIONS
    remediation = "Fix the failing control on the instance; the next scan resolves the finding."
