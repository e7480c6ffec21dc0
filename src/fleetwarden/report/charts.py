"""Inline SVG charts for the HTML report: no script, no external asset, every label escaped.

`bar_chart` draws one horizontal bar per item (open findings by severity, by check, by account); `trend_chart`
draws new against resolved findings per day, from the state store (`trend_from_store`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from markupsafe import Markup, escape

from ..model import Finding, FindingStatus

BAR_HEIGHT = 18
GAP = 6
LABEL_WIDTH = 180
CHART_WIDTH = 520


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    css: str = ""  # a class for the bar's colour (sev-HIGH, ...)


@dataclass(frozen=True)
class TrendDay:
    day: date
    new: int
    resolved: int


def bar_chart(chart_id: str, title: str, bars: Sequence[Bar]) -> Markup:
    """Horizontal bars scaled to the largest value; each bar's value is its <title> and a data attribute."""
    if not bars:
        return Markup(f'<p class="empty" id="{escape(chart_id)}">No open findings.</p>')
    top = max(b.value for b in bars) or 1
    span = CHART_WIDTH - LABEL_WIDTH - 60
    height = len(bars) * (BAR_HEIGHT + GAP) + GAP
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {CHART_WIDTH} {height}" width="{CHART_WIDTH}" height="{height}">',
        f"<title>{escape(title)}</title>",
    ]
    for n, bar in enumerate(bars):
        y = GAP + n * (BAR_HEIGHT + GAP)
        width = max(2, round(span * bar.value / top)) if bar.value else 0
        label = bar.label if len(bar.label) <= 28 else bar.label[:27] + "…"
        parts.append(
            f'<g class="bar {escape(bar.css)}" data-label="{escape(bar.label)}" data-value="{bar.value}">'
            f"<title>{escape(bar.label)}: {bar.value}</title>"
            f'<text x="{LABEL_WIDTH - 6}" y="{y + BAR_HEIGHT - 5}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width}" height="{BAR_HEIGHT}" rx="2"></rect>'
            f'<text class="value" x="{LABEL_WIDTH + width + 6}" y="{y + BAR_HEIGHT - 5}">{bar.value}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_chart(chart_id: str, days: Sequence[TrendDay]) -> Markup:
    """Per day, a bar of new findings (up) and one of resolved findings (down) around a middle line."""
    if not days:
        return Markup(f'<p class="empty" id="{escape(chart_id)}">No history in the state store.</p>')
    top = max(max(d.new, d.resolved) for d in days) or 1
    column = 28
    half = 70
    width = 40 + column * len(days)
    height = 2 * half + 30
    middle = half + 5
    parts = [
        f'<svg class="chart trend" id="{escape(chart_id)}" role="img" aria-label="new and resolved findings per day" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        "<title>New (up) and resolved (down) findings per day</title>",
        f'<line x1="30" y1="{middle}" x2="{width}" y2="{middle}" class="axis"></line>',
    ]
    for n, d in enumerate(days):
        x = 34 + n * column
        up = round(half * d.new / top)
        down = round(half * d.resolved / top)
        parts.append(
            f'<g class="day" data-day="{d.day.isoformat()}" data-new="{d.new}" data-resolved="{d.resolved}">'
            f"<title>{d.day.isoformat()}: {d.new} new, {d.resolved} resolved</title>"
            f'<rect class="new" x="{x}" y="{middle - up}" width="{column - 8}" height="{up}"></rect>'
            f'<rect class="resolved" x="{x}" y="{middle}" width="{column - 8}" height="{down}"></rect>'
            f'<text x="{x}" y="{height - 4}" class="tick">{d.day.strftime("%d")}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_days(findings: Iterable[Finding], today: date, days: int = 14) -> list[TrendDay]:
    """New (first seen) and resolved findings per day over the last `days` days, oldest first."""
    start = today - timedelta(days=days - 1)
    new: Counter[date] = Counter()
    resolved: Counter[date] = Counter()
    for finding in findings:
        first = finding.first_seen.date()
        if start <= first <= today:
            new[first] += 1
        if finding.status == FindingStatus.RESOLVED:
            stamp = finding.details.get("resolved_at")
            when = _day(stamp) if isinstance(stamp, str) else finding.last_seen.date()
            if when is not None and start <= when <= today:
                resolved[when] += 1
    return [TrendDay(start + timedelta(days=n), new[start + timedelta(days=n)], resolved[start + timedelta(days=n)])
            for n in range(days)]  # fmt: skip


def _day(text: str) -> date | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        return None
