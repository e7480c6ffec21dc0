"""ASFF and OCSF conversions: required fields, mappings, limits and the JSON-lines file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters
from py_ocsf_models.events.findings.detection_finding import DetectionFinding
from py_ocsf_models.objects.account import Account
from pydantic import ValidationError

from fleetwarden import __version__
from fleetwarden.model import Finding, FindingStatus, Severity
from fleetwarden.report.asff import (
    DESCRIPTION_MAX,
    SCHEMA_VERSION,
    default_product_arn,
    iso8601,
    partition_for,
    to_asff,
    truncate,
)
from fleetwarden.report.ocsf import OCSF_VERSION, ocsf_lines, to_ocsf, write_ocsf
from sample_reports import make_report

NOW = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
FIRST = NOW - timedelta(days=3, microseconds=250)
ACCOUNT = "111111111111"
ASFF_REQUIRED = (
    "SchemaVersion",
    "Id",
    "ProductArn",
    "GeneratorId",
    "AwsAccountId",
    "Types",
    "CreatedAt",
    "UpdatedAt",
    "Severity",
    "Title",
    "Description",
    "Resources",
)


def _finding(
    check: str = "tags",
    *,
    region: str = "eu-west-1",
    status: FindingStatus = FindingStatus.NEW,
    severity: Severity = Severity.HIGH,
    resource_id: str = "i-0abc0000000000001",
    resource_type: str = "AwsEc2Instance",
    title: str = "i-0abc0000000000001 is missing required tags",
    details: dict[str, Any] | None = None,
) -> Finding:
    finding = Finding.create(
        check=check,
        account_id=ACCOUNT,
        region=region,
        resource_id=resource_id,
        control="required-tags",
        title=title,
        now=FIRST,
        severity=severity,
        resource_type=resource_type,
        details={"missing": ["project"]} if details is None else details,
    )
    return finding.model_copy(update={"status": status, "last_seen": NOW - timedelta(hours=1)})


def _validate_for_batch_import(doc: dict[str, Any]) -> None:
    """Check a document against botocore's model of BatchImportFindings (types, required members)."""
    model = botocore.session.get_session().get_service_model("securityhub")
    validate_parameters({"Findings": [doc]}, model.operation_model("BatchImportFindings").input_shape)


# -- ASFF -----------------------------------------------------------------------------------------------------
def test_asff_has_every_required_field_and_passes_the_api_model() -> None:
    finding = _finding()
    doc = to_asff(finding, now=NOW)

    assert all(doc.get(key) for key in ASFF_REQUIRED)
    _validate_for_batch_import(doc)
    assert doc["SchemaVersion"] == SCHEMA_VERSION == "2018-10-08"
    assert doc["Id"] == finding.id  # stable: a re-import updates the same finding
    assert doc["ProductArn"] == f"arn:aws:securityhub:eu-west-1:{ACCOUNT}:product/{ACCOUNT}/default"
    assert doc["GeneratorId"] == "fleetwarden/tags"
    assert doc["AwsAccountId"] == ACCOUNT
    assert doc["Types"] == ["Software and Configuration Checks/AWS Security Best Practices"]
    assert doc["CreatedAt"] == iso8601(FIRST) == "2026-03-01T10:29:59.999Z"
    assert doc["UpdatedAt"] == "2026-03-04T10:30:00.000Z"
    assert doc["LastObservedAt"] == "2026-03-04T09:30:00.000Z"
    assert doc["Severity"]["Label"] == "HIGH"
    assert doc["Resources"] == [
        {
            "Type": "AwsEc2Instance",
            "Id": f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-0abc0000000000001",
            "Region": "eu-west-1",
            "Partition": "aws",
        }
    ]
    assert doc["RecordState"] == "ACTIVE" and doc["Workflow"] == {"Status": "NEW"}
    assert doc["ProductFields"]["fleetwarden/Check"] == "tags"
    assert json.loads(doc["ProductFields"]["fleetwarden/Details"]) == {"missing": ["project"]}
    assert "Missing: project." in doc["Description"]
    assert all(isinstance(v, str) and v.strip() for v in doc["ProductFields"].values())


@pytest.mark.parametrize(
    ("check", "types"),
    [
        ("tags", "Software and Configuration Checks/AWS Security Best Practices"),
        ("compliance", "Software and Configuration Checks/Industry and Regulatory Standards"),
        ("inspector", "Software and Configuration Checks/Vulnerabilities/CVE"),
        ("runaway", "Effects/Resource Consumption"),
        ("exposure", "Software and Configuration Checks/AWS Security Best Practices/Network Reachability"),
        ("something-new", "Software and Configuration Checks"),
    ],
)
def test_asff_types_and_generator_per_check(check: str, types: str) -> None:
    doc = to_asff(_finding(check), now=NOW, generator_prefix="acme-fw")
    assert doc["Types"] == [types]
    assert doc["GeneratorId"] == f"acme-fw/{check}"


