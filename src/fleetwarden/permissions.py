"""The IAM permissions fleetwarden needs, gathered from what each part declares (STYLE.md habit 3).

With a config, the policies hold only what the config enables (see `features`): a report-only audit gives a
read-only member role; terminate, snapshots, the guard's halt, each lockout mode, the scan window, compliance,
Inspector and each sink appear only when configured. Without a config, every feature is in (today's full policy,
so existing deployments keep working). Actions that IAM lets us narrow get their own statements with resource
ARNs (and condition keys where IAM has one); the rest stay on `"Resource": "*"` (docs/permissions.md says why).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from .config import Config

Tier = Literal["full", "read-only"]
TIERS: tuple[str, ...] = ("full", "read-only")

# Where a part declares its permissions: (module, attribute). A dict attribute maps action names to tuples.
DECLARATIONS: dict[str, tuple[str, str]] = {
    "targets": ("fleetwarden.aws.targets", "PERMISSIONS"),
    "targets.regions": ("fleetwarden.aws.targets", "REGION_PERMISSIONS"),
    "collect.ec2": ("fleetwarden.collect.ec2", "PERMISSIONS"),
    "collect.iam": ("fleetwarden.collect.iam", "PERMISSIONS"),
    "collect.cloudtrail": ("fleetwarden.collect.cloudtrail", "PERMISSIONS"),
    "owners.notify": ("fleetwarden.owners.notify", "PERMISSIONS"),
    "actions.ec2": ("fleetwarden.actions.ec2", "PERMISSIONS"),
    "actions.iam_lockout": ("fleetwarden.actions.iam_lockout", "PERMISSIONS"),
    "actions.asg": ("fleetwarden.actions.asg", "PERMISSIONS"),
    # Granted in a statement of its own (the notice tag's key only): see _notice_statement().
    "actions.notice": ("fleetwarden.actions.notice", "PERMISSIONS"),
    "actions.quarantine": ("fleetwarden.actions.quarantine", "PERMISSIONS"),
    "collect.spend": ("fleetwarden.collect.spend", "PERMISSIONS"),
    # `fleetwarden prices refresh`: the AWS Price List, read by the hub (or the operator) for burn-rate's table.
    "collect.pricelist": ("fleetwarden.collect.pricelist", "PERMISSIONS"),
    "collect.compliance": ("fleetwarden.collect.compliance", "PERMISSIONS"),
    "collect.inspector": ("fleetwarden.collect.inspector", "PERMISSIONS"),
    "collect.inspector.admin": ("fleetwarden.collect.inspector", "ADMIN_PERMISSIONS"),
    "collect.inspector.export": ("fleetwarden.collect.inspector_export", "PERMISSIONS"),
    "collect.network": ("fleetwarden.collect.network", "PERMISSIONS"),
    "collect.config_aggregator": ("fleetwarden.collect.config_aggregator", "PERMISSIONS"),
    "config_source": ("fleetwarden.config_source", "PERMISSIONS"),
    "state.dynamodb": ("fleetwarden.state.dynamodb", "PERMISSIONS"),
    "workflows.shards": ("fleetwarden.workflows.shards", "PERMISSIONS"),
    "handoff": ("fleetwarden.handoff", "PERMISSIONS"),
}
# Parts an operator runs with their own credentials in the hub account, never as the functions' role: the
# `operator` document (docs/doctor.md).
OPERATOR_DECLARATIONS: dict[str, tuple[str, str]] = {
    "doctor": ("fleetwarden.doctor", "PERMISSIONS"),
    "targets.ou": ("fleetwarden.aws.targets", "OPERATOR_PERMISSIONS"),
}
# Parts that run with the hub's own credentials rather than the member-account role.
HUB_PARTS = {
    "targets",
    "state.dynamodb",
    "config_source",
    "collect.config_aggregator",
    "collect.pricelist",
    "workflows.shards",
    "handoff",
}
# Sinks that act inside each member account through the assumed role (Security Hub imports per account).
MEMBER_SINKS = {"sinks.securityhub"}
# Billing sources read through the payer account's billing role (`guard.spend.billing_account`).
BILLING_PARTS = {"collect.spend"}

# What a config can turn on. `inventory` (the EC2 and IAM reads every job starts from) is always in.
FEATURES: tuple[str, ...] = (
    "inventory",
    "regions",
    "audit.stop",
    "audit.stop-protection",
    "audit.terminate",
    "audit.snapshot",
    "audit.exposure",
    "audit.notice",
    "audit.owners",
    "audit.owner-contacts",
    "guard.halt",
    "guard.terminate",
    "guard.quarantine",
    "lockout.deactivate",
    "lockout.delete",
    "lockout.revoke-roles",
    "window",
    "window.aggregator",
    "inspector",
    "inspector.org",
    "inspector.export",
    "compliance",
)

# The actions of the IAM read-only tier: what only looks.
READ_PREFIXES = ("Describe", "List", "Get", "BatchGet", "Select", "Lookup")

# Resource ARNs for actions IAM authorizes per resource. `ec2:ResourceTag` conditions are deliberately not used:
# a runaway instance or a violator is exactly the one whose tags cannot be trusted.
INSTANCE_ARN = "arn:aws:ec2:*:*:instance/*"
VOLUME_ARN = "arn:aws:ec2:*:*:volume/*"
SNAPSHOT_ARN = "arn:aws:ec2:*::snapshot/*"
ASG_ARN = "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*"
USER_ARN = "arn:aws:iam::*:user/*"
ROLE_ARN = "arn:aws:iam::*:role/*"
RESOURCES: dict[str, tuple[str, ...]] = {
    "ec2:StopInstances": (INSTANCE_ARN,),
    "ec2:StartInstances": (INSTANCE_ARN,),
    "ec2:TerminateInstances": (INSTANCE_ARN,),
    "ec2:ModifyInstanceAttribute": (INSTANCE_ARN,),
    "ec2:CreateSnapshots": (INSTANCE_ARN, VOLUME_ARN, SNAPSHOT_ARN),
    "ec2:CreateTags": (SNAPSHOT_ARN,),
    "autoscaling:SuspendProcesses": (ASG_ARN,),
    "autoscaling:ResumeProcesses": (ASG_ARN,),
    "iam:ListAccessKeys": (USER_ARN,),
    "iam:UpdateAccessKey": (USER_ARN,),
    "iam:DeleteAccessKey": (USER_ARN,),
    "iam:DeleteLoginProfile": (USER_ARN,),
    "iam:GetUserPolicy": (USER_ARN,),
    "iam:PutUserPolicy": (USER_ARN,),
    "iam:DeleteUserPolicy": (USER_ARN,),
    "iam:GetRole": (ROLE_ARN,),
    "iam:GetRolePolicy": (ROLE_ARN,),
    "iam:PutRolePolicy": (ROLE_ARN,),
    "iam:DeleteRolePolicy": (ROLE_ARN,),
    # Findings are imported as the account's own default product (report.asff.default_product_arn).
    "securityhub:BatchImportFindings": ("arn:aws:securityhub:*:*:product/*/default",),
}
# The hub's own narrowed actions: the hand-off starts only an org-run state machine (`<FunctionName>-org-run`).
HUB_RESOURCES: dict[str, tuple[str, ...]] = {
    "states:StartExecution": ("arn:aws:states:*:*:stateMachine:*-org-run",),
}
SECRET_ACTION = "secretsmanager:GetSecretValue"
# Condition keys, where IAM has one that fits: snapshots are tagged only as they are created (TagSpecifications).
CONDITIONS: dict[str, dict[str, Any]] = {
    "ec2:CreateTags": {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}},
}


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


def operator_actions() -> set[str]:
    """The operator's read actions (`fleetwarden doctor`, the command line's `--ou`), from OPERATOR_DECLARATIONS."""
    actions: set[str] = set()
    for module_name, attr in OPERATOR_DECLARATIONS.values():
        value: Any = getattr(importlib.import_module(module_name), attr)
        actions.update(a for group in value.values() for a in group)
    return actions


def _group(part: str, key: str | None = None) -> set[str]:
    """One declaration (a tuple, or one key of a dict of tuples)."""
    module_name, attr = DECLARATIONS[part]
    value: Any = getattr(importlib.import_module(module_name), attr)
    return set(value[key] if key is not None else value)


def guard_limited(config: Config) -> bool:
    """True when any guard limit is configured (count, org count, spend, or a per-account override)."""
    guard = config.guard
    if guard.max_running_instances is not None or guard.max_running_instances_org is not None or guard.spend:
        return True
    return any(
        a.guard is not None and (a.guard.max_running_instances is not None or a.guard.spend_max_usd is not None)
        for a in config.accounts
    )


def features(config: Config | None) -> set[str]:
    """What the config enables (every feature without a config)."""
    if config is None:
        return set(FEATURES)
    out = {"inventory"}
    if config.regions == "all":
        out.add("regions")
    audit = config.audit
    if audit.action == "stop":
        out.add("audit.stop")
        if audit.override_stop_protection:
            out.add("audit.stop-protection")
    elif audit.action == "terminate":
        out.add("audit.terminate")
        if audit.snapshot_before_terminate:
            out.add("audit.snapshot")
    if audit.notice_days:
        out.add("audit.notice")
    if audit.exposure.enabled:
        out.add("audit.exposure")
        if audit.exposure.compare_inspector:
            out.add("inspector")
    if audit.owners.enabled and audit.owners.cloudtrail:
        out.add("audit.owners")
    if audit.owners.notify is not None and audit.owners.notify.contact_tag:
        out.add("audit.owner-contacts")
    if guard_limited(config):
        out.add("guard.halt")
        if config.guard.on_unstoppable == "terminate":
            out.add("guard.terminate")
        if config.guard.quarantine.enabled:
            out.add("guard.quarantine")
        lockout = config.guard.lockout
        if lockout.mode != "off":
            out.add(f"lockout.{lockout.mode}")
            if lockout.revoke_role_sessions:
                out.add("lockout.revoke-roles")
    explicit = config.model_fields_set
    if "window" in explicit:
        out.update({"window", "inspector"})
        if config.window.discovery.type == "config-aggregator":
            out.add("window.aggregator")
    if "compliance" in explicit:
        out.add("compliance")
    if config.inspector.delegated_admin is not None:
        out.update({"inspector", "inspector.org"})
    if config.inspector.export.kms_key_arn is not None:
        out.update({"inspector", "inspector.export"})
    return out


def _member_actions(enabled: set[str]) -> set[str]:
    """The member-account actions of the enabled features."""
    from .actions.iam_lockout import DEACTIVATE_PERMISSIONS, ROLE_PERMISSIONS

    ec2 = "actions.ec2"
    snapshot = _group(ec2, "snapshot")
    out: set[str] = set()
    if "inventory" in enabled:
        out |= _group("collect.ec2") | _group("collect.iam") | _group("collect.spend", "burn-rate")
    if "regions" in enabled:
        out |= _group("targets.regions")
    if "audit.stop" in enabled:
        out |= _group(ec2, "stop") - _group(ec2, "clear-protection")
    if "audit.stop-protection" in enabled:
        out |= _group(ec2, "clear-protection")
    if "audit.terminate" in enabled:
        out |= _group(ec2, "terminate") - snapshot
    if "audit.snapshot" in enabled:
        out |= snapshot
    if "audit.exposure" in enabled:
        out |= _group("collect.network")
    if "audit.owners" in enabled:
        out |= _group("collect.cloudtrail")
    if "audit.owner-contacts" in enabled:
        out |= _group("owners.notify")
    if "guard.halt" in enabled:
        # The halt overrides stop protection (and restores it on release); release can start the instances again.
        # A tripped account is halted in every region it has enabled, listed in the config or not.
        out |= _group(ec2, "stop") | _group(ec2, "start") | _group("actions.asg") | _group("targets.regions")
    if "guard.terminate" in enabled:
        out |= _group(ec2, "terminate") | snapshot
    lockout = "actions.iam_lockout"
    if "lockout.deactivate" in enabled or "lockout.delete" in enabled:
        out |= (_group(lockout, "lock") | _group(lockout, "release")) - ROLE_PERMISSIONS - DEACTIVATE_PERMISSIONS
    if "lockout.deactivate" in enabled:
        out |= DEACTIVATE_PERMISSIONS
    if "lockout.delete" in enabled:
        out |= _group(lockout, "delete")
    if "lockout.revoke-roles" in enabled:
        out |= ROLE_PERMISSIONS
    if "window" in enabled:
        out |= _group(ec2, "start") | (_group(ec2, "stop") - _group(ec2, "clear-protection"))
    if "inspector" in enabled:
        out |= _group("collect.inspector")
    if "inspector.org" in enabled:  # in the delegated administrator account, through the role that reaches it
        out |= _group("collect.inspector.admin")
    if "inspector.export" in enabled:
        out |= _group("collect.inspector.export")
    if "compliance" in enabled:
        out |= _group("collect.compliance")
    return out


def is_read_only(action: str) -> bool:
    """True for an action that only reads (Describe/List/Get...)."""
    return action.partition(":")[2].startswith(READ_PREFIXES)


def policy_documents(config: Config | None = None, tier: Tier = "full") -> dict[str, Any]:
    """IAM policy documents: the principal fleetwarden runs as (hub), the member-account role, the payer
    account's billing role (spend sources), and an operator's reads for `fleetwarden doctor` (operator).

    With a config, only what it enables (`features`) and the sinks it uses; resources narrowed to the config's
    roles, topics and table. `tier="read-only"` keeps only the member role's reads (for organizations that only
    audit): the hub keeps its own actions.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}")
    from .sinks import sink_registry

    enabled = features(config)
    member = _member_actions(enabled)
    hub: set[str] = {"sts:AssumeRole", "sts:GetCallerIdentity"}
    used_sinks = {str(raw.get("type")) for raw in config.sinks.values()} if config else set(sink_registry.names())
    for name in used_sinks:
        if name in sink_registry:
            (member if f"sinks.{name}" in MEMBER_SINKS else hub).update(sink_registry.get(name).permissions)
    if config is not None and not _secret_arns(config):
        hub.discard(SECRET_ACTION)  # no sink reads a secret from Secrets Manager (ssm:/ and env: refs need none)
    hub |= _group("config_source")
    if config is None or config.organization is not None:
        hub |= _group("targets")
    if config is None or config.state.startswith("dynamodb://"):
        hub |= _group("state.dynamodb")
    if "window.aggregator" in enabled:
        hub |= _group("collect.config_aggregator")
    if uses_burn_rate(config):
        hub |= _group("collect.pricelist")
    if "guard.quarantine" in enabled:
        # In the management account (or Organizations' delegated administrator): the hub's own credentials, or the
        # role guard.quarantine.role_arn names, which then needs these actions (docs/guard.md "Containment").
        hub |= _group("actions.quarantine")
    if config is None:
        # Organization-scale runs (list-shards, shard fragments, aggregate) on the org-run's bucket: not a config
        # setting (the bucket comes with the state machine's events), so only in the full policy for now.
        hub |= _group("workflows.shards")
        # The hand-off to the org-run (a Lambda setting, FLEETWARDEN_ORG_RUN_ARN, not a config one): likewise.
        hub |= _group("handoff")
    if tier == "read-only":
        member = {a for a in member if is_read_only(a)}
    billing = _billing_actions(config)
    # When the hub's own credentials reach a target (an account without role_arn, or the organization's
    # management account), the hub principal does the member's work there too.
    folded = config is not None and not _uses_roles(config)
    hub_actions = hub | member if folded else hub
    documents = {
        "hub": _document(hub_actions, _hub_resources(config)),
        "member_role": _document(member, _member_resources(config)),
        "billing_role": _document(billing, {}),
        "operator": _document(operator_actions(), {}),
    }
    if "audit.notice" in enabled and tier != "read-only":
        for name in ("member_role", "hub") if folded else ("member_role",):
            documents[name]["Statement"].append(_notice_statement(config))
    return documents


