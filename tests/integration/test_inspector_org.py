"""Amazon Inspector org-wide: findings read from the delegated administrator (members by ListMembers, accounts 10
per filter, pages of 100), what it does not see read member by member, and findings reports exported to S3
(CreateFindingsReport, then GetFindingsReportStatus until done).

moto has Inspector's delegated-admin and member calls (EnableDelegatedAdminAccount, AssociateMember,
DisassociateMember: used here as a user would) but not ListFindings' admin view, ListMembers' paging or the
findings reports: the emulator's inspector2 extension answers those (fleetwarden/emulator/ext/inspector2.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fleet import cli, register, role, write_config
from test_inspector import seed_findings, vuln

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

REGION = "us-east-1"
ADMIN = "444444444444"
MEMBERS = [f"5000000000{n:02d}" for n in range(12)]  # 12: two account filters of at most 10
OUTSIDER = "600000000001"  # a fleet account that is not the admin's member
KMS = f"arn:aws:kms:{REGION}:{ADMIN}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _instance(account_id: str, n: int = 0) -> str:
    return f"i-{account_id[-6:]}{n:011x}"


def _org(aws: EmulatorServer, factory: SessionFactory, *, disabled: tuple[str, ...] = ()) -> None:
    """ADMIN is Inspector's delegated administrator with MEMBERS associated; every account has findings, the first
    member 150 (two pages of ListFindings)."""
    register(factory, ADMIN, *MEMBERS, OUTSIDER)
    factory.client("inspector2", region=REGION).enable_delegated_admin_account(delegatedAdminAccountId=ADMIN)
    admin = factory.client("inspector2", region=REGION, account_id=ADMIN)
    for member in MEMBERS:
        admin.associate_member(accountId=member)
    for member in disabled:
        admin.disassociate_member(accountId=member)
    findings = [vuln(MEMBERS[0], _instance(MEMBERS[0], n), f"CVE-2026-{n:04d}", "HIGH") for n in range(150)]
    findings += [vuln(a, _instance(a), "CVE-2026-9000", "CRITICAL") for a in MEMBERS[1:]]
    findings += [vuln(OUTSIDER, _instance(OUTSIDER, n), f"CVE-2026-95{n:02d}", "MEDIUM") for n in range(2)]
    seed_findings(aws, REGION, findings)


def _config(tmp_path: Path, aws: EmulatorServer, inspector: dict[str, Any]) -> str:
    return str(write_config(tmp_path, aws.url, (*MEMBERS, OUTSIDER), [REGION], top={"inspector": inspector}))


def _calls(aws: EmulatorServer, action: str) -> int:
    return sum(
        c["count"] for c in aws.client.calls()["calls"] if c["service"] == "inspector2" and c["action"] == action
    )


def _admin(**extra: Any) -> dict[str, Any]:
    return {"delegated_admin": {"account_id": ADMIN, "role_arn": role(ADMIN)}, **extra}


def test_findings_come_from_the_delegated_administrator(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    _org(aws, factory, disabled=(MEMBERS[11],))
    config = _config(tmp_path, aws, _admin())
    aws.client.reset_calls()
    result = cli("--config", config, "--json", "findings", "inspector")
    assert result.exit_code == 0, result.stderr
    by_account: dict[str, int] = {}
    for finding in result.report["findings"]:
        by_account[finding["account_id"]] = by_account.get(finding["account_id"], 0) + 1
    # Every account's findings, whichever way they were read: 150 + 10 members + the disabled one + the outsider's 2.
    assert by_account == {MEMBERS[0]: 150, **{a: 1 for a in MEMBERS[1:]}, OUTSIDER: 2}
    summary = result.report["summary"]
    assert summary["collected_via"] == {"delegated_admin": 11, "member": 2}
    note = summary["delegated_admin"]["regions"][REGION]
    assert note.startswith("11 accounts") and MEMBERS[11] in note and OUTSIDER in note
    # From the admin: 11 accounts in two filters (10 + 1), the first one two pages (159 findings); then the two
    # accounts it does not see (a disabled member, a non-member), one call each. Member by member it would be 14.
    assert _calls(aws, "POST /findings/list") == 3 + 2
    assert _calls(aws, "POST /members/list") == 1


def test_a_delegated_administrator_that_cannot_be_reached_falls_back_member_by_member(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    _org(aws, factory)
    # No role_arn, not a fleet account, no organization: the config does not say how to reach it.
    config = _config(tmp_path, aws, {"delegated_admin": {"account_id": ADMIN}})
    result = cli("--config", config, "--json", "findings", "inspector")
    assert result.exit_code == 0, result.stderr
    assert len(result.report["findings"]) == 150 + 11 + 2
    summary = result.report["summary"]
    assert summary["collected_via"] == {"delegated_admin": 0, "member": 13}
    assert "no way to reach the delegated administrator" in summary["delegated_admin"]["error"]
    assert "read member by member" in summary["delegated_admin"]["error"]


def test_the_emulated_admin_view_pages_and_filters_as_inspector(aws: EmulatorServer, factory: SessionFactory) -> None:
    _org(aws, factory)
    admin = factory.client("inspector2", region=REGION, account_id=ADMIN)
    members = admin.list_members(onlyAssociated=True, maxResults=5)
    assert len(members["members"]) == 5 and "nextToken" in members
    every = [m for p in admin.get_paginator("list_members").paginate(onlyAssociated=True) for m in p["members"]]
    assert sorted(m["accountId"] for m in every) == MEMBERS
    too_many = [{"comparison": "EQUALS", "value": a} for a in MEMBERS[:11]]
    with pytest.raises(admin.exceptions.ValidationException):
        admin.list_findings(filterCriteria={"awsAccountId": too_many})
    with pytest.raises(admin.exceptions.ValidationException):
        admin.list_findings(maxResults=101)
    # A member sees only its own findings; the outsider's are nobody's but its own.
    member = factory.client("inspector2", region=REGION, account_id=MEMBERS[1])
    assert {f["awsAccountId"] for f in member.list_findings()["findings"]} == {MEMBERS[1]}
    admin_view = [f for p in admin.get_paginator("list_findings").paginate() for f in p["findings"]]
    assert {f["awsAccountId"] for f in admin_view} == set(MEMBERS)


def _bucket(factory: SessionFactory, name: str, account_id: str = ADMIN) -> Any:
    s3 = factory.client("s3", region=REGION, account_id=account_id)
    s3.create_bucket(Bucket=name)
    return s3


def _objects(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode() for o in listed}


def test_export_from_the_delegated_administrator_writes_reports_to_s3(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    _org(aws, factory)
    s3 = _bucket(factory, "findings-reports")
    aws.client._json("/_fleetwarden/inspector2/reports", {"status_polls": 2})
    config = _config(tmp_path, aws, _admin(export={"poll_seconds": 0.05, "kms_key_arn": KMS}))
    result = cli(
        "--config", config, "--json", "findings", "inspector", "--export", "s3://findings-reports/inspector/",
        "--severity", "critical",
    )  # fmt: skip
    # The outsider's report is asked for in its own account and region, with the same bucket: moto's bucket is in
    # us-east-1 as the call, so it succeeds too, and it has no CRITICAL finding (NO_FINDINGS_FOUND).
    exports = {tuple(e["accounts"]): e for e in result.report["summary"]["exports"]}
    assert set(exports) == {tuple(MEMBERS[:10]), tuple(MEMBERS[10:]), (OUTSIDER,)}
    for accounts in (tuple(MEMBERS[:10]), tuple(MEMBERS[10:])):
        assert exports[accounts]["status"] == "SUCCEEDED" and exports[accounts]["account_id"] == ADMIN
        assert exports[accounts]["destination"] == "s3://findings-reports/inspector"
    assert exports[(OUTSIDER,)]["status"] == "FAILED" and "NO_FINDINGS_FOUND" in exports[(OUTSIDER,)]["error"]
    assert result.exit_code == 4, result.stderr  # one export failed: partial
    written = _objects(s3, "findings-reports", "inspector/")
    assert set(written) == {
        f"inspector/{exports[a]['report_id']}.csv" for a in (tuple(MEMBERS[:10]), tuple(MEMBERS[10:]))
    }
    rows = [r for text in written.values() for r in csv.DictReader(io.StringIO(text))]
    # --severity critical reached the report's filter: only the members' CRITICAL findings, one each.
    assert sorted(r["AWS Account Id"] for r in rows) == sorted(MEMBERS[1:])
    assert {r["Severity"] for r in rows} == {"CRITICAL"}
    reports = aws.client._json("/_fleetwarden/inspector2/reports", method="GET")["reports"]
    # IN_PROGRESS twice, then done: each report was polled until it finished, not once more.
    assert sorted(r["polls"] for r in reports) == [3, 3, 3]
    filters = sorted(len(r["filterCriteria"]["awsAccountId"]) for r in reports)
    assert filters == [1, 2, 10]


def test_export_member_by_member_json_and_its_failures(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    register(factory, MEMBERS[0], MEMBERS[1])
    seed_findings(aws, REGION, [vuln(a, _instance(a), "CVE-2026-7000", "HIGH") for a in MEMBERS[:2]])
    config = str(
        write_config(
            tmp_path, aws.url, tuple(MEMBERS[:2]), [REGION],
            top={"inspector": {"export": {"poll_seconds": 0.05, "timeout_seconds": 0.3, "format": "json"}}},
        )
    )  # fmt: skip
    s3 = _bucket(factory, "member-reports", MEMBERS[0])
    kms = f"arn:aws:kms:{REGION}:{MEMBERS[0]}:key/abcd"
    ok = cli("--config", config, "--json", "findings", "inspector", "--export", "s3://member-reports", "--kms-key", kms)
    assert ok.exit_code == 0, ok.stderr
    exports = ok.report["summary"]["exports"]
    assert [(e["account_id"], e["status"], e["format"]) for e in exports] == [
        (MEMBERS[0], "SUCCEEDED", "JSON"),
        (MEMBERS[1], "SUCCEEDED", "JSON"),
    ]
    written = _objects(s3, "member-reports", "")
    assert {json.loads(t)["findings"][0]["awsAccountId"] for t in written.values()} == set(MEMBERS[:2])
    assert [d["outcome"] for d in ok.report["deliveries"]] == ["sent", "sent"]

    missing = cli("--config", config, "--json", "findings", "inspector", "--export", "s3://no-such-bucket/x",
                  "--kms-key", kms)  # fmt: skip
    assert missing.exit_code == 4
    assert {e["status"] for e in missing.report["summary"]["exports"]} == {"FAILED"}
    assert all("BUCKET_NOT_FOUND" in e["error"] for e in missing.report["summary"]["exports"])

    # Still in progress when the wait ends: reported with its id and how to check it later, not as done or failed.
    aws.client._json("/_fleetwarden/inspector2/reports", {"status_polls": 1000})
    slow = cli(
        "--config", config, "--json", "findings", "inspector", "--export", "s3://member-reports", "--kms-key", kms
    )
    assert slow.exit_code == 4
    for export in slow.report["summary"]["exports"]:
        assert export["status"] == "TIMED_OUT" and export["report_id"] in export["error"]
        assert "get-findings-report-status" in export["error"]

    no_key = cli("--config", config, "findings", "inspector", "--export", "s3://member-reports")
    assert no_key.exit_code == 2 and "KMS key" in no_key.stderr
    bad_uri = cli("--config", config, "findings", "inspector", "--export", "https://member-reports", "--kms-key", kms)
    assert bad_uri.exit_code == 2 and "s3://BUCKET/PREFIX" in bad_uri.stderr
    stray = cli("--config", config, "findings", "inspector", "--kms-key", kms)
    assert stray.exit_code == 2 and "--export" in stray.stderr
