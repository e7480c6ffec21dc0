"""Runs the `fleetwarden` CLI in this process with instrumentation, for the benchmark's cross-checks.

    FW_BENCH_OUT=phases.json python bench/fw_counted.py --config cfg.yaml --json audit

Same arguments and behaviour as the `fleetwarden` console script. At exit it writes to $FW_BENCH_OUT: the
run's own API call count (SessionFactory.counter, per operation) and per-phase timings (imports, target
resolution, the audit fan-out, client and assumed-session creation, reconcile and save, output). The timed
benchmark runs use the real console script; this wrapper is only for counting and for explaining a miss.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

T0 = time.perf_counter()
_phases: dict[str, float] = {}
_totals: dict[str, list[float]] = {}  # name -> [count, seconds]
_lock = threading.Lock()
_factories: list[Any] = []


def _mark(name: str) -> None:
    _phases.setdefault(name, round(time.perf_counter() - T0, 4))


def _add(name: str, seconds: float) -> None:
    with _lock:
        entry = _totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - start)

    return wrapper


def _dump() -> None:
    _mark("exit")
    path = os.environ.get("FW_BENCH_OUT")
    if not path:
        return
    calls: dict[str, int] = {}
    for factory in _factories:
        for key, n in factory.counter.calls.items():
            calls[key] = calls.get(key, 0) + n
    data = {
        "phases_s": _phases,
        "totals": {k: {"count": int(v[0]), "seconds": round(v[1], 4)} for k, v in sorted(_totals.items())},
        "own_api_calls": {"total": sum(calls.values()), "by_operation": dict(sorted(calls.items()))},
        "cpu_s": round(time.process_time(), 3),
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)


def _instrument() -> None:
    from fleetwarden.aws import session as session_mod
    from fleetwarden.collect import ec2 as collect_ec2
    from fleetwarden.workflows import audit as audit_mod

    _mark("imports_done")
    factory_cls = session_mod.SessionFactory
    original_init = factory_cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _factories.append(self)

    factory_cls.__init__ = init  # type: ignore[method-assign]
    factory_cls._make_client = _timed("make_client", factory_cls._make_client)  # type: ignore[method-assign]
    factory_cls._assumed_session = _timed("assumed_session", factory_cls._assumed_session)  # type: ignore[method-assign]
    audit_mod.resolve_targets = _timed("resolve_targets", audit_mod.resolve_targets)

    original_iter = collect_ec2.iter_instances

    def iter_instances(*args: Any, **kwargs: Any) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            yield from original_iter(*args, **kwargs)
        finally:
            _add("iter_instances(target)", time.perf_counter() - start)

    audit_mod.iter_instances = iter_instances
    original_fan_out = audit_mod.fan_out

    def fan_out(keys: Any, work: Any, **kwargs: Any) -> Iterator[Any]:
        label = kwargs.get("label", "fan_out")
        _mark(f"{label}_start")
        yield from original_fan_out(keys, work, **kwargs)
        _mark(f"{label}_done")

    audit_mod.fan_out = fan_out
    original_run = audit_mod.run_audit

    def run_audit(*args: Any, **kwargs: Any) -> Any:
        _mark("run_audit_start")
        try:
            return original_run(*args, **kwargs)
        finally:
            _mark("run_audit_done")

    audit_mod.run_audit = run_audit


def main() -> None:
    atexit.register(_dump)
    _instrument()
    from fleetwarden import cli

    original_emit = cli._emit
    cli._emit = _timed("emit_output", original_emit)
    sys.argv[0] = "fleetwarden"
    cli.run()


if __name__ == "__main__":
    main()
