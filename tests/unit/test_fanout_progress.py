"""Progress of a fan-out on stderr: a live bar on a terminal, a line every few seconds in a log, nothing when off
(the Lambda, a library caller, -q), and never on stdout."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest
from botocore.exceptions import ClientError

from fleetwarden.aws import fanout
from fleetwarden.aws.fanout import fan_out, progress_reporting


def _work(key: int) -> int:
    time.sleep(0.06)
    if key == 2:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DescribeInstances")
    return key


def test_a_log_gets_a_line_every_few_seconds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "LINE_EVERY_SECONDS", 0.05)
    with progress_reporting("auto"):
        outcomes = list(fan_out(list(range(6)), _work, max_concurrency=1, label="audit"))
    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("audit: ")]
    assert len(lines) >= 3
    shape = re.compile(r"audit: (\d)/6 done, (\d) error\(s\), \d+s elapsed(, ~\d+s left)?")
    parsed = [shape.fullmatch(line) for line in lines]
    assert all(parsed), lines
    done = [int(m[1]) for m in parsed if m]
    assert done == sorted(done) and done[-1] >= 3
    assert any(int(m[2]) == 1 for m in parsed if m and int(m[1]) >= 3)  # the failed target counted


def test_a_short_run_and_an_off_mode_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_reporting("auto"):  # LINE_EVERY_SECONDS (10 s) is longer than this run
        list(fan_out([1, 3], _work, max_concurrency=2))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    with progress_reporting("off"):
        list(fan_out(list(range(4)), _work, max_concurrency=1))
    assert capsys.readouterr().err == ""
    list(fan_out(list(range(2)), _work, max_concurrency=1))  # the default: off (a Lambda, a library caller)
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_errors_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_reporting("auto"):
        outcomes = list(fan_out(list(range(4)), _work, max_concurrency=1, label="guard"))
    assert len(outcomes) == 4
    drawn = terminal.getvalue()
    assert "guard" in drawn and "4/4" in drawn and "1 error(s)" in drawn
