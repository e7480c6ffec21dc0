"""The LookupEvents budget of one target (collect/cloudtrail.py): at most 2 calls in any second (two at once, then
wait), bounded in calls and seconds, with an injected clock."""

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
    assert clock.slept == [1.0]  # two at once (the API's burst), the third a second after the first
    with pytest.raises(BudgetSpent, match="3 LookupEvents call"):
        budget.spend()


def test_time_budget_stops_before_waiting_past_it() -> None:
    clock = FakeClock()
    budget = Budget(max_calls=100, max_seconds=1.2, clock=clock, sleep=clock.sleep)
    budget.spend()
    budget.spend()
    budget.spend()  # at 1.0 s
    budget.spend()  # at 1.0 s too: only one call in the second before it
    with pytest.raises(BudgetSpent, match=r"1\.2 s"):
        budget.spend()  # would start at 2.0 s
    assert budget.calls == 4
