"""Amazon Inspector (v2) network reachability: the ACTIVE `NETWORK_REACHABILITY` findings on the EC2 instances of
one account-region, each as the protocol, open port range and network path Inspector reports
(`networkReachabilityDetails`), for the exposure check to compare with (checks/exposure_compare.py).

One paginated ListFindings walk per target (never per instance).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PERMISSIONS = ("inspector2:ListFindings",)
EC2_RESOURCE = "AWS_EC2_INSTANCE"
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


@dataclass(frozen=True)
class Reachability:
    """One port range Inspector says the internet reaches on one instance, and along what."""

    instance_id: str
    protocol: str  # tcp | udp
    ports: tuple[int, int]
    path: tuple[str, ...]  # the path's component ids, in order (igw-..., acl-..., sg-..., eni-...)
    title: str
    finding_arn: str


def _equals(*values: str) -> list[dict[str, str]]:
    return [{"comparison": "EQUALS", "value": v} for v in values]


def _parse(raw: dict[str, Any]) -> Iterator[Reachability]:
    details = raw.get("networkReachabilityDetails") or {}
    protocol = _PROTOCOLS.get(str(details.get("protocol", "")).upper())
    span = details.get("openPortRange") or {}
    try:
        ports = (int(span["begin"]), int(span["end"]))
    except (KeyError, TypeError, ValueError):
        return  # not a port Inspector names: nothing to compare
    if protocol is None or not (0 <= ports[0] <= ports[1] <= 65535):
        return
    steps = (details.get("networkPath") or {}).get("steps") or []
    path = tuple(str(s.get("componentId")) for s in steps if isinstance(s, dict) and s.get("componentId"))
    for resource in raw.get("resources") or []:
        if resource.get("type", EC2_RESOURCE) == EC2_RESOURCE and resource.get("id"):
            yield Reachability(
                instance_id=str(resource["id"]),
                protocol=protocol,
                ports=ports,
                path=path,
                title=str(raw.get("title", "")),
                finding_arn=str(raw.get("findingArn", "")),
            )


def reachability(client: Any, account_id: str) -> dict[str, list[Reachability]]:
    """Inspector's open port ranges per instance, from the ACTIVE NETWORK_REACHABILITY findings of the client's
    region."""
    criteria = {
        "awsAccountId": _equals(account_id),
        "findingType": _equals("NETWORK_REACHABILITY"),
        "findingStatus": _equals("ACTIVE"),
        "resourceType": _equals(EC2_RESOURCE),
    }
    out: dict[str, list[Reachability]] = {}
    for page in client.get_paginator("list_findings").paginate(filterCriteria=criteria):
        for raw in page.get("findings", []):
            for reach in _parse(raw):
                out.setdefault(reach.instance_id, []).append(reach)
    return out
