"""Time-to-halt benchmark: `fleetwarden guard run --apply` against a minimal script, the old serial approach and
Cloud Custodian (c7n-org), on the same emulator in the same run.

    .venv/bin/python bench/bench_guard.py [--quick] [--reps N] [--no-c7n] [--no-lockout] [--no-serial]

One tripped account (assume-role arn:aws:iam::<id>:role/FleetWarden) with ~1,000 running instances over 17
regions (a few reservations per region), 50 ms of latency on every AWS call. The emulator runs in its own
process (this file with --serve-emulator: fleetwarden's emulator, whose middleware is extended to timestamp
every AWS request, readable at GET /_fleetwarden/timeline). Before each run every instance is started again and
checked running; after it, every instance is checked stopped. Per run: wall time, time-to-halt (process start
until the last StopInstances call returned, from the emulator's timestamps), API calls by action. One extra
instrumented fleetwarden run (this file with --fw-instrumented, the CLI in-process) records per-phase timings.
Results: bench/results/guard-<mode>-<stamp>.json and .md. See bench/guard.md.
"""

from __future__ import annotations

import time

T0 = time.time()  # for --fw-instrumented: the process start, before the imports

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from emulator_process import EmulatorProcess  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
FLEETWARDEN = ROOT / ".venv" / "bin" / "fleetwarden"
RESULTS = BENCH / "results"
C7N_POLICY = BENCH / "guard_c7n" / "stop-running.yml"
ROLE_NAME = "FleetWarden"
ACCOUNT = "300000000001"
LATENCY_MS = 50.0
LIMIT = 10
TIMELINE_CAP = 200_000
REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "sa-east-1",
]


# == mode 1: the emulator process (--serve-emulator) ====================================================


