"""Organization-scale runs: the account shards of an org-run, and the merge of their RunReport fragments.

An org-run (src/fleetwarden/statemachines/org-run.asl.json) is: `list-shards` (the accounts in shards of N, the
list to S3 when large) -> one Lambda invocation per shard, each running the workflow on its accounts only and
writing its fragment to S3 -> `aggregate` (this module's `aggregate`): one RunReport, written to S3, delivered
once, with one exit status. S3 layout under the `fragments` prefix (s3://BUCKET/PREFIX):

    PREFIX/RUN_ID/shards.json            the shard items (the Distributed Map's ItemReader reads it)
    PREFIX/RUN_ID/organization.json      the organization's accounts as list-shards listed them (`organization:`
                                         in the config): the shards resolve their accounts from it
    PREFIX/RUN_ID/fragments/NNNNN.json   one per shard: its status, exit code and RunReport fragment
    PREFIX/RUN_ID/report.json            the merged RunReport

A guard with `guard.max_running_instances_org` adds two phases between the shards and aggregate
(workflows/guard/org.py): `org-check.json` (the org check's total and the halt it decided), `halt-items.json` (the
second Distributed Map's items) and `halt/NNNNN.json` (the halt shards' fragments).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws.session import SessionFactory
from ..aws.targets import error_text, organization_accounts, resolve_accounts
from ..config import Config
from ..errors import EXIT_FINDINGS, EXIT_OK, EXIT_PARTIAL, EXIT_REFUSED, EXIT_USAGE, FleetwardenError
from ..model import ActionOutcome, FindingStatus, RunReport, TargetResult, TargetStatus
from .base import RunContext, exit_code

log = logging.getLogger(__name__)

SHARDS_FILE = "shards.json"
ORGANIZATION_FILE = "organization.json"
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$", re.ASCII)
REPORT_FILE = "report.json"
FRAGMENTS_DIR = "fragments"
# DESIGN.md's exit codes, the first that applies: 2 usage/config, 5 refused, 1 unexpected, 4 partial, 3 findings.
EXIT_ORDER = (EXIT_USAGE, EXIT_REFUSED, 1, EXIT_PARTIAL, EXIT_FINDINGS, EXIT_OK)


class FragmentStoreError(FleetwardenError):
    """The org-run's S3 prefix cannot be read or written (exit 1: nothing to merge, or nowhere to write)."""

    exit_code = 1


# -- S3 ------------------------------------------------------------------------------------------------
# With the hub's credentials, on the org-run's bucket (the `fragments` prefix of its events): shard lists,
# fragments and the merged report.
PERMISSIONS = ("s3:PutObject", "s3:GetObject", "s3:ListBucket")


