"""The AWS Lambda entry point: parse the event, load the config, call a workflow, return a JSON-safe result.

`handler(event, context)` never raises for an expected failure (a bad event, a bad config, a safety refusal,
a failed target): a raised exception makes Lambda retry asynchronous invocations, and those failures would only
fail again. It returns `{"status": "ok" | "partial" | "error" | "noop" | "refused", "exit_code": N, ...}` with
DESIGN.md's exit codes. Only a bug (an unexpected exception) propagates, so Lambda's Errors metric sees it.
See docs/lambda.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .config_source import load_config_from
from .errors import EXIT_OK, EXIT_PARTIAL, EXIT_REFUSED, EXIT_USAGE, ConfigError, ConfigProblem, FleetwardenError
from .events import SHARD_KEYS, WINDOW_ACTIONS, EventError, ParsedEvent, association_matches, parse_event
from .model import FindingStatus, RunReport, Severity, TargetStatus, utcnow
from .observability import observe
from .secrets import RedactingFilter, SecretResolver

if TYPE_CHECKING:
    from .aws.session import SessionFactory
    from .aws.targets import Scope
    from .workflows.base import RunContext
    from .workflows.guard import GuardOptions

log = logging.getLogger("fleetwarden.lambda")

CONFIG_ENV = "FLEETWARDEN_CONFIG"
DISABLED_ENV = "FLEETWARDEN_DISABLED"
CONFIG_FILE_NAME = "fleetwarden.yaml"
# Lambda's synchronous response limit is 6 MB; keep a margin for the envelope.
MAX_RESPONSE_BYTES = 5_000_000
DEFAULT_MAX_ITEMS = 1000
# The workflows an org-run shards (list-shards): their reports merge into one. window-open is left out: each
# shard would open a window of its own, which the scan-window state machine does not close.
ORG_RUN_ACTIONS = ("audit", "guard", "compliance-sync")
# Actions whose workflows are not in this version yet (none at the moment).
UNAVAILABLE: frozenset[str] = frozenset()

Workflow = Callable[["RunContext"], RunReport]


class Unavailable(FleetwardenError):
    """The event names an action this version cannot run."""

    exit_code = EXIT_USAGE

    def __init__(self, action: str) -> None:
        super().__init__(f"action {action} is not available in this version")


@observe
def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda entry point: run the action the event asks for and return the result (see docs/lambda.md).

    `observe` writes the invocation's JSON logs and its metrics (docs/observability.md), whatever happens."""
    _setup_logging()
    try:
        if _disabled():
            return _noop(f"{DISABLED_ENV}=true: fleetwarden is switched off, nothing was read or done")
        parsed = parse_event(event)
    except EventError as exc:
        return _error(str(exc), EXIT_USAGE)
    if parsed.action == "pass":
        return _noop(parsed.reason, parsed)
    # parse_event accepted it, so a string event is a JSON object: the hand-off passes the object on as is.
    raw = json.loads(event) if isinstance(event, str | bytes) else dict(event)
    result = _handle(parsed, context, raw)
    if parsed.action in WINDOW_ACTIONS:
        result = _window_fields(parsed, result)
    return result


