"""The guard's IAM lockout of one account: reversible by default, undone exactly from the journal.

`deactivate` mode (the default) sets each Active access key Inactive and attaches an inline deny-all policy to each
user, which also blocks the console and temporary credentials derived from the user. `delete` mode (chosen
explicitly) adds the same deny, then deletes access keys and login profiles: that part cannot be undone. Listed
roles can get the AWS "revoke active sessions" deny (`aws:TokenIssueTime` before now).

The lockout never touches exempt users and roles, lockout-exempt exceptions, service-linked roles, or the principal
fleetwarden itself runs as. Each user, key and role is handled on its own: one failure never stops the others.

Every mutation is journaled twice under one entry id: `planned` (with the prior state) before the call, then its
final outcome. `release` reads those entries and restores the prior state: only keys that were Active become Active
again, deny policies come off (or a pre-existing policy of the same name gets its old document back).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError

from ..aws.targets import error_text
from ..model import ActionOutcome, ActionResult, ExceptionKind, ExceptionSet, JournalEntry, utcnow
from .base import JournaledActions

log = logging.getLogger(__name__)

# IAM is global: results and journal entries carry this in place of a region.
IAM_REGION = "global"
LOCKOUT_POLICY = "FleetWardenLockout"
REVOKE_POLICY = "FleetWardenRevokeSessions"

# Action names, as journaled and reported.
DENY_USER = "deny-user"
DEACTIVATE_KEY = "deactivate-key"
DELETE_KEY = "delete-key"
DELETE_LOGIN_PROFILE = "delete-login-profile"
REVOKE_ROLE_SESSIONS = "revoke-role-sessions"
REACTIVATE_KEY = "reactivate-key"
REMOVE_USER_DENY = "remove-user-deny"
REMOVE_ROLE_REVOKE = "remove-role-revoke"
RESTORE_DELETED = "restore-deleted"
LOCK_ACTIONS = frozenset({DENY_USER, DEACTIVATE_KEY, DELETE_KEY, DELETE_LOGIN_PROFILE, REVOKE_ROLE_SESSIONS})

PERMISSIONS: dict[str, tuple[str, ...]] = {
    "lock": (
        "iam:ListUsers",
        "iam:ListAccessKeys",
        "iam:UpdateAccessKey",
        "iam:GetUserPolicy",
        "iam:PutUserPolicy",
        "iam:GetRole",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
    ),
    "release": (
        "iam:ListAccessKeys",
        "iam:UpdateAccessKey",
        "iam:GetUserPolicy",
        "iam:PutUserPolicy",
        "iam:DeleteUserPolicy",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
        "iam:DeleteRolePolicy",
    ),
    "delete": (
        "iam:ListUsers",
        "iam:ListAccessKeys",
        "iam:DeleteAccessKey",
        "iam:DeleteLoginProfile",
        "iam:GetUserPolicy",
        "iam:PutUserPolicy",
    ),
}
# Parts of the above that only some configs use (`fleetwarden permissions` derives the policy from the config):
# key deactivation and its release only in mode deactivate; the role actions only with revoke_role_sessions.
DEACTIVATE_PERMISSIONS: frozenset[str] = frozenset({"iam:UpdateAccessKey"})
ROLE_PERMISSIONS: frozenset[str] = frozenset(
    {"iam:GetRole", "iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"}
)

_NO_SUCH_ENTITY = "NoSuchEntity"
_SERVICE_ROLE_PATH = "/aws-service-role/"
# arn:PARTITION:iam::ACCOUNT:user/path/NAME (moto's STS says `sts` for users), .../assumed-role/ROLE/SESSION,
# arn:PARTITION:iam::ACCOUNT:role/path/NAME
_USER_ARN = re.compile(r"^arn:[\w-]+:(?:iam|sts)::(\d{12}):user/(?:[^/]*/)*([^/]+)$")
_ASSUMED_ROLE_ARN = re.compile(r"^arn:[\w-]+:sts::(\d{12}):assumed-role/([^/]+)/[^/]+$")
_ROLE_ARN = re.compile(r"^arn:[\w-]+:iam::(\d{12}):role/(?:[^/]*/)*([^/]+)$")


def deny_all_document() -> dict[str, Any]:
    """The inline policy that locks a user out: deny everything, everywhere."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Sid": LOCKOUT_POLICY, "Effect": "Deny", "Action": "*", "Resource": "*"}],
    }


