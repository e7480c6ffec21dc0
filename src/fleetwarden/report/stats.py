"""Counts and orderings of a RunReport shared by every output (console, plain text, HTML), so they always agree."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..model import ActionOutcome, Finding, FindingStatus, RunReport, Severity, TargetStatus

# Findings that still need someone's attention.
ACTIVE_STATUSES = (FindingStatus.NEW, FindingStatus.ONGOING)
# Display order: what needs attention first, what is closed last.
STATUS_ORDER = {
    FindingStatus.NEW: 0,
    FindingStatus.ONGOING: 1,
    FindingStatus.SUPPRESSED: 2,
    FindingStatus.RESOLVED: 3,
}
SEVERITIES = tuple(Severity)  # high to low

# Keys of `Finding.details` that name what is wrong with a resource (the tag check writes `missing` and
# `invalid`; the aliases keep other checks readable without a shared schema).
_MISSING_KEYS = ("missing", "missing_tags", "missing_keys")
_INVALID_KEYS = ("invalid", "invalid_tags", "invalid_values", "invalid_keys")


def finding_sort_key(finding: Finding) -> tuple[int, int, str, str, str, str]:
    """New before ongoing before suppressed before resolved; then most severe first; then by place."""
    return (
        STATUS_ORDER.get(finding.status, 9),
        -finding.severity.rank,
        finding.account_id,
        finding.region,
        finding.resource_id,
        finding.control,
    )


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=finding_sort_key)


def clean(value: object) -> str:
    """A value made safe for a terminal or a mail body: control characters (ANSI escapes, newlines from
    tag values) become visible `\\xNN` escapes instead of acting on the reader's screen."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if unicodedata.category(ch).startswith("C"):
        return ch.encode("unicode_escape").decode("ascii")
    return " "  # other separators (line/paragraph separators): a plain space reads better


def _names(value: Any, reasons: bool) -> list[str]:
    if isinstance(value, dict):
        return [f"{k} ({v})" if reasons and v not in (None, "") else str(k) for k, v in value.items()]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(v) for v in value]
    if value in (None, "", False):
        return []
    return [str(value)]


def finding_problems(finding: Finding, reasons: bool = True) -> str:
    """The missing and invalid keys a finding's details name, e.g.
    `missing: project; invalid: department ('qa' is not one of sysops, eng)` (`invalid` maps a key to why;
    `reasons=False` leaves the whys out where space is short)."""
    parts = []
    for label, keys in (("missing", _MISSING_KEYS), ("invalid", _INVALID_KEYS)):
        names = [name for key in keys for name in _names(finding.details.get(key), reasons)]
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts)


# Summary keys every output already shows from its own counts.
_COUNTED_SUMMARY_KEYS = frozenset(
    {"accounts", "regions", "targets", "targets_ok", "targets_error", "violators", "findings", "actions"}
)


def summary_items(report: RunReport) -> list[tuple[str, str]]:
    """The workflow's own scalar summary entries (e.g. `instances_audited`, `warning`) the counts do not cover."""
    return [
        (str(key).replace("_", " "), str(value))
        for key, value in report.summary.items()
        if key not in _COUNTED_SUMMARY_KEYS and isinstance(value, str | int | float | bool) and value != ""
    ]


def compact_json(value: Any) -> str:
    """Compact, key-sorted JSON (for CSV cells and the HTML details column)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None and value.utcoffset() == timedelta(0):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return value.isoformat(sep=" ", timespec="seconds")


def format_duration(started: datetime, finished: datetime | None) -> str:
    if finished is None:
        return "-"
    seconds = max(0, round((finished - started).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@dataclass(frozen=True)
class PlaceRow:
    """One (account, region) line of the per-place table."""

    account_id: str
    region: str
    status: str
    error: str | None
    findings: dict[str, int]
    actions: int


@dataclass(frozen=True)
class ReportStats:
    """Everything the outputs count, computed once from a RunReport."""

    targets_total: int
    targets_by_status: dict[str, int]
    accounts: int
    regions: int
    findings_total: int
    findings_by_status: dict[str, int]
    active_by_severity: dict[str, int]
    actions_by_outcome: dict[str, int]
    deliveries_by_outcome: dict[str, int]
    violators: int
    new: int
    violator_accounts: int
    places: list[PlaceRow] = field(default_factory=list)

    @property
    def targets_ok(self) -> int:
        return self.targets_by_status.get(TargetStatus.OK.value, 0)

    @property
    def targets_error(self) -> int:
        return self.targets_by_status.get(TargetStatus.ERROR.value, 0)

    @property
    def highest_severity(self) -> str | None:
        return next((sev for sev, n in self.active_by_severity.items() if n), None)


def _ordered(counter: Counter[str], order: Sequence[str], keep_zero: bool) -> dict[str, int]:
    known = {key: counter.get(key, 0) for key in order if keep_zero or counter.get(key, 0)}
    extra = {key: n for key, n in sorted(counter.items()) if key not in known and n}
    return known | extra


def compute_stats(report: RunReport) -> ReportStats:
    """Counts by target status, finding status and severity, action outcome, delivery outcome and place."""
    target_status = Counter(t.status.value for t in report.targets)
    finding_status = Counter(f.status.value for f in report.findings)
    active = [f for f in report.findings if f.status in ACTIVE_STATUSES]
    severity = Counter(f.severity.value for f in active)
    outcomes = Counter(a.outcome.value for a in report.actions)
    deliveries: Counter[str] = Counter(str(d.outcome) for d in report.deliveries)

    places: dict[tuple[str, str], dict[str, Any]] = {}
    for t in report.targets:
        places[(t.account_id, t.region)] = {"status": t.status.value, "error": t.error, "findings": Counter(), "n": 0}
    blank = {"status": "-", "error": None}
    for f in report.findings:
        places.setdefault((f.account_id, f.region), {**blank, "findings": Counter(), "n": 0})["findings"][
            f.status.value
        ] += 1
    for a in report.actions:
        places.setdefault((a.account_id, a.region), {**blank, "findings": Counter(), "n": 0})["n"] += 1
    statuses = [s.value for s in FindingStatus]
    rows = [
        PlaceRow(acct, region, p["status"], p["error"], _ordered(p["findings"], statuses, True), p["n"])
        for (acct, region), p in sorted(places.items())
    ]

    return ReportStats(
        targets_total=len(report.targets),
        targets_by_status=_ordered(target_status, [s.value for s in TargetStatus], True),
        accounts=len({t.account_id for t in report.targets}),
        regions=len({t.region for t in report.targets}),
        findings_total=len(report.findings),
        findings_by_status=_ordered(finding_status, statuses, True),
        active_by_severity=_ordered(severity, [s.value for s in SEVERITIES], False),
        actions_by_outcome=_ordered(outcomes, [o.value for o in ActionOutcome], False),
        deliveries_by_outcome=_ordered(deliveries, ["sent", "failed", "skipped"], False),
        # An instance with several open findings (a tag finding and a canary one) is one violator.
        violators=len({(f.account_id, f.region, f.resource_id) for f in active}),
        new=finding_status.get(FindingStatus.NEW.value, 0),
        violator_accounts=len({f.account_id for f in active}),
        places=rows,
    )


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """`1 account`, `3 accounts`."""
    return f"{n} {noun if n == 1 else plural_form or noun + 's'}"


def counts_text(counts: dict[str, int]) -> str:
    """`3 new, 8 ongoing` (zero counts left out), or `none`."""
    return ", ".join(f"{n} {key}" for key, n in counts.items() if n) or "none"