def _handle(parsed: ParsedEvent, context: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """Load the config and run the parsed event's action (or hand it to the org-run: fleetwarden.handoff)."""
    request_id = getattr(context, "aws_request_id", None)
    log.info("event: %s (%s)%s", parsed.action, parsed.reason, f" request {request_id}" if request_id else "")
    try:
        config = load_config_from(config_reference())
    except ConfigError as exc:
        return _error(str(exc), exc.exit_code, parsed)
    if parsed.trigger == "ssm-association":
        why = association_matches(parsed, config.compliance.association_ids, config.compliance.document_names)
        if why is None:
            reason = (
                f"{parsed.reason}, but it is neither in compliance.association_ids nor in compliance.document_names: "
                "ignored"
            )
            log.info("%s", reason)
            return _noop(reason, parsed)
        parsed = ParsedEvent(parsed.action, parsed.apply, parsed.params, parsed.trigger, f"{parsed.reason}; {why}")
    handed = _hand_off(raw, config)
    if handed is not None:
        return handed
    apply = parsed.apply if parsed.apply is not None else config.apply
    apply_from = "event" if parsed.apply is not None else "config"
    from .aws.targets import narrowed, org_listing

    try:
        if parsed.action == "list-shards":
            return _list_shards(config, parsed)
        if parsed.action == "aggregate":
            return _aggregate(config, parsed)
        if parsed.action == "guard-org-check":
            return _guard_org_check(config, parsed)
        if parsed.trigger == "launch":
            return _launch(config, parsed, apply, apply_from)
        config = _shard_config(config, parsed, apply)
        with narrowed(_scope(parsed)), org_listing(_org_listing(config, parsed)):
            if parsed.action == "list-targets":
                return _list_targets(config, parsed)
            if parsed.action == "window-status":
                return _window_status(config, parsed)
            workflow = _workflow(parsed, apply)
            compact = bool(parsed.params.get("compact", False)) or "fragments" in parsed.shard
            return _run(config, parsed, apply, apply_from, workflow, with_report=not compact)
    except FleetwardenError as exc:
        result = _error(str(exc), exc.exit_code, parsed)
        if exc.exit_code == EXIT_REFUSED:
            result["status"] = "refused"
        return _shard_out(config, parsed, result, None)


def _launch(config: Config, parsed: ParsedEvent, apply: bool, apply_from: str) -> dict[str, Any]:
    """A RunInstances / StartInstances event: the guard on that account only, now, coalesced with the others of a
    burst (workflows/guard/launch.py). Its per-account triggers only: the organization-wide limit, the findings and
    the heartbeat stay with the scheduled run."""
    from datetime import datetime

    from .aws.session import SessionFactory
    from .aws.targets import Scope, narrowed
    from .state import open_store
    from .workflows.base import new_run_id
    from .workflows.guard import GuardOptions, run_guard
    from .workflows.guard.launch import MAX_ROUNDS, claim, finish

    account_id = str(parsed.shard["accounts"][0])
    if config.organization is None and config.account(account_id) is None and config.accounts:
        return _noop(f"{parsed.reason}: not one of the config's accounts, nothing to evaluate", parsed)
    event_time = datetime.fromisoformat(str(parsed.params["event_time"]))
    store = open_store(config.state, SessionFactory(config.aws, run_id=new_run_id(utcnow())))
    try:
        why = claim(store, account_id, event_time, utcnow())
        if why is not None:
            log.info("launch in %s coalesced: %s", account_id, why)
            return {**_noop(f"{parsed.reason}: {why}", parsed), "coalesced": True}
        result: dict[str, Any] = {}
        for rounds in range(1, MAX_ROUNDS + 1):
            with narrowed(Scope(accounts=frozenset([account_id]), regions=None)):
                result = _run(
                    config,
                    parsed,
                    apply,
                    apply_from,
                    lambda run: run_guard(run, GuardOptions(apply=apply, phase="count")),
                    with_report=False,
                )
            if not finish(store, account_id, utcnow()) or rounds == MAX_ROUNDS:
                break
        result["evaluations"] = rounds
        return result
    finally:
        store.close()


def _hand_off(raw: dict[str, Any], config: Config) -> dict[str, Any] | None:
    """Over FLEETWARDEN_SHARD_ABOVE accounts, a scheduled audit, guard or compliance sync starts the org-run state
    machine instead of running here (docs/deploy-templates.md, "Hand-off"); None: run it in this invocation."""
    from .handoff import ORG_RUN_ARN_ENV, SHARD_ABOVE_ENV, hand_off

    if not os.environ.get(SHARD_ABOVE_ENV) or not os.environ.get(ORG_RUN_ARN_ENV):
        return None  # not deployed with the org-run (a CLI-made function, a test): nothing to decide
    from .aws.session import SessionFactory

    result = hand_off(raw, config, SessionFactory(config.aws), os.environ)
    if result is not None:
        log.info("%s", json.dumps(result, default=str))
    return result


def config_reference() -> str:
    """FLEETWARDEN_CONFIG, else fleetwarden.yaml at the package root ($LAMBDA_TASK_ROOT, /var/task) if it exists."""
    ref = os.environ.get(CONFIG_ENV, "").strip()
    if ref:
        return ref
    default = Path(os.environ.get("LAMBDA_TASK_ROOT") or "/var/task") / CONFIG_FILE_NAME
    if default.is_file():
        return str(default)
    problem = f"not set, and there is no {default}: set it to a path, s3://BUCKET/KEY or ssm:/NAME"
    raise ConfigError(CONFIG_ENV, [ConfigProblem("", problem)])


def _disabled() -> bool:
    raw = os.environ.get(DISABLED_ENV, "").strip().lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("", "false", "0", "no", "off"):
        return False
    # A typo must neither switch the guard off silently nor ignore an operator who meant to.
    raise EventError(f"{DISABLED_ENV} must be true or false, got {os.environ[DISABLED_ENV]!r}; nothing was done")


# -- routes --------------------------------------------------------------------------------------------
def _workflow(parsed: ParsedEvent, apply: bool) -> Workflow:
    """The workflow call for an action; imports lazily so each invocation loads only what it runs."""
    if parsed.action in UNAVAILABLE:
        raise Unavailable(parsed.action)
    if parsed.action == "audit":
        from .workflows.audit import AuditOptions, run_audit

        # Terminate needs the event's own opt-in, never the config's `apply` alone.
        confirm = bool(parsed.params.get("confirm_terminate", False))
        audit_options = AuditOptions(apply=apply, confirm_terminate=confirm)
        return lambda run: run_audit(run, audit_options)
    if parsed.action == "guard":
        from .workflows.guard import run_guard

        return lambda run: run_guard(run, _guard_options(run, parsed, apply))
    if parsed.action == "guard-release":
        from .workflows.guard import ReleaseOptions, release_guard

        release_options = ReleaseOptions(
            account_id=str(parsed.params["account"]),
            apply=apply,
            start_instances=bool(parsed.params.get("start_instances", False)),
        )
        return lambda run: release_guard(run, release_options)
    if parsed.action == "window-open":
        from .workflows.window import OpenOptions, open_window

        open_options = OpenOptions(apply=apply)
        return lambda run: open_window(run, open_options)
    if parsed.action == "window-close":
        from .workflows.window import CloseOptions, close_window

        window_id = parsed.params.get("window_id")
        close_options = CloseOptions(
            apply=apply,
            window_id=str(window_id) if window_id is not None else None,
            collect_findings=bool(parsed.params.get("collect_findings", True)),
        )
        return lambda run: close_window(run, close_options)
    if parsed.action == "compliance-sync":
        from .workflows.compliance import SyncOptions, held_alert_id, run_compliance_sync

        # An org-run's shard holds its alert in the outbox: aggregate sends the run's one alert.
        held = (
            held_alert_id(str(parsed.shard["run_id"]), int(parsed.shard["shard"]))
            if "fragments" in parsed.shard
            else None
        )
        sync_options = SyncOptions(apply=apply, held_alert_id=held)
        return lambda run: run_compliance_sync(run, sync_options)
    if parsed.action == "compliance-report":
        from .workflows.compliance import ReportOptions, run_compliance_report

        report_options = ReportOptions(apply=apply)
        return lambda run: run_compliance_report(run, report_options)
    if parsed.action == "spend-report":
        from datetime import date

        from .workflows.spend_report import SpendReportOptions, run_spend_report

        as_of = parsed.params.get("as_of")
        spend_options = SpendReportOptions(
            apply=apply,
            as_of=date.fromisoformat(str(as_of)) if as_of is not None else None,
            resend=bool(parsed.params.get("resend", False)),
        )
        return lambda run: run_spend_report(run, spend_options)
    if parsed.action == "prices-refresh":
        from .permissions import uses_burn_rate
        from .workflows.prices import PricesOptions, run_prices_refresh, skipped_refresh

        prices_options = PricesOptions(apply=apply)
        # The weekly schedule runs in every hub: without a burn-rate source there is no table to keep current.
        return lambda run: (
            run_prices_refresh(run, prices_options) if uses_burn_rate(run.config) else skipped_refresh(run, apply)
        )
    raise Unavailable(parsed.action)


def _guard_options(run: RunContext, parsed: ParsedEvent, apply: bool) -> GuardOptions:
    """A guard run's options; in an org-run with guard.max_running_instances_org (docs/deploy.md, "The guard's two
    phases"): the count phase leaves the organization-wide limit to guard-org-check; the halt phase trips its
    accounts on the total guard-org-check recorded (org-check.json), and refuses to run without one."""
    from .checks.runaway import Trigger
    from .workflows.guard import GuardOptions

    phase = str(parsed.params.get("phase") or "count")
    if "fragments" not in parsed.shard:
        return GuardOptions(apply=apply)
    if phase == "count":
        org_limit = run.config.guard.max_running_instances_org is not None
        return GuardOptions(apply=apply, phase="count" if org_limit else "all")
    from .workflows.guard.org import read_org_check
    from .workflows.shards import RunFiles

    files = RunFiles.parse(str(parsed.shard["fragments"]), str(parsed.shard["run_id"]))
    org = read_org_check(run, files)
    if org is None or not org.get("tripped"):
        raise EventError(
            f"a guard halt shard of run {files.run_id} needs the org check's trip "
            f"({files.uri(files.key('org-check.json'))}), and there is none: nothing was done"
        )
    return GuardOptions(apply=apply, phase="halt", org_trip=Trigger("org-count", int(org["total"]), int(org["limit"])))


def _window_status(config: Config, parsed: ParsedEvent) -> dict[str, Any]:
    """`window status` with Inspector coverage: `complete` is true once every window is scanned or timed out."""
    from .workflows.base import RunContext
    from .workflows.window import window_status

    window_id = parsed.params.get("window_id")
    try:
        run = RunContext.create(config)
    except FleetwardenError as exc:
        return _error(str(exc), exc.exit_code, parsed)
    base: dict[str, Any] = {**_event_fields(parsed), "run_id": run.run_id, "workflow": "window-status", "dry_run": True}
    with _redacting(run.secrets):
        try:
            status = window_status(run, window_id, check_coverage=True)
        except FleetwardenError as exc:
            result = {"status": "error", "exit_code": exc.exit_code, "error": str(exc), **base}
            log.error("%s", json.dumps(result))
            return _redact(run.secrets, result)
        finally:
            run.store.close()
    windows: list[dict[str, Any]] = status["windows"]
    if parsed.params.get("compact", False):
        windows = [_compact_window(w) for w in windows]
    result = {
        "status": "ok",
        "exit_code": EXIT_OK,
        **base,
        "window_id": window_id,
        "complete": bool(status["complete"]),
        "windows": windows,
    }
    log.info(
        "%s",
        json.dumps(
            {
                "status": "ok",
                "run_id": run.run_id,
                "workflow": "window-status",
                "window_id": window_id,
                "complete": result["complete"],
                "windows": len(windows),
            }
        ),
    )
    return _redact(run.secrets, result)


def _compact_window(window: dict[str, Any]) -> dict[str, Any]:
    """One window of `window status` without its per-instance lists: counts instead."""
    out = {k: v for k, v in window.items() if k not in ("instances", "coverage")}
    instances = window.get("instances") or []
    out["instances"] = len(instances)
    out["started"] = sum(1 for i in instances if i.get("start") == "done")
    coverage = window.get("coverage")
    if coverage is not None:
        out["coverage"] = {
            "scanned": len(coverage.get("scanned") or []),
            "pending": len(coverage.get("pending") or []),
            "errors": coverage.get("errors") or {},
        }
    return out


def _window_fields(parsed: ParsedEvent, result: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields the scan-window state machine reads: `window_id` always (null when there is none),
    `complete` for window-status, `all_closed` for window-close (see docs/deploy.md)."""
    raw = result.get("summary")
    summary: dict[str, Any] = raw if isinstance(raw, dict) else {}
    window_id = summary.get("window_id") if parsed.action == "window-open" else parsed.params.get("window_id")
    out = {**result, "window_id": result.get("window_id", window_id)}
    if parsed.action == "window-status":
        out.setdefault("complete", False)
    if parsed.action == "window-close":
        done = set(summary.get("closed") or []) | set(summary.get("already_closed") or [])
        ok = result.get("status") in ("ok", "partial") and "windows" in summary
        out["all_closed"] = ok and set(summary.get("windows") or []) <= done
    return out


def _list_targets(config: Config, parsed: ParsedEvent) -> dict[str, Any]:
    """The resolved (account, region) targets; reads Organizations/EC2 regions, changes nothing."""
    from .aws.session import SessionFactory
    from .aws.targets import resolve_targets
    from .workflows.base import new_run_id

    run_id = new_run_id(utcnow())
    plan = resolve_targets(config, SessionFactory(config.aws, run_id=run_id), check_identity=False)
    in_error = [{"account_id": t.account_id, "region": t.region, "error": t.error} for t in plan.errors]
    code = EXIT_PARTIAL if in_error else EXIT_OK
    result: dict[str, Any] = {
        "status": "partial" if in_error else "ok",
        "exit_code": code,
        **_event_fields(parsed),
        "run_id": run_id,
        "workflow": "list-targets",
        "dry_run": True,
        "summary": {"accounts": len(plan.accounts), "targets": len(plan.targets), "targets_error": len(in_error)},
        "accounts": [{"account_id": a.account_id, "name": a.name, "role_arn": a.role_arn} for a in plan.accounts],
        "targets": [{"account_id": t.account_id, "region": t.region} for t in plan.targets],
        "targets_in_error": in_error,
    }
    log.info("%s", json.dumps({k: result[k] for k in ("status", "run_id", "workflow", "summary")}))
    return result


def _run(
    config: Config, parsed: ParsedEvent, apply: bool, apply_from: str, workflow: Workflow, *, with_report: bool = True
) -> dict[str, Any]:
    from .errors import SafetyRefusal
    from .workflows.base import exit_code

    try:
        run = _run_context(config, parsed)
    except FleetwardenError as exc:  # e.g. the state store cannot be opened
        return _shard_out(config, parsed, _error(str(exc), exc.exit_code, parsed), None)
    shared = parsed.shard.get("run_id")
    base: dict[str, Any] = {
        **_event_fields(parsed),
        "run_id": str(shared) if shared is not None else run.run_id,
        "workflow": parsed.action,
        "dry_run": not apply,
        "apply_from": apply_from,
    }
    if shared is not None:
        base["invocation_run_id"] = run.run_id  # the leases' owner and the journal's run id
    with _redacting(run.secrets):
        try:
            report = workflow(run)
            if shared is not None:
                report.run_id = str(shared)
        except SafetyRefusal as exc:
            result = {"status": "refused", "exit_code": EXIT_REFUSED, "error": str(exc), **base}
            log.warning("%s", json.dumps(result))
            _record_run(config, run, parsed, parsed.action, result)
            return _shard_out(config, parsed, _redact(run.secrets, result), None)
        except FleetwardenError as exc:
            result = {"status": "error", "exit_code": exc.exit_code, "error": str(exc), **base}
            log.error("%s", json.dumps(result))
            _record_run(config, run, parsed, parsed.action, result)
            return _shard_out(config, parsed, _redact(run.secrets, result), None)
        finally:
            run.store.close()
        code = exit_code(report)
        result = {
            "status": "partial" if code == EXIT_PARTIAL else "ok",
            "exit_code": code,
            **base,
            "workflow": report.workflow,
            "dry_run": report.dry_run,
            "summary": report.summary,
            "targets_in_error": [
                {"account_id": t.account_id, "region": t.region, "error": t.error}
                for t in report.targets
                if t.status == TargetStatus.ERROR
            ],
        }
        line = {k: v for k, v in result.items() if k != "targets_in_error"}
        line["targets_in_error"] = len(result["targets_in_error"])
        log.info("%s", run.secrets.redact(json.dumps(line, default=str)))
        result = _redact(run.secrets, result)
        _record_run(config, run, parsed, parsed.action, result)
        if "fragments" in parsed.shard:  # an org-run's shard: the whole fragment to S3, the summary returned
            return _shard_out(config, parsed, result, _redact(run.secrets, report.to_dict()), run.factory)
        if not with_report:  # a compact result: the summary only (the state machine's events ask for that)
            return result
        return _attach_report(result, _redact(run.secrets, report.to_dict()), _max_items())


# -- shards (docs/lambda.md, "Shards") ------------------------------------------------------------------
def _scope(parsed: ParsedEvent) -> Scope | None:
    """The targets a shard event narrows the run to (None: the whole config)."""
    from .aws.targets import Scope

    accounts, regions = parsed.shard.get("accounts"), parsed.shard.get("regions")
    if accounts is None and regions is None:
        return None
    return Scope(
        accounts=frozenset(accounts) if accounts is not None else None,
        regions=frozenset(regions) if regions is not None else None,
    )


def _org_listing(config: Config, parsed: ParsedEvent) -> list[dict[str, Any]] | None:
    """An org-run shard's organization accounts, as list-shards listed them (its run's `organization.json`), so
    that the organization is listed once per org-run rather than once per shard; None (list it here): not an
    org-run shard, no `organization:` in the config, or that file cannot be used (read_organization says why)."""
    if config.organization is None or "fragments" not in parsed.shard or "run_id" not in parsed.shard:
        return None
    from .aws.session import SessionFactory
    from .workflows.shards import RunFiles, read_organization

    files = RunFiles.parse(str(parsed.shard["fragments"]), str(parsed.shard["run_id"]))
    factory = SessionFactory(config.aws, run_id=files.run_id)
    return read_organization(config, factory, files, parsed.shard.get("accounts"))


def _shard_config(config: Config, parsed: ParsedEvent, apply: bool) -> Config:
    """The config as a shard of an org-run uses it: its notifications go out once, from `aggregate`, and an audit
    that may act keeps to its share of `audit.max_actions` (never more than the config's limit)."""
    if not parsed.shard:
        return config
    outside_org_run = "fragments" not in parsed.shard and ("accounts" in parsed.shard or "regions" in parsed.shard)
    if parsed.action == "guard" and outside_org_run:
        _refuse_org_limit_in_shards(config)
    if parsed.action == "guard" and "fragments" in parsed.shard:
        # The trip notice and the heartbeat go out once for the whole org-run, from aggregate.
        quiet = config.guard.heartbeat.model_copy(update={"enabled": False})
        return config.model_copy(update={"guard": config.guard.model_copy(update={"notify": [], "heartbeat": quiet})})
    audit_changes: dict[str, Any] = {}
    if "fragments" in parsed.shard:
        audit_changes["notify"] = []
    share = parsed.shard.get("max_actions")
    if parsed.action == "audit":
        if share is not None:
            audit_changes["max_actions"] = min(int(share), config.audit.max_actions)
        elif apply and config.audit.action != "report" and "accounts" in parsed.shard:
            from .errors import SafetyRefusal

            # Each shard would otherwise allow the whole organization's limit.
            raise SafetyRefusal(
                "a sharded audit that may act needs max_actions (the shard's share of audit.max_actions, which "
                "list-shards gives every shard); nothing was done"
            )
    if not audit_changes:
        return config
    return config.model_copy(update={"audit": config.audit.model_copy(update=audit_changes)})


def _refuse_org_limit_in_shards(config: Config) -> None:
    """A shard outside an org-run (no `fragments`) sees only its own accounts, and no org check follows it: it
    would compare a part of the organization's running instances with guard.max_running_instances_org and miss a
    trip. Such a guard runs in one process or through the org-run (docs/deploy.md)."""
    if config.guard.max_running_instances_org is not None:
        raise EventError(
            "guard.max_running_instances_org is an organization-wide limit that a shard outside an org-run cannot "
            'evaluate (it counts only its own accounts); run the guard in one process (the {"action": "guard"} '
            "event) or through the org-run state machine (list-shards gives each shard `fragments`); nothing was "
            "done"
        )


def _run_context(config: Config, parsed: ParsedEvent, *, invocation: bool = True) -> RunContext:
    """A RunContext. In an org-run, the report carries the run id every shard shares; the context's own run id
    (the lease owner, the journal's run id) is that id plus the shard and a per-invocation suffix, so that two
    invocations of one shard (a retry while the first still runs) exclude each other through the leases."""
    import uuid

    from .aws.session import SessionFactory
    from .workflows.base import RunContext

    shared = parsed.shard.get("run_id")
    if shared is None:
        return RunContext.create(config)
    run = RunContext.create(config, factory=SessionFactory(config.aws, run_id=str(shared)))
    shard = parsed.shard.get("shard")
    suffix = f".{int(shard):05d}" if shard is not None else ""
    run.run_id = f"{shared}{suffix}.{uuid.uuid4().hex[:8]}" if invocation else str(shared)
    return run


def _shard_out(
    config: Config,
    parsed: ParsedEvent,
    result: dict[str, Any],
    report: dict[str, Any] | None,
    factory: SessionFactory | None = None,
) -> dict[str, Any]:
    """A shard of an org-run writes its outcome (status, exit code, error, RunReport fragment) to S3 for
    `aggregate`, refusals and errors included, and returns the result without the report."""
    if "fragments" not in parsed.shard:
        return result
    from .aws.session import SessionFactory
    from .workflows.shards import FragmentStoreError, RunFiles, put_json

    files = RunFiles.parse(str(parsed.shard["fragments"]), str(parsed.shard["run_id"]))
    shard = int(parsed.shard["shard"])
    phase = str(parsed.params.get("phase") or "count")
    fragment = {
        "shard": shard,
        "phase": phase,
        "accounts": parsed.shard.get("accounts", []),
        **{k: result.get(k) for k in ("status", "exit_code", "error", "run_id", "workflow")},
        "report": report,
    }
    try:
        factory = factory or SessionFactory(config.aws, run_id=files.run_id)
        uri = put_json(factory, files, files.fragment_key(shard, phase), fragment, config.aws.sts_region)
    except FragmentStoreError as exc:
        # The shard's work is done but unreported: `aggregate` counts its accounts as error targets.
        log.error("shard %d: %s", shard, exc)
        return {**result, "shard": shard, "fragment_error": str(exc)}
    return {**result, "shard": shard, "fragment": uri}


def _list_shards(config: Config, parsed: ParsedEvent) -> dict[str, Any]:
    """The config's accounts in shards, each shard a workflow event for one Map iteration (changes nothing but
    the shard list it writes to S3)."""
    from .aws.session import SessionFactory
    from .aws.targets import org_listing
    from .workflows.base import new_run_id
    from .workflows.shards import (
        SHARDS_FILE,
        RunFiles,
        account_shards,
        list_organization,
        put_json,
        shard_items,
        write_organization,
    )

    params = parsed.params
    template = dict(params["event"])
    try:
        inner = parse_event(template)
    except EventError as exc:
        return _error(f"list-shards: the event to shard is invalid: {exc}", EXIT_USAGE, parsed)
    if inner.action not in ORG_RUN_ACTIONS or inner.shard:
        return _error(
            f"list-shards: event must be a workflow event ({', '.join(ORG_RUN_ACTIONS)}) without shard fields "
            f"({', '.join(SHARD_KEYS)}); got {inner.action!r}",
            EXIT_USAGE,
            parsed,
        )
    if inner.params.get("phase", "count") != "count":
        return _error("list-shards: a guard event's phase is set by the org-run, not by its input", EXIT_USAGE, parsed)
    fragments = params.get("fragments")
    # The guard's organization-wide limit: the shards count, guard-org-check adds up (from their fragments).
    org_check = inner.action == "guard" and config.guard.max_running_instances_org is not None
    if org_check and fragments is None:
        return _error(
            "list-shards: guard.max_running_instances_org needs `fragments` (the org check adds up the shards' "
            "counts from their fragments); nothing was done",
            EXIT_USAGE,
            parsed,
        )
    run_id = str(params.get("run_id") or new_run_id(utcnow()))
    factory = SessionFactory(config.aws, run_id=run_id)
    # The organization is listed once for the whole org-run: the shards resolve their accounts from this listing
    # (organization.json) instead of each listing it again.
    organization = list_organization(config, factory)
    with org_listing(organization):
        shards = account_shards(config, factory, int(params["size"]))
    inner_apply = inner.apply if inner.apply is not None else config.apply
    may_act = inner.action == "audit" and inner_apply and config.audit.action != "report"
    items = shard_items(
        template,
        shards,
        run_id=run_id,
        fragments=fragments,
        regions=params.get("regions"),
        audit_max_actions=config.audit.max_actions if may_act else None,
    )
    result: dict[str, Any] = {
        "status": "ok",
        "exit_code": EXIT_OK,
        **_event_fields(parsed),
        "run_id": run_id,
        "workflow": inner.action,
        "accounts": sum(len(s) for s in shards),
        "count": len(items),
        "fragments": fragments,
        "org_check": org_check,
        "bucket": None,
        "key": None,
    }
    if fragments is not None:
        files = RunFiles.parse(str(fragments), run_id)
        if organization is not None:  # before the shard items: every item written has its listing
            write_organization(factory, files, organization, config.aws.sts_region)
        listing = {
            "run_id": run_id,
            "workflow": inner.action,
            "event": template,
            "org_check": org_check,
            "shards": items,
        }
        put_json(factory, files, files.key(SHARDS_FILE), listing, config.aws.sts_region)
        # The Distributed Map's ItemReader reads a JSON array: the items alone.
        items_key = files.key("items.json")
        put_json(factory, files, items_key, items, config.aws.sts_region)
        result["bucket"], result["key"] = files.bucket, items_key
    inline = fragments is None or len(items) <= int(params["inline_max"])
    result["inline"] = inline
    result["shards"] = items if inline else []
    log.info("%s", json.dumps({k: result[k] for k in ("status", "run_id", "workflow", "accounts", "count", "inline")}))
    return result


def _guard_org_check(config: Config, parsed: ParsedEvent) -> dict[str, Any]:
    """Phase 2 of a guard org-run: add up the count shards' `running`; over guard.max_running_instances_org, latch
    one org trip (with apply) before any halt and write the halt items. `halt` tells the state machine whether to
    run the halt phase; a shard that did not report makes the total a lower bound (under the limit: partial)."""
    from .workflows.guard.org import org_check
    from .workflows.shards import RunFiles

    run_id = str(parsed.params["run_id"])
    files = RunFiles.parse(str(parsed.params["fragments"]), run_id)
    parsed = ParsedEvent(parsed.action, parsed.apply, parsed.params, parsed.trigger, parsed.reason, {"run_id": run_id})
    run = _run_context(config, parsed, invocation=False)
    with _redacting(run.secrets):
        try:
            check = org_check(run, files)
        finally:
            run.store.close()
    partial = check.lower_bound and not check.tripped
    result: dict[str, Any] = {
        "status": "partial" if partial else "ok",
        "exit_code": EXIT_PARTIAL if partial else EXIT_OK,
        **_event_fields(parsed),
        "run_id": run_id,
        "workflow": "guard",
        "fragments": parsed.params["fragments"],
        "tripped": check.tripped,
        "total": check.total,
        "limit": check.limit,
        "lower_bound": check.lower_bound,
        "missing": check.missing,
        "latched": check.latched,
        "accounts_to_halt": len(check.accounts),
        "halt": bool(check.halt),
        "halt_shards": len(check.halt),
        "bucket": check.bucket or None,
        "key": check.key or None,
    }
    log.info("%s", json.dumps({k: result[k] for k in ("status", "run_id", "total", "limit", "tripped", "halt")}))
    return _redact(run.secrets, result)


def _aggregate(config: Config, parsed: ParsedEvent) -> dict[str, Any]:
    """Merge an org-run's fragments into one RunReport (to S3, delivered once) with one exit status."""
    from .workflows.shards import RunFiles, aggregate

    run_id = str(parsed.params["run_id"])
    files = RunFiles.parse(str(parsed.params["fragments"]), run_id)
    parsed = ParsedEvent(parsed.action, parsed.apply, parsed.params, parsed.trigger, parsed.reason, {"run_id": run_id})
    run = _run_context(config, parsed, invocation=False)
    with _redacting(run.secrets):
        try:
            merged = aggregate(run, files)
        finally:
            run.store.close()
    report = merged.report
    result: dict[str, Any] = {
        "status": merged.status,
        "exit_code": merged.exit_code,
        **_event_fields(parsed),
        "run_id": run_id,
        "workflow": report.workflow,
        "dry_run": report.dry_run,
        "report_uri": merged.report_uri,
        "shards": {
            "expected": merged.shards_expected,
            "reported": len(merged.shards_reported),
            "missing": merged.missing,
            "errors": merged.shard_errors[:20],
            **({"halt": merged.halt} if merged.halt is not None else {}),
        },
        "summary": report.summary,
        "deliveries": [d.model_dump(mode="json") for d in report.deliveries],
        "targets_in_error": [
            {"account_id": t.account_id, "region": t.region, "error": t.error}
            for t in report.targets
            if t.status == TargetStatus.ERROR
        ][:100],
    }
    log.info("%s", run.secrets.redact(json.dumps({k: result[k] for k in ("status", "run_id", "shards")})))
    result = _redact(run.secrets, result)
    _record_run(config, run, None, str(report.workflow), result)  # an org-run: the whole run, under its job
    return result


def _record_run(
    config: Config, run: RunContext, parsed: ParsedEvent | None, action: str, result: dict[str, Any]
) -> None:
    """The `last-run` record `fleetwarden doctor` reads (docs/doctor.md). A shard is part of a run: the
    aggregate records the whole. A store of its own, since the run's is closed by now; never raises."""
    if parsed is not None and parsed.shard:
        return
    from .doctor import record_run
    from .state import open_store

    try:
        store = open_store(config.state, run.factory, create=True)  # the run's own store: no table check again
    except FleetwardenError as exc:
        log.warning("could not record the run of %s: %s", action, exc)
        return
    try:
        record_run(store, action, result, utcnow())
    finally:
        store.close()


# -- results -------------------------------------------------------------------------------------------
def _event_fields(parsed: ParsedEvent | None) -> dict[str, Any]:
    if parsed is None:
        return {}
    return {"action": parsed.action, "trigger": parsed.trigger, "reason": parsed.reason}


def _noop(reason: str, parsed: ParsedEvent | None = None) -> dict[str, Any]:
    log.info("no-op: %s", reason)
    return {"status": "noop", "exit_code": EXIT_OK, **_event_fields(parsed), "reason": reason}


def _error(message: str, code: int, parsed: ParsedEvent | None = None) -> dict[str, Any]:
    log.error("%s", message)
    return {"status": "error", "error": message, "exit_code": code, **_event_fields(parsed)}


def _redact(secrets: SecretResolver, value: dict[str, Any]) -> dict[str, Any]:
    if not secrets.values():
        return value
    redacted: dict[str, Any] = json.loads(secrets.redact(json.dumps(value, default=str)))
    return redacted


def _max_items() -> int:
    raw = os.environ.get("FLEETWARDEN_MAX_REPORT_ITEMS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_ITEMS


def _attach_report(result: dict[str, Any], report: dict[str, Any], max_items: int) -> dict[str, Any]:
    """Put the RunReport in the result, trimming findings and actions so the response fits Lambda's limit."""
    totals = {key: len(report.get(key) or []) for key in ("findings", "actions")}
    limits = {key: min(total, max_items) for key, total in totals.items()}
    findings_sorted = False
    while True:
        if limits["findings"] < totals["findings"] and not findings_sorted:
            # Keep what matters most: open findings first, most severe first.
            report["findings"] = sorted(report["findings"], key=_finding_priority)
            findings_sorted = True
        for key, limit in limits.items():
            report[key] = (report.get(key) or [])[:limit]
        result["report"] = report
        if len(json.dumps(result, default=str)) <= MAX_RESPONSE_BYTES or not any(limits.values()):
            break
        largest = max(limits, key=lambda k: limits[k])
        limits[largest] //= 2
    truncated = {key: {"kept": limits[key], "total": totals[key]} for key in totals if limits[key] < totals[key]}
    if truncated:
        result["truncated"] = truncated
        kept = ", ".join(f"{v['kept']} of {v['total']} {k}" for k, v in truncated.items())
        result["note"] = (
            f"report trimmed to {kept} to fit Lambda's response limit (open and most severe findings first); "
            "the summary still counts everything"
        )
    return result


def _finding_priority(finding: dict[str, Any]) -> tuple[bool, int]:
    open_statuses = (FindingStatus.NEW.value, FindingStatus.ONGOING.value)
    ranks = {s.value: s.rank for s in Severity}
    return (finding.get("status") not in open_statuses, -ranks.get(str(finding.get("severity")), 0))


# -- logging -------------------------------------------------------------------------------------------
def _setup_logging() -> None:
    """INFO by default (FLEETWARDEN_LOG_LEVEL); the Lambda runtime's root handler writes to CloudWatch Logs."""
    level = os.environ.get("FLEETWARDEN_LOG_LEVEL", "INFO").upper()
    logging.getLogger("fleetwarden").setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


@contextmanager
def _redacting(secrets: SecretResolver) -> Iterator[None]:
    """Redact resolved secrets from every fleetwarden log record during one invocation, then remove the filter.

    Records of fleetwarden.* loggers propagate to the handlers of the root logger (the Lambda runtime's), so the
    filter goes on those handlers; removing it afterwards keeps warm containers from accumulating filters.
    """
    redacting = RedactingFilter(secrets)
    logger = logging.getLogger("fleetwarden")
    handlers = [*logging.getLogger().handlers, *logger.handlers]
    logger.addFilter(redacting)
    for h in handlers:
        h.addFilter(redacting)
    try:
        yield
    finally:
        logger.removeFilter(redacting)
        for h in handlers:
            h.removeFilter(redacting)


__all__ = ["config_reference", "handler"]
