"""Targets: accounts (explicit list and/or Organizations, ACTIVE only) x regions (list or enabled ones)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ..config import Config
from ..errors import CredentialsError, UsageError
from ..model import Target, TargetResult, TargetStatus
from .session import AccountAccess, SessionFactory

log = logging.getLogger(__name__)
_ROLE_ACCOUNT = re.compile(r"^arn:aws[a-z-]*:iam::([0-9]{12}):role/", re.ASCII)


class ScopeError(UsageError):
    """A run-time filter (--accounts, --exclude-accounts, --ou, --regions) names what the config does not cover, or
    leaves nothing: exit 2 before any target is touched."""


@dataclass
class TargetPlan:
    """The resolved targets, plus accounts whose regions could not be listed (reported as error targets)."""

    accounts: list[AccountAccess]
    targets: list[Target]
    errors: list[TargetResult] = field(default_factory=list)


@dataclass(frozen=True)
class Scope:
    """A shard's narrowing of the config's targets: these accounts (None: all of them) and, if given, only these
    regions. It only ever narrows: an account or region the config does not resolve to is never added.
    """

    accounts: frozenset[str] | None
    regions: frozenset[str] | None = None
    # The command line's narrowing (--exclude-accounts, --ou) and how it treats names the config does not resolve
    # to: a shard ignores them with a warning; the command line (strict) refuses them before any other call.
    exclude_accounts: frozenset[str] = frozenset()
    ous: frozenset[str] | None = None
    strict: bool = False


# The scope of the run in progress on this thread (a Lambda invocation that carries a shard). A context variable
# rather than a parameter: every workflow resolves its targets through resolve_targets(), and the shard must narrow
# all of them alike without each workflow learning about shards.
_scope: ContextVar[Scope | None] = ContextVar("fleetwarden_target_scope", default=None)


@contextmanager
def narrowed(scope: Scope | None) -> Iterator[None]:
    """Within the block, resolve_targets() keeps only the scope's accounts (and regions); None narrows nothing."""
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def current_scope() -> Scope | None:
    """The narrowing in effect (see narrowed())."""
    return _scope.get()


# The organization's accounts as list-shards listed them for the org-run in progress on this thread (a shard that
# read them from its run's prefix). A context variable for the same reason as _scope: every workflow resolves its
# accounts through resolve_accounts(), and none of them should learn where the listing came from.
_listing: ContextVar[tuple[dict[str, Any], ...] | None] = ContextVar("fleetwarden_org_listing", default=None)


@contextmanager
def org_listing(accounts: Iterable[dict[str, Any]] | None) -> Iterator[None]:
    """Within the block, resolve_accounts() takes the organization's accounts from `accounts` (as
    _organization_accounts() returns them: Organizations' account entries, each marked `_management`) instead of
    calling Organizations; None lists the organization as usual. The listing only replaces the Organizations
    calls: only ACTIVE accounts are used, explicit entries still win, and a scope still narrows."""
    token = _listing.set(tuple(dict(a) for a in accounts) if accounts is not None else None)
    try:
        yield
    finally:
        _listing.reset(token)


def organization_accounts(config: Config, factory: SessionFactory) -> list[dict[str, Any]]:
    """The organization's accounts, each marked `_management` (what list-shards records for its shards)."""
    return _organization_accounts(config, factory)


def error_text(exc: BaseException) -> str:
    """A one-line description of an AWS (or other) error for the RunReport."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "")
        return f"{op}: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def base_identity(factory: SessionFactory) -> dict[str, str]:
    """The base credentials' identity (`sts:GetCallerIdentity`, once), or a one-line CredentialsError (exit 2)."""
    try:
        return factory.caller_identity()
    except (NoCredentialsError, ClientError, BotoCoreError) as exc:
        raise _credentials_error(exc) from None


def _credentials_error(exc: BaseException) -> CredentialsError:
    if isinstance(exc, NoCredentialsError):
        return CredentialsError(
            "no AWS credentials found (environment, profile, SSO or instance role); nothing was done"
        )
    return CredentialsError(f"cannot use the AWS credentials: {error_text(exc)}; nothing was done")