def serve_emulator(latency_ms: float) -> int:
    """fleetwarden's emulator with a middleware that also timestamps every AWS request (start, end)."""
    from fleetwarden.emulator.middleware import ADMIN_PREFIX, FleetwardenMiddleware
    from fleetwarden.emulator.server import EmulatorServer

    class TimedMiddleware(FleetwardenMiddleware):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timeline: list[tuple[str, str, str, float, float]] = []
            self._timeline_lock = threading.Lock()

        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            path = str(environ.get("PATH_INFO", ""))
            if path.startswith(ADMIN_PREFIX) or path.startswith("/moto-api/"):
                return super().__call__(environ, start_response)
            call = self._identify(environ)  # buffers a form body; the parent reads the buffer again
            started = time.time()
            result = super().__call__(environ, start_response)
            ended = time.time()
            with self._timeline_lock:
                if len(self._timeline) < TIMELINE_CAP:
                    self._timeline.append((call.service, call.region, call.action, started, ended))
            return result

        def reset(self) -> None:
            super().reset()
            with self._timeline_lock:
                self._timeline.clear()

        def _dispatch(self, name: str, method: str, body: Any) -> dict[str, Any] | None:
            if name == "timeline" and method == "GET":
                with self._timeline_lock:
                    rows = list(self._timeline)
                keys = ("service", "region", "action", "start", "end")
                return {"events": [dict(zip(keys, row, strict=True)) for row in rows]}
            if name == "timeline/reset" and method == "POST":
                with self._timeline_lock:
                    self._timeline.clear()
                return {"events": []}
            if name == "bench/states" and method == "GET":
                return {"states": _instance_states(start_stopped=False)}
            if name == "bench/start-all" and method == "POST":
                return {"states": _instance_states(start_stopped=True)}
            return super()._dispatch(name, method, body)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = EmulatorServer(
        port=0, wrap=lambda app: TimedMiddleware(app, latency_ms=latency_ms or None), log_requests=False
    )
    server.start()
    try:
        print(f"READY {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def _instance_states(*, start_stopped: bool) -> dict[str, int]:
    """Bench helper inside the emulator process: count every instance of every account and region by state,
    starting the stopped ones first if asked (moto's own Instance.start; a reset of thousands of targets through
    the API would take minutes of client set-up)."""
    from moto.ec2.models import ec2_backends

    counts: dict[str, int] = {}
    for account_id in list(ec2_backends.keys()):
        for region in list(ec2_backends[account_id].keys()):
            backend = ec2_backends[account_id][region]
            for reservation in list(backend.reservations.values()):
                for instance in reservation.instances:
                    if start_stopped and instance.state in ("stopped", "stopping"):
                        instance.start()
                    counts[instance.state] = counts.get(instance.state, 0) + 1
    return counts


# == mode 2: fleetwarden in-process with instrumentation (--fw-instrumented) ============================


def fw_instrumented(out_path: str, cli_args: list[str]) -> None:
    """Run the fleetwarden CLI in this process; at exit write per-phase timings and every AWS call to out_path."""
    import atexit

    lock = threading.Lock()
    marks: dict[str, float] = {}
    spans: list[dict[str, Any]] = []
    api: list[dict[str, Any]] = []

    def rel(t: float) -> float:
        return round(t - T0, 4)

    def mark(name: str) -> None:
        marks.setdefault(name, rel(time.time()))

    def timed(name: str, func: Callable[..., Any], detail: Callable[..., str] | None = None) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return func(*args, **kwargs)
            finally:
                ended = time.time()
                row = {
                    "name": name,
                    "start": rel(started),
                    "end": rel(ended),
                    "thread": threading.current_thread().name,
                }
                if detail is not None:
                    with contextlib.suppress(Exception):
                        row["detail"] = detail(*args, **kwargs)
                with lock:
                    spans.append(row)

        return wrapper

    def dump() -> None:
        mark("exit")
        totals: dict[str, dict[str, float]] = {}
        for row in spans:
            entry = totals.setdefault(row["name"], {"count": 0, "seconds": 0.0})
            entry["count"] += 1
            entry["seconds"] = round(entry["seconds"] + row["end"] - row["start"], 4)
        data = {"t0": T0, "marks": marks, "totals": totals, "spans": spans, "api": api}
        Path(out_path).write_text(json.dumps(data))

    atexit.register(dump)
    import botocore.client

    original_call = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation_name: str, api_params: Any) -> Any:
        started = time.time()
        ok = True
        try:
            return original_call(self, operation_name, api_params)
        except Exception:
            ok = False
            raise
        finally:
            ended = time.time()
            row = {
                "op": operation_name,
                "region": self.meta.region_name,
                "start": rel(started),
                "end": rel(ended),
                "thread": threading.current_thread().name,
                "ok": ok,
            }
            with lock:
                api.append(row)

    botocore.client.BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]

    from fleetwarden.actions import asg as asg_mod
    from fleetwarden.actions import ec2 as ec2_mod
    from fleetwarden.aws import session as session_mod
    from fleetwarden.state import sqlite as sqlite_mod
    from fleetwarden.workflows.guard import halt as halt_mod
    from fleetwarden.workflows.guard import run as run_mod

    mark("imports_done")
    if os.environ.get("FW_GUARD_WHATIF") == "batched-journal":
        _batch_journal_writes(sqlite_mod, ec2_mod)
    if os.environ.get("FW_GUARD_WHATIF") == "sqlite-sync-normal":
        _sync_normal(sqlite_mod)
    factory = session_mod.SessionFactory
    factory._make_client = timed("factory.make_client", factory._make_client)  # type: ignore[method-assign]
    factory._assumed_session = timed("factory.assumed_session", factory._assumed_session)  # type: ignore[method-assign]
    store = sqlite_mod.SqliteStore
    for method in ("journal", "acquire_lease", "release_lease", "list_exceptions", "save_findings", "load_findings"):
        setattr(store, method, timed(f"store.{method}", getattr(store, method)))
    run_mod.resolve_targets = timed("run.resolve_targets", run_mod.resolve_targets)
    run_mod.load_states = timed("run.load_states", run_mod.load_states)
    run_mod._inventory = timed("run.inventory(region)", run_mod._inventory, lambda ctx, t: t.region)
    run_mod._evaluate = timed("run.evaluate", run_mod._evaluate)
    run_mod._lockout = timed("run.lockout", run_mod._lockout)
    run_mod._findings = timed("run.findings", run_mod._findings)
    run_mod._record = timed("run.record", run_mod._record)
    halt_mod.one_time_spot_ids = timed("halt.one_time_spot_ids", halt_mod.one_time_spot_ids)
    halter = halt_mod.Halter
    halter.claim = timed("halter.claim", halter.claim)  # type: ignore[method-assign]
    halter.wait = timed("halter.wait", halter.wait)  # type: ignore[method-assign]
    halter._stop = timed("halter.stop(region)", halter._stop, lambda self, t, i: t.region)  # type: ignore[method-assign]
    halter._suspend = timed("halter.suspend(region)", halter._suspend, lambda self, t: t.region)  # type: ignore[method-assign]
    actions = ec2_mod.Ec2Actions
    actions._plan = timed("ec2.plan_journal(batch)", actions._plan, lambda self, a, b, r: self.region)  # type: ignore[method-assign]
    actions._mutate = timed("ec2.mutate(batch)", actions._mutate, lambda self, s, ids, p: self.region)  # type: ignore[method-assign]
    actions._finish = timed("ec2.finish_journal(batch)", actions._finish, lambda self, *a: self.region)  # type: ignore[method-assign]
    asg_mod.AsgProcesses.suspend = timed("asg.suspend", asg_mod.AsgProcesses.suspend)  # type: ignore[method-assign]
    original_run_guard = run_mod.run_guard

    def run_guard(*args: Any, **kwargs: Any) -> Any:
        mark("run_guard_start")
        try:
            return original_run_guard(*args, **kwargs)
        finally:
            mark("run_guard_done")

    run_mod.run_guard = run_guard
    import fleetwarden.workflows.guard as guard_pkg

    guard_pkg.run_guard = run_guard  # the CLI imports it from the package
    from fleetwarden import cli

    mark("cli_imported")
    sys.argv = ["fleetwarden", *cli_args]
    cli.run()