def _notice_statement(config: Config | None) -> dict[str, Any]:
    """The audit's notice mark (actions/notice.py): tags on instances, only the notice tag's key."""
    from .actions.notice import PERMISSIONS as NOTICE
    from .config.models import AuditConfig

    key = (config.audit if config is not None else AuditConfig()).notice_tag
    return {
        "Effect": "Allow",
        "Action": list(NOTICE),
        "Resource": INSTANCE_ARN,
        "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": [key]}},
    }


def uses_burn_rate(config: Config | None) -> bool:
    """True when burn-rate prices the guard's spend (or without a config): `prices refresh` keeps its table."""
    if config is None:
        return True
    from .collect.spend import normalize_source

    spend = config.guard.spend
    return spend is not None and any(normalize_source(s).type == "burn-rate" for s in spend.sources)


def _billing_actions(config: Config | None) -> set[str]:
    """The billing sources' actions: those the config's spend sources and spend report use (all of them without
    either)."""
    from .collect.spend import normalize_source

    declared_sources: dict[str, tuple[str, ...]] = getattr(
        importlib.import_module(DECLARATIONS["collect.spend"][0]), DECLARATIONS["collect.spend"][1]
    )
    everything = {a for actions in declared_sources.values() for a in actions if not a.startswith("ec2:")}
    if config is None:
        return everything
    chosen: set[str] = set()
    if config.guard.spend is not None:
        chosen = {a for s in config.guard.spend.sources for a in declared_sources[normalize_source(s).type]}
    if "spend_report" in config.model_fields_set:  # `fleetwarden spend report` reads Cost Explorer there too
        chosen |= set(declared_sources[config.spend_report.source_spec.type])
    chosen = {a for a in chosen if not a.startswith("ec2:")}
    # A policy needs at least one action: with burn-rate alone the billing role is not used; keep it whole.
    return chosen or everything


