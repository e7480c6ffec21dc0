"""The deployed function's own signals: JSON logs and CloudWatch metrics (EMF), with AWS Lambda Powertools.

`observe(handler)` wraps the Lambda entry point. For each invocation it
- makes the `fleetwarden` loggers write one JSON object per line (Powertools `Logger`), with the event's action,
  its trigger and (once the run is known) its run id, and the Lambda context's request id and function name;
  the lines pass through the secrets' redaction the handler installs (`_redacting`), message, exception text and
  extra keys alike;
- emits one EMF record (Powertools `Metrics`, namespace `Fleetwarden`) with the metrics of docs/observability.md:
  `Runs`, `PartialRuns`, `FailedRuns`, `RefusedRuns` and the run's figures, dimensioned by `Action` and
  `service`; it is flushed even when the handler raises, and the exception goes on to Lambda.

The CLI never calls it: EMF and JSON lines are written only by a function that `observe` wraps. Nothing happens
at import: the Logger and Metrics are made at the first invocation (Powertools keeps one Logger configuration
per process, on the standard `fleetwarden` logger).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .secrets import RedactingFilter

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

SERVICE = "fleetwarden"
NAMESPACE = "Fleetwarden"
LEVEL_ENV = "FLEETWARDEN_LOG_LEVEL"
# The Action dimension of an event that could not be understood (a bounded set of values: CloudWatch bills per
# metric, that is per distinct dimension value).
UNKNOWN_ACTION = "unknown"
# The exit codes of DESIGN.md that mean the run did not happen: a bad event or config (2), a runtime error (1).
FAILED_EXIT_CODES = (1, 2)
PARTIAL_EXIT_CODE = 4
REFUSED_EXIT_CODE = 5

Handler = Callable[[Any, Any], dict[str, Any]]


@dataclass(frozen=True)
class RunFigures:
    """What one invocation amounts to, as the metrics and the summary log line carry it."""

    status: str
    exit_code: int | None  # None: the handler raised
    run_id: str | None = None
    accounts: int | None = None
    findings: int | None = None
    actions_taken: int | None = None
    targets_failed: int = 0

    @property
    def completed(self) -> bool:
        """The workflow ran to its end (`ok` or `partial`): what `Runs` counts."""
        return self.status in ("ok", "partial")

    @property
    def failed(self) -> bool:
        return self.exit_code is None or self.exit_code in FAILED_EXIT_CODES

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> RunFigures:
        """The figures of a handler result (docs/lambda.md, "Results"); a figure the result does not carry is
        None (and no metric is emitted for it), never a guess."""
        raw_summary = result.get("summary")
        summary: Mapping[str, Any] = raw_summary if isinstance(raw_summary, Mapping) else {}
        raw_report = result.get("report")
        report: Mapping[str, Any] = raw_report if isinstance(raw_report, Mapping) else {}
        code = result.get("exit_code")
        return cls(
            status=str(result.get("status", "error")),
            exit_code=code if isinstance(code, int) else None,
            run_id=str(result["run_id"]) if result.get("run_id") is not None else None,
            accounts=_accounts(summary, report),
            findings=_findings(result, summary, report),
            actions_taken=_actions_taken(summary, report),
            targets_failed=_targets_failed(result, summary),
        )

    @classmethod
    def crashed(cls) -> RunFigures:
        """An invocation whose handler raised (a bug: Lambda records it as a function error)."""
        return cls(status="crashed", exit_code=None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _accounts(summary: Mapping[str, Any], report: Mapping[str, Any]) -> int | None:
    if _int(summary.get("accounts")) is not None:
        return _int(summary.get("accounts"))
    running = summary.get("running_by_account")  # the guard's
    if isinstance(running, Mapping):
        return len(running)
    targets = report.get("targets")
    if isinstance(targets, list) and targets:
        return len({t.get("account_id") for t in targets if isinstance(t, Mapping)})
    return None


def _findings(result: Mapping[str, Any], summary: Mapping[str, Any], report: Mapping[str, Any]) -> int | None:
    truncated = result.get("truncated")
    trimmed = truncated.get("findings") if isinstance(truncated, Mapping) else None
    if isinstance(trimmed, Mapping):
        return _int(trimmed.get("total"))
    if isinstance(report.get("findings"), list):
        return len(report["findings"])
    by_status = summary.get("findings_by_status")
    if isinstance(by_status, Mapping):
        return sum(n for n in map(_int, by_status.values()) if n is not None)
    return _int(summary.get("findings"))


def _actions_taken(summary: Mapping[str, Any], report: Mapping[str, Any]) -> int | None:
    """Actions done (not planned, skipped or failed)."""
    by_outcome = summary.get("actions_by_outcome")  # the audit's
    if isinstance(by_outcome, Mapping):
        done = by_outcome.get("done")
        return done if isinstance(done, int) else 0
    counted = summary.get("actions")  # the guard's "action:outcome" counts
    if isinstance(counted, Mapping):
        return sum(n for k, v in counted.items() if str(k).endswith(":done") and (n := _int(v)) is not None)
    actions = report.get("actions")
    if isinstance(actions, list):
        return sum(1 for a in actions if isinstance(a, Mapping) and a.get("outcome") == "done")
    return None


def _targets_failed(result: Mapping[str, Any], summary: Mapping[str, Any]) -> int:
    counted = _int(summary.get("targets_error"))
    if counted is not None:
        return counted
    in_error = result.get("targets_in_error")
    return len(in_error) if isinstance(in_error, list) else 0


def event_action(event: Any, result: Mapping[str, Any] | None = None) -> str:
    """The action an invocation was for: the result's, else the event's as `parse_event` reads it (a disabled
    function's no-op carries none), else `unknown`."""
    if result is not None and isinstance(result.get("action"), str):
        return str(result["action"])
    from .events import EventError, parse_event

    try:
        return parse_event(event).action
    except EventError:
        return UNKNOWN_ACTION


# -- metrics -------------------------------------------------------------------------------------------
def new_metrics() -> Metrics:
    """The invocation's metrics. Powertools keeps the metric set on the class: it is cleared first, so nothing
    of an earlier invocation that did not flush is sent again."""
    from aws_lambda_powertools import Metrics

    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    metrics.clear_metrics()
    return metrics


def record_result(metrics: Metrics, action: str, figures: RunFigures, duration_seconds: float) -> None:
    """Put one invocation's metrics (docs/observability.md, "Metrics") into `metrics`; the caller flushes.

    `Runs`, `PartialRuns` and `FailedRuns` are always emitted, as 0 or 1, so an alarm on their Sum sees data
    points (`Runs` is 0 for a failed, refused or no-op invocation: the guard's `GuardSilent` alarm fires when the
    guard keeps failing, not only when it stops being invoked)."""
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_dimension(name="Action", value=action)
    metrics.add_metric(name="Runs", unit=MetricUnit.Count, value=1 if figures.completed else 0)
    metrics.add_metric(name="PartialRuns", unit=MetricUnit.Count, value=1 if figures.exit_code == 4 else 0)
    metrics.add_metric(name="FailedRuns", unit=MetricUnit.Count, value=1 if figures.failed else 0)
    metrics.add_metric(name="RefusedRuns", unit=MetricUnit.Count, value=1 if figures.exit_code == 5 else 0)
    metrics.add_metric(name="TargetsFailed", unit=MetricUnit.Count, value=figures.targets_failed)
    metrics.add_metric(name="DurationSeconds", unit=MetricUnit.Seconds, value=round(duration_seconds, 3))
    if figures.findings is not None:
        metrics.add_metric(name="Findings", unit=MetricUnit.Count, value=figures.findings)
    if figures.actions_taken is not None:
        metrics.add_metric(name="ActionsTaken", unit=MetricUnit.Count, value=figures.actions_taken)
    if figures.run_id is not None:
        metrics.add_metadata(key="run_id", value=figures.run_id)


# -- logs ----------------------------------------------------------------------------------------------
class JsonLogHandler(logging.Handler):
    """Writes Powertools' JSON lines to the current `sys.stdout` (CloudWatch Logs in Lambda), each line passed
    through the secrets' redaction of every `RedactingFilter` on this handler (the handler's `_redacting` puts one
    here for the invocation): Powertools' formatter writes the exception, the stack trace and extra keys from
    the record itself, past what a filter can rewrite."""

    terminator = "\n"

    @property
    def stream(self) -> TextIO:
        # Looked up at each line, not kept: a test's captured stdout, or Lambda's, whichever is current.
        return sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.args:
                # The message formatted now, so that Powertools' formatter reads a JSON message (the handler's
                # summary lines) as an object, whether or not a redaction filter formatted it first.
                record.msg, record.args = record.getMessage(), None
            line = self.format(record)
            for flt in self.filters:
                if isinstance(flt, RedactingFilter) and flt.resolver.active:
                    line = flt.resolver.redact(line)
            self.stream.write(line + self.terminator)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: a failed line is reported, never raised
            self.handleError(record)


def json_logger() -> Logger:
    """The Powertools Logger of the `fleetwarden` loggers (made once per process; later calls find it).

    The JSON handler is put back first and alone, and the level set, on each call: a CLI run in the same process
    (the test suite) replaces the `fleetwarden` logger's handlers and level with its own."""
    from aws_lambda_powertools import Logger

    raw = os.environ.get(LEVEL_ENV, "INFO").upper()
    level = raw if raw in logging.getLevelNamesMapping() else "INFO"
    std = logging.getLogger(SERVICE)
    ours = getattr(std, "powertools_handler", None)
    if ours is not None and std.handlers != [ours]:
        std.handlers[:] = [ours]
    logger = Logger(service=SERVICE, level=level, logger_handler=ours or JsonLogHandler(), utc=True)
    if std.handlers != [logger.registered_handler]:
        std.handlers[:] = [logger.registered_handler]
    logger.setLevel(level)
    return logger


def bind(**keys: Any) -> None:
    """Add keys (e.g. `run_id`) to every JSON log line for the rest of this invocation; nothing outside one."""
    std = logging.getLogger(SERVICE)
    ours = getattr(std, "powertools_handler", None)
    if ours is not None and std.handlers == [ours]:
        json_logger().append_keys(**keys)


def _start_logs(logger: Logger, event: Any, context: Any) -> None:
    """The invocation's keys: earlier invocations' are dropped (warm containers)."""
    logger.clear_state()
    if context is not None and hasattr(context, "aws_request_id"):
        logger.append_keys(
            function_request_id=str(context.aws_request_id),
            function_name=str(getattr(context, "function_name", "")),
        )
    logger.append_keys(action=event_action(event))


def _summary_line(logger: Logger, action: str, figures: RunFigures, duration: float) -> None:
    """One line per invocation with its outcome (no error text: it may quote what redaction had to hide, and the
    handler's own lines already carry it, redacted)."""
    fields = {
        "action": action,
        "status": figures.status,
        "exit_code": figures.exit_code,
        "run_id": figures.run_id,
        "accounts": figures.accounts,
        "findings": figures.findings,
        "actions_taken": figures.actions_taken,
        "targets_failed": figures.targets_failed,
        "duration_seconds": round(duration, 3),
    }
    level = logging.ERROR if figures.failed else logging.WARNING if figures.exit_code == 4 else logging.INFO
    # Through the standard logger Powertools configured (its own Logger has no level-taking `log`).
    logging.getLogger(SERVICE).log(
        level, "invocation finished", extra={k: v for k, v in fields.items() if v is not None}
    )


def observe(handler: Handler) -> Handler:
    """Wrap the Lambda entry point: JSON logs for the invocation, and its metrics flushed whatever happens."""

    @functools.wraps(handler)
    def observed(event: Any, context: Any = None) -> dict[str, Any]:
        started = time.monotonic()
        logger = json_logger()
        metrics = new_metrics()

        @metrics.log_metrics  # flushes in a `finally`: the EMF record is written when the handler raises too
        def invoke(event: Any, context: Any) -> dict[str, Any]:
            _start_logs(logger, event, context)
            try:
                result = handler(event, context)
            except BaseException as exc:
                action = event_action(event)
                figures = RunFigures.crashed()
                duration = time.monotonic() - started
                record_result(metrics, action, figures, duration)
                # The type only: the message may hold what the handler's redaction hid (it is no longer active).
                logger.error("invocation raised %s", type(exc).__name__, extra={"exception_name": type(exc).__name__})
                _summary_line(logger, action, figures, duration)
                raise
            action = event_action(event, result)
            figures = RunFigures.from_result(result)
            duration = time.monotonic() - started
            record_result(metrics, action, figures, duration)
            _summary_line(logger, action, figures, duration)
            return result

        result: dict[str, Any] = invoke(event, context)
        return result

    return observed


__all__ = [
    "NAMESPACE",
    "SERVICE",
    "JsonLogHandler",
    "RunFigures",
    "bind",
    "event_action",
    "json_logger",
    "new_metrics",
    "observe",
    "record_result",
]
