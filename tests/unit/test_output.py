"""The user-facing outputs of a run: run.json, findings.csv, report.html, the console and the notification text."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from fleetwarden.model import FindingStatus, RunReport
from fleetwarden.output import (
    CSV_COLUMNS,
    findings_csv,
    print_report,
    summary_subject,
    summary_text,
    write_outputs,
)
from fleetwarden.report import render_html
from fleetwarden.report.stats import sort_findings
from sample_reports import DEV, NOW, SCRIPT, SHARED, make_report, sample_finding


def _console_text(report: RunReport, **kwargs: object) -> str:
    console = Console(record=True, width=200)
    print_report(report, console, **kwargs)  # type: ignore[arg-type]
    return console.export_text()


# -- files ------------------------------------------------------------------------------------------------
def test_write_outputs_writes_json_csv_and_html(tmp_path: Path) -> None:
    report = make_report()
    out = tmp_path / "nested" / "out"
    paths = write_outputs(report, out)

    assert [p.name for p in paths] == ["run.json", "findings.csv", "findings.ocsf.jsonl", "report.html"]
    assert all(p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == [  # no temp files
        "findings.csv",
        "findings.ocsf.jsonl",
        "report.html",
        "run.json",
    ]
    ordered = [f.id for f in sort_findings(report.findings)]
    events = [json.loads(line) for line in (out / "findings.ocsf.jsonl").read_text("utf-8").splitlines()]
    assert [e["finding_info"]["uid"] for e in events] == ordered
    assert {e["class_uid"] for e in events} == {2004}

    raw = json.loads((out / "run.json").read_text("utf-8"))
    assert raw["schema"] == "fleetwarden.run/v1"
    assert RunReport.model_validate_json((out / "run.json").read_text("utf-8")) == report
    assert (out / "run.json").read_text("utf-8") == report.to_json()

    assert (out / "findings.csv").read_bytes() == findings_csv(sort_findings(report.findings))
    rows = list(csv.DictReader(io.StringIO((out / "findings.csv").read_text("utf-8"), newline="")))
    assert [r["id"] for r in rows] == ordered
    assert (out / "report.html").read_text("utf-8") == render_html(report)


def test_findings_csv_parses_back() -> None:
    report = make_report()
    tricky = sample_finding(DEV, "us-east-1", "i-0tricky", FindingStatus.NEW, invalid={"project": 'a,"b"\nc — é'})
    findings = [*report.findings, tricky]

    data = findings_csv(findings)
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header, *rows = list(reader)

    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == len(findings)
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    for finding in findings:
        row = by_id[finding.id]
        assert row["check"] == "tags"
        assert row["status"] == finding.status.value
        assert row["severity"] == finding.severity.value
        assert (row["account_id"], row["region"], row["resource_id"]) == (
            finding.account_id,
            finding.region,
            finding.resource_id,
        )
        assert row["control"] == "required-tags"
        assert row["title"] == finding.title
        assert datetime.fromisoformat(row["first_seen"]) == finding.first_seen
        assert datetime.fromisoformat(row["last_seen"]) == finding.last_seen
        assert json.loads(row["details"]) == finding.details
        assert "\n" not in row["details"] and ": " not in row["details"]  # compact JSON
    assert json.loads(by_id[tricky.id]["details"])["invalid"]["project"] == 'a,"b"\nc — é'


def test_findings_csv_of_no_findings_is_a_header() -> None:
    assert findings_csv([]).decode("utf-8").strip() == ",".join(CSV_COLUMNS)


# -- notification text --------------------------------------------------------------------------------------
def test_summary_subject() -> None:
    assert summary_subject(make_report()) == (
        "fleetwarden audit: 3 violators (2 new) in 2 accounts, 1 target failed [dry run]"
    )
    assert summary_subject(make_report(dry_run=False)).endswith("[applied]")
    clean = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW)
    assert summary_subject(clean) == "fleetwarden audit: no violators [dry run]"
    # Workflows send their notification before they finish: no end time yet.
    assert "Finished" not in summary_text(clean) and "Started: 2026-03-04 10:30:00 UTC" in summary_text(clean)


def test_summary_subject_stays_under_100_chars() -> None:
    report = make_report().model_copy(update={"workflow": "compliance-report-" + "x" * 150})
    subject = summary_subject(report)
    assert len(subject) < 100
    assert subject.endswith("… [dry run]")


def test_summary_text() -> None:
    text = summary_text(make_report())

    assert "fleetwarden audit — run 20260304T103000Z-ab12" in text
    assert "dry run (nothing was changed)" in text
    assert "Targets: 4 (3 ok, 1 error)" in text
    assert "Findings: 5 (2 new, 1 ongoing, 1 resolved, 1 suppressed)" in text
    assert "Open findings by severity: 1 HIGH, 2 MEDIUM" in text
    assert "Actions: 3 (1 planned, 1 skipped, 1 failed)" in text
    assert f"{SHARED} ap-south-1: AssumeRole: AccessDenied: not authorized" in text
    assert "OperationNotPermitted: stop protection" in text
    why = "'nobody' is not an IAM user of this account"
    assert f"{DEV} eu-west-1 i-0new0000000000002: missing: department, project; invalid: created_by ({why})" in text
    assert f"{DEV} us-east-1 i-0new0000000000001: missing: project" in text
    # Only open findings are listed as violators; the most severe new one comes first.
    violators = text.split("Violators (3):\n", 1)[1]
    assert violators.index("i-0new0000000000001") < violators.index("i-0ongoing000000003")
    assert "i-0resolved00000004" not in text and "i-0snoozed000000005" not in text
    assert "Resolved since the last run: 1" in text
    assert "Instances audited: 1234" in text
    assert "Warning: the plan exceeds audit.max_actions=2" in text
    assert "Violators: 3" not in text and "findings_by_status" not in text  # counted above / not scalar
    assert "applied (changes were made)" in summary_text(make_report(dry_run=False))


def test_summary_text_caps_the_violators() -> None:
    many = [sample_finding(DEV, "us-east-1", f"i-{n:017d}", FindingStatus.NEW, missing=["project"]) for n in range(30)]
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW, findings=many)

    text = summary_text(report, max_violators=5)

    assert "Violators (30, first 5 of 30):" in text
    assert sum(line.startswith("  [new]") for line in text.splitlines()) == 5
    assert "... and 25 more" in text


def test_summary_text_neutralises_control_characters() -> None:
    evil = sample_finding(DEV, "us-east-1", "i-1", FindingStatus.NEW, invalid={"project": "x\x1b[2J\ny"})
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW, findings=[evil])
    text = summary_text(report)
    assert "\x1b" not in text
    assert "invalid: project (x\\x1b[2J\\ny)" in text


# -- console --------------------------------------------------------------------------------------------------
def test_print_report_shows_the_key_facts() -> None:
    text = _console_text(make_report())

    assert "fleetwarden audit" in text and "20260304T103000Z-ab12" in text and "DRY RUN" in text
    assert "Targets (3 ok, 1 error)" in text
    assert SHARED in text and "AccessDenied: not authorized to assume FleetWarden" in text
    assert "Findings (2 new, 1 ongoing, 1 resolved, 1 suppressed)" in text
    for instance in ("i-0new0000000000001", "i-0ongoing000000003", "i-0resolved00000004", "i-0snoozed000000005"):
        assert instance in text
    assert "missing: department, project; invalid: created_by " in text
    assert "OperationNotPermitted: stop protection" in text and "do-not-stop exception ex-42" in text
    assert "chat.postMessage: channel_not_found" in text
    assert "instances audited: 1234" in text and "warning: the plan exceeds audit.max_actions=2" in text
    assert "Summary: 3/4 targets ok, 1 in error; 3 open findings (2 new); 3 actions" in text
    assert "1 delivery failed" in text
    assert "APPLIED" in _console_text(make_report(dry_run=False))


def test_print_report_prints_markup_in_values_literally() -> None:
    finding = sample_finding(DEV, "us-east-1", "i-1", FindingStatus.NEW, missing=["[bold red]owner[/]"])
    finding = finding.model_copy(update={"title": "i-1 tags: missing [bold red]owner[/]"})
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW, findings=[finding])
    text = _console_text(report)
    assert "i-1 tags: missing [bold red]owner[/]" in text and "missing: [bold red]owner[/]" in text


def test_print_report_caps_the_findings_table(tmp_path: Path) -> None:
    many = [sample_finding(DEV, "us-east-1", f"i-{n:017d}", FindingStatus.ONGOING) for n in range(75)]
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW, findings=many)

    text = _console_text(report, max_findings=50)
    assert sum(f"i-{n:017d}" in text for n in range(75)) == 50
    assert "... and 25 more findings" in text and "--output-dir" in text

    text = _console_text(report, max_findings=50, output_dir=tmp_path)
    assert f"the full list is in {tmp_path / 'findings.csv'}" in text


def test_print_report_of_an_empty_run() -> None:
    report = RunReport(run_id="r", workflow="guard", dry_run=True, started_at=NOW)
    text = _console_text(report)
    assert "Summary: 0/0 targets ok; 0 open findings (0 new); 0 actions [dry run]" in text


# -- html -----------------------------------------------------------------------------------------------------
def test_html_escapes_values_and_is_self_contained() -> None:
    html = render_html(make_report())

    assert SCRIPT not in html
    # One script, the page's own (sorting and filtering): a value's <script> is escaped, never a second one.
    assert html.lower().count("<script") == 1 and "&lt;script&gt;alert(" in html
    assert "http://" not in html and "https://" not in html  # no external assets
    assert "<style>" in html


@pytest.mark.parametrize("dry_run, badge", [(True, "DRY RUN"), (False, "APPLIED")])
def test_html_has_every_section(dry_run: bool, badge: str) -> None:
    report = make_report(dry_run)
    html = render_html(report)

    assert badge in html and report.run_id in html
    assert html.count('<tr class="finding ') == len(report.findings)
    for finding in report.findings:
        assert f'data-finding-id="{finding.id}"' in html
    assert 'class="finding sev-HIGH st-new"' in html
    assert html.count('<tr class="action"') == 3
    assert html.count('<tr class="delivery"') == 2 and "channel_not_found" in html
    assert 'id="errors"' in html and "not authorized to assume FleetWarden" in html
    assert html.count('<tr class="error-target"') == 1


def test_html_caps_the_findings() -> None:
    many = [sample_finding(DEV, "us-east-1", f"i-{n:017d}", FindingStatus.NEW) for n in range(12)]
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=NOW, findings=many)
    html = render_html(report, max_findings=10)
    assert html.count('<tr class="finding ') == 10
    assert "2 more findings are not shown here" in html


def test_a_long_action_list_is_capped_failures_first() -> None:
    from fleetwarden.model import ActionOutcome, ActionResult

    report = make_report()
    report.actions = [
        ActionResult(
            action="stop",
            account_id=DEV,
            region="us-east-1",
            resource_id=f"i-{n:04d}",
            outcome=ActionOutcome.DONE,
            reason="",
        )
        for n in range(80)
    ] + [
        ActionResult(
            action="stop",
            account_id=DEV,
            region="us-east-1",
            resource_id="i-broken",
            outcome=ActionOutcome.FAILED,
            reason="UnauthorizedOperation",
        )
    ]
    console = Console(record=True, width=200)
    print_report(report, console, max_findings=10)
    text = console.export_text()
    assert "i-broken" in text and "UnauthorizedOperation" in text
    assert "i-0079" not in text and "71 more actions" in text
