"""The `--json` output of every command, as versioned models: one schema per output, generated from these models
(and the RunReport's), published under docs/schemas/ and checked by the tests (docs/cli.md "JSON output").

Each document carries its schema id in `schema` (`fleetwarden.<name>/v<N>`). A field may be added within a
version; renaming or removing one, or changing its meaning, makes a new version.

`python -m fleetwarden.outputs DIR` writes the schema files (`make schemas` does it for docs/schemas).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .model import RUN_SCHEMA, ExceptionKind, RunReport

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def dump(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class ValidateOutput(_Output):
    """`fleetwarden validate --json`."""

    schema_id: Literal["fleetwarden.validate/v1"] = Field("fleetwarden.validate/v1", alias="schema")
    config: str
    valid: bool
    accounts: int = Field(description="accounts listed in the config (the organization's are found at run time)")
    organization: bool
    regions: list[str] | Literal["all"]
    sinks: list[str]
    audit_action: Literal["report", "stop", "terminate"]


class TripStateOutput(BaseModel):
    """One account's guard state."""

    model_config = ConfigDict(extra="forbid")

    account_id: str
    tripped: bool
    since: str | None = None
    run_id: str | None = None
    scope: str = Field("account", description="account | org")
    triggers: list[dict[str, Any]] = Field(default_factory=list)
    lockout_done: bool = False
    released_at: str | None = None
    released_by: str | None = None
    releasing: str | None = Field(None, description="run id of a release that started and did not finish")
    notified: bool = True


class GuardStatusOutput(_Output):
    """`fleetwarden guard status --json`."""

    schema_id: Literal["fleetwarden.guard-status/v1"] = Field("fleetwarden.guard-status/v1", alias="schema")
    accounts: list[TripStateOutput]


class WindowInstanceOutput(BaseModel):
    """One instance a scan window started (or tried to)."""

    model_config = ConfigDict(extra="forbid")

    window_id: str
    account_id: str
    region: str
    instance_id: str
    prior_state: str
    start: str = Field(description="planned (with what the journal knows) | done | failed | not-started")
    start_error: str | None = None
    stop: str | None = Field(None, description="done | failed | skipped")
    stop_reason: str | None = None
    final_state: str | None = None


class WindowCoverageOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scanned: list[str]
    pending: list[str]
    errors: dict[str, str] = Field(description='"account/region" -> error')


class WindowOutput(BaseModel):
    """One scan window and its instances."""

    model_config = ConfigDict(extra="forbid")

    window_id: str
    status: str = Field(description="opening | open | closed")
    opened_at: str
    run_id: str
    targets: list[list[str]] = Field(description="[[account, region], ...]")
    closed_at: str | None = None
    closed_by: str | None = None
    instances: list[WindowInstanceOutput]
    coverage: WindowCoverageOutput | None = None
    complete: bool | None = None
    timed_out: bool | None = None


class WindowStatusOutput(_Output):
    """`fleetwarden window status --json`."""

    schema_id: Literal["fleetwarden.window-status/v1"] = Field("fleetwarden.window-status/v1", alias="schema")
    windows: list[WindowOutput]
    complete: bool


class ExceptionOutput(BaseModel):
    """One exception as `exceptions list` and `exceptions add` show it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: ExceptionKind
    account_id: str | None = None
    region: str | None = None
    resource_id: str | None = None
    check: str | None = None
    item: str | None = None
    organization_wide: bool | None = None
    reason: str
    owner: str
    created_at: datetime
    expires_at: datetime | None = None
    source: str = Field(description="store, or the config entry it comes from (config exceptions[N])")
    active: bool
    covers: str | None = Field(None, description="what a broad exception covers (an account, the organization)")
    legacy_unscoped: bool


class ExceptionsListOutput(_Output):
    """`fleetwarden exceptions list --json`."""

    schema_id: Literal["fleetwarden.exceptions/v1"] = Field("fleetwarden.exceptions/v1", alias="schema")
    exceptions: list[ExceptionOutput]


class ExceptionAddedOutput(_Output):
    """`fleetwarden exceptions add --json`."""

    schema_id: Literal["fleetwarden.exception-added/v1"] = Field("fleetwarden.exception-added/v1", alias="schema")
    exception: ExceptionOutput


class DoctorCheckOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: str
    status: Literal["ok", "warning", "problem", "not-checked"]
    detail: str
    fix: str


class DoctorOutput(_Output):
    """`fleetwarden doctor --json` (built by fleetwarden.doctor.report.DoctorReport.to_dict)."""

    schema_id: Literal["fleetwarden.doctor/v1"] = Field("fleetwarden.doctor/v1", alias="schema")
    stack_name: str
    region: str
    exit_code: int
    summary: dict[str, int]
    checks: list[DoctorCheckOutput]


class SpendPeriodOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: date
    end: date = Field(description="exclusive, as Cost Explorer's End")
    days: int


class SpendServiceOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str
    usd: Decimal
    previous_usd: Decimal


class SpendDayOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: date
    usd: Decimal


class SpendAccountOutput(BaseModel):
    """One account's month so far."""

    model_config = ConfigDict(extra="forbid")

    account_id: str
    name: str | None = None
    usd: Decimal
    previous_usd: Decimal
    change_usd: Decimal
    run_rate_usd: Decimal = Field(description="annualised: usd / period days x 365")
    recorded: bool = Field(description="false when the cost data has no line for this account")
    by_service: list[SpendServiceOutput]
    by_day: list[SpendDayOutput]


