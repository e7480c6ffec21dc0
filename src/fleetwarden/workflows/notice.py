"""Notice before action (`audit.notice_days`, docs/audit.md "Notice before action"): the audit's first run that
finds a violator marks it (a tag with the date after which the configured action applies, and a state-store
record that is the authority); later runs act only after that date and only if the instance still violates;
fixing the tags withdraws the notice. A dry run says what it would mark and withdraw.

`decide()` is pure (records in, decisions out), so the max_actions check sees only what would really be acted on
before anything is written; `carry_out()` makes the marks and withdrawals (journaled, actions/notice.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..actions.notice import CLEAR, MARK, RECORD_KIND, Mark, NoticeTags, tag_value
from ..aws.fanout import fan_out
from ..model import ActionOutcome, ActionResult, Instance, Target

if TYPE_CHECKING:
    from .audit import TargetAudit
    from .base import RunContext


@dataclass
class NoticePlan:
    act: dict[Target, list[Instance]] = field(default_factory=dict)  # notice given and past: act now
    marks: dict[Target, list[Mark]] = field(default_factory=dict)
    clears: dict[Target, list[str]] = field(default_factory=dict)
    waiting: list[ActionResult] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def _when(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def decide(ctx: RunContext, audits: list[TargetAudit], plan: dict[Target, list[Instance]], now: datetime) -> NoticePlan:
    """Split the action plan: instances without a notice get one, those within it wait, those past it are acted
    on. A notice for another action than the configured one (the config changed from stop to terminate) does not
    count: a new one is given. Records of instances of this run's healthy targets that no longer violate are
    withdrawn; a target in error withdraws nothing."""
    audit_cfg = ctx.config.audit
    action, period, tag_key = audit_cfg.action, timedelta(days=audit_cfg.notice_days), audit_cfg.notice_tag
    records = {key: (data, version) for key, data, version in ctx.store.list_records(RECORD_KIND)}
    out = NoticePlan()
    for target, instances in plan.items():
        for instance in instances:
            key = f"{target.account_id}/{target.region}/{instance.id}"
            data, version = records.get(key, ({}, None))
            after, marked_at = _when(data.get("after")), _when(data.get("marked_at"))
            fresh = Mark(instance.id, action, now + period, now, version)
            if version is None or after is None or marked_at is None or data.get("action") != action:
                out.marks.setdefault(target, []).append(fresh)
                out.counts["marked"] += 1
            elif not data.get("tagged"):
                # A run died between the record and the tag: the owner may never have seen it, so it starts again.
                out.marks.setdefault(target, []).append(
                    Mark(instance.id, action, max(after, fresh.after), now, version)
                )
                out.counts["marked"] += 1
            elif now < after:
                out.waiting.append(
                    ActionResult(
                        action=action,
                        account_id=target.account_id,
                        region=target.region,
                        resource_id=instance.id,
                        outcome=ActionOutcome.SKIPPED,
                        reason=f"notice given {marked_at:%Y-%m-%d %H:%M} UTC: "
                        f"{action} after {after:%Y-%m-%d %H:%M} UTC",
                    )
                )
                out.counts["waiting"] += 1
                if instance.tags.get(tag_key) != tag_value(action, after):
                    # The tag was removed or edited: put it back as recorded (the record, not the tag, decides).
                    out.marks.setdefault(target, []).append(Mark(instance.id, action, after, marked_at, version))
            else:
                out.act.setdefault(target, []).append(instance)
                out.counts["due"] += 1
    healthy = {a.target: a for a in audits}
    for key in records:
        account_id, region, instance_id = key.split("/", 2)
        audit = healthy.get(Target(account_id, region))
        if audit is not None and instance_id not in audit.violators:
            out.clears.setdefault(audit.target, []).append(instance_id)
            out.counts["cleared"] += 1
    return out


def carry_out(ctx: RunContext, notice: NoticePlan, *, apply: bool) -> list[ActionResult]:
    """Make the marks and withdrawals (with --apply), else say what would be done; plus the waiting ones."""
    results = list(notice.waiting)
    if not apply:
        for target, marks in notice.marks.items():
            results += [
                ActionResult(
                    action=MARK,
                    account_id=target.account_id,
                    region=target.region,
                    resource_id=m.instance_id,
                    outcome=ActionOutcome.PLANNED,
                    reason=f"dry run: would mark it: {m.action} after {m.after:%Y-%m-%d %H:%M} UTC",
                )
                for m in marks
            ]
        for target, ids in notice.clears.items():
            results += [
                ActionResult(
                    action=CLEAR,
                    account_id=target.account_id,
                    region=target.region,
                    resource_id=i,
                    outcome=ActionOutcome.PLANNED,
                    reason="dry run: the required tags are fixed: would withdraw the notice",
                )
                for i in ids
            ]
        return results

    def work(target: Target) -> list[ActionResult]:
        tags = NoticeTags(
            ctx.factory.client("ec2", region=target.region, account_id=target.account_id),
            ctx.store,
            tag_key=ctx.config.audit.notice_tag,
            account_id=target.account_id,
            region=target.region,
            run_id=ctx.run_id,
            workflow="audit",
            clock=ctx.clock,
        )
        return tags.mark(notice.marks.get(target, [])) + tags.clear(notice.clears.get(target, []))

    targets = sorted(set(notice.marks) | set(notice.clears), key=lambda t: (t.account_id, t.region))
    for outcome in fan_out(targets, work, max_concurrency=ctx.config.aws.max_concurrency, label="notice"):
        if outcome.value is not None:
            results += outcome.value
            continue
        target = outcome.key
        for kind, ids in ((MARK, [m.instance_id for m in notice.marks.get(target, [])]),
                          (CLEAR, notice.clears.get(target, []))):  # fmt: skip
            results += [
                ActionResult(
                    action=kind,
                    account_id=target.account_id,
                    region=target.region,
                    resource_id=i,
                    outcome=ActionOutcome.FAILED,
                    reason=outcome.error or "failed",
                )
                for i in ids
            ]
    return results
