"""Actions: the only code that mutates the fleet. Each one batches, journals and reports per resource."""

from __future__ import annotations

from .ec2 import Ec2Actions

__all__ = ["Ec2Actions"]
