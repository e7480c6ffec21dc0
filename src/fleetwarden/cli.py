"""The `fleetwarden` command line: a thin skin over the workflows (DESIGN.md "CLI")."""

from __future__ import annotations

import functools
import getpass
import json
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import Config, load_config
from .errors import EXIT_UNEXPECTED, EXIT_USAGE, FleetwardenError, UsageError
from .model import ExceptionKind, ExceptionRule, RunReport, Severity, parse_expiry, utcnow
from .secrets import RedactingFilter

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("fleetwarden")
SEVERITIES = [s.value for s in Severity]


class Options:
    """The global options, which may come before the command or after it."""

    def __init__(self) -> None:
        self.config_path = "fleetwarden.yaml"
        self.json = False
        self.output_dir: Path | None = None
        self.verbosity = 0
        # The AWS CLI's habits and c7n-org's run-time scoping (docs/cli.md "Profiles, regions and scope").
        self.profile: str | None = None
        self.region: str | None = None
        self.accounts: list[str] = []
        self.exclude_accounts: list[str] = []
        self.ous: list[str] = []
        self.regions: list[str] = []

    def console(self) -> Console:
        return Console(stderr=True, quiet=self.verbosity < 0)


def _set(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    opts = ctx.ensure_object(Options)
    if value is None or (param.name == "json" and not value):
        return value
    if param.name == "config":
        opts.config_path = value
    elif param.name == "json":
        opts.json = True
    elif param.name == "output_dir":
        opts.output_dir = Path(value)
    elif param.name in ("verbose", "quiet") and value:
        opts.verbosity = value if param.name == "verbose" else -1
    elif param.name in ("profile", "region"):
        setattr(opts, param.name, value)
    elif param.name in ("accounts", "exclude_accounts", "ous", "regions") and value:
        # Repeatable and comma-separated alike (`-a 1,2 -a 3`), as c7n-org takes them.
        items = [item.strip() for chunk in value for item in chunk.split(",") if item.strip()]
        setattr(opts, param.name, [*getattr(opts, param.name), *items])
    return value


def global_options(func: F) -> F:
    """Attach the global options, so `fleetwarden audit --json` works as well as `fleetwarden --json audit`."""
    decorators = [
        click.option(
            "--config",
            "-c",
            type=click.Path(),  # a directory is reported by the loader in one line
            callback=_set,
            expose_value=False,
            help="Config file (default ./fleetwarden.yaml).",
        ),
        click.option(
            "--json", is_flag=True, callback=_set, expose_value=False, help="Print the RunReport JSON on stdout."
        ),
        click.option(
            "--output-dir",
            type=click.Path(file_okay=False),
            callback=_set,
            expose_value=False,
            help="Write run.json, findings.csv and report.html here.",
        ),
        click.option("-v", "--verbose", count=True, callback=_set, expose_value=False, help="More log output."),
        click.option("-q", "--quiet", is_flag=True, callback=_set, expose_value=False, help="Only errors."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def aws_options(func: F) -> F:
    """--profile and --region, as the AWS CLI's: for every command that calls AWS (the state store included)."""
    decorators = [
        click.option(
            "--profile",
            callback=_set,
            expose_value=False,
            help="AWS named profile (as the AWS CLI's); default: AWS_PROFILE, else the default credential chain.",
        ),
        click.option(
            "--region",
            callback=_set,
            expose_value=False,
            help="Home region for STS, IAM, Organizations and the hub's resources (aws.sts_region); default: the "
            "config's, else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def scope_options(func: F) -> F:
    """c7n-org's run-time scoping, for the commands that fan out over accounts and regions: they narrow the
    config's targets, never widen them."""
    decorators = [
        click.option(
            "--accounts",
            "-a",
            multiple=True,
            callback=_set,
            expose_value=False,
            help="Only these accounts of the config (ids, comma-separated or repeated); narrows, never widens.",
        ),
        click.option(
            "--exclude-accounts",
            multiple=True,
            callback=_set,
            expose_value=False,
            help="Leave these accounts of the config out (ids, comma-separated or repeated).",
        ),
        click.option(
            "--ou",
            "ous",
            multiple=True,
            callback=_set,
            expose_value=False,
            help="Only accounts under this organizational unit or root, nested OUs included (ou-... / r-...).",
        ),
        click.option(
            "--regions",
            multiple=True,
            callback=_set,
            expose_value=False,
            help="Only these of the config's regions (comma-separated or repeated); narrows, never widens.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _setup_logging(opts: Options) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(opts.verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fleetwarden")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Libraries' own warnings (slack_sdk, urllib3, opensearch-py) go through a handler of ours too, so the
    # secrets' redaction filter applies to them as well.
    if not logging.getLogger().handlers:
        others = logging.StreamHandler(sys.stderr)
        others.setFormatter(handler.formatter)
        others.setLevel(logging.WARNING)
        logging.getLogger().addHandler(others)


def _load(opts: Options) -> Config:
    """The config, with the command line's --profile and --region applied (they win over the file; the region
    environment variables only fill a home region the file does not name)."""
    import os

    from .config.models import AwsSettings
    from .errors import ConfigError, ConfigProblem

    config = load_config(opts.config_path)
    aws = config.aws.model_dump(exclude_unset=True)
    if opts.profile is not None:
        aws["profile"] = opts.profile
    region = opts.region
    env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    source = "--region"
    if region is None and "sts_region" not in aws and env_region:
        region, source = env_region, "AWS_REGION" if os.environ.get("AWS_REGION") else "AWS_DEFAULT_REGION"
    if region is not None:
        aws["sts_region"] = region
    if aws != config.aws.model_dump(exclude_unset=True):
        try:
            settings = AwsSettings.model_validate(aws)
        except ValueError as exc:
            problems = [ConfigProblem(source if "sts_region" in str(exc) else "--profile", _first_error(exc))]
            raise ConfigError("the command line", problems) from None
        config = config.model_copy(update={"aws": settings})
    _check_regions_filter(config, opts)
    return config


def _first_error(exc: ValueError) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
    return str(exc)


def _check_regions_filter(config: Config, opts: Options) -> None:
    """--regions names real regions, and (for a config with a region list) only regions of that list."""
    from .config.models import _region
    from .errors import ConfigError, ConfigProblem

    problems = []
    for name in opts.regions:
        try:
            _region(name)
        except ValueError as exc:
            problems.append(ConfigProblem("--regions", str(exc)))
            continue
        if isinstance(config.regions, list) and name not in config.regions:
            listed = ", ".join(config.regions)
            problems.append(
                ConfigProblem(
                    "--regions", f"{name} is not among the config's regions ({listed}): it narrows, never widens"
                )
            )
    if problems:
        raise ConfigError("the command line", problems)


def _scope(opts: Options) -> Any:
    """The run-time narrowing of the config's targets, or None when no filter is given."""
    from .aws.targets import Scope

    if not (opts.accounts or opts.exclude_accounts or opts.ous or opts.regions):
        return None
    return Scope(
        accounts=frozenset(opts.accounts) if opts.accounts else None,
        regions=frozenset(opts.regions) if opts.regions else None,
        exclude_accounts=frozenset(opts.exclude_accounts),
        ous=frozenset(opts.ous) if opts.ous else None,
        strict=True,
    )


def handle_errors(func: F) -> F:
    """Map errors to exit codes with a clear one-line message on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        from .aws.targets import error_text

        try:
            return func(*args, **kwargs)
        except FleetwardenError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except NoCredentialsError:
            click.echo("error: no AWS credentials found (environment, profile, SSO or instance role)", err=True)
            sys.exit(EXIT_USAGE)
        except (ClientError, BotoCoreError) as exc:
            # An AWS failure outside any target's isolation (the state store, a secret): one line, no traceback
            # unless -vv asks for one.
            logging.getLogger("fleetwarden").debug("AWS error", exc_info=True)
            click.echo(f"error: {error_text(exc)}", err=True)
            sys.exit(EXIT_UNEXPECTED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="fleetwarden")
@global_options
@aws_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """fleetwarden keeps an AWS organization's EC2 fleet safe and accountable.

    Every command reads one YAML config (--config, default ./fleetwarden.yaml). Commands that change
    anything are dry runs unless given --apply. Exit codes: 0 ok, 2 usage or config error, 5 refused by a
    safety rule, 1 unexpected error, 4 partial (some targets or deliveries failed), 3 findings at or above
    --fail-on.
    """
    ctx.ensure_object(Options)


# The commands that write files into --output-dir, and those with a --json output (docs/cli.md "JSON output"):
# elsewhere the option is refused rather than silently ignored.
OUTPUT_DIR_COMMANDS = frozenset(
    {
        "audit",
        "guard run",
        "guard release",
        "window open",
        "window close",
        "window run",
        "compliance sync",
        "compliance report",
        "report",
        "findings inspector",
        "findings exposure",
        "spend report",
        "demo",
    }
)
JSON_COMMANDS = (OUTPUT_DIR_COMMANDS - {"demo"}) | {
    "validate",
    "guard status",
    "window status",
    "exceptions list",
    "exceptions add",
    "doctor",
    "permissions",
    "prices refresh",
}


def _command_name(ctx: click.Context) -> str:
    """`guard status` for the context of `fleetwarden guard status` (the program's own name left out)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def _opts(ctx: click.Context) -> Options:
    from .errors import UsageError

    opts = ctx.find_object(Options)
    assert opts is not None
    _setup_logging(opts)
    name = _command_name(ctx)
    if opts.output_dir is not None and name not in OUTPUT_DIR_COMMANDS:
        raise UsageError(f"--output-dir: `{name}` writes no files; nothing was done")
    if opts.json and name not in JSON_COMMANDS:
        raise UsageError(f"--json: `{name}` has no JSON output; nothing was done")
    return opts


def _context(config: Config) -> Any:
    from .aws.fanout import progress_reporting
    from .aws.targets import narrowed
    from .workflows.base import RunContext

    ctx = click.get_current_context()
    opts = _opts(ctx)
    scope = _scope(opts)
    # Both are undone when the command's context closes (tests run many commands in one process).
    if scope is not None:
        ctx.with_resource(narrowed(scope))
    # Progress on stderr (a bar on a terminal, a line every few seconds in a log); -q silences it.
    ctx.with_resource(progress_reporting("auto" if opts.verbosity >= 0 else "off"))
    run = RunContext.create(config)
    logging.getLogger("fleetwarden").addFilter(RedactingFilter(run.secrets))
    for handler in [*logging.getLogger("fleetwarden").handlers, *logging.getLogger().handlers]:
        handler.addFilter(RedactingFilter(run.secrets))
    return run


def _check_output_dir(opts: Options) -> None:
    """Before anything is done: the --output-dir can be created and written, or a one-line error (exit 2)."""
    import tempfile

    from .errors import UsageError

    if opts.output_dir is None:
        return
    try:
        opts.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=opts.output_dir, prefix=".fleetwarden-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"--output-dir {opts.output_dir}: cannot write there ({exc.strerror or exc}); nothing was done"
        ) from None


def _emit(opts: Options, report: RunReport, redact: Callable[[str], str] | None = None, context: Any = None) -> bool:
    """Print the report and write its files; False if the files could not be written (the run still counts)."""
    from .output import print_report, write_outputs

    print_report(report, opts.console(), output_dir=opts.output_dir)
    written_ok = True
    if opts.output_dir is not None:
        try:
            # Every file passes through the secrets' redaction once more: a last net behind each error's own.
            written = write_outputs(report, opts.output_dir, redact=redact, context=context)
            opts.console().print("wrote " + ", ".join(str(p) for p in written))
        except OSError as exc:
            written_ok = False
            click.echo(f"error: could not write the outputs to {opts.output_dir}: {exc.strerror or exc}", err=True)
    if opts.json:
        click.echo(report.to_json())
    return written_ok


def _final_code(code: int, written_ok: bool) -> int:
    from .errors import EXIT_PARTIAL

    return EXIT_PARTIAL if not written_ok and code in (0, 3) else code


@main.command()
@global_options
@click.pass_context
@handle_errors
def validate(ctx: click.Context) -> None:
    """Check the config file and print a short summary. Makes no AWS call."""
    opts = _opts(ctx)
    config = _load(opts)
    accounts = len(config.accounts)
    regions = config.regions if config.regions == "all" else len(config.regions)
    org = " + organization accounts" if config.organization else ""
    summary = {
        "config": opts.config_path,
        "valid": True,
        "accounts": accounts,
        "organization": config.organization is not None,
        "regions": config.regions,
        "sinks": sorted(config.sinks),
        "audit_action": config.audit.action,
    }
    if opts.json:
        from .outputs import ValidateOutput

        click.echo(ValidateOutput.model_validate(summary).dump())
    opts.console().print(
        f"[green]ok[/green] {opts.config_path}: {accounts} account(s){org}, regions: {regions}, "
        f"sinks: {', '.join(sorted(config.sinks)) or 'none'}, audit action: {config.audit.action}"
    )


@main.command()
@click.option("--apply", is_flag=True, help="Carry out the configured action (stop / terminate). Default: dry run.")
@click.option("--confirm-terminate", is_flag=True, help="Confirm terminations (needed with action: terminate).")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES, case_sensitive=False),
    help="Exit 3 if an open finding is at or above this severity.",
)
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def audit(ctx: click.Context, apply: bool, confirm_terminate: bool, fail_on: str | None) -> None:
    """Audit every instance's tags in every account and region; report, stop or terminate violators.

    Without --apply nothing is changed on the fleet: findings are recorded and the report is delivered to
    `audit.notify`, and the planned actions are listed. With --apply the configured `audit.action` runs
    (terminate also needs --confirm-terminate, or typing the account ids at an interactive prompt).
    """
    from .workflows.audit import AuditOptions, run_audit

    prompt = _terminate_prompt if sys.stdin.isatty() and not _opts(ctx).json else None
    options = AuditOptions(apply=apply, confirm_terminate=confirm_terminate, confirm_prompt=prompt)
    _run_workflow(ctx, lambda run: run_audit(run, options), fail_on)


def _terminate_prompt(accounts: list[str]) -> bool:
    click.echo(f"About to TERMINATE instances in account(s): {', '.join(accounts)}", err=True)
    typed = click.prompt("Type the account id(s), comma-separated, to confirm", err=True, default="")
    return sorted(a.strip() for a in typed.split(",") if a.strip()) == accounts


@main.group()
def guard() -> None:
    """The runaway guard: halt accounts whose running instances or spend pass a limit; release them after.

    A trip latches per account until `guard release`. While tripped, every `guard run --apply` stops anything
    running again, and notifies only when it had to act.
    """


_BREAK_LEASE_HELP = (
    "Take over the guard's lock on an account from another run (journaled). Only when that run is known dead and "
    "cannot wait for its lock to expire (two minutes)."
)


@guard.command("run")
@click.option("--apply", is_flag=True, help="Halt tripped accounts, lock users out, record the trip, notify.")
@click.option("--break-lease", is_flag=True, help=_BREAK_LEASE_HELP)
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def guard_run(ctx: click.Context, apply: bool, break_lease: bool) -> None:
    """Evaluate the count and spend triggers per account and org-wide; halt the tripped accounts.

    Without --apply the triggers are evaluated and shown and the halt is planned: nothing is recorded, nothing
    is sent. With --apply: every running and pending instance of a tripped account is stopped in every region,
    its Auto Scaling processes are suspended, IAM users are locked out (reversibly by default), the trip is
    recorded and the `guard.notify` sinks are told.
    """
    from .workflows.guard import GuardOptions, run_guard

    _run_workflow(ctx, lambda run: run_guard(run, GuardOptions(apply=apply, break_lease=break_lease)))


@guard.command("status")
@global_options
@aws_options
@click.pass_context
@handle_errors
def guard_status_cmd(ctx: click.Context) -> None:
    """Show which accounts are tripped, since when, and why."""
    from .workflows.guard import guard_status

    opts = _opts(ctx)
    run = _context(_load(opts))
    states = guard_status(run)
    run.store.close()
    if opts.json:
        from .outputs import GuardStatusOutput

        accounts = [{"account_id": s.account_id, **s.to_data()} for s in states]
        click.echo(GuardStatusOutput.model_validate({"accounts": accounts}).dump())
        return
    table = Table(title="guard status")
    for column in ("account", "state", "since", "scope", "triggers", "released"):
        table.add_column(column)
    for s in states:
        table.add_row(
            s.account_id,
            ("[red]TRIPPED[/red] (release unfinished)" if s.releasing else "[red]TRIPPED[/red]")
            if s.tripped
            else "released",
            s.since or "",
            s.scope,
            "; ".join(str(t.get("text", "")) for t in s.triggers),
            s.released_at or "",
        )
    if not states:
        opts.console().print("no account has tripped the guard")
    else:
        Console().print(table)


@guard.command("release")
@click.option("--account", "account_id", required=True, help="The 12-digit account to release.")
@click.option("--apply", is_flag=True, help="Restore from the journal. Default: list the planned restore.")
@click.option("--start-instances", is_flag=True, help="Also start the instances the guard stopped (off by default).")
@click.option("--break-lease", is_flag=True, help=_BREAK_LEASE_HELP)
@global_options
@aws_options
@click.pass_context
@handle_errors
def guard_release(ctx: click.Context, account_id: str, apply: bool, start_instances: bool, break_lease: bool) -> None:
    """Undo a trip exactly as journaled: re-activate the keys that were Active, remove the deny policies,
    resume the suspended Auto Scaling processes and, with --start-instances, start what the guard stopped."""
    from .errors import UsageError
    from .workflows.base import exit_code
    from .workflows.guard import ReleaseOptions, release_guard

    if not (account_id.isascii() and account_id.isdigit() and len(account_id) == 12):
        raise UsageError(f"--account must be a 12-digit account id, got {account_id!r}")
    opts = _opts(ctx)
    config = _load(opts)
    _check_output_dir(opts)
    run = _context(config)
    options = ReleaseOptions(
        account_id=account_id, apply=apply, start_instances=start_instances, break_lease=break_lease
    )
    try:
        report = release_guard(run, options)
    finally:
        run.store.close()
    written_ok = _emit(opts, report, run.secrets.redact)
    if report.summary.get("reason"):
        opts.console().print(f"nothing to release: account {account_id}: {report.summary['reason']}")
    sys.exit(_final_code(exit_code(report), written_ok))


@main.group()
def window() -> None:
    """The scan window: power stopped instances on so Amazon Inspector can scan them, then stop them again.

    Only instances the window started are ever stopped by it; each is recorded in the ledger before it starts,
    so a close in a later process (after a crash) finds every open window in the state store.
    """


@window.command("open")
@click.option("--apply", is_flag=True, help="Write the ledger and start the instances. Default: list the plan.")
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def window_open(ctx: click.Context, apply: bool) -> None:
    """Start the eligible stopped instances (no do-not-start exception, not in an Auto Scaling group)."""
    from .workflows.window import OpenOptions, open_window

    _run_workflow(ctx, lambda run: open_window(run, OpenOptions(apply=apply)))


@window.command("close")
@click.option("--apply", is_flag=True, help="Stop the window's instances and mark it closed. Default: list the plan.")
@click.option("--window-id", help="One window (default: every open window).")
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def window_close(ctx: click.Context, apply: bool, window_id: str | None) -> None:
    """Stop exactly the ledger's instances that the window started and that still run; verify states after."""
    from .workflows.window import CloseOptions, close_window

    _run_workflow(ctx, lambda run: close_window(run, CloseOptions(apply=apply, window_id=window_id)))


@window.command("run")
@click.option("--apply", is_flag=True, help="Open, wait for Inspector, collect findings, close. Default: the plan.")
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def window_run(ctx: click.Context, apply: bool) -> None:
    """Open a window, let it settle, wait for Inspector coverage (or the timeout), collect findings, close."""
    from .workflows.window import RunOptions, run_window

    _run_workflow(ctx, lambda run: run_window(run, RunOptions(apply=apply)))


@window.command("status")
@click.option("--window-id", help="One window (default: every open window).")
@click.option("--coverage", is_flag=True, help="Also ask Inspector which started instances are scanned.")
@global_options
@aws_options
@click.pass_context
@handle_errors
def window_status_cmd(ctx: click.Context, window_id: str | None, coverage: bool) -> None:
    """Show open windows and their instances (prior state, start and stop outcome)."""
    from .workflows.window import window_status

    opts = _opts(ctx)
    run = _context(_load(opts))
    try:
        status = window_status(run, window_id, check_coverage=coverage)
    finally:
        run.store.close()
    if opts.json:
        from .outputs import WindowStatusOutput

        click.echo(WindowStatusOutput.model_validate(status).dump())
        return
    if not status["windows"]:
        opts.console().print("no open scan window")
    for item in status["windows"]:
        table = Table(title=f"window {item['window_id']} ({item['status']}, opened {item['opened_at']})")
        for column in ("account", "region", "instance", "prior", "start", "stop", "final"):
            table.add_column(column)
        for e in item["instances"]:
            table.add_row(
                e["account_id"],
                e["region"],
                e["instance_id"],
                e["prior_state"],
                e["start"],
                e["stop"] or "",
                e["final_state"] or "",
            )
        Console(stderr=True).print(table)


def severity_option(func: F) -> F:
    """--severity, as Prowler's: only findings of these severities in what the command prints and writes."""
    return click.option(
        "--severity",
        "severities",
        multiple=True,
        type=click.Choice(SEVERITIES, case_sensitive=False),
        help="Only findings of this severity in the output (console, --json, files); repeatable. Every finding is "
        "still recorded.",
    )(func)


def _run_workflow(
    ctx: click.Context,
    work: Callable[[Any], RunReport],
    fail_on: str | None = None,
    severities: tuple[str, ...] = (),
) -> None:
    """Load the config, run one workflow, print and write its outputs, exit with DESIGN.md's code. With
    `severities`, the output (and --fail-on) keeps only findings of those severities: the state store has them all."""
    from .workflows.base import exit_code

    opts = _opts(ctx)
    config = _load(opts)
    _check_output_dir(opts)
    run = _context(config)
    context = None
    try:
        report = work(run)
        if opts.output_dir is not None:
            from .output import report_context

            context = report_context(report, config, run.store)
    finally:
        run.store.close()
    if severities:
        from .workflows.findings import summarize

        wanted = {Severity(s.upper()) for s in severities}
        report.findings = [f for f in report.findings if f.severity in wanted]
        report.summary = {**summarize(report), "severity_filter": sorted(s.value for s in wanted)}
    written_ok = _emit(opts, report, run.secrets.redact, context)
    sys.exit(_final_code(exit_code(report, Severity(fail_on.upper()) if fail_on else None), written_ok))


@main.group()
def compliance() -> None:
    """Compliance drift: SSM compliance (InSpec) results as findings; alerts on new and resolved items only."""


@compliance.command("sync")
@click.option("--apply", is_flag=True, help="Record the findings and deliver the alert. Default: show the diff.")
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def compliance_sync(ctx: click.Context, apply: bool) -> None:
    """Read every managed instance's compliance items; record what is new or resolved; alert on change.

    An item resolves only when its instance was scanned again and the item is gone or compliant. Alerts go to
    `compliance.notify` with a CSV of the new items; one that fails to deliver is retried on the next run.
    """
    from .workflows.compliance import SyncOptions, run_compliance_sync

    _run_workflow(ctx, lambda run: run_compliance_sync(run, SyncOptions(apply=apply)))


@compliance.command("report")
@click.option("--apply", is_flag=True, help="Put the CSV in the report sink and send the summary.")
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def compliance_report(ctx: click.Context, apply: bool) -> None:
    """All open compliance findings as a CSV, with a summary by severity and account.

    Without --apply the CSV is written to --output-dir only. With --apply it goes to the `compliance.report_sink`
    (an s3 sink: <prefix>/YYYY/MM/compliance-<timestamp>.csv) and the summary to `compliance.notify`.
    """
    from .workflows.compliance import ReportOptions, compliance_csv, run_compliance_report

    opts = _opts(ctx)

    def work(run: Any) -> RunReport:
        report = run_compliance_report(run, ReportOptions(apply=apply))
        if opts.output_dir is not None:
            opts.output_dir.mkdir(parents=True, exist_ok=True)
            (opts.output_dir / str(report.summary["csv_filename"])).write_bytes(compliance_csv(report.findings))
        return report

    _run_workflow(ctx, work)


@main.command()
@click.option(
    "--check", "checks", multiple=True, help="Only this check (tags, runaway, compliance, inspector); repeatable."
)
@click.option(
    "--sink", "sinks", multiple=True, help="Deliver to this sink of the config (e.g. securityhub); repeatable."
)
@click.option("--include-resolved", is_flag=True, help="Also list resolved findings.")
@click.option(
    "--severity",
    "severities",
    multiple=True,
    type=click.Choice(SEVERITIES, case_sensitive=False),
    help="Only findings of this severity (console, files and sinks alike); repeatable.",
)
@click.option("--fail-on", type=click.Choice(SEVERITIES, case_sensitive=False), help="Exit 3 at or above this.")
@global_options
@aws_options
@click.pass_context
@handle_errors
def report(
    ctx: click.Context,
    checks: tuple[str, ...],
    sinks: tuple[str, ...],
    include_resolved: bool,
    severities: tuple[str, ...],
    fail_on: str | None,
) -> None:
    """Every open finding in the state store, across all checks, as one report (console, --json, --output-dir
    HTML/CSV/OCSF), and optionally delivered to sinks such as Security Hub, OpenSearch or S3. Calls no AWS API
    except the sinks'."""
    from .workflows.report import ReportOptions, run_report

    options = ReportOptions(
        checks=list(checks),
        sinks=list(sinks),
        include_resolved=include_resolved,
        severities=[Severity(s.upper()) for s in severities],
    )
    _run_workflow(ctx, lambda run: run_report(run, options), fail_on)


@main.group()
def exceptions() -> None:
    """Manage exceptions: do-not-start, do-not-stop, do-not-terminate, lockout-exempt, snooze.

    An exception needs a reason and at least one scope field (account, region, resource, check, item); scope
    fields you leave out match everything. Changes take effect at once (they only touch the state store).
    """


@exceptions.command("add")
@click.option("--kind", required=True, type=click.Choice([k.value for k in ExceptionKind]), help="What it affects.")
@click.option("--account", "account_id", help="12-digit account id.")
@click.option("--region", help="Region.")
@click.option("--resource-id", help="Resource: an instance id, or an IAM user or role name (lockout-exempt).")
@click.option("--check", help="Check name, for snooze only (tags, compliance, ...).")
@click.option("--item", help="Item or control, for snooze only.")
@click.option(
    "--organization-wide", is_flag=True, help="Cover every account and region (no scope fields); must be confirmed."
)
@click.option("--yes", is_flag=True, help="Confirm --organization-wide without the prompt (for scripts).")
@click.option("--reason", required=True, help="Why (not blank): shown in reports and journals.")
@click.option("--owner", help="Who owns it (default: your AWS identity).")
@click.option("--expires", help="Expiry: a date (2027-01-31), a timestamp, or a duration (7d, 12h).")
@global_options
@click.pass_context
@handle_errors
def exceptions_add(
    ctx: click.Context,
    kind: str,
    account_id: str | None,
    region: str | None,
    resource_id: str | None,
    check: str | None,
    item: str | None,
    organization_wide: bool,
    yes: bool,
    reason: str,
    owner: str | None,
    expires: str | None,
) -> None:
    """Add an exception: a reason, and at least one scope field (--account, --region, --resource-id, --check,
    --item) or --organization-wide, confirmed at the prompt or with --yes; omitted scope fields match everything."""
    from pydantic import ValidationError

    from .errors import SafetyRefusal, UsageError

    opts = _opts(ctx)
    config = _load(opts)
    now = utcnow()
    try:
        expires_at = parse_expiry(expires, now) if expires else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if expires_at is not None and expires_at <= now:
        raise UsageError(f"--expires {expires} is in the past")
    try:
        # Validated before anything else happens; the owner (an AWS call by default) is filled in after.
        rule = ExceptionRule(
            id="exc-" + uuid.uuid4().hex[:12],
            kind=ExceptionKind(kind),
            account_id=account_id,
            region=region,
            resource_id=resource_id,
            check=check,
            item=item,
            organization_wide=organization_wide,
            reason=reason.strip(),
            owner=owner or "",
            created_at=now,
            expires_at=expires_at,
        )
    except ValidationError as exc:
        problems = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise UsageError("; ".join(problems) + "; nothing was added") from None
    if organization_wide and not yes:
        what = f"a {kind} exception for EVERY account and region of the organization"
        if not sys.stdin.isatty():
            raise SafetyRefusal(f"--organization-wide adds {what}: confirm it with --yes; nothing was added")
        click.echo(f"About to add {what}.", err=True)
        typed = click.prompt("Type 'organization-wide' to confirm", err=True, default="")
        if typed.strip() != "organization-wide":
            raise SafetyRefusal("--organization-wide was not confirmed; nothing was added")
    run = _context(config)
    rule = rule.model_copy(update={"owner": owner or _caller(run)})
    run.store.add_exception(rule)
    run.store.close()
    if opts.json:
        from .outputs import ExceptionAddedOutput, exception_output

        click.echo(ExceptionAddedOutput(exception=exception_output(rule, now)).dump())
    opts.console().print(f"added {rule.id} ({rule.kind.value}) owned by {rule.owner}", markup=False)
    if rule.breadth:
        opts.console().print(f"warning: {rule.id} covers {rule.breadth}", style="bold yellow", markup=False)


def _caller(run: Any) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(run.factory.caller_identity()["arn"])
    except (ClientError, BotoCoreError):
        return getpass.getuser()


@exceptions.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include expired exceptions.")
@global_options
@aws_options
@click.pass_context
@handle_errors
def exceptions_list(ctx: click.Context, show_all: bool) -> None:
    """List exceptions (active ones unless --all); broad ones are flagged, unscoped legacy ones loudly."""
    from rich.text import Text

    opts = _opts(ctx)
    run = _context(_load(opts))
    now = utcnow()
    rules = [r for r in run.store.list_exceptions() if show_all or r.active(now)]
    run.store.close()
    legacy = [r.id for r in rules if r.legacy_unscoped]
    if opts.json:
        from .outputs import ExceptionsListOutput, exception_output

        click.echo(ExceptionsListOutput(exceptions=[exception_output(r, now) for r in rules]).dump())
    else:
        table = Table(title=f"{len(rules)} exception(s)")
        # An id is never cut short (it is what `exceptions remove` takes): it folds onto more lines instead.
        table.add_column("id", overflow="fold", min_width=16)
        for column in ("kind", "account", "region", "resource", "check/item", "owner", "expires", "source"):
            table.add_column(column, overflow="fold")
        table.add_column("reason", overflow="fold")
        table.add_column("covers", overflow="fold")
        for r in rules:
            covers = Text(r.breadth or "", style="bold red" if r.legacy_unscoped else "yellow")
            table.add_row(
                Text(r.id),
                r.kind.value,
                r.account_id or "*",
                r.region or "*",
                Text(r.resource_id or "*"),
                Text("/".join(x for x in (r.check, r.item) if x) or "*"),
                Text(r.owner),
                r.expires_at.isoformat() if r.expires_at else "never",
                Text(r.source),
                Text(r.reason),
                covers,
            )
        Console().print(table)
    if legacy:
        opts.console().print(
            f"WARNING: {len(legacy)} exception(s) stored without any scope cover the whole organization and are "
            f"still honoured: {', '.join(legacy)}. Remove them (`exceptions remove ID`) and add them again with a "
            "scope, or with --organization-wide if that is really meant.",
            style="bold red",
            markup=False,
        )


@exceptions.command("remove")
@click.argument("exception_id")
@global_options
@aws_options
@click.pass_context
@handle_errors
def exceptions_remove(ctx: click.Context, exception_id: str) -> None:
    """Remove an exception by its id (see `exceptions list`)."""
    from .errors import UsageError

    opts = _opts(ctx)
    run = _context(_load(opts))
    removed = run.store.remove_exception(exception_id)
    run.store.close()
    if not removed:
        raise UsageError(f"no exception with id {exception_id}")
    opts.console().print(f"removed {exception_id}")


@main.group()
def state() -> None:
    """The state store (findings, exceptions, journal, leases)."""


@state.command("init")
@global_options
@aws_options
@click.pass_context
@handle_errors
def state_init(ctx: click.Context) -> None:
    """Create the state store's tables (the DynamoDB table, or the SQLite file). Safe to run again."""
    from .aws.session import SessionFactory
    from .state import open_store

    opts = _opts(ctx)
    config = _load(opts)
    store = open_store(config.state, SessionFactory(config.aws), create=True)
    store.init()
    store.close()
    opts.console().print(f"state store ready: {config.state}")


@main.command()
@global_options
@click.option(
    "--tier",
    type=click.Choice(["full", "read-only"]),
    default="full",
    show_default=True,
    help="read-only: a member role with only Describe/List/Get actions (for organizations that only audit).",
)
@click.pass_context
@handle_errors
def permissions(ctx: click.Context, tier: str) -> None:
    """Print the IAM policies fleetwarden needs (hub principal and member-account role), derived from what the
    config enables (without a config file: every feature)."""
    from .permissions import policy_documents

    opts = _opts(ctx)
    config = load_config(opts.config_path) if Path(opts.config_path).exists() else None
    click.echo(json.dumps(policy_documents(config, "read-only" if tier == "read-only" else "full"), indent=2))


@main.group("deploy")
def deploy_group() -> None:
    """Deployment: the CloudFormation templates, generated from the permissions the code declares."""


@deploy_group.command("render")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["member", "member-events", "hub", "billing"]),
    help="member: the StackSet role; member-events: the launch forwarder (a StackSet to every region, for "
    "event-driven guard trips); hub: the hub stack; billing: the payer account's role for spend sources.",
)
@click.option(
    "--state-machine",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The scan-window ASL for the hub (default: the packaged statemachines/scan-window.asl.json).",
)
@click.option(
    "--from-config",
    is_flag=True,
    help="Grant only what the config (--config) enables: a report-only audit gets a read-only member role.",
)
@click.option(
    "--tier",
    type=click.Choice(["full", "read-only"]),
    default="full",
    show_default=True,
    help="read-only: a member role that can only describe and list (organizations that only audit).",
)
@global_options
@click.pass_context
@handle_errors
def deploy_render(ctx: click.Context, kind: str, state_machine: Path | None, from_config: bool, tier: str) -> None:
    """Print a CloudFormation template as YAML: what deploy/templates/ holds (see docs/deploy-templates.md).

    Without --from-config the policies cover every feature (the checked-in templates); with it, only what the
    config enables. No AWS call is made."""
    from .deploy import render

    config = _load(_opts(ctx)) if from_config else None
    click.echo(
        render(kind, state_machine, config=config, tier="read-only" if tier == "read-only" else "full"), nl=False
    )


@deploy_group.command("package")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default="fleetwarden-lambda.zip",
    show_default=True,
    help="Where to write the zip.",
)
@click.option(
    "--python",
    "python_version",
    type=click.Choice(["3.11", "3.12", "3.13"]),
    default="3.12",
    show_default=True,
    help="The Lambda runtime's Python (the hub template's runtime is python3.12).",
)
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True)
@click.option(
    "--wheel-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read wheels only from this directory (offline); default: the package index.",
)
@handle_errors
def deploy_package(output: Path, python_version: str, arch: str, wheel_dir: Path | None) -> None:
    """Build the Lambda zip of this version of fleetwarden, check it and print its sha256 (docs/deploy.md).

    Platform wheels for the runtime, no demo/dev/opensearch extras; the unpacked size is checked against a budget
    and, when an interpreter of the target platform is at hand, `import fleetwarden.lambda_handler` is tried from
    the unpacked tree in a clean interpreter.
    """
    from .deploy import RUNTIME, source_root
    from .deploy_package import build_package

    root = source_root()
    package = build_package(output, python_version, arch, wheel_dir, source=root, use_installed=root is None)
    for line in package.summary():
        click.echo(line)
    if f"python{python_version}" != RUNTIME:
        click.echo(f"note: this zip is for python{python_version}; the hub template's functions run {RUNTIME}")


