"""Inspector v2 against the emulator: ListCoverage and ListFindings through boto3 (paging, filters, per-account
isolation), the collectors, and `fleetwarden findings inspector` through the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fleet import cli, ec2, launch, register, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.collect.inspector import coverage, fleet_findings, instance_findings, scanned_since
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import Severity

A, B = "111111111111", "222222222222"
REGIONS = ["us-east-1", "eu-west-1"]


def inspector(factory: SessionFactory, account_id: str, region: str = "us-east-1") -> Any:
    register(factory, account_id)
    return factory.client("inspector2", region=region, account_id=account_id)


def seed_findings(aws: EmulatorServer, region: str, findings: list[dict[str, Any]]) -> list[str]:
    result = aws.client._json("/_fleetwarden/inspector2/findings", {"region": region, "findings": findings})
    return list(result["findingArns"])


def vuln(account_id: str, instance_id: str, cve: str, severity: str = "HIGH", **extra: Any) -> dict[str, Any]:
    return {
        "awsAccountId": account_id,
        "severity": severity,
        "title": f"{cve} - openssl",
        "description": "x" * 800,
        "resources": [{"type": "AWS_EC2_INSTANCE", "id": instance_id}],
        "packageVulnerabilityDetails": {
            "vulnerabilityId": cve,
            "vulnerablePackages": [{"name": "openssl", "version": "1.0.2"}],
        },
        **extra,
    }


def test_coverage_rule_scans_running_instances_after_n_polls(aws: EmulatorServer, factory: SessionFactory) -> None:
    running = launch(factory, A, "us-east-1", {}, 3)
    stopped = launch(factory, A, "us-east-1", {}, state="stopped")
    unmanaged = running[2]
    aws.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 2, "never_scan": [unmanaged]}})
    client = inspector(factory, A)
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = running + stopped

    first, second, third = coverage(client, ids), coverage(client, ids), coverage(client, ids)
    for cov in (first, second):
        assert (cov[running[0]].status_code, cov[running[0]].reason) == ("ACTIVE", "PENDING_INITIAL_SCAN")
        assert not scanned_since(cov[running[0]], since)
    assert scanned_since(third[running[0]], since) and third[running[0]].reason == "SUCCESSFUL"
    assert (third[stopped[0]].status_code, third[stopped[0]].reason) == ("INACTIVE", "EC2_INSTANCE_STOPPED")
    assert (third[unmanaged].status_code, third[unmanaged].reason) == ("INACTIVE", "UNMANAGED_EC2_INSTANCE")
    assert not scanned_since(third[unmanaged], since) and not scanned_since(None, since)

    # A stop and start begins a new running period: scanned again two polls after it is seen running.
    client_ec2 = ec2(factory, A, "us-east-1")
    client_ec2.stop_instances(InstanceIds=[running[0]])
    assert coverage(client, [running[0]])[running[0]].reason == "EC2_INSTANCE_STOPPED"
    client_ec2.start_instances(InstanceIds=[running[0]])
    restarted = datetime.now(UTC)
    polls = [coverage(client, [running[0]])[running[0]] for _ in range(3)]
    assert [scanned_since(c, restarted) for c in polls] == [False, False, True]
    # The stopped instance, started now, is scanned on the same schedule.
    client_ec2.start_instances(InstanceIds=stopped)
    assert [scanned_since(coverage(client, stopped).get(stopped[0]), since) for _ in range(3)] == [False, False, True]


def test_list_coverage_pages_filters_and_isolation(aws: EmulatorServer, factory: SessionFactory) -> None:
    scanned = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    records = [
        {
            "resourceId": f"i-{n:017x}",
            "accountId": A,
            "scanStatus": {"statusCode": "ACTIVE" if n % 3 else "INACTIVE", "reason": "SUCCESSFUL"},
            "lastScannedAt": scanned.isoformat(),
        }
        for n in range(25)
    ]
    aws.client._json("/_fleetwarden/inspector2/coverage", {"region": "us-east-1", "coveredResources": records})
    client = inspector(factory, A)

    pages = list(client.get_paginator("list_coverage").paginate(PaginationConfig={"PageSize": 10}))
    assert [len(p["coveredResources"]) for p in pages] == [10, 10, 5]
    first = pages[0]["coveredResources"][0]
    assert first["resourceType"] == "AWS_EC2_INSTANCE" and first["scanType"] == "PACKAGE"
    assert first["lastScannedAt"] == scanned and first["accountId"] == A

    inactive = client.list_coverage(filterCriteria={"scanStatusCode": [{"comparison": "EQUALS", "value": "INACTIVE"}]})
    assert len(inactive["coveredResources"]) == 9
    wanted = [records[1]["resourceId"], records[4]["resourceId"]]
    by_id = client.list_coverage(filterCriteria={"resourceId": [{"comparison": "EQUALS", "value": i} for i in wanted]})
    assert sorted(r["resourceId"] for r in by_id["coveredResources"]) == wanted
    assert set(coverage(client, [*wanted, "i-0000000000000dead"])) == set(wanted)

    # Another account, another region and the default credentials see none of it.
    assert inspector(factory, B).list_coverage()["coveredResources"] == []
    assert inspector(factory, A, "eu-west-1").list_coverage()["coveredResources"] == []
    assert factory.client("inspector2", region="us-east-1").list_coverage()["coveredResources"] == []

    with pytest.raises(ClientError) as err:
        client.list_coverage(filterCriteria={"lambdaFunctionName": [{"comparison": "EQUALS", "value": "f"}]})
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_list_findings_filters_pages_and_isolation(aws: EmulatorServer, factory: SessionFactory) -> None:
    ids = [f"i-{n:017x}" for n in range(12)]
    seed_findings(aws, "us-east-1", [vuln(A, i, f"CVE-2026-{n:04d}") for n, i in enumerate(ids)])
    seed_findings(aws, "us-east-1", [vuln(A, ids[0], "CVE-2026-9999", "CRITICAL"), vuln(B, "i-b", "CVE-2026-0001")])
    seed_findings(aws, "eu-west-1", [vuln(A, "i-eu", "CVE-2026-0002", "LOW")])
    client = inspector(factory, A)

    pages = list(client.get_paginator("list_findings").paginate(PaginationConfig={"PageSize": 5}))
    assert [len(p["findings"]) for p in pages] == [5, 5, 3]
    assert {f["awsAccountId"] for p in pages for f in p["findings"]} == {A}
    one = client.list_findings(filterCriteria={"resourceId": [{"comparison": "EQUALS", "value": ids[0]}]})["findings"]
    cves = sorted(f["packageVulnerabilityDetails"]["vulnerabilityId"] for f in one)
    assert cves == ["CVE-2026-0000", "CVE-2026-9999"]
    critical = client.list_findings(filterCriteria={"severity": [{"comparison": "EQUALS", "value": "CRITICAL"}]})
    assert [f["resources"][0]["id"] for f in critical["findings"]] == [ids[0]]
    assert isinstance(one[0]["firstObservedAt"], datetime) and one[0]["status"] == "ACTIVE"

    other = inspector(factory, B).list_findings()["findings"]
    assert [f["resources"][0]["id"] for f in other] == ["i-b"]
    eu = inspector(factory, A, "eu-west-1").list_findings()["findings"]
    assert [f["resources"][0]["id"] for f in eu] == ["i-eu"]


def test_collectors_convert_chunk_and_skip_closed(aws: EmulatorServer, factory: SessionFactory) -> None:
    ids = [f"i-{n:017x}" for n in range(13)]
    seed_findings(
        aws,
        "us-east-1",
        [vuln(A, i, f"CVE-2026-{n:04d}", "MEDIUM") for n, i in enumerate(ids)]
        + [
            vuln(A, ids[12], "CVE-2026-7777", "UNTRIAGED"),
            vuln(A, ids[12], "CVE-2026-8888", "CRITICAL", status="CLOSED"),
            {**vuln(A, "repo", "CVE-2026-5555"), "resources": [{"type": "AWS_ECR_REPOSITORY", "id": "repo"}]},
            {
                "awsAccountId": A,
                "severity": "HIGH",
                "type": "NETWORK_REACHABILITY",
                "title": "Port 22 is reachable from an Internet Gateway",
                "resources": [{"id": ids[0]}],
            },
        ],
    )
    client = inspector(factory, A)
    now = datetime(2026, 5, 1, tzinfo=UTC)

    some = instance_findings(client, A, "us-east-1", ids[10:], now)
    assert sorted((f.resource_id, f.control, f.severity) for f in some) == [
        (ids[10], "CVE-2026-0010", Severity.MEDIUM),
        (ids[11], "CVE-2026-0011", Severity.MEDIUM),
        (ids[12], "CVE-2026-0012", Severity.MEDIUM),
        (ids[12], "CVE-2026-7777", Severity.INFORMATIONAL),  # UNTRIAGED; the CLOSED one is left out
    ]
    # More than 10 instances: resourceId filters go 10 at a time.
    assert len(instance_findings(client, A, "us-east-1", ids, now)) == 15

    everything = list(fleet_findings(client, A, "us-east-1", now))
    assert len(everything) == 15  # the ECR finding and the closed one are left out
    network = next(f for f in everything if f.details.get("type") == "NETWORK_REACHABILITY")
    assert network.control == network.title == "Port 22 is reachable from an Internet Gateway"
    assert network.severity == Severity.HIGH
    first = next(f for f in everything if f.control == "CVE-2026-0000")
    assert first.check == "inspector" and first.account_id == A and first.region == "us-east-1"
    assert first.first_seen == now and len(first.details["description"]) == 500
    assert first.details["packages"] == ["openssl 1.0.2"] and first.details["findingArn"].startswith("arn:aws:")


def _config(tmp_path: Path, aws: EmulatorServer) -> Path:
    return write_config(tmp_path, aws.url, (A, B), REGIONS)


def test_findings_inspector_cli(aws: EmulatorServer, factory: SessionFactory, tmp_path: Path) -> None:
    seed_findings(aws, "us-east-1", [vuln(A, "i-a1", "CVE-1", "CRITICAL"), vuln(A, "i-a2", "CVE-2", "LOW")])
    seed_findings(aws, "eu-west-1", [vuln(A, "i-a3", "CVE-3", "HIGH"), vuln(B, "i-b1", "CVE-4", "HIGH")])
    config = _config(tmp_path, aws)
    out = tmp_path / "out"

    result = cli("--config", str(config), "--json", "--output-dir", str(out), "findings", "inspector")
    assert result.exit_code == 0, result.stderr
    report = result.report
    assert report["workflow"] == "findings-inspector"
    keys = ("account_id", "region", "resource_id", "control", "severity", "status")
    got = {tuple(f[k] for k in keys) for f in report["findings"]}
    assert got == {
        (A, "us-east-1", "i-a1", "CVE-1", "CRITICAL", "new"),
        (A, "us-east-1", "i-a2", "CVE-2", "LOW", "new"),
        (A, "eu-west-1", "i-a3", "CVE-3", "HIGH", "new"),
        (B, "eu-west-1", "i-b1", "CVE-4", "HIGH", "new"),
    }
    assert report["findings"][0]["severity"] == "CRITICAL"  # most severe first
    summary = report["summary"]
    assert summary["by_severity"] == {"CRITICAL": 1, "HIGH": 2, "MEDIUM": 0, "LOW": 1, "INFORMATIONAL": 0}
    assert summary["by_account"] == {A: {"CRITICAL": 1, "LOW": 1, "HIGH": 1}, B: {"HIGH": 1}}
    assert summary["targets_ok"] == 4 and summary["targets_error"] == 0
    assert {p.name for p in out.iterdir()} >= {"run.json", "findings.csv", "report.html"}
    assert "CVE-4" in (out / "findings.csv").read_text()

    # The next run remembers them (ongoing); --fail-on HIGH exits 3.
    again = cli("--config", str(config), "findings", "inspector", "--json", "--fail-on", "HIGH")
    assert again.exit_code == 3
    assert {f["status"] for f in again.report["findings"]} == {"ongoing"}


def test_findings_inspector_failing_region_is_partial(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    seed_findings(aws, "us-east-1", [vuln(A, "i-a1", "CVE-1")])
    seed_findings(aws, "eu-west-1", [vuln(B, "i-b1", "CVE-2")])
    aws.client.set_faults([{"service": "inspector2", "region": "eu-west-1", "mode": "unavailable"}])

    result = cli("--config", str(_config(tmp_path, aws)), "findings", "inspector", "--json")
    assert result.exit_code == 4
    report = json.loads(result.stdout)
    errors = {(t["account_id"], t["region"]) for t in report["targets"] if t["status"] == "error"}
    assert errors == {(A, "eu-west-1"), (B, "eu-west-1")}
    assert [f["resource_id"] for f in report["findings"]] == ["i-a1"]