@pytest.mark.parametrize(
    ("status", "record_state", "workflow"),
    [
        (FindingStatus.NEW, "ACTIVE", "NEW"),
        (FindingStatus.ONGOING, "ACTIVE", "NEW"),
        (FindingStatus.SUPPRESSED, "ACTIVE", "SUPPRESSED"),
        (FindingStatus.RESOLVED, "ARCHIVED", "RESOLVED"),
    ],
)
def test_asff_status_mapping(status: FindingStatus, record_state: str, workflow: str) -> None:
    doc = to_asff(_finding(status=status), now=NOW)
    assert (doc["RecordState"], doc["Workflow"]["Status"]) == (record_state, workflow)


def test_asff_compliance_findings_carry_a_compliance_status() -> None:
    assert to_asff(_finding("compliance"), now=NOW)["Compliance"] == {"Status": "FAILED"}
    resolved = to_asff(_finding("compliance", status=FindingStatus.RESOLVED), now=NOW)
    assert resolved["Compliance"] == {"Status": "PASSED"}
    assert "Compliance" not in to_asff(_finding("tags"), now=NOW)


def test_asff_global_findings_use_the_home_region_and_account_resources() -> None:
    finding = _finding(
        "runaway", region="global", resource_id=ACCOUNT, resource_type="AwsAccount", severity=Severity.CRITICAL
    )
    doc = to_asff(finding, now=NOW, home_region="eu-central-1")
    _validate_for_batch_import(doc)
    assert doc["Region"] == "eu-central-1"
    assert doc["ProductArn"] == default_product_arn(ACCOUNT, "eu-central-1")
    assert doc["Resources"] == [
        {"Type": "AwsAccount", "Id": f"AWS::::Account:{ACCOUNT}", "Region": "eu-central-1", "Partition": "aws"}
    ]
    assert doc["Severity"]["Label"] == "CRITICAL"


def test_asff_other_resources_and_partitions() -> None:
    hybrid = to_asff(_finding("compliance", resource_id="mi-0123456789abcdef0"), now=NOW)
    assert hybrid["Resources"][0]["Type"] == "Other" and hybrid["Resources"][0]["Id"] == "mi-0123456789abcdef0"
    china = to_asff(_finding(region="cn-north-1"), now=NOW)
    assert china["ProductArn"].startswith("arn:aws-cn:securityhub:cn-north-1:")
    assert china["Resources"][0]["Id"].startswith("arn:aws-cn:ec2:cn-north-1:")
    assert (partition_for("us-gov-west-1"), partition_for("eu-west-1")) == ("aws-us-gov", "aws")
    custom = to_asff(_finding(), now=NOW, product_arn_for=lambda a, r: f"arn:aws:securityhub:{r}::product/acme/fw")
    assert custom["ProductArn"] == "arn:aws:securityhub:eu-west-1::product/acme/fw"


def test_asff_title_and_description_are_cut_cleanly() -> None:
    words = " ".join(f"word{i}" for i in range(400))
    doc = to_asff(_finding(title=words, details={"missing": [f"key{i}" for i in range(300)]}), now=NOW)
    _validate_for_batch_import(doc)
    assert len(doc["Title"]) <= 256 and doc["Title"].endswith("…")
    assert len(doc["Description"]) <= DESCRIPTION_MAX and doc["Description"].endswith("…")
    assert doc["Title"][:-1].split(" ")[-1] in words.split(" ")  # cut between words, never inside one


def test_truncate() -> None:
    assert truncate("short  text\nhere", 100) == "short text here"
    assert truncate("abcdefghij" * 3, 10) == "abcdefghi…"  # no space near the end: a hard cut
    assert truncate("alpha beta gamma delta", 15) == "alpha beta…"
    assert len(truncate("x " * 2000, DESCRIPTION_MAX)) <= DESCRIPTION_MAX


# -- OCSF -----------------------------------------------------------------------------------------------------
def _parse_back(event: dict[str, Any] | bytes) -> DetectionFinding:
    """What an OCSF consumer does: parse the record with py-ocsf-models' DetectionFinding. The model ignores fields
    it does not know, so the record must also come back whole (nothing misnamed, nothing dropped)."""
    raw = event if isinstance(event, bytes) else json.dumps(event).encode("utf-8")
    parsed = DetectionFinding.model_validate_json(raw)
    assert json.loads(parsed.model_dump_json(exclude_none=True)) == json.loads(raw)
    return parsed


