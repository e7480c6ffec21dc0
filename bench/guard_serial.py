"""The old approach (runawaytrain), to compare `fleetwarden guard run --apply` with: regions in sequence, one
StopInstances call per instance.

Assumes the account's role once; then, region after region: one paginated DescribeInstances (running +
pending), then a StopInstances call for each instance on its own. Prints one JSON line on stdout like
guard_minimal.py (instances found and stopped, own API call count, when the last StopInstances call returned).

    python bench/guard_serial.py --account 300000000001 --regions us-east-1,eu-west-1 [--role-name FleetWarden]
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402 - T0 is taken before the imports, like a process start
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account", required=True)
    parser.add_argument("--regions", required=True, help="comma-separated region names")
    parser.add_argument("--role-name", default="FleetWarden")
    args = parser.parse_args()
    regions = [r for r in args.regions.split(",") if r]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"mode": "standard", "max_attempts": 8})
    calls: dict[str, int] = {}

    def count(event_name: str, **_: Any) -> None:
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
    found = stopped = 0
    last_stop = 0.0
    for region in regions:
        ec2 = session.client("ec2", region_name=region, endpoint_url=endpoint, config=config)
        ec2.meta.events.register("before-call", count)
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        ids = [i["InstanceId"] for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]
        found += len(ids)
        for instance_id in ids:
            response = ec2.stop_instances(InstanceIds=[instance_id])
            stopped += len(response.get("StoppingInstances", []))
            last_stop = time.time()
    print(
        json.dumps(
            {
                "instances": found,
                "stopped": stopped,
                "api_calls": sum(calls.values()),
                "api_calls_by_operation": dict(sorted(calls.items())),
                "t0": T0,
                "last_stop_returned_at": last_stop,
                "last_stop_s": round(last_stop - T0, 3) if last_stop else None,
                "done_s": round(time.time() - T0, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
