"""What the guard says when something changed: account, trigger and figures, what was done, what failed."""

from __future__ import annotations

from collections import Counter

from ...model import ActionOutcome, RunReport, TargetStatus
from ...sinks import Notification


def guard_notification(
    report: RunReport,
    triggers: dict[str, list[str]],
    running: dict[str, int],
    newly: list[str],
    latched: set[str],
    recorded: dict[str, list[str]] | None = None,
) -> Notification:
    """The guard's message (one per run; one per org-run, from its aggregate). `triggers`: this run's, described,
    by account; `running`: the instances counted; `recorded`: the triggers on record for trips latched by an
    earlier run (which this run's figures may no longer show, e.g. once everything is stopped)."""
    tripped = sorted(set(newly) | latched)
    lines = [f"fleetwarden guard run {report.run_id} ({'dry run' if report.dry_run else 'applied'})", ""]
    for account_id in tripped:
        state = "TRIPPED" if account_id in newly else "still tripped (halt enforced again)"
        lines.append(f"Account {account_id}: {state}")
        for text in triggers.get(account_id) or (recorded or {}).get(account_id, []):
            lines.append(f"  trigger: {text}")
        lines.append(f"  running+pending instances counted: {running.get(account_id, 0)}")
        done = Counter((a.action, a.outcome.value) for a in report.actions if a.account_id == account_id)
        for (action, outcome), count in sorted(done.items()):
            lines.append(f"  {action}: {count} {outcome}")
        regions = sorted({a.region for a in report.actions if a.account_id == account_id and a.action == "stop"})
        if regions:
            lines.append(f"  regions halted: {', '.join(regions)}")
        lines.append("")
    failures = [a for a in report.actions if a.outcome == ActionOutcome.FAILED]
    errors = [t for t in report.targets if t.status == TargetStatus.ERROR]
    if failures or errors:
        lines.append("Failures:")
        lines += [f"  {a.action} {a.account_id}/{a.region}/{a.resource_id}: {a.reason}" for a in failures[:50]]
        lines += [f"  target {t.account_id}/{t.region}: {t.error}" for t in errors]
        lines.append("")
    lines.append("Undo with: fleetwarden guard release --account ACCOUNT_ID --apply [--start-instances]")
    if newly:
        subject = f"fleetwarden guard TRIPPED: {', '.join(newly)}"
    elif latched:
        subject = f"fleetwarden guard: halt enforced again in {', '.join(sorted(latched))}"
    else:
        subject = "fleetwarden guard: failures during the run"
    return Notification(subject=subject[:100], text="\n".join(lines))


def release_notification(report: RunReport, account_id: str) -> Notification:
    counts = Counter((a.action, a.outcome.value) for a in report.actions)
    lines = [f"fleetwarden guard release of account {account_id} (run {report.run_id})", ""]
    lines += [f"  {action}: {count} {outcome}" for (action, outcome), count in sorted(counts.items())]
    failures = [a for a in report.actions if a.outcome == ActionOutcome.FAILED]
    if failures:
        lines += ["", "Failures:"] + [f"  {a.action} {a.resource_id}: {a.reason}" for a in failures]
    return Notification(subject=f"fleetwarden guard released {account_id}", text="\n".join(lines))