def test_ocsf_detection_finding_required_fields() -> None:
    finding = _finding()
    event = to_ocsf(finding, NOW)
    _parse_back(event)

    assert event["class_uid"] == 2004 and event["class_name"] == "Detection Finding"
    assert event["category_uid"] == 2 and event["category_name"] == "Findings"
    assert (event["activity_id"], event["type_uid"]) == (1, 200401)
    assert event["time"] == int(NOW.timestamp() * 1000)
    assert (event["severity_id"], event["severity"]) == (4, "High")
    assert (event["status_id"], event["status"]) == (1, "New")
    info = event["finding_info"]
    assert info["uid"] == finding.id and info["title"] == finding.title
    assert "Missing: project." in info["desc"]
    assert info["first_seen_time"] == int(FIRST.timestamp() * 1000)
    assert info["last_seen_time"] == int((NOW - timedelta(hours=1)).timestamp() * 1000)
    assert info["types"] == ["Software and Configuration Checks/AWS Security Best Practices"]
    account = {"uid": ACCOUNT, "name": ACCOUNT, "type_id": 10, "type": "AWS Account"}
    assert event["resources"][0] == {
        "uid": f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-0abc0000000000001",
        "name": "i-0abc0000000000001",
        "type": "AwsEc2Instance",
        "region": "eu-west-1",
        "cloud_partition": "aws",
        "owner": {
            "account": account,
            "name": ACCOUNT,
            "uid": f"arn:aws:iam::{ACCOUNT}:root",
            "type_id": 99,
            "type": "AWS Account",
        },
    }
    assert event["cloud"] == {"provider": "AWS", "region": "eu-west-1", "account": account}
    assert event["metadata"] == {
        "version": OCSF_VERSION,
        "product": {"name": "fleetwarden", "vendor_name": "fleetwarden", "version": __version__},
        "profiles": ["cloud"],
        "event_code": "tags",
    }
    assert OCSF_VERSION == "1.5.0"  # the version py-ocsf-models 0.10 models: a library upgrade shows up here
    assert info["analytic"] == {"uid": "tags/required-tags", "name": "tags", "type_id": 1, "type": "Rule"}
    assert event["unmapped"]["details"] == {"missing": ["project"]}


@pytest.mark.parametrize(
    ("status", "activity", "status_id"),
    [
        (FindingStatus.NEW, 1, 1),
        (FindingStatus.ONGOING, 2, 2),
        (FindingStatus.SUPPRESSED, 2, 3),
        (FindingStatus.RESOLVED, 3, 4),
    ],
)
def test_ocsf_activity_and_status(status: FindingStatus, activity: int, status_id: int) -> None:
    event = to_ocsf(_finding(status=status), NOW)
    assert (event["activity_id"], event["type_uid"], event["status_id"]) == (activity, 200400 + activity, status_id)


@pytest.mark.parametrize(
    ("severity", "severity_id"),
    [
        (Severity.INFORMATIONAL, 1),
        (Severity.LOW, 2),
        (Severity.MEDIUM, 3),
        (Severity.HIGH, 4),
        (Severity.CRITICAL, 5),
    ],
)
def test_ocsf_severity(severity: Severity, severity_id: int) -> None:
    assert to_ocsf(_finding(severity=severity), NOW)["severity_id"] == severity_id


@pytest.mark.parametrize(
    ("check", "region", "resource_id", "resource_type"),
    [
        ("tags", "eu-west-1", "i-0abc0000000000001", "AwsEc2Instance"),
        ("compliance", "eu-west-1", "mi-0123456789abcdef0", "AwsSsmManagedInstance"),
        ("inspector", "us-east-1", "i-0abc0000000000002", "AwsEc2Instance"),
        ("exposure", "cn-north-1", "i-0abc0000000000003", "AwsEc2Instance"),
        ("runaway", "global", ACCOUNT, "AwsAccount"),
        ("something-new", "us-gov-west-1", "vol-0abc", "AwsEc2Volume"),
    ],
)
@pytest.mark.parametrize("status", list(FindingStatus))
@pytest.mark.parametrize("severity", list(Severity))
def test_every_ocsf_record_parses_back_as_a_detection_finding(
    check: str, region: str, resource_id: str, resource_type: str, status: FindingStatus, severity: Severity
) -> None:
    finding = _finding(
        check, region=region, resource_id=resource_id, resource_type=resource_type, status=status, severity=severity
    )
    (line,) = ocsf_lines([finding], NOW).splitlines()
    parsed = _parse_back(line)

    expected_severity = {"INFORMATIONAL": 1, "LOW": 2, "MEDIUM": 3, "HIGH": 4, "CRITICAL": 5}[severity.value]
    expected_status = {"new": 1, "ongoing": 2, "suppressed": 3, "resolved": 4}[status.value]
    assert (parsed.severity_id, parsed.severity) == (expected_severity, severity.value.capitalize())
    assert parsed.status_id == expected_status
    assert parsed.time == 1772620200000 == int(NOW.timestamp() * 1000)
    assert parsed.class_uid == 2004 and parsed.type_uid == 200400 + parsed.activity_id
    product = parsed.metadata.product
    assert (product.name, product.vendor_name, product.version) == ("fleetwarden", "fleetwarden", __version__)
    assert parsed.metadata.version == "1.5.0"
    assert parsed.finding_info.uid == finding.id and parsed.finding_info.analytic is not None
    assert parsed.cloud is not None and parsed.cloud.account is not None
    assert (parsed.cloud.account.uid, parsed.cloud.account.name, parsed.cloud.account.type_id) == (ACCOUNT, ACCOUNT, 10)
    assert parsed.cloud.region == region
    assert parsed.resources is not None
    (resource,) = parsed.resources
    assert resource.owner is not None and resource.owner.account.uid == ACCOUNT
    partition = {"cn-north-1": "aws-cn", "us-gov-west-1": "aws-us-gov"}.get(region, "aws")
    assert resource.owner.uid == f"arn:{partition}:iam::{ACCOUNT}:root" and resource.cloud_partition == partition
    assert resource.region == (None if region == "global" else region)


