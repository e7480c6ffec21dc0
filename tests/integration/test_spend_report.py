"""`fleetwarden spend report` (issue 11 item 4) end to end: figures checked against the seeded cost data.

Cost Explorer is the emulator's `ce` extension (moto's GetCostAndUsage only replays canned answers, whatever the
request asks): it computes GetCostAndUsage from seeded cost lines with AWS's grouping, filters and paging, so a
request for the wrong days or grouping gets the wrong figures here as it would from AWS. Delivery goes to a
loopback SMTP server (aiosmtpd) and an SNS topic in the emulator.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fleet import ACCOUNTS, cli, drain, register, role, sns_inbox, write_config
from test_owner_notify import Mailbox, smtp  # noqa: F401 - the loopback SMTP server fixture

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.outputs import SpendReportOutput
from fleetwarden.state import open_store

A, B, C = ACCOUNTS
STRANGER = "444444444444"  # a linked account the config does not list
PAYER = "999999999999"
BILLING_ROLE = f"arn:aws:iam::{PAYER}:role/FleetWardenBilling"
EC2 = "Amazon Elastic Compute Cloud - Compute"
S3 = "Amazon Simple Storage Service"
RDS = "Amazon Relational Database Service"
AS_OF = date(2026, 11, 16)  # the month so far: Nov 1 .. 15 (15 days); previous: Oct 1 .. 15


def _lines() -> list[dict[str, Any]]:
    """Oct 1 .. Nov 20 for A, B and a stranger; distinct amounts per day so any wrong day shows."""
    out = []
    day = date(2026, 10, 1)
    while day <= date(2026, 11, 20):
        n = day.toordinal() % 7
        november = day.month == 11
        out += [
            {"date": day.isoformat(), "account": A, "service": EC2, "usd": f"{100 + n}.1234567891"},
            {"date": day.isoformat(), "account": A, "service": S3, "usd": f"{3 + n / 10:.10f}"},
            # B's database appears in November only; its EC2 falls by half.
            {"date": day.isoformat(), "account": B, "service": EC2, "usd": "20.00" if november else "40.00"},
            {"date": day.isoformat(), "account": STRANGER, "service": EC2, "usd": "7.5"},
        ]
        if november:
            out.append({"date": day.isoformat(), "account": B, "service": RDS, "usd": "12.3333333333"})
        day += timedelta(days=1)
    return out


def _expected(lines: list[dict[str, Any]], accounts: set[str]) -> dict[str, Any]:
    """The figures computed straight from the seed, independently of fleetwarden's code."""
    current: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    previous: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in lines:
        day = date.fromisoformat(line["date"])
        if line["account"] not in accounts:
            continue
        if date(2026, 11, 1) <= day < AS_OF:
            current[(line["account"], line["service"])] += Decimal(line["usd"])
        elif date(2026, 10, 1) <= day < date(2026, 10, 16):
            previous[(line["account"], line["service"])] += Decimal(line["usd"])
    total = sum(current.values(), Decimal(0))
    return {"current": current, "previous": previous, "total": total}


def _cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


def seed_costs(aws: EmulatorServer, payer: str, lines: list[dict[str, Any]], page_size: int = 7) -> None:
    aws.admin("/_fleetwarden/ce/costs", {"account_id": payer, "lines": lines, "account_names": {B: "billing-b"}})
    aws.admin("/_fleetwarden/ce/page-size", {"groups": page_size})


def _config(tmp_path: Path, aws: EmulatorServer, **spend_report: Any) -> Path:
    sinks = spend_report.pop("sinks", {})
    top: dict[str, Any] = {
        "accounts": [{"id": A, "role_arn": role(A), "name": "prod"}, {"id": B, "role_arn": role(B)}],
        "spend_report": {"billing_account": {"role_arn": BILLING_ROLE}, **spend_report},
        "sinks": sinks,
    }
    return write_config(tmp_path, aws.url, (A, B), ["us-east-1"], top=top)


def _spend(result: Any) -> SpendReportOutput:
    return SpendReportOutput.model_validate(json.loads(result.stdout)["summary"]["spend"])


