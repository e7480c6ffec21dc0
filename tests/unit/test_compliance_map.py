"""The table from checks to FSBP controls, and the related controls in CSV, OCSF and ASFF."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import botocore.session
import pytest
from botocore.validate import validate_parameters
from py_ocsf_models.events.findings.detection_finding import DetectionFinding

from fleetwarden.model import Finding, FindingStatus, Severity
from fleetwarden.output import findings_csv
from fleetwarden.report.asff import to_asff
from fleetwarden.report.compliance_map import CIS, FSBP, MAPPINGS, related_controls, related_requirements
from fleetwarden.report.ocsf import ocsf_lines

NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
FSBP_TITLE = "AWS Foundational Security Best Practices v1.0.0"
CIS_TITLE = "CIS AWS Foundations Benchmark v3.0.0"


def _finding(check: str, control: str, status: FindingStatus = FindingStatus.NEW) -> Finding:
    finding = Finding.create(
        check=check,
        account_id="111111111111",
        region="eu-west-1",
        resource_id="i-0abc0000000000001",
        control=control,
        title="i-0abc0000000000001 is reachable from the internet",
        now=NOW,
        severity=Severity.HIGH,
    )
    return finding.model_copy(update={"status": status})


def _exposed(control: str, *families: str) -> Finding:
    """An exposure finding whose paths reach the instance over these address families (none: the details say
    nothing of the path)."""
    finding = _finding("exposure", control)
    if not families:
        return finding
    paths = [{"family": family, "address": "203.0.113.10"} for family in families]
    return finding.model_copy(update={"details": {"paths": paths}})


ADMIN_V4 = ["EC2.21", "EC2.53"]
ADMIN_V6 = ["EC2.54"]


@pytest.mark.parametrize(
    ("control", "families", "fsbp", "cis"),
    [
        ("internet-tcp/22", ("ipv4",), ["EC2.13", "EC2.18", "EC2.19", *ADMIN_V4], ["5.1", "5.2"]),
        ("internet-tcp/22", ("ipv6",), ["EC2.13", "EC2.18", "EC2.19", *ADMIN_V6], ["5.3"]),
        (
            "internet-tcp/3389",
            ("ipv4", "ipv6"),
            ["EC2.14", "EC2.18", "EC2.19", *ADMIN_V4, *ADMIN_V6],
            ["5.1", "5.2", "5.3"],
        ),
        # Without paths the family is unknown: both are claimed (the finding came from somewhere reaching it).
        (
            "internet-tcp/0-65535",
            (),
            ["EC2.13", "EC2.14", "EC2.18", "EC2.19", *ADMIN_V4, *ADMIN_V6],
            ["5.1", "5.2", "5.3"],
        ),
        ("internet-tcp/3000-3400", ("ipv4",), ["EC2.14", "EC2.18", "EC2.19", *ADMIN_V4], ["5.1", "5.2"]),
        ("internet-tcp/5432", ("ipv4",), ["EC2.18", "EC2.19"], []),
        ("internet-tcp/6379", ("ipv4",), ["EC2.18"], []),  # not one of EC2.19's high-risk ports
        ("internet-tcp/8888", ("ipv6",), ["EC2.18", "EC2.19"], []),
        ("internet-udp/22", ("ipv4",), ["EC2.18"], []),  # EC2.13, .14, .19, .21 and CIS 5.x are about TCP
        ("internet-tcp/80", ("ipv4",), [], []),  # EC2.18 authorizes 80 and 443 by default
        ("internet-tcp/443", ("ipv4",), [], []),
        ("internet-tcp/80-443", ("ipv4",), ["EC2.18", "EC2.19"], []),  # 110, 135, 143 lie between
        ("internet-tcp/443-80", ("ipv4",), [], []),  # not a range: nothing is claimed
        ("required-tags", ("ipv4",), [], []),
        ("internet-icmp/all", ("ipv4",), [], []),
    ],
)
def test_exposure_controls(control: str, families: tuple[str, ...], fsbp: list[str], cis: list[str]) -> None:
    finding = _exposed(control, *families)
    expected = {k: v for k, v in ((FSBP, fsbp), (CIS, cis)) if v}
    assert related_controls(finding) == expected
    assert related_requirements(finding) == [f"{FSBP_TITLE}/{c}" for c in fsbp] + [f"{CIS_TITLE}/{c}" for c in cis]


def test_tagging_maps_to_no_control() -> None:
    # No FSBP or CIS AWS Foundations control matches the tag check: the table says so by having no row for it.
    assert {m.check for m in MAPPINGS} == {"exposure"}
    assert related_controls(_finding("tags", "required-tags")) == {}
    assert related_controls(_finding("tags", "internet-tcp/22")) == {}  # the check decides, not the control alone


def test_the_table_is_keyed_by_check_and_control_once() -> None:
    keys = [(m.check, m.framework, m.control_id) for m in MAPPINGS]
    assert len(keys) == len(set(keys))
    assert all(m.title and m.control_id.startswith("EC2.") for m in MAPPINGS if m.framework == FSBP)
    assert all(m.title and m.control_id.startswith("5.") for m in MAPPINGS if m.framework == CIS)


def test_csv_carries_the_related_controls() -> None:
    rows = list(
        csv.DictReader(
            io.StringIO(
                findings_csv([_exposed("internet-tcp/22", "ipv6"), _finding("tags", "required-tags")]).decode(),
                newline="",
            )
        )
    )
    fsbp = ["EC2.13", "EC2.18", "EC2.19", "EC2.54"]
    assert rows[0]["compliance"] == "; ".join([*(f"{FSBP_TITLE}/{c}" for c in fsbp), f"{CIS_TITLE}/5.3"])
    assert rows[1]["compliance"] == ""


def test_ocsf_carries_them_in_unmapped_as_prowler_does() -> None:
    lines = ocsf_lines([_exposed("internet-tcp/3389", "ipv4"), _finding("tags", "required-tags")], NOW)
    exposed, tagged = (DetectionFinding.model_validate_json(line) for line in lines.splitlines())
    assert isinstance(exposed.unmapped, dict) and isinstance(tagged.unmapped, dict)
    expected = {FSBP: ["EC2.14", "EC2.18", "EC2.19", "EC2.21", "EC2.53"], CIS: ["5.1", "5.2"]}
    assert exposed.unmapped["compliance"] == expected
    assert tagged.unmapped["compliance"] == {}
    assert json.loads(lines.splitlines()[0])["unmapped"]["compliance"] == expected


@pytest.mark.parametrize(
    ("status", "compliance_status"), [(FindingStatus.NEW, "FAILED"), (FindingStatus.RESOLVED, "PASSED")]
)
def test_asff_carries_them_in_related_requirements(status: FindingStatus, compliance_status: str) -> None:
    finding = _exposed("internet-tcp/22", "ipv4").model_copy(update={"status": status})
    doc = to_asff(finding, now=NOW)
    fsbp = ["EC2.13", "EC2.18", "EC2.19", "EC2.21", "EC2.53"]
    assert doc["Compliance"] == {
        "Status": compliance_status,
        "RelatedRequirements": [*(f"{FSBP_TITLE}/{c}" for c in fsbp), f"{CIS_TITLE}/5.1", f"{CIS_TITLE}/5.2"],
    }
    model = botocore.session.get_session().get_service_model("securityhub")
    validate_parameters({"Findings": [doc]}, model.operation_model("BatchImportFindings").input_shape)
    assert "Compliance" not in to_asff(_exposed("internet-tcp/443", "ipv4"), now=NOW)
    assert "Compliance" not in to_asff(_finding("tags", "required-tags"), now=NOW)
