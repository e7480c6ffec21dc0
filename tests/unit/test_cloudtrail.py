"""The LookupEvents budget of one target (collect/cloudtrail.py): paced to 2 calls per second, bounded in calls
and seconds, with an injected clock."""

from __future__ import annotations

import pytest

from fleetwarden.collect.cloudtrail import Budget, BudgetSpent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_calls_are_paced_and_bounded() -> None:
    clock = FakeClock()
    budget = Budget(max_calls=3, max_seconds=60, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        budget.spend()
    assert clock.slept == [0.5, 0.5]
    with pytest.raises(BudgetSpent, match="3 LookupEvents call"):
        budget.spend()


def test_time_budget_stops_before_waiting_past_it() -> None:
    clock = FakeClock()
    budget = Budget(max_calls=100, max_seconds=1.2, clock=clock, sleep=clock.sleep)
    budget.spend()
    budget.spend()
    budget.spend()  # at 1.0 s
    with pytest.raises(BudgetSpent, match=r"1\.2 s"):
        budget.spend()  # would start at 1.5 s
    assert budget.calls == 3