# STS answered but could not serve the call: not a credentials problem. The run goes on (a guard must still halt
# what it can reach); what needs the identity decides for itself (verify_accounts, the lockout's self-check).
_STS_BUSY = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
    }
)


def preflight(factory: SessionFactory) -> None:
    """Before anything fans out: the base credentials answer sts:GetCallerIdentity (once, cached). None, expired
    or invalid ones, or an STS that cannot be reached: one line, exit 2, no other call (every target needs them:
    roles are assumed with them). STS throttling or a 5xx after the retries is logged and the run goes on."""
    try:
        factory.caller_identity()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if error.get("Code") in _STS_BUSY or status >= 500:
            # Not a warning line: what needs the identity reports its own failure (one line each, not two).
            log.info("pre-flight: sts:GetCallerIdentity failed (%s); going on without it", error_text(exc))
            return
        raise _credentials_error(exc) from None
    except (NoCredentialsError, BotoCoreError) as exc:
        raise _credentials_error(exc) from None


def _organization_accounts(config: Config, factory: SessionFactory) -> list[dict[str, Any]]:
    """The organization's accounts, each marked `_management` or not; a refusal is a one-line error."""
    supplied = _listing.get()
    if supplied is not None:
        return [dict(a) for a in supplied]
    client = factory.client("organizations", region=config.aws.sts_region)
    try:
        management = client.describe_organization()["Organization"]["MasterAccountId"]
        listed = [
            {**acct, "_management": acct["Id"] == management}
            for page in client.get_paginator("list_accounts").paginate()
            for acct in page["Accounts"]
        ]
    except NoCredentialsError:
        raise CredentialsError("no AWS credentials found to list the organization's accounts") from None
    except (ClientError, BotoCoreError) as exc:
        raise CredentialsError(
            f"cannot list the organization's accounts: {error_text(exc)}; nothing was done "
            "(organization: in the config needs organizations:DescribeOrganization and ListAccounts)"
        ) from None
    return listed


def resolve_accounts(config: Config, factory: SessionFactory) -> list[AccountAccess]:
    """Explicit accounts, merged with the ACTIVE accounts of the organization (an explicit entry wins)."""
    accounts: dict[str, AccountAccess] = {
        a.id: AccountAccess(a.id, a.role_arn, a.external_id, a.name) for a in config.accounts
    }
    if config.organization is not None:
        org = config.organization
        for acct in _organization_accounts(config, factory):
            if acct.get("Status") != "ACTIVE" or acct["Id"] in accounts:
                continue
            if acct["_management"]:
                if org.include_management_account:
                    accounts[acct["Id"]] = _management_access(acct, org.role_name, org.external_id, factory)
                continue
            role_arn = f"arn:aws:iam::{acct['Id']}:role/{org.role_name}"
            accounts[acct["Id"]] = AccountAccess(acct["Id"], role_arn, org.external_id, acct.get("Name"))
    if not accounts:
        # No accounts configured: work on the account of the current credentials.
        ident = base_identity(factory)
        accounts[ident["account_id"]] = AccountAccess(ident["account_id"], None, None, "current")
    for access in accounts.values():
        factory.register_account(access)
    return list(accounts.values())


def _management_access(
    acct: dict[str, Any], role_name: str, external_id: str | None, factory: SessionFactory
) -> AccountAccess:
    """The management account: through the current credentials when they are its own (fleetwarden runs there),
    else through the organization's role like any member (a hub in a dedicated account; the StackSet does not
    reach the management account, so the role is deployed there as a plain stack: docs/deploy.md)."""
    try:
        acting = base_identity(factory)["account_id"]
    except CredentialsError:
        acting = ""  # verify_accounts reports it; the role is the better guess meanwhile
    if acting == acct["Id"]:
        return AccountAccess(acct["Id"], None, None, acct.get("Name"))
    return AccountAccess(acct["Id"], f"arn:aws:iam::{acct['Id']}:role/{role_name}", external_id, acct.get("Name"))


