"""The HTML report opens in a real browser (headless Chromium): the DOM has the findings, a screenshot renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

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
    # The tag value holding a script tag is text in the page, never an element.
    assert "<script" not in dom.lower()
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
