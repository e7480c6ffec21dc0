"""ExceptionRule as a pure model: a rule cannot cover everything by accident (issue 8, defect 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from fleetwarden.model import ExceptionKind, ExceptionRule, ExceptionSet

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ACCOUNT = "111111111111"


def rule(**fields: Any) -> ExceptionRule:
    base: dict[str, Any] = {
        "id": "exc-1",
        "kind": "do-not-stop",
        "reason": "database primary",
        "owner": "dba",
        "created_at": NOW.isoformat(),
        "organization_wide": False,
    }
    return ExceptionRule.model_validate({**base, **fields})


def test_a_new_rule_without_scope_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a scope"):
        rule()


@pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
def test_a_blank_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValidationError, match="reason must not be blank"):
        rule(reason=reason, resource_id="i-1")


# Fullwidth and Arabic-Indic digits pass str.isdigit(); they are not account ids.
FULLWIDTH = "".join(chr(0xFF10 + int(d)) for d in "123456789012")
ARABIC_INDIC = "".join(chr(0x0660 + int(d)) for d in "123456789012")


@pytest.mark.parametrize("account", ["12345678901", "1234567890123", FULLWIDTH, ARABIC_INDIC, "12345678901a"])
def test_account_must_be_twelve_ascii_digits(account: str) -> None:
    with pytest.raises(ValidationError, match="12 digits"):
        rule(account_id=account)


def test_blank_scope_fields_do_not_count_as_scope() -> None:
    with pytest.raises(ValidationError, match="--region must not be blank"):
        rule(region=" ")


def test_check_and_item_narrow_snoozes_only() -> None:
    with pytest.raises(ValidationError, match="snoozes only"):
        rule(check="tags")
    snooze = rule(kind="snooze", check="tags")
    assert snooze.scope == {"check": "tags"}


def test_organization_wide_must_be_explicit_and_takes_no_scope() -> None:
    wide = rule(organization_wide=True)
    assert wide.covers_organization and not wide.covers_account and not wide.legacy_unscoped
    assert wide.breadth == "the whole organization"
    assert wide.matches(ExceptionKind.DO_NOT_STOP, now=NOW, account_id=ACCOUNT, region="eu-west-1", resource_id="i-9")
    with pytest.raises(ValidationError, match="organization-wide exception takes no scope, got --account"):
        rule(organization_wide=True, account_id=ACCOUNT)


def test_strict_context_refuses_an_unstated_organization_wide() -> None:
    data = {"id": "x", "kind": "do-not-stop", "reason": "r", "owner": "o", "created_at": NOW.isoformat()}
    with pytest.raises(ValidationError, match="organization-wide"):
        ExceptionRule.model_validate({**data, "resource_id": "i-1"}, context={"strict_scope": True})
    # Without the context the same row is a legacy one: accepted as written.
    assert ExceptionRule.model_validate({**data, "resource_id": "i-1"}).resource_id == "i-1"


def test_a_stored_rule_obeys_the_same_rules_when_read_back() -> None:
    good = rule(account_id=ACCOUNT)
    assert ExceptionRule.model_validate_json(good.model_dump_json()) == good
    tampered = good.model_dump(mode="json") | {"account_id": None}
    with pytest.raises(ValidationError, match="needs a scope"):
        ExceptionRule.model_validate_json(__import__("json").dumps(tampered))


def test_a_legacy_row_without_scope_is_honoured_and_flagged() -> None:
    # As written before `organization_wide` existed: no such key, no scope, even a blank reason.
    legacy = ExceptionRule.model_validate_json(
        '{"id": "exc-old", "kind": "do-not-stop", "reason": "", "owner": "me", "created_at": "2026-01-01T00:00:00Z"}'
    )
    assert legacy.organization_wide is None
    assert legacy.legacy_unscoped and legacy.covers_organization
    assert legacy.breadth == "the whole organization (stored without any scope)"
    assert legacy.matches(ExceptionKind.DO_NOT_STOP, now=NOW, account_id=ACCOUNT, region="us-east-1", resource_id="i")
    # Saved again, it stays a legacy row (it is not silently turned into a deliberate organization-wide one).
    again = ExceptionRule.model_validate_json(legacy.model_dump_json())
    assert again.legacy_unscoped


def test_covers_account_is_an_account_without_region_or_resource() -> None:
    assert rule(account_id=ACCOUNT).covers_account
    assert rule(account_id=ACCOUNT).breadth == f"all of account {ACCOUNT}"
    assert rule(kind="snooze", account_id=ACCOUNT, check="tags").covers_account
    assert not rule(account_id=ACCOUNT, region="eu-west-1").covers_account
    assert not rule(account_id=ACCOUNT, resource_id="i-1").covers_account
    assert not rule(region="eu-west-1").covers_account
    assert rule(resource_id="i-1").breadth is None


def test_broad_lists_active_account_and_organization_rules_by_kind() -> None:
    rules = [
        rule(id="acct", account_id=ACCOUNT),
        rule(id="org", kind="do-not-terminate", organization_wide=True),
        rule(id="one", resource_id="i-1"),
        rule(id="expired", account_id=ACCOUNT, expires_at=(NOW - timedelta(hours=1)).isoformat()),
    ]
    exceptions = ExceptionSet(rules, NOW)
    assert [r.id for r in exceptions.broad()] == ["acct", "org"]
    assert [r.id for r in exceptions.broad({ExceptionKind.DO_NOT_STOP})] == ["acct"]


def test_lockout_exempt_names_match_case_insensitively_other_kinds_exactly() -> None:
    exempt = rule(kind="lockout-exempt", account_id=ACCOUNT, resource_id="BreakGlass")
    assert exempt.matches(ExceptionKind.LOCKOUT_EXEMPT, now=NOW, account_id=ACCOUNT, resource_id="breakglass")
    assert not exempt.matches(ExceptionKind.LOCKOUT_EXEMPT, now=NOW, account_id=ACCOUNT, resource_id="breakglass2")
    assert not exempt.matches(
        ExceptionKind.LOCKOUT_EXEMPT, now=NOW, account_id="222222222222", resource_id="breakglass"
    )
    stop = rule(resource_id="i-0ABC")
    assert not stop.matches(ExceptionKind.DO_NOT_STOP, now=NOW, resource_id="i-0abc")