def verify_accounts(accounts: list[AccountAccess], factory: SessionFactory) -> list[TargetResult]:
    """Check that the credentials used for each configured account act in that account: a role ARN must name
    the account's own id, and the current credentials (no role_arn) must belong to it (GetCallerIdentity, once).
    Each account that fails is an error target, never audited or acted on under the wrong label."""
    acting, unknown = "", ""
    if any(a.role_arn is None for a in accounts):
        try:
            acting = base_identity(factory)["account_id"]
        except CredentialsError as exc:
            # Those accounts cannot be vouched for; the accounts reached through roles go on without them.
            unknown = f"cannot tell which account the current credentials act in: {exc}"
    errors: list[TargetResult] = []
    for access in accounts:
        problem = None
        if access.role_arn is not None:
            match = _ROLE_ACCOUNT.match(access.role_arn)
            if match is None or match.group(1) != access.account_id:
                problem = f"role_arn {access.role_arn} is not a role of account {access.account_id}"
        elif unknown:
            problem = unknown
        elif acting != access.account_id:
            problem = (
                f"no role_arn, and the current credentials belong to account {acting}, not {access.account_id}; "
                "this account was skipped (give it a role_arn, or use credentials of that account)"
            )
        if problem:
            log.warning("account %s: %s", access.account_id, problem)
            errors.append(_account_error(access.account_id, problem))
    return errors


def _account_error(account_id: str, error: str) -> TargetResult:
    """An account none of whose regions is looked at, reported as one error target (region `*`)."""
    return TargetResult(account_id=account_id, region="*", status=TargetStatus.ERROR, error=error)


