"""The HTML report opens in a real browser (headless Chromium): the DOM has the findings, a screenshot renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import date as datetime_date
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.report import render_html
from sample_reports import SCRIPT, make_report

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def chromium() -> str:
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    # .ci/run sets this once it has made sure Chromium is installed: there, a missing browser is a failure.
    if os.environ.get("FLEETWARDEN_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium not found but FLEETWARDEN_REQUIRE_BROWSER=1: the rendering tests must run")
    pytest.skip("chromium not installed: apt-get install chromium")


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.fixture
def report_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(render_html(make_report()), encoding="utf-8")
    return path


def test_chromium_dom_has_the_findings(chromium: str, report_file: Path, tmp_path: Path) -> None:
    result = _run_chromium(chromium, tmp_path / "profile", "--dump-dom", report_file.as_uri())

    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    report = make_report()
    rows = re.findall(r'<tr class="finding [^"]*" data-finding-id="([0-9a-f]{64})"', dom)
    assert sorted(rows) == sorted(f.id for f in report.findings)
    for finding in report.findings:
        assert finding.resource_id in dom
    assert "not authorized to assume FleetWarden" in dom  # the errored target
    # The tag value holding a script tag is text in the page, never an element: the page's own is the only one.
    assert dom.lower().count("<script") == 1
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in dom
    assert SCRIPT not in dom


def test_chromium_screenshot_is_a_png(chromium: str, report_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    result = _run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={png}", "--window-size=1400,1000", report_file.as_uri()
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the triage page, driven in the browser (playwright over the system Chromium) -----------------------------------
def _many_findings_report() -> Any:
    """A report of 40 targets (a grid), four checks, findings of every severity, lockouts and a failed stop."""
    from datetime import UTC, datetime

    from fleetwarden.model import ActionOutcome, ActionResult, FindingStatus, Severity, TargetResult, TargetStatus
    from sample_reports import sample_finding

    report = make_report()
    accounts = [f"{n:012d}" for n in range(100000000001, 100000000011)]
    regions = ["us-east-1", "us-west-2", "eu-west-1", "ap-south-1"]
    report.targets = [TargetResult(account_id=a, region=r) for a in accounts for r in regions]
    report.targets[-1] = TargetResult(
        account_id=accounts[-1], region=regions[-1], status=TargetStatus.ERROR, error="AccessDenied"
    )
    findings = []
    severities = list(Severity)
    for n in range(30):
        finding = sample_finding(accounts[n % 3], regions[n % 2], f"i-{n:017x}", FindingStatus.NEW)
        findings.append(
            finding.model_copy(
                update={
                    "severity": severities[n % 5],
                    "check": ["tags", "exposure", "inspector"][n % 3],
                    "first_seen": datetime(2026, 11, 1 + n % 28, tzinfo=UTC),
                }
            )
        )
    report.findings = findings
    report.actions = [
        ActionResult(action="stop", account_id=accounts[0], region="us-east-1", resource_id="i-1",
                     outcome=ActionOutcome.DONE),
        ActionResult(action="stop", account_id=accounts[0], region="us-east-1", resource_id="i-2",
                     outcome=ActionOutcome.FAILED, reason="IncorrectInstanceState"),
        ActionResult(action="lockout", account_id=accounts[1], region="global", resource_id="dev",
                     outcome=ActionOutcome.DONE),
    ]  # fmt: skip
    return report


@pytest.fixture(scope="module")
def browser(chromium: str) -> Any:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (make test)")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def _artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("FLEETWARDEN_ARTIFACTS") or tmp_path / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _page(browser: Any, html: str, tmp_path: Path, *, javascript: bool = True) -> Any:
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    context = browser.new_context(java_script_enabled=javascript, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(path.as_uri())
    return page


def _visible_ids(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("tr.finding:not([hidden])", "rows => rows.map(r => r.dataset.findingId)"))


def test_charts_filters_sorting_and_search_work_in_the_browser(browser: Any, tmp_path: Path) -> None:
    from fleetwarden.report.charts import TrendDay
    from fleetwarden.report.html import ReportContext

    report = _many_findings_report()
    names = {"100000000001": "payments-prod"}
    history = [TrendDay(datetime_date(2026, 11, d), d % 4, d % 3) for d in range(18, 30)]
    page = _page(browser, render_html(report, context=ReportContext(names, history)), tmp_path)

    # Charts: one bar per severity with its count; the trend has one column per day.
    bars = page.eval_on_selector_all(
        "#chart-severity g.bar", "gs => gs.map(g => [g.dataset.label, Number(g.dataset.value)])"
    )
    assert bars == [["CRITICAL", 6], ["HIGH", 6], ["MEDIUM", 6], ["LOW", 6], ["INFORMATIONAL", 6]]
    assert page.locator("#chart-severity rect").first.bounding_box()["width"] > 0
    assert page.locator("#chart-check g.bar").count() == 3
    assert page.locator("#chart-trend g.day").count() == 12
    assert "100000000001 (payments-prod)" in page.text_content("#chart-account")

    # Filters and search hide rows; the count says how many are shown.
    assert len(_visible_ids(page)) == 30
    page.select_option("#filter-severity", "HIGH")
    assert len(_visible_ids(page)) == 6
    page.select_option("#filter-check", "exposure")
    high_exposure = [f for f in report.findings if f.severity.value == "HIGH" and f.check == "exposure"]
    assert sorted(_visible_ids(page)) == sorted(f.id for f in high_exposure)
    assert page.inner_text("#shown-count") == f"{len(high_exposure)} of 30 shown"
    page.select_option("#filter-severity", "")
    page.select_option("#filter-check", "")
    page.fill("#search", "i-00000000000000011")
    assert _visible_ids(page) == [next(f.id for f in report.findings if f.resource_id == "i-00000000000000011")]
    page.fill("#search", "")

    # Sorting: by severity ascending then descending, by first seen.
    page.click("th[data-key=rank]")
    ranks = page.eval_on_selector_all("tr.finding", "rows => rows.map(r => Number(r.dataset.rank))")
    assert ranks == sorted(ranks)
    page.click("th[data-key=rank]")
    ranks = page.eval_on_selector_all("tr.finding", "rows => rows.map(r => Number(r.dataset.rank))")
    assert ranks == sorted(ranks, reverse=True)
    page.click("th[data-key=first]")
    firsts = page.eval_on_selector_all("tr.finding", "rows => rows.map(r => r.dataset.first)")
    assert firsts == sorted(firsts)

    # 40 targets: the account x region grid, the account in error first.
    assert page.locator("#target-grid").count() == 1
    assert page.inner_text("#target-grid tbody tr:first-child td.account").startswith("100000000010")
    # Actions: the group with a failure first, then the lockout.
    kinds = page.eval_on_selector_all("#actions-table tbody.group", "gs => gs.map(g => g.dataset.kind)")
    assert kinds == ["stop", "lockout"]
    page.screenshot(path=str(_artifacts(tmp_path) / "report-audit-triage.png"), full_page=True)


def test_with_scripts_off_every_finding_reads(browser: Any, tmp_path: Path) -> None:
    report = _many_findings_report()
    page = _page(browser, render_html(report), tmp_path, javascript=False)
    assert len(_visible_ids(page)) == 30
    assert page.locator("#controls").is_hidden()  # the controls need the script: not shown without it
    assert page.locator("#chart-severity g.bar").count() == 5  # the charts are SVG, not script
    assert "No state store history" in page.inner_text("#charts")


@pytest.mark.parametrize("workflow", ["audit", "guard", "findings-exposure", "compliance-sync", "window-run"])
def test_a_screenshot_per_report_kind(browser: Any, tmp_path: Path, workflow: str) -> None:
    report = make_report().model_copy(update={"workflow": workflow})
    page = _page(browser, render_html(report), tmp_path)
    assert page.locator("tr.finding").count() == len(report.findings)
    shot = _artifacts(tmp_path) / f"report-{workflow}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
