"""Organization-scale guard benchmark: `fleetwarden guard run --apply` in one process against the minimal halt script
for 1, 10 and 100 tripped accounts x 17 regions, and the cost of one org-run shard (25 accounts through the Lambda
handler's shard event), on the emulator with 50 ms of latency per AWS call.

    .venv/bin/python bench/bench_guard_org.py            # 100 accounts x 17 regions, 3 reps (~15-20 min, 2 cores)
    .venv/bin/python bench/bench_guard_org.py --quick    # 1 and 10 accounts + a 5-account shard pair, 1 rep (~2 min)
    # --accounts N (the largest scenario)  --scenarios 1,10,100  --reps N  --shard-size 25
    # --shard-latencies 50,150 (the shard pair at each latency: the slope gives the latency-bound part)
    # --no-shard  --no-scenarios  --per-target 2 (instances per account and region)

The emulator is bench_guard.py's (own process, request timeline). Fleet: N accounts (assume-role
arn:aws:iam::<id>:role/FleetWarden) x 17 regions, `--per-target` running instances per target in one
reservation, no ASGs. Before every run every instance is started again (inside the emulator process) and checked;
after it, the scenario's instances are checked stopped and the others running.

Per run: wall time (process), API calls (the emulator's counter), time from process start to the last
StopInstances call returned (the emulator's timestamps, same clock). Shards: one process = one Lambda execution
environment (bench/guard_shard.py): shard 0 cold (process start + imports + first invocation), then shard 1 warm
in the same process; state in DynamoDB (a fresh table per pair, as the Lambda runs with `dynamodb://`), the
fragment to S3. Results: bench/results/guard-org-<mode>-<stamp>.json and .md. See bench/guard.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_guard import (
    FLEETWARDEN,
    LATENCY_MS,
    PYTHON,
    REGIONS,
    RESULTS,
    ROLE_NAME,
    Emulator,
    Measured,
    by_action,
    run_measured,
    tool_env,
)

BENCH = Path(__file__).resolve().parent
FIRST_ACCOUNT = 400000000001
BUCKET = "fleetwarden-bench-runs"
LIMIT = 1  # guard.max_running_instances: every seeded account trips


def account_ids(n: int) -> list[str]:
    return [str(FIRST_ACCOUNT + i) for i in range(n)]


class OrgBench:
    def __init__(self, emu: Emulator, accounts: list[str], per_target: int, workdir: Path) -> None:
        self.emu = emu
        self.accounts = accounts
        self.per_target = per_target
        self.workdir = workdir
        self.env = tool_env(emu.url, workdir)
        self.total = len(accounts) * len(REGIONS) * per_target

    # -- fleet ----------------------------------------------------------------------------------------
    def states(self, start: bool = False) -> dict[str, int]:
        path = "/_fleetwarden/bench/start-all" if start else "/_fleetwarden/bench/states"
        out: dict[str, int] = self.emu.admin._json(path, {} if start else None, method="POST" if start else "GET")[
            "states"
        ]
        return out

    def reset(self) -> None:
        self.emu.admin.set_latency(None)
        self.states(start=True)
        states = self.states()
        if states != {"running": self.total}:
            raise RuntimeError(f"after restarting, expected {self.total} running, got {states}")

    def config(self, state_dir: Path, accounts: list[str], state: str | None = None) -> Path:
        import yaml

        config = {
            "accounts": [{"id": a, "role_arn": f"arn:aws:iam::{a}:role/{ROLE_NAME}"} for a in accounts],
            "regions": REGIONS,
            "state": state or f"sqlite:///{state_dir / 'state.db'}",
            "guard": {"max_running_instances": LIMIT, "lockout": {"mode": "off"}},
        }
        path = state_dir / "fleetwarden.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- one measured run -----------------------------------------------------------------------------
    def measure(
        self, label: str, accounts: list[str], func: Callable[[], tuple[Measured, dict[str, Any]]]
    ) -> dict[str, Any]:
        self.reset()
        admin = self.emu.admin
        admin.set_latency(LATENCY_MS)
        self.emu.reset_counters()
        load = os.getloadavg()[0]
        m, extra = func()
        calls = admin.calls()
        events = self.emu.timeline()
        admin.set_latency(None)
        states = self.states()
        expected = len(accounts) * len(REGIONS) * self.per_target
        stops = [e for e in events if e["action"] == "StopInstances"]
        row = {
            "tool": label,
            "accounts": len(accounts),
            "wall_s": m.wall_s,
            "returncode": m.returncode,
            "maxrss_mb": m.maxrss_mb,
            "loadavg_1m_before": round(load, 2),
            "api_calls": calls["total"],
            "api_calls_by_action": by_action(calls),
            "stop_calls": len(stops),
            "first_call_s": round(min(e["start"] for e in events) - m.t0, 3) if events else None,
            "time_to_last_stop_s": round(max(e["end"] for e in stops) - m.t0, 3) if stops else None,
            "states_after": states,
            "all_stopped": states.get("stopped", 0) == expected and states.get("running", 0) == self.total - expected,
            **extra,
        }
        print(
            f"    {label:<12} {len(accounts):4d} accts  last stop {row['time_to_last_stop_s']}s  "
            f"wall {m.wall_s:7.2f}s  calls {calls['total']:6d} (stop {len(stops)})  "
            f"all stopped: {row['all_stopped']}  load {load:.1f}"
            + (f"  exit {m.returncode}: {row.get('failed')} {row.get('errors')}" if m.returncode not in (0, 3) else ""),
            flush=True,
        )
        return row

    def run_fleetwarden(self, accounts: list[str]) -> tuple[Measured, dict[str, Any]]:
        state_dir = Path(tempfile.mkdtemp(prefix="fw-state-", dir=self.workdir))  # a fresh state: a new trip
        cfg = self.config(state_dir, accounts)
        cmd = [str(FLEETWARDEN), "--config", str(cfg), "--json", "guard", "run", "--apply"]
        m = run_measured(cmd, self.env, state_dir, timeout=1800)
        if m.returncode not in (0, 3, 4):  # 4: some target or action failed; recorded, and `all stopped` says
            raise RuntimeError(f"fleetwarden failed (exit {m.returncode}): {m.stderr[-3000:]}")
        report = json.loads(m.stdout)
        shutil.rmtree(state_dir, ignore_errors=True)
        failed = [
            {k: a.get(k) for k in ("action", "account_id", "region", "resource_id", "reason")}
            for a in report.get("actions", [])
            if a.get("outcome") == "failed"
        ]
        errors = [t for t in report.get("targets", []) if t.get("status") == "error"]
        return m, {"summary_actions": report.get("summary", {}).get("actions"), "failed": failed, "errors": errors}

    def run_minimal(self, accounts: list[str]) -> tuple[Measured, dict[str, Any]]:
        cmd = [str(PYTHON), str(BENCH / "guard_minimal.py"), "--account", ",".join(accounts)]
        cmd += ["--regions", ",".join(REGIONS), "--role-name", ROLE_NAME]
        m = run_measured(cmd, self.env, self.workdir, timeout=1800)
        if m.returncode != 0:
            raise RuntimeError(f"guard_minimal.py failed (exit {m.returncode}): {m.stderr[-2000:]}")
        own = json.loads(m.stdout.strip().splitlines()[-1])
        return m, {"own": {k: own[k] for k in ("instances", "stopped", "api_calls", "assumed_s", "done_s")}}

    # -- shards ---------------------------------------------------------------------------------------
    def shard_pair(self, shard_size: int, latency_ms: float, rep: int) -> dict[str, Any]:
        """Shard 0 cold and shard 1 warm in one process (one Lambda execution environment)."""
        admin = self.emu.admin
        self.reset()
        state_dir = Path(tempfile.mkdtemp(prefix="fw-shard-", dir=self.workdir))
        table = f"fleetwarden-bench-{rep}-{int(latency_ms)}-{int(time.time())}"
        cfg = self.config(state_dir, self.accounts, state=f"dynamodb://{table}?region=us-east-1")
        init = run_measured([str(FLEETWARDEN), "--config", str(cfg), "state", "init"], self.env, state_dir, timeout=300)
        if init.returncode != 0:
            raise RuntimeError(f"state init failed: {init.stderr[-2000:]}")
        run_id = f"bench-{rep}-{int(latency_ms)}"
        shards = [self.accounts[i : i + shard_size] for i in (0, shard_size)]
        events = [
            {
                "action": "guard",
                "apply": True,
                "accounts": shard,
                "run_id": run_id,
                "shard": n,
                "fragments": f"s3://{BUCKET}/runs",
            }
            for n, shard in enumerate(shards)
        ]
        events_path = state_dir / "events.json"
        events_path.write_text(json.dumps(events))
        env = {**self.env, "FLEETWARDEN_CONFIG": str(cfg)}
        admin.set_latency(latency_ms)
        self.emu.reset_counters()
        load = os.getloadavg()[0]
        m = run_measured([str(PYTHON), str(BENCH / "guard_shard.py"), str(events_path)], env, state_dir, timeout=1800)
        events_seen = self.emu.timeline()
        admin.set_latency(None)
        if m.returncode != 0:
            raise RuntimeError(f"guard_shard.py failed (exit {m.returncode}): {m.stderr[-3000:]}")
        out = json.loads(m.stdout.strip().splitlines()[-1])
        states = self.states()
        expected = 2 * shard_size * len(REGIONS) * self.per_target
        rows = []
        for n, inv in enumerate(out["invocations"]):
            inside = [e for e in events_seen if inv["start"] <= e["start"] <= inv["end"]]
            stops = [e for e in inside if e["action"] == "StopInstances"]
            last_stop = max((e["end"] for e in stops), default=None)
            origin = out["t0"] if n == 0 else inv["start"]
            rows.append(
                {
                    "shard": inv["shard"],
                    "start": "cold" if n == 0 else "warm",
                    "accounts": inv["accounts"],
                    "status": inv["status"],
                    "exit_code": inv["exit_code"],
                    "error": inv["error"],
                    "actions": inv["actions"],
                    # cold: from process start (imports included); warm: from the handler call
                    "time_to_last_stop_s": round(last_stop - origin, 3) if last_stop else None,
                    "handler_s": round(inv["end"] - inv["start"], 3),
                    "total_s": round(inv["end"] - origin, 3),
                    "api_calls": len(inside),
                    "api_calls_by_action": _count(f"{e['service']}:{e['action']}" for e in inside),
                    "stop_calls": len(stops),
                }
            )
        shutil.rmtree(state_dir, ignore_errors=True)
        result = {
            "rep": rep,
            "latency_ms": latency_ms,
            "import_s": round(out["imported"] - out["t0"], 3),
            "loadavg_1m_before": round(load, 2),
            "all_stopped": states.get("stopped", 0) == expected,
            "states_after": states,
            "invocations": rows,
        }
        for row in rows:
            print(
                f"    shard {row['shard']} ({row['start']}, {row['accounts']} accts, {latency_ms:g} ms) status "
                f"{row['status']}  last stop {row['time_to_last_stop_s']}s  handler {row['handler_s']}s  "
                f"calls {row['api_calls']}  load {load:.1f}",
                flush=True,
            )
        return result


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.median(kept), 3) if kept else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in dict.fromkeys((r["accounts"], r["tool"]) for r in runs):
        rows = [r for r in runs if (r["accounts"], r["tool"]) == key]
        out.append(
            {
                "accounts": key[0],
                "tool": key[1],
                "runs": len(rows),
                "time_to_last_stop_s_median": _median([r["time_to_last_stop_s"] for r in rows]),
                "time_to_last_stop_s_all": [r["time_to_last_stop_s"] for r in rows],
                "wall_s_median": _median([r["wall_s"] for r in rows]),
                "wall_s_all": [r["wall_s"] for r in rows],
                "api_calls_median": _median([r["api_calls"] for r in rows]),
                "stop_calls_median": _median([r["stop_calls"] for r in rows]),
                "maxrss_mb_max": max(r["maxrss_mb"] for r in rows),
                "all_stopped": all(r["all_stopped"] for r in rows),
                "api_calls_by_action": rows[-1]["api_calls_by_action"],
            }
        )
    return out


def summarize_shards(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for latency in dict.fromkeys(p["latency_ms"] for p in pairs):
        for start in ("cold", "warm"):
            rows = [i for p in pairs if p["latency_ms"] == latency for i in p["invocations"] if i["start"] == start]
            out.append(
                {
                    "latency_ms": latency,
                    "start": start,
                    "runs": len(rows),
                    "accounts": rows[0]["accounts"] if rows else None,
                    "time_to_last_stop_s_median": _median([r["time_to_last_stop_s"] for r in rows]),
                    "time_to_last_stop_s_all": [r["time_to_last_stop_s"] for r in rows],
                    "handler_s_median": _median([r["handler_s"] for r in rows]),
                    "total_s_median": _median([r["total_s"] for r in rows]),
                    "api_calls_median": _median([r["api_calls"] for r in rows]),
                    "statuses": sorted({str(r["status"]) for r in rows}),
                    "api_calls_by_action": rows[-1]["api_calls_by_action"] if rows else {},
                }
            )
    return out


def table(summary: list[dict[str, Any]], shards: list[dict[str, Any]]) -> str:
    lines = [
        "| accounts x 17 regions | tool | start to last stop s (median) | x minimal | wall s (median) | API calls | "
        "stop calls | all stopped |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    minimal = {r["accounts"]: r["time_to_last_stop_s_median"] for r in summary if r["tool"] == "minimal"}
    for r in summary:
        base = minimal.get(r["accounts"])
        tth = r["time_to_last_stop_s_median"]
        ratio = f"{tth / base:.2f}" if tth and base else "n/a"
        lines.append(
            f"| {r['accounts']} | {r['tool']} | {tth} | {ratio} | {r['wall_s_median']} | {r['api_calls_median']:g} | "
            f"{r['stop_calls_median']:g} | {'yes' if r['all_stopped'] else 'NO'} |"
        )
    if shards:
        lines += [
            "",
            "| shard (Lambda handler) | latency ms | accounts | to last stop s (median) | handler s (median) | "
            "total s (median) | API calls | status |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in shards:
            lines.append(
                f"| {s['start']} | {s['latency_ms']:g} | {s['accounts']} | {s['time_to_last_stop_s_median']} | "
                f"{s['handler_s_median']} | {s['total_s_median']} | {s['api_calls_median']} | "
                f"{', '.join(s['statuses'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 accounts, a 5-account shard pair, 1 rep")
    parser.add_argument("--accounts", type=int, default=None, help="accounts seeded (default 100; 10 with --quick)")
    parser.add_argument("--scenarios", default=None, help="comma-separated account counts (default 1,10,ACCOUNTS)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--shard-size", type=int, default=None, help="accounts per shard (default 25; 5 quick)")
    parser.add_argument("--shard-latencies", default=None, help="ms, comma-separated (default 50,150; 50 quick)")
    parser.add_argument("--per-target", type=int, default=2, help="instances per account and region")
    parser.add_argument("--no-shard", action="store_true")
    parser.add_argument("--no-scenarios", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from fleetwarden.emulator.seed import seed_bulk

    n_accounts = args.accounts or (10 if args.quick else 100)
    scenarios = [int(x) for x in (args.scenarios or f"1,10,{n_accounts}").split(",") if x]
    scenarios = sorted({s for s in scenarios if 0 < s <= n_accounts})
    reps = max(1, args.reps or (1 if args.quick else 3))
    shard_size = args.shard_size or (5 if args.quick else 25)
    latencies = [float(x) for x in (args.shard_latencies or ("50" if args.quick else "50,150")).split(",") if x]
    if 2 * shard_size > n_accounts:
        raise SystemExit(f"a shard pair needs {2 * shard_size} accounts; --accounts is {n_accounts}")
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fw-guard-org-"))
    emu = Emulator(LATENCY_MS, workdir / "emulator.log")
    started = time.perf_counter()
    accounts = account_ids(n_accounts)
    runs: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    try:
        emu.start()
        print(f"emulator pid {emu.pid} at {emu.url}, latency {LATENCY_MS:g} ms")
        emu.admin.set_latency(None)
        seeded = seed_bulk(
            emu.url,
            accounts,
            REGIONS,
            n_accounts * len(REGIONS) * args.per_target,
            violator_fraction=0.0,
            reservation_size=args.per_target,
            canaries=False,
            role_name=ROLE_NAME,
        )
        import boto3

        boto3.client(
            "s3", region_name="us-east-1", endpoint_url=emu.url, aws_access_key_id="testing", aws_secret_access_key="x"
        ).create_bucket(Bucket=BUCKET)
        seed_info = {**seeded.summary(), "seconds": round(time.perf_counter() - started, 1)}
        print(f"seeded {seed_info}")
        bench = OrgBench(emu, accounts, args.per_target, workdir)
        if not args.no_scenarios:
            bench.measure("warm-up", accounts[:1], lambda: bench.run_minimal(accounts[:1]))  # not recorded
            for rep in range(reps):
                print(f"  rep {rep + 1}/{reps}")
                for n in scenarios:
                    chosen = accounts[:n]
                    tools: list[tuple[str, Callable[[], tuple[Measured, dict[str, Any]]]]] = [
                        ("fleetwarden", lambda c=chosen: bench.run_fleetwarden(c)),  # type: ignore[misc]
                        ("minimal", lambda c=chosen: bench.run_minimal(c)),  # type: ignore[misc]
                    ]
                    if rep % 2:
                        tools.reverse()  # alternate which goes first, so drift hits both alike
                    for label, func in tools:
                        runs.append({"rep": rep + 1, **bench.measure(label, chosen, func)})
        if not args.no_shard:
            for rep in range(reps):
                for latency in latencies:
                    pairs.append(bench.shard_pair(shard_size, latency, rep + 1))
    finally:
        emu.stop()
    summary = summarize(runs)
    shard_summary = summarize_shards(pairs)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "reps": reps,
        "latency_ms": LATENCY_MS,
        "regions": REGIONS,
        "accounts": n_accounts,
        "per_target": args.per_target,
        "shard_size": shard_size,
        "seed": seed_info,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "uname": " ".join(os.uname())},
        "scenarios": summary,
        "shards": shard_summary,
        "runs": runs,
        "shard_pairs": pairs,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"guard-org-{result['mode']}-{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = table(summary, shard_summary)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print()
    print(text)
    print(f"wrote {RESULTS / name}.json and .md ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
