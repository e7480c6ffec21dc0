"""The exposure check: which instances the internet can reach, and on which ports, from the whole path — a public
address on an interface, a default route to an internet gateway in the subnet's route table, the subnet's network
ACL (inbound, and the return path on ephemeral ports) and the interface's security groups (CIDR rules for the whole
internet, and managed prefix lists holding it). Pure: the inputs come from `collect.network`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from ..collect.ec2 import PERMISSIONS as EC2_PERMISSIONS
from ..collect.network import PERMISSIONS as NETWORK_PERMISSIONS
from ..collect.network import Interface, Network
from ..config import ExposureConfig
from ..model import Finding, Instance, Severity
from . import Check, check_registry

ALL = "-1"
TCP, UDP = "6", "17"
PROTOCOLS = {"tcp": TCP, "6": TCP, "udp": UDP, "17": UDP, "-1": ALL, "all": ALL}
PROTOCOL_NAMES = {TCP: "tcp", UDP: "udp"}
FULL = (0, 65535)
EPHEMERAL = (1024, 65535)
INTERNET = {"ipv4": "0.0.0.0/0", "ipv6": "::/0"}
ACL_CIDR = {"ipv4": "CidrBlock", "ipv6": "Ipv6CidrBlock"}
ROUTE_CIDR = {"ipv4": "DestinationCidrBlock", "ipv6": "DestinationIpv6CidrBlock"}
SG_RANGES = {"ipv4": ("IpRanges", "CidrIp"), "ipv6": ("Ipv6Ranges", "CidrIpv6")}

PortRange = tuple[int, int]


def overlap(a: PortRange, b: PortRange) -> PortRange | None:
    """The ports two inclusive ranges share, or None."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def subtract(ranges: Iterable[PortRange], cut: PortRange) -> list[PortRange]:
    """The ranges without the ports of `cut`."""
    out: list[PortRange] = []
    for lo, hi in ranges:
        if overlap((lo, hi), cut) is None:
            out.append((lo, hi))
            continue
        if lo < cut[0]:
            out.append((lo, cut[0] - 1))
        if hi > cut[1]:
            out.append((cut[1] + 1, hi))
    return out


@dataclass(frozen=True)
class AclVerdict:
    """The ports of a range a network ACL lets through (with the rule numbers that allowed them), and the ports it
    denies (with the rule number, None for the final `*` rule)."""

    allowed: tuple[tuple[PortRange, tuple[int, ...]], ...]
    denied: tuple[tuple[PortRange, int | None], ...]


def acl_allows(
    entries: Sequence[dict[str, Any]], *, egress: bool, family: str, protocol: str, ports: PortRange
) -> AclVerdict:
    """Evaluate a network ACL for traffic from (or, egress, to) the internet at large: rules in number order, the
    first match wins, anything unmatched is denied. Only rules for the whole internet (0.0.0.0/0, ::/0) apply to an
    arbitrary internet address; narrower rules match some addresses only and are not modelled."""
    remaining = [ports]
    allowed: list[tuple[PortRange, int]] = []
    denied: list[tuple[PortRange, int | None]] = []
    for entry in sorted(entries, key=lambda e: int(e.get("RuleNumber", 32767))):
        if bool(entry.get("Egress")) != egress or entry.get(ACL_CIDR[family]) != INTERNET[family]:
            continue
        rule_protocol = PROTOCOLS.get(str(entry.get("Protocol")), str(entry.get("Protocol")))
        if rule_protocol not in (ALL, protocol):
            continue
        span = entry.get("PortRange")
        rule_ports = (int(span["From"]), int(span["To"])) if span and rule_protocol != ALL else FULL
        number = int(entry.get("RuleNumber", 32767))
        for part in remaining:
            shared = overlap(part, rule_ports)
            if shared is not None:
                (allowed if entry.get("RuleAction") == "allow" else denied).append((shared, number))
        remaining = [r for part in remaining for r in subtract([part], rule_ports)]
        if not remaining:
            break
    denied += [(part, None) for part in remaining]
    return AclVerdict(_merge(allowed), tuple(sorted(denied, key=lambda d: d[0])))


