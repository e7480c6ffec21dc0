"""What the config points to: the state table, the SNS sinks, the SSM associations, the member role in every
account."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import ClientError

from ..config import Config
from ..errors import CredentialsError
from .resources import ACCESS_DENIED, error_code, is_missing, read_fix, short_error

if TYPE_CHECKING:
    from .run import Doctor


def check_state_table(doctor: Doctor) -> None:
    assert doctor.config is not None
    state = doctor.config.state
    output = doctor.stack.outputs.get("StateUrl") if doctor.stack else None
    if not state.startswith("dynamodb://"):
        doctor.emit(
            "state-table",
            "problem",
            f"the config's state is {state}: the deployed functions cannot keep SQLite (only /tmp is writable)",
            f"set `state: {output or 'dynamodb://TABLE?region=REGION'}` (the stack's StateUrl output)",
        )
        return
    table, region = table_of(state)
    try:
        described = doctor.factory.client("dynamodb", region=region).describe_table(TableName=table)["Table"]
    except ClientError as exc:
        if is_missing(exc):
            doctor.emit(
                "state-table",
                "problem",
                f"the config's state table {table} does not exist in {region}",
                "see resource:StateTable"
                if output and table_of(output) == (table, region)
                else f"point `state:` at the stack's StateUrl output ({output}), or create it: fleetwarden state init",
            )
        else:
            doctor.emit("state-table", "problem", f"{state}: {short_error(exc)}", read_fix("dynamodb"))
        return
    if output and table_of(output) != (table, region):
        doctor.emit(
            "state-table",
            "warning",
            f"the config's state {state} is not the stack's StateUrl {output}",
            f"set `state: {output}`, unless you keep the state elsewhere on purpose",
        )
        return
    doctor.emit("state-table", "ok", f"{state}: {described.get('TableStatus', '?')}, the stack's StateUrl")


def check_sinks(doctor: Doctor) -> None:
    assert doctor.config is not None
    topic_output = doctor.stack.outputs.get("AlertsTopicArn") if doctor.stack else None
    sns = {name: str(raw.get("topic_arn", "")) for name, raw in doctor.config.sinks.items() if raw.get("type") == "sns"}
    if not sns:
        detail = "no sns sink in the config: nothing publishes to the alerts topic"
        doctor.emit("sinks", "warning", detail, f"add `sinks: {{ops: {{type: sns, topic_arn: {topic_output}}}}}`")
        return
    for name, arn in sorted(sns.items()):
        region = arn.split(":")[3] if arn.count(":") >= 5 else doctor.region
        try:
            doctor.factory.client("sns", region=region).get_topic_attributes(TopicArn=arn)
        except ClientError as exc:
            fix = f"set sinks.{name}.topic_arn to the stack's AlertsTopicArn output ({topic_output})"
            if is_missing(exc):
                doctor.emit(f"sink:{name}", "problem", f"topic {arn} does not exist", fix)
            else:
                doctor.emit(f"sink:{name}", "problem", f"topic {arn}: {short_error(exc)}", read_fix("sns"))
            continue
        if topic_output and arn != topic_output:
            doctor.emit(
                f"sink:{name}",
                "warning",
                f"publishes to {arn}, not the stack's alerts topic {topic_output}",
                "fine if on purpose; else set its topic_arn to the AlertsTopicArn output",
            )
        else:
            doctor.emit(f"sink:{name}", "ok", f"topic {arn} exists")


def check_associations(doctor: Doctor) -> None:
    assert doctor.config is not None
    if "compliance" not in doctor.config.model_fields_set:
        doctor.emit("ssm-associations", "not-checked", "no `compliance:` section in the config")
        return
    compliance = doctor.config.compliance
    ssm = doctor.factory.client("ssm", region=doctor.region)
    where = f"in {doctor.region} (the hub's account and region, where the ComplianceSyncRule listens)"
    for association_id in compliance.association_ids:
        check = f"ssm-association:{association_id}"
        try:
            found = ssm.describe_association(AssociationId=association_id)["AssociationDescription"]
        except ClientError as exc:
            if error_code(exc) in ("AssociationDoesNotExist", "InvalidAssociation") or is_missing(exc):
                doctor.emit(
                    check,
                    "problem",
                    f"association {association_id} (compliance.association_ids) does not exist {where}",
                    "create it again (aws ssm create-association ...), then put its new id in "
                    "compliance.association_ids",
                )
            else:
                doctor.emit(check, "problem", f"association {association_id}: {short_error(exc)}", read_fix("ssm"))
            continue
        doctor.emit(check, "ok", f"association {association_id} exists ({found.get('Name', '?')})")
    for document in compliance.document_names:
        check = f"ssm-association:{document}"
        try:
            filters = [{"key": "Name", "value": document}]
            listed = ssm.list_associations(AssociationFilterList=filters).get("Associations", [])
        except ClientError as exc:
            doctor.emit(check, "problem", f"associations of {document}: {short_error(exc)}", read_fix("ssm"))
            continue
        if listed:
            ids = ", ".join(a.get("AssociationId", "?") for a in listed[:5])
            doctor.emit(check, "ok", f"{len(listed)} association(s) of document {document}: {ids}")
        else:
            doctor.emit(
                check,
                "problem",
                f"no association of document {document} (compliance.document_names) {where}",
                f"create one: aws ssm create-association --name {document} --targets ... ; or fix "
                "compliance.document_names",
            )


def check_member_roles(doctor: Doctor) -> None:
    assert doctor.config is not None
    from ..aws.fanout import fan_out
    from ..aws.targets import resolve_accounts, verify_accounts

    try:
        accounts = resolve_accounts(doctor.config, doctor.factory)
    except CredentialsError as exc:
        doctor.emit("member-roles", "problem", str(exc), "let this principal list the organization's accounts")
        return
    failures: dict[str, str] = {r.account_id: r.error or "" for r in verify_accounts(accounts, doctor.factory)}
    roles = [a for a in accounts if a.role_arn is not None and a.account_id not in failures]
    for outcome in fan_out(
        [a.account_id for a in roles],
        lambda account_id: _assume(doctor, account_id),
        max_concurrency=doctor.config.aws.max_concurrency,
        label="member roles",
    ):
        problem = outcome.error or outcome.value
        if problem:
            failures[outcome.key] = problem
    by_id = {a.account_id: a for a in accounts}
    for account_id, error in sorted(failures.items()):
        role = by_id[account_id].role_arn or "the current credentials"
        doctor.emit(
            f"member-role:{account_id}",
            "problem",
            f"account {account_id} ({role}): {error}",
            "deploy the member-role StackSet instance to this account (deploy/templates/member-role.yaml) "
            "with the config's external id",
        )
    total = len(accounts)
    if failures:
        doctor.emit(
            "member-roles",
            "problem",
            f"{len(failures)} of {total} account(s) cannot be reached: {', '.join(sorted(failures))}",
            "see the member-role lines above",
        )
    else:
        doctor.emit("member-roles", "ok", f"all {total} account(s) reachable (the member role assumed in each)")


def _assume(doctor: Doctor, account_id: str) -> str | None:
    """Assume the account's role, check which account it acts in and that the role itself still exists; a
    problem, or None. (AWS refuses AssumeRole for a role that was deleted; moto does not, hence GetRole.)"""
    access = doctor.factory.access(account_id)
    ident = doctor.factory.client("sts", region=_sts_region(doctor), account_id=account_id).get_caller_identity()
    if ident["Account"] != account_id:
        return f"the role acts in account {ident['Account']}, not {account_id}"
    role_name = str(access.role_arn).rsplit("/", 1)[-1]
    try:
        doctor.factory.client("iam", region=_sts_region(doctor), account_id=account_id).get_role(RoleName=role_name)
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return f"the role {role_name} does not exist in account {account_id}"
        if error_code(exc) not in ACCESS_DENIED:
            raise
        # Assumed, and not allowed to read itself (a config-narrowed member policy): reachable all the same.
    return None


def _sts_region(doctor: Doctor) -> str:
    return doctor.config.aws.sts_region if doctor.config else "us-east-1"


def table_of(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, parse_qs(parts.query).get("region", ["us-east-1"])[0]


def default_region(config: Config | None) -> str:
    """The stack's region when --region is not given: the config's DynamoDB state table's, else the
    environment's, else us-east-1."""
    if config is not None and config.state.startswith("dynamodb://"):
        return table_of(config.state)[1]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
