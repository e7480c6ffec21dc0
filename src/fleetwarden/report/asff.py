"""Findings as ASFF (AWS Security Finding Format), the shape Security Hub's BatchImportFindings takes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..model import Finding, FindingStatus
from .compliance_map import related_requirements
from .stats import compact_json, finding_problems

SCHEMA_VERSION = "2018-10-08"
GENERATOR_PREFIX = "fleetwarden"
TITLE_MAX = 256
DESCRIPTION_MAX = 1024
PRODUCT_FIELD_MAX = 2048  # longest value we put in a ProductFields entry (details JSON)
GLOBAL_REGION = "global"
ELLIPSIS = "…"

# Types are "namespace/category/classifier" from the ASFF types taxonomy.
CHECK_TYPES: dict[str, str] = {
    "tags": "Software and Configuration Checks/AWS Security Best Practices",
    "compliance": "Software and Configuration Checks/Industry and Regulatory Standards",
    "inspector": "Software and Configuration Checks/Vulnerabilities/CVE",
    "runaway": "Effects/Resource Consumption",
    "exposure": "Software and Configuration Checks/AWS Security Best Practices/Network Reachability",
}
DEFAULT_TYPE = "Software and Configuration Checks"

WORKFLOW_STATUS: dict[FindingStatus, str] = {
    FindingStatus.NEW: "NEW",
    FindingStatus.ONGOING: "NEW",
    FindingStatus.RESOLVED: "RESOLVED",
    FindingStatus.SUPPRESSED: "SUPPRESSED",
}

ProductArnFor = Callable[[str, str], str]


def partition_for(region: str) -> str:
    """The AWS partition a region belongs to (aws, aws-cn, aws-us-gov, aws-iso...)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    if region.startswith("us-iso-"):
        return "aws-iso"
    return "aws"


def default_product_arn(account_id: str, region: str) -> str:
    """The product ARN Security Hub gives every account for findings it imports itself (custom integrations)."""
    return f"arn:{partition_for(region)}:securityhub:{region}:{account_id}:product/{account_id}/default"


def finding_region(finding: Finding, home_region: str) -> str:
    """The finding's region, with `global` (IAM, account-wide findings) mapped to the config's home region."""
    return home_region if finding.region == GLOBAL_REGION else finding.region


def resource_type(finding: Finding) -> str:
    """The ASFF resource type: AwsEc2Instance, AwsAccount or Other."""
    if finding.resource_type == "AwsEc2Instance" and finding.resource_id.startswith("i-"):
        return "AwsEc2Instance"
    if finding.resource_type == "AwsAccount":
        return "AwsAccount"
    return "Other"


def resource_uid(finding: Finding, region: str) -> str:
    """The resource's ARN where it has one (EC2 instances), Security Hub's account form, or the plain id."""
    kind = resource_type(finding)
    if kind == "AwsEc2Instance":
        return f"arn:{partition_for(region)}:ec2:{region}:{finding.account_id}:instance/{finding.resource_id}"
    if kind == "AwsAccount":
        return f"AWS::::Account:{finding.resource_id}"
    return finding.resource_id


def iso8601(value: datetime) -> str:
    """A timestamp in the form ASFF expects: UTC with milliseconds and a `Z` (2026-03-04T10:30:00.000Z)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def truncate(text: str, limit: int, *, collapse: bool = True) -> str:
    """`text` cut to at most `limit` characters, at a word boundary where one is near, ending in an ellipsis
    (`collapse`: runs of whitespace, line breaks included, become one space first)."""
    if collapse:
        text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS)]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + ELLIPSIS


def finding_types(check: str) -> list[str]:
    return [CHECK_TYPES.get(check, DEFAULT_TYPE)]


def description(finding: Finding) -> str:
    """A readable description: the title, the problems the details name, where, and the details themselves."""
    parts = [finding.title.rstrip(".") + "."]
    problems = finding_problems(finding)
    if problems:
        parts.append(problems[:1].upper() + problems[1:] + ".")
    parts.append(
        f"Check {finding.check}, control {finding.control}, resource {finding.resource_id} "
        f"in account {finding.account_id}, region {finding.region}."
    )
    if finding.details:
        parts.append(f"Details: {compact_json(finding.details)}")
    return truncate(" ".join(parts), DESCRIPTION_MAX)


def to_asff(
    finding: Finding,
    *,
    product_arn_for: ProductArnFor = default_product_arn,
    generator_prefix: str = GENERATOR_PREFIX,
    now: datetime,
    home_region: str = "us-east-1",
) -> dict[str, Any]:
    """One finding as an ASFF document with every field BatchImportFindings requires.

    `Id` is the finding's stable id, so a re-import updates the same Security Hub finding; resolved findings
    are sent with `RecordState: ARCHIVED`. `home_region` replaces the region `global`.
    """
    region = finding_region(finding, home_region)
    partition = partition_for(region)
    doc: dict[str, Any] = {
        "SchemaVersion": SCHEMA_VERSION,
        "Id": finding.id,
        "ProductArn": product_arn_for(finding.account_id, region),
        "ProductName": "fleetwarden",
        "CompanyName": "fleetwarden",
        "Region": region,
        "GeneratorId": f"{generator_prefix}/{finding.check}",
        "AwsAccountId": finding.account_id,
        "Types": finding_types(finding.check),
        "FirstObservedAt": iso8601(finding.first_seen),
        "LastObservedAt": iso8601(finding.last_seen),
        "CreatedAt": iso8601(finding.first_seen),
        "UpdatedAt": iso8601(max(now, finding.first_seen)),
        "Severity": {"Label": finding.severity.value, "Original": finding.severity.value},
        "Title": truncate(finding.title, TITLE_MAX),
        "Description": description(finding),
        "Resources": [
            {
                "Type": resource_type(finding),
                "Id": resource_uid(finding, region),
                "Region": region,
                "Partition": partition,
            }
        ],
        "RecordState": "ARCHIVED" if finding.status is FindingStatus.RESOLVED else "ACTIVE",
        "Workflow": {"Status": WORKFLOW_STATUS[finding.status]},
        "ProductFields": {
            "fleetwarden/Version": __version__,
            "fleetwarden/Check": finding.check,
            "fleetwarden/Control": finding.control,
            "fleetwarden/Status": finding.status.value,
            "fleetwarden/ResourceId": finding.resource_id,
            "fleetwarden/ResourceType": finding.resource_type,
            "fleetwarden/Region": finding.region,
            "fleetwarden/Details": truncate(compact_json(finding.details), PRODUCT_FIELD_MAX, collapse=False),
        },
    }
    requirements = related_requirements(finding)
    if finding.check == "compliance" or requirements:
        # A control-style result: PASSED once fixed lets Security Hub close it in its own views too.
        doc["Compliance"] = {"Status": "PASSED" if finding.status is FindingStatus.RESOLVED else "FAILED"}
        if requirements:
            doc["Compliance"]["RelatedRequirements"] = requirements
    return doc