def _merge(allowed: list[tuple[PortRange, int]]) -> tuple[tuple[PortRange, tuple[int, ...]], ...]:
    """Adjacent allowed ranges joined (0-1000 by rule 100 and 1001-65535 by rule 110 are all ports), with the rule
    numbers that allowed them."""
    merged: list[tuple[PortRange, tuple[int, ...]]] = []
    for ports, rule in sorted(allowed):
        if merged and merged[-1][0][1] + 1 >= ports[0]:
            (lo, hi), rules = merged[-1]
            merged[-1] = ((lo, max(hi, ports[1])), tuple(sorted({*rules, rule})))
        else:
            merged.append((ports, (rule,)))
    return tuple(merged)


def route_table_for(network: Network, subnet_id: str, vpc_id: str) -> dict[str, Any] | None:
    """The subnet's route table: its explicit association, else its VPC's main route table."""
    main = None
    for table in network.route_tables:
        for assoc in table.get("Associations") or []:
            if assoc.get("SubnetId") == subnet_id:
                return table
            if assoc.get("Main") and table.get("VpcId") == vpc_id:
                main = table
    return main


def internet_gateway(table: dict[str, Any] | None, family: str) -> str | None:
    """The internet gateway of the table's active default route for this family (an egress-only one admits
    nothing inbound), or None."""
    for route in (table or {}).get("Routes") or []:
        gateway = str(route.get("GatewayId") or "")
        default = route.get(ROUTE_CIDR[family]) == INTERNET[family]
        if default and gateway.startswith("igw-") and route.get("State", "active") == "active":
            return gateway
    return None


def network_acl_for(network: Network, subnet_id: str, vpc_id: str) -> dict[str, Any] | None:
    """The subnet's network ACL (every subnet has one association), else its VPC's default ACL."""
    default = None
    for acl in network.network_acls:
        if any(a.get("SubnetId") == subnet_id for a in acl.get("Associations") or []):
            return acl
        if acl.get("IsDefault") and acl.get("VpcId") == vpc_id:
            default = acl
    return default


@dataclass(frozen=True)
class Opening:
    """A security group rule that admits the internet: protocol, ports and why."""

    protocol: str
    ports: PortRange
    group_id: str
    source: str


def sg_openings(group: dict[str, Any], family: str, prefix_lists: dict[str, list[str]]) -> list[Opening]:
    """The inbound rules of a group that admit the whole internet for this family (a CIDR rule for 0.0.0.0/0 or
    ::/0, or a managed prefix list holding it). Rules naming other groups only admit those groups' members."""
    out: list[Opening] = []
    list_key, cidr_key = SG_RANGES[family]
    for permission in group.get("IpPermissions") or []:
        sources = [r.get(cidr_key) for r in permission.get(list_key) or [] if r.get(cidr_key) == INTERNET[family]]
        sources += [
            f"{ref['PrefixListId']} ({INTERNET[family]})"
            for ref in permission.get("PrefixListIds") or []
            if INTERNET[family] in prefix_lists.get(ref["PrefixListId"], [])
        ]
        if not sources:
            continue
        protocol = PROTOCOLS.get(str(permission.get("IpProtocol")).lower())
        if protocol is None:
            continue  # ICMP and other protocols without ports are not port exposure
        if protocol == ALL:
            spans = [(TCP, FULL), (UDP, FULL)]
        else:
            lo, hi = int(permission.get("FromPort", 0)), int(permission.get("ToPort", 65535))
            spans = [(protocol, FULL if lo < 0 else (lo, hi))]
        for proto, ports in spans:
            for source in sources:
                out.append(Opening(proto, ports, group["GroupId"], str(source)))
    return out


@dataclass(frozen=True)
class Exposure:
    """One port range of one instance the internet can reach, and the path that lets it in."""

    protocol: str
    ports: PortRange
    path: dict[str, Any]