def enabled_regions(factory: SessionFactory, account_id: str, home_region: str) -> list[str]:
    """The regions enabled for an account (opt-in regions only when opted in)."""
    ec2 = factory.client("ec2", region=home_region, account_id=account_id)
    regions = ec2.describe_regions(
        AllRegions=False, Filters=[{"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}]
    )["Regions"]
    # The filter is repeated client-side: some endpoints (emulators, older partitions) ignore it.
    enabled = ("opt-in-not-required", "opted-in")
    return sorted(r["RegionName"] for r in regions if r.get("OptInStatus", "opt-in-not-required") in enabled)


def resolve_targets(
    config: Config,
    factory: SessionFactory,
    only_accounts: Iterable[str] | None = None,
    *,
    check_identity: bool = True,
) -> TargetPlan:
    """All (account, region) targets of the config; an account whose region list fails becomes an error.

    `only_accounts` and the scope in effect (narrowed()) keep a subset of the config's accounts and regions.
    `check_identity=False` skips the pre-flight: for a listing that calls nothing else when the config names its
    accounts and regions (the Step Functions map's first state; each shard's run does its own pre-flight).
    """
    if check_identity:
        preflight(factory)
    accounts = resolve_accounts(config, factory)
    if only_accounts is not None:
        wanted = set(only_accounts)
        accounts = [a for a in accounts if a.account_id in wanted]
    scope = _scope.get()
    if scope is not None:
        accounts = _narrow_accounts(config, factory, accounts, scope)
    refused = verify_accounts(accounts, factory)
    bad = {r.account_id for r in refused}
    accounts = [a for a in accounts if a.account_id not in bad]
    excluded = set(config.exclude_regions)
    plan = TargetPlan(accounts=accounts, targets=[], errors=refused)
    if config.regions == "all":
        from .fanout import fan_out  # fanout imports error_text from here

        # One DescribeRegions per account, concurrently, so set-up does not grow serially with accounts.
        by_account: dict[str, list[str]] = {}
        for outcome in fan_out(
            [a.account_id for a in accounts],
            lambda account_id: enabled_regions(factory, account_id, config.aws.sts_region),
            max_concurrency=config.aws.max_concurrency,
            label="regions",
        ):
            if outcome.value is not None:
                by_account[outcome.key] = outcome.value
            else:
                plan.errors.append(_account_error(outcome.key, f"cannot list enabled regions: {outcome.error}"))
    for access in accounts:
        if config.regions == "all":
            if access.account_id not in by_account:
                continue
            regions = by_account[access.account_id]
        else:
            regions = list(config.regions)
        if scope is not None and scope.regions is not None:
            regions = [r for r in regions if r in scope.regions]
            if not regions:
                continue  # the shard looks at none of this account's regions: not an error of the config
        kept = [Target(access.account_id, r) for r in regions if r not in excluded]
        if not kept:
            # An account with nothing to look at would pass as "all clear": it is an error target instead.
            removed = ", ".join(regions) or "-"
            plan.errors.append(
                _account_error(
                    access.account_id, f"no region left to check: exclude_regions removes every one of {removed}"
                )
            )
        plan.targets += kept
    return plan


def _narrow_accounts(
    config: Config, factory: SessionFactory, accounts: list[AccountAccess], scope: Scope
) -> list[AccountAccess]:
    """The accounts the scope keeps. It never widens: a named account the config does not resolve to is refused
    (strict, the command line) or ignored with a warning (a shard)."""
    known = {a.account_id for a in accounts}
    named = (scope.accounts or frozenset()) | scope.exclude_accounts
    unknown = named - known
    if unknown and scope.strict:
        raise ScopeError(
            f"account(s) {', '.join(sorted(unknown))} are not among the config's {len(known)} account(s): "
            "--accounts and --exclude-accounts narrow the config, never widen it; nothing was done"
        )
    if unknown:
        log.warning("shard accounts not in the config's accounts, ignored: %s", ", ".join(sorted(unknown)))
    kept = [a for a in accounts if a.account_id not in scope.exclude_accounts]
    if scope.accounts is not None:
        kept = [a for a in kept if a.account_id in scope.accounts]
    if scope.ous is not None:
        under = ou_accounts(config, factory, scope.ous)
        kept = [a for a in kept if a.account_id in under]
    if scope.strict and not kept:
        raise ScopeError("the account filters leave no account of the config to work on; nothing was done")
    return kept


def ou_accounts(config: Config, factory: SessionFactory, ous: Iterable[str]) -> set[str]:
    """Every account under these organizational units (or roots), nested OUs included, from the base credentials'
    organization (ListAccountsForParent, ListOrganizationalUnitsForParent); an unknown OU is a one-line error."""
    client = factory.client("organizations", region=config.aws.sts_region)
    accounts: set[str] = set()
    pending, seen = sorted(set(ous)), set()
    while pending:
        parent = pending.pop()
        if parent in seen:
            continue
        seen.add(parent)
        try:
            for page in client.get_paginator("list_accounts_for_parent").paginate(ParentId=parent):
                accounts.update(a["Id"] for a in page["Accounts"])
            for page in client.get_paginator("list_organizational_units_for_parent").paginate(ParentId=parent):
                pending.extend(ou["Id"] for ou in page["OrganizationalUnits"])
        except (ClientError, BotoCoreError) as exc:
            raise ScopeError(
                f"cannot list the accounts under {parent}: {error_text(exc)}; nothing was done "
                "(--ou needs organizations:ListAccountsForParent and ListOrganizationalUnitsForParent)"
            ) from None
    return accounts


# With the hub's own credentials: the organization's accounts, assume-role into them.
PERMISSIONS = (
    "organizations:DescribeOrganization",
    "organizations:ListAccounts",
    "sts:AssumeRole",
    "sts:GetCallerIdentity",
)
# An operator's `--ou` filter, with the operator's own credentials (the `operator` document).
OPERATOR_PERMISSIONS = {
    "ou": ("organizations:ListAccountsForParent", "organizations:ListOrganizationalUnitsForParent"),
}
# In each member account (through its role): `regions: all` lists the regions enabled there.
REGION_PERMISSIONS = ("ec2:DescribeRegions",)
