"""`fleetwarden demo`: every job end to end on the embedded AWS emulator, no AWS account needed.

Starts the emulator (moto server in-process on 127.0.0.1), seeds a small organization through boto3, writes a
demo config next to the outputs, and runs in-process against it: `audit` (the main job, outputs in the output
directory itself), then a `guard run` dry run, a scan window (`window run --apply`, Inspector simulated by the
emulator) and `compliance sync --apply`, each into a subdirectory. Needs the `demo` extra.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

DEMO_ACCOUNTS = (("111111111111", "dev"), ("222222222222", "prod"), ("333333333333", "data"))
DEMO_REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")

# The emulator accepts any credentials; these keep the demo from ever touching a real account or profile.
_DEMO_ENV = {
    "AWS_ACCESS_KEY_ID": "fleetwarden-demo",
    "AWS_SECRET_ACCESS_KEY": "fleetwarden-demo",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


@contextmanager
def _environment(values: Mapping[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and unset) environment variables for the duration; restore them afterwards."""
    keys = [*values, *unset]
    saved = {key: os.environ.get(key) for key in keys}
    try:
        for key in unset:
            os.environ.pop(key, None)
        os.environ.update(values)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def demo_config(output_dir: Path, topic_arn: str, role_name: str = "FleetWarden") -> dict[str, Any]:
    """The demo's fleetwarden.yaml, as data (DESIGN.md config contract v1)."""
    return {
        "aws": {"max_attempts": 4, "max_concurrency": 16},
        "accounts": [
            {"id": account_id, "name": name, "role_arn": f"arn:aws:iam::{account_id}:role/{role_name}"}
            for account_id, name in DEMO_ACCOUNTS
        ],
        "regions": list(DEMO_REGIONS),
        "state": f"sqlite:///{(output_dir / 'state.db').resolve()}",
        "sinks": {"ops": {"type": "sns", "topic_arn": topic_arn}},
        "audit": {
            "required_tags": ["created_by", "department", "project"],
            "tag_values": {"department": ["sysops", "eng", "finance"], "project": "re:^[a-z0-9-]+$"},
            "created_by_tag": "created_by",
            "created_by_must_be_iam_user": True,
            "grace_minutes": 45,
            "action": "stop",
            "max_actions": 200,
            "canary": {"tags": {"Name": "api-canary-{region}"}},
            "notify": ["ops"],
            # Which instances the internet reaches (docs/checks/exposure.md): report-only.
            "exposure": {"enabled": True},
        },
        # One account ("data") is given a low limit, so the guard's dry run shows a trip and its planned halt.
        "guard": {"max_running_instances": 500, "lockout": {"exempt_users": ["alice"]}, "notify": ["ops"]},
        "window": {"settle_minutes": 0, "wait_for_inspector": True, "timeout_minutes": 30},
        "compliance": {"types": ["Custom:InSpec"], "notify": ["ops"]},
        # The daily spend summary, from the cost data the demo seeds in the emulator's Cost Explorer.
        "spend_report": {"notify": ["ops"], "top_changes": 5},
    }


def _cli_audit(config_path: Path, output_dir: Path, apply: bool) -> int:
    """Run `fleetwarden audit` in-process; its exit code."""
    return _cli(config_path, output_dir, "audit", *(["--apply"] if apply else []))


def _cli(config_path: Path, output_dir: Path | None, *command: str) -> int:
    """Run one fleetwarden command in-process; its exit code."""
    import click

    from .cli import main

    args = ["--config", str(config_path), *(["--output-dir", str(output_dir)] if output_dir else []), *command]
    try:
        result = main(args, standalone_mode=False)
    except SystemExit as exc:  # the CLI's commands end with sys.exit(code)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


def _found(run_json: Path) -> tuple[set[str], int, dict[str, int]] | None:
    """(flagged instance ids, open findings, actions per outcome) from the audit's run.json, if written."""
    try:
        report = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    open_findings = [
        f for f in report.get("findings", []) if f.get("check") == "tags" and f.get("status") in ("new", "ongoing")
    ]
    actions: dict[str, int] = {}
    for action in report.get("actions", []):
        outcome = str(action.get("outcome"))
        actions[outcome] = actions.get(outcome, 0) + 1
    return {str(f.get("resource_id")) for f in open_findings}, len(open_findings), actions