@main.command()
@click.option("--apply", is_flag=True, help="Also run the audit with --apply (stops violators in the emulator).")
@global_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, apply: bool) -> None:
    """Run the tag audit end to end on an embedded AWS emulator (no AWS account needed).

    Seeds a small organization (several accounts and regions, a few hundred instances with good and bad tags,
    IAM users, canaries) and writes demo-output/report.html, run.json and findings.csv.
    """
    opts = _opts(ctx)
    try:
        from .demo import run_demo
    except ImportError as exc:
        raise FleetwardenError(f"the demo needs the emulator: pip install 'fleetwarden[demo]' ({exc})") from None
    sys.exit(run_demo(opts.output_dir or Path("demo-output"), apply=apply))


@main.group()
def findings() -> None:
    """Findings from AWS security services across every account and region (read-only on the fleet)."""


def _s3_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    from .collect.inspector_export import parse_s3_uri

    try:
        return parse_s3_uri(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@findings.command("inspector")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES, case_sensitive=False),
    help="Exit 3 if an open finding is at or above this severity.",
)
@severity_option
@click.option(
    "--export",
    "export_to",
    metavar="S3URI",
    callback=_s3_uri,
    help="Also have Inspector write findings reports to s3://BUCKET/PREFIX (CreateFindingsReport) and wait for "
    "them. The bucket policy and the KMS key policy must let Inspector write and encrypt.",
)
@click.option(
    "--export-format",
    type=click.Choice(["csv", "json"], case_sensitive=False),
    help="The exported reports' format (default: inspector.export.format, csv).",
)
@click.option(
    "--kms-key",
    metavar="ARN",
    help="KMS key ARN the exported reports are encrypted with, in the bucket's region (default: "
    "inspector.export.kms_key_arn; Inspector requires one).",
)
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def findings_inspector(
    ctx: click.Context,
    fail_on: str | None,
    severities: tuple[str, ...],
    export_to: tuple[str, str] | None,
    export_format: str | None,
    kms_key: str | None,
) -> None:
    """List the fleet's Amazon Inspector (v2) findings on EC2 instances, by severity and account.

    Reads ListFindings in every account and region of the config (ACTIVE and SUPPRESSED findings on EC2
    instances), or, when the config names Inspector's delegated administrator (inspector.delegated_admin), per
    region from it for the accounts it sees; records them in the state store as check `inspector` (new / ongoing /
    resolved; snoozes apply) and prints them; --json prints the RunReport, --output-dir writes run.json,
    findings.csv and report.html. With --export, Inspector also writes its own findings reports (CSV or JSON,
    KMS-encrypted) to S3: one per region from the delegated administrator, else one per account and region;
    the command waits for them (inspector.export.timeout_seconds) and reports each one's status; a failed one
    makes the run partial (exit 4).
    """
    from .workflows.findings import run_inspector_findings

    if (export_format or kms_key) and export_to is None:
        raise UsageError("--export-format and --kms-key go with --export s3://BUCKET/PREFIX")

    def work(run: Any) -> RunReport:
        spec = _export_spec(run.config, export_to, export_format, kms_key, severities) if export_to else None
        return run_inspector_findings(run, spec)

    _run_workflow(ctx, work, fail_on, severities)