def _batch_journal_writes(sqlite_mod: Any, ec2_mod: Any) -> None:
    """What-if (bench only, src/ untouched): each batch's `planned` entries, and then its outcomes, go to SQLite in
    ONE transaction (the same rows, the same order, still all written before the stop call) instead of one
    BEGIN IMMEDIATE ... COMMIT per instance."""
    local = threading.local()
    store_cls = sqlite_mod.SqliteStore
    original_journal = store_cls.journal
    sql = (
        "INSERT INTO journal (id, at, seq, run_id, workflow, account_id, data)"
        " VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal), ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET at = excluded.at, seq = excluded.seq, run_id = excluded.run_id,"
        " workflow = excluded.workflow, account_id = excluded.account_id, data = excluded.data"
    )

    def journal(self: Any, entry: Any) -> None:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            original_journal(self, entry)
        else:
            buffer.append((self, entry))

    def flush(buffer: list[tuple[Any, Any]]) -> None:
        if not buffer:
            return
        store = buffer[0][0]
        rows = [
            (e.id, sqlite_mod._time_key(e.at), e.run_id, e.workflow, e.account_id, e.model_dump_json())
            for _, e in buffer
        ]
        with store._write() as conn:
            for row in rows:  # one statement per row keeps seq increasing in order
                conn.execute(sql, row)

    def batched(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            local.buffer = buffer = []
            try:
                return func(*args, **kwargs)
            finally:
                local.buffer = None
                flush(buffer)

        return wrapper

    store_cls.journal = journal
    ec2_mod.Ec2Actions._plan_ids = batched(ec2_mod.Ec2Actions._plan_ids)
    ec2_mod.Ec2Actions._finish = batched(ec2_mod.Ec2Actions._finish)


def _sync_normal(sqlite_mod: Any) -> None:
    """What-if (bench only): one transaction per journal entry as now, but `PRAGMA synchronous=NORMAL` (WAL: no
    fsync per commit; durable against a process crash, not against power loss)."""
    store_cls = sqlite_mod.SqliteStore
    original_connect = store_cls._connect

    def connect(self: Any) -> Any:
        conn = original_connect(self)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    store_cls._connect = connect


# == mode 3: the benchmark ==============================================================================


class Emulator(EmulatorProcess):
    """The emulator in a separate process (this file, --serve-emulator: it also timestamps every request)."""

    def __init__(self, latency_ms: float, log_path: Path) -> None:
        self.latency_ms = latency_ms
        command = [str(PYTHON), str(Path(__file__).resolve()), "--serve-emulator", "--latency-ms", str(latency_ms)]
        super().__init__(command, log_path)

    def timeline(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.admin._json("/_fleetwarden/timeline", None, method="GET")["events"]
        return events

    def reset_counters(self) -> None:
        self.admin.reset_calls()
        self.admin.request("/_fleetwarden/timeline/reset", {})


@dataclass
class Measured:
    t0: float  # time.time() just before the process was started
    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    maxrss_mb: float
    timed_out: bool = False


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Measured:
    """Run `cmd` in its own session, wait with os.wait4 (peak RSS), kill its process group after `timeout`."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            t0=t0,
            wall_s=round(wall, 3),
            returncode=proc.returncode,
            stdout=out.read(),
            stderr=err.read(),
            maxrss_mb=round(usage.ru_maxrss / 1024, 1),
            timed_out=timed_out.is_set(),
        )


def tool_env(url: str, home: Path) -> dict[str, str]:
    """Fake credentials, the emulator as endpoint, no user AWS config files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(home),
        PYTHONDONTWRITEBYTECODE="1",
        NO_COLOR="1",
    )
    return env


def c7n_org_path() -> Path | None:
    """c7n-org from bench/.venv-c7n (made by `make bench`), else from .venv, else on PATH."""
    for candidate in (BENCH / ".venv-c7n" / "bin" / "c7n-org", ROOT / ".venv" / "bin" / "c7n-org"):
        if candidate.exists():
            return candidate
    found = shutil.which("c7n-org")
    return Path(found) if found else None


class Fleet:
    """The seeded account, reached with boto3 through the assumed role (for resets and checks, latency off)."""

    def __init__(self, url: str, regions: list[str], total: int) -> None:
        import boto3

        self.url = url
        self.regions = regions
        self.total = total
        sts = boto3.client(
            "sts", region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="x"
        )
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}", RoleSessionName="bench")[
            "Credentials"
        ]
        self.session = boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        self.ec2 = {r: self.session.client("ec2", region_name=r, endpoint_url=url) for r in regions}
        self.iam = self.session.client("iam", region_name="us-east-1", endpoint_url=url)

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in self.ec2.values():
            for page in client.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 1000}):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        name = instance["State"]["Name"]
                        counts[name] = counts.get(name, 0) + 1
        return counts

    def restart_all(self) -> None:
        """Start every stopped instance; undo a lockout (reactivate keys, drop inline policies); check."""
        for client in self.ec2.values():
            ids = [
                i["InstanceId"]
                for page in client.get_paginator("describe_instances").paginate(
                    Filters=[{"Name": "instance-state-name", "Values": ["stopped", "stopping"]}],
                    PaginationConfig={"PageSize": 1000},
                )
                for r in page["Reservations"]
                for i in r["Instances"]
            ]
            for start in range(0, len(ids), 1000):
                client.start_instances(InstanceIds=ids[start : start + 1000])
        for user in self.iam.list_users()["Users"]:
            name = user["UserName"]
            for policy in self.iam.list_user_policies(UserName=name)["PolicyNames"]:
                self.iam.delete_user_policy(UserName=name, PolicyName=policy)
            for key in self.iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                if key["Status"] != "Active":
                    self.iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status="Active")
        states = self.states()
        if states.get("running", 0) != self.total or len(states) != 1:
            raise RuntimeError(f"after restarting, expected {self.total} running, got {states}")

    def add_access_keys(self) -> int:
        users = [u["UserName"] for u in self.iam.list_users()["Users"]]
        for name in users:
            self.iam.create_access_key(UserName=name)
        return len(users)