def test_every_record_of_a_sample_report_parses_back() -> None:
    report = make_report()
    lines = ocsf_lines(report.findings, NOW).splitlines()
    assert len(lines) == len(report.findings) > 3
    parsed = [_parse_back(line) for line in lines]
    assert [p.finding_info.uid for p in parsed] == [f.id for f in report.findings]
    assert {p.status_id for p in parsed} == {1, 2, 3, 4}


def test_an_account_without_a_name_is_what_consumers_refused() -> None:
    # The hand-built records before py-ocsf-models: accounts with uid and type only.
    with pytest.raises(ValidationError, match="name"):
        Account.model_validate({"uid": ACCOUNT, "type_id": 10, "type": "AWS Account"})


@pytest.mark.parametrize(
    "value",
    [
        '=HYPERLINK("http://x","y")',
        "\t=1\r\n@x",
        "<script>alert('x')</script>",
        "\x1b[31mred\x1b[0m",
        "line\u2028separator\u2029paragraph\x85next",
        '"quoted" \\ back\\slash',
        "\uff1dSUM(A1) é 漢字 \U0001f600",
        "\x00nul\x0bvt\x0cff\x1cfs",
    ],
)
def test_hostile_strings_stay_one_line_and_come_back_exactly(value: str, tmp_path: Path) -> None:
    finding = _finding(title=f"{value} title", resource_id=value, details={"tags": {value: value}, "missing": [value]})
    path = write_ocsf([finding, _finding()], tmp_path / "f.ocsf.jsonl", now=NOW)

    data = path.read_bytes()
    assert len(data.splitlines()) == len(data.decode("utf-8").splitlines()) == 2  # str.splitlines breaks at U+2028 too
    parsed = _parse_back(data.splitlines()[0])
    assert parsed.unmapped == {
        "check": "tags",
        "control": "required-tags",
        "resource_type": "AwsEc2Instance",
        "details": {"tags": {value: value}, "missing": [value]},
        "compliance": {},
    }
    assert parsed.resources is not None and parsed.resources[0].name == value
    assert parsed.finding_info.title == " ".join(f"{value} title".split())


def test_ocsf_global_account_finding() -> None:
    finding = _finding("runaway", region="global", resource_id=ACCOUNT, resource_type="AwsAccount")
    event = to_ocsf(finding, NOW)
    assert event["resources"][0]["uid"] == f"AWS::::Account:{ACCOUNT}"
    assert event["resources"][0]["type"] == "AwsAccount" and "region" not in event["resources"][0]
    assert event["finding_info"]["types"] == ["Effects/Resource Consumption"]


def test_write_ocsf_writes_json_lines(tmp_path: Path) -> None:
    findings = [_finding(), _finding("compliance", status=FindingStatus.RESOLVED, title="é <tag> \n two lines")]
    path = write_ocsf(findings, tmp_path / "findings.ocsf.jsonl", now=NOW)

    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and path.read_bytes().endswith(b"\n")
    events = [json.loads(line) for line in lines]
    assert [e["finding_info"]["uid"] for e in events] == [f.id for f in findings]
    assert events[1]["type_uid"] == 200403 and events[1]["finding_info"]["title"] == "é <tag> two lines"
    assert ocsf_lines([], NOW) == b""
    assert not list(tmp_path.glob(".*.tmp"))