def _member_resources(config: Config | None) -> dict[str, tuple[str, ...]]:
    resources = dict(RESOURCES)
    if config is not None and config.guard.lockout.revoke_role_sessions:
        # Only the roles whose sessions the lockout revokes (with or without a path).
        names = config.guard.lockout.revoke_role_sessions
        arns = tuple(f"arn:aws:iam::*:role/{p}{n}" for n in names for p in ("", "*/"))
        for action in ("iam:GetRole", "iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"):
            resources[action] = arns
    return resources


def _hub_resources(config: Config | None) -> dict[str, tuple[str, ...]]:
    """With a config: the roles the hub assumes, the topics it publishes to, the state table."""
    resources = {**_member_resources(config), **HUB_RESOURCES}
    if config is None:
        return resources
    roles = {a.role_arn for a in config.accounts if a.role_arn}
    if config.organization is not None:
        roles.add(f"arn:aws:iam::*:role/{config.organization.role_name}")
    for billing in (config.guard.spend.billing_account if config.guard.spend else None, config.spend_report_billing):
        if billing is not None and billing.role_arn:
            roles.add(billing.role_arn)
    admin = config.inspector.delegated_admin
    if admin is not None and admin.role_arn:
        roles.add(admin.role_arn)
    if config.guard.quarantine.enabled and config.guard.quarantine.role_arn:
        roles.add(config.guard.quarantine.role_arn)
    if roles:
        resources["sts:AssumeRole"] = tuple(sorted(roles))
    topics = sorted({str(raw["topic_arn"]) for raw in config.sinks.values() if raw.get("type") == "sns"})
    if topics and all(raw.get("type") != "sns" or raw.get("topic_arn") for raw in config.sinks.values()):
        resources["sns:Publish"] = tuple(topics)
    secrets = _secret_arns(config)
    if secrets:
        resources[SECRET_ACTION] = secrets
    buckets = [raw for raw in config.sinks.values() if raw.get("type") == "s3"]
    if buckets and all(raw.get("bucket") for raw in buckets):
        resources["s3:PutObject"] = tuple(sorted({_object_arn(raw) for raw in buckets}))
    table = _table_arn(config.state)
    if table:
        for action in _group("state.dynamodb"):
            resources[action] = (table,)
    return resources