def revoke_sessions_document(now: datetime) -> dict[str, Any]:
    """AWS's "revoke active sessions" pattern: deny every request made with credentials issued before `now`."""
    issued = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": REVOKE_POLICY,
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"DateLessThan": {"aws:TokenIssueTime": issued}},
            }
        ],
    }


def _is_ours(document: Any, sid: str) -> bool:
    """True if a policy document is one fleetwarden wrote (every statement carries our Sid)."""
    if not isinstance(document, dict):
        return False
    raw = document.get("Statement")
    statements: list[Any] = [raw] if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    return bool(statements) and all(isinstance(s, dict) and s.get("Sid") == sid for s in statements)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def self_principal(self_arn: str | None, account_id: str) -> tuple[str | None, str | None]:
    """(user name, role name) of the principal fleetwarden runs as, when it lives in `account_id`."""
    if not self_arn:
        return None, None
    for pattern, kind in ((_USER_ARN, "user"), (_ASSUMED_ROLE_ARN, "role"), (_ROLE_ARN, "role")):
        match = pattern.match(self_arn)
        if match and match.group(1) == account_id:
            return (match.group(2), None) if kind == "user" else (None, match.group(2))
    return None, None


@dataclass(frozen=True)
class _PolicyState:
    """An inline policy as found: whether it exists and its document."""

    existed: bool
    document: dict[str, Any] | None = None

    def as_before(self, policy_name: str) -> dict[str, Any]:
        before: dict[str, Any] = {"policy_name": policy_name, "existed": self.existed}
        if self.existed:
            before["document"] = self.document
        return before


