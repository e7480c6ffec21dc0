"""The runaway check's triggers as pure functions: strictly greater, per-account overrides, org-wide, spend."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetwarden.checks.runaway import RunawayCheck, count_trigger, limits_for, org_trigger, spend_triggers
from fleetwarden.config import parse_config
from fleetwarden.model import Severity

CONFIG = parse_config(
    """
accounts:
  - {id: "111111111111", guard: {max_running_instances: 2, spend_max_usd: 10}}
  - {id: "222222222222"}
guard:
  max_running_instances: 4
  max_running_instances_org: 5
  spend: {max_usd: 100, sources: [burn-rate]}
""",
    "t.yaml",
)


def test_count_is_strictly_greater_with_per_account_overrides() -> None:
    assert count_trigger(CONFIG, "222222222222", 4) is None  # at the limit: fine
    trigger = count_trigger(CONFIG, "222222222222", 5)
    assert trigger is not None and (trigger.value, trigger.limit) == (5, 4)
    assert count_trigger(CONFIG, "111111111111", 3) is not None  # its own limit is 2
    assert limits_for(CONFIG, "333333333333").max_running == 4  # not listed: the default


def test_org_limit_counts_every_account() -> None:
    assert org_trigger(CONFIG, {"111111111111": 2, "222222222222": 3}) is None
    trigger = org_trigger(CONFIG, {"111111111111": 2, "222222222222": 4})
    assert trigger is not None and trigger.kind == "org-count" and trigger.value == 6


def test_spend_any_source_over_the_limit_trips() -> None:
    readings = [("burn-rate", 50.0, ""), ("cloudwatch", 150.0, "rise since 06:00")]
    fired = spend_triggers(CONFIG, "222222222222", readings)
    assert [(t.source, t.value) for t in fired] == [("cloudwatch", 150.0)]
    assert [t.source for t in spend_triggers(CONFIG, "111111111111", readings)] == ["burn-rate", "cloudwatch"]
    assert spend_triggers(parse_config("{}", "t.yaml"), "222222222222", readings) == []  # no spend limit


def test_one_finding_per_tripped_account() -> None:
    triggers = [count_trigger(CONFIG, "222222222222", 9)]
    finding = RunawayCheck.finding("222222222222", [t for t in triggers if t], now=datetime.now(UTC))
    assert finding.check == "runaway" and finding.resource_id == "222222222222" and finding.region == "global"
    assert finding.severity is Severity.CRITICAL
    assert "9 running+pending instances > limit 4" in finding.title
