"""SSM compliance over the emulator's extension, with real boto3: the API shapes, paging, isolation, the collector."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fleetwarden.aws.session import AccountAccess, SessionFactory
from fleetwarden.collect import compliance
from fleetwarden.collect.compliance import ComplianceItem, item_finding, managed_instances, scan
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import Severity, finding_id

BASE = "123456789012"
OTHER = "111111111111"
REGION = "us-east-1"
INSPEC = "Custom:InSpec"
T1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T2 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def launch(factory: SessionFactory, count: int, region: str = REGION, account_id: str | None = None) -> list[str]:
    ec2 = factory.client("ec2", region=region, account_id=account_id)
    reply = ec2.run_instances(ImageId="ami-12345678", MinCount=count, MaxCount=count, InstanceType="t3.micro")
    return sorted(i["InstanceId"] for i in reply["Instances"])


def entry(n: int, status: str = "NON_COMPLIANT", severity: str = "HIGH", prefix: str = "ctl") -> dict[str, Any]:
    return {
        "Id": f"{prefix}-{n:03d}",
        "Title": f"Control {prefix} {n}",
        "Severity": severity,
        "Status": status,
        "Details": {"DocumentName": "AWS-RunInspecChecks", "n": str(n)},
    }


def put(
    ssm: Any,
    instance_id: str,
    items: Sequence[dict[str, Any]],
    *,
    when: datetime = T1,
    ctype: str = INSPEC,
    execution_id: str = "exec-1",
    **extra: Any,
) -> None:
    ssm.put_compliance_items(
        ResourceId=instance_id,
        ResourceType="ManagedInstance",
        ComplianceType=ctype,
        ExecutionSummary={"ExecutionTime": when, "ExecutionId": execution_id, "ExecutionType": "Command"},
        Items=list(items),
        **extra,
    )


def pages(call: Any, key: str, **kwargs: Any) -> list[list[dict[str, Any]]]:
    """Every page of a list call, followed by hand through NextToken."""
    found: list[list[dict[str, Any]]] = []
    token: str | None = None
    while True:
        reply = call(**kwargs, **({"NextToken": token} if token else {}))
        found.append(reply[key])
        token = reply.get("NextToken")
        if not token:
            return found


def item_ids(ssm: Any, instance_id: str, **kwargs: Any) -> list[str]:
    listed = pages(ssm.list_compliance_items, "ComplianceItems", ResourceIds=[instance_id], MaxResults=50, **kwargs)
    return [i["Id"] for page in listed for i in page]


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# -- the emulated API -------------------------------------------------------------------------------------
def test_put_then_list_items_across_several_pages(factory: SessionFactory) -> None:
    instance = launch(factory, 1)[0]
    ssm = factory.client("ssm", region=REGION)
    put(ssm, instance, [entry(n, "COMPLIANT" if n % 3 == 0 else "NON_COMPLIANT") for n in range(23)])

    listed = pages(ssm.list_compliance_items, "ComplianceItems", ResourceIds=[instance], MaxResults=5)

    assert [len(p) for p in listed] == [5, 5, 5, 5, 3]
    items = [i for page in listed for i in page]
    assert [i["Id"] for i in items] == [f"ctl-{n:03d}" for n in range(23)]
    first = items[0]
    assert first["ComplianceType"] == INSPEC
    assert first["ResourceType"] == "ManagedInstance"
    assert first["ResourceId"] == instance
    assert first["Title"] == "Control ctl 0"
    assert (first["Status"], first["Severity"]) == ("COMPLIANT", "HIGH")
    assert first["Details"] == {"DocumentName": "AWS-RunInspecChecks", "n": "0"}
    assert first["ExecutionSummary"]["ExecutionTime"] == T1
    assert first["ExecutionSummary"]["ExecutionId"] == "exec-1"
    assert first["ExecutionSummary"]["ExecutionType"] == "Command"
    # boto3's paginator follows the same tokens.
    paginator = ssm.get_paginator("list_compliance_items")
    via_paginator = paginator.paginate(ResourceIds=[instance], PaginationConfig={"PageSize": 4})
    assert [i["Id"] for p in via_paginator for i in p["ComplianceItems"]] == [i["Id"] for i in items]
    # Filters: status, and a type that has no items.
    non_compliant = item_ids(ssm, instance, Filters=[{"Key": "Status", "Values": ["NON_COMPLIANT"], "Type": "EQUAL"}])
    assert non_compliant == [f"ctl-{n:03d}" for n in range(23) if n % 3]
    assert item_ids(ssm, instance, Filters=[{"Key": "ComplianceType", "Values": ["Custom:Other"]}]) == []


def test_default_page_is_small_and_tokens_are_bound_to_their_query(factory: SessionFactory) -> None:
    instance = launch(factory, 1)[0]
    ssm = factory.client("ssm", region=REGION)
    put(ssm, instance, [entry(n) for n in range(12)])

    first = ssm.list_compliance_items(ResourceIds=[instance])
    assert len(first["ComplianceItems"]) == 10 and first["NextToken"]

    with pytest.raises(ClientError) as garbage:
        ssm.list_compliance_items(ResourceIds=[instance], NextToken="not-a-token")
    assert error_code(garbage) == "InvalidNextToken"
    with pytest.raises(ClientError) as other_query:
        ssm.list_compliance_items(
            ResourceIds=[instance],
            NextToken=first["NextToken"],
            Filters=[{"Key": "Status", "Values": ["COMPLIANT"], "Type": "EQUAL"}],
        )
    assert error_code(other_query) == "InvalidNextToken"
    with pytest.raises(ClientError) as too_many:
        ssm.list_compliance_items(ResourceIds=[instance], MaxResults=51)
    assert error_code(too_many) == "ValidationException"


def test_one_resource_id_per_list_call(factory: SessionFactory) -> None:
    a, b = launch(factory, 2)
    ssm = factory.client("ssm", region=REGION)
    put(ssm, a, [entry(1)])
    put(ssm, b, [entry(2)])

    with pytest.raises(ClientError) as exc:
        ssm.list_compliance_items(ResourceIds=[a, b])

    assert error_code(exc) == "ValidationException"
    assert "one resource ID" in str(exc.value)
    assert item_ids(ssm, a) == ["ctl-001"]
    assert item_ids(ssm, b) == ["ctl-002"]


def test_complete_upload_replaces_partial_merges_and_same_hash_is_ignored(factory: SessionFactory) -> None:
    instance = launch(factory, 1)[0]
    ssm = factory.client("ssm", region=REGION)
    put(ssm, instance, [entry(1), entry(2), entry(3)], ItemContentHash="h1")
    put(ssm, instance, [entry(9, prefix="other")], ctype="Custom:Other")

    put(ssm, instance, [entry(2, "COMPLIANT"), entry(4)], when=T2, execution_id="exec-2", UploadType="COMPLETE")
    items = pages(ssm.list_compliance_items, "ComplianceItems", ResourceIds=[instance], MaxResults=50)[0]
    inspec = {i["Id"]: i for i in items if i["ComplianceType"] == INSPEC}
    assert sorted(inspec) == ["ctl-002", "ctl-004"]
    assert inspec["ctl-002"]["Status"] == "COMPLIANT"
    assert {i["ExecutionSummary"]["ExecutionId"] for i in inspec.values()} == {"exec-2"}
    # Another compliance type on the same instance is untouched by a COMPLETE upload.
    assert [i["Id"] for i in items if i["ComplianceType"] == "Custom:Other"] == ["other-009"]

    put(ssm, instance, [entry(5)], when=T2 + timedelta(hours=1), execution_id="exec-3", UploadType="PARTIAL")
    assert item_ids(ssm, instance, Filters=[{"Key": "ComplianceType", "Values": [INSPEC], "Type": "EQUAL"}]) == [
        "ctl-002",
        "ctl-004",
        "ctl-005",
    ]

    put(ssm, instance, [entry(7)], ItemContentHash="h2")
    put(ssm, instance, [entry(8)], ItemContentHash="h2")  # same hash as stored: ignored
    assert item_ids(ssm, instance, Filters=[{"Key": "ComplianceType", "Values": [INSPEC]}]) == ["ctl-007"]

    put(ssm, instance, [])  # a COMPLETE upload with no items clears the type but keeps the execution
    assert item_ids(ssm, instance, Filters=[{"Key": "ComplianceType", "Values": [INSPEC]}]) == []
    summaries = ssm.list_resource_compliance_summaries(Filters=[{"Key": "ComplianceType", "Values": [INSPEC]}])
    (summary,) = summaries["ResourceComplianceSummaryItems"]
    assert summary["Status"] == "COMPLIANT" and summary["OverallSeverity"] == "UNSPECIFIED"


def test_put_is_validated_like_aws(factory: SessionFactory) -> None:
    instance = launch(factory, 1)[0]
    ssm = factory.client("ssm", region=REGION)

    with pytest.raises(ClientError) as bad_type:
        ssm.put_compliance_items(
            ResourceId=instance,
            ResourceType="EC2Instance",
            ComplianceType=INSPEC,
            ExecutionSummary={"ExecutionTime": T1},
            Items=[entry(1)],
        )
    assert error_code(bad_type) == "InvalidResourceType"
    with pytest.raises(ClientError) as unknown:
        put(ssm, "i-0123456789abcdef0", [entry(1)])
    assert error_code(unknown) == "InvalidResourceId"
    with pytest.raises(ClientError) as severity:
        put(ssm, instance, [dict(entry(1), Severity="SEVERE")])
    assert error_code(severity) == "ValidationException"
    with pytest.raises(ClientError) as ctype:
        put(ssm, instance, [entry(1)], ctype="Custom:In Spec")
    assert error_code(ctype) == "ValidationException"
    # Other SSM operations still reach moto.
    ssm.put_parameter(Name="/fleetwarden/x", Value="y", Type="String")
    assert ssm.get_parameter(Name="/fleetwarden/x")["Parameter"]["Value"] == "y"


def test_summaries_filtered_by_type_status_and_paged(factory: SessionFactory) -> None:
    ids = launch(factory, 9)
    ssm = factory.client("ssm", region=REGION)
    inspec, other = ids[:7], ids[7:]
    for n, instance in enumerate(inspec):
        status = "COMPLIANT" if n % 2 else "NON_COMPLIANT"
        put(
            ssm,
            instance,
            [entry(1, "COMPLIANT", "LOW"), entry(2, status, "CRITICAL"), entry(3, status, "MEDIUM")],
            when=T1 + timedelta(minutes=n),
            execution_id=f"exec-{n}",
        )
    for instance in other:
        put(ssm, instance, [entry(1)], ctype="Custom:Other")

    by_type = [{"Key": "ComplianceType", "Values": [INSPEC], "Type": "EQUAL"}]
    listed = pages(
        ssm.list_resource_compliance_summaries, "ResourceComplianceSummaryItems", Filters=by_type, MaxResults=2
    )

    assert [len(p) for p in listed] == [2, 2, 2, 1]
    summaries = {s["ResourceId"]: s for p in listed for s in p}
    assert sorted(summaries) == inspec
    failing = summaries[inspec[0]]
    assert failing["ComplianceType"] == INSPEC and failing["ResourceType"] == "ManagedInstance"
    assert (failing["Status"], failing["OverallSeverity"]) == ("NON_COMPLIANT", "CRITICAL")
    assert failing["CompliantSummary"]["CompliantCount"] == 1
    assert failing["CompliantSummary"]["SeveritySummary"]["LowCount"] == 1
    assert failing["NonCompliantSummary"]["NonCompliantCount"] == 2
    assert failing["NonCompliantSummary"]["SeveritySummary"] == {
        "CriticalCount": 1,
        "HighCount": 0,
        "MediumCount": 1,
        "LowCount": 0,
        "InformationalCount": 0,
        "UnspecifiedCount": 0,
    }
    assert failing["ExecutionSummary"] == {"ExecutionTime": T1, "ExecutionId": "exec-0", "ExecutionType": "Command"}
    passing = summaries[inspec[1]]
    assert (passing["Status"], passing["OverallSeverity"]) == ("COMPLIANT", "CRITICAL")

    non_compliant = [*by_type, {"Key": "Status", "Values": ["NON_COMPLIANT"], "Type": "EQUAL"}]
    listed = pages(ssm.list_resource_compliance_summaries, "ResourceComplianceSummaryItems", Filters=non_compliant)
    assert sorted(s["ResourceId"] for p in listed for s in p) == inspec[0::2]
    with pytest.raises(ClientError) as bad_key:
        ssm.list_resource_compliance_summaries(Filters=[{"Key": "Colour", "Values": ["x"], "Type": "EQUAL"}])
    assert error_code(bad_key) == "InvalidFilter"


def test_describe_instance_information_pages_over_running_managed_instances(
    aws: EmulatorServer, factory: SessionFactory
) -> None:
    ids = launch(factory, 14)
    ec2 = factory.client("ec2", region=REGION)
    stopped, unmanaged, running = ids[:2], ids[2], ids[3:]
    ec2.stop_instances(InstanceIds=stopped)
    aws.client.request(
        "/_fleetwarden/ssm_compliance/managed",
        {"account_id": BASE, "region": REGION, "instance_ids": [unmanaged], "managed": False},
    )
    hybrid = "mi-0123456789abcdef0"
    aws.client.request(
        "/_fleetwarden/ssm_compliance/managed",
        {"account_id": BASE, "region": REGION, "instance_ids": [hybrid], "managed": True},
    )
    ssm = factory.client("ssm", region=REGION)

    listed = pages(ssm.describe_instance_information, "InstanceInformationList", MaxResults=5)

    assert [len(p) for p in listed] == [5, 5, 2]
    nodes = {n["InstanceId"]: n for p in listed for n in p}
    assert sorted(nodes) == sorted([*running, hybrid])
    node = nodes[running[0]]
    assert (node["PingStatus"], node["PlatformType"], node["ResourceType"]) == ("Online", "Linux", "EC2Instance")
    assert isinstance(node["LastPingDateTime"], datetime)
    assert nodes[hybrid]["ResourceType"] == "ManagedInstance"
    # Filters, legacy and current.
    legacy = ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [running[0], stopped[0]]}]
    )
    assert [n["InstanceId"] for n in legacy["InstanceInformationList"]] == [running[0]]
    only_ec2 = pages(
        ssm.describe_instance_information,
        "InstanceInformationList",
        Filters=[{"Key": "ResourceType", "Values": ["ManagedInstance"]}],
    )
    assert [n["InstanceId"] for p in only_ec2 for n in p] == [hybrid]
    with pytest.raises(ClientError) as too_large:
        ssm.describe_instance_information(MaxResults=51)  # botocore itself refuses fewer than 5
    assert error_code(too_large) == "ValidationException"
    # Starting an instance makes it a managed node again.
    ec2.start_instances(InstanceIds=stopped)
    listed = pages(ssm.describe_instance_information, "InstanceInformationList", MaxResults=50)
    assert set(stopped) <= {n["InstanceId"] for p in listed for n in p}


def test_admin_state_reset_and_errors(aws: EmulatorServer, factory: SessionFactory) -> None:
    instance = launch(factory, 1)[0]
    put(factory.client("ssm", region=REGION), instance, [entry(1), entry(2)])
    factory.client("ssm", region="eu-west-1").describe_instance_information()  # reading keeps no state
    state = json.loads(aws.client.request("/_fleetwarden/ssm_compliance/state", method="GET"))
    assert state["targets"] == [
        {
            "account_id": BASE,
            "region": REGION,
            "resources": 1,
            "records": 1,
            "items": 2,
            "managed": [],
            "unmanaged": [],
        }
    ]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        aws.client.request("/_fleetwarden/ssm_compliance/managed", {"account_id": "1", "region": REGION})

    aws.reset()  # /moto-api/reset empties the extension too

    assert json.loads(aws.client.request("/_fleetwarden/ssm_compliance/state", method="GET")) == {"targets": []}


# -- isolation ----------------------------------------------------------------------------------------------
def test_accounts_are_isolated_through_an_assumed_role(factory: SessionFactory) -> None:
    factory.register_account(AccountAccess(OTHER, f"arn:aws:iam::{OTHER}:role/FleetWarden"))
    mine = launch(factory, 2)
    theirs = launch(factory, 3, account_id=OTHER)
    ssm = factory.client("ssm", region=REGION)
    other_ssm = factory.client("ssm", region=REGION, account_id=OTHER)
    for instance in mine:
        put(ssm, instance, [entry(1)])
    for instance in theirs:
        put(other_ssm, instance, [entry(2), entry(3)])

    assert managed_instances(ssm, [INSPEC]) == mine
    assert managed_instances(other_ssm, [INSPEC]) == theirs
    assert item_ids(ssm, theirs[0]) == []
    assert item_ids(other_ssm, theirs[0]) == ["ctl-002", "ctl-003"]
    with pytest.raises(ClientError) as exc:
        put(ssm, theirs[0], [entry(1)])  # another account's instance is not a resource of this one
    assert error_code(exc) == "InvalidResourceId"
    nodes = pages(other_ssm.describe_instance_information, "InstanceInformationList", MaxResults=50)
    assert sorted(n["InstanceId"] for p in nodes for n in p) == theirs
    result = scan(other_ssm, OTHER, REGION, [INSPEC])
    assert {(i.account_id, i.instance_id) for i in result.items} == {(OTHER, t) for t in theirs}


def test_regions_are_isolated(factory: SessionFactory) -> None:
    east = launch(factory, 1)[0]
    west = launch(factory, 1, region="eu-west-1")[0]
    ssm_east = factory.client("ssm", region=REGION)
    ssm_west = factory.client("ssm", region="eu-west-1")
    put(ssm_east, east, [entry(1)])
    put(ssm_west, west, [entry(2)])

    assert managed_instances(ssm_east, [INSPEC]) == [east]
    assert managed_instances(ssm_west, [INSPEC]) == [west]
    with pytest.raises(ClientError) as exc:
        put(ssm_west, east, [entry(1)])
    assert error_code(exc) == "InvalidResourceId"
    west_scan = scan(ssm_west, BASE, "eu-west-1", [INSPEC])
    assert [(i.region, i.instance_id, i.item_id) for i in west_scan.items] == [("eu-west-1", west, "ctl-002")]
    assert west_scan.unscanned == ()


# -- the collector ------------------------------------------------------------------------------------------
def test_scan_returns_exact_items_and_execution_times(
    aws: EmulatorServer, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compliance, "PAGE_SIZE", 5)  # every list below spans several pages
    ids = launch(factory, 9)
    ec2 = factory.client("ec2", region=REGION)
    ssm = factory.client("ssm", region=REGION)
    big, stopped, patched_only, never = ids[0], ids[1], ids[2], ids[3]
    scanned = [big, stopped, *ids[4:]]
    put(ssm, big, [entry(n, "COMPLIANT" if n % 2 else "NON_COMPLIANT") for n in range(12)], when=T2)
    for n, instance in enumerate([stopped, *ids[4:]]):
        put(ssm, instance, [entry(1, severity="UNSPECIFIED")], when=T1 + timedelta(minutes=n), execution_id=f"e{n}")
    put(ssm, big, [entry(1, prefix="patch")], ctype="Patch", when=T1)
    put(ssm, patched_only, [entry(1, prefix="patch")], ctype="Patch", when=T1)
    ec2.stop_instances(InstanceIds=[stopped])  # still has results: scanned before it stopped
    aws.client.reset_calls()

    result = scan(ssm, BASE, REGION, [INSPEC])

    assert result.instances == tuple(sorted(scanned))
    assert [(i.instance_id, i.item_id) for i in result.items] == sorted(
        [(big, f"ctl-{n:03d}") for n in range(12)] + [(i, "ctl-001") for i in scanned if i != big]
    )
    assert all(i.compliance_type == INSPEC and i.account_id == BASE and i.region == REGION for i in result.items)
    first = result.items[0]
    assert first == ComplianceItem(
        account_id=BASE,
        region=REGION,
        instance_id=big,
        compliance_type=INSPEC,
        item_id="ctl-000",
        title="Control ctl 0",
        status="NON_COMPLIANT",
        severity="HIGH",
        execution_time=T2,
        execution_id="exec-1",
        details={"DocumentName": "AWS-RunInspecChecks", "n": "0"},
    )
    assert first.execution_time.tzinfo is not None and first.execution_time.utcoffset() == timedelta(0)
    assert len(result.non_compliant) == 6 + len(scanned) - 1
    assert result.last_execution(big) == T2
    assert result.last_execution(big, INSPEC) == T2
    assert result.last_execution(big, "Patch") is None  # not a configured type
    assert result.last_execution(stopped) == T1
    assert result.last_execution(ids[4]) == T1 + timedelta(minutes=1)
    assert result.last_execution(never) is None
    assert result.last_executions == {i: result.last_execution(i) for i in scanned}
    # Online managed instances without InSpec results; the stopped one is not listed by SSM at all.
    assert result.unscanned == tuple(sorted([patched_only, never]))
    # One ListComplianceItems pass per instance (each over several pages), never one call for several.
    calls = {c["action"]: c["count"] for c in aws.client.calls()["calls"] if c["service"] == "ssm"}
    assert calls["ListComplianceItems"] == (len(scanned) - 1) + 3  # 12 items of `big` are 3 pages of 5
    assert calls["ListResourceComplianceSummaries"] == 2  # 8 summaries in pages of 5
    assert calls["DescribeInstanceInformation"] == 2  # 8 online nodes in pages of 5


def test_scan_of_several_types_and_of_nothing(factory: SessionFactory) -> None:
    ids = launch(factory, 2)
    ssm = factory.client("ssm", region=REGION)
    put(ssm, ids[0], [entry(1)], when=T1)
    put(ssm, ids[0], [entry(1, prefix="p")], ctype="Patch", when=T2)

    both = scan(ssm, BASE, REGION, [INSPEC, "Patch"])
    assert [(i.compliance_type, i.item_id) for i in both.items] == [(INSPEC, "ctl-001"), ("Patch", "p-001")]
    assert both.executions == {(ids[0], INSPEC): T1, (ids[0], "Patch"): T2}
    assert both.last_execution(ids[0]) == T2
    assert both.unscanned == (ids[1],)

    nothing = scan(ssm, BASE, REGION, ["Custom:Absent"])
    assert (nothing.items, nothing.executions, nothing.unscanned) == ((), {}, tuple(ids))


def test_item_finding_ids_are_stable_and_distinct_per_control(factory: SessionFactory) -> None:
    ids = launch(factory, 2)
    ssm = factory.client("ssm", region=REGION)
    put(ssm, ids[0], [entry(1, severity="UNSPECIFIED"), entry(2, severity="CRITICAL")])
    put(ssm, ids[1], [entry(1)])
    now = datetime(2026, 3, 5, tzinfo=UTC)

    first = [item_finding(i, now) for i in scan(ssm, BASE, REGION, [INSPEC]).items]
    put(ssm, ids[0], [entry(1, "COMPLIANT", "UNSPECIFIED"), entry(2, severity="CRITICAL")], when=T2)
    again = [item_finding(i, now + timedelta(days=1)) for i in scan(ssm, BASE, REGION, [INSPEC]).items]

    assert [f.id for f in first] == [f.id for f in again]
    assert len({f.id for f in first}) == 3
    unspecified, critical, elsewhere = first
    assert unspecified.id == finding_id("compliance", BASE, REGION, ids[0], f"{INSPEC}:ctl-001")
    assert (unspecified.check, unspecified.control, unspecified.resource_id) == (
        "compliance",
        f"{INSPEC}:ctl-001",
        ids[0],
    )
    assert unspecified.severity is Severity.INFORMATIONAL
    assert critical.severity is Severity.CRITICAL
    assert elsewhere.control == unspecified.control and elsewhere.id != unspecified.id
    assert unspecified.title == "Control ctl 1"
    assert unspecified.details == {
        "compliance_type": INSPEC,
        "item_id": "ctl-001",
        "title": "Control ctl 1",
        "execution_time": T1.isoformat(),
        "execution_id": "exec-1",
        "details": {"DocumentName": "AWS-RunInspecChecks", "n": "1"},
    }
    assert again[0].details["execution_time"] == T2.isoformat()
    # An item without an id is identified by its title; other regions and accounts get other ids.
    untitled = ComplianceItem(BASE, REGION, ids[0], INSPEC, "", "No id", "NON_COMPLIANT", "LOW", T1, "e", {})
    assert item_finding(untitled, now).control == f"{INSPEC}:No id"
    moved = ComplianceItem(BASE, "eu-west-1", ids[0], INSPEC, "ctl-001", "t", "NON_COMPLIANT", "LOW", T1, "e", {})
    assert item_finding(moved, now).id != unspecified.id
