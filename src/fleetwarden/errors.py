"""Errors that carry the exit code DESIGN.md assigns to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_FINDINGS = 3
EXIT_PARTIAL = 4
EXIT_REFUSED = 5


class FleetwardenError(Exception):
    """Base for errors the tool reports to the user with a clear message and an exit code."""

    exit_code = EXIT_UNEXPECTED


class UsageError(FleetwardenError):
    """Bad command-line usage: nothing was done."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where (a dotted key path) and what was expected."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class ConfigError(FleetwardenError):
    """The config file is missing, unreadable or invalid. No AWS call has been made."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            # One problem is one line: the file, the key path and what was expected.
            super().__init__(f"invalid config {source}: {self.problems[0]}")
            return
        lines = [f"invalid config {source}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CredentialsError(FleetwardenError):
    """The base credentials cannot be used (none, expired, STS unreachable, Organizations refused): nothing was
    done."""

    exit_code = EXIT_USAGE


class SafetyRefusal(FleetwardenError):
    """A safety rule refused the run (blast radius, missing confirmation, lock held). Nothing was done."""

    exit_code = EXIT_REFUSED


class SecretError(FleetwardenError):
    """A secret reference could not be resolved."""

    exit_code = EXIT_USAGE


class StateError(FleetwardenError):
    """The state store could not be opened or written."""

    exit_code = EXIT_UNEXPECTED
