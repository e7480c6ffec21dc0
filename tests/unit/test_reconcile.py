"""Finding lifecycle: new, ongoing (first_seen kept), resolved, suppressed by a snooze and back when it expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetwarden.model import ExceptionKind, ExceptionRule, ExceptionSet, Finding, FindingStatus
from fleetwarden.reconcile import reconcile

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = T0 + timedelta(days=1)


def finding(resource: str, now: datetime) -> Finding:
    return Finding.create(
        check="tags",
        account_id="111111111111",
        region="eu-west-1",
        resource_id=resource,
        control="required-tags",
        title=f"{resource} tags",
        now=now,
    )


def by_resource(findings: list[Finding]) -> dict[str, Finding]:
    return {f.resource_id: f for f in findings}


def test_new_ongoing_resolved() -> None:
    first = by_resource(reconcile({}, [finding("i-1", T0), finding("i-2", T0)], T0, ExceptionSet([], T0)))
    assert {f.status for f in first.values()} == {FindingStatus.NEW}
    previous = {f.id: f for f in first.values()}
    second = by_resource(reconcile(previous, [finding("i-1", T1)], T1, ExceptionSet([], T1)))
    assert second["i-1"].status == FindingStatus.ONGOING
    assert second["i-1"].first_seen == T0 and second["i-1"].last_seen == T1
    assert second["i-2"].status == FindingStatus.RESOLVED
    assert second["i-2"].last_seen == T0


def test_snooze_suppresses_until_it_expires() -> None:
    snooze = ExceptionRule(
        id="exc-1",
        kind=ExceptionKind.SNOOZE,
        resource_id="i-1",
        check="tags",
        reason="migration",
        owner="ops",
        created_at=T0,
        expires_at=T0 + timedelta(hours=12),
    )
    first = reconcile({}, [finding("i-1", T0)], T0, ExceptionSet([snooze], T0))
    assert first[0].status == FindingStatus.SUPPRESSED
    assert first[0].details["suppressed_by"] == "exc-1"
    # The snooze has expired a day later: the finding is visible again, as new, first_seen kept.
    later = reconcile({first[0].id: first[0]}, [finding("i-1", T1)], T1, ExceptionSet([snooze], T1))
    assert later[0].status == FindingStatus.NEW
    assert later[0].first_seen == T0


def test_snooze_scope_other_resource_does_not_match() -> None:
    snooze = ExceptionRule(
        id="exc-2", kind=ExceptionKind.SNOOZE, resource_id="i-9", reason="x", owner="ops", created_at=T0
    )
    out = reconcile({}, [finding("i-1", T0)], T0, ExceptionSet([snooze], T0))
    assert out[0].status == FindingStatus.NEW