def _export_spec(
    config: Config, where: tuple[str, str], fmt: str | None, kms_key: str | None, severities: tuple[str, ...]
) -> Any:
    from .collect.inspector_export import ExportSpec
    from .config.models import KMS_KEY_ARN

    settings = config.inspector.export
    key = kms_key or settings.kms_key_arn
    if not key:
        raise UsageError(
            "--export needs a KMS key: Inspector encrypts every findings report (give --kms-key ARN or "
            "inspector.export.kms_key_arn)"
        )
    if not KMS_KEY_ARN.fullmatch(key):
        raise UsageError(f"--kms-key {key!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
    return ExportSpec(
        bucket=where[0],
        prefix=where[1],
        report_format=(fmt or settings.format).upper(),
        kms_key_arn=key,
        timeout_seconds=settings.timeout_seconds,
        poll_seconds=settings.poll_seconds,
        severities=tuple(s.upper() for s in severities),
    )


@findings.command("exposure")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES, case_sensitive=False),
    help="Exit 3 if an open finding is at or above this severity.",
)
@severity_option
@global_options
@aws_options
@scope_options
@click.pass_context
@handle_errors
def findings_exposure(ctx: click.Context, fail_on: str | None, severities: tuple[str, ...]) -> None:
    """List which instances the internet can reach, on which ports, and along which path (check `exposure`).

    Reads DescribeInstances, route tables, network ACLs, security groups and prefix-list entries in every account
    and region of the config (a few calls per target, none per instance), records the findings in the state
    store (new / ongoing / resolved; snoozes apply) with `audit.exposure`'s severities, and changes nothing.
    """
    from .workflows.exposure import run_exposure_findings

    _run_workflow(ctx, run_exposure_findings, fail_on, severities)


