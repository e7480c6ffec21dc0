"""The IAM permissions fleetwarden needs, gathered from what each part declares (STYLE.md habit 3)."""

from __future__ import annotations

import importlib
from typing import Any

from .config import Config

# Where a part declares its permissions: (module, attribute). A dict attribute maps action names to tuples.
DECLARATIONS: dict[str, tuple[str, str]] = {
    "targets": ("fleetwarden.aws.targets", "PERMISSIONS"),
    "targets.regions": ("fleetwarden.aws.targets", "REGION_PERMISSIONS"),
    "collect.ec2": ("fleetwarden.collect.ec2", "PERMISSIONS"),
    "collect.iam": ("fleetwarden.collect.iam", "PERMISSIONS"),
    "actions.ec2": ("fleetwarden.actions.ec2", "PERMISSIONS"),
    "actions.iam_lockout": ("fleetwarden.actions.iam_lockout", "PERMISSIONS"),
    "actions.asg": ("fleetwarden.actions.asg", "PERMISSIONS"),
    "collect.spend": ("fleetwarden.collect.spend", "PERMISSIONS"),
    "collect.compliance": ("fleetwarden.collect.compliance", "PERMISSIONS"),
    "collect.inspector": ("fleetwarden.collect.inspector", "PERMISSIONS"),
    "collect.config_aggregator": ("fleetwarden.collect.config_aggregator", "PERMISSIONS"),
    "config_source": ("fleetwarden.config_source", "PERMISSIONS"),
    "state.dynamodb": ("fleetwarden.state.dynamodb", "PERMISSIONS"),
}
# Parts that run with the hub's own credentials rather than the member-account role.
HUB_PARTS = {"targets", "state.dynamodb", "config_source", "collect.config_aggregator"}
# Sinks that act inside each member account through the assumed role (Security Hub imports per account).
MEMBER_SINKS = {"sinks.securityhub"}
# Billing sources read through the payer account's billing role (`guard.spend.billing_account`).
BILLING_PARTS = {"collect.spend"}


def declared() -> dict[str, list[str]]:
    """Every part's declared IAM actions, by part name (sinks and checks included)."""
    from .checks import load_checks
    from .sinks import sink_registry

    parts: dict[str, list[str]] = {}
    for part, (module_name, attr) in DECLARATIONS.items():
        value: Any = getattr(importlib.import_module(module_name), attr)
        actions = [a for group in value.values() for a in group] if isinstance(value, dict) else list(value)
        parts[part] = sorted(set(actions))
    for name, plugin in sink_registry.items():
        parts[f"sinks.{name}"] = sorted(plugin.permissions)
    for name, check in load_checks().items():
        parts[f"checks.{name}"] = sorted(check.permissions)
    return parts


def policy_documents(config: Config | None = None) -> dict[str, Any]:
    """IAM policy documents: the principal fleetwarden runs as (hub), the member-account role, and the payer
    account's billing role (spend sources).

    With a config, sinks not used by it are left out of the hub policy.
    """
    parts = declared()
    used_sinks = {f"sinks.{raw.get('type')}" for raw in config.sinks.values()} if config else None
    hub: set[str] = {"sts:AssumeRole", "sts:GetCallerIdentity"}
    member: set[str] = set()
    billing: set[str] = set()
    for part, actions in parts.items():
        if part in BILLING_PARTS:
            billing.update(a for a in actions if not a.startswith("ec2:"))
            member.update(a for a in actions if a.startswith("ec2:"))
        elif part.startswith("sinks."):
            if used_sinks is None or part in used_sinks:
                (member if part in MEMBER_SINKS else hub).update(actions)
        elif part in HUB_PARTS:
            hub.update(actions)
        else:
            member.update(actions)
    # When the hub's own credentials reach a target (an account without role_arn, or the organization's
    # management account), the hub principal does the member's work there too.
    return {
        "hub": _document(sorted(hub | member) if config is not None and not _uses_roles(config) else sorted(hub)),
        "member_role": _document(sorted(member)),
        "billing_role": _document(sorted(billing)),
    }


def _uses_roles(config: Config) -> bool:
    """True when every target account is reached through a role (the hub itself is no target)."""
    if any(a.role_arn is None for a in config.accounts):
        return False
    if config.organization is not None:
        return not config.organization.include_management_account
    return bool(config.accounts)


def _document(actions: list[str]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
