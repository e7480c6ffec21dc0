"""The AWS CLI's and c7n-org's habits on the command line: --profile and --region, and the run-time filters
--accounts/-a, --exclude-accounts, --ou and --regions that narrow the config's targets and never widen them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fleet import ACCOUNTS, cli, launch, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

REGIONS = ["us-east-1", "eu-west-1"]
A, B, C = ACCOUNTS


def _config(tmp_path: Path, aws: EmulatorServer, accounts: tuple[str, ...] = ACCOUNTS, **top: Any) -> Path:
    return write_config(tmp_path, aws.url, accounts, REGIONS, top=top or None, created_by_must_be_iam_user=False)


def _targets(result: Any) -> set[tuple[str, str]]:
    assert result.exit_code == 0, result.stderr
    return {(t["account_id"], t["region"]) for t in result.report["targets"]}


def _audit(path: Path, *args: str) -> Any:
    return cli("--config", str(path), "--json", "audit", *args)


def test_accounts_and_regions_narrow_the_config(aws: EmulatorServer, tmp_path: Path) -> None:
    path = _config(tmp_path, aws)
    assert _targets(_audit(path)) == {(a, r) for a in ACCOUNTS for r in REGIONS}
    assert _targets(_audit(path, "-a", A)) == {(A, r) for r in REGIONS}
    assert _targets(_audit(path, "--accounts", f"{A},{B}", "--regions", "eu-west-1")) == {
        (A, "eu-west-1"),
        (B, "eu-west-1"),
    }
    assert _targets(_audit(path, "--exclude-accounts", B, "-a", A, "-a", B)) == {(A, r) for r in REGIONS}
    # Before the command as well as after it.
    result = cli("--config", str(path), "--json", "audit", "--exclude-accounts", C, "--regions", "us-east-1")
    assert _targets(result) == {(A, "us-east-1"), (B, "us-east-1")}


def test_only_the_kept_accounts_are_called(aws: EmulatorServer, tmp_path: Path) -> None:
    path = _config(tmp_path, aws)
    aws.client.reset_calls()
    _targets(_audit(path, "-a", A, "--regions", "us-east-1"))
    ec2 = [c for c in aws.client.calls()["calls"] if c["service"] == "ec2"]
    assert {c["region"] for c in ec2} == {"us-east-1"}
    assert sum(c["count"] for c in ec2 if c["action"] == "DescribeInstances") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-a", "999999999999"), "account(s) 999999999999 are not among the config's 3 account(s)"),
        (("--exclude-accounts", "999999999999"), "never widen"),
        (("-a", A, "--exclude-accounts", A), "leave no account"),
        (("--regions", "ap-south-1"), "ap-south-1 is not among the config's regions (us-east-1, eu-west-1)"),
        (("--regions", "us-eats-1"), "did you mean us-east-1?"),
    ],
)
def test_filters_never_widen_and_bad_ones_exit_2(
    aws: EmulatorServer, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    path = _config(tmp_path, aws)
    aws.client.reset_calls()
    result = _audit(path, *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stdout == ""
    # Nothing but the pre-flight's identity call was made.
    assert {c["action"] for c in aws.client.calls()["calls"]} <= {"GetCallerIdentity"}


def test_ou_keeps_the_accounts_under_it_nested_ones_included(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    org = factory.client("organizations", region="us-east-1")
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    members = [
        org.create_account(AccountName=f"m{n}", Email=f"m{n}@example.com")["CreateAccountStatus"]["AccountId"]
        for n in range(3)
    ]
    prod = org.create_organizational_unit(ParentId=root, Name="prod")["OrganizationalUnit"]["Id"]
    web = org.create_organizational_unit(ParentId=prod, Name="web")["OrganizationalUnit"]["Id"]
    org.move_account(AccountId=members[0], SourceParentId=root, DestinationParentId=prod)
    org.move_account(AccountId=members[1], SourceParentId=root, DestinationParentId=web)
    for member in members:
        launch(factory, member, "us-east-1", {})
    path = write_config(tmp_path, aws.url, tuple(members), ["us-east-1"], created_by_must_be_iam_user=False)
    assert _targets(_audit(path, "--ou", prod)) == {(members[0], "us-east-1"), (members[1], "us-east-1")}
    assert _targets(_audit(path, "--ou", web)) == {(members[1], "us-east-1")}
    assert _targets(_audit(path, "--ou", root)) == {(m, "us-east-1") for m in members}
    missing = _audit(path, "--ou", "ou-zzzz-zzzzzzzz")
    assert missing.exit_code == 2 and "cannot list the accounts under ou-zzzz-zzzzzzzz" in missing.stderr


def test_profile_and_region(aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[audit]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    path = _config(tmp_path, aws, accounts=(A,))
    # Without credentials in the environment, only the named profile has them.
    assert _audit(path).exit_code == 2
    aws.client.reset_calls()
    assert _targets(_audit(path, "--profile", "audit", "--region", "eu-west-1")) == {(A, r) for r in REGIONS}
    sts = {c["region"] for c in aws.client.calls()["calls"] if c["service"] == "sts"}
    assert sts == {"eu-west-1"}  # the home region: GetCallerIdentity and AssumeRole
    bad = _audit(path, "--profile", "audit", "--region", "eu-wset-1")
    assert bad.exit_code == 2 and "--region: unknown AWS region 'eu-wset-1' - did you mean eu-west-1?" in bad.stderr
    unknown = _audit(path, "--profile", "nope")
    assert unknown.exit_code == 2 and "profiles there: audit" in unknown.stderr


def test_region_environment_fills_only_what_the_config_leaves(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    aws.client.reset_calls()
    _targets(_audit(_config(tmp_path, aws, accounts=(A,))))
    assert {c["region"] for c in aws.client.calls()["calls"] if c["service"] == "sts"} == {"eu-west-1"}
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    path = write_config(pinned, aws.url, (A,), REGIONS, created_by_must_be_iam_user=False)
    text = path.read_text().replace("aws:\n", "aws:\n  sts_region: us-east-1\n", 1)
    path.write_text(text)
    aws.client.reset_calls()
    _targets(_audit(path))
    assert {c["region"] for c in aws.client.calls()["calls"] if c["service"] == "sts"} == {"us-east-1"}


def test_commands_that_do_not_fan_out_do_not_offer_the_filters() -> None:
    assert cli("guard", "status", "-a", A).exit_code == 2
    assert "--regions" not in cli("state", "init", "--help").stdout
    assert "--profile" in cli("state", "init", "--help").stdout


def test_progress_goes_to_stderr_and_quiet_silences_it(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetwarden.aws import fanout

    monkeypatch.setattr(fanout, "LINE_EVERY_SECONDS", 0.01)
    aws.client.set_latency(30)
    try:
        path = _config(tmp_path, aws)
        result = _audit(path)
        assert _targets(result) == {(a, r) for a in ACCOUNTS for r in REGIONS}  # stdout is the JSON alone
        assert re.search(r"^auditing: \d/6 done, 0 error\(s\)", result.stderr, re.M), result.stderr
        quiet = _audit(path, "-q")
        assert quiet.exit_code == 0 and "done," not in quiet.stderr
    finally:
        aws.client.set_latency(None)
