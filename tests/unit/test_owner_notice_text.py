"""An owner's digest says what the notice means (audit.notice_days): marked and until when, or that the action is
waiting; never that the instance was stopped when it was only marked."""

from __future__ import annotations

from fleetwarden.model import ActionOutcome, ActionResult
from fleetwarden.owners.notify import action_text


def _result(action: str, outcome: ActionOutcome, reason: str) -> ActionResult:
    return ActionResult(
        action=action, account_id="111111111111", region="us-east-1", resource_id="i-1", outcome=outcome, reason=reason
    )


def test_a_mark_says_what_will_happen_and_when() -> None:
    reason = "notice: stop after 2026-12-09 02:30 UTC unless the required tags are fixed"
    outcome, text = action_text("stop", _result("notice", ActionOutcome.DONE, reason))
    assert outcome == "notice" and text == "stop after 2026-12-09 02:30 UTC unless the required tags are fixed"
    assert "stopped" not in text


def test_a_dry_run_mark_and_a_waiting_stop() -> None:
    planned = _result("notice", ActionOutcome.PLANNED, "dry run: would mark it: stop after 2026-12-09 02:30 UTC")
    outcome, text = action_text("stop", planned)
    assert outcome == "planned" and "--apply" in text and "2026-12-09" in text
    waiting = _result(
        "stop", ActionOutcome.SKIPPED, "notice given 2026-12-02 02:30 UTC: stop after 2026-12-09 02:30 UTC"
    )
    outcome, text = action_text("stop", waiting)
    assert outcome == "skipped" and text.startswith("not stopped") and "2026-12-09" in text
    failed = _result("notice", ActionOutcome.FAILED, "UnauthorizedOperation")
    assert action_text("stop", failed)[0] == "failed"
