"""Owner notifications (issue 11 item 2) end to end: one digest per owner to a loopback SMTP server (aiosmtpd)
and as a Slack direct message, contacts from the config map, the IAM user's tag and the address rule, the
fallback sink for owners without a contact, what each digest says was done (never an action that did not
happen), the dry run, once per run-day (state record + journal), and a template override."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from fleet import ACCOUNTS, cli, drain, launch, register, sns_inbox, users, write_config
from netutil import LoopbackController
from slack_fake import TOKEN, FakeSlack
from test_owners import NO_TAGS, assumed_role, iam_user, run_instances, seed_events

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.model import ActionOutcome, ActionResult
from fleetwarden.owners.notify import action_text
from fleetwarden.state import open_store

A = ACCOUNTS[0]
REGION = "us-east-1"


@dataclass
class Mailbox:
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        parsed = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 queued"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.messages if rcpt == [address]]


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    controller = LoopbackController(mailbox)
    controller.start()
    try:
        yield mailbox, int(controller.port)
    finally:
        controller.stop()


@dataclass
class Fleet:
    alice: list[str]  # created_by=alice (an IAM user): contact from the address rule
    carol: list[str]  # launched by IAM user carol (CloudTrail): contact from her IAM tag
    deployer: list[str]  # launched by an assumed role: contact (Slack) from the config map by role
    nobody: list[str]  # no tag, no event: unknown -> fallback


def seed(aws: EmulatorServer, factory: SessionFactory) -> Fleet:
    users(factory, A, "alice", "carol")
    iam = factory.client("iam", region="us-east-1", account_id=A)
    iam.tag_user(UserName="carol", Tags=[{"Key": "email", "Value": "carol.c@corp.example.com"}])
    fleet = Fleet(
        alice=launch(factory, A, REGION, {"created_by": "alice", "department": "eng"}, 2),
        carol=launch(factory, A, REGION, NO_TAGS),
        deployer=launch(factory, A, REGION, NO_TAGS),
        nobody=launch(factory, A, REGION, NO_TAGS),
    )
    seed_events(
        aws,
        A,
        REGION,
        [
            run_instances(iam_user(A, "carol"), fleet.carol),
            run_instances(assumed_role(A, "Deployer", "ci-build-7"), fleet.deployer),
        ],
    )
    return fleet


def config(
    tmp_path: Path,
    aws: EmulatorServer,
    port: int,
    slack: FakeSlack,
    topic: str,
    *,
    action: str = "stop",
    **notify: Any,
) -> Path:
    sinks = {
        "mail": {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "from": "fw@example.com",
            "to": ["ops@example.com"],
            "timeout_seconds": 5,
        },
        "chat": {"type": "slack", "channel": "C0123ABCD9", "token": "env:FW_SLACK_TOKEN", "api_url": slack.url},
        "ops": {"type": "sns", "topic_arn": topic},
    }
    owners = {
        "notify": {
            "email_sink": "mail",
            "slack_sink": "chat",
            "fallback": ["ops"],
            "contact_tag": "email",
            "contacts": {"Deployer": "slack:U0DEPLOYER1"},
            "address_rule": "{user}@example.com",
            **notify,
        }
    }
    return write_config(
        tmp_path,
        aws.url,
        (A,),
        [REGION],
        top={"sinks": sinks},
        created_by_must_be_iam_user=False,
        action=action,
        owners=owners,
    )


def audit(path: Path, *args: str, exit_code: int = 0) -> dict[str, Any]:
    result = cli("--config", str(path), "--json", "audit", *args)
    assert result.exit_code == exit_code, result.stderr
    return result.report


@pytest.fixture
def slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_SLACK_TOKEN", TOKEN)


def test_digests_per_owner_once_a_day(
    aws: EmulatorServer,
    tmp_path: Path,
    factory: SessionFactory,
    smtp: tuple[Mailbox, int],
    slack: FakeSlack,
    slack_env: None,
) -> None:
    mailbox, port = smtp
    fleet = seed(aws, factory)
    register(factory, A)
    inbox = sns_inbox(factory, "owners")
    path = config(tmp_path, aws, port, slack, inbox[0])
    report = audit(path, "--apply")
    sent = {d["sink"]: d for d in report["deliveries"]}
    assert {d["outcome"] for d in sent.values()} == {"sent"}, sent
    assert set(sent) == {
        "owner Deployer/ci-build-7 (slack U0DEPLOYER1)",
        "owner alice (email alice@example.com)",
        "owner carol (email carol.c@corp.example.com)",
        "owners without a contact (ops)",
    }
    # Alice: one mail, only to her, listing her two instances, each stopped by this run.
    (mail,) = mailbox.to("alice@example.com")
    body = mail.get_content()
    assert "2 of your instance(s)" in mail["Subject"]
    for instance_id in fleet.alice:
        assert instance_id in body
    assert body.count("Action: stopped by this run") == 2
    assert "Missing tags: project" in body
    assert not any(i in body for i in fleet.carol + fleet.nobody + fleet.deployer)
    (mail,) = mailbox.to("carol.c@corp.example.com")
    assert fleet.carol[0] in mail.get_content()
    assert len(mailbox.messages) == 2
    # The assumed role's owner: a Slack DM (conversations.open, then chat.postMessage to the DM channel).
    (opened,) = slack.calls("conversations.open")
    assert opened.params["users"] == "U0DEPLOYER1"
    (posted,) = slack.calls("chat.postMessage")
    assert posted.params["channel"] == "D0DEPLOYER1"
    assert fleet.deployer[0] in json.dumps(posted.params["blocks"])
    # The unknown owner's instance goes to the fallback sink, with why the owner is unknown.
    (fallback,) = drain(inbox)
    assert fleet.nobody[0] in fallback and "Owner unknown: no created_by tag" in fallback
    assert "Owner: unknown" in fallback
    # Recorded: the day's claims and one journal entry per digest.
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    claims = {key.split("#", 1)[1] for key, _, _ in store.list_records("owner-digest")}
    assert claims == {"alice", "carol", "Deployer/ci-build-7", "(no contact)"}
    journaled = [e for e in store.list_journal(run_id=report["run_id"]) if e.action == "owner-digest"]
    assert sorted(e.resource_id for e in journaled) == sorted(f"owner:{c}" for c in claims)
    assert {e.outcome for e in journaled} == {ActionOutcome.DONE}
    # A second run the same day sends nothing again.
    again = audit(path, "--apply")
    digests = [d for d in again["deliveries"] if d["sink"].startswith("owner")]
    assert {d["outcome"] for d in digests} == {"skipped"}
    assert all("already sent on" in d["error"] for d in digests)
    assert len(mailbox.messages) == 2 and len(slack.calls("chat.postMessage")) == 1 and drain(inbox) == []


def test_dry_run_lists_what_would_be_sent(
    aws: EmulatorServer,
    tmp_path: Path,
    factory: SessionFactory,
    smtp: tuple[Mailbox, int],
    slack: FakeSlack,
    slack_env: None,
) -> None:
    mailbox, port = smtp
    seed(aws, factory)
    register(factory, A)
    inbox = sns_inbox(factory, "owners")
    report = audit(config(tmp_path, aws, port, slack, inbox[0]))
    digests = {d["sink"]: d for d in report["deliveries"] if d["sink"].startswith("owner")}
    assert {d["outcome"] for d in digests.values()} == {"skipped"}
    assert (
        digests["owner alice (email alice@example.com)"]["error"] == "dry run: would send 2 instance(s); --apply sends"
    )
    listed = {d["owner"]: d for d in report["summary"]["owner_digests"]}
    assert listed["carol"]["contact_source"] == "iam-tag"
    assert listed["alice"]["contact_source"] == "rule"
    assert listed["Deployer/ci-build-7"]["contact_source"] == "config"
    assert listed["unknown"]["contact"] is None and "unknown" in listed["unknown"]["why"]
    assert mailbox.messages == [] and slack.requests == [] and drain(inbox) == []
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert store.list_records("owner-digest") == []


def test_template_override_and_report_only_wording(
    aws: EmulatorServer,
    tmp_path: Path,
    factory: SessionFactory,
    smtp: tuple[Mailbox, int],
    slack: FakeSlack,
    slack_env: None,
) -> None:
    mailbox, port = smtp
    users(factory, A, "alice")
    ids = launch(factory, A, REGION, {"created_by": "alice", "department": "eng"})
    register(factory, A)
    inbox = sns_inbox(factory, "owners")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "owner_digest_subject.txt.j2").write_text("[Cloud team] {{ owner }}: {{ items|length }} to tag")
    path = config(tmp_path, aws, port, slack, inbox[0], action="report", templates_dir=str(templates))
    audit(path, "--apply")
    (mail,) = mailbox.to("alice@example.com")
    assert mail["Subject"] == "[Cloud team] alice: 1 to tag"
    body = mail.get_content()  # the shipped body template
    assert ids[0] in body and "Action: none: the audit only reports (audit.action: report)" in body
    assert "stopped" not in body


def test_failed_send_is_journaled_and_retried(
    aws: EmulatorServer,
    tmp_path: Path,
    factory: SessionFactory,
    smtp: tuple[Mailbox, int],
    slack: FakeSlack,
    slack_env: None,
) -> None:
    _, port = smtp
    users(factory, A, "alice")
    launch(factory, A, REGION, {"created_by": "alice", "department": "eng"})
    register(factory, A)
    inbox = sns_inbox(factory, "owners")
    path = config(tmp_path, aws, port, slack, inbox[0], email_sink=None, contacts={"alice": "U0ALICE0001"})
    slack.fail["chat.postMessage"] = "not_allowed_token_type"
    report = audit(path, "--apply", exit_code=4)
    (failed,) = [d for d in report["deliveries"] if d["sink"].startswith("owner alice")]
    assert failed["outcome"] == "failed" and "not_allowed_token_type" in failed["error"]
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert store.list_records("owner-digest") == []
    (entry,) = [e for e in store.list_journal() if e.action == "owner-digest"]
    assert entry.outcome == ActionOutcome.FAILED
    del slack.fail["chat.postMessage"]
    again = audit(path, "--apply")
    assert [d["outcome"] for d in again["deliveries"] if d["sink"].startswith("owner alice")] == ["sent"]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "none: the audit only reports (audit.action: report)"),
        (("done", ""), "stopped by this run"),
        (("planned", "dry run: use --apply to act"), "will be stopped when the audit runs with --apply"),
        (("planned", "over max_actions=1"), "would be stopped, but nothing was done: over max_actions=1"),
        (("skipped", "do-not-stop exception exc-1: db"), "not stopped: do-not-stop exception exc-1: db"),
        (("failed", "OperationNotPermitted"), "stop failed, the instance was not stopped: OperationNotPermitted"),
    ],
)
def test_action_text_says_only_what_happened(result: tuple[str, str] | None, expected: str) -> None:
    action = None
    if result is not None:
        action = ActionResult(
            action="stop",
            account_id=A,
            region=REGION,
            resource_id="i-1",
            outcome=ActionOutcome(result[0]),
            reason=result[1],
        )
    assert action_text("report" if result is None else "stop", action)[1].startswith(expected)