def test_figures_match_the_seeded_cost_data(aws: EmulatorServer, factory: SessionFactory, tmp_path: Path) -> None:
    register(factory, A, B, PAYER)
    lines = _lines()
    seed_costs(aws, PAYER, lines)
    config = _config(tmp_path, aws, top_changes=3)
    out = tmp_path / "out"
    result = cli(
        "spend", "report", "--config", str(config), "--as-of", AS_OF.isoformat(), "--json", "--output-dir", str(out)
    )
    assert result.exit_code == 0, result.stderr + result.stdout
    spend = _spend(result)
    want = _expected(lines, {A, B})

    assert (spend.period.start, spend.period.end, spend.period.days) == (date(2026, 11, 1), AS_OF, 15)
    assert (spend.previous_period.start, spend.previous_period.end) == (date(2026, 10, 1), date(2026, 10, 16))
    assert spend.total_usd == _cents(want["total"])
    assert spend.run_rate_usd == _cents(want["total"] / 15 * 365)
    by_account = {a.account_id: a for a in spend.accounts}
    assert set(by_account) == {A, B}  # the stranger is not in the totals...
    assert spend.other_accounts is not None and spend.other_accounts.accounts == 1
    assert spend.other_accounts.usd == Decimal("112.50")  # ... but is accounted for: 15 days x 7.50
    for account in (A, B):
        services = {s.service: s for s in by_account[account].by_service}
        for (acct, service), usd in want["current"].items():
            if acct == account:
                assert services[service].usd == _cents(usd), (account, service)
        for (acct, service), usd in want["previous"].items():
            if acct == account:
                assert services[service].previous_usd == _cents(usd), (account, service)
    assert by_account[A].name == "prod" and by_account[B].name == "billing-b"  # config, then Cost Explorer's name
    # Daily figures: every day of the period, today's and later days excluded.
    days = by_account[B].by_day
    assert [d.day for d in days] == [date(2026, 11, 1) + timedelta(days=i) for i in range(15)]
    assert all(d.usd == Decimal("32.33") for d in days)  # 20.00 + 12.3333333333

    # Largest changes: B's new database (+185.00, new) and its EC2 halved (-300.00), largest first.
    changes = [(c.account_id, c.service, c.change_usd, c.change_pct) for c in spend.changes]
    assert changes[0] == (B, EC2, Decimal("-300.00"), Decimal("-50.00"))
    assert changes[1] == (B, RDS, Decimal("185.00"), None)
    assert len(changes) <= 3

    # The files: the CSV's rows add up to the same figures; the HTML shows the totals.
    csv_text = (out / "spend-2026-11-16.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert sum(Decimal(r["usd"]) for r in rows if r["period"] == "current") == want["total"]
    assert {r["account_id"] for r in rows} == {A, B}
    html = (out / "spend-2026-11-16.html").read_text()
    assert f"${spend.total_usd:,.2f}" in html and "billing-b" in html and "Amazon Relational Database Service" in html
    assert (out / "run.json").exists()


def test_dry_run_sends_nothing_and_apply_sends_once_a_day(
    aws: EmulatorServer,
    factory: SessionFactory,
    tmp_path: Path,
    smtp: tuple[Mailbox, int],  # noqa: F811
) -> None:
    mailbox, port = smtp
    register(factory, A, B, PAYER)
    seed_costs(aws, PAYER, _lines())
    inbox = sns_inbox(factory, "spend")
    sinks = {
        "mail": {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "fw@example.com",
            "to": ["finance@example.com"],
            "timeout_seconds": 5,
        },
        "topic": {"type": "sns", "topic_arn": inbox[0]},
    }
    config = _config(tmp_path, aws, notify=["mail", "topic"], sinks=sinks)
    args = ("spend", "report", "--config", str(config), "--as-of", AS_OF.isoformat())

    dry = cli(*args)
    assert dry.exit_code == 0, dry.stderr + dry.stdout
    assert "would send" in dry.stderr and mailbox.messages == [] and drain(inbox) == []

    sent = cli(*args, "--apply", "--json")
    assert sent.exit_code == 0, sent.stderr + sent.stdout
    spend = _spend(sent)
    assert [d["outcome"] for d in json.loads(sent.stdout)["deliveries"]] == ["sent", "sent"]
    [(rcpt, message)] = mailbox.messages
    assert rcpt == ["finance@example.com"]
    body = message.get_body(("plain",))
    assert body is not None and f"${spend.total_usd:,.2f}" in body.get_content()
    assert f"${spend.run_rate_usd:,.2f}" in body.get_content()
    names = sorted(part.get_filename() for part in message.iter_attachments())
    assert names == ["spend-2026-11-16.csv", "spend-2026-11-16.html"]
    [sns_text] = drain(inbox)
    assert "Largest changes" in sns_text and "Amazon Relational Database Service" in sns_text

    again = cli(*args, "--apply", "--json")  # the same day: each sink already has it
    assert again.exit_code == 0, again.stderr + again.stdout
    assert [d["outcome"] for d in json.loads(again.stdout)["deliveries"]] == ["skipped", "skipped"]
    assert len(mailbox.messages) == 1 and drain(inbox) == []

    resent = cli(*args, "--apply", "--resend")
    assert resent.exit_code == 0, resent.stderr + resent.stdout
    assert len(mailbox.messages) == 2 and len(drain(inbox)) == 1
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}", factory)
    try:
        record = store.get_record("spend-report", AS_OF.isoformat())
    finally:
        store.close()
    assert record is not None and set(record[0]["sent"]) == {"mail", "topic"}


