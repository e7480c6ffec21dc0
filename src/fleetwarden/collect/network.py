"""The network path of a target (account x region) for the exposure check: each instance's interfaces (from the
DescribeInstances answer the audit already reads), and the region's route tables, network ACLs, security groups and
the managed prefix lists their rules reference. A bounded number of paginated calls per target, never per instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PERMISSIONS = (
    "ec2:DescribeRouteTables",
    "ec2:DescribeNetworkAcls",
    "ec2:DescribeSecurityGroups",
    "ec2:GetManagedPrefixListEntries",
)
PAGE_SIZE = 1000


@dataclass(frozen=True)
class Interface:
    """One network interface of an instance: where it sits, its internet-routable addresses and its groups."""

    id: str
    subnet_id: str
    vpc_id: str
    public_ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    group_ids: tuple[str, ...]


@dataclass
class Network:
    """A target's route tables, network ACLs, security groups and prefix-list entries, as DescribeX returns them."""

    route_tables: list[dict[str, Any]] = field(default_factory=list)
    network_acls: list[dict[str, Any]] = field(default_factory=list)
    security_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefix_lists: dict[str, list[str]] = field(default_factory=dict)


def interfaces_from_api(raw: dict[str, Any]) -> tuple[Interface, ...]:
    """The network interfaces of one DescribeInstances item (public IPv4 or Elastic IP, IPv6, groups)."""
    out = []
    for eni in raw.get("NetworkInterfaces") or []:
        public = {eni.get("Association", {}).get("PublicIp")}
        public |= {p.get("Association", {}).get("PublicIp") for p in eni.get("PrivateIpAddresses") or []}
        out.append(
            Interface(
                id=eni.get("NetworkInterfaceId", ""),
                subnet_id=eni.get("SubnetId", ""),
                vpc_id=eni.get("VpcId", ""),
                public_ipv4=tuple(sorted(p for p in public if p)),
                ipv6=tuple(sorted(a["Ipv6Address"] for a in eni.get("Ipv6Addresses") or [] if a.get("Ipv6Address"))),
                group_ids=tuple(g["GroupId"] for g in eni.get("Groups") or []),
            )
        )
    return tuple(out)


def _pages(client: Any, operation: str, key: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def collect_network(client: Any) -> Network:
    """The region's route tables, network ACLs and security groups, and the entries of the prefix lists the
    security groups reference (one GetManagedPrefixListEntries walk per distinct list)."""
    network = Network(
        route_tables=list(_pages(client, "describe_route_tables", "RouteTables", MaxResults=100)),
        network_acls=list(_pages(client, "describe_network_acls", "NetworkAcls", MaxResults=100)),
    )
    for group in _pages(client, "describe_security_groups", "SecurityGroups", MaxResults=PAGE_SIZE):
        network.security_groups[group["GroupId"]] = group
    referenced = {
        ref["PrefixListId"]
        for group in network.security_groups.values()
        for permission in group.get("IpPermissions") or []
        for ref in permission.get("PrefixListIds") or []
    }
    for prefix_list in sorted(referenced):
        entries = _pages(client, "get_managed_prefix_list_entries", "Entries", PrefixListId=prefix_list)
        network.prefix_lists[prefix_list] = [e["Cidr"] for e in entries]
    return network
