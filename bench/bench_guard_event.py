"""Event to containment: from a RunInstances event reaching the Lambda handler to the quarantine SCP attached and the
last StopInstances call returned (issue 13, docs/guard.md "Event-driven trips").

    .venv/bin/python bench/bench_guard_event.py [--reps N] [--instances N] [--latency-ms MS]

The in-process emulator (moto + fleetwarden's middleware, 127.0.0.1) with `--latency-ms` added to every AWS call
(50 by default, as bench_guard.py); an organization with SCPs enabled, one member account running `--instances`
instances over 3 listed regions plus 1 region the config does not list; `guard.quarantine` on, lockout off,
`max_running_instances: 1`. Each repetition starts every instance again, clears the state store and the trip,
then hands the handler the fixture tests/events/cloudtrail_run_instances.json for that account. Timestamps come
from the journal (the quarantine's and each stop's final entry, written right after the call returned) against
the moment the event was handed over. Results: bench/results/guard-event-<stamp>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
EVENT = ROOT / "tests" / "events" / "cloudtrail_run_instances.json"
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]
UNLISTED = "ap-southeast-2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()

    from fleetwarden.aws.session import AccountAccess, SessionFactory
    from fleetwarden.config import AwsSettings
    from fleetwarden.emulator.server import EmulatorServer

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    work = Path(tempfile.mkdtemp(prefix="fw-bench-event-"))
    server = EmulatorServer(log_requests=False).start()
    try:
        os.environ["AWS_ENDPOINT_URL"] = server.url
        factory = SessionFactory(AwsSettings(endpoint_url=server.url), run_id="bench")
        org = factory.client("organizations", region="us-east-1")
        org.create_organization(FeatureSet="ALL")
        org.enable_policy_type(RootId=org.list_roots()["Roots"][0]["Id"], PolicyType="SERVICE_CONTROL_POLICY")
        account = org.create_account(AccountName="dev", Email="dev@example.com")["CreateAccountStatus"]["AccountId"]
        factory.register_account(AccountAccess(account, f"arn:aws:iam::{account}:role/FleetWarden"))
        ids: dict[str, list[str]] = {}
        per_region = max(1, args.instances // (len(REGIONS) + 1))
        for region in [*REGIONS, UNLISTED]:
            ec2 = factory.client("ec2", region=region, account_id=account)
            ids[region] = [i["InstanceId"] for i in ec2.run_instances(
                ImageId="ami-12345678", MinCount=per_region, MaxCount=per_region)["Instances"]]  # fmt: skip
        config = {
            "apply": True,
            "aws": {"endpoint_url": server.url, "max_concurrency": 32},
            "accounts": [{"id": account, "role_arn": f"arn:aws:iam::{account}:role/FleetWarden"}],
            "regions": REGIONS,
            "state": f"sqlite:///{work / 'state.db'}",
            "guard": {"max_running_instances": 1, "lockout": {"mode": "off"}, "quarantine": {"enabled": True}},
        }
        path = work / "fleetwarden.yaml"
        path.write_text(yaml.safe_dump(config))
        os.environ["FLEETWARDEN_CONFIG"] = str(path)
        os.environ["LAMBDA_TASK_ROOT"] = str(work / "task")
        event = json.loads(EVENT.read_text())
        event["account"] = event["detail"]["recipientAccountId"] = account

        from fleetwarden.lambda_handler import handler

        runs: list[dict[str, float]] = []
        for rep in range(args.reps + 1):  # the first one warms up (imports, botocore models)
            for region, region_ids in ids.items():
                factory.client("ec2", region=region, account_id=account).start_instances(InstanceIds=region_ids)
            (work / "state.db").unlink(missing_ok=True)
            policies = org.list_policies_for_target(TargetId=account, Filter="SERVICE_CONTROL_POLICY")["Policies"]
            for policy in policies:
                if policy["Name"] != "FullAWSAccess":
                    org.detach_policy(PolicyId=policy["Id"], TargetId=account)
            server.client.set_latency(args.latency_ms)
            event["detail"]["eventTime"] = (datetime.now(UTC) - timedelta(seconds=20)).isoformat()
            start = datetime.now(UTC)
            t0 = time.perf_counter()
            result = handler(event)
            wall = time.perf_counter() - t0
            server.client.set_latency(None)
            assert result.get("summary", {}).get("tripped") == [account], result
            timings = _timings(work / "state.db", start)
            timings["handler_s"] = wall
            if rep:
                runs.append(timings)
            shown = json.dumps({k: round(v, 3) for k, v in timings.items()})
            print(f"rep {rep}{' (warm-up)' if not rep else ''}: {shown}")
    finally:
        server.stop()
    summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "instances": args.instances,
        "latency_ms": args.latency_ms,
        "reps": args.reps,
        "runs": runs,
        "median": summary,
    }
    (RESULTS / f"guard-event-{stamp}.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Event to containment ({stamp})",
        "",
        f"{args.instances} instances in 3 listed regions and 1 unlisted, {args.latency_ms:g} ms per AWS call, "
        f"median of {args.reps} runs (after a warm-up):",
        "",
        "| from the event handed to the handler to | seconds |",
        "|---|---|",
        f"| the quarantine SCP attached | {summary['quarantine_s']:.2f} |",
        f"| the last StopInstances returned | {summary['last_stop_s']:.2f} |",
        f"| the handler returned | {summary['handler_s']:.2f} |",
    ]
    (RESULTS / f"guard-event-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _timings(db: Path, start: datetime) -> dict[str, float]:
    from fleetwarden.state import open_store

    store = open_store(f"sqlite:///{db}")
    try:
        entries = store.list_journal()
    finally:
        store.close()

    def at(entry: Any) -> float:
        return float((entry.at - start).total_seconds())

    quarantine = [at(e) for e in entries if e.action == "quarantine" and e.outcome.value == "done"]
    stops = [at(e) for e in entries if e.action == "stop" and e.outcome.value == "done"]
    return {"quarantine_s": min(quarantine), "last_stop_s": max(stops)}


if __name__ == "__main__":
    sys.exit(main())
