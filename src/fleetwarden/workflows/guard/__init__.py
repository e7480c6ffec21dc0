"""The runaway guard: a kill switch on instance count and spend, with a reversible lockout and exact release."""

from __future__ import annotations

from .release import ReleaseOptions, guard_status, release_guard
from .run import GuardOptions, run_guard
from .state import TripState

__all__ = ["GuardOptions", "ReleaseOptions", "TripState", "guard_status", "release_guard", "run_guard"]
