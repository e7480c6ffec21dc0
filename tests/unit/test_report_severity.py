"""`fleetwarden report --severity`: only findings of the given severities, in the report, its summary and files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleetwarden.cli import main
from fleetwarden.model import Finding, Severity
from fleetwarden.state import open_store

NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
ACCOUNT = "111111111111"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(state)
    store.init()
    store.save_findings(
        Finding.create(
            check=check,
            account_id=ACCOUNT,
            region="eu-west-1",
            resource_id=f"i-0{n:016x}",
            control="required-tags",
            title=f"finding {n}",
            now=NOW,
            severity=severity,
        )
        for n, (check, severity) in enumerate(
            [
                ("tags", Severity.CRITICAL),
                ("tags", Severity.HIGH),
                ("tags", Severity.MEDIUM),
                ("exposure", Severity.HIGH),
                ("exposure", Severity.INFORMATIONAL),
            ]
        )
    )
    store.close()
    path = tmp_path / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump({"accounts": [{"id": ACCOUNT}], "regions": ["eu-west-1"], "state": state}))
    return path


def _report(config: Path, *args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["--config", str(config), "--json", "report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_severity_keeps_only_those_findings_and_the_summary_agrees(config: Path, tmp_path: Path) -> None:
    report = _report(config, "--severity", "high", "--severity", "CRITICAL", "--output-dir", str(tmp_path / "out"))
    findings = report["findings"]
    assert isinstance(findings, list)
    assert sorted(f["severity"] for f in findings) == ["CRITICAL", "HIGH", "HIGH"]
    assert report["summary"] == {
        "findings": 3,
        "by_check": {"tags": 2, "exposure": 1},
        "by_severity": {"CRITICAL": 1, "HIGH": 2},
        "by_account": {ACCOUNT: 3},
        "by_status": {"new": 3},
    }
    lines = (tmp_path / "out" / "findings.ocsf.jsonl").read_text("utf-8").splitlines()
    assert sorted(json.loads(line)["severity_id"] for line in lines) == [4, 4, 5]


def test_without_severity_every_finding_and_with_check_both_filters(config: Path) -> None:
    findings = _report(config)["findings"]
    assert isinstance(findings, list) and len(findings) == 5
    both = _report(config, "--severity", "informational", "--check", "exposure")["findings"]
    assert isinstance(both, list) and [f["severity"] for f in both] == ["INFORMATIONAL"]


def test_an_unknown_severity_is_refused() -> None:
    result = CliRunner().invoke(main, ["report", "--severity", "urgent"])
    assert result.exit_code == 2 and "urgent" in result.stderr