@main.group()
def spend() -> None:
    """Spend across the fleet's accounts, from the payer account's billing data (docs/spend.md)."""


@spend.command("report")
@click.option(
    "--apply",
    is_flag=True,
    help="Send the report to spend_report.notify. Default: print it and say what it would send.",
)
@click.option(
    "--as-of",
    "as_of",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="YYYY-MM-DD",
    help="Report the month up to the day before this date (UTC). Default: today, i.e. the month so far to yesterday.",
)
@click.option("--resend", is_flag=True, help="With --apply: send again to sinks that already got this day's report.")
@global_options
@aws_options
@click.pass_context
@handle_errors
def spend_report(ctx: click.Context, apply: bool, as_of: Any, resend: bool) -> None:
    """Cost by day and by service per account for the month so far, its annualised run rate, and the largest
    changes against the same days of the previous month.

    Reads Cost Explorer (GetCostAndUsage, DAILY UnblendedCost grouped by linked account and service) in the payer
    account, through spend_report.billing_account (else guard.spend.billing_account, else the current
    credentials): one query of a few pages, $0.01 each; or, with spend_report.source {type: cur, bucket, prefix},
    the CUR 2.0 export's files. Covers the accounts the config lists, or every linked
    account when it names an organization. On the 1st of a month it reports the whole previous month.
    --output-dir writes spend-DATE.csv, spend-DATE.html and run.json; --json prints the RunReport, whose
    summary.spend is the report (schema fleetwarden.spend-report/v1). With --apply the text goes to each sink of
    spend_report.notify with the CSV and HTML attached, once a day per sink (--resend to send again).
    """
    from datetime import timedelta

    from .errors import EXIT_PARTIAL
    from .output import RUN_JSON, write_file
    from .outputs import SpendReportOutput
    from .report.spend import print_outcome, print_spend
    from .workflows.base import exit_code
    from .workflows.spend_report import SpendReportOptions, run_spend_report

    if resend and not apply:
        raise UsageError("--resend goes with --apply (a dry run sends nothing)")
    day = as_of.date() if as_of is not None else None
    if day is not None and day > utcnow().date() + timedelta(days=1):
        raise UsageError(f"--as-of {day}: a date in the future has no cost data yet")
    opts = _opts(ctx)
    config = _load(opts)
    _check_output_dir(opts)
    run = _context(config)
    try:
        options = SpendReportOptions(apply=apply, as_of=day, resend=resend, output_dir=opts.output_dir)
        report = run_spend_report(run, options)
    finally:
        run.store.close()
    console = opts.console()
    spend_data = report.summary.get("spend")
    spend_model = SpendReportOutput.model_validate(spend_data) if spend_data is not None else None
    if spend_model is not None:
        print_spend(spend_model, console)
    print_outcome(report, console)
    written_ok = True
    if opts.output_dir is not None:
        try:
            written = [opts.output_dir / str(name) for name in report.summary.get("files", [])]
            written.append(write_file(opts.output_dir / RUN_JSON, run.secrets.redact(report.to_json()).encode("utf-8")))
            console.print("wrote " + ", ".join(str(p) for p in written))
        except OSError as exc:
            written_ok = False
            click.echo(f"error: could not write the outputs to {opts.output_dir}: {exc.strerror or exc}", err=True)
    if opts.json:
        click.echo(report.to_json())
    code = exit_code(report)
    sys.exit(EXIT_PARTIAL if not written_ok and code == 0 else code)


