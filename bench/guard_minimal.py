"""The minimal halt, to compare `fleetwarden guard run --apply` with: the least work that stops the accounts.

Assumes each account's role once, then one thread per (account, region) target, at most --workers at a time
(default 32, fleetwarden's max_concurrency; one account of 17 regions gets a thread per region): one paginated
DescribeInstances (running + pending), then one StopInstances call per 1,000 ids. No journal, no lease, no Auto
Scaling, no protection handling. Prints one JSON line on stdout: instances found and stopped, its own API call
count, and when (time.time()) the last StopInstances call returned.

    python bench/guard_minimal.py --account 300000000001[,300000000002...] --regions us-east-1,eu-west-1 \
        [--role-name FleetWarden] [--workers 32]

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Each target's
client is made in its own thread (a boto3 Session is not thread-safe for client creation: one lock per account).
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402 - T0 is taken before the imports, like a process start
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

BATCH = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account", required=True, help="comma-separated account ids")
    parser.add_argument("--regions", required=True, help="comma-separated region names")
    parser.add_argument("--role-name", default="FleetWarden")
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    accounts = [a for a in args.account.split(",") if a]
    regions = [r for r in args.regions.split(",") if r]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=10)
    imported = time.time()
    lock = threading.Lock()
    calls: dict[str, int] = {}
    last_stop = [0.0]

    def count(event_name: str, **_: Any) -> None:
        with lock:
            op = event_name.rsplit(".", 1)[-1]
            calls[op] = calls.get(op, 0) + 1

    sts = boto3.Session().client("sts", region_name="us-east-1", endpoint_url=endpoint, config=config)
    sts.meta.events.register("before-call", count)

    def assume(account: str) -> tuple[str, boto3.Session]:
        role = f"arn:aws:iam::{account}:role/{args.role_name}"
        creds = sts.assume_role(RoleArn=role, RoleSessionName="halt")["Credentials"]
        session = boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        return account, session

    with ThreadPoolExecutor(max_workers=max(1, min(len(accounts), args.workers))) as pool:
        sessions = dict(pool.map(assume, accounts))
    session_locks = {a: threading.Lock() for a in accounts}
    assumed = time.time()

    def halt(target: tuple[str, str]) -> tuple[int, int]:
        account, region = target
        with session_locks[account]:
            ec2 = sessions[account].client("ec2", region_name=region, endpoint_url=endpoint, config=config)
        ec2.meta.events.register("before-call", count)
        ids: list[str] = []
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}],
            PaginationConfig={"PageSize": 1000},
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                ids += [i["InstanceId"] for i in reservation.get("Instances", [])]
        stopped = 0
        for start in range(0, len(ids), BATCH):
            response = ec2.stop_instances(InstanceIds=ids[start : start + BATCH])
            stopped += len(response.get("StoppingInstances", []))
            with lock:
                last_stop[0] = max(last_stop[0], time.time())
        return len(ids), stopped

    targets = [(a, r) for a in accounts for r in regions]
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), args.workers))) as pool:
        outcomes = list(pool.map(halt, targets))
    print(
        json.dumps(
            {
                "instances": sum(o[0] for o in outcomes),
                "stopped": sum(o[1] for o in outcomes),
                "api_calls": sum(calls.values()),
                "api_calls_by_operation": dict(sorted(calls.items())),
                "t0": T0,
                "imported_s": round(imported - T0, 3),
                "assumed_s": round(assumed - T0, 3),
                "last_stop_returned_at": last_stop[0],
                "last_stop_s": round(last_stop[0] - T0, 3) if last_stop[0] else None,
                "done_s": round(time.time() - T0, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
