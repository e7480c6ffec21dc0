"""The exposure check's pure path logic: port ranges, network ACL order and return path, routes, severities."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleetwarden.checks.exposure import (
    TCP,
    UDP,
    ExposureCheck,
    acl_allows,
    internet_gateway,
    overlap,
    route_table_for,
    sg_openings,
    subtract,
)
from fleetwarden.collect.network import Interface, Network
from fleetwarden.config import ExposureConfig
from fleetwarden.model import Instance, Severity

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def entry(
    number: int,
    action: str,
    *,
    egress: bool = False,
    protocol: str = "6",
    ports: tuple[int, int] | None = None,
    cidr: str = "0.0.0.0/0",
) -> dict[str, Any]:
    out: dict[str, Any] = {"RuleNumber": number, "RuleAction": action, "Egress": egress, "Protocol": protocol}
    out["Ipv6CidrBlock" if ":" in cidr else "CidrBlock"] = cidr
    if ports:
        out["PortRange"] = {"From": ports[0], "To": ports[1]}
    return out


OPEN_EGRESS = entry(100, "allow", egress=True, protocol="-1")


def test_port_range_overlap_and_subtract() -> None:
    assert overlap((3000, 4000), (3389, 3389)) == (3389, 3389)
    assert overlap((0, 21), (22, 22)) is None
    assert subtract([(0, 65535)], (22, 22)) == [(0, 21), (23, 65535)]
    assert subtract([(22, 22)], (0, 1023)) == []


def test_acl_rules_apply_in_number_order_first_match_wins() -> None:
    # Listed out of order: rule 50 (deny 22) comes before rule 100 (allow all), whatever the list order.
    entries = [
        entry(100, "allow", protocol="-1"),
        entry(50, "deny", ports=(22, 22)),
        entry(32767, "deny", protocol="-1"),
    ]
    verdict = acl_allows(entries, egress=False, family="ipv4", protocol=TCP, ports=(20, 25))
    assert verdict.allowed == (((20, 21), (100,)), ((23, 25), (100,)))
    assert verdict.denied == (((22, 22), 50),)
    # The other way round, the allow wins.
    entries = [entry(50, "allow", protocol="-1"), entry(100, "deny", ports=(22, 22))]
    assert acl_allows(entries, egress=False, family="ipv4", protocol=TCP, ports=(22, 22)).allowed == (
        ((22, 22), (50,)),
    )


def test_acl_unmatched_is_denied_and_other_families_protocols_and_narrow_cidrs_do_not_match() -> None:
    entries = [
        entry(10, "allow", protocol="17", ports=(22, 22)),  # udp
        entry(20, "allow", ports=(22, 22), cidr="::/0"),  # IPv6
        entry(30, "allow", ports=(22, 22), cidr="203.0.113.0/24"),  # not the whole internet
        entry(40, "allow", egress=True, protocol="-1"),
    ]
    verdict = acl_allows(entries, egress=False, family="ipv4", protocol=TCP, ports=(22, 22))
    assert verdict.allowed == () and verdict.denied == (((22, 22), None),)
    v6 = acl_allows(entries, egress=False, family="ipv6", protocol=TCP, ports=(22, 22))
    assert v6.allowed == (((22, 22), (20,)),)


def test_adjacent_allowed_ranges_merge_into_all_ports() -> None:
    entries = [entry(100, "allow", ports=(0, 1000)), entry(110, "allow", ports=(1001, 65535))]
    verdict = acl_allows(entries, egress=False, family="ipv4", protocol=TCP, ports=(0, 65535))
    assert verdict.allowed == (((0, 65535), (100, 110)),)


def _network(
    acl_entries: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    prefix_lists: dict[str, list[str]] | None = None,
) -> Network:
    default_routes = [{"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"}]
    return Network(
        route_tables=[
            {"RouteTableId": "rtb-main", "VpcId": "vpc-1", "Associations": [{"Main": True}], "Routes": []},
            {
                "RouteTableId": "rtb-pub",
                "VpcId": "vpc-1",
                "Associations": [{"SubnetId": "subnet-1"}],
                "Routes": default_routes if routes is None else routes,
            },
        ],
        network_acls=[
            {
                "NetworkAclId": "acl-1",
                "VpcId": "vpc-1",
                "Associations": [{"SubnetId": "subnet-1"}],
                "Entries": acl_entries,
            },
        ],
        security_groups={g["GroupId"]: g for g in groups},
        prefix_lists=prefix_lists or {},
    )


def _instance() -> Instance:
    return Instance(
        id="i-1",
        account_id="111111111111",
        region="us-east-1",
        state="running",
        instance_type="t3.micro",
        launch_time=NOW,
        tags={},
    )


def _exposed(network: Network, subnet: str = "subnet-1", ipv6: tuple[str, ...] = ()) -> set[tuple[str, str, str]]:
    interface = Interface("eni-1", subnet, "vpc-1", ("198.51.100.7",) if not ipv6 else (), ipv6, ("sg-1",))
    findings = ExposureCheck(ExposureConfig(enabled=True)).evaluate(_instance(), [interface], network, NOW)
    return {(f.details["protocol"], f.details["ports"], f.severity.value) for f in findings}


def _group(*permissions: dict[str, Any]) -> dict[str, Any]:
    return {"GroupId": "sg-1", "IpPermissions": list(permissions)}


SSH = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
INBOUND_ALL = entry(100, "allow", protocol="-1")


def test_return_path_blocked_means_not_exposed() -> None:
    # Inbound allows 22, but outbound allows only 0-1023: replies to the client's ephemeral port cannot leave.
    blocked = [INBOUND_ALL, entry(100, "allow", egress=True, ports=(0, 1023))]
    assert _exposed(_network(blocked, [_group(SSH)])) == set()
    partly = [INBOUND_ALL, entry(100, "allow", egress=True, ports=(32768, 65535))]
    assert _exposed(_network(partly, [_group(SSH)])) == {("tcp", "22", "HIGH")}


def test_no_default_route_to_an_internet_gateway_means_not_exposed() -> None:
    acl = [INBOUND_ALL, OPEN_EGRESS]
    egress_only = [{"DestinationIpv6CidrBlock": "::/0", "EgressOnlyInternetGatewayId": "eigw-1", "State": "active"}]
    blackhole = [{"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "blackhole"}]
    nat = [{"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1", "State": "active"}]
    for routes in (egress_only, blackhole, nat):
        assert _exposed(_network(acl, [_group(SSH)], routes)) == set()
    # A subnet without an explicit association uses the main table (no internet route here).
    assert _exposed(_network(acl, [_group(SSH)]), subnet="subnet-2") == set()
    assert internet_gateway(route_table_for(_network(acl, []), "subnet-1", "vpc-1"), "ipv4") == "igw-1"
    assert route_table_for(_network(acl, []), "subnet-9", "vpc-1")["RouteTableId"] == "rtb-main"  # type: ignore[index]


def test_security_group_rules_protocols_groups_and_prefix_lists() -> None:
    acl = [INBOUND_ALL, OPEN_EGRESS]
    everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert _exposed(_network(acl, [_group(everything)])) == {
        ("tcp", "0-65535", "CRITICAL"),
        ("udp", "0-65535", "CRITICAL"),
    }
    by_group = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": "sg-2"}]}
    icmp = {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert _exposed(_network(acl, [_group(by_group, icmp)])) == set()
    lists = {"pl-world": ["10.0.0.0/8", "0.0.0.0/0"], "pl-office": ["198.51.100.0/24"]}
    via = {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379, "PrefixListIds": [{"PrefixListId": "pl-world"}]}
    office = {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "PrefixListIds": [{"PrefixListId": "pl-office"}]}
    assert _exposed(_network(acl, [_group(via, office)], prefix_lists=lists)) == {("tcp", "6379", "HIGH")}
    opening = sg_openings(_group(via), "ipv4", lists)[0]
    assert opening.source == "pl-world (0.0.0.0/0)" and opening.protocol == TCP
    udp_dns = {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert sg_openings(_group(udp_dns), "ipv4", {})[0].protocol == UDP


def test_ipv6_needs_an_ipv6_route_acl_rule_and_sg_rule() -> None:
    v6_ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    v4_only_acl = [INBOUND_ALL, OPEN_EGRESS]
    v6_acl = [
        *v4_only_acl,
        entry(101, "allow", protocol="-1", cidr="::/0"),
        entry(101, "allow", egress=True, protocol="-1", cidr="::/0"),
    ]
    v6_route = [{"DestinationIpv6CidrBlock": "::/0", "GatewayId": "igw-1", "State": "active"}]
    address = ("2001:db8::1",)
    assert _exposed(_network(v6_acl, [_group(v6_ssh)], v6_route), ipv6=address) == {("tcp", "22", "HIGH")}
    assert _exposed(_network(v4_only_acl, [_group(v6_ssh)], v6_route), ipv6=address) == set()
    assert _exposed(_network(v6_acl, [_group(SSH)], v6_route), ipv6=address) == set()  # an IPv4-only rule


def test_severity_by_port_is_configurable() -> None:
    check = ExposureCheck(ExposureConfig())
    assert check.severity((0, 65535)) is Severity.CRITICAL
    assert check.severity((3000, 4000)) is Severity.HIGH  # covers 3389
    assert check.severity((27017, 27017)) is Severity.HIGH
    assert check.severity((443, 443)) is Severity.INFORMATIONAL
    assert check.severity((80, 443)) is Severity.MEDIUM  # a range of mostly other ports
    assert check.severity((8443, 8443)) is Severity.MEDIUM
    custom = ExposureCheck(ExposureConfig(high_ports=[8443], other=Severity.LOW))
    assert custom.severity((8443, 8443)) is Severity.HIGH and custom.severity((22, 22)) is Severity.LOW


def test_config_is_strict() -> None:
    from pydantic import ValidationError

    for bad in ({"enable": True}, {"high_ports": [70000]}, {"high_ports": ["22"]}, {"other": "SEVERE"}):
        try:
            ExposureConfig.model_validate(bad)
        except ValidationError:
            continue
        raise AssertionError(f"accepted {bad}")
    assert ExposureConfig.model_validate({"enabled": True, "informational_ports": [8443]}).enabled


def test_the_check_controls_are_what_the_compliance_map_reads() -> None:
    # The compliance map parses the check's control (internet-<protocol>/<ports>) and reads its paths' families:
    # a finding made by the check itself, not a hand-written one, must map (a format change would break this).
    from fleetwarden.report.compliance_map import CIS, FSBP, related_controls

    acl = [INBOUND_ALL, OPEN_EGRESS, entry(101, "allow", protocol="-1", cidr="::/0")]
    acl.append(entry(101, "allow", egress=True, protocol="-1", cidr="::/0"))
    rdp_range = {"IpProtocol": "tcp", "FromPort": 3000, "ToPort": 3400, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    v6_route = [{"DestinationIpv6CidrBlock": "::/0", "GatewayId": "igw-1", "State": "active"}]
    interface = Interface("eni-1", "subnet-1", "vpc-1", (), ("2001:db8::1",), ("sg-1",))
    network = _network(acl, [_group(rdp_range)], v6_route)
    (finding,) = ExposureCheck(ExposureConfig(enabled=True)).evaluate(_instance(), [interface], network, NOW)
    assert finding.control == "internet-tcp/3000-3400"
    assert related_controls(finding) == {FSBP: ["EC2.14", "EC2.18", "EC2.19", "EC2.54"], CIS: ["5.3"]}
    udp = {"IpProtocol": "udp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    (finding,) = ExposureCheck(ExposureConfig(enabled=True)).evaluate(
        _instance(),
        [Interface("eni-1", "subnet-1", "vpc-1", ("198.51.100.7",), (), ("sg-1",))],
        _network(acl, [_group(udp)]),
        NOW,
    )
    assert (finding.control, related_controls(finding)) == ("internet-udp/22", {FSBP: ["EC2.18"]})
