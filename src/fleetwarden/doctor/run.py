"""The Doctor: runs the checks in order (config, credentials, stack, what the config points to, last runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..config import Config, load_config
from ..errors import ConfigError, CredentialsError
from .report import CheckResult, DoctorReport, Status
from .runs import DEFAULT_MAX_AGE, check_last_runs
from .stack import StackInfo, check_disabled, check_resources, check_stack
from .targets import check_associations, check_member_roles, check_sinks, check_state_table, default_region

DEFAULT_STACK = "fleetwarden-hub"


@dataclass
class DoctorOptions:
    """What to check: the config, the hub stack (name, region: None for the config's), maximum ages, the time."""

    config_path: str = "fleetwarden.yaml"
    stack_name: str = DEFAULT_STACK
    region: str | None = None
    max_age: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE))
    now: datetime | None = None


class Doctor:
    """Runs the checks in order, handing each result to `progress` as it completes."""

    def __init__(
        self,
        options: DoctorOptions,
        factory: Any = None,
        progress: Callable[[CheckResult], None] | None = None,
    ) -> None:
        self.options = options
        self.factory: Any = factory  # made in run() from the config's aws settings when None
        self.region = options.region or ""
        self.progress = progress
        self.config: Config | None = None
        self.stack: StackInfo | None = None
        self.report = DoctorReport(options.stack_name, options.region or "")

    def emit(self, check: str, status: Status, detail: str, fix: str = "") -> CheckResult:
        result = CheckResult(check, status, detail, fix)
        self.report.checks.append(result)
        if self.progress is not None:
            self.progress(result)
        return result

    def run(self) -> DoctorReport:
        from ..aws.session import SessionFactory
        from ..aws.targets import base_identity
        from ..config import AwsSettings

        self.check_config()
        if self.factory is None:
            self.factory = SessionFactory(self.config.aws if self.config else AwsSettings(), run_id="doctor")
        self.region = self.report.region = self.options.region or default_region(self.config)
        try:
            ident = base_identity(self.factory)
        except CredentialsError as exc:
            self.report.credentials_error = True
            self.emit("credentials", "problem", str(exc), "configure AWS credentials of the hub account")
            return self.report
        self.emit("credentials", "ok", f"acting as {ident['arn']} in account {ident['account_id']}")
        check_stack(self)
        if self.stack is not None:
            check_resources(self)
            check_disabled(self)
        if self.config is None:
            for name in ("state-table", "sinks", "ssm-associations", "member-roles", "last-run"):
                self.emit(name, "not-checked", "the config is invalid (see `config`)")
            return self.report
        check_state_table(self)
        check_sinks(self)
        check_associations(self)
        check_member_roles(self)
        check_last_runs(self)
        return self.report

    # -- config ------------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        try:
            self.config = load_config(self.options.config_path)
        except ConfigError as exc:
            self.report.config_error = True
            self.emit("config", "problem", str(exc), f"fix {exc.source} (`fleetwarden validate` checks it)")
            return
        cfg = self.config
        where = "organization" if cfg.organization is not None else f"{len(cfg.accounts)} listed account(s)"
        self.emit("config", "ok", f"{self.options.config_path} is valid: accounts from {where}, state {cfg.state}")


def run_doctor(
    options: DoctorOptions, factory: Any = None, progress: Callable[[CheckResult], None] | None = None
) -> DoctorReport:
    """Run every check (read-only) and return the report; see docs/doctor.md."""
    return Doctor(options, factory, progress).run()
