"""The minimal halt, to compare `fleetwarden guard run --apply` with: the least work that stops one account.

Assumes the account's role once, then a thread per region: one paginated DescribeInstances (running + pending),
then one StopInstances call per 1,000 ids. No journal, no lease, no Auto Scaling, no protection handling. Prints
one JSON line on stdout: instances found and stopped, its own API call count, and when (time.time()) the last
StopInstances call returned.

    python bench/guard_minimal.py --account 300000000001 --regions us-east-1,eu-west-1 [--role-name FleetWarden]

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
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
    parser.add_argument("--account", required=True)
    parser.add_argument("--regions", required=True, help="comma-separated region names")
    parser.add_argument("--role-name", default="FleetWarden")
    args = parser.parse_args()
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
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{args.account}:role/{args.role_name}", RoleSessionName="halt")[
        "Credentials"
    ]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    assumed = time.time()
    # boto3 sessions are not thread-safe for client creation: create the clients here, use them in threads.
    clients = {r: session.client("ec2", region_name=r, endpoint_url=endpoint, config=config) for r in regions}
    for client in clients.values():
        client.meta.events.register("before-call", count)

    def halt(region: str) -> tuple[int, int]:
        ec2 = clients[region]
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

    with ThreadPoolExecutor(max_workers=max(1, len(regions))) as pool:
        outcomes = list(pool.map(halt, regions))
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
