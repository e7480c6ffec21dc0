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
# How ASFF's Compliance.RelatedRequirements and the CSV name a framework (FSBP is version 1.0.0 in Security Hub).
FRAMEWORK_TITLES: dict[str, str] = {FSBP: "AWS Foundational Security Best Practices v1.0.0"}
# The exposure check's control: internet-<protocol>/<port or from-to> (internet-tcp/22, internet-tcp/0-65535).
_EXPOSURE_CONTROL = re.compile(r"internet-(?P<protocol>tcp|udp)/(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?")
# FSBP EC2.18 passes unrestricted TCP ports listed in its authorizedTcpPorts parameter, by default 80 and 443.
EC2_18_DEFAULT_AUTHORIZED_TCP_PORTS = frozenset({80, 443})

PortMatch = Callable[[str, int, int], bool]


@dataclass(frozen=True)
class ControlMapping:
    """One row of the table: findings of `check` whose control matches relate to `framework`'s `control_id`."""

    check: str
    framework: str
    control_id: str
    title: str
    matches: PortMatch


def _covers(port: int) -> PortMatch:
    return lambda protocol, low, high: protocol == "tcp" and low <= port <= high


def _beyond_authorized_ports(protocol: str, low: int, high: int) -> bool:
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
)


def _exposure_ports(control: str) -> tuple[str, int, int] | None:
    match = _EXPOSURE_CONTROL.fullmatch(control)
    if match is None:
        return None
    low = int(match["low"])
    high = int(match["high"]) if match["high"] is not None else low
    return (match["protocol"], low, high) if low <= high else None


def related_controls(finding: Finding) -> dict[str, list[str]]:
    """The controls the finding relates to, by framework (`{"AWS-Foundational-Security-Best-Practices": ["EC2.13"]}`,
    the shape of Prowler's `compliance`); empty when none matches."""
    ports = _exposure_ports(finding.control) if finding.check == "exposure" else None
    related: dict[str, list[str]] = {}
    for mapping in MAPPINGS:
        if mapping.check == finding.check and ports is not None and mapping.matches(*ports):
            related.setdefault(mapping.framework, []).append(mapping.control_id)
    return related


def related_requirements(finding: Finding) -> list[str]:
    """The related controls as ASFF's Compliance.RelatedRequirements strings (`<framework title>/<control id>`)."""
    return [
        f"{FRAMEWORK_TITLES[framework]}/{control_id}"
        for framework, control_ids in related_controls(finding).items()
        for control_id in control_ids
    ]
