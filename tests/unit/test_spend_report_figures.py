"""The spend report's arithmetic (workflows/spend_report.py) on cost data built in the test: periods at month
edges, run rate, changes, and invariants over random cost data (hypothesis)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwarden.collect.spend.daily import DailyCosts
from fleetwarden.report.spend import pct, spend_csv, spend_text, usd
from fleetwarden.workflows.spend_report import build_report, periods, run_rate

A, B = "111111111111", "222222222222"


def test_periods_at_the_month_edges() -> None:
    mid = periods(date(2026, 3, 16))
    assert (mid.start, mid.end, mid.days) == (date(2026, 3, 1), date(2026, 3, 16), 15)
    assert (mid.previous_start, mid.previous_end) == (date(2026, 2, 1), date(2026, 2, 16))
    # Late in March: February has only 28 days to compare.
    late = periods(date(2026, 3, 31))
    assert late.days == 30 and (late.previous_start, late.previous_end) == (date(2026, 2, 1), date(2026, 3, 1))
    # The 1st: the whole previous month, against the whole month before it (across a year).
    first = periods(date(2026, 1, 1))
    assert (first.start, first.end, first.days) == (date(2025, 12, 1), date(2026, 1, 1), 31)
    assert (first.previous_start, first.previous_end) == (date(2025, 11, 1), date(2025, 12, 1))
    second = periods(date(2026, 1, 2))
    assert (second.start, second.days, second.previous_start, second.previous_end) == (
        date(2026, 1, 1),
        1,
        date(2025, 12, 1),
        date(2025, 12, 2),
    )


def test_run_rate_is_per_day_times_365_in_decimal() -> None:
    assert run_rate(Decimal("100"), 3) == Decimal("12166.67")  # 33.333... x 365, half up
    assert run_rate(Decimal("0.10"), 1) == Decimal("36.50")
    assert run_rate(Decimal("5"), 0) == Decimal("0.00")


def _data(start: date, end: date, lines: dict[tuple[date, str, str], str]) -> DailyCosts:
    data = DailyCosts(start, end)
    for (day, account, service), amount in lines.items():
        data.add(day, account, service, Decimal(amount))
    return data


def test_changes_new_gone_and_threshold() -> None:
    when = periods(date(2026, 5, 3))  # May 1-2 against April 1-2
    data = _data(
        when.previous_start,
        when.end,
        {
            (date(2026, 4, 1), A, "EC2"): "10",
            (date(2026, 4, 2), A, "EC2"): "10",
            (date(2026, 5, 1), A, "EC2"): "30",
            (date(2026, 5, 2), A, "EC2"): "30",  # +40
            (date(2026, 4, 1), A, "S3"): "0.50",
            (date(2026, 5, 1), A, "S3"): "0.60",  # +0.10: under min_change
            (date(2026, 4, 2), B, "RDS"): "25",  # gone: -25
            (date(2026, 5, 2), B, "Lambda"): "3",  # new: +3
            (date(2026, 4, 20), B, "RDS"): "999",  # outside the previous period's days
        },
    )
    report = build_report(data, when, date(2026, 5, 3), None, {}, 10, Decimal("1"))
    assert [(c.account_id, c.service, str(c.change_usd), c.change_pct) for c in report.changes] == [
        (A, "EC2", "40.00", Decimal("200.00")),
        (B, "RDS", "-25.00", Decimal("-100.00")),
        (B, "Lambda", "3.00", None),
    ]
    assert report.previous_total_usd == Decimal("45.50") and report.total_usd == Decimal("63.60")
    text = spend_text(report)
    assert "EC2: $20.00 -> $60.00 (+$40.00, +200%)" in text and "(+$3.00, new)" in text
    assert usd(Decimal("-1234.5")) == "-$1,234.50" and pct(Decimal("-0.4")) == "-0.4%"
    assert pct(None, Decimal("0")) == "new" and pct(None, Decimal("-5")) == "n/a"


def test_credits_count_and_have_no_percentage() -> None:
    """A refund booked as a negative cost lowers the day and the month; against it a percentage means nothing."""
    when = periods(date(2026, 5, 3))
    data = _data(
        when.previous_start,
        when.end,
        {
            (date(2026, 4, 1), A, "EC2"): "-20",  # last month: a credit
            (date(2026, 5, 1), A, "EC2"): "30",
            (date(2026, 5, 2), A, "EC2"): "-5",
        },
    )
    report = build_report(data, when, date(2026, 5, 3), None, {}, 10, Decimal("1"))
    assert report.total_usd == Decimal("25.00") and report.previous_total_usd == Decimal("-20.00")
    [change] = report.changes
    assert change.change_usd == Decimal("45.00") and change.change_pct is None
    assert "(+$45.00, n/a)" in spend_text(report)
    assert [d.usd for d in report.accounts[0].by_day] == [Decimal("30.00"), Decimal("-5.00")]


def test_a_formula_in_a_service_name_is_inert_in_the_csv() -> None:
    when = periods(date(2026, 5, 3))
    data = _data(when.previous_start, when.end, {(date(2026, 5, 1), A, "=HYPERLINK(1)"): "1"})
    report = build_report(data, when, date(2026, 5, 3), None, {}, 10, Decimal("1"))
    rows = [("current", date(2026, 5, 1), A, "=HYPERLINK(1)", Decimal("1"))]
    assert b"'=HYPERLINK(1)" in spend_csv(report, rows)


amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("100000"), places=6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    as_of=st.dates(min_value=date(2024, 1, 1), max_value=date(2027, 12, 31)),
    lines=st.lists(
        st.tuples(
            st.integers(min_value=-70, max_value=5), st.sampled_from([A, B]), st.sampled_from(["EC2", "S3"]), amounts
        ),
        max_size=40,
    ),
)
def test_invariants_over_random_cost_data(as_of: date, lines: list[tuple[int, str, str, Decimal]]) -> None:
    when = periods(as_of)
    data = DailyCosts(when.previous_start, when.end)
    for offset, account, service, amount in lines:
        data.add(as_of + timedelta(days=offset), account, service, amount)
    report = build_report(data, when, as_of, None, {}, 5, Decimal("0"))
    exact = sum(
        (v for (day, _a, _s), v in data.costs.items() if when.start <= day < when.end),
        Decimal(0),
    )
    # The total is the exact sum rounded once; each account's days and services add up to it within rounding.
    assert report.total_usd == exact.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    assert abs(sum((a.usd for a in report.accounts), Decimal(0)) - report.total_usd) <= Decimal("0.01") * 2
    for account in report.accounts:
        assert len(account.by_day) == when.days
        assert abs(sum((d.usd for d in account.by_day), Decimal(0)) - account.usd) <= Decimal("0.005") * when.days
        assert abs(sum((s.usd for s in account.by_service), Decimal(0)) - account.usd) <= Decimal("0.01")
    changes = [abs(c.change_usd) for c in report.changes]
    assert changes == sorted(changes, reverse=True) and len(changes) <= 5
    assert report.run_rate_usd == run_rate(exact, when.days)


def test_names_from_aws_and_the_config_are_escaped_in_the_page() -> None:
    from fleetwarden.report.spend import render_spend_html

    when = periods(date(2026, 5, 3))
    hostile = '<script>alert("x")</script>'
    data = _data(when.previous_start, when.end, {(date(2026, 5, 1), A, hostile): "1"})
    report = build_report(data, when, date(2026, 5, 3), None, {A: "<b>prod</b>"}, 10, Decimal("1"))
    page = render_spend_html(report)
    assert hostile not in page and "&lt;script&gt;" in page
    assert "<b>prod</b>" not in page and "&lt;b&gt;prod&lt;/b&gt;" in page
