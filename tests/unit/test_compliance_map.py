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
from fleetwarden.report.compliance_map import FSBP, MAPPINGS, related_controls, related_requirements
from fleetwarden.report.ocsf import ocsf_lines

NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
FSBP_TITLE = "AWS Foundational Security Best Practices v1.0.0"


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


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ("internet-tcp/22", ["EC2.13", "EC2.18"]),
        ("internet-tcp/3389", ["EC2.14", "EC2.18"]),
        ("internet-tcp/0-65535", ["EC2.13", "EC2.14", "EC2.18"]),
        ("internet-tcp/3000-3400", ["EC2.14", "EC2.18"]),
        ("internet-tcp/5432", ["EC2.18"]),
        ("internet-udp/22", ["EC2.18"]),  # EC2.13 and EC2.14 are about TCP
        ("internet-tcp/80", []),  # EC2.18 authorizes 80 and 443 by default
        ("internet-tcp/443", []),
        ("internet-tcp/80-443", ["EC2.18"]),  # the ports between are not authorized
        ("internet-tcp/443-80", []),  # not a range: nothing is claimed
        ("required-tags", []),
        ("internet-icmp/all", []),
    ],
)
def test_exposure_controls(control: str, expected: list[str]) -> None:
    finding = _finding("exposure", control)
    assert related_controls(finding) == ({FSBP: expected} if expected else {})
    assert related_requirements(finding) == [f"{FSBP_TITLE}/{c}" for c in expected]


def test_tagging_maps_to_no_control() -> None:
    # No FSBP or CIS AWS Foundations control matches the tag check: the table says so by having no row for it.
    assert {m.check for m in MAPPINGS} == {"exposure"}
    assert related_controls(_finding("tags", "required-tags")) == {}
    assert related_controls(_finding("tags", "internet-tcp/22")) == {}  # the check decides, not the control alone


def test_the_table_is_keyed_by_check_and_control_once() -> None:
    keys = [(m.check, m.framework, m.control_id) for m in MAPPINGS]
    assert len(keys) == len(set(keys))
    assert all(m.title and m.control_id.startswith("EC2.") for m in MAPPINGS)


def test_csv_carries_the_related_controls() -> None:
    rows = list(
        csv.DictReader(
            io.StringIO(
                findings_csv([_finding("exposure", "internet-tcp/22"), _finding("tags", "required-tags")]).decode(),
                newline="",
            )
        )
    )
    assert rows[0]["compliance"] == f"{FSBP_TITLE}/EC2.13; {FSBP_TITLE}/EC2.18"
    assert rows[1]["compliance"] == ""


def test_ocsf_carries_them_in_unmapped_as_prowler_does() -> None:
    lines = ocsf_lines([_finding("exposure", "internet-tcp/3389"), _finding("tags", "required-tags")], NOW)
    exposed, tagged = (DetectionFinding.model_validate_json(line) for line in lines.splitlines())
    assert isinstance(exposed.unmapped, dict) and isinstance(tagged.unmapped, dict)
    assert exposed.unmapped["compliance"] == {FSBP: ["EC2.14", "EC2.18"]}
    assert tagged.unmapped["compliance"] == {}
    assert json.loads(lines.splitlines()[0])["unmapped"]["compliance"] == {FSBP: ["EC2.14", "EC2.18"]}


@pytest.mark.parametrize(
    ("status", "compliance_status"), [(FindingStatus.NEW, "FAILED"), (FindingStatus.RESOLVED, "PASSED")]
)
def test_asff_carries_them_in_related_requirements(status: FindingStatus, compliance_status: str) -> None:
    doc = to_asff(_finding("exposure", "internet-tcp/22", status), now=NOW)
    assert doc["Compliance"] == {
        "Status": compliance_status,
        "RelatedRequirements": [f"{FSBP_TITLE}/EC2.13", f"{FSBP_TITLE}/EC2.18"],
    }
    model = botocore.session.get_session().get_service_model("securityhub")
    validate_parameters({"Findings": [doc]}, model.operation_model("BatchImportFindings").input_shape)
    assert "Compliance" not in to_asff(_finding("exposure", "internet-tcp/443"), now=NOW)
    assert "Compliance" not in to_asff(_finding("tags", "required-tags"), now=NOW)
