"""The exposure check on a fleet built to trap a shallow check (moto in server mode): a public IP with no internet
route, an ACL that denies the port, IPv6-only exposure, a range covering 3389, a rule naming another group, prefix
lists, two interfaces of which only the second is exposed. Asserts exactly the exposed (instance, ports) set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet import ACCOUNTS, cli, ec2, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.config import load_config
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.permissions import policy_documents

A = ACCOUNTS[0]
REGION = "us-east-1"
WORLD = [{"CidrIp": "0.0.0.0/0"}]


def _sg(client: Any, vpc: str, name: str, *permissions: dict[str, Any]) -> str:
    group = str(client.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"])
    if permissions:
        client.authorize_security_group_ingress(GroupId=group, IpPermissions=list(permissions))
    return group


def _tcp(lo: int, hi: int | None = None, **source: Any) -> dict[str, Any]:
    return {"IpProtocol": "tcp", "FromPort": lo, "ToPort": hi if hi is not None else lo, **source}


def _acl(client: Any, vpc: str, subnet: str, *entries: tuple[int, bool, str, str, str, tuple[int, int] | None]) -> str:
    """A custom network ACL for the subnet: (number, egress, protocol, action, cidr, ports)."""
    acl = str(client.create_network_acl(VpcId=vpc)["NetworkAcl"]["NetworkAclId"])
    for number, egress, protocol, action, cidr, ports in entries:
        kwargs: dict[str, Any] = {"Ipv6CidrBlock": cidr} if ":" in cidr else {"CidrBlock": cidr}
        if ports:
            kwargs["PortRange"] = {"From": ports[0], "To": ports[1]}
        client.create_network_acl_entry(
            NetworkAclId=acl, RuleNumber=number, Egress=egress, Protocol=protocol, RuleAction=action, **kwargs
        )
    current = client.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
    association = next(
        a["NetworkAclAssociationId"]
        for n in current["NetworkAcls"]
        for a in n["Associations"]
        if a["SubnetId"] == subnet
    )
    client.replace_network_acl_association(AssociationId=association, NetworkAclId=acl)
    return acl


def _run(client: Any, subnet: str, groups: list[str], *, public: bool = True, ipv6: int = 0) -> str:
    interface: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": subnet, "Groups": groups}
    interface["AssociatePublicIpAddress"] = public
    reply = client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, NetworkInterfaces=[interface])
    if ipv6:
        # moto ignores Ipv6AddressCount in RunInstances (checked); AssignIpv6Addresses on the interface works, and
        # DescribeInstances then shows the address as AWS does.
        eni = reply["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        client.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6AddressCount=ipv6)
    return str(reply["Instances"][0]["InstanceId"])


def build_trap_fleet(factory: SessionFactory) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """The trap fleet, and exactly what must be found: (instance, "proto/ports", severity)."""
    c = ec2(factory, A, REGION)
    vpc_reply = c.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
    vpc = vpc_reply["VpcId"]
    v6_block = vpc_reply["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]
    igw = c.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    c.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public_rt = c.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    c.create_route(RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    c.create_route(RouteTableId=public_rt, DestinationIpv6CidrBlock="::/0", GatewayId=igw)

    def subnet(cidr: str, *, routed: bool, v6: str | None = None) -> str:
        kwargs: dict[str, Any] = {"Ipv6CidrBlock": v6} if v6 else {}
        sid = str(c.create_subnet(VpcId=vpc, CidrBlock=cidr, **kwargs)["Subnet"]["SubnetId"])
        if routed:
            c.associate_route_table(RouteTableId=public_rt, SubnetId=sid)
        return sid

    public = subnet("10.0.1.0/24", routed=True)
    unrouted = subnet("10.0.2.0/24", routed=False)  # the VPC's main route table: local routes only
    denying = subnet("10.0.3.0/24", routed=True)
    dual = subnet("10.0.4.0/24", routed=True, v6=v6_block.replace("00::/56", "01::/64"))
    _acl(
        c,
        vpc,
        denying,
        (100, False, "6", "deny", "0.0.0.0/0", (22, 22)),
        (200, False, "-1", "allow", "0.0.0.0/0", None),
        (100, True, "-1", "allow", "0.0.0.0/0", None),
    )
    _acl(
        c,
        vpc,
        dual,
        (100, False, "-1", "allow", "0.0.0.0/0", None),
        (101, False, "-1", "allow", "::/0", None),
        (100, True, "-1", "allow", "0.0.0.0/0", None),
        (101, True, "-1", "allow", "::/0", None),
    )

    world_pl = c.create_managed_prefix_list(
        PrefixListName="everyone", MaxEntries=5, AddressFamily="IPv4", Entries=[{"Cidr": "0.0.0.0/0"}]
    )["PrefixList"]["PrefixListId"]
    office_pl = c.create_managed_prefix_list(
        PrefixListName="office", MaxEntries=5, AddressFamily="IPv4", Entries=[{"Cidr": "198.51.100.0/24"}]
    )["PrefixList"]["PrefixListId"]

    ssh = _sg(c, vpc, "ssh", _tcp(22, IpRanges=WORLD))
    web = _sg(c, vpc, "web", _tcp(80, IpRanges=WORLD), _tcp(443, IpRanges=WORLD))
    ssh_web = _sg(c, vpc, "ssh-web", _tcp(22, IpRanges=WORLD), _tcp(443, IpRanges=WORLD))
    rdp_range = _sg(c, vpc, "range", _tcp(3000, 4000, IpRanges=WORLD))
    peer = _sg(c, vpc, "peer", _tcp(22, IpRanges=[{"CidrIp": "10.0.0.0/16"}]))
    by_group = _sg(c, vpc, "by-group", _tcp(22, UserIdGroupPairs=[{"GroupId": peer}]))
    prefixed = _sg(
        c,
        vpc,
        "prefixed",
        _tcp(5432, PrefixListIds=[{"PrefixListId": world_pl}]),
        _tcp(6379, PrefixListIds=[{"PrefixListId": office_pl}]),
    )
    v6_only = _sg(c, vpc, "v6", _tcp(22, Ipv6Ranges=[{"CidrIpv6": "::/0"}]), _tcp(8080, IpRanges=WORLD))
    everything = _sg(c, vpc, "everything", {"IpProtocol": "-1", "IpRanges": WORLD})
    second = _sg(c, vpc, "second", _tcp(8443, IpRanges=WORLD))

    ids = {
        "no-route": _run(c, unrouted, [ssh]),
        "acl-denies-22": _run(c, denying, [ssh_web]),
        "ipv6-only": _run(c, dual, [v6_only], public=False, ipv6=1),
        "range-3389": _run(c, public, [rdp_range]),
        "group-ref": _run(c, public, [by_group]),
        "prefix-list": _run(c, public, [prefixed]),
        "two-enis": _run(c, public, [ssh], public=False),
        "plain-22": _run(c, public, [ssh]),
        "web": _run(c, public, [web]),
        "all-ports": _run(c, public, [everything]),
    }
    # The two-interface instance: its primary has no public address (its SSH rule is unreachable); the second
    # interface, with an Elastic IP, opens 8443.
    eni = c.create_network_interface(SubnetId=public, Groups=[second])["NetworkInterface"]["NetworkInterfaceId"]
    c.attach_network_interface(NetworkInterfaceId=eni, InstanceId=ids["two-enis"], DeviceIndex=1)
    allocation = c.allocate_address(Domain="vpc")["AllocationId"]
    c.associate_address(AllocationId=allocation, NetworkInterfaceId=eni)

    expected = {
        (ids["acl-denies-22"], "tcp/443", "INFORMATIONAL"),
        (ids["ipv6-only"], "tcp/22", "HIGH"),
        (ids["range-3389"], "tcp/3000-4000", "HIGH"),
        (ids["prefix-list"], "tcp/5432", "HIGH"),
        (ids["two-enis"], "tcp/8443", "MEDIUM"),
        (ids["plain-22"], "tcp/22", "HIGH"),
        (ids["web"], "tcp/80", "INFORMATIONAL"),
        (ids["web"], "tcp/443", "INFORMATIONAL"),
        (ids["all-ports"], "tcp/0-65535", "CRITICAL"),
        (ids["all-ports"], "udp/0-65535", "CRITICAL"),
    }
    return ids, expected


def _exposed(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (f["resource_id"], f"{f['details']['protocol']}/{f['details']['ports']}", f["severity"])
        for f in report["findings"]
        if f["check"] == "exposure"
    }


def test_audit_finds_exactly_the_reachable_ports(aws: EmulatorServer, factory: SessionFactory, tmp_path: Path) -> None:
    ids, expected = build_trap_fleet(factory)
    config = write_config(tmp_path, aws.url, (A,), [REGION], exposure={"enabled": True})
    aws.client.reset_calls()
    result = cli("--config", str(config), "--json", "audit")
    assert result.exit_code == 0, result.stderr
    report = result.report
    assert _exposed(report) == expected
    assert report["summary"]["exposed_ports"] == len(expected)
    # The finding names the path.
    ssh = next(f for f in report["findings"] if f["resource_id"] == ids["plain-22"] and f["check"] == "exposure")
    (path,) = ssh["details"]["paths"]
    assert path["internet_gateway"].startswith("igw-") and path["route_table"].startswith("rtb-")
    assert path["network_acl"].startswith("acl-") and path["acl_rules"] == [100]
    assert path["security_group"].startswith("sg-") and path["security_group_rule"] == "tcp 22 from 0.0.0.0/0"
    (v6,) = next(f for f in report["findings"] if f["resource_id"] == ids["ipv6-only"])["details"]["paths"]
    assert v6["family"] == "ipv6" and v6["acl_rules"] == [101]
    # Exposure is report-only: nothing is planned or done because of it.
    assert not any(a["resource_id"] in ids.values() and a["outcome"] != "skipped" for a in report["actions"])

    # Every call the run made is allowed by the policy this config derives; none was made per instance.
    docs = policy_documents(load_config(config))
    granted = {a for d in ("hub", "member_role") for s in docs[d]["Statement"] for a in s["Action"]}
    calls = [c for c in aws.client.calls()["calls"] if c["service"] == "ec2"]
    made = {f"ec2:{c['action']}" for c in calls}
    assert {"ec2:DescribeRouteTables", "ec2:DescribeNetworkAcls", "ec2:DescribeSecurityGroups"} <= made
    assert made <= granted, made - granted
    counts = {c["action"]: c["count"] for c in calls}
    # One call per referenced prefix list (the fleet has 10 instances), and one page of each Describe.
    assert counts["GetManagedPrefixListEntries"] == 2
    assert counts["DescribeRouteTables"] == counts["DescribeNetworkAcls"] == counts["DescribeSecurityGroups"] == 1


def test_findings_exposure_command_and_resolution(aws: EmulatorServer, factory: SessionFactory, tmp_path: Path) -> None:
    ids, expected = build_trap_fleet(factory)
    config = write_config(tmp_path, aws.url, (A,), [REGION], exposure={"enabled": True})
    out = tmp_path / "out"
    first = cli("--config", str(config), "--json", "--output-dir", str(out), "findings", "exposure")
    assert first.exit_code == 0, first.stderr
    assert _exposed(first.report) == expected
    assert f"{ids['range-3389']} is reachable from the internet on tcp/3000-4000" in (out / "report.html").read_text()
    assert "tcp/3000-4000" in (out / "findings.csv").read_text()
    assert first.report["summary"]["by_severity"]["CRITICAL"] == 2
    # Close the SSH rule of plain-22: its finding is resolved on the next run, the others stay open.
    c = ec2(factory, A, REGION)
    group = c.describe_instances(InstanceIds=[ids["plain-22"]])["Reservations"][0]["Instances"][0]
    ssh_group = group["NetworkInterfaces"][0]["Groups"][0]["GroupId"]
    c.revoke_security_group_ingress(GroupId=ssh_group, IpPermissions=[_tcp(22, IpRanges=WORLD)])
    second = cli("--config", str(config), "--json", "findings", "exposure", "--fail-on", "critical")
    statuses = {(f["resource_id"], f["details"]["ports"]): f["status"] for f in second.report["findings"]}
    assert statuses[(ids["plain-22"], "22")] == "resolved"
    assert statuses[(ids["web"], "443")] == "ongoing"
    assert second.exit_code == 3  # the all-ports findings are CRITICAL
