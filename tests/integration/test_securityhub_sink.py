"""The Security Hub sink against the emulator: ASFF batches of at most 100 into each finding's own account and
region, resolved findings archived, partial failures reported with ids and messages.

moto's GetFindings ignores filters, so the tests filter its answers client-side."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from botocore.stub import Stubber

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.model import Finding, FindingStatus, RunReport, Severity
from fleetwarden.report.asff import DESCRIPTION_MAX
from fleetwarden.secrets import SecretResolver
from fleetwarden.sinks import Notification, SinkContext, deliver
from fleetwarden.sinks.securityhub import SecurityHubSink
from sample_reports import NOW

DEV, PROD = "111111111111", "222222222222"
REGIONS = ("us-east-1", "eu-west-1")
REQUIRED = (
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
SINKS = {"hub": {"type": "securityhub"}}


@pytest.fixture
def context(factory: SessionFactory) -> SinkContext:
    # As the workflow's target resolution does: each account is reached through its role.
    for account in (DEV, PROD):
        factory.register_account(AccountAccess(account, f"arn:aws:iam::{account}:role/FleetWarden"))
    return SinkContext(factory, SecretResolver(factory))


def _finding(account: str, region: str, n: int, status: FindingStatus = FindingStatus.NEW, **kw: Any) -> Finding:
    finding = Finding.create(
        check=kw.pop("check", "tags"),
        account_id=account,
        region=region,
        resource_id=kw.pop("resource_id", f"i-{n:017x}"),
        control=kw.pop("control", "required-tags"),
        title=kw.pop("title", f"i-{n:017x} is missing required tags"),
        now=NOW - timedelta(days=1),
        severity=kw.pop("severity", Severity.MEDIUM),
        resource_type=kw.pop("resource_type", "AwsEc2Instance"),
        details=kw.pop("details", {"missing": ["project"]}),
    )
    return finding.model_copy(update={"status": status, "last_seen": NOW})


def _report(findings: list[Finding]) -> RunReport:
    return RunReport(run_id="r1", workflow="audit", dry_run=False, started_at=NOW, findings=findings)


def _stored(factory: SessionFactory, account: str, region: str) -> dict[str, dict[str, Any]]:
    client = factory.client("securityhub", region=region, account_id=account)
    found: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("get_findings").paginate():
        for doc in page["Findings"]:
            if doc["AwsAccountId"] == account and doc["Resources"][0]["Region"] == region:  # filters are ignored
                found[doc["Id"]] = doc
    return found


def _record_batches(factory: SessionFactory, targets: list[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
    """Batch sizes per target, seen on each target's own (cached) client."""
    sizes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for account, region in targets:
        client = factory.client("securityhub", region=region, account_id=account)

        def record(params: dict[str, Any], target: tuple[str, str] = (account, region), **_: Any) -> None:
            sizes[target].append(len(params["Findings"]))

        client.meta.events.register("provide-client-params.securityhub.BatchImportFindings", record)
    return sizes


def test_findings_go_to_their_own_account_and_region_in_batches_of_100(
    context: SinkContext, factory: SessionFactory
) -> None:
    counts = {(DEV, "us-east-1"): 250, (DEV, "eu-west-1"): 101, (PROD, "us-east-1"): 30, (PROD, "eu-west-1"): 0}
    findings: list[Finding] = []
    for (account, region), count in counts.items():
        for n in range(count):
            status = FindingStatus.RESOLVED if n % 10 == 0 else FindingStatus.NEW
            findings.append(_finding(account, region, len(findings), status))
    runaway = _finding(
        PROD,
        "global",
        999,
        check="runaway",
        resource_id=PROD,
        resource_type="AwsAccount",
        control="max-running-instances",
        title="account tripped the runaway guard",
        severity=Severity.CRITICAL,
        details={"triggers": [{"kind": "count", "value": 12, "limit": 4}]},
    )
    findings.append(runaway)
    long_title = _finding(PROD, "eu-west-1", 1000, title="t" * 400, details={"missing": ["x" * 50] * 40})
    findings.append(long_title)
    targets = [(a, r) for a in (DEV, PROD) for r in REGIONS]
    sizes = _record_batches(factory, targets)

    deliveries = deliver(["hub"], SINKS, Notification("s", "t"), _report(findings), context)

    assert [(d.outcome, d.error) for d in deliveries] == [("sent", None)]
    assert dict(sizes) == {
        (DEV, "eu-west-1"): [100, 1],
        (DEV, "us-east-1"): [100, 100, 50],
        (PROD, "eu-west-1"): [1],
        (PROD, "us-east-1"): [31],  # 30 + the runaway finding: region "global" goes to the home region
    }
    by_id = {f.id: f for f in findings}
    for account, region in targets:
        stored = _stored(factory, account, region)
        expected = {
            f.id
            for f in findings
            if f.account_id == account and (f.region == region or (f.region == "global" and region == "us-east-1"))
        }
        assert set(stored) == expected, (account, region)
        for finding_id, doc in stored.items():
            assert all(doc.get(key) for key in REQUIRED), doc
            assert doc["AwsAccountId"] == account
            assert doc["ProductArn"] == f"arn:aws:securityhub:{region}:{account}:product/{account}/default"
            assert doc["GeneratorId"] == f"fleetwarden/{by_id[finding_id].check}"
            assert len(doc["Description"]) <= DESCRIPTION_MAX and len(doc["Title"]) <= 256
            resolved = by_id[finding_id].status is FindingStatus.RESOLVED
            assert doc["RecordState"] == ("ARCHIVED" if resolved else "ACTIVE")
            assert doc["Workflow"]["Status"] == ("RESOLVED" if resolved else "NEW")

    account_doc = _stored(factory, PROD, "us-east-1")[runaway.id]
    assert account_doc["Resources"] == [
        {"Type": "AwsAccount", "Id": f"AWS::::Account:{PROD}", "Region": "us-east-1", "Partition": "aws"}
    ]
    assert account_doc["Types"] == ["Effects/Resource Consumption"]
    assert account_doc["Severity"]["Label"] == "CRITICAL"
    instance_doc = _stored(factory, DEV, "eu-west-1")[findings[250].id]
    assert instance_doc["Resources"][0]["Id"] == f"arn:aws:ec2:eu-west-1:{DEV}:instance/{findings[250].resource_id}"
    long_doc = _stored(factory, PROD, "eu-west-1")[long_title.id]
    # Cut cleanly: at a word boundary, with an ellipsis, never past the limit.
    assert DESCRIPTION_MAX - 100 < len(long_doc["Description"]) <= DESCRIPTION_MAX
    assert long_doc["Description"].endswith("x…")
    assert len(long_doc["Title"]) == 256