def run_demo(
    output_dir: Path,
    apply: bool = False,
    *,
    instances_per_target: int = 40,
    stream: TextIO | None = None,
) -> int:
    """Seed the emulator, run the audit against it, write outputs under `output_dir`; the audit's exit code."""
    from .emulator.seed import FleetSpec, SeedAccount, seed_fleet
    from .emulator.server import EmulatorServer

    out = stream or sys.stdout
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "fleetwarden.yaml"
    # Each demo seeds a fresh emulator (new instance ids): start from an empty state store too.
    (output_dir / "state.db").unlink(missing_ok=True)
    spec = FleetSpec(
        accounts=[SeedAccount(account_id, name) for account_id, name in DEMO_ACCOUNTS],
        regions=list(DEMO_REGIONS),
        instances_per_target=instances_per_target,
    )
    server = EmulatorServer(log_requests=False)
    print("fleetwarden demo: starting the embedded AWS emulator (moto) on 127.0.0.1 ...", file=out, flush=True)
    server.start()
    try:
        with _environment({**_DEMO_ENV, "AWS_ENDPOINT_URL": server.url}, _UNSET_ENV):
            seeded = seed_fleet(server.url, spec)
            exposed = _seed_exposure(server, seeded)
            counts = seeded.summary()
            print(
                f"seeded {counts['instances']} instances in {counts['accounts']} accounts x {counts['regions']} "
                f"regions ({counts['violators']} violators past grace, {counts['in_grace']} still in grace, "
                f"{counts['stopped']} stopped, {counts['canaries']} canaries)",
                file=out,
                flush=True,
            )
            assert seeded.topic_arn is not None
            config_path.write_text(
                "# Written by `fleetwarden demo`: the emulator's accounts, regions and alert topic.\n"
                + yaml.safe_dump(demo_config(output_dir, seeded.topic_arn), sort_keys=False),
                encoding="utf-8",
            )
            print(
                f"running: fleetwarden --config {config_path} audit{' --apply' if apply else ''}", file=out, flush=True
            )
            code = _cli_audit(config_path, output_dir, apply)
            notifications = _drain(server.url, seeded.queue_url, seeded.topic_arn.split(":")[3])
            jobs = _other_jobs(server, seeded, config_path, output_dir, out)
            notifications += _drain(server.url, seeded.queue_url, seeded.topic_arn.split(":")[3])
    finally:
        server.stop()
    found = _found(output_dir / "run.json")
    _summary(out, output_dir, config_path, seeded.violators, found, notifications, code, apply)
    print(_exposure_line(output_dir / "run.json", exposed), file=out, flush=True)
    for line in jobs:
        print(line, file=out, flush=True)
    return code


