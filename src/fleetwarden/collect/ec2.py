"""EC2 inventory: DescribeInstances, paginated and streamed per target, normalized into `Instance`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from ..model import Instance

# Terminated and shutting-down instances are gone for every purpose of fleetwarden.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
PERMISSIONS = ("ec2:DescribeInstances", "ec2:DescribeSpotInstanceRequests")
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
        spot_request_id=raw.get("SpotInstanceRequestId"),
    )


def iter_raw_instances(client: Any, states: Sequence[str] = LIVE_STATES) -> Iterator[dict[str, Any]]:
    """Every DescribeInstances item of one target in the given states, page by page (never trusting one page)."""
    paginator = client.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[{"Name": "instance-state-name", "Values": list(states)}],
        PaginationConfig={"PageSize": PAGE_SIZE},
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            yield from reservation.get("Instances", [])


def iter_instances(
    client: Any, account_id: str, region: str, states: Sequence[str] = LIVE_STATES
) -> Iterator[Instance]:
    """Every instance of one target in the given states, normalized."""
    for raw in iter_raw_instances(client, states):
        yield instance_from_api(raw, account_id, region)


def one_time_spot_ids(client: Any, instances: Sequence[Instance]) -> set[str]:
    """Ids of spot instances whose request is one-time: EC2 cannot stop them (only terminate)."""
    requests = {i.spot_request_id: i.id for i in instances if i.lifecycle == "spot" and i.spot_request_id}
    if not requests:
        return set()
    one_time: set[str] = set()
    paginator = client.get_paginator("describe_spot_instance_requests")
    for page in paginator.paginate(SpotInstanceRequestIds=sorted(requests)):
        for request in page.get("SpotInstanceRequests", []):
            if request.get("Type", "one-time") == "one-time":
                one_time.add(requests.get(request["SpotInstanceRequestId"], request.get("InstanceId", "")))
    return one_time - {""}
