"""`fleetwarden demo` end to end: its own emulator, a seeded organization, the audit through the CLI."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from fleetwarden.config import load_config
from fleetwarden.demo import DEMO_ACCOUNTS, DEMO_REGIONS, run_demo
from fleetwarden.emulator.server import EmulatorServer


def test_demo_audits_the_seeded_fleet_and_writes_the_report(aws: EmulatorServer, tmp_path: Path) -> None:
    endpoint_before = os.environ.get("AWS_ENDPOINT_URL")
    out = io.StringIO()
    code = run_demo(tmp_path / "demo-output", stream=out)  # the real demo fleet
    text = out.getvalue()
    assert code == 0, text
    assert "exactly the seeded violators" in text
    assert "reachable from the internet: exactly the seeded web servers" in text
    output_dir = tmp_path / "demo-output"
    for name in ("fleetwarden.yaml", "run.json", "findings.csv", "report.html", "state.db"):
        assert (output_dir / name).is_file(), name
    config = load_config(output_dir / "fleetwarden.yaml")
    assert [a.id for a in config.accounts] == [a for a, _ in DEMO_ACCOUNTS]
    assert config.regions == list(DEMO_REGIONS) and config.audit.notify == ["ops"]
    report = json.loads((output_dir / "run.json").read_text())
    assert {t["status"] for t in report["targets"]} == {"ok"} and len(report["targets"]) == 9
    # Exposure: the two seeded web servers, each on 22 (high) and 443 (informational), nothing else.
    exposure = [f for f in report["findings"] if f["check"] == "exposure"]
    assert sorted((f["control"], f["severity"]) for f in exposure) == [
        ("internet-tcp/22", "HIGH"),
        ("internet-tcp/22", "HIGH"),
        ("internet-tcp/443", "INFORMATIONAL"),
        ("internet-tcp/443", "INFORMATIONAL"),
    ]
    assert len({f["resource_id"] for f in exposure}) == 2
    assert all(d["outcome"] == "sent" for d in report["deliveries"])
    assert "alerts published to the SNS topic: 2" in text  # the audit's summary and the compliance alert
    # the other jobs ran on the same fleet and wrote their own outputs
    guard = json.loads((output_dir / "guard" / "run.json").read_text())
    assert guard["dry_run"] is True and guard["summary"]["tripped"] == ["333333333333"]
    window = json.loads((output_dir / "window" / "run.json").read_text())
    started = {a["resource_id"] for a in window["actions"] if a["action"] == "start" and a["outcome"] == "done"}
    stopped = {a["resource_id"] for a in window["actions"] if a["action"] == "stop" and a["outcome"] == "done"}
    assert started and started == stopped
    canaries = [a for a in window["actions"] if a["outcome"] == "skipped" and "region canary" in a["reason"]]
    assert len(canaries) == 9  # do-not-start exceptions keep the window away from the canaries
    assert {f["check"] for f in window["findings"]} == {"inspector"}
    compliance = json.loads((output_dir / "compliance" / "run.json").read_text())
    # per target the demo reports 2 failing items on one running instance and 1 on another: 3 x 9 targets
    assert compliance["summary"]["new"] == 27 and compliance["deliveries"][0]["outcome"] == "sent"
    # One triage page with every open finding the jobs recorded: tags, exposure, Inspector and compliance.
    everything = json.loads((output_dir / "all" / "run.json").read_text())
    checks = {f["check"] for f in everything["findings"]}
    assert checks == {"tags", "exposure", "inspector", "compliance"}
    page = (output_dir / "all" / "report.html").read_text()
    assert 'id="charts"' in page and "targets ok" not in page  # read from the store: no target cards
    # The demo's environment is restored afterwards.
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint_before
