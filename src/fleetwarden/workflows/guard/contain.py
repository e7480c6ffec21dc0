"""Containment beyond the halt and the lockout (docs/guard.md "Containment"): the quarantine SCP of a tripped
account, and the sweep of the regions it has enabled that the config does not list."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ...actions.quarantine import SCP_MAX_CHARS, Quarantine, policy_content, role_arn_of
from ...aws.fanout import fan_out
from ...aws.session import AccountAccess, reaching
from ...aws.targets import enabled_regions, error_text
from ...collect.ec2 import iter_instances
from ...model import ActionOutcome, ActionResult, Instance, Target, TargetResult, TargetStatus
from ..base import RunContext
from .halt import WORKFLOW, Halter

ACTIVE_STATES = ("pending", "running")


def organizations_client(ctx: RunContext) -> Any:
    """Organizations in the management account (or the delegated administrator): through quarantine.role_arn,
    else with the current credentials."""
    settings = ctx.config.guard.quarantine
    region = ctx.config.aws.sts_region
    if settings.role_arn is None:
        return ctx.factory.client("organizations", region=region)
    account_id = settings.role_arn.split(":")[4]
    factory = reaching(ctx.factory, AccountAccess(account_id, settings.role_arn, settings.external_id, "quarantine"))
    return factory.client("organizations", region=region, account_id=account_id)


def exempt_arns(ctx: RunContext) -> list[str]:
    """Who the quarantine never denies: fleetwarden's own roles (the member roles it assumes, the principal it runs
    as), the lockout's exempt users and roles, and the break-glass principals. Raises if its own identity is
    unknown: a policy that might deny fleetwarden itself is never attached."""
    config = ctx.config
    arns: list[str] = list(config.guard.quarantine.exempt_principals)
    if config.organization is not None:
        name = config.organization.role_name
        arns += [f"arn:aws:iam::*:role/{name}", f"arn:aws:iam::*:role/*/{name}"]
    arns += [a.role_arn for a in config.accounts if a.role_arn]
    arns += role_arn_of(ctx.factory.caller_identity()["arn"])
    lockout = config.guard.lockout
    arns += [f"arn:aws:iam::*:role/{r}" for r in lockout.exempt_roles]
    arns += [f"arn:aws:iam::*:user/{u}" for u in lockout.exempt_users]
    return sorted(set(arns))


def quarantine(ctx: RunContext, account_id: str, *, apply: bool) -> list[ActionResult]:
    """Attach the quarantine SCP to one tripped account (a dry run says it would)."""
    settings = ctx.config.guard.quarantine
    try:
        exempt = exempt_arns(ctx)
    except (ClientError, BotoCoreError) as exc:
        return [_failed(account_id, f"not quarantined: fleetwarden's own identity is unknown ({error_text(exc)})")]
    if len(policy_content(exempt)) > SCP_MAX_CHARS:
        return [_failed(account_id, f"not quarantined: the policy with {len(exempt)} exempt principals is over "
                        f"Organizations' {SCP_MAX_CHARS} characters; use wildcards in exempt_principals")]  # fmt: skip
    try:
        client = organizations_client(ctx)
    except (ClientError, BotoCoreError) as exc:
        return [_failed(account_id, f"not quarantined: {error_text(exc)}")]
    return _quarantine(ctx, client, account_id, settings.policy_name, exempt).ensure(apply=apply)


def release_quarantine(ctx: RunContext, account_id: str, entries: list[Any], *, apply: bool) -> list[ActionResult]:
    """Detach what the trip's journal says the guard attached (whatever the config says now)."""
    if not any(e.action == "quarantine" for e in entries):
        return []
    try:
        client = organizations_client(ctx)
    except (ClientError, BotoCoreError) as exc:
        return [_failed(account_id, f"quarantine not released: {error_text(exc)}", "unquarantine")]
    return _quarantine(ctx, client, account_id, ctx.config.guard.quarantine.policy_name, []).release(
        entries, apply=apply
    )


def _quarantine(ctx: RunContext, client: Any, account_id: str, name: str, exempt: list[str]) -> Quarantine:
    return Quarantine(
        client,
        account_id=account_id,
        policy_name=name,
        exempt_arns=exempt,
        run_id=ctx.run_id,
        workflow=WORKFLOW,
        journal=ctx.store.journal,
        clock=ctx.clock,
    )


def _failed(account_id: str, reason: str, action: str = "quarantine") -> ActionResult:
    return ActionResult(
        action=action,
        account_id=account_id,
        region="global",
        resource_id=account_id,
        outcome=ActionOutcome.FAILED,
        reason=reason,
    )


def sweep_unlisted_regions(
    ctx: RunContext, halter: Halter, accounts: list[str], listed: dict[str, set[str]]
) -> tuple[dict[str, dict[str, int]], list[TargetResult]]:
    """For each tripped account: the regions it has enabled that this run did not read (not in the config's list,
    or excluded), inventoried and halted like the others. Returns the running instances found per account and
    region, and the targets in error (an account whose regions cannot be listed, a region that does not answer)."""
    from ...config.models import partition_regions

    config = ctx.config
    errors: list[TargetResult] = []
    extra: list[Target] = []
    # The home region's partition: a region of another partition is not reachable with these credentials.
    partition = partition_regions(config.aws.sts_region)
    for listing in fan_out(
        accounts,
        lambda a: enabled_regions(ctx.factory, a, config.aws.sts_region),
        max_concurrency=config.aws.max_concurrency,
        label="unlisted regions",
    ):
        if listing.value is None:
            errors.append(_error(listing.key, "regions", f"cannot list its enabled regions: {listing.error}"))
            continue
        regions = set(listing.value) - listed.get(listing.key, set())
        extra += [Target(listing.key, r) for r in sorted(regions) if not partition or r in partition]

    def inventory(target: Target) -> list[Instance]:
        client = ctx.factory.client("ec2", region=target.region, account_id=target.account_id)
        return list(iter_instances(client, target.account_id, target.region, states=ACTIVE_STATES))

    found: dict[str, dict[str, int]] = {}
    for outcome in fan_out(extra, inventory, max_concurrency=config.aws.max_concurrency, label="unlisted regions"):
        target = outcome.key
        if outcome.value is None:
            errors.append(_error(target.account_id, target.region, f"unlisted region: {outcome.error}"))
            continue
        if outcome.value:  # only regions where something runs are reported
            found.setdefault(target.account_id, {})[target.region] = len(outcome.value)
            halter.submit(target, outcome.value)
    return found, errors


def _error(account_id: str, region: str, error: str) -> TargetResult:
    return TargetResult(account_id=account_id, region=region, status=TargetStatus.ERROR, error=error)
