"""IamLockout against the moto server: lock, release exactly, never touch what is exempt.

Failures are produced on the real emulator, without Stubber: the emulator's fault injection fails one
PutUserPolicy call (HTTP 503, after botocore's retry), and a journal hook deletes a key between the `planned` entry
and the call (a real NoSuchEntity), as a concurrent change would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleetwarden.actions.iam_lockout import (
    DEACTIVATE_KEY,
    DENY_USER,
    LOCKOUT_POLICY,
    PERMISSIONS,
    REVOKE_POLICY,
    IamLockout,
    deny_all_document,
    self_principal,
)
from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import ActionOutcome, ActionResult, ExceptionKind, ExceptionRule, ExceptionSet, JournalEntry

ACCOUNT = "123456789012"  # moto's default account
MEMBER = "111111111111"
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


class Journal(list[JournalEntry]):
    """Collects journal entries as the lockout writes them."""


def _lockout(iam: Any, journal: Journal, account_id: str = ACCOUNT, **kwargs: Any) -> IamLockout:
    return IamLockout(iam, account_id=account_id, run_id="run-7", journal=journal.append, clock=lambda: NOW, **kwargs)


def _user(iam: Any, name: str, *, keys: int = 1, inactive: int = 0, password: bool = False) -> list[str]:
    """Create a user with `keys` access keys, the last `inactive` of them Inactive; returns the key ids."""
    iam.create_user(UserName=name)
    ids = [iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"] for _ in range(keys)]
    for key_id in ids[keys - inactive :] if inactive else []:
        iam.update_access_key(UserName=name, AccessKeyId=key_id, Status="Inactive")
    if password:
        iam.create_login_profile(UserName=name, Password="Correct-Horse-9")
    return ids


def _keys(iam: Any, user: str) -> dict[str, str]:
    return {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}


def _user_policies(iam: Any, user: str) -> list[str]:
    return list(iam.list_user_policies(UserName=user)["PolicyNames"])


def _role_policies(iam: Any, role: str) -> list[str]:
    return list(iam.list_role_policies(RoleName=role)["PolicyNames"])


def _role(iam: Any, name: str) -> None:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "*"}]}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))


def _by(results: list[ActionResult]) -> dict[tuple[str, str], ActionResult]:
    return {(r.action, r.resource_id): r for r in results}


def _snapshot(iam: Any) -> dict[str, Any]:
    """Everything the lockout could change, for before/after comparisons."""
    users = [u["UserName"] for u in iam.list_users()["Users"]]
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    state: dict[str, Any] = {f"user:{u}": (_keys(iam, u), _user_policies(iam, u)) for u in users}
    state.update({f"role:{r}": _role_policies(iam, r) for r in roles})
    return state


# -- deactivate mode and release ----------------------------------------------------------------------------
def test_lock_deactivates_active_keys_and_release_leaves_the_already_inactive_one(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    active, inactive = _user(iam, "alice", keys=2, inactive=1)
    journal = Journal()
    lockout = _lockout(iam, journal)

    results = _by(lockout.lock())

    assert _keys(iam, "alice") == {active: "Inactive", inactive: "Inactive"}
    assert results[(DEACTIVATE_KEY, active)].outcome is ActionOutcome.DONE
    assert results[(DEACTIVATE_KEY, inactive)].outcome is ActionOutcome.SKIPPED
    assert results[(DENY_USER, "alice")].outcome is ActionOutcome.DONE
    assert _user_policies(iam, "alice") == [LOCKOUT_POLICY]
    document = iam.get_user_policy(UserName="alice", PolicyName=LOCKOUT_POLICY)["PolicyDocument"]
    assert document == deny_all_document()
    # Planned, then final, under one id; the already inactive key is not journaled at all.
    changed = [e for e in journal if e.action == DEACTIVATE_KEY]
    assert [(e.resource_id, e.outcome) for e in changed] == [(active, "planned"), (active, "done")]
    assert changed[0].id == changed[1].id and changed[0].before == {"user_name": "alice", "status": "Active"}
    deny = [e for e in journal if e.action == DENY_USER]
    assert deny[-1].before == {"policy_name": LOCKOUT_POLICY, "existed": False}
    assert all(e.region == "global" and e.account_id == ACCOUNT and e.run_id == "run-7" for e in journal)

    lock_entries = list(journal)
    released = _by(lockout.release(lock_entries))

    assert _keys(iam, "alice") == {active: "Active", inactive: "Inactive"}
    assert _user_policies(iam, "alice") == []
    assert released[("reactivate-key", active)].outcome is ActionOutcome.DONE
    assert released[("remove-user-deny", "alice")].outcome is ActionOutcome.DONE
    assert {e.action for e in journal[len(lock_entries) :]} == {"reactivate-key", "remove-user-deny"}

    # A second release changes nothing and says why.
    again = lockout.release(lock_entries)
    assert {r.outcome for r in again} == {ActionOutcome.SKIPPED}
    assert _keys(iam, "alice") == {active: "Active", inactive: "Inactive"}
    assert _user_policies(iam, "alice") == []


def test_a_preexisting_policy_of_the_same_name_gets_its_document_back(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    _user(iam, "bob", keys=0)
    own = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    iam.put_user_policy(UserName="bob", PolicyName=LOCKOUT_POLICY, PolicyDocument=json.dumps(own))
    journal = Journal()
    lockout = _lockout(iam, journal)

    lockout.lock()
    assert iam.get_user_policy(UserName="bob", PolicyName=LOCKOUT_POLICY)["PolicyDocument"] == deny_all_document()
    assert journal[-1].before == {"policy_name": LOCKOUT_POLICY, "existed": True, "document": own}

    lockout.release(list(journal))
    assert iam.get_user_policy(UserName="bob", PolicyName=LOCKOUT_POLICY)["PolicyDocument"] == own


def test_repeat_lock_while_tripped_changes_nothing_and_release_still_restores(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    active, inactive = _user(iam, "alice", keys=2, inactive=1)
    journal = Journal()
    lockout = _lockout(iam, journal)
    lockout.lock()
    first = len(journal)

    second = lockout.lock()

    assert len(journal) == first, "a repeat finds everything locked and journals nothing"
    assert {r.outcome for r in second} == {ActionOutcome.SKIPPED}
    lockout.release(list(journal))
    assert _keys(iam, "alice") == {active: "Active", inactive: "Inactive"}
    assert _user_policies(iam, "alice") == []


def test_release_after_a_crash_between_planned_and_final(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    (key,) = _user(iam, "carol")
    journal = Journal()
    lockout = _lockout(iam, journal)
    lockout.lock()
    # Only the `planned` records survived: release still checks and restores.
    planned_only = [e for e in journal if e.outcome is ActionOutcome.PLANNED]

    lockout.release(planned_only)

    assert _keys(iam, "carol") == {key: "Active"}
    assert _user_policies(iam, "carol") == []


# -- what is never touched ----------------------------------------------------------------------------------
def test_exempt_user_exception_and_own_user_are_untouched(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    keys = {name: _user(iam, name) for name in ("alice", "breakglass", "contractor", "fleetwarden")}
    rule = ExceptionRule(
        id="exc-1",
        kind=ExceptionKind.LOCKOUT_EXEMPT,
        account_id=ACCOUNT,
        resource_id="contractor",
        reason="on call tonight",
        owner="ops",
        created_at=NOW,
    )
    journal = Journal()
    lockout = _lockout(
        iam,
        journal,
        exempt_users=["breakglass"],
        exceptions=ExceptionSet([rule], NOW),
        self_arn=f"arn:aws:iam::{ACCOUNT}:user/automation/fleetwarden",
    )
    before = _snapshot(iam)

    results = _by(lockout.lock())

    assert _keys(iam, "alice") == {keys["alice"][0]: "Inactive"}
    for name in ("breakglass", "contractor", "fleetwarden"):
        assert (_keys(iam, name), _user_policies(iam, name)) == before[f"user:{name}"], name
        assert results[(DENY_USER, name)].outcome is ActionOutcome.SKIPPED
        assert not [e for e in journal if e.resource_id in (name, keys[name][0])]
    assert "exempt_users" in results[(DENY_USER, "breakglass")].reason
    assert "exc-1" in results[(DENY_USER, "contractor")].reason
    assert "fleetwarden runs as" in results[(DENY_USER, "fleetwarden")].reason


def test_an_exception_for_another_account_does_not_exempt(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    (key,) = _user(iam, "contractor")
    rule = ExceptionRule(
        id="exc-2",
        kind=ExceptionKind.LOCKOUT_EXEMPT,
        account_id=MEMBER,
        resource_id="contractor",
        reason="elsewhere",
        owner="ops",
        created_at=NOW,
    )
    _lockout(iam, Journal(), exceptions=ExceptionSet([rule], NOW)).lock()
    assert _keys(iam, "contractor") == {key: "Inactive"}


def test_roles_in_a_member_account_revoke_sessions_except_own_exempt_and_service_linked(
    factory: SessionFactory,
) -> None:
    factory.register_account(AccountAccess(MEMBER, f"arn:aws:iam::{MEMBER}:role/FleetWarden"))
    iam = factory.client("iam", region="us-east-1", account_id=MEMBER)
    hub_iam = factory.client("iam", region="us-east-1")
    for role in ("FleetWarden", "ops-admin", "breakglass-role"):
        _role(iam, role)
    service_linked = iam.create_service_linked_role(AWSServiceName="autoscaling.amazonaws.com")["Role"]["RoleName"]
    hub_key = _user(hub_iam, "hub-user")
    member_key = _user(iam, "member-user")
    # The principal fleetwarden acts as in this account: its assumed FleetWarden role.
    self_arn = factory.client("sts", region="us-east-1", account_id=MEMBER).get_caller_identity()["Arn"]
    assert self_principal(self_arn, MEMBER) == (None, "FleetWarden")
    journal = Journal()
    lockout = _lockout(
        iam,
        journal,
        account_id=MEMBER,
        self_arn=self_arn,
        exempt_roles=["breakglass-role"],
        revoke_role_sessions=["FleetWarden", "ops-admin", "breakglass-role", service_linked, "not-here"],
    )

    results = _by(lockout.lock())

    assert _role_policies(iam, "ops-admin") == [REVOKE_POLICY]
    document = iam.get_role_policy(RoleName="ops-admin", PolicyName=REVOKE_POLICY)["PolicyDocument"]
    (statement,) = document["Statement"]
    assert (statement["Effect"], statement["Action"], statement["Resource"]) == ("Deny", "*", "*")
    assert statement["Condition"] == {"DateLessThan": {"aws:TokenIssueTime": "2025-03-04T05:06:07Z"}}
    for role in ("FleetWarden", "breakglass-role", service_linked):
        assert _role_policies(iam, role) == [], role
        assert results[("revoke-role-sessions", role)].outcome is ActionOutcome.SKIPPED
    assert "service-linked" in results[("revoke-role-sessions", service_linked)].reason
    assert "fleetwarden runs as" in results[("revoke-role-sessions", "FleetWarden")].reason
    assert results[("revoke-role-sessions", "not-here")].outcome is ActionOutcome.SKIPPED
    # Only the member account is locked: the hub's user is untouched.
    assert _keys(iam, "member-user") == {member_key[0]: "Inactive"}
    assert _keys(hub_iam, "hub-user") == {hub_key[0]: "Active"}
    assert _user_policies(hub_iam, "hub-user") == []

    # Release in the member account ignores entries of other accounts (the hub's here).
    foreign = [e.model_copy(update={"account_id": ACCOUNT}) for e in journal]
    _lockout(hub_iam, Journal()).release(foreign)
    assert _keys(iam, "member-user") == {member_key[0]: "Inactive"}
    lockout.release(list(journal))
    assert _role_policies(iam, "ops-admin") == []
    assert _keys(iam, "member-user") == {member_key[0]: "Active"}
    assert _user_policies(iam, "member-user") == []


@pytest.mark.parametrize(
    ("arn", "expected"),
    [
        (f"arn:aws:iam::{ACCOUNT}:user/ops/me", ("me", None)),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/FleetWarden/fleetwarden-run", (None, "FleetWarden")),
        (f"arn:aws:iam::{ACCOUNT}:role/service/FleetWarden", (None, "FleetWarden")),
        (f"arn:aws:sts::{MEMBER}:assumed-role/FleetWarden/s", (None, None)),  # another account
        (f"arn:aws:iam::{ACCOUNT}:root", (None, None)),
        (None, (None, None)),
    ],
)
def test_self_principal(arn: str | None, expected: tuple[str | None, str | None]) -> None:
    assert self_principal(arn, ACCOUNT) == expected


# -- delete mode --------------------------------------------------------------------------------------------
def test_delete_mode_deletes_keys_and_login_profile_and_release_says_so(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    _user(iam, "dave", keys=2, inactive=1, password=True)
    _user(iam, "erin", keys=1)  # no console password: NoSuchEntity is the normal answer
    journal = Journal()
    lockout = _lockout(iam, journal, mode="delete")

    results = lockout.lock()

    assert _keys(iam, "dave") == {} and _keys(iam, "erin") == {}
    with pytest.raises(ClientError) as caught:
        iam.get_login_profile(UserName="dave")
    assert caught.value.response["Error"]["Code"] == "NoSuchEntity"
    assert _user_policies(iam, "dave") == [LOCKOUT_POLICY]
    outcomes = {(r.action, r.resource_id): r.outcome for r in results if r.action == "delete-login-profile"}
    assert outcomes == {("delete-login-profile", "dave"): "done", ("delete-login-profile", "erin"): "skipped"}
    deleted = [e for e in journal if e.action == "delete-key" and e.outcome is ActionOutcome.DONE]
    assert len(deleted) == 3 and all(e.before["irreversible"] for e in deleted)

    released = lockout.release(list(journal))

    assert _user_policies(iam, "dave") == []
    cannot = [r for r in released if r.action == "restore-deleted"]
    assert len(cannot) == 4  # three keys and dave's login profile; erin had none
    assert all(r.outcome is ActionOutcome.SKIPPED and "cannot be restored" in r.reason for r in cannot)
    assert _keys(iam, "dave") == {}


def test_unknown_mode_is_refused(factory: SessionFactory) -> None:
    with pytest.raises(ValueError, match="mode"):
        _lockout(factory.client("iam", region="us-east-1"), Journal(), mode="shred")


# -- failures, one at a time --------------------------------------------------------------------------------
def test_a_failing_put_user_policy_does_not_stop_the_others(aws: EmulatorServer, factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    keys = {name: _user(iam, name)[0] for name in ("u1", "u2", "u3")}
    # The emulator fails the first PutUserPolicy call and all its retries: botocore reads the Config's
    # `max_attempts` as retries after the first attempt, so one call makes max_attempts + 1 requests.
    attempts = factory.settings.max_attempts + 1
    aws.client.set_faults([{"service": "iam", "action": "PutUserPolicy", "mode": "unavailable", "limit": attempts}])

    results = [r for r in _lockout(iam, Journal()).lock() if r.action == DENY_USER]

    failed = [r for r in results if r.outcome is ActionOutcome.FAILED]
    assert len(failed) == 1 and "Unavailable" in failed[0].reason
    assert sorted(r.resource_id for r in results if r.outcome is ActionOutcome.DONE) == sorted(
        set(keys) - {failed[0].resource_id}
    )
    assert all(_keys(iam, name) == {key: "Inactive"} for name, key in keys.items()), "every key still deactivated"


def test_a_key_deleted_during_the_lockout_fails_alone(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    keys = {name: _user(iam, name)[0] for name in ("u1", "u2", "u3")}
    journal = Journal()

    def journal_and_race(entry: JournalEntry) -> None:
        # A concurrent change: u2's key disappears between the `planned` record and the call.
        journal.append(entry)
        if entry.action == DEACTIVATE_KEY and entry.resource_id == keys["u2"] and entry.outcome == "planned":
            iam.delete_access_key(UserName="u2", AccessKeyId=keys["u2"])

    lockout = IamLockout(iam, account_id=ACCOUNT, run_id="run-7", journal=journal_and_race, clock=lambda: NOW)
    results = _by(lockout.lock())

    failed = results[(DEACTIVATE_KEY, keys["u2"])]
    assert failed.outcome is ActionOutcome.FAILED and "NoSuchEntity" in failed.reason
    final = [e for e in journal if e.resource_id == keys["u2"]][-1]
    assert final.outcome is ActionOutcome.FAILED and final.error and "NoSuchEntity" in final.error
    assert _keys(iam, "u1") == {keys["u1"]: "Inactive"} and _keys(iam, "u3") == {keys["u3"]: "Inactive"}
    assert all(_user_policies(iam, name) == [LOCKOUT_POLICY] for name in keys)
    # Release skips the failed change and restores the rest.
    lockout.release(list(journal))
    assert _keys(iam, "u1") == {keys["u1"]: "Active"} and _keys(iam, "u3") == {keys["u3"]: "Active"}


# -- plan ---------------------------------------------------------------------------------------------------
def test_plan_mutates_nothing(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    active, inactive = _user(iam, "alice", keys=2, inactive=1, password=True)
    _user(iam, "breakglass")
    _role(iam, "ops-admin")
    before = _snapshot(iam)
    journal = Journal()

    for mode in ("deactivate", "delete"):
        results = _by(
            _lockout(iam, journal, mode=mode, exempt_users=["breakglass"], revoke_role_sessions=["ops-admin"]).plan()
        )
        assert results[(DENY_USER, "alice")].outcome is ActionOutcome.PLANNED
        assert results[(DENY_USER, "breakglass")].outcome is ActionOutcome.SKIPPED
        assert results[("revoke-role-sessions", "ops-admin")].outcome is ActionOutcome.PLANNED

    deactivate = _by(_lockout(iam, journal).plan())
    assert deactivate[(DEACTIVATE_KEY, active)].outcome is ActionOutcome.PLANNED
    assert deactivate[(DEACTIVATE_KEY, inactive)].outcome is ActionOutcome.SKIPPED
    assert _snapshot(iam) == before
    assert iam.get_login_profile(UserName="alice")["LoginProfile"]["UserName"] == "alice"
    assert journal == []


def test_plan_release_mutates_nothing(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    (key,) = _user(iam, "alice")
    journal = Journal()
    lockout = _lockout(iam, journal)
    lockout.lock()
    locked = _snapshot(iam)
    entries = list(journal)

    planned = _by(lockout.plan_release(entries))

    assert planned[("reactivate-key", key)].outcome is ActionOutcome.PLANNED
    assert planned[("remove-user-deny", "alice")].outcome is ActionOutcome.PLANNED
    assert _snapshot(iam) == locked and journal == entries


def test_permissions_are_declared_for_each_call() -> None:
    assert set(PERMISSIONS) == {"lock", "release", "delete"}
    assert "iam:UpdateAccessKey" in PERMISSIONS["lock"] and "iam:DeleteUserPolicy" in PERMISSIONS["release"]
    assert {"iam:DeleteAccessKey", "iam:DeleteLoginProfile"} <= set(PERMISSIONS["delete"])


# -- IAM names are unique case-insensitively (issue 8, defect 8) ---------------------------------------------
def test_exempt_users_match_whatever_the_casing(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    (glass_key,) = _user(iam, "breakglass")
    (own_key,) = _user(iam, "fleetwarden")
    (contractor_key,) = _user(iam, "contractor")
    (alice_key,) = _user(iam, "alice")
    rule = ExceptionRule(
        id="exc-3",
        kind=ExceptionKind.LOCKOUT_EXEMPT,
        account_id=ACCOUNT,
        resource_id="Contractor",
        reason="on call tonight",
        owner="ops",
        created_at=NOW,
    )
    journal = Journal()
    lockout = _lockout(
        iam,
        journal,
        exempt_users=["BreakGlass"],
        exceptions=ExceptionSet([rule], NOW),
        self_arn=f"arn:aws:iam::{ACCOUNT}:user/FleetWarden",
    )

    results = _by(lockout.lock())

    assert _keys(iam, "breakglass") == {glass_key: "Active"}
    assert _user_policies(iam, "breakglass") == []
    assert _keys(iam, "fleetwarden") == {own_key: "Active"} and _user_policies(iam, "fleetwarden") == []
    assert _keys(iam, "contractor") == {contractor_key: "Active"} and _user_policies(iam, "contractor") == []
    assert "exempt_users" in results[(DENY_USER, "breakglass")].reason
    assert "fleetwarden runs as" in results[(DENY_USER, "fleetwarden")].reason
    assert "exc-3" in results[(DENY_USER, "contractor")].reason
    # Everyone else is still locked out.
    assert _keys(iam, "alice") == {alice_key: "Inactive"} and _user_policies(iam, "alice") == [LOCKOUT_POLICY]
    assert {e.resource_id for e in journal} == {"alice", alice_key}


def test_exempt_roles_and_own_role_match_whatever_the_casing(factory: SessionFactory) -> None:
    iam = factory.client("iam", region="us-east-1")
    for role in ("breakglass-role", "fleetwarden", "ops-admin", "contractor-role"):
        _role(iam, role)
    rule = ExceptionRule(
        id="exc-4",
        kind=ExceptionKind.LOCKOUT_EXEMPT,
        account_id=ACCOUNT,
        resource_id="CONTRACTOR-ROLE",
        reason="vendor access",
        owner="ops",
        created_at=NOW,
    )
    lockout = _lockout(
        iam,
        Journal(),
        exempt_roles=["BreakGlass-Role"],
        exceptions=ExceptionSet([rule], NOW),
        self_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/FleetWarden/run",
        revoke_role_sessions=["breakglass-role", "fleetwarden", "ops-admin", "contractor-role"],
    )

    results = _by(lockout.lock())

    for role in ("breakglass-role", "fleetwarden", "contractor-role"):
        assert _role_policies(iam, role) == [], role
        assert results[("revoke-role-sessions", role)].outcome is ActionOutcome.SKIPPED, role
    assert _role_policies(iam, "ops-admin") == [REVOKE_POLICY]