def test_cost_explorer_failure_is_partial_and_sends_nothing(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    register(factory, A, B, PAYER)
    seed_costs(aws, PAYER, _lines())
    aws.client.set_faults([{"service": "ce", "mode": "unavailable"}])
    inbox = sns_inbox(factory, "spend")
    sinks = {"topic": {"type": "sns", "topic_arn": inbox[0]}}
    config = _config(tmp_path, aws, notify=["topic"], sinks=sinks)
    result = cli("spend", "report", "--config", str(config), "--as-of", AS_OF.isoformat(), "--apply", "--json")
    assert result.exit_code == 4, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["targets"][0]["status"] == "error" and "GetCostAndUsage" in report["targets"][0]["error"]
    assert "spend" not in report["summary"] and report["deliveries"] == []
    assert drain(inbox) == []


def test_first_of_the_month_reports_the_whole_previous_month(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path
) -> None:
    register(factory, A, B, PAYER)
    lines = _lines()
    seed_costs(aws, PAYER, lines, page_size=100)
    result = cli("spend", "report", "--config", str(_config(tmp_path, aws)), "--as-of", "2026-11-01", "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    spend = _spend(result)
    assert (spend.period.start, spend.period.end, spend.period.days) == (date(2026, 10, 1), date(2026, 11, 1), 31)
    # September has 30 days and no seeded cost: the comparison covers them, and the report says so.
    assert spend.previous_period.days == 30 and spend.previous_total_usd == Decimal("0.00")
    assert any("only 30 days" in note for note in spend.notes)
    october = sum(
        (Decimal(x["usd"]) for x in lines if x["date"].startswith("2026-10") and x["account"] in (A, B)), Decimal(0)
    )
    assert spend.total_usd == _cents(october)


def test_lambda_event_delivers_the_daily_summary(
    aws: EmulatorServer, factory: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's daily schedule sends {"action": "spend-report"}; the config's `apply` decides delivery."""
    from fleetwarden.lambda_handler import handler

    register(factory, A, B, PAYER)
    seed_costs(aws, PAYER, _lines())
    inbox = sns_inbox(factory, "spend")
    config = _config(tmp_path, aws, notify=["topic"], sinks={"topic": {"type": "sns", "topic_arn": inbox[0]}})
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(config))
    sample = json.loads((Path(__file__).parents[1] / "events" / "spend_report.json").read_text())
    result = handler(sample, None)
    assert result["status"] == "ok" and result["workflow"] == "spend-report" and result["dry_run"] is False, result
    spend = SpendReportOutput.model_validate(result["summary"]["spend"])
    assert spend.as_of == AS_OF and spend.total_usd == _cents(_expected(_lines(), {A, B})["total"])
    [message] = drain(inbox)
    assert f"${spend.total_usd:,.2f}" in message
    # A retry of the same day's event (Lambda retries a failed async invocation) does not send it twice.
    again = handler(sample, None)
    assert again["status"] == "ok" and drain(inbox) == []
    bad = handler({"action": "spend-report", "as_of": "16/11/2026"}, None)
    assert bad["status"] == "error" and "as_of" in bad["error"]


def test_emulated_get_cost_and_usage_validates_and_pages_as_aws(aws: EmulatorServer, factory: SessionFactory) -> None:
    from botocore.exceptions import ClientError

    seed_costs(aws, "123456789012", _lines(), page_size=5)
    ce = factory.client("ce", region="us-east-1")
    request: dict[str, Any] = {
        "TimePeriod": {"Start": "2026-11-01", "End": "2026-11-03"},
        "Granularity": "DAILY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}, {"Type": "DIMENSION", "Key": "SERVICE"}],
    }
    pages = []
    token = None
    while True:
        page = ce.get_cost_and_usage(**request, **({"NextPageToken": token} if token else {}))
        pages.append(page)
        token = page.get("NextPageToken")
        if not token:
            break
    groups = [g for p in pages for r in p["ResultsByTime"] for g in r["Groups"]]
    assert len(pages) == 2 and len(groups) == 10  # 2 days x 5 (account, service) pairs, 5 per page
    assert {tuple(g["Keys"]) for g in groups} == {(A, EC2), (A, S3), (B, EC2), (B, RDS), (STRANGER, EC2)}
    filtered = ce.get_cost_and_usage(
        **{**request, "GroupBy": [], "Filter": {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": [B]}}}
    )
    assert [r["Total"]["UnblendedCost"]["Amount"] for r in filtered["ResultsByTime"]] == ["32.3333333333"] * 2
    for bad, code in (
        ({"TimePeriod": {"Start": "2026-11-03", "End": "2026-11-03"}}, "ValidationException"),
        (
            {"GroupBy": [{"Type": "DIMENSION", "Key": k} for k in ("LINKED_ACCOUNT", "SERVICE", "REGION")]},
            "ValidationException",
        ),
        ({"NextPageToken": "bm9wZQ=="}, "InvalidNextTokenException"),
    ):
        with pytest.raises(ClientError) as caught:
            ce.get_cost_and_usage(**{**request, **bad})
        assert caught.value.response["Error"]["Code"] == code


CUR_HEADER = [
    "bill_payer_account_id",
    "line_item_usage_account_id",
    "line_item_usage_account_name",
    "line_item_usage_start_date",
    "line_item_product_code",
    "line_item_unblended_cost",
]


def _cur_export(s3: Any, bucket: str, lines: list[dict[str, Any]]) -> None:
    """A CUR 2.0 export (gzip CSV, one manifest per billing period) holding the lines, each day's cost split over
    two hourly rows (00:00 and 23:00 UTC) so that a day is the sum of its hours."""
    import gzip

    by_period: dict[str, list[list[str]]] = defaultdict(list)
    for line in lines:
        half = Decimal(line["usd"]) / 2
        for hour in ("00", "23"):
            name = "billing-b" if line["account"] == B else ""
            start = f"{line['date']}T{hour}:00:00.000Z"
            by_period[line["date"][:7]].append([PAYER, line["account"], name, start, line["service"], str(half)])
    for period, rows in by_period.items():
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerows([CUR_HEADER, *rows])
        key = f"cur/fleet/data/BILLING_PERIOD={period}/fleet-00001.csv.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.getvalue().encode()))
        manifest = {"exportName": "fleet", "dataFiles": [f"s3://{bucket}/{key}"]}
        s3.put_object(
            Bucket=bucket,
            Key=f"cur/fleet/metadata/BILLING_PERIOD={period}/fleet-Manifest.json",
            Body=json.dumps(manifest).encode(),
        )


def test_cur_source_gives_the_same_figures(aws: EmulatorServer, factory: SessionFactory, tmp_path: Path) -> None:
    register(factory, A, B, PAYER)
    s3 = factory.client("s3", region="us-east-1", account_id=PAYER)
    s3.create_bucket(Bucket="billing-exports")
    lines = _lines()
    _cur_export(s3, "billing-exports", lines)
    config = _config(tmp_path, aws, source={"type": "cur", "bucket": "billing-exports", "prefix": "cur"})
    result = cli("spend", "report", "--config", str(config), "--as-of", AS_OF.isoformat(), "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    spend = _spend(result)
    want = _expected(lines, {A, B})
    assert spend.source == "cur" and spend.total_usd == _cents(want["total"])
    assert spend.run_rate_usd == _cents(want["total"] / 15 * 365)
    assert spend.other_accounts is not None and spend.other_accounts.usd == Decimal("112.50")
    b = next(a for a in spend.accounts if a.account_id == B)
    assert b.name == "billing-b" and all(d.usd == Decimal("32.33") for d in b.by_day)
    assert spend.changes[0].service == EC2 and spend.changes[0].change_usd == Decimal("-300.00")
    assert any("2 CUR data file(s)" in note for note in spend.notes)
    # A config asking for cur without a bucket is refused before any call.
    bad = _config(tmp_path, aws, source="cur")
    refused = cli("spend", "report", "--config", str(bad))
    assert refused.exit_code == 2 and "spend_report.source" in refused.stderr and "bucket" in refused.stderr
