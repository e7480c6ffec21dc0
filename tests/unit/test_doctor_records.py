"""Doctor without AWS: the last-run records (on a SQLite store), --max-age, exit codes, the operator permissions.

(Not test_doctor.py: tests/integration has that basename, and the test directories are not packages.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.doctor import (
    DEFAULT_MAX_AGE,
    PERMISSIONS,
    RUN_KIND,
    CheckResult,
    DoctorReport,
    format_line,
    parse_max_age,
    record_run,
)
from fleetwarden.permissions import operator_actions, policy_documents
from fleetwarden.state import VersionConflict
from fleetwarden.state.base import StateStore
from fleetwarden.state.sqlite import SqliteStore

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return SqliteStore(tmp_path / "state.db")


def _record(store: StateStore, action: str) -> dict[str, Any]:
    found = store.get_record(RUN_KIND, action)
    assert found is not None
    return found[0]


def test_a_failed_run_keeps_the_last_success(store: StateStore) -> None:
    assert record_run(store, "guard", {"status": "ok", "exit_code": 0, "run_id": "r1"}, NOW)
    later = NOW + timedelta(minutes=5)
    assert record_run(store, "guard", {"status": "error", "exit_code": 2, "error": "invalid config"}, later)
    data = _record(store, "guard")
    assert data["last_success"] == {"at": NOW.isoformat(), "status": "ok", "exit_code": 0, "run_id": "r1"}
    assert data["last_attempt"] == {
        "at": later.isoformat(),
        "status": "error",
        "exit_code": 2,
        "error": "invalid config",
    }
    # findings at or above --fail-on are a successful run (status ok, exit 3); partial and no-op runs are not
    record_run(store, "audit", {"status": "ok", "exit_code": 3}, NOW)
    record_run(store, "audit", {"status": "partial", "exit_code": 4}, later)
    record_run(store, "audit", {"status": "noop", "exit_code": 0}, later)
    audit = _record(store, "audit")
    assert audit["last_success"]["exit_code"] == 3 and audit["last_attempt"]["status"] == "noop"


def test_a_run_never_recorded_before_has_no_success(store: StateStore) -> None:
    record_run(store, "compliance-report", {"status": "refused", "exit_code": 5}, NOW)
    assert _record(store, "compliance-report")["last_success"] is None


class _Racing(SqliteStore):
    """Another run writes the record between our read and our write, once."""

    raced = False

    def put_record(self, kind: str, key: str, data: dict[str, Any], *, expected_version: int | None) -> int:
        if not self.raced:
            self.raced = True
            other = {"action": key, "last_attempt": {"at": "other"}, "last_success": {"at": "other"}}
            super().put_record(kind, key, other, expected_version=expected_version)
        return super().put_record(kind, key, data, expected_version=expected_version)


def test_a_concurrent_write_is_read_again_not_lost(tmp_path: Path) -> None:
    store = _Racing(tmp_path / "state.db")
    assert record_run(store, "guard", {"status": "error", "exit_code": 1}, NOW)
    data = _record(store, "guard")
    assert data["last_success"] == {"at": "other"}  # the other run's success survives our failure
    assert data["last_attempt"]["status"] == "error"


class _Broken(SqliteStore):
    def put_record(self, kind: str, key: str, data: dict[str, Any], *, expected_version: int | None) -> int:
        raise VersionConflict("always")


def test_a_store_that_keeps_conflicting_does_not_fail_the_run(tmp_path: Path) -> None:
    assert record_run(_Broken(tmp_path / "state.db"), "guard", {"status": "ok", "exit_code": 0}, NOW) is False


def test_max_age_overrides_and_refuses_nonsense() -> None:
    ages = parse_max_age(["guard=20m", "audit=2d", "window=1w"])
    assert ages["guard"] == timedelta(minutes=20) and ages["audit"] == timedelta(days=2)
    assert ages["window"] == timedelta(weeks=1)
    assert ages["compliance-report"] == DEFAULT_MAX_AGE["compliance-report"]
    for bad in ("guard", "guard=", "guard=15", "guard=0m", "=15m", "guard=15s"):
        with pytest.raises(ValueError, match="ACTION=DURATION"):
            parse_max_age([bad])


def test_exit_codes() -> None:
    report = DoctorReport("fleetwarden-hub", "us-east-1", [CheckResult("stack", "ok", "fine")])
    assert report.exit_code == 0
    report.checks.append(CheckResult("disabled", "warning", "switched off", "update the stack"))
    assert report.exit_code == 0
    report.checks.append(CheckResult("resource:StateTable", "problem", "gone", "restore it"))
    assert report.exit_code == 3
    report.config_error = True
    assert report.exit_code == 2
    assert report.to_dict()["summary"] == {"ok": 1, "warning": 1, "problem": 1, "not-checked": 0}


def test_lines_name_the_check_and_the_fix() -> None:
    assert format_line(CheckResult("stack", "ok", "CREATE_COMPLETE")) == "ok      stack: CREATE_COMPLETE"
    line = format_line(CheckResult("resource:Function", "problem", "gone", "update the stack"))
    assert line == "PROBLEM resource:Function: gone\n        fix: update the stack"


def test_the_operator_document_is_doctors_declaration_and_only_reads() -> None:
    from fleetwarden.aws.targets import OPERATOR_PERMISSIONS

    # doctor's reads, and the command line's --ou (ListAccountsForParent, ListOrganizationalUnitsForParent)
    declared = {a for group in (*PERMISSIONS.values(), *OPERATOR_PERMISSIONS.values()) for a in group}
    document = policy_documents()["operator"]
    assert {a for s in document["Statement"] for a in s["Action"]} == declared == operator_actions()
    for action in declared:
        service, _, name = action.partition(":")
        assert service.islower() and name[:1].isupper(), action
        assert name.startswith(("Describe", "List", "Get")) or action == "sts:AssumeRole", action
    # the hub role (the functions) gets none of it: doctor runs as an operator
    hub = {a for s in policy_documents()["hub"]["Statement"] for a in s["Action"]}
    assert "cloudformation:DescribeStacks" not in hub
