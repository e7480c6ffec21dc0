"""Doctor's results: one line per check, and the exit code they add up to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE

Status = Literal["ok", "warning", "problem", "not-checked"]
STATUSES: tuple[str, ...] = ("ok", "warning", "problem", "not-checked")
SCHEMA = "fleetwarden.doctor/v1"


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `check` is a stable name (`resource:StateTable`, `member-role:111111111111`)."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    """Every check's result, in the order they ran, and the exit code they add up to."""

    stack_name: str
    region: str
    checks: list[CheckResult] = field(default_factory=list)
    config_error: bool = False
    credentials_error: bool = False

    @property
    def exit_code(self) -> int:
        """2 when the config or the credentials cannot be used, 3 when any check found a problem, else 0
        (warnings do not fail)."""
        if self.config_error or self.credentials_error:
            return EXIT_USAGE
        return EXIT_FINDINGS if self.problems else EXIT_OK

    @property
    def problems(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "problem"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "stack_name": self.stack_name,
            "region": self.region,
            "exit_code": self.exit_code,
            "summary": {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES},
            "checks": [c.to_dict() for c in self.checks],
        }


def format_line(result: CheckResult) -> str:
    mark = {"ok": "ok     ", "warning": "WARNING", "problem": "PROBLEM", "not-checked": "-      "}[result.status]
    line = f"{mark} {result.check}: {result.detail}"
    return f"{line}\n        fix: {result.fix}" if result.fix and result.status != "ok" else line
