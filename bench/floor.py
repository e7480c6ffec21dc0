"""The floor: the least work a tag audit can do against AWS, to compare fleetwarden with.

Assumes each account's role exactly once, then runs one paginated DescribeInstances per (account, region)
target, all targets concurrently on a thread pool. It counts instances and the ones missing a required tag
key (so its answer can be checked against fleetwarden's) and prints one JSON line on stdout.

    python bench/floor.py --accounts 100000000001,100000000002 --regions us-east-1,eu-west-1 \
        [--role-name FleetWarden] [--workers 32] [--required created_by,department,project]

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", required=True, help="comma-separated 12-digit account ids")
    parser.add_argument("--regions", required=True, help="comma-separated region names")
    parser.add_argument("--role-name", default="FleetWarden")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--required", default="created_by,department,project")
    args = parser.parse_args()
    started = time.perf_counter()
    accounts = [a for a in args.accounts.split(",") if a]
    regions = [r for r in args.regions.split(",") if r]
    required = [k for k in args.required.split(",") if k]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"mode": "standard", "max_attempts": 8}, max_pool_connections=max(10, args.workers))
    base = boto3.Session()
    # One botocore data loader for every session, and EC2's model (a ~30 MB JSON) parsed once, up front.
    loader = base._session.get_component("data_loader")
    loader.load_service_model("ec2", "service-2")
    sts = base.client("sts", region_name="us-east-1", endpoint_url=endpoint, config=config)
    calls = {"n": 0}
    calls_lock = threading.Lock()

    def count(**_: Any) -> None:
        with calls_lock:
            calls["n"] += 1

    sts.meta.events.register("before-call", count)
    # One assumed session per account, created once (the first target of the account assumes its role).
    sessions: dict[str, Future[tuple[boto3.Session, threading.Lock]]] = {}
    sessions_lock = threading.Lock()

    def session_for(account_id: str) -> tuple[boto3.Session, threading.Lock]:
        with sessions_lock:
            future = sessions.get(account_id)
            owner = future is None
            if future is None:
                future = sessions[account_id] = Future()
        if owner:
            try:
                creds = sts.assume_role(
                    RoleArn=f"arn:aws:iam::{account_id}:role/{args.role_name}", RoleSessionName="floor"
                )["Credentials"]
                bc_session = botocore.session.get_session()
                bc_session.register_component("data_loader", loader)
                bc_session.set_credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
                session = boto3.Session(botocore_session=bc_session)
                future.set_result((session, threading.Lock()))
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter for this account
                future.set_exception(exc)
        return future.result()

    def target(key: tuple[str, str]) -> tuple[int, int]:
        account_id, region = key
        session, lock = session_for(account_id)
        with lock:  # boto3 sessions are not thread-safe for client creation
            ec2 = session.client("ec2", region_name=region, endpoint_url=endpoint, config=config)
        ec2.meta.events.register("before-call", count)
        seen = bad = 0
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": LIVE_STATES}], PaginationConfig={"PageSize": 1000}
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    seen += 1
                    tags = {t["Key"]: t.get("Value", "") for t in instance.get("Tags") or []}
                    if any(not tags.get(k, "").strip() for k in required):
                        bad += 1
        return seen, bad

    keys = [(a, r) for a in accounts for r in regions]
    instances = violators = 0
    with ThreadPoolExecutor(max_workers=max(1, min(args.workers, len(keys)))) as pool:
        for seen, bad in pool.map(target, keys):
            instances += seen
            violators += bad
    result = {
        "targets": len(keys),
        "instances": instances,
        "violators": violators,
        "api_calls": calls["n"],
        "seconds_in_process": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