class SpendChangeOutput(BaseModel):
    """One account and service whose cost moved most against the previous period."""

    model_config = ConfigDict(extra="forbid")

    account_id: str
    name: str | None = None
    service: str
    usd: Decimal
    previous_usd: Decimal
    change_usd: Decimal
    change_pct: Decimal | None = Field(
        None, description="null when the previous period had no cost (new) or a credit (negative)"
    )


class SpendOtherOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: int
    usd: Decimal
    previous_usd: Decimal


class SpendReportOutput(_Output):
    """The spend report: `summary.spend` of a `spend-report` run (`spend report --json` prints the RunReport)."""

    schema_id: Literal["fleetwarden.spend-report/v1"] = Field("fleetwarden.spend-report/v1", alias="schema")
    as_of: date = Field(description="the report covers the days before this one (UTC)")
    source: str
    currency: Literal["USD"] = "USD"
    period: SpendPeriodOutput
    previous_period: SpendPeriodOutput
    total_usd: Decimal
    previous_total_usd: Decimal
    change_usd: Decimal
    run_rate_usd: Decimal = Field(description="annualised: total_usd / period days x 365")
    accounts: list[SpendAccountOutput]
    changes: list[SpendChangeOutput] = Field(description="largest changes first, at most spend_report.top_changes")
    other_accounts: SpendOtherOutput | None = Field(
        None, description="linked accounts in the cost data that the config does not cover"
    )
    estimated_days: list[date] = Field(description="days Cost Explorer marks as estimated (not final)")
    requests: int = Field(description="GetCostAndUsage requests made ($0.01 each); 0 for a cur source")
    notes: list[str] = Field(default_factory=list)


def exception_output(rule: Any, now: datetime) -> ExceptionOutput:
    """An ExceptionRule as the commands show it."""
    return ExceptionOutput(
        **rule.model_dump(),
        source=rule.source,
        active=rule.active(now),
        covers=rule.breadth,
        legacy_unscoped=rule.legacy_unscoped,
    )


def _run_report_schema() -> dict[str, Any]:
    schema = RunReport.model_json_schema(mode="serialization")
    schema.setdefault("properties", {})["schema"] = {"const": RUN_SCHEMA, "type": "string"}
    return schema


# Every command output: its schema id, the commands that print it, and how its JSON schema is made.
SCHEMAS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    RUN_SCHEMA: (
        "audit, guard run, guard release, window open|close|run, compliance sync|report, findings *, report",
        _run_report_schema,
    ),
    "fleetwarden.validate/v1": ("validate", lambda: ValidateOutput.model_json_schema(by_alias=True)),
    "fleetwarden.guard-status/v1": ("guard status", lambda: GuardStatusOutput.model_json_schema(by_alias=True)),
    "fleetwarden.window-status/v1": ("window status", lambda: WindowStatusOutput.model_json_schema(by_alias=True)),
    "fleetwarden.exceptions/v1": ("exceptions list", lambda: ExceptionsListOutput.model_json_schema(by_alias=True)),
    "fleetwarden.exception-added/v1": (
        "exceptions add",
        lambda: ExceptionAddedOutput.model_json_schema(by_alias=True),
    ),
    "fleetwarden.doctor/v1": ("doctor", lambda: DoctorOutput.model_json_schema(by_alias=True)),
    "fleetwarden.spend-report/v1": (
        "spend report (the RunReport's `summary.spend`)",
        lambda: SpendReportOutput.model_json_schema(by_alias=True),
    ),
}


def schema_file_name(schema_id: str) -> str:
    """`fleetwarden.guard-status/v1` -> `guard-status.v1.schema.json`."""
    name, _, version = schema_id.removeprefix("fleetwarden.").partition("/")
    return f"{name}.{version}.schema.json"


def json_schema(schema_id: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one output."""
    commands, make = SCHEMAS[schema_id]
    schema = make()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"https://fleetwarden.dev/schemas/{schema_file_name(schema_id)}",
        "title": schema_id,
        "description": f"fleetwarden --json output of: {commands}",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def write_schemas(directory: Path) -> list[Path]:
    """Write every output's schema file into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for schema_id in SCHEMAS:
        path = directory / schema_file_name(schema_id)
        path.write_text(json.dumps(json_schema(schema_id), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - `make schemas`
    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written_path)