@main.group()
def prices() -> None:
    """The on-demand price table behind the guard's burn-rate spend source (docs/spend.md)."""


@prices.command("refresh")
@click.option("--apply", is_flag=True, help="Store the new tables in the state store. Default: show what changed.")
@click.option(
    "--regions",
    multiple=True,
    callback=_set,
    expose_value=False,
    help="Only these of the config's regions (comma-separated or repeated); narrows, never widens.",
)
@global_options
@aws_options
@click.pass_context
@handle_errors
def prices_refresh(ctx: click.Context, apply: bool) -> None:
    """Rebuild burn-rate's price table from the AWS Price List API (pricing:GetProducts, us-east-1).

    One query per region of the config (with `regions: all`, every region the shipped table knows, China's left
    out): Linux, shared tenancy, on-demand, no pre-installed software. Prints per region how many types it found
    and what changed against the stored table (else the shipped one); with --apply, stores each region's table in
    the state store, where the guard's burn-rate reads it. A region that fails or finds no products keeps its
    previous table and makes the run partial (exit 4).
    """
    from .workflows.prices import PricesOptions, run_prices_refresh

    _run_workflow(ctx, lambda run: run_prices_refresh(run, PricesOptions(apply=apply)))


@main.command()
@click.option("--stack-name", default="fleetwarden-hub", show_default=True, help="The hub stack's name.")
@click.option("--region", help="The hub stack's region (default: the config's DynamoDB state region, else AWS_REGION).")
@click.option(
    "--max-age",
    multiple=True,
    metavar="ACTION=DURATION",
    help="How old a scheduled job's last success may be, e.g. guard=20m, audit=30h (defaults: guard=15m, "
    "audit=26h, compliance-report=32d, spend-report=26h, prices-refresh=8d). Repeatable.",
)
@global_options
@click.pass_context
@handle_errors
def doctor(ctx: click.Context, stack_name: str, region: str | None, max_age: tuple[str, ...]) -> None:
    """Check that a deployment is whole, read-only: the hub stack and every resource it made, what the config
    points to, the member role in every account, and recent successful runs. One line per check; exit 0 when
    whole, 3 when something is missing or broken, 2 for a bad config or credentials (docs/doctor.md)."""
    from .doctor import CheckResult, DoctorOptions, format_line, parse_max_age, run_doctor
    from .errors import UsageError

    opts = _opts(ctx)
    try:
        ages = parse_max_age(max_age)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def progress(result: CheckResult) -> None:
        if opts.verbosity >= 0 or result.status == "problem":  # -q: the problems only
            click.echo(format_line(result), err=True)

    report = run_doctor(DoctorOptions(opts.config_path, stack_name, region, ages), progress=progress)
    if opts.json:
        from .outputs import DoctorOutput

        click.echo(DoctorOutput.model_validate(report.to_dict()).dump())
    sys.exit(report.exit_code)


def run() -> None:
    """Console-script entry point."""
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["EXIT_UNEXPECTED", "EXIT_USAGE", "main", "run"]


if __name__ == "__main__":
    run()
