"""`fleetwarden demo` end to end: its own emulator, a seeded organization, the audit through the CLI."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from fleetwarden.config import load_config
from fleetwarden.demo import DEMO_ACCOUNTS, DEMO_REGIONS, run_demo
from fleetwarden.emulator.server import EmulatorServer

pytestmark = pytest.mark.integration


def test_demo_audits_the_seeded_fleet_and_writes_the_report(aws: EmulatorServer, tmp_path: Path) -> None:
    endpoint_before = os.environ.get("AWS_ENDPOINT_URL")
    out = io.StringIO()
    code = run_demo(tmp_path / "demo-output", instances_per_target=6, stream=out)
    text = out.getvalue()
    assert code == 0, text
    assert "exactly the seeded violators" in text
    output_dir = tmp_path / "demo-output"
    for name in ("fleetwarden.yaml", "run.json", "findings.csv", "report.html", "state.db"):
        assert (output_dir / name).is_file(), name
    config = load_config(output_dir / "fleetwarden.yaml")
    assert [a.id for a in config.accounts] == [a for a, _ in DEMO_ACCOUNTS]
    assert config.regions == list(DEMO_REGIONS) and config.audit.notify == ["ops"]
    report = json.loads((output_dir / "run.json").read_text())
    assert {t["status"] for t in report["targets"]} == {"ok"} and len(report["targets"]) == 9
    assert all(d["outcome"] == "sent" for d in report["deliveries"])
    assert "alerts published to the SNS topic: 1" in text
    # The demo's environment is restored afterwards.
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint_before