@dataclass(frozen=True)
class RunFiles:
    """Where one org-run keeps its files: s3://bucket/prefix/run_id/..."""

    bucket: str
    prefix: str  # without a trailing '/', may be empty
    run_id: str

    @classmethod
    def parse(cls, uri: str, run_id: str) -> RunFiles:
        """From `s3://BUCKET[/PREFIX]` (validated by the event models) and the run id."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(bucket, prefix.strip("/"), run_id)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, self.run_id, *parts) if p)

    def fragment_key(self, shard: int, phase: str = "count") -> str:
        """Where a shard's fragment goes: `fragments/` (the shards, the guard's count phase), `halt/` (the
        guard's halt phase)."""
        return self.key(FRAGMENTS_DIR if phase == "count" else phase, f"{shard:05d}.json")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def put_json(factory: SessionFactory, files: RunFiles, key: str, value: Any, region: str) -> str:
    """Write one JSON document; returns its s3:// URI."""
    s3 = factory.client("s3", region=region)
    body = json.dumps(value, default=str, separators=(",", ":")).encode()
    try:
        s3.put_object(Bucket=files.bucket, Key=key, Body=body, ContentType="application/json")
    except (ClientError, BotoCoreError) as exc:
        raise FragmentStoreError(f"cannot write {files.uri(key)}: {error_text(exc)}") from None
    return files.uri(key)


def get_json(factory: SessionFactory, files: RunFiles, key: str, region: str) -> Any:
    """Read one JSON document, or None if there is no such key."""
    s3 = factory.client("s3", region=region)
    try:
        body = s3.get_object(Bucket=files.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise FragmentStoreError(f"cannot read {files.uri(key)}: {error_text(exc)}") from None
    except BotoCoreError as exc:
        raise FragmentStoreError(f"cannot read {files.uri(key)}: {error_text(exc)}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise FragmentStoreError(f"{files.uri(key)} is not JSON") from None


def list_keys(factory: SessionFactory, files: RunFiles, under: str, region: str) -> list[str]:
    s3 = factory.client("s3", region=region)
    try:
        return [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=files.bucket, Prefix=under + "/")
            for obj in page.get("Contents", [])
        ]
    except (ClientError, BotoCoreError) as exc:
        raise FragmentStoreError(f"cannot list {files.uri(under)}/: {error_text(exc)}") from None


# -- listing shards -------------------------------------------------------------------------------------
def account_shards(config: Config, factory: SessionFactory, size: int) -> list[list[str]]:
    """The config's accounts (explicit and the organization's ACTIVE ones), sorted, in shards of `size`."""
    ids = sorted(a.account_id for a in resolve_accounts(config, factory))
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def list_organization(config: Config, factory: SessionFactory) -> list[dict[str, Any]] | None:
    """The organization's accounts (Organizations' entries, each marked `_management`) when the config has
    `organization:`, else None. list-shards resolves its shards from this listing and records it for them."""
    return organization_accounts(config, factory) if config.organization is not None else None


def write_organization(factory: SessionFactory, files: RunFiles, accounts: list[dict[str, Any]], region: str) -> str:
    """Record the listing list-shards used, for the run's shards (read_organization); returns its s3:// URI."""
    document = {"run_id": files.run_id, "accounts": accounts}
    return put_json(factory, files, files.key(ORGANIZATION_FILE), document, region)


def read_organization(
    config: Config, factory: SessionFactory, files: RunFiles, shard_accounts: Iterable[str] | None
) -> list[dict[str, Any]] | None:
    """The organization's accounts list-shards recorded for run `files.run_id` (one GetObject), or None, with a
    warning, when that file cannot be used: the shard then lists the organization itself, as without it.

    It is read only from a bucket of the account whose credentials run the shard (ExpectedBucketOwner): a shard
    event naming someone else's bucket cannot supply the accounts a shard resolves. It must be this run's listing,
    in Organizations' shape, and name every one of the shard's accounts that the config does not list explicitly
    (list-shards made the shard from it).
    """
    uri = files.uri(files.key(ORGANIZATION_FILE))
    explicit = {a.id for a in config.accounts}
    try:
        owner = factory.caller_identity()["account_id"]
        s3 = factory.client("s3", region=config.aws.sts_region)
        body = s3.get_object(Bucket=files.bucket, Key=files.key(ORGANIZATION_FILE), ExpectedBucketOwner=owner)[
            "Body"
        ].read()
        document = json.loads(body)
    except (ClientError, BotoCoreError) as exc:
        log.warning("cannot read %s, listing the organization instead: %s", uri, error_text(exc))
        return None
    except ValueError:
        log.warning("%s is not JSON, listing the organization instead", uri)
        return None
    problem = _listing_problem(document, files.run_id, [a for a in shard_accounts or () if a not in explicit])
    if problem:
        log.warning("%s %s, listing the organization instead", uri, problem)
        return None
    accounts: list[dict[str, Any]] = document["accounts"]
    return accounts


def _listing_problem(document: Any, run_id: str, shard_accounts: list[str]) -> str | None:
    """Why a recorded organization listing cannot stand in for Organizations' answer (None: it can)."""
    if not isinstance(document, dict) or document.get("run_id") != run_id:
        return f"is not the organization listing of run {run_id}"
    accounts = document.get("accounts")
    if not isinstance(accounts, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("Id"), str)
        and _ACCOUNT_ID.fullmatch(a["Id"])
        and isinstance(a.get("_management"), bool)
        for a in accounts
    ):
        return "is not a list of accounts (Id, Status, _management)"
    missing = set(shard_accounts) - {a["Id"] for a in accounts}
    if missing:
        return f"does not list the shard's accounts {', '.join(sorted(missing))}"
    return None


def max_actions_share(limit: int, shard_accounts: int, total_accounts: int) -> int:
    """A shard's share of an organization-wide action limit: the shares never add up to more than `limit`."""
    return (limit * shard_accounts) // total_accounts if total_accounts else 0


def shard_items(
    template: dict[str, Any],
    shards: list[list[str]],
    *,
    run_id: str,
    fragments: str | None,
    regions: list[str] | None = None,
    audit_max_actions: int | None = None,
) -> list[dict[str, Any]]:
    """One workflow event per shard: `template` plus the shard's fields (what each Map iteration sends).

    `audit_max_actions` (an audit that may act): each shard gets its share of the organization-wide limit.
    """
    total = sum(len(s) for s in shards)
    items = []
    for index, accounts in enumerate(shards):
        item: dict[str, Any] = {**template, "accounts": accounts, "run_id": run_id, "shard": index}
        if regions is not None:
            item["regions"] = regions
        if fragments is not None:
            item["fragments"] = fragments
        if audit_max_actions is not None:
            item["max_actions"] = max_actions_share(audit_max_actions, len(accounts), total)
        items.append(item)
    return items


# -- merging ---------------------------------------------------------------------------------------------
def merge_reports(run_id: str, workflow: str, fragments: list[RunReport], started_at: datetime) -> RunReport:
    """One RunReport from the shards' fragments: targets, findings, actions and deliveries concatenated (targets
    and findings in the order a one-process run gives them: by account and region; actions shard by shard), the
    summary merged (see merge_summaries)."""
    by_place = sorted(fragments, key=lambda r: min(((t.account_id, t.region) for t in r.targets), default=("", "")))
    merged = RunReport(
        run_id=run_id,
        workflow=workflow,
        dry_run=all(r.dry_run for r in fragments) if fragments else True,
        started_at=min((r.started_at for r in fragments), default=started_at),
    )
    for report in by_place:
        merged.targets += report.targets
        merged.findings += report.findings
        merged.actions += report.actions
        merged.deliveries += report.deliveries
    merged.targets.sort(key=lambda t: (t.account_id, t.region))
    merged.findings.sort(key=lambda f: (f.account_id, f.region))
    merged.summary = merge_summaries([r.summary for r in by_place])
    finished = [r.finished_at for r in fragments if r.finished_at is not None]
    merged.finished_at = max(finished) if finished else None
    return merged


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up (shards partition the accounts, so even `accounts` adds up), dicts merge key by key, lists
    are concatenated with each item once (tripped accounts; required_tags stays as is), and any other value is
    kept when every shard agrees, else the distinct values are joined (strings) or listed."""
    merged: dict[str, Any] = {}
    keys = [k for s in summaries for k in s]
    for key in dict.fromkeys(keys):
        values = [s[key] for s in summaries if key in s]
        merged[key] = _merge_values(values)
    return merged


def _merge_values(values: list[Any]) -> Any:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        return merge_summaries(values)
    if all(isinstance(v, list) for v in values):
        # Lists of the shards' own items (tripped accounts): concatenated, each item once (equal lists stay as is).
        union: list[Any] = []
        seen: set[str] = set()
        for item in (i for v in values for i in v):
            key = json.dumps(item, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                union.append(item)
        return union
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    if len(distinct) == 1:
        return distinct[0]
    if all(isinstance(v, str) for v in distinct):
        return "; ".join(distinct)
    return distinct


def _audit_summary(report: RunReport, config: Config) -> None:
    """The audit's organization-wide summary lines, recomputed on the merged report (not added up)."""
    from .audit import _exception_summary

    summary = report.summary
    summary["accounts"] = len({t.account_id for t in report.targets})
    summary["targets_ok"] = sum(1 for t in report.targets if t.status == TargetStatus.OK)
    summary["targets_error"] = sum(1 for t in report.targets if t.status == TargetStatus.ERROR)
    summary["violators"] = sum(1 for f in report.findings if f.status in (FindingStatus.NEW, FindingStatus.ONGOING))
    broad = summary.get("broad_exceptions")
    by_exception = Counter({str(k): int(v) for k, v in dict(summary.get("skipped_by_exception") or {}).items()})
    summary.pop("broad_exceptions", None)
    # Every shard sees the same exceptions: the broad ones are the same lines in each fragment.
    broad_lines = list(dict.fromkeys(str(broad).split("; "))) if broad else []
    summary.update(_exception_summary(report, by_exception, broad_lines))
    limit = config.audit.max_actions
    planned = sum(1 for a in report.actions if a.outcome == ActionOutcome.PLANNED)
    summary.pop("warning", None)
    if report.dry_run and planned > limit:
        summary["warning"] = f"the plan exceeds audit.max_actions={limit}: --apply would be refused"


# -- aggregate --------------------------------------------------------------------------------------------
@dataclass
class Aggregate:
    """The merged report and what the aggregate step saw of the shards."""

    report: RunReport
    exit_code: int
    status: str
    report_uri: str
    shards_expected: int
    shards_reported: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    shard_errors: list[dict[str, Any]] = field(default_factory=list)
    halt: dict[str, Any] | None = None  # a guard org-run's halt phase: expected, reported, missing


def first_exit_code(codes: list[int]) -> int:
    """The exit code that applies first in DESIGN.md's order."""
    present = set(codes)
    return next((c for c in EXIT_ORDER if c in present), EXIT_OK)


def aggregate(ctx: RunContext, files: RunFiles) -> Aggregate:
    """Merge the fragments of org-run `files.run_id`, write the report to S3 and deliver it once.

    A shard that never reported (its invocation failed past its retries, or the Map gave up on it) makes each of
    its accounts an error target: the run is partial, never silently smaller.
    """
    region = ctx.config.aws.sts_region
    listing = get_json(ctx.factory, files, files.key(SHARDS_FILE), region)
    if not isinstance(listing, dict) or not isinstance(listing.get("shards"), list):
        raise FragmentStoreError(f"{files.uri(files.key(SHARDS_FILE))} is missing or not a shard list")
    items: list[dict[str, Any]] = listing["shards"]
    workflow = str(listing.get("workflow") or "")
    keys = set(list_keys(ctx.factory, files, files.key(FRAGMENTS_DIR), region))
    fragments: list[RunReport] = []
    codes: list[int] = []
    result = Aggregate(
        report=RunReport(run_id=files.run_id, workflow=workflow, dry_run=True, started_at=ctx.clock()),
        exit_code=EXIT_OK,
        status="ok",
        report_uri="",
        shards_expected=len(items),
    )
    missing_targets: list[TargetResult] = []
    for item in items:
        index = int(item["shard"])
        key = files.fragment_key(index)
        fragment = get_json(ctx.factory, files, key, region) if key in keys else None
        if not isinstance(fragment, dict):
            result.missing.append(index)
            missing_targets += [
                TargetResult(
                    account_id=a,
                    region="*",
                    status=TargetStatus.ERROR,
                    error=f"shard {index} of run {files.run_id} did not report",
                )
                for a in item.get("accounts", [])
            ]
            continue
        result.shards_reported.append(index)
        codes.append(int(fragment.get("exit_code", 1)))
        if fragment.get("report") is not None:
            fragments.append(RunReport.model_validate(fragment["report"]))
        if fragment.get("status") in ("error", "refused"):
            result.shard_errors.append(
                {"shard": index, "status": fragment["status"], "error": fragment.get("error", "")}
            )
    report = merge_reports(files.run_id, workflow, fragments, ctx.clock())
    report.targets = sorted([*report.targets, *missing_targets], key=lambda t: (t.account_id, t.region))
    if workflow == "audit":
        _audit_summary(report, ctx.config)
    if workflow == "guard":
        from .guard.org import aggregate_guard

        phases = aggregate_guard(ctx, files, listing, report)
        codes += phases.codes
        result.shard_errors += phases.shard_errors
        if phases.halt_expected:
            result.halt = {
                "expected": phases.halt_expected,
                "reported": len(phases.halt_reported),
                "missing": phases.halt_missing,
            }
    report.deliveries += _deliver(ctx, report)
    if workflow == "compliance-sync" and not report.dry_run:
        from .compliance import org_run_alert

        org_run_alert(ctx, report)  # the shards held theirs in the outbox
    if workflow == "guard" and not report.dry_run:
        from .guard.heartbeat import maybe_heartbeat

        # The org-run's one heartbeat (its shards send none): all quiet only if no account tripped anywhere.
        maybe_heartbeat(ctx, report, ctx.clock())
    report.summary["shards"] = {"expected": len(items), "reported": len(result.shards_reported)}
    if result.halt is not None:
        report.summary["shards"]["halt"] = {k: result.halt[k] for k in ("expected", "reported")}
    result.report_uri = put_json(ctx.factory, files, files.key(REPORT_FILE), report.to_dict(), region)
    result.report = report
    result.exit_code = first_exit_code([*codes, exit_code(report)])
    result.status = {EXIT_OK: "ok", EXIT_PARTIAL: "partial", EXIT_REFUSED: "refused", EXIT_FINDINGS: "ok"}.get(
        result.exit_code, "error"
    )
    return result


def _deliver(ctx: RunContext, report: RunReport) -> list[Any]:
    """The audit's one notification of the org-run (shards deliver nothing: the handler clears their notify
    lists; the guard's is sent by aggregate_guard)."""
    if report.workflow != "audit" or not ctx.config.audit.notify:
        return []
    from ..output import summary_subject, summary_text
    from ..sinks import Notification, deliver

    notification = Notification(
        subject=summary_subject(report),
        text=summary_text(report),
        data={"required_tags": list(ctx.config.audit.required_tags)},
    )
    return deliver(ctx.config.audit.notify, ctx.config.sinks, notification, report, ctx.sink_context)


__all__ = [
    "Aggregate",
    "FragmentStoreError",
    "RunFiles",
    "account_shards",
    "aggregate",
    "first_exit_code",
    "get_json",
    "list_organization",
    "max_actions_share",
    "merge_reports",
    "merge_summaries",
    "put_json",
    "read_organization",
    "shard_items",
    "write_organization",
]
