"""The exposure check beside Amazon Inspector's network reachability: for each instance and protocol, which ports
both report, which only fleetwarden's path check finds, and which only Inspector reports (docs/checks/exposure.md,
"Beside Amazon Inspector").

Every exposure finding gets `details.inspector` (`verdict`: `agrees`, `partly`, `not reported`, or `unavailable`
with the error); a port range that only Inspector reports becomes an exposure finding of its own, marked
`source: inspector-only`, so the report shows both sides. Pure functions: collection is in
collect/inspector_network.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..collect.inspector_network import Reachability
from ..model import Finding
from .exposure import ExposureCheck, PortRange, overlap, subtract

AGREES, PARTLY, NOT_REPORTED, INSPECTOR_ONLY, UNAVAILABLE = (
    "agrees",
    "partly",
    "not reported",
    "inspector only",
    "unavailable",
)


def _range(text: str) -> PortRange:
    low, _, high = str(text).partition("-")
    return (int(low), int(high or low))


def _label(ports: PortRange) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _merged(ranges: Iterable[PortRange]) -> list[PortRange]:
    out: list[PortRange] = []
    for low, high in sorted(ranges):
        if out and out[-1][1] + 1 >= low:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _inspector_view(reaches: Sequence[Reachability]) -> dict[str, Any]:
    return {
        "reported": [_label(p) for p in _merged(r.ports for r in reaches)],
        "paths": sorted({" > ".join(r.path) for r in reaches if r.path}),
        "findings": sorted({r.finding_arn for r in reaches if r.finding_arn}),
    }


def compare(
    findings: Sequence[Finding],
    reaches: dict[str, list[Reachability]],
    check: ExposureCheck,
    account_id: str,
    region: str,
    now: datetime,
) -> list[Finding]:
    """The exposure findings of one target, each with Inspector's view, plus one finding per port range that
    only Inspector reports."""
    out: list[Finding] = []
    ours: dict[tuple[str, str], list[PortRange]] = {}
    for finding in findings:
        protocol, ports = str(finding.details.get("protocol")), _range(str(finding.details.get("ports")))
        ours.setdefault((finding.resource_id, protocol), []).append(ports)
        theirs = [r for r in reaches.get(finding.resource_id, []) if r.protocol == protocol]
        shared = _merged(o for r in theirs if (o := overlap(ports, r.ports)) is not None)
        if shared == [ports]:
            verdict = AGREES
        elif shared:
            verdict = PARTLY
        else:
            verdict = NOT_REPORTED
        view = {"verdict": verdict, **_inspector_view(theirs)}
        if verdict == PARTLY:
            view["not_reported"] = [_label(p) for p in _merged(_left(ports, shared))]
        out.append(finding.model_copy(update={"details": {**finding.details, "inspector": view}}))
    for instance_id, instance_reaches in sorted(reaches.items()):
        for protocol in sorted({r.protocol for r in instance_reaches}):
            theirs = [r for r in instance_reaches if r.protocol == protocol]
            left = _merged(r.ports for r in theirs)
            for ports in ours.get((instance_id, protocol), []):
                left = [p for part in left for p in subtract([part], ports)]
            for ports in left:
                out.append(_inspector_only(instance_id, protocol, ports, theirs, check, account_id, region, now))
    return out


def _left(ports: PortRange, shared: Iterable[PortRange]) -> list[PortRange]:
    left = [ports]
    for part in shared:
        left = [p for piece in left for p in subtract([piece], part)]
    return left


def _inspector_only(
    instance_id: str,
    protocol: str,
    ports: PortRange,
    theirs: Sequence[Reachability],
    check: ExposureCheck,
    account_id: str,
    region: str,
    now: datetime,
) -> Finding:
    label = f"{protocol}/{_label(ports)}"
    return Finding.create(
        check=check.name,
        account_id=account_id,
        region=region,
        resource_id=instance_id,
        control=f"internet-{label}",
        title=(
            f"{instance_id}: Amazon Inspector reports {label} reachable from the internet; fleetwarden's path check "
            "does not find it open now"
        ),
        now=now,
        severity=check.severity(ports),
        details={
            "protocol": protocol,
            "ports": _label(ports),
            "source": "inspector-only",
            "inspector": {"verdict": INSPECTOR_ONLY, **_inspector_view(theirs)},
            "remediation": (
                "Inspector evaluates the network every 24 hours or so: if a rule was closed since, this clears at "
                "its next evaluation. Otherwise compare its path with the instance's security groups and ACL."
            ),
        },
    )


def unavailable(findings: Sequence[Finding], error: str) -> list[Finding]:
    """The exposure findings unchanged but for `details.inspector`: Inspector could not be read (kept, not lost)."""
    view = {"verdict": UNAVAILABLE, "error": error}
    return [f.model_copy(update={"details": {**f.details, "inspector": view}}) for f in findings]