def _other_jobs(server: Any, seeded: Any, config_path: Path, output_dir: Path, out: TextIO) -> list[str]:
    """The guard (dry run), a scan window and a compliance sync on the same emulator; summary lines."""
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    last = data["accounts"][-1]["id"]
    # A limit at half of what the last account runs: the guard's dry run shows that account tripping.
    data["accounts"][-1]["guard"] = {"max_running_instances": len(seeded.ids(account_id=last, state="running")) // 2}
    config_path.write_text(
        "# Written by `fleetwarden demo`: the emulator's accounts, regions and alert topic.\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    lines = ["", "the other jobs on the same fleet:"]

    def run(label: str, sub: str, *command: str) -> dict[str, Any]:
        print(f"running: fleetwarden --config {config_path} {' '.join(command)}", file=out, flush=True)
        code = _cli(config_path, output_dir / sub, "-q", *command)
        try:
            report: dict[str, Any] = json.loads((output_dir / sub / "run.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            report = {}
        lines.append(f"  {label} (exit code {code}): {output_dir / sub / 'report.html'}")
        return report

    guard = run("guard dry run", "guard", "guard", "run")
    summary = guard.get("summary", {})
    planned = sum(1 for a in guard.get("actions", []) if a.get("action") == "stop" and a.get("outcome") == "planned")
    lines.append(f"    tripped: {', '.join(summary.get('tripped', [])) or 'none'}; planned stops: {planned}")

    # The canaries stay as they are: do-not-start exceptions keep the scan window away from them.
    for (account_id, region), instance_id in sorted(seeded.canaries.items()):
        _cli(
            config_path,
            None,
            "-q",
            "exceptions",
            "add",
            "--kind",
            "do-not-start",
            "--account",
            account_id,
            "--region",
            region,
            "--resource-id",
            instance_id,
            "--reason",
            "region canary",
            "--owner",
            "demo",
        )
    _seed_inspector(server, seeded)
    window = run("scan window", "window", "window", "run", "--apply")
    started = sum(1 for a in window.get("actions", []) if a.get("action") == "start" and a.get("outcome") == "done")
    stopped = sum(1 for a in window.get("actions", []) if a.get("action") == "stop" and a.get("outcome") == "done")
    lines.append(
        f"    started {started} stopped instances for Inspector, collected {len(window.get('findings', []))} "
        f"findings, stopped {stopped} again"
    )

    _seed_compliance(server, seeded)
    compliance = run("compliance sync", "compliance", "compliance", "sync", "--apply")
    csum = compliance.get("summary", {})
    lines.append(
        f"    {csum.get('instances_scanned', 0)} instances scanned, {csum.get('new', 0)} new non-compliant items "
        "(alerted once through the SNS sink)"
    )

    _seed_costs(server, [a.id for a in seeded.accounts])
    print(f"running: fleetwarden --config {config_path} spend report", file=out, flush=True)
    spend_code = _cli(config_path, output_dir / "spend", "-q", "spend", "report")
    spend_files = sorted((output_dir / "spend").glob("spend-*.html"))
    try:
        spend_run = json.loads((output_dir / "spend" / "run.json").read_text(encoding="utf-8"))
        spend = spend_run["summary"]["spend"]
        lines.append(f"  spend report (exit code {spend_code}): {spend_files[0] if spend_files else '-'}")
        lines.append(
            f"    ${float(spend['total_usd']):,.2f} month to date over {spend['period']['days']} days, "
            f"run rate ${float(spend['run_rate_usd']):,.2f} a year; largest change: "
            + (
                f"{spend['changes'][0]['service']} in {spend['changes'][0]['account_id']} "
                f"({float(spend['changes'][0]['change_usd']):+,.2f})"
                if spend["changes"]
                else "none"
            )
        )
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        lines.append(f"  spend report (exit code {spend_code}): see {output_dir / 'spend'}")

    # One page for triage: every open finding the jobs recorded (tags, exposure, Inspector, compliance).
    everything = run("every open finding, for triage", "all", "report")
    by_check: dict[str, int] = {}
    for finding in everything.get("findings", []):
        by_check[finding.get("check", "?")] = by_check.get(finding.get("check", "?"), 0) + 1
    lines.append("    " + (", ".join(f"{n} {check}" for check, n in sorted(by_check.items())) or "no open findings"))
    return lines


DEMO_WEB_PORTS = (22, 443)
DEMO_PAYER = "123456789012"  # the emulator's account for the demo's own credentials: Cost Explorer is read there
DEMO_SERVICES = (
    ("Amazon Elastic Compute Cloud - Compute", 180),
    ("Amazon Relational Database Service", 60),
    ("Amazon Simple Storage Service", 12),
    ("AWS Lambda", 3),
)


def _seed_costs(server: Any, accounts: list[str]) -> None:
    """Daily cost lines from the first of last month to yesterday (UTC) for each account and a few services;
    the last account's compute doubles this month, so the report has a change to show."""
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    day = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    lines = []
    while day < today:
        for n, account_id in enumerate(accounts):
            for service, base in DEMO_SERVICES:
                usd = base * (n + 1) / len(accounts) + (day.toordinal() % 5) * base / 50
                if account_id == accounts[-1] and service.startswith("Amazon Elastic") and day.month == today.month:
                    usd *= 2
                lines.append({"date": day.isoformat(), "account": account_id, "service": service, "usd": f"{usd:.4f}"})
        day += timedelta(days=1)
    server.client._json("/_fleetwarden/ce/costs", {"account_id": DEMO_PAYER, "lines": lines})


def _seed_exposure(server: Any, seeded: Any) -> set[str]:
    """Two web servers the internet reaches in the first account's first region: a public subnet (a default route
    to an internet gateway), a security group open to 0.0.0.0/0 on 22 and 443, public IPs. Their ids."""
    from .aws.session import AccountAccess, SessionFactory
    from .config import AwsSettings
    from .emulator.seed import IMAGE_ID, good_tags

    account_id, region = seeded.accounts[0].id, seeded.regions[0]
    factory = SessionFactory(AwsSettings(endpoint_url=server.url), run_id="demo-seed")
    factory.register_account(AccountAccess(account_id, seeded.role_arn(account_id)))
    ec2 = factory.client("ec2", region=region, account_id=account_id)
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.90.1.0/24")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
    group = ec2.create_security_group(GroupName="demo-web", Description="web servers", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            for port in DEMO_WEB_PORTS
        ],
    )
    tags = good_tags("alice", "eng", "web", name="demo-web")
    launched = ec2.run_instances(
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MinCount=2,
        MaxCount=2,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group], "AssociatePublicIpAddress": True}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )
    return {i["InstanceId"] for i in launched["Instances"]}


def _exposure_line(run_json: Path, seeded: set[str]) -> str:
    """The demo's exposure summary: what the audit found reachable, against the two web servers seeded."""
    try:
        report = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "  exposure: no run.json to read"
    found = [
        f for f in report.get("findings", []) if f.get("check") == "exposure" and f.get("status") in ("new", "ongoing")
    ]
    instances = {str(f.get("resource_id")) for f in found}
    match = "exactly the seeded web servers" if instances == seeded else "differs from the seed's web servers"
    return f"  exposure: {len(found)} open findings on {len(instances)} instances reachable from the internet: {match}"


def _seed_inspector(server: Any, seeded: Any) -> None:
    """Inspector scans what runs at first sight; a stopped instance per account carries two findings."""
    server.client._json("/_fleetwarden/inspector2/coverage", {"rule": {"scan_after_polls": 0}})
    for account_id in (a.id for a in seeded.accounts):
        stopped = sorted(seeded.ids("compliant", account_id=account_id, region="us-east-1", state="stopped"))
        canaries = set(seeded.canaries.values())
        targets = [i for i in stopped if i not in canaries][:1]
        findings = [
            {
                "awsAccountId": account_id,
                "severity": severity,
                "title": f"{cve} - {package}",
                "description": f"{package} is vulnerable ({cve})",
                "resources": [{"type": "AWS_EC2_INSTANCE", "id": instance_id}],
                "packageVulnerabilityDetails": {"vulnerabilityId": cve},
            }
            for instance_id in targets
            for cve, package, severity in (("CVE-2024-6387", "openssh", "CRITICAL"), ("CVE-2023-4911", "glibc", "HIGH"))
        ]
        if findings:
            server.client._json("/_fleetwarden/inspector2/findings", {"region": "us-east-1", "findings": findings})


def _seed_compliance(server: Any, seeded: Any) -> None:
    """InSpec results for a few running instances per target, some failing."""
    from datetime import UTC, datetime

    from .aws.session import AccountAccess, SessionFactory
    from .config import AwsSettings

    factory = SessionFactory(AwsSettings(endpoint_url=server.url), run_id="demo-seed")
    now = datetime.now(UTC)
    for account_id in (a.id for a in seeded.accounts):
        factory.register_account(AccountAccess(account_id, seeded.role_arn(account_id)))
        for region in seeded.regions:
            ssm = factory.client("ssm", region=region, account_id=account_id)
            running = sorted(seeded.ids("compliant", account_id=account_id, region=region, state="running"))[:3]
            for n, instance_id in enumerate(running):
                ssm.put_compliance_items(
                    ResourceId=instance_id,
                    ResourceType="ManagedInstance",
                    ComplianceType="Custom:InSpec",
                    ExecutionSummary={"ExecutionTime": now, "ExecutionId": "demo", "ExecutionType": "Command"},
                    Items=[
                        {
                            "Id": "sshd-01",
                            "Title": "Disable SSH root login",
                            "Severity": "HIGH",
                            "Status": "NON_COMPLIANT" if n == 0 else "COMPLIANT",
                        },
                        {
                            "Id": "os-05",
                            "Title": "Check login.defs",
                            "Severity": "MEDIUM",
                            "Status": "NON_COMPLIANT" if n < 2 else "COMPLIANT",
                        },
                    ],
                    UploadType="COMPLETE",
                )


def _drain(url: str, queue_url: str | None, region: str) -> int:
    """How many alerts reached the SNS topic (read back from its SQS inbox)."""
    if queue_url is None:
        return 0
    from .aws.session import SessionFactory
    from .config import AwsSettings

    sqs = SessionFactory(AwsSettings(endpoint_url=url), run_id="demo").client("sqs", region=region)
    count = 0
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return count
        count += len(messages)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def _summary(
    out: TextIO,
    output_dir: Path,
    config_path: Path,
    expected: set[str],
    found: tuple[set[str], int, dict[str, int]] | None,
    notifications: int,
    code: int,
    apply: bool,
) -> None:
    lines = ["", "fleetwarden demo finished" + (f" (audit exit code {code})" if code else "")]
    if found is not None:
        flagged, total, actions = found
        match = "exactly the seeded violators" if flagged == expected else "differs from the seed's expectation"
        lines.append(f"  audit flagged {len(flagged)} instances ({total} open tag findings): {match}")
        if flagged != expected:
            lines.append(f"    missed {len(expected - flagged)}, unexpected {len(flagged - expected)}")
        if actions:
            shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(actions.items()))
            lines.append(f"  stop actions: {shown}")
    lines.append(f"  alerts published to the SNS topic: {notifications}")
    lines.append(f"  config:   {config_path}")
    for name, what in (
        ("report.html", "open this in a browser"),
        ("findings.csv", "one row per finding"),
        ("run.json", "the RunReport"),
    ):
        path = output_dir / name
        if path.exists():
            lines.append(f"  {name + ':':<13} {path.resolve()}  ({what})")
    if not apply:
        lines.append("  add --apply to stop the violators in the emulator (the audit action is `stop`).")
    print("\n".join(lines), file=out, flush=True)
