"""The tag check as a pure function: exact keys, blank values, allowed values, created_by, grace, states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetwarden.checks.tags import (
    CANARY_DUPLICATE,
    CANARY_LOOKALIKE,
    TagCheck,
    canary_tags,
    has_canary_tags,
    is_canary,
    judge_canaries,
)
from fleetwarden.config import AuditConfig, CanaryConfig
from fleetwarden.model import Instance, finding_id

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GOOD = {"created_by": "alice", "department": "eng", "project": "web-1"}


def instance(
    tags: dict[str, str], *, age_minutes: int = 120, state: str = "running", instance_id: str = "i-0abc"
) -> Instance:
    return Instance(
        id=instance_id,
        account_id="111111111111",
        region="eu-west-1",
        state=state,
        instance_type="t3.micro",
        launch_time=NOW - timedelta(minutes=age_minutes),
        tags=tags,
    )


@pytest.fixture
def check() -> TagCheck:
    return TagCheck(
        AuditConfig(
            required_tags=["created_by", "department", "project"],
            tag_values={"department": ["sysops", "eng", "finance"], "project": "re:^[a-z0-9-]+$"},
            created_by_must_be_iam_user=True,
            grace_minutes=45,
        )
    )


def test_compliant_instance_has_no_finding(check: TagCheck) -> None:
    assert check.evaluate(instance(GOOD), {"alice"}, NOW) is None


def test_missing_and_blank_values_count_as_missing(check: TagCheck) -> None:
    finding = check.evaluate(instance({"created_by": "alice", "department": "   "}), {"alice"}, NOW)
    assert finding is not None
    assert finding.details["missing"] == ["department", "project"]
    assert finding.id == finding_id("tags", "111111111111", "eu-west-1", "i-0abc", "required-tags")
    assert finding.control == "required-tags"


def test_keys_are_case_sensitive_with_a_hint(check: TagCheck) -> None:
    finding = check.evaluate(instance({**GOOD, "Department": "eng", "department": ""}), {"alice"}, NOW)
    assert finding is not None
    assert finding.details["missing"] == ["department"]
    assert "case-sensitive" in finding.details["hints"][0]


def test_allowed_values_list_and_full_match_regex(check: TagCheck) -> None:
    finding = check.evaluate(instance({**GOOD, "department": "Eng", "project": "web_1"}), {"alice"}, NOW)
    assert finding is not None
    assert set(finding.details["invalid"]) == {"department", "project"}
    # re: is a full match: a valid prefix is not enough
    finding = check.evaluate(instance({**GOOD, "project": "web-1 extra"}), {"alice"}, NOW)
    assert finding is not None and "project" in finding.details["invalid"]


def test_created_by_must_name_an_iam_user_of_the_account(check: TagCheck) -> None:
    finding = check.evaluate(instance(GOOD), {"bob"}, NOW)
    assert finding is not None
    assert "not an IAM user" in finding.details["invalid"]["created_by"]
    relaxed = TagCheck(AuditConfig(created_by_must_be_iam_user=False))
    assert relaxed.evaluate(instance(GOOD), None, NOW) is None


def test_grace_period_from_launch_time(check: TagCheck) -> None:
    assert check.evaluate(instance({}, age_minutes=44), {"alice"}, NOW) is None
    assert check.evaluate(instance({}, age_minutes=45), {"alice"}, NOW) is not None


@pytest.mark.parametrize(
    ("state", "audited"),
    [
        ("pending", True),
        ("running", True),
        ("stopping", True),
        ("stopped", True),
        ("terminated", False),
        ("shutting-down", False),
    ],
)
def test_states_audited(check: TagCheck, state: str, audited: bool) -> None:
    assert (check.evaluate(instance({}, state=state), {"alice"}, NOW) is not None) is audited


def test_one_finding_per_instance_lists_everything(check: TagCheck) -> None:
    finding = check.evaluate(instance({"created_by": "mallory", "department": "hr"}), {"alice"}, NOW)
    assert finding is not None
    assert finding.details["missing"] == ["project"]
    assert set(finding.details["invalid"]) == {"created_by", "department"}
    assert "missing project" in finding.title and "invalid created_by, department" in finding.title


def test_canary_tags_substitute_the_region() -> None:
    config = AuditConfig(canary=CanaryConfig(tags={"Name": "api-canary-{region}"}))
    wanted = canary_tags(config, "eu-west-1")
    assert wanted == {"Name": "api-canary-eu-west-1"}
    assert is_canary(instance({"Name": "api-canary-eu-west-1"}, state="stopped"), wanted)
    assert not is_canary(instance({"Name": "api-canary-us-east-1"}, state="stopped"), wanted)
    assert canary_tags(AuditConfig(), "eu-west-1") is None


# -- canary identity (issue 8, defect 9) -------------------------------------------------------------------------
CANARY = {"Name": "api-canary-eu-west-1"}
GRACE = timedelta(minutes=45)


@pytest.mark.parametrize("state", ["pending", "running", "stopping"])
def test_a_canary_must_be_stopped(state: str) -> None:
    lookalike = instance(CANARY, state=state)
    assert has_canary_tags(lookalike, CANARY) and not is_canary(lookalike, CANARY)


def test_one_stopped_canary_is_the_canary_and_gets_no_finding() -> None:
    verdict = judge_canaries([instance(CANARY, state="stopped", instance_id="i-c")], NOW, GRACE)
    assert (verdict.canary, verdict.findings) == ("i-c", [])


def test_a_running_lookalike_is_not_the_canary_and_gets_a_finding() -> None:
    real = instance(CANARY, state="stopped", instance_id="i-c")
    fake = instance(CANARY, state="running", instance_id="i-x")
    verdict = judge_canaries([real, fake], NOW, GRACE)
    assert verdict.canary == "i-c" and verdict.lookalikes == ["i-x"]
    (finding,) = verdict.findings
    assert (finding.resource_id, finding.control, finding.check) == ("i-x", CANARY_LOOKALIKE, "tags")
    assert "tagged like this region's canary but is running" in finding.title
    # Within its grace period (a canary being set up) it is not reported yet.
    fresh = instance(CANARY, state="pending", instance_id="i-y", age_minutes=5)
    assert judge_canaries([real, fresh], NOW, GRACE).findings == []


def test_several_stopped_canaries_are_all_a_finding_and_none_is_the_canary() -> None:
    twins = [instance(CANARY, state="stopped", instance_id=i) for i in ("i-2", "i-1")]
    verdict = judge_canaries(twins, NOW, GRACE)
    assert verdict.canary is None
    assert [(f.resource_id, f.control) for f in verdict.findings] == [
        ("i-1", CANARY_DUPLICATE),
        ("i-2", CANARY_DUPLICATE),
    ]
    assert verdict.findings[0].details["stopped_canaries"] == ["i-1", "i-2"]


def test_terminated_instances_with_canary_tags_are_ignored() -> None:
    verdict = judge_canaries([instance(CANARY, state="terminated")], NOW, GRACE)
    assert (verdict.canary, verdict.stopped, verdict.lookalikes, verdict.findings) == (None, [], [], [])


def test_a_tag_value_that_stalls_a_pattern_counts_as_not_matching_in_bounded_time() -> None:
    # A pattern with nested alternation backtracks exponentially on a crafted value; the instance owner controls
    # the value. The check gives up after its timeout and flags the value instead of stalling the audit.
    import time

    config = AuditConfig(required_tags=["project"], tag_values={"project": "re:(a|aa)+"})
    hostile = instance({"project": "a" * 60 + "!"})
    started = time.process_time()
    finding = TagCheck(config).evaluate(hostile, None, NOW)
    assert time.process_time() - started < 5  # the stdlib's re would take years on this value
    assert finding is not None
    assert finding.details["invalid"]["project"].endswith(
        "could not be checked against (a|aa)+ in time (counted as not matching)"
    )
    # An ordinary value of the same pattern is judged normally.
    assert TagCheck(config).evaluate(instance({"project": "aaaa"}), None, NOW) is None