def _secret_arns(config: Config) -> tuple[str, ...]:
    """The Secrets Manager secrets the sinks name (`secretsmanager:NAME` or an ARN); a secret's ARN ends in a
    random 6-character suffix after its name, hence `NAME-??????`."""
    refs = sorted(
        {
            value.removeprefix("secretsmanager:")
            for raw in config.sinks.values()
            for value in raw.values()
            if isinstance(value, str) and value.startswith("secretsmanager:")
        }
    )
    return tuple(ref if ref.startswith("arn:") else f"arn:aws:secretsmanager:*:*:secret:{ref}-??????" for ref in refs)


def _object_arn(sink: dict[str, Any]) -> str:
    """The objects an S3 sink writes: `<prefix>/...` in its bucket (sinks.s3.S3Sink.key)."""
    prefix = str(sink.get("prefix", "fleetwarden"))
    return f"arn:aws:s3:::{sink['bucket']}/{prefix}/*" if prefix else f"arn:aws:s3:::{sink['bucket']}/*"


def _table_arn(state: str) -> str | None:
    if not state.startswith("dynamodb://"):
        return None
    parts = urlsplit(state)
    region = parse_qs(parts.query).get("region", ["*"])[0]
    return f"arn:aws:dynamodb:{region}:*:table/{parts.netloc}" if parts.netloc else None


def _uses_roles(config: Config) -> bool:
    """True when every target account is reached through a role (the hub itself is no target)."""
    if any(a.role_arn is None for a in config.accounts):
        return False
    if config.organization is not None:
        return not config.organization.include_management_account
    return bool(config.accounts)


def _document(actions: Iterable[str], resources: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """One statement on `*` for what cannot be narrowed, then one per (resources, condition) for what can."""
    wide: list[str] = []
    narrowed: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for action in sorted(set(actions)):
        if action in resources:
            condition = CONDITIONS.get(action)
            key = (resources[action], repr(sorted(condition.items())) if condition else "")
            narrowed.setdefault(key, []).append(action)
        else:
            wide.append(action)
    statements: list[dict[str, Any]] = []
    if wide:
        statements.append({"Effect": "Allow", "Action": wide, "Resource": "*"})
    for (arns, _), group in narrowed.items():
        statement: dict[str, Any] = {
            "Effect": "Allow",
            "Action": group,
            "Resource": arns[0] if len(arns) == 1 else list(arns),
        }
        condition = CONDITIONS.get(group[0])
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}
