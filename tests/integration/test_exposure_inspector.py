"""The exposure check beside Amazon Inspector's NETWORK_REACHABILITY findings (audit.exposure.compare_inspector),
on the moto server with Inspector findings seeded in AWS's shape (networkReachabilityDetails): agreement, a port
only fleetwarden finds, ports only Inspector reports (a rule closed since its scan), a partly overlapping range,
and Inspector unreadable (the findings are kept and say so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet import ACCOUNTS, cli, ec2, write_config
from test_exposure import WORLD, _run, _sg, _tcp
from test_inspector import seed_findings

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A = ACCOUNTS[0]
REGION = "us-east-1"


def _public_instance(factory: SessionFactory) -> tuple[str, str, str]:
    """An instance the internet reaches on tcp/22, tcp/443 and tcp/8000-8100: (instance, igw, sg)."""
    c = ec2(factory, A, REGION)
    vpc = c.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    igw = c.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    c.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    table = c.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    c.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    subnet = c.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
    c.associate_route_table(RouteTableId=table, SubnetId=subnet)
    group = _sg(c, vpc, "app", _tcp(22, IpRanges=WORLD), _tcp(443, IpRanges=WORLD), _tcp(8000, 8100, IpRanges=WORLD))
    return _run(c, subnet, [group]), igw, group


def _reach(instance: str, begin: int, end: int, path: list[str], severity: str = "HIGH") -> dict[str, Any]:
    return {
        "awsAccountId": A,
        "type": "NETWORK_REACHABILITY",
        "severity": severity,
        "title": f"Port {begin} is reachable from an Internet Gateway",
        "resources": [{"type": "AWS_EC2_INSTANCE", "id": instance}],
        "networkReachabilityDetails": {
            "protocol": "TCP",
            "openPortRange": {"begin": begin, "end": end},
            "networkPath": {"steps": [{"componentId": c, "componentType": "X"} for c in path]},
        },
    }


def _config(tmp_path: Path, aws: EmulatorServer, compare: bool = True) -> str:
    top = {"audit": {"exposure": {"enabled": True, "compare_inspector": compare}}}
    config = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False)
    import yaml

    data = yaml.safe_load(config.read_text())
    data["audit"]["exposure"] = top["audit"]["exposure"]
    config.write_text(yaml.safe_dump(data))
    return str(config)


def _by_ports(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["details"]["ports"]: f for f in report["findings"] if f["check"] == "exposure"}


def test_both_views_and_where_they_disagree(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    instance, igw, group = _public_instance(factory)
    path = [igw, "acl-x", group, "eni-x"]
    seed_findings(
        aws,
        REGION,
        [
            _reach(instance, 22, 22, path),  # both
            _reach(instance, 3389, 3389, path),  # Inspector only: closed since its last evaluation
            _reach(instance, 8050, 8200, path),  # overlaps 8000-8100: partly, and 8101-8200 Inspector only
            {**_reach(instance, 25, 25, path), "status": "CLOSED"},  # not ACTIVE: not compared
        ],
    )
    result = cli("--config", _config(tmp_path, aws), "--json", "findings", "exposure")
    assert result.exit_code == 0, result.stderr
    found = _by_ports(result.report)
    assert set(found) == {"22", "443", "8000-8100", "3389", "8101-8200"}
    assert found["22"]["details"]["inspector"]["verdict"] == "agrees"
    assert found["22"]["details"]["inspector"]["paths"] == [" > ".join(path)]
    not_reported = found["443"]["details"]["inspector"]
    # `reported`: every range Inspector reports on this instance and protocol, for the reader to compare.
    assert not_reported["verdict"] == "not reported" and not_reported["reported"] == ["22", "3389", "8050-8200"]
    partly = found["8000-8100"]["details"]["inspector"]
    assert partly["verdict"] == "partly" and partly["not_reported"] == ["8000-8049"]
    assert partly["reported"] == ["22", "3389", "8050-8200"]
    for ports, severity in (("3389", "HIGH"), ("8101-8200", "MEDIUM")):
        only = found[ports]
        assert only["details"]["source"] == "inspector-only"
        assert only["details"]["inspector"]["verdict"] == "inspector only"
        assert only["severity"] == severity and only["control"] == f"internet-tcp/{ports}"
        assert "Amazon Inspector reports" in only["title"]
    assert "source" not in found["22"]["details"]

    # The audit shows the same comparison (its exposure part).
    audit = cli("--config", _config(tmp_path, aws), "--json", "audit")
    assert audit.exit_code == 0, audit.stderr
    assert {p: f["details"]["inspector"]["verdict"] for p, f in _by_ports(audit.report).items()} == {
        "22": "agrees",
        "443": "not reported",
        "8000-8100": "partly",
        "3389": "inspector only",
        "8101-8200": "inspector only",
    }


def test_inspector_unreadable_keeps_the_findings(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    _public_instance(factory)
    aws.client.set_faults([{"service": "inspector2", "mode": "unavailable"}])
    try:
        result = cli("--config", _config(tmp_path, aws), "--json", "findings", "exposure")
    finally:
        aws.client.set_faults([])
    assert result.exit_code == 0, result.stderr
    found = _by_ports(result.report)
    assert set(found) == {"22", "443", "8000-8100"}
    for finding in found.values():
        view = finding["details"]["inspector"]
        assert view["verdict"] == "unavailable" and "Amazon Inspector could not be read" in view["error"]
    assert {t["status"] for t in result.report["targets"]} == {"ok"}


def test_off_by_default_no_inspector_call(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    _public_instance(factory)
    aws.client.reset_calls()
    result = cli("--config", _config(tmp_path, aws, compare=False), "--json", "findings", "exposure")
    assert result.exit_code == 0, result.stderr
    assert all("inspector" not in f["details"] for f in result.report["findings"])
    assert not [c for c in aws.client.calls()["calls"] if c["service"] == "inspector2"]