class IamLockout(JournaledActions):
    """Locks the IAM users (and listed roles) of one account out, and releases exactly what it locked."""

    def __init__(
        self,
        client: Any,
        *,
        account_id: str,
        run_id: str,
        workflow: str = "guard",
        journal: Callable[[JournalEntry], None],
        clock: Callable[[], datetime] = utcnow,
        mode: Literal["deactivate", "delete"] = "deactivate",
        exempt_users: Collection[str] = (),
        exempt_roles: Collection[str] = (),
        revoke_role_sessions: Collection[str] = (),
        self_arn: str | None = None,
        exceptions: ExceptionSet | None = None,
    ) -> None:
        if mode not in ("deactivate", "delete"):
            raise ValueError(f"lockout mode must be 'deactivate' or 'delete', not {mode!r}")
        self.client = client
        self.account_id = account_id
        self.region = IAM_REGION  # IAM is global: its journal entries and results say so
        self.run_id = run_id
        self.workflow = workflow
        self.journal = journal
        self.clock = clock
        self.mode = mode
        # IAM user and role names are unique case-insensitively: `BreakGlass` in the config is the user `breakglass`.
        self.exempt_users = frozenset(_fold(u) for u in exempt_users)
        self.exempt_roles = frozenset(_fold(r) for r in exempt_roles)
        first_spelling: dict[str, str] = {}
        for role in revoke_role_sessions:
            first_spelling.setdefault(_fold(role), role)
        self.revoke_role_sessions = list(first_spelling.values())
        self.self_arn = self_arn
        self_user, self_role = self_principal(self_arn, account_id)
        self.self_user = _fold(self_user) if self_user else None
        self.self_role = _fold(self_role) if self_role else None
        self.exceptions = exceptions

    # -- public API -----------------------------------------------------------------------------------
    def plan(self) -> list[ActionResult]:
        """What `lock()` would do: `planned` or `skipped` (with the reason) per user, key and role; no mutation."""
        return self._lock(apply=False)

    def lock(self) -> list[ActionResult]:
        """Lock the account out, journaling each change with the prior state."""
        return self._lock(apply=True)

    def plan_release(self, entries: Sequence[JournalEntry]) -> list[ActionResult]:
        """What `release(entries)` would do; no mutation."""
        return self._release(entries, apply=False)

    def release(self, entries: Sequence[JournalEntry]) -> list[ActionResult]:
        """Undo what the journal says this account's lockout did; entries of other accounts are ignored.

        Idempotent: whatever is already back to its prior state is skipped.
        """
        return self._release(entries, apply=True)

    # -- lock -----------------------------------------------------------------------------------------
    def _lock(self, *, apply: bool) -> list[ActionResult]:
        results: list[ActionResult] = []
        try:
            users = list(self._users())
        except ClientError as exc:
            # Without the user list nothing can be locked; the roles are still handled below.
            results.append(self._result(DENY_USER, "*", ActionOutcome.FAILED, f"cannot list users: {error_text(exc)}"))
            users = []
        for user in users:
            results.extend(self._lock_user(user["UserName"], apply=apply))
        for role in self.revoke_role_sessions:
            results.append(self._revoke_role(role, apply=apply))
        return results

    def _users(self) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_users").paginate():
            yield from page.get("Users", [])

    def _user_exemption(self, user: str) -> str | None:
        if _fold(user) == self.self_user:
            return f"the principal fleetwarden runs as ({self.self_arn})"
        if _fold(user) in self.exempt_users:
            return "exempt user (guard.lockout.exempt_users)"
        rule = self._exception(user)
        return f"lockout-exempt exception {rule}" if rule else None

    def _exception(self, name: str) -> str | None:
        if self.exceptions is None:
            return None
        # ExceptionRule matches lockout-exempt resource ids (IAM names) case-insensitively.
        rule = self.exceptions.find(ExceptionKind.LOCKOUT_EXEMPT, account_id=self.account_id, resource_id=name)
        return f"{rule.id} ({rule.reason})" if rule else None

    def _lock_user(self, user: str, *, apply: bool) -> list[ActionResult]:
        exemption = self._user_exemption(user)
        if exemption:
            return [self._result(DENY_USER, user, ActionOutcome.SKIPPED, exemption)]
        # The deny comes first: it also blocks sessions already derived from the keys, which deactivating cannot.
        results = [self._deny_user(user, apply=apply)]
        try:
            keys = list(self._keys(user))
        except ClientError as exc:
            action = DELETE_KEY if self.mode == "delete" else DEACTIVATE_KEY
            why = f"cannot list access keys of {user}: {error_text(exc)}"
            return [*results, self._result(action, user, ActionOutcome.FAILED, why)]
        for key in keys:
            if self.mode == "delete":
                results.append(self._delete_key(user, key["AccessKeyId"], str(key.get("Status", "")), apply=apply))
            else:
                results.append(self._deactivate_key(user, key["AccessKeyId"], str(key.get("Status", "")), apply=apply))
        if self.mode == "delete":
            results.append(self._delete_login_profile(user, apply=apply))
        return results

    def _keys(self, user: str) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_access_keys").paginate(UserName=user):
            yield from page.get("AccessKeyMetadata", [])

    def _deny_user(self, user: str, *, apply: bool) -> ActionResult:
        document = deny_all_document()
        try:
            state = self._user_policy(user, LOCKOUT_POLICY)
        except ClientError as exc:
            return self._result(DENY_USER, user, ActionOutcome.FAILED, error_text(exc))
        if state.existed and state.document == document:
            return self._result(DENY_USER, user, ActionOutcome.SKIPPED, f"{LOCKOUT_POLICY} already attached")
        note = f"replaces an existing {LOCKOUT_POLICY} policy" if state.existed else ""
        if not apply:
            return self._result(DENY_USER, user, ActionOutcome.PLANNED, _join(f"attach {LOCKOUT_POLICY}", note))

        def call() -> None:
            self.client.put_user_policy(UserName=user, PolicyName=LOCKOUT_POLICY, PolicyDocument=json.dumps(document))

        return self._mutate(DENY_USER, user, state.as_before(LOCKOUT_POLICY), {"attached": True}, call, note)

    def _deactivate_key(self, user: str, key_id: str, status: str, *, apply: bool) -> ActionResult:
        if status != "Active":
            # Not journaled: release must leave a key that was already inactive as it is.
            return self._result(DEACTIVATE_KEY, key_id, ActionOutcome.SKIPPED, f"{user}: already {status or 'unknown'}")
        if not apply:
            return self._result(DEACTIVATE_KEY, key_id, ActionOutcome.PLANNED, f"{user}: Active -> Inactive")

        def call() -> None:
            self.client.update_access_key(UserName=user, AccessKeyId=key_id, Status="Inactive")

        before = {"user_name": user, "status": "Active"}
        return self._mutate(DEACTIVATE_KEY, key_id, before, {"status": "Inactive"}, call, f"user {user}")

    def _delete_key(self, user: str, key_id: str, status: str, *, apply: bool) -> ActionResult:
        if not apply:
            why = f"{user}: delete {status or 'unknown'} key (irreversible)"
            return self._result(DELETE_KEY, key_id, ActionOutcome.PLANNED, why)

        def call() -> None:
            self.client.delete_access_key(UserName=user, AccessKeyId=key_id)

        before = {"user_name": user, "status": status, "irreversible": True}
        return self._mutate(DELETE_KEY, key_id, before, {"deleted": True}, call, f"user {user}; irreversible")

    def _delete_login_profile(self, user: str, *, apply: bool) -> ActionResult:
        if not apply:
            why = "delete the console password if any (irreversible)"
            return self._result(DELETE_LOGIN_PROFILE, user, ActionOutcome.PLANNED, why)
        entry = self._entry(DELETE_LOGIN_PROFILE, user, {"irreversible": True})
        self.journal(entry)
        try:
            self.client.delete_login_profile(UserName=user)
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:  # no console password: the usual case for API-only users
                self.journal(self._final(entry, ActionOutcome.SKIPPED, {}, "no login profile"))
                return self._result(DELETE_LOGIN_PROFILE, user, ActionOutcome.SKIPPED, "no login profile")
            self.journal(self._final(entry, ActionOutcome.FAILED, {}, error_text(exc)))
            return self._result(DELETE_LOGIN_PROFILE, user, ActionOutcome.FAILED, error_text(exc))
        self.journal(self._final(entry, ActionOutcome.DONE, {"deleted": True}))
        return self._result(DELETE_LOGIN_PROFILE, user, ActionOutcome.DONE, "irreversible")

    def _revoke_role(self, role: str, *, apply: bool) -> ActionResult:
        if _fold(role) == self.self_role:
            why = f"the principal fleetwarden runs as ({self.self_arn})"
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.SKIPPED, why)
        if _fold(role) in self.exempt_roles:
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.SKIPPED, "exempt role (guard.lockout)")
        rule = self._exception(role)
        if rule:
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.SKIPPED, f"lockout-exempt exception {rule}")
        try:
            path = str(self.client.get_role(RoleName=role)["Role"].get("Path", "/"))
            state = self._role_policy(role, REVOKE_POLICY)
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:  # a listed role need not exist in every account
                return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.SKIPPED, "no such role in this account")
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.FAILED, error_text(exc))
        if path.startswith(_SERVICE_ROLE_PATH):
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.SKIPPED, "service-linked role")
        document = revoke_sessions_document(self.clock())
        issued = document["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        what = f"deny sessions issued before {issued}"
        if not apply:
            return self._result(REVOKE_ROLE_SESSIONS, role, ActionOutcome.PLANNED, what)

        def call() -> None:
            self.client.put_role_policy(RoleName=role, PolicyName=REVOKE_POLICY, PolicyDocument=json.dumps(document))

        # A repeat while tripped moves the cut-off forward (revoking sessions taken since); release still restores
        # the state before the first one, since it keeps the earliest entry per role.
        return self._mutate(REVOKE_ROLE_SESSIONS, role, state.as_before(REVOKE_POLICY), {"issued_before": issued}, call)

    def _user_policy(self, user: str, name: str) -> _PolicyState:
        try:
            response = self.client.get_user_policy(UserName=user, PolicyName=name)
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:
                return _PolicyState(False)
            raise
        return _PolicyState(True, _document(response.get("PolicyDocument")))

    def _role_policy(self, role: str, name: str) -> _PolicyState:
        try:
            response = self.client.get_role_policy(RoleName=role, PolicyName=name)
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:
                return _PolicyState(False)
            raise
        return _PolicyState(True, _document(response.get("PolicyDocument")))

    # -- release --------------------------------------------------------------------------------------
    def _release(self, entries: Sequence[JournalEntry], *, apply: bool) -> list[ActionResult]:
        results: list[ActionResult] = []
        for entry in _lockout_changes(entries, self.account_id):
            if entry.action == DEACTIVATE_KEY:
                results.append(self._reactivate_key(entry, apply=apply))
            elif entry.action == DENY_USER:
                results.append(self._restore_user_policy(entry, apply=apply))
            elif entry.action == REVOKE_ROLE_SESSIONS:
                results.append(self._restore_role_policy(entry, apply=apply))
            elif entry.outcome is ActionOutcome.DONE:  # delete-key, delete-login-profile
                what = "access key" if entry.action == DELETE_KEY else "login profile"
                owner = entry.before.get("user_name", entry.resource_id)
                why = f"{what} of {owner} was deleted (lockout mode delete): it cannot be restored"
                results.append(self._result(RESTORE_DELETED, entry.resource_id, ActionOutcome.SKIPPED, why))
        return results

    def _reactivate_key(self, entry: JournalEntry, *, apply: bool) -> ActionResult:
        key_id, user = entry.resource_id, str(entry.before.get("user_name", ""))
        if entry.before.get("status") != "Active":
            return self._result(REACTIVATE_KEY, key_id, ActionOutcome.SKIPPED, f"{user}: was not Active before")
        try:
            status = next((str(k.get("Status")) for k in self._keys(user) if k["AccessKeyId"] == key_id), None)
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:
                return self._result(REACTIVATE_KEY, key_id, ActionOutcome.SKIPPED, f"user {user} no longer exists")
            return self._result(REACTIVATE_KEY, key_id, ActionOutcome.FAILED, error_text(exc))
        if status is None:
            return self._result(REACTIVATE_KEY, key_id, ActionOutcome.SKIPPED, f"{user}: key no longer exists")
        if status == "Active":
            return self._result(REACTIVATE_KEY, key_id, ActionOutcome.SKIPPED, f"{user}: already Active")
        if not apply:
            return self._result(REACTIVATE_KEY, key_id, ActionOutcome.PLANNED, f"{user}: {status} -> Active")

        def call() -> None:
            self.client.update_access_key(UserName=user, AccessKeyId=key_id, Status="Active")

        before = {"user_name": user, "status": status, "lockout_entry": entry.id}
        return self._mutate(REACTIVATE_KEY, key_id, before, {"status": "Active"}, call, f"user {user}")

    def _restore_user_policy(self, entry: JournalEntry, *, apply: bool) -> ActionResult:
        user = entry.resource_id

        def current() -> _PolicyState:
            return self._user_policy(user, LOCKOUT_POLICY)

        def put(document: dict[str, Any]) -> None:
            self.client.put_user_policy(UserName=user, PolicyName=LOCKOUT_POLICY, PolicyDocument=json.dumps(document))

        def delete() -> None:
            self.client.delete_user_policy(UserName=user, PolicyName=LOCKOUT_POLICY)

        return self._restore_policy(REMOVE_USER_DENY, entry, LOCKOUT_POLICY, current, put, delete, apply=apply)

    def _restore_role_policy(self, entry: JournalEntry, *, apply: bool) -> ActionResult:
        role = entry.resource_id

        def current() -> _PolicyState:
            return self._role_policy(role, REVOKE_POLICY)

        def put(document: dict[str, Any]) -> None:
            self.client.put_role_policy(RoleName=role, PolicyName=REVOKE_POLICY, PolicyDocument=json.dumps(document))

        def delete() -> None:
            self.client.delete_role_policy(RoleName=role, PolicyName=REVOKE_POLICY)

        return self._restore_policy(REMOVE_ROLE_REVOKE, entry, REVOKE_POLICY, current, put, delete, apply=apply)

    def _restore_policy(
        self,
        action: str,
        entry: JournalEntry,
        name: str,
        current: Callable[[], _PolicyState],
        put: Callable[[dict[str, Any]], None],
        delete: Callable[[], None],
        *,
        apply: bool,
    ) -> ActionResult:
        """Put back the policy `name` as the lockout entry found it: absent, or its previous document."""
        resource = entry.resource_id
        try:
            now = current()
        except ClientError as exc:
            if _error_code(exc) == _NO_SUCH_ENTITY:  # the user or role itself is gone
                return self._result(action, resource, ActionOutcome.SKIPPED, f"{resource} no longer exists")
            return self._result(action, resource, ActionOutcome.FAILED, error_text(exc))
        if not now.existed:
            return self._result(action, resource, ActionOutcome.SKIPPED, f"{name} already removed")
        if not _is_ours(now.document, name):
            why = f"{name} was changed since the lockout; left as is"
            return self._result(action, resource, ActionOutcome.SKIPPED, why)
        previous = entry.before.get("document") if entry.before.get("existed") else None
        # A previous document that is itself ours comes from an earlier lockout whose entries were not passed in.
        restore = previous if isinstance(previous, dict) and not _is_ours(previous, name) else None
        what = f"restore the previous {name} policy" if restore else f"remove {name}"
        if not apply:
            return self._result(action, resource, ActionOutcome.PLANNED, what)
        before = {"policy_name": name, "existed": True, "document": now.document, "lockout_entry": entry.id}
        if restore is not None:
            document = restore
            return self._mutate(action, resource, before, {"restored": True}, lambda: put(document), what)
        return self._mutate(action, resource, before, {"existed": False}, delete, what)

    # -- journal and results --------------------------------------------------------------------------
    def _mutate(
        self,
        action: str,
        resource_id: str,
        before: dict[str, Any],
        after: dict[str, Any],
        call: Callable[[], None],
        note: str = "",
    ) -> ActionResult:
        """Journal `planned`, make the call, journal `done` or `failed` (by error code); one result."""
        entry = self._entry(action, resource_id, before)
        self.journal(entry)
        try:
            call()
        except ClientError as exc:
            log.info("%s %s in %s failed: %s", action, resource_id, self.account_id, error_text(exc))
            self.journal(self._final(entry, ActionOutcome.FAILED, {}, error_text(exc)))
            return self._result(action, resource_id, ActionOutcome.FAILED, error_text(exc))
        self.journal(self._final(entry, ActionOutcome.DONE, after))
        return self._result(action, resource_id, ActionOutcome.DONE, note)

    def _final(
        self, entry: JournalEntry, outcome: ActionOutcome, after: dict[str, Any], error: str | None = None
    ) -> JournalEntry:
        return entry.model_copy(update={"outcome": outcome, "at": self.clock(), "after": after, "error": error})


def _lockout_changes(entries: Sequence[JournalEntry], account_id: str) -> list[JournalEntry]:
    """The lockout changes to undo in one account: the earliest one per (action, resource), in journal order.

    An entry counts when its last record is `done`, or still `planned` (the run died during the call, so the
    change may have been made; release checks the current state before acting). `failed` and `skipped` changed
    nothing. The earliest change per resource holds the state from before the trip.
    """
    last: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.account_id == account_id and entry.action in LOCK_ACTIONS:
            last[entry.id] = entry
    changes: dict[tuple[str, str], JournalEntry] = {}
    for entry in sorted(last.values(), key=lambda e: e.at):
        if entry.outcome in (ActionOutcome.DONE, ActionOutcome.PLANNED):
            changes.setdefault((entry.action, entry.resource_id), entry)
    return list(changes.values())


def _document(raw: Any) -> dict[str, Any] | None:
    """A policy document as boto3 returns it (already decoded), or a JSON string from elsewhere."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _fold(name: str) -> str:
    """An IAM user or role name as IAM compares it: case-insensitively (names are ASCII)."""
    return name.lower()


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
