"""EC2 inventory: DescribeInstances, paginated and streamed per target, normalized into `Instance`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from ..model import Instance

# Terminated and shutting-down instances are gone for every purpose of fleetwarden.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
PERMISSIONS = ("ec2:DescribeInstances",)
PAGE_SIZE = 1000


def instance_from_api(raw: dict[str, Any], account_id: str, region: str) -> Instance:
    """Normalize one DescribeInstances item."""
    tags = {t["Key"]: t.get("Value", "") for t in raw.get("Tags") or []}
    launch = raw.get("LaunchTime")
    if isinstance(launch, str):
        launch = datetime.fromisoformat(launch.replace("Z", "+00:00"))
    if launch is None:
        launch = datetime.fromtimestamp(0, UTC)
    elif launch.tzinfo is None:
        launch = launch.replace(tzinfo=UTC)
    volumes = tuple(
        m["Ebs"]["VolumeId"] for m in raw.get("BlockDeviceMappings") or [] if m.get("Ebs", {}).get("VolumeId")
    )
    return Instance(
        id=raw["InstanceId"],
        account_id=account_id,
        region=region,
        state=raw.get("State", {}).get("Name", "unknown"),
        instance_type=raw.get("InstanceType", ""),
        launch_time=launch,
        tags=tags,
        volume_ids=volumes,
        asg_name=tags.get("aws:autoscaling:groupName"),
        lifecycle=raw.get("InstanceLifecycle", "on-demand"),
        root_device_type=raw.get("RootDeviceType", "ebs"),
    )


def iter_instances(
    client: Any, account_id: str, region: str, states: Sequence[str] = LIVE_STATES
) -> Iterator[Instance]:
    """Every instance of one target in the given states, page by page (never trusting one page)."""
    paginator = client.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[{"Name": "instance-state-name", "Values": list(states)}],
        PaginationConfig={"PageSize": PAGE_SIZE},
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                yield instance_from_api(raw, account_id, region)
