"""Which published controls a finding relates to: the one table from a fleetwarden check and control to the
controls of AWS Foundational Security Best Practices (FSBP) and CIS AWS Foundations, for CSV, OCSF and ASFF.

Only controls whose id and wording were checked against AWS's documentation are listed (docs/reports.md says what
was checked and what is left out). A fleetwarden finding is *related* to a control, not the control's own result:
Security Hub's controls judge a security group, fleetwarden's exposure check judges whether the internet reaches
an instance through the whole path (address, route, network ACL and security group).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..model import Finding

FSBP = "AWS-Foundational-Security-Best-Practices"
CIS = "CIS-AWS-Foundations-Benchmark-3.0"
# How ASFF's Compliance.RelatedRequirements and the CSV name a framework (FSBP is version 1.0.0 in Security Hub).
FRAMEWORK_TITLES: dict[str, str] = {
    FSBP: "AWS Foundational Security Best Practices v1.0.0",
    CIS: "CIS AWS Foundations Benchmark v3.0.0",
}
# The exposure check's control: internet-<protocol>/<port or from-to> (internet-tcp/22, internet-tcp/0-65535).
_EXPOSURE_CONTROL = re.compile(r"internet-(?P<protocol>tcp|udp)/(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?")
# FSBP EC2.18 passes unrestricted TCP ports listed in its authorizedTcpPorts parameter, by default 80 and 443.
EC2_18_DEFAULT_AUTHORIZED_TCP_PORTS = frozenset({80, 443})
# FSBP EC2.19's high-risk ports (Security Hub's parameters for the restricted-common-ports rule it runs).
EC2_19_HIGH_RISK_PORTS = frozenset(
    {20, 21, 22, 23, 25, 110, 135, 143, 445, 1433, 1434, 3000, 3306, 3389, 4333}
    | {5000, 5432, 5500, 5601, 8080, 8088, 8888, 9200, 9300}
)
# CIS's "remote server administration ports" (SSH and RDP), the ports of FSBP EC2.21, EC2.53 and EC2.54.
ADMIN_PORTS = frozenset({22, 3389})
ALL_FAMILIES = frozenset({"ipv4", "ipv6"})

# (protocol, first port, last port, the address families the internet reaches it over) -> related?
PortMatch = Callable[[str, int, int, frozenset[str]], bool]


@dataclass(frozen=True)
class ControlMapping:
    """One row of the table: findings of `check` whose control matches relate to `framework`'s `control_id`."""

    check: str
    framework: str
    control_id: str
    title: str
    matches: PortMatch


def _covers(port: int) -> PortMatch:
    return lambda protocol, low, high, families: protocol == "tcp" and low <= port <= high


def _covers_any(ports: frozenset[int], family: str | None = None) -> PortMatch:
    """TCP, a range holding one of `ports`, reached over `family` (either when None)."""

    def matches(protocol: str, low: int, high: int, families: frozenset[str]) -> bool:
        reached = family is None or family in families
        return protocol == "tcp" and reached and any(low <= p <= high for p in ports)

    return matches


def _beyond_authorized_ports(protocol: str, low: int, high: int, families: frozenset[str]) -> bool:
    authorized_in_range = sum(low <= p <= high for p in EC2_18_DEFAULT_AUTHORIZED_TCP_PORTS)
    return protocol != "tcp" or high - low + 1 > authorized_in_range


# The tag check (`tags`): no FSBP or CIS AWS Foundations control matches it, so none is mapped (docs/reports.md).
MAPPINGS: tuple[ControlMapping, ...] = (
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.13",
        "Security groups should not allow ingress from 0.0.0.0/0 or ::/0 to port 22",
        _covers(22),
    ),
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.14",
        "Security groups should not allow ingress from 0.0.0.0/0 or ::/0 to port 3389",
        _covers(3389),
    ),
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.18",
        "Security groups should only allow unrestricted incoming traffic for authorized ports",
        _beyond_authorized_ports,
    ),
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.19",
        "Security groups should not allow unrestricted access to ports with high risk",
        _covers_any(EC2_19_HIGH_RISK_PORTS),
    ),
    # The exposure path passed the subnet's network ACL: an ACL rule let the internet in on that port.
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.21",
        "Network ACLs should not allow ingress from 0.0.0.0/0 to port 22 or port 3389",
        _covers_any(ADMIN_PORTS, "ipv4"),
    ),
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.53",
        "EC2 security groups should not allow ingress from 0.0.0.0/0 to remote server administration ports",
        _covers_any(ADMIN_PORTS, "ipv4"),
    ),
    ControlMapping(
        "exposure",
        FSBP,
        "EC2.54",
        "EC2 security groups should not allow ingress from ::/0 to remote server administration ports",
        _covers_any(ADMIN_PORTS, "ipv6"),
    ),
    ControlMapping(
        "exposure",
        CIS,
        "5.1",
        "Ensure no Network ACLs allow ingress from 0.0.0.0/0 to remote server administration ports",
        _covers_any(ADMIN_PORTS, "ipv4"),
    ),
    ControlMapping(
        "exposure",
        CIS,
        "5.2",
        "Ensure no security groups allow ingress from 0.0.0.0/0 to remote server administration ports",
        _covers_any(ADMIN_PORTS, "ipv4"),
    ),
    ControlMapping(
        "exposure",
        CIS,
        "5.3",
        "Ensure no security groups allow ingress from ::/0 to remote server administration ports",
        _covers_any(ADMIN_PORTS, "ipv6"),
    ),
)


def _exposure_ports(control: str) -> tuple[str, int, int] | None:
    match = _EXPOSURE_CONTROL.fullmatch(control)
    if match is None:
        return None
    low = int(match["low"])
    high = int(match["high"]) if match["high"] is not None else low
    return (match["protocol"], low, high) if low <= high else None


def _families(finding: Finding) -> frozenset[str]:
    """The address families (ipv4, ipv6) of the finding's paths; both when the finding does not say."""
    paths = finding.details.get("paths")
    if not isinstance(paths, list):
        return ALL_FAMILIES
    named = frozenset(str(p.get("family")) for p in paths if isinstance(p, dict)) & ALL_FAMILIES
    return named or ALL_FAMILIES


def related_controls(finding: Finding) -> dict[str, list[str]]:
    """The controls the finding relates to, by framework (`{"AWS-Foundational-Security-Best-Practices": ["EC2.13"]}`,
    the shape of Prowler's `compliance`); empty when none matches."""
    ports = _exposure_ports(finding.control) if finding.check == "exposure" else None
    related: dict[str, list[str]] = {}
    if ports is None:
        return related
    families = _families(finding)
    for mapping in MAPPINGS:
        if mapping.check == finding.check and mapping.matches(*ports, families):
            related.setdefault(mapping.framework, []).append(mapping.control_id)
    return related


def related_requirements(finding: Finding) -> list[str]:
    """The related controls as ASFF's Compliance.RelatedRequirements strings (`<framework title>/<control id>`)."""
    return [
        f"{FRAMEWORK_TITLES[framework]}/{control_id}"
        for framework, control_ids in related_controls(finding).items()
        for control_id in control_ids
    ]
