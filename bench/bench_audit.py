"""Benchmark `fleetwarden audit` against the floor and Cloud Custodian (c7n-org) on the same emulator.

    .venv/bin/python bench/bench_audit.py [--quick] [--reps N] [--no-c7n] [--c7n-many]

Starts the emulator (`python -m fleetwarden.emulator`, moto + fleetwarden's middleware) in its own process on
127.0.0.1 with 50 ms of latency on every AWS call, seeds a fleet, and measures, on the same emulator in the same
run, each tool as a subprocess: wall time, API calls (the emulator's per-request counter, reset before each
run), peak RSS of the tool's process (os.wait4 rusage in a small launcher, bench/_rusage.py; the emulator is
another process) and the CPU the
emulator spent serving it. Two scenarios: "fleet" (4 accounts x 6 regions, ~2,000 instances) and "many-targets"
(20 accounts x 17 regions, 2 instances each). Results go to bench/results/ as JSON and a Markdown table.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from emulator_process import EmulatorProcess

from fleetwarden.emulator.seed import seed_bulk

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
FLEETWARDEN = ROOT / ".venv" / "bin" / "fleetwarden"
RESULTS = BENCH / "results"
ROLE_NAME = "FleetWarden"
REQUIRED = ["created_by", "department", "project"]
LATENCY_MS = 50.0
MAX_CONCURRENCY = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")

FLEET_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"]
MANY_REGIONS = [
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


def c7n_org_path() -> Path | None:
    """c7n-org from bench/.venv-c7n (made by `make bench`), else from .venv, else on PATH."""
    for candidate in (BENCH / ".venv-c7n" / "bin" / "c7n-org", ROOT / ".venv" / "bin" / "c7n-org"):
        if candidate.exists():
            return candidate
    found = shutil.which("c7n-org")
    return Path(found) if found else None


# -- processes ------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0 if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Emulator(EmulatorProcess):
    """`python -m fleetwarden.emulator` with latency on every AWS call."""

    def __init__(self, latency_ms: float, log_path: Path) -> None:
        self.latency_ms = latency_ms
        command = [str(PYTHON), "-m", "fleetwarden.emulator", "--port", "0", "--latency-ms", str(latency_ms)]
        super().__init__(command, log_path)


@dataclass
class Measured:
    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    maxrss_mb: float
    cpu_s: float
    timed_out: bool = False


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Measured:
    """Run `cmd` under bench/_rusage.py (its own peak RSS and CPU); kill its process group after `timeout`."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as usage_file,
    ):
        launcher = [str(PYTHON), "-I", "-S", str(BENCH / "_rusage.py"), usage_file.name, "--", *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: launcher, tool and any workers
            proc.wait(timeout=30)
        wall = time.perf_counter() - start
        usage = json.loads(Path(usage_file.name).read_text() or "{}") if not timed_out else {}
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=round(wall, 3),
            returncode=proc.returncode,
            stdout=out.read(),
            stderr=err.read(),
            maxrss_mb=round(usage.get("maxrss_kb", 0) / 1024, 1),
            cpu_s=round(usage.get("cpu_s", 0.0), 3),
            timed_out=timed_out,
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


# -- tools ----------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    accounts: list[str]
    regions: list[str]
    total_instances: int
    violator_fraction: float
    canaries: bool
    reps: int
    c7n: bool
    workdir: Path
    seed_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> int:
        return len(self.accounts) * len(self.regions)

    @property
    def min_calls(self) -> int:
        # one AssumeRole per account + one DescribeInstances page per target (every target here has far fewer
        # than 1,000 reservations, the largest page DescribeInstances allows)
        return len(self.accounts) + self.targets


def write_fleetwarden_config(s: Scenario, state_dir: Path) -> Path:
    config = {
        "aws": {"max_concurrency": MAX_CONCURRENCY},
        "accounts": [
            {"id": a, "name": f"acct-{a[-4:]}", "role_arn": f"arn:aws:iam::{a}:role/{ROLE_NAME}"} for a in s.accounts
        ],
        "regions": s.regions,
        "state": f"sqlite:///{state_dir / 'state.db'}",
        "audit": {"required_tags": REQUIRED, "action": "report", "grace_minutes": 45},
    }
    path = state_dir / "fleetwarden.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_c7n_files(s: Scenario) -> tuple[Path, Path]:
    accounts = {
        "accounts": [
            {"account_id": a, "name": f"acct-{a[-4:]}", "role": f"arn:aws:iam::{a}:role/{ROLE_NAME}"}
            for a in s.accounts
        ]
    }
    policy = {
        "policies": [
            {
                "name": "ec2-missing-required-tags",
                "resource": "aws.ec2",
                "filters": [{"or": [{f"tag:{k}": "absent"} for k in REQUIRED]}],
            }
        ]
    }
    accounts_path = s.workdir / "accounts.yml"
    policy_path = s.workdir / "policy.yml"
    accounts_path.write_text(yaml.safe_dump(accounts, sort_keys=False))
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return accounts_path, policy_path


def run_fleetwarden(s: Scenario, env: dict[str, str], counted: bool = False) -> tuple[Measured, dict[str, Any]]:
    state_dir = Path(tempfile.mkdtemp(prefix="fw-state-", dir=s.workdir))
    config = write_fleetwarden_config(s, state_dir)
    extra: dict[str, Any] = {}
    if counted:
        phases = state_dir / "phases.json"
        env = {**env, "FW_BENCH_OUT": str(phases)}
        cmd = [str(PYTHON), str(BENCH / "fw_counted.py"), "--config", str(config), "--json", "audit"]
    else:
        cmd = [str(FLEETWARDEN), "--config", str(config), "--json", "audit"]
    m = run_measured(cmd, env, state_dir, timeout=600)
    if m.returncode not in (0, 3):
        raise RuntimeError(f"fleetwarden failed (exit {m.returncode}): {m.stderr[-2000:]}")
    report = json.loads(m.stdout)
    summary = report["summary"]
    extra["violators"] = summary["violators"]
    extra["instances"] = summary["instances_audited"]
    extra["targets_ok"] = summary["targets_ok"]
    extra["targets_error"] = summary["targets_error"]
    if counted:
        extra["instrumented"] = json.loads(phases.read_text())
    shutil.rmtree(state_dir, ignore_errors=True)
    return m, extra


def run_floor(s: Scenario, env: dict[str, str]) -> tuple[Measured, dict[str, Any]]:
    cmd = [
        str(PYTHON),
        str(BENCH / "floor.py"),
        "--accounts",
        ",".join(s.accounts),
        "--regions",
        ",".join(s.regions),
        "--role-name",
        ROLE_NAME,
        "--workers",
        str(MAX_CONCURRENCY),
        "--required",
        ",".join(REQUIRED),
    ]
    m = run_measured(cmd, env, s.workdir, timeout=600)
    if m.returncode != 0:
        raise RuntimeError(f"floor failed (exit {m.returncode}): {m.stderr[-2000:]}")
    data = json.loads(m.stdout.strip().splitlines()[-1])
    return m, {"violators": data["violators"], "instances": data["instances"], "own_api_calls": data["api_calls"]}


def run_c7n(s: Scenario, env: dict[str, str], c7n_org: Path, timeout: float) -> tuple[Measured, dict[str, Any]]:
    accounts_path, policy_path = write_c7n_files(s)
    out = Path(tempfile.mkdtemp(prefix="c7n-out-", dir=s.workdir))
    cache = Path(tempfile.mkdtemp(prefix="c7n-cache-", dir=s.workdir))
    cmd = [str(c7n_org), "run", "-c", str(accounts_path), "-s", str(out), "-u", str(policy_path)]
    for region in s.regions:
        cmd += ["--region", region]
    cmd += ["--cache-period", "0", "--cache-path", str(cache)]
    m = run_measured(cmd, env, s.workdir, timeout=timeout)
    if m.timed_out:
        return m, {"violators": None, "timed_out": True}
    if m.returncode != 0:
        raise RuntimeError(f"c7n-org failed (exit {m.returncode}): {m.stderr[-3000:]}")
    files = glob.glob(str(out / "**" / "resources.json"), recursive=True)
    violators = sum(len(json.loads(Path(f).read_text())) for f in files)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return m, {"violators": violators, "result_files": len(files)}


# -- the run --------------------------------------------------------------------------------------------


def seed(emu: Emulator, s: Scenario) -> None:
    admin = emu.admin
    admin.reset()
    admin.set_latency(None)  # seed fast; the latency applies to the measured runs only
    started = time.perf_counter()
    result = seed_bulk(
        emu.url,
        s.accounts,
        s.regions,
        s.total_instances,
        violator_fraction=s.violator_fraction,
        reservation_size=500,
        canaries=s.canaries,
        role_name=ROLE_NAME,
        workers=8,
    )
    s.seed_summary = {**result.summary(), "seconds": round(time.perf_counter() - started, 1)}
    admin.set_latency(LATENCY_MS)
    if admin.settings()["latency_ms"] != [LATENCY_MS, LATENCY_MS]:
        raise RuntimeError(f"latency not set: {admin.settings()}")


def measure(emu: Emulator, label: str, func: Any) -> dict[str, Any]:
    admin = emu.admin
    admin.reset_calls()
    cpu_before = proc_cpu_seconds(emu.pid)
    m, extra = func()
    emulator_cpu = round(proc_cpu_seconds(emu.pid) - cpu_before, 2)
    calls = admin.calls()
    by_action: dict[str, int] = {}
    for row in calls["calls"]:
        key = f"{row['service']}:{row['action']}"
        by_action[key] = by_action.get(key, 0) + row["count"]
    row = {
        "tool": label,
        "wall_s": m.wall_s,
        "api_calls": calls["total"],
        "api_calls_by_action": by_action,
        "maxrss_mb": m.maxrss_mb,
        "tool_cpu_s": m.cpu_s,
        "emulator_cpu_s": emulator_cpu,
        "returncode": m.returncode,
        **extra,
    }
    print(
        f"    {label:<12} wall {m.wall_s:7.2f}s  calls {calls['total']:5d}  rss {m.maxrss_mb:6.1f} MB  "
        f"cpu {m.cpu_s:6.2f}s  emu-cpu {emulator_cpu:6.2f}s  violators {extra.get('violators')}",
        flush=True,
    )
    return row


def run_scenario(emu: Emulator, s: Scenario, c7n_org: Path | None, c7n_timeout: float) -> dict[str, Any]:
    print(f"== {s.name}: {len(s.accounts)} accounts x {len(s.regions)} regions, {s.total_instances} instances")
    seed(emu, s)
    print(f"   seeded {s.seed_summary}", flush=True)
    env = tool_env(emu.url, s.workdir)
    expected = s.seed_summary["violators"]
    runs: list[dict[str, Any]] = []
    measure(emu, "warm-up", lambda: run_floor(s, env))  # first describes warm moto's caches; not recorded
    tools: list[tuple[str, Any]] = [
        ("fleetwarden", lambda: run_fleetwarden(s, env)),
        ("floor", lambda: run_floor(s, env)),
    ]
    if s.c7n and c7n_org is not None:
        tools.append(("c7n-org", lambda: run_c7n(s, env, c7n_org, c7n_timeout)))
    for rep in range(s.reps):
        print(f"  rep {rep + 1}/{s.reps}", flush=True)
        for label, func in tools:  # interleaved, so drift hits every tool alike
            runs.append({"rep": rep + 1, **measure(emu, label, func)})
    print("  instrumented fleetwarden run (own call count, phases):", flush=True)
    counted = measure(emu, "fw-counted", lambda: run_fleetwarden(s, env, counted=True))
    return summarize(s, runs, counted, expected)


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(s: Scenario, runs: list[dict[str, Any]], counted: dict[str, Any], expected: int) -> dict[str, Any]:
    tools: dict[str, dict[str, Any]] = {}
    for label in ("fleetwarden", "floor", "c7n-org"):
        rows = [r for r in runs if r["tool"] == label]
        if not rows:
            continue
        tools[label] = {
            "runs": len(rows),
            "wall_s_median": median(rows, "wall_s"),
            "wall_s_all": [r["wall_s"] for r in rows],
            "api_calls_median": median(rows, "api_calls"),
            "maxrss_mb_median": median(rows, "maxrss_mb"),
            "maxrss_mb_max": max(r["maxrss_mb"] for r in rows),
            "tool_cpu_s_median": median(rows, "tool_cpu_s"),
            "emulator_cpu_s_median": median(rows, "emulator_cpu_s"),
            "violators": sorted({r.get("violators") for r in rows}, key=lambda v: (v is None, v)),
            "api_calls_by_action": rows[-1]["api_calls_by_action"],
        }
    floor_wall = tools["floor"]["wall_s_median"]
    for data in tools.values():
        wall = data["wall_s_median"]
        data["ratio_to_floor"] = round(wall / floor_wall, 2) if wall and floor_wall else None
    fw = tools["fleetwarden"]
    own = counted["instrumented"]["own_api_calls"]
    checks: dict[str, Any] = {
        "violators_match_seed": all(v == expected for t in tools.values() for v in t["violators"] if v is not None),
        "within_1.2x_of_floor": fw["ratio_to_floor"] is not None and fw["ratio_to_floor"] <= 1.2,
        "api_calls_within_10pct_of_min": fw["api_calls_median"] <= s.min_calls * 1.1,
        "peak_rss_under_300mb": fw["maxrss_mb_max"] < 300,
        "own_count_matches_emulator": own["total"] == counted["api_calls"],
    }
    if "c7n-org" in tools and tools["c7n-org"]["wall_s_median"]:
        checks["faster_than_c7n_org"] = fw["wall_s_median"] < tools["c7n-org"]["wall_s_median"]
    return {
        "scenario": s.name,
        "accounts": len(s.accounts),
        "regions": len(s.regions),
        "targets": s.targets,
        "seed": s.seed_summary,
        "expected_violators": expected,
        "min_api_calls": s.min_calls,
        "tools": tools,
        "fleetwarden_instrumented": {
            "api_calls_emulator": counted["api_calls"],
            "api_calls_own": own,
            "wall_s": counted["wall_s"],
            **counted["instrumented"],
        },
        "checks": checks,
        "runs": runs,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | tool | wall s (median) | x floor | API calls | min calls | peak RSS MB | tool CPU s | "
        "emulator CPU s | violators |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for label, t in r["tools"].items():
            viol = "/".join("timeout" if v is None else str(v) for v in t["violators"])
            lines.append(
                f"| {r['scenario']} ({r['accounts']}x{r['regions']}, {r['seed']['instances']} inst) | {label} | "
                f"{t['wall_s_median']} | {t['ratio_to_floor']} | {t['api_calls_median']:g} | {r['min_api_calls']} | "
                f"{t['maxrss_mb_max']} | {t['tool_cpu_s_median']} | {t['emulator_cpu_s_median']} | "
                f"{viol} (expected {r['expected_violators']}) |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller fleets, 1 repetition (a couple of minutes)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 3; 1 with --quick)")
    parser.add_argument("--no-c7n", action="store_true", help="skip Cloud Custodian")
    parser.add_argument("--c7n-many", action="store_true", help="also run c7n-org in the many-targets case")
    parser.add_argument("--only", choices=["fleet", "many-targets"], help="run one scenario")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    reps = max(1, min(args.reps or (1 if args.quick else 3), 10))
    c7n_org = None if args.no_c7n else c7n_org_path()
    if not args.no_c7n and c7n_org is None:
        print("c7n-org not found: run `make bench` (installs it into bench/.venv-c7n); continuing without", flush=True)
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    emu = Emulator(LATENCY_MS, workdir / "emulator.log")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        emu.start()
        print(f"emulator pid {emu.pid} at {emu.url}, latency {LATENCY_MS:g} ms", flush=True)
        fleet_accounts = [f"1000000000{i:02d}" for i in range(1, 5)]
        many_accounts = [f"2000000000{i:02d}" for i in range(1, 21)]
        scenarios = [
            Scenario(
                "fleet",
                fleet_accounts,
                FLEET_REGIONS,
                total_instances=480 if args.quick else 2000,
                violator_fraction=0.1,
                canaries=True,
                reps=reps,
                c7n=True,
                workdir=workdir,
            ),
            Scenario(
                "many-targets",
                many_accounts[:6] if args.quick else many_accounts,
                MANY_REGIONS[:5] if args.quick else MANY_REGIONS,
                total_instances=(6 * 5 if args.quick else 20 * 17) * 2,
                violator_fraction=0.5,
                canaries=False,
                reps=reps,
                c7n=args.c7n_many or args.quick,
                workdir=workdir,
            ),
        ]
        for s in scenarios:
            if args.only and s.name != args.only:
                continue
            results.append(run_scenario(emu, s, c7n_org, c7n_timeout=900 if args.c7n_many else 300))
    finally:
        emu.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "reps": reps,
        "latency_ms": LATENCY_MS,
        "max_concurrency": MAX_CONCURRENCY,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "uname": " ".join(os.uname())},
        "c7n_org": str(c7n_org) if c7n_org else None,
        "total_seconds": round(time.perf_counter() - started, 1),
        "scenarios": results,
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-{payload['mode']}-{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table(results) + "\n")
    print()
    print(table(results))
    print()
    for r in results:
        print(f"{r['scenario']}: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["checks"].items()))
    print(f"\nwrote {RESULTS / name}.json and .md ({payload['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
