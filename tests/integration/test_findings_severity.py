"""`findings inspector|exposure --severity SEV` (repeatable, as Prowler's): the output keeps only those
severities (console, --json, files, --fail-on), while the state store records every finding."""

from __future__ import annotations

from pathlib import Path

from fleet import ACCOUNTS, cli, launch, write_config
from test_inspector import seed_findings, vuln

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.state import open_store

A = ACCOUNTS[0]
REGION = "us-east-1"


def test_severity_filters_the_output_not_the_record(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    (instance,) = launch(factory, A, REGION, {})
    seed_findings(
        aws,
        REGION,
        [
            vuln(A, instance, "CVE-2026-0001", "CRITICAL"),
            vuln(A, instance, "CVE-2026-0002", "HIGH"),
            vuln(A, instance, "CVE-2026-0003", "LOW"),
        ],
    )
    config = str(write_config(tmp_path, aws.url, (A,), [REGION]))
    out = tmp_path / "out"
    result = cli(
        "--config", config, "--json", "--output-dir", str(out), "findings", "inspector",
        "--severity", "critical", "--severity", "HIGH", "--fail-on", "low",
    )  # fmt: skip
    # --fail-on low sees only what the filter kept: CRITICAL and HIGH are above it anyway.
    assert result.exit_code == 3, result.stderr
    assert sorted(f["severity"] for f in result.report["findings"]) == ["CRITICAL", "HIGH"]
    summary = result.report["summary"]
    assert summary["open_findings"] == 2 and summary["severity_filter"] == ["CRITICAL", "HIGH"]
    assert summary["by_severity"]["LOW"] == 0
    assert "CVE-2026-0003" not in (out / "findings.csv").read_text()
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert len(store.list_findings(check="inspector")) == 3  # all recorded
    finally:
        store.close()
    low = cli("--config", config, "--json", "findings", "inspector", "--severity", "low", "--fail-on", "high")
    assert low.exit_code == 0 and [f["severity"] for f in low.report["findings"]] == ["LOW"]
    bad = cli("--config", config, "findings", "exposure", "--severity", "urgent")
    assert bad.exit_code == 2 and "urgent" in bad.stderr


def test_inspector_suppression_rules_show_as_suppressed(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    (instance,) = launch(factory, A, REGION, {})
    seed_findings(
        aws,
        REGION,
        [
            vuln(A, instance, "CVE-2026-0101", "CRITICAL", status="SUPPRESSED"),
            vuln(A, instance, "CVE-2026-0102", "HIGH"),
            vuln(A, instance, "CVE-2026-0103", "HIGH", status="CLOSED"),
        ],
    )
    config = str(write_config(tmp_path, aws.url, (A,), [REGION]))
    result = cli("--config", config, "--json", "findings", "inspector", "--fail-on", "critical")
    # The suppressed CRITICAL is shown but is not open: --fail-on critical does not fire.
    assert result.exit_code == 0, result.stderr
    by_control = {f["control"]: f for f in result.report["findings"]}
    assert set(by_control) == {"CVE-2026-0101", "CVE-2026-0102"}  # CLOSED is not collected
    suppressed = by_control["CVE-2026-0101"]
    assert suppressed["status"] == "suppressed"
    assert suppressed["details"]["inspectorStatus"] == "SUPPRESSED"
    assert suppressed["details"]["suppressed_by"] == "an Amazon Inspector suppression rule"
    assert by_control["CVE-2026-0102"]["status"] == "new"
    summary = result.report["summary"]
    assert summary["open_findings"] == 1 and summary["findings_by_status"] == {"suppressed": 1, "new": 1}
