"""The comparison of exposure findings with Inspector's reachability: exact range arithmetic per protocol."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetwarden.checks.exposure import ExposureCheck
from fleetwarden.checks.exposure_compare import compare, unavailable
from fleetwarden.collect.inspector_network import Reachability, _parse
from fleetwarden.config import ExposureConfig
from fleetwarden.model import Finding, Severity

NOW = datetime(2026, 12, 1, tzinfo=UTC)
A, REGION = "111111111111", "us-east-1"
CHECK = ExposureCheck(ExposureConfig(enabled=True))


def _ours(instance: str, protocol: str, ports: str) -> Finding:
    return Finding.create(
        check="exposure", account_id=A, region=REGION, resource_id=instance, control=f"internet-{protocol}/{ports}",
        title="t", now=NOW, severity=Severity.HIGH, details={"protocol": protocol, "ports": ports},
    )  # fmt: skip


def _theirs(instance: str, protocol: str, low: int, high: int) -> Reachability:
    return Reachability(instance, protocol, (low, high), ("igw-1", "sg-1"), "title", f"arn:{low}")


def _verdicts(findings: list[Finding]) -> dict[tuple[str, str, str], str]:
    return {
        (f.resource_id, f.details["protocol"], f.details["ports"]): f.details["inspector"]["verdict"] for f in findings
    }


def test_ranges_protocols_and_instances_are_compared_exactly() -> None:
    ours = [_ours("i-1", "tcp", "0-65535"), _ours("i-1", "udp", "53"), _ours("i-2", "tcp", "22")]
    theirs = {
        "i-1": [_theirs("i-1", "tcp", 0, 1000), _theirs("i-1", "tcp", 1001, 65535), _theirs("i-1", "tcp", 22, 22)],
        "i-2": [_theirs("i-2", "udp", 22, 22), _theirs("i-2", "tcp", 3389, 3389)],
        "i-3": [_theirs("i-3", "tcp", 80, 81)],
    }
    out = compare(ours, theirs, CHECK, A, REGION, NOW)
    assert _verdicts(out) == {
        ("i-1", "tcp", "0-65535"): "agrees",  # adjacent ranges join up to all ports
        ("i-1", "udp", "53"): "not reported",  # TCP reports say nothing of UDP
        ("i-2", "tcp", "22"): "not reported",
        ("i-2", "udp", "22"): "inspector only",  # same port, other protocol
        ("i-2", "tcp", "3389"): "inspector only",
        ("i-3", "tcp", "80-81"): "inspector only",  # an instance the check had nothing on
    }
    severities = {f.details["ports"]: f.severity for f in out if f.details.get("source") == "inspector-only"}
    # The same port table as the check's own findings (22 is high whatever the protocol).
    assert severities == {"22": Severity.HIGH, "3389": Severity.HIGH, "80-81": Severity.MEDIUM}


def test_partial_overlap_names_what_inspector_did_not_report() -> None:
    out = compare([_ours("i-1", "tcp", "100-200")], {"i-1": [_theirs("i-1", "tcp", 150, 300)]}, CHECK, A, REGION, NOW)
    mine = next(f for f in out if "source" not in f.details)
    assert mine.details["inspector"]["verdict"] == "partly"
    assert mine.details["inspector"]["not_reported"] == ["100-149"]
    only = next(f for f in out if f.details.get("source") == "inspector-only")
    assert only.details["ports"] == "201-300"


def test_unavailable_keeps_the_findings_and_says_why() -> None:
    kept = unavailable([_ours("i-1", "tcp", "22")], "AccessDenied")
    assert kept[0].details["inspector"] == {"verdict": "unavailable", "error": "AccessDenied"}
    assert kept[0].id == _ours("i-1", "tcp", "22").id


def test_inspector_shapes_are_parsed_and_bad_ones_skipped() -> None:
    raw = {
        "findingArn": "arn:x",
        "title": "Port 22",
        "resources": [{"type": "AWS_EC2_INSTANCE", "id": "i-1"}, {"type": "AWS_ECR_REPOSITORY", "id": "r"}],
        "networkReachabilityDetails": {
            "protocol": "TCP",
            "openPortRange": {"begin": 22, "end": 22},
            "networkPath": {"steps": [{"componentId": "igw-1"}, {"componentId": "sg-1"}]},
        },
    }
    assert list(_parse(raw)) == [Reachability("i-1", "tcp", (22, 22), ("igw-1", "sg-1"), "Port 22", "arn:x")]
    for broken in (
        {"protocol": "ICMP"},
        {"protocol": "TCP"},
        {"protocol": "TCP", "openPortRange": {"begin": 9, "end": 2}},
    ):
        assert list(_parse({**raw, "networkReachabilityDetails": broken})) == []