def test_a_re_import_updates_the_same_finding_and_archives_it_once_resolved(
    context: SinkContext, factory: SessionFactory
) -> None:
    finding = _finding(DEV, "eu-west-1", 1)
    deliver(["hub"], SINKS, Notification("s", "t"), _report([finding]), context)
    resolved = finding.model_copy(update={"status": FindingStatus.RESOLVED})

    deliveries = deliver(["hub"], SINKS, Notification("s", "t"), _report([resolved]), context)

    assert deliveries[0].outcome == "sent"
    stored = _stored(factory, DEV, "eu-west-1")
    assert list(stored) == [finding.id]
    assert stored[finding.id]["RecordState"] == "ARCHIVED"


def test_a_partial_failure_is_a_failed_delivery_naming_the_findings(
    context: SinkContext, factory: SessionFactory
) -> None:
    good, bad = _finding(DEV, "us-east-1", 1), _finding(DEV, "us-east-1", 2)
    other = _finding(PROD, "us-east-1", 3)
    # moto imports every finding that has a resource: this refusal shape comes from a Stubber on the very
    # (cached) client the sink uses for that target.
    client = factory.client("securityhub", region="us-east-1", account_id=DEV)
    with Stubber(client) as stubber:
        stubber.add_response(
            "batch_import_findings",
            {
                "FailedCount": 1,
                "SuccessCount": 1,
                "FailedFindings": [{"Id": bad.id, "ErrorCode": "InvalidInput", "ErrorMessage": "Bad resource"}],
            },
        )
        deliveries = deliver(["hub"], SINKS, Notification("s", "t"), _report([good, bad, other]), context)
        stubber.assert_no_pending_responses()

    assert deliveries[0].outcome == "failed"
    error = deliveries[0].error or ""
    assert f"{DEV}/us-east-1 {bad.id}: InvalidInput: Bad resource" in error
    assert "1 failed, 2 imported" in error
    assert list(_stored(factory, PROD, "us-east-1")) == [other.id]  # the other account still got its finding


def test_a_target_without_security_hub_does_not_stop_the_others(context: SinkContext, factory: SessionFactory) -> None:
    dev, prod = _finding(DEV, "eu-west-1", 1), _finding(PROD, "eu-west-1", 2)
    client = factory.client("securityhub", region="eu-west-1", account_id=DEV)
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "batch_import_findings",
            service_error_code="InvalidAccessException",
            service_message="Account is not subscribed to AWS Security Hub",
            http_status_code=401,
        )
        deliveries = deliver(["hub"], SINKS, Notification("s", "t"), _report([dev, prod]), context)

    error = deliveries[0].error or ""
    assert deliveries[0].outcome == "failed"
    assert f"{DEV}/eu-west-1: 1 findings: BatchImportFindings: InvalidAccessException" in error
    assert list(_stored(factory, PROD, "eu-west-1")) == [prod.id]


def test_no_findings_sends_nothing(context: SinkContext, factory: SessionFactory) -> None:
    deliveries = deliver(["hub"], SINKS, Notification("s", "t"), _report([]), context)
    assert deliveries[0].outcome == "sent"
    assert factory.counter.calls.get("securityhub:BatchImportFindings", 0) == 0
    assert SecurityHubSink.permissions == ("securityhub:BatchImportFindings",)