@dataclass
class Bench:
    emu: Emulator
    fleet: Fleet
    regions: list[str]
    workdir: Path
    env: dict[str, str]
    c7n_org: Path | None

    # -- the tools ------------------------------------------------------------------------------------
    def fw_config(self, state_dir: Path, lockout: str) -> Path:
        import yaml

        config = {
            "accounts": [{"id": ACCOUNT, "name": "tripped", "role_arn": f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"}],
            "regions": self.regions,
            "state": f"sqlite:///{state_dir / 'state.db'}",
            "guard": {"max_running_instances": LIMIT, "lockout": {"mode": lockout}},
        }
        path = state_dir / "fleetwarden.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def run_fleetwarden(
        self, lockout: str, instrumented: bool = False, whatif: str | None = None
    ) -> tuple[Measured, dict[str, Any]]:
        state_dir = Path(tempfile.mkdtemp(prefix="fw-state-", dir=self.workdir))  # a fresh state: a new trip
        config = self.fw_config(state_dir, lockout)
        args = ["--config", str(config), "--json", "guard", "run", "--apply"]
        if instrumented:
            phases = state_dir / "phases.json"
            cmd = [str(PYTHON), str(Path(__file__).resolve()), "--fw-instrumented", str(phases), "--", *args]
        else:
            cmd = [str(FLEETWARDEN), *args]
        env = {**self.env, "FW_GUARD_WHATIF": whatif} if whatif else self.env
        m = run_measured(cmd, env, state_dir, timeout=600)
        if m.returncode not in (0, 3):
            raise RuntimeError(f"fleetwarden failed (exit {m.returncode}): {m.stderr[-3000:]}")
        report = json.loads(m.stdout)
        extra: dict[str, Any] = {"summary_actions": report.get("summary", {}).get("actions")}
        extra["journal"] = journal_times(state_dir / "state.db", m.t0)
        if instrumented:
            extra["instrumented"] = json.loads(phases.read_text())
            if whatif:  # keep the condensed phases only
                extra["phases"] = phase_report(extra.pop("instrumented"))
                extra["phases"].pop("regions")
        shutil.rmtree(state_dir, ignore_errors=True)
        return m, extra

    def run_script(self, script: str, timeout: float) -> tuple[Measured, dict[str, Any]]:
        cmd = [str(PYTHON), str(BENCH / script), "--account", ACCOUNT, "--regions", ",".join(self.regions)]
        cmd += ["--role-name", ROLE_NAME]
        m = run_measured(cmd, self.env, self.workdir, timeout=timeout)
        if m.returncode != 0:
            raise RuntimeError(f"{script} failed (exit {m.returncode}): {m.stderr[-2000:]}")
        own = json.loads(m.stdout.strip().splitlines()[-1])
        own_tth = own["last_stop_returned_at"] - m.t0 if own.get("last_stop_returned_at") else None
        return m, {"own": own, "own_time_to_halt_s": round(own_tth, 3) if own_tth else None}

    def run_c7n(self, timeout: float) -> tuple[Measured, dict[str, Any]]:
        import yaml

        assert self.c7n_org is not None
        accounts = {
            "accounts": [{"account_id": ACCOUNT, "name": "tripped", "role": f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"}]
        }
        accounts_path = self.workdir / "c7n-accounts.yml"
        accounts_path.write_text(yaml.safe_dump(accounts, sort_keys=False))
        out = Path(tempfile.mkdtemp(prefix="c7n-out-", dir=self.workdir))
        cache = Path(tempfile.mkdtemp(prefix="c7n-cache-", dir=self.workdir))
        cmd = [str(self.c7n_org), "run", "-c", str(accounts_path), "-s", str(out), "-u", str(C7N_POLICY)]
        for region in self.regions:
            cmd += ["--region", region]
        cmd += ["--cache-period", "0", "--cache-path", str(cache)]
        m = run_measured(cmd, self.env, self.workdir, timeout=timeout)
        if m.timed_out:
            return m, {"timed_out": True}
        if m.returncode != 0:
            raise RuntimeError(f"c7n-org failed (exit {m.returncode}): {m.stderr[-3000:]}")
        matched = sum(len(json.loads(p.read_text())) for p in out.rglob("resources.json"))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        return m, {"matched": matched}

    # -- one measured run -----------------------------------------------------------------------------
    def measure(self, label: str, func: Callable[[], tuple[Measured, dict[str, Any]]]) -> dict[str, Any]:
        admin = self.emu.admin
        admin.set_latency(None)
        self.fleet.restart_all()  # every instance running again, lockout undone, checked
        admin.set_latency(LATENCY_MS)
        self.emu.reset_counters()
        load = os.getloadavg()[0]
        m, extra = func()
        calls = admin.calls()
        events = self.emu.timeline()
        admin.set_latency(None)
        states = self.fleet.states()
        row = {
            "tool": label,
            "wall_s": m.wall_s,
            "returncode": m.returncode,
            "maxrss_mb": m.maxrss_mb,
            "loadavg_1m_before": round(load, 2),
            "timed_out": m.timed_out,
            "api_calls": calls["total"],
            "faults": calls["faults"],
            "api_calls_by_action": by_action(calls),
            **timeline_stats(events, m.t0),
            "states_after": states,
            "all_stopped": states.get("stopped", 0) == self.fleet.total and len(states) == 1,
            **extra,
        }
        print(
            f"    {label:<22} time-to-halt {fmt(row['time_to_halt_s'])}s  wall {m.wall_s:7.2f}s  "
            f"calls {calls['total']:5d} (stop {row['stop_calls']})  all stopped: {row['all_stopped']}  load {load:.1f}",
            flush=True,
        )
        return row


def fmt(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else "    n/a"


def by_action(calls: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in calls["calls"]:
        key = f"{row['service']}:{row['action']}"
        out[key] = out.get(key, 0) + row["count"]
    return dict(sorted(out.items()))


def timeline_stats(events: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """From the emulator's request timestamps: when the first call arrived, when the last stop returned."""
    if not events:
        return {"time_to_halt_s": None, "first_call_s": None, "stop_calls": 0}
    stops = [e for e in events if e["action"] == "StopInstances"]
    describes = [e for e in events if e["action"] == "DescribeInstances"]
    regions_stopped = sorted({e["region"] for e in stops})
    stats: dict[str, Any] = {
        "first_call_s": round(min(e["start"] for e in events) - t0, 3),
        "last_call_end_s": round(max(e["end"] for e in events) - t0, 3),
        "stop_calls": len(stops),
        "regions_stopped": len(regions_stopped),
        "time_to_halt_s": round(max(e["end"] for e in stops) - t0, 3) if stops else None,
        "first_stop_start_s": round(min(e["start"] for e in stops) - t0, 3) if stops else None,
        "first_describe_start_s": round(min(e["start"] for e in describes) - t0, 3) if describes else None,
        "last_describe_end_s": round(max(e["end"] for e in describes) - t0, 3) if describes else None,
        "stop_call_s_median": round(statistics.median(e["end"] - e["start"] for e in stops), 3) if stops else None,
    }
    return stats


def journal_times(db: Path, t0: float) -> dict[str, Any]:
    """From fleetwarden's journal: per region the first `done` stop entry's time (just after its call returned)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    try:
        rows = [json.loads(r[0]) for r in conn.execute("SELECT data FROM journal")]
    finally:
        conn.close()
    first_done: dict[str, float] = {}
    last_done = 0.0
    for entry in rows:
        if entry.get("action") != "stop" or entry.get("outcome") != "done":
            continue
        at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()
        region = entry["region"]
        first_done[region] = min(first_done.get(region, at), at)
        last_done = max(last_done, at)
    if not first_done:
        return {"entries": len(rows)}
    return {
        "entries": len(rows),
        "stop_done_entries": sum(1 for e in rows if e.get("action") == "stop" and e.get("outcome") == "done"),
        "time_to_halt_s": round(max(first_done.values()) - t0, 3),  # the last region's stop call returned
        "last_done_entry_s": round(last_done - t0, 3),  # after all its `done` journal writes
    }


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    tools: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["tool"] for r in runs):
        rows = [r for r in runs if r["tool"] == label]
        tools[label] = {
            "runs": len(rows),
            "time_to_halt_s_median": median(rows, "time_to_halt_s"),
            "time_to_halt_s_all": [r["time_to_halt_s"] for r in rows],
            "wall_s_median": median(rows, "wall_s"),
            "wall_s_all": [r["wall_s"] for r in rows],
            "api_calls_median": median(rows, "api_calls"),
            "stop_calls_median": median(rows, "stop_calls"),
            "first_call_s_median": median(rows, "first_call_s"),
            "first_describe_start_s_median": median(rows, "first_describe_start_s"),
            "last_describe_end_s_median": median(rows, "last_describe_end_s"),
            "first_stop_start_s_median": median(rows, "first_stop_start_s"),
            "maxrss_mb_max": max(r["maxrss_mb"] for r in rows),
            "all_stopped": all(r["all_stopped"] for r in rows),
            "api_calls_by_action": rows[-1]["api_calls_by_action"],
        }
    return tools


def table(tools: dict[str, dict[str, Any]], min_calls: int) -> str:
    minimal = tools.get("minimal", {}).get("time_to_halt_s_median")
    lines = [
        "| tool | time-to-halt s (median) | x minimal | wall s (median) | API calls | stop calls | min calls | "
        "first call s | first stop s | all stopped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, t in tools.items():
        tth = t["time_to_halt_s_median"]
        ratio = f"{tth / minimal:.2f}" if tth and minimal else "n/a"
        lines.append(
            f"| {label} | {tth} | {ratio} | {t['wall_s_median']} | {t['api_calls_median']:g} | "
            f"{t['stop_calls_median']:g} | {min_calls} | {t['first_call_s_median']} | "
            f"{t['first_stop_start_s_median']} | {'yes' if t['all_stopped'] else 'NO'} |"
        )
    return "\n".join(lines)


def checks(tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fw = tools["fleetwarden"]["time_to_halt_s_median"]
    out: dict[str, Any] = {"stop_calls_returned_within_3s": fw is not None and fw <= 3.0}
    minimal = tools.get("minimal", {}).get("time_to_halt_s_median")
    if minimal:
        out["within_1.3x_of_minimal"] = fw <= 1.3 * minimal
        out["ratio_to_minimal"] = round(fw / minimal, 2)
    serial = tools.get("serial", {}).get("time_to_halt_s_median")
    if serial:
        out["at_least_20x_faster_than_serial"] = serial >= 20 * fw
        out["speedup_over_serial"] = round(serial / fw, 1)
    c7n = tools.get("c7n-org", {}).get("time_to_halt_s_median")
    if c7n:
        out["faster_than_c7n_org"] = fw < c7n
        out["faster_than_c7n_org_wall"] = tools["fleetwarden"]["wall_s_median"] < tools["c7n-org"]["wall_s_median"]
    out["all_stopped_every_run"] = all(t["all_stopped"] for t in tools.values())
    return out


def phase_report(inst: dict[str, Any]) -> dict[str, Any]:
    """Condense the instrumented run: marks, totals and the per-region critical path of the halt."""
    spans = inst["spans"]
    api = inst["api"]
    regions: dict[str, dict[str, Any]] = {}
    for s in spans:
        region = s.get("detail")
        if region and s["name"] in (
            "run.inventory(region)",
            "halter.stop(region)",
            "ec2.plan_journal(batch)",
            "ec2.mutate(batch)",
            "ec2.finish_journal(batch)",
        ):
            regions.setdefault(region, {})[s["name"]] = [s["start"], s["end"]]
    for call in api:
        if call["op"] in ("StopInstances", "DescribeInstances", "DescribeAutoScalingGroups"):
            regions.setdefault(call["region"], {}).setdefault(call["op"], []).append([call["start"], call["end"]])
    journal = [s for s in spans if s["name"] == "store.journal"]
    last_stop = max((c["end"] for c in api if c["op"] == "StopInstances"), default=None)
    return {
        "marks": inst["marks"],
        "totals": inst["totals"],
        "api_calls_own": len(api),
        "api_by_op": _count(c["op"] for c in api),
        "last_stop_returned_s": last_stop,
        "journal_writes_before_last_stop": sum(1 for s in journal if last_stop and s["end"] <= last_stop),
        "journal_write_ms_median": round(statistics.median(s["end"] - s["start"] for s in journal) * 1000, 2)
        if journal
        else None,
        "regions": dict(sorted(regions.items())),
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 regions, 200 instances, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 3; 1 with --quick)")
    parser.add_argument("--no-c7n", action="store_true", help="skip Cloud Custodian")
    parser.add_argument("--no-lockout", action="store_true", help="skip the fleetwarden run with lockout on")
    parser.add_argument("--no-whatif", action="store_true", help="skip the what-if run (batched journal writes)")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial (one call per instance) approach")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from fleetwarden.emulator.seed import seed_bulk

    reps = max(1, min(args.reps or (1 if args.quick else 3), 10))
    regions = REGIONS[:5] if args.quick else REGIONS
    total = 200 if args.quick else 1000
    reservation_size = 25  # ~3 reservations per region
    c7n_org = None if args.no_c7n else c7n_org_path()
    if not args.no_c7n and c7n_org is None:
        print("c7n-org not found: run `make bench` (installs it into bench/.venv-c7n); continuing without")
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fw-guard-bench-"))
    emu = Emulator(LATENCY_MS, workdir / "emulator.log")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        emu.start()
        print(f"emulator pid {emu.pid} at {emu.url}, latency {LATENCY_MS:g} ms")
        admin = emu.admin
        admin.set_latency(None)
        seeded = seed_bulk(
            emu.url,
            [ACCOUNT],
            regions,
            total,
            violator_fraction=0.0,
            reservation_size=reservation_size,
            canaries=False,
            role_name=ROLE_NAME,
        )
        fleet = Fleet(emu.url, regions, total)
        keys = fleet.add_access_keys()
        seed_info = {**seeded.summary(), "access_keys": keys, "seconds": round(time.perf_counter() - started, 1)}
        print(f"seeded {seed_info}")
        bench = Bench(emu, fleet, regions, workdir, tool_env(emu.url, workdir), c7n_org)
        bench.measure("warm-up", lambda: bench.run_script("guard_minimal.py", 120))  # warms moto; not recorded
        tools: list[tuple[str, Callable[[], tuple[Measured, dict[str, Any]]]]] = [
            ("fleetwarden", lambda: bench.run_fleetwarden("off")),
            ("minimal", lambda: bench.run_script("guard_minimal.py", 120)),
        ]
        if not args.no_whatif:
            tools.append(
                (
                    "whatif:batched-journal",
                    lambda: bench.run_fleetwarden("off", instrumented=True, whatif="batched-journal"),
                )
            )
            tools.append(
                (
                    "whatif:sqlite-sync-normal",
                    lambda: bench.run_fleetwarden("off", instrumented=True, whatif="sqlite-sync-normal"),
                )
            )
        if not args.no_lockout:
            tools.append(("fleetwarden+lockout", lambda: bench.run_fleetwarden("deactivate")))
        if c7n_org is not None:
            tools.append(("c7n-org", lambda: bench.run_c7n(600)))
        if not args.no_serial:
            tools.append(("serial", lambda: bench.run_script("guard_serial.py", 600)))
        for rep in range(reps):
            print(f"  rep {rep + 1}/{reps}")
            for label, func in tools:  # interleaved, so drift hits every tool alike
                runs.append({"rep": rep + 1, **bench.measure(label, func)})
        print("  instrumented fleetwarden run (in-process, per-phase timings):")
        instrumented = bench.measure("fw-instrumented", lambda: bench.run_fleetwarden("off", instrumented=True))
    finally:
        emu.stop()
    phases = phase_report(instrumented.pop("instrumented"))
    summary = summarize(runs)
    min_calls = 1 + 2 * len(regions)  # one AssumeRole, one describe page and one stop call per region
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "reps": reps,
        "latency_ms": LATENCY_MS,
        "account": ACCOUNT,
        "regions": regions,
        "seed": seed_info,
        "min_api_calls": min_calls,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "uname": " ".join(os.uname())},
        "c7n_org": str(c7n_org) if c7n_org else None,
        "tools": summary,
        "checks": checks(summary),
        "instrumented_run": {**instrumented, "phases": phases},
        "runs": runs,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"guard-{result['mode']}-{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = table(summary, min_calls)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print()
    print(text)
    print()
    print("checks: " + json.dumps(result["checks"]))
    print(f"instrumented: marks {json.dumps(phases['marks'])}")
    print(f"wrote {RESULTS / name}.json and .md ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-emulator":
        latency = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--latency-ms" else LATENCY_MS
        sys.exit(serve_emulator(latency))
    if len(sys.argv) > 2 and sys.argv[1] == "--fw-instrumented":
        rest = sys.argv[3:]
        fw_instrumented(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    else:
        sys.exit(main())