def interface_exposures(interface: Interface, network: Network) -> list[Exposure]:
    """Every (protocol, port range) the internet reaches on this interface, over IPv4 and IPv6."""
    out: list[Exposure] = []
    table = route_table_for(network, interface.subnet_id, interface.vpc_id)
    acl = network_acl_for(network, interface.subnet_id, interface.vpc_id)
    entries = (acl or {}).get("Entries") or []
    for family, addresses in (("ipv4", interface.public_ipv4), ("ipv6", interface.ipv6)):
        gateway = internet_gateway(table, family)
        if not addresses or gateway is None or acl is None:
            continue
        for group_id in interface.group_ids:
            group = network.security_groups.get(group_id)
            for opening in sg_openings(group or {}, family, network.prefix_lists):
                back = acl_allows(entries, egress=True, family=family, protocol=opening.protocol, ports=EPHEMERAL)
                if not back.allowed:
                    continue
                inbound = acl_allows(
                    entries, egress=False, family=family, protocol=opening.protocol, ports=opening.ports
                )
                for ports, rules in inbound.allowed:
                    path = {
                        "interface": interface.id,
                        "address": addresses[0],
                        "family": family,
                        "internet_gateway": gateway,
                        "route_table": (table or {}).get("RouteTableId"),
                        "network_acl": acl.get("NetworkAclId"),
                        "acl_rules": list(rules),
                        "acl_return_rules": list(back.allowed[0][1]),
                        "security_group": group_id,
                        "security_group_rule": f"{PROTOCOL_NAMES[opening.protocol]} "
                        f"{_ports(opening.ports)} from {opening.source}",
                    }
                    out.append(Exposure(opening.protocol, ports, path))
    return out


def _ports(ports: PortRange) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


@check_registry.register("exposure")
class ExposureCheck(Check):
    """The internet can reach an instance on a port: public address, internet route, network ACL, security group."""

    name = "exposure"
    config_model = ExposureConfig
    default_severity = Severity.MEDIUM
    permissions: ClassVar[tuple[str, ...]] = (EC2_PERMISSIONS[0], *NETWORK_PERMISSIONS)
    remediation = (
        "Close the security group rule (or narrow its source), deny the port in the subnet's network ACL, or move "
        "the instance to a subnet without a route to the internet gateway."
    )

    def __init__(self, config: ExposureConfig) -> None:
        self.config = config

    def severity(self, ports: PortRange) -> Severity:
        """All ports critical; a range holding a high port (SSH, RDP, databases) high; only web ports
        informational; anything else medium (each configurable)."""
        if ports == FULL:
            return self.config.all_ports
        if any(ports[0] <= p <= ports[1] for p in self.config.high_ports):
            return self.config.high
        informational = self.config.informational_ports
        if ports[1] - ports[0] < len(informational) and all(p in informational for p in range(ports[0], ports[1] + 1)):
            return self.config.informational
        return self.config.other

    def evaluate(
        self, instance: Instance, interfaces: Sequence[Interface], network: Network, now: datetime
    ) -> list[Finding]:
        """One finding per (protocol, port range) the internet reaches on this instance, naming every path."""
        paths: dict[tuple[str, PortRange], list[dict[str, Any]]] = {}
        for interface in interfaces:
            for exposure in interface_exposures(interface, network):
                found = paths.setdefault((exposure.protocol, exposure.ports), [])
                if exposure.path not in found:
                    found.append(exposure.path)
        findings = []
        for (protocol, ports), found in sorted(paths.items()):
            label = f"{PROTOCOL_NAMES[protocol]}/{_ports(ports)}"
            first = found[0]
            findings.append(
                Finding.create(
                    check=self.name,
                    account_id=instance.account_id,
                    region=instance.region,
                    resource_id=instance.id,
                    control=f"internet-{label}",
                    title=(
                        f"{instance.id} is reachable from the internet on {label} ({first['address']} via "
                        f"{first['internet_gateway']}, {first['security_group']})"
                    ),
                    now=now,
                    severity=self.severity(ports),
                    details={
                        "protocol": PROTOCOL_NAMES[protocol],
                        "ports": _ports(ports),
                        "paths": found,
                        "state": instance.state,
                        "remediation": self.remediation,
                    },
                )
            )
        return findings
