"""Finding lifecycle: new / ongoing / resolved / suppressed (DESIGN.md "Findings: identity and lifecycle")."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .model import ExceptionKind, ExceptionSet, Finding, FindingStatus


def reconcile(
    previous: dict[str, Finding],
    current: Iterable[Finding],
    now: datetime,
    exceptions: ExceptionSet,
) -> list[Finding]:
    """Merge this run's findings for ONE healthy target with the stored open ones.

    Only call it for a target that was evaluated completely: a target in error never resolves anything.
    Returns every finding to store: current ones (new, ongoing or suppressed, first_seen kept) and previous
    ones that no longer hold (resolved).
    """
    out: list[Finding] = []
    seen: set[str] = set()
    for finding in current:
        seen.add(finding.id)
        prior = previous.get(finding.id)
        first_seen = prior.first_seen if prior else finding.first_seen
        scope = {
            "account_id": finding.account_id,
            "region": finding.region,
            "resource_id": finding.resource_id,
            "check": finding.check,
        }
        # `--item` names the control, or for compliance simply the item id.
        snooze = exceptions.find(ExceptionKind.SNOOZE, **scope, item=finding.control)
        item_id = finding.details.get("item_id")
        if snooze is None and item_id:
            snooze = exceptions.find(ExceptionKind.SNOOZE, **scope, item=str(item_id))
        if snooze is not None:
            status = FindingStatus.SUPPRESSED
            details = {**finding.details, "suppressed_by": snooze.id}
        elif finding.details.get("suppressed_by"):
            # Suppressed at its source (an Amazon Inspector suppression rule): shown, never counted as open.
            status = FindingStatus.SUPPRESSED
            details = finding.details
        else:
            # A finding that was hidden by a snooze comes back as new when the snooze ends.
            status = FindingStatus.ONGOING if prior and prior.status != FindingStatus.SUPPRESSED else FindingStatus.NEW
            details = finding.details
        out.append(
            finding.model_copy(
                update={"status": status, "first_seen": first_seen, "last_seen": now, "details": details}
            )
        )
    for finding_id, prior in previous.items():
        if finding_id in seen or prior.status == FindingStatus.RESOLVED:
            continue
        out.append(
            prior.model_copy(
                update={"status": FindingStatus.RESOLVED, "details": {**prior.details, "resolved_at": now.isoformat()}}
            )
        )
    return out
