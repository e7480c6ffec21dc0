"""Owner notifications: after the tag audit, one digest per owner per run-day, to the owner's contact.

For each owner of an open tag finding (see resolve.py), the contact is, first match wins: `contacts` in the config
(the owner, or an assumed role's role), the IAM user's tag `contact_tag` (iam:ListUserTags, in the instance's
account), then `address_rule` (`{user}@example.com`). An email address goes through the `email_sink` (its relay
and sender, the owner as the only recipient), a Slack user id as a direct message through the `slack_sink`. Owners
without a contact (unknown owners included) share one digest to the `fallback` sinks.

A digest says what was found and what was, or will be, done: the text comes from the run's ActionResults (done,
planned in a dry run, skipped with the reason, failed), never from the configured action alone. It is rendered
from Jinja templates shipped in `owners/templates/`, which `templates_dir` can override file by file.

Dry run: nothing is sent; each digest is listed as a `skipped` delivery saying where it would go. With --apply,
each digest is claimed in the state store (records of kind `owner-digest`, key `<day>#<owner>`) before it goes
out, so a second run the same day does not send it again; a failed send gives the claim back (the next run
tries again) and every send is journaled (action `owner-digest`, done or failed).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from ..config import Config, OwnerNotifyConfig, contact_kind
from ..errors import FleetwardenError
from ..model import ActionOutcome, ActionResult, Delivery, FindingStatus, JournalEntry, RunReport
from ..sinks import Notification, build_sink, deliver
from ..state import VersionConflict
from .resolve import UNKNOWN

if TYPE_CHECKING:
    from ..workflows.base import RunContext

log = logging.getLogger(__name__)

PERMISSIONS = ("iam:ListUserTags",)
KIND = "owner-digest"
FALLBACK = "(no contact)"
TEMPLATE = "owner_digest.txt.j2"
SUBJECT_TEMPLATE = "owner_digest_subject.txt.j2"
# `{user}` of the address rule: a plain user name only (no session ids with slashes, no addresses).
_RULE_USER = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_PAST = {"stop": "stopped", "terminate": "terminated"}
_SEND_ERRORS = (ClientError, BotoCoreError, FleetwardenError, OSError)


@dataclass(frozen=True)
class Contact:
    kind: Literal["email", "slack"]
    address: str
    source: str  # config, iam-tag, rule

    def __str__(self) -> str:
        return f"{self.kind} {self.address}"


@dataclass
class Digest:
    """One owner's open tag findings, with what happened to each instance, and where the digest goes."""

    owner: str
    owner_source: str
    items: list[dict[str, Any]] = field(default_factory=list)
    contact: Contact | None = None
    why_no_contact: str = ""


def action_text(configured: str, result: ActionResult | None) -> tuple[str, str]:
    """(outcome, text) for one instance, from this run's ActionResult: never claims what did not happen."""
    if result is None:
        if configured == "report":
            return "none", "none: the audit only reports (audit.action: report)"
        return "none", "none by this run"
    if result.action == "notice":  # audit.notice_days: the instance is marked; the action waits for the date
        if result.outcome is ActionOutcome.DONE:
            return "notice", result.reason.removeprefix("notice: ")
        if result.outcome is ActionOutcome.PLANNED:
            planned = result.reason.removeprefix("dry run: ")
            return "planned", f"will be marked when the audit runs with --apply ({planned})"
        return "failed", f"the notice could not be given, so nothing will be done yet: {result.reason}"
    past = _PAST.get(result.action, result.action)
    if result.outcome is ActionOutcome.DONE:
        return "done", f"{past} by this run"
    if result.outcome is ActionOutcome.PLANNED:
        if result.reason.startswith("dry run"):
            return "planned", f"will be {past} when the audit runs with --apply, unless it is tagged first"
        return "planned", f"would be {past}, but nothing was done: {result.reason}"
    if result.outcome is ActionOutcome.SKIPPED:
        return "skipped", f"not {past}: {result.reason}"
    return "failed", f"{result.action} failed, the instance was not {past}: {result.reason}"


def build_digests(config: Config, report: RunReport) -> list[Digest]:
    """The run's open tag findings grouped by owner, each item with what was or will be done."""
    # The configured action's result wins over a notice mark of the same instance (a waiting stop says until when).
    results = {(a.account_id, a.region, a.resource_id): a for a in report.actions if a.action == "notice"}
    results |= {(a.account_id, a.region, a.resource_id): a for a in report.actions if a.action != "notice"}
    names = {a.id: a.name for a in config.accounts if a.name}
    digests: dict[str, Digest] = {}
    for finding in report.findings:
        if finding.check != "tags" or finding.status not in (FindingStatus.NEW, FindingStatus.ONGOING):
            continue
        details = finding.details
        if "owner" not in details:
            continue
        owner = str(details["owner"])
        digest = digests.setdefault(owner, Digest(owner, str(details.get("owner_source", UNKNOWN))))
        outcome, text = action_text(
            config.audit.action, results.get((finding.account_id, finding.region, finding.resource_id))
        )
        digest.items.append(
            {
                "instance_id": finding.resource_id,
                "account_id": finding.account_id,
                "account_name": names.get(finding.account_id, ""),
                "region": finding.region,
                "state": details.get("state", ""),
                "instance_type": details.get("instance_type", ""),
                "severity": finding.severity.value,
                "status": finding.status.value,
                "title": finding.title,
                "missing": list(details.get("missing") or []),
                "invalid": dict(details.get("invalid") or {}),
                "first_seen": finding.first_seen.isoformat(),
                "launch_time": details.get("launch_time", ""),
                "owner": owner,
                "owner_source": details.get("owner_source", UNKNOWN),
                "owner_type": details.get("owner_type", ""),
                "owner_role": details.get("owner_role"),
                "owner_reason": details.get("owner_reason", ""),
                "outcome": outcome,
                "action_text": text,
            }
        )
    for digest in digests.values():
        digest.items.sort(key=lambda i: (i["account_id"], i["region"], i["instance_id"]))
    return [digests[k] for k in sorted(digests)]


class ContactFinder:
    """An owner's contact: the config's map, the IAM user's tag, then the address rule (first match wins)."""

    def __init__(self, notify: OwnerNotifyConfig, list_user_tags: Callable[[str, str], dict[str, str]]) -> None:
        self.notify = notify
        self._list_user_tags = list_user_tags
        self._tags: dict[tuple[str, str], dict[str, str] | str] = {}

    def find(self, digest: Digest) -> tuple[Contact | None, str]:
        notify, owner = self.notify, digest.owner
        if owner == UNKNOWN:
            return None, "the owner is unknown"
        first = digest.items[0]
        role = first.get("owner_role")
        for key in (owner, role):
            if key and key in notify.contacts:
                return self._usable(notify.contacts[key], "config")
        problems: list[str] = []
        if notify.contact_tag and first.get("owner_type") == "IAMUser":
            for account_id in dict.fromkeys(i["account_id"] for i in digest.items):
                tags = self._user_tags(account_id, owner)
                if isinstance(tags, str):
                    problems.append(f"tags of IAM user {owner} in {account_id}: {tags}")
                    continue
                value = tags.get(notify.contact_tag, "").strip()
                if value:
                    return self._usable(value, "iam-tag")
        if notify.address_rule and first.get("owner_type") in ("IAMUser", "FederatedUser", "AssumedRole"):
            user = owner.split("/", 1)[1] if role and "/" in owner else owner
            if _RULE_USER.fullmatch(user):
                address = notify.address_rule.replace("{user}", user).replace("{role}", str(role or ""))
                if contact_kind(address) == "email":
                    return self._usable(address, "rule")
        problems.append("no contact in audit.owners.notify.contacts, the IAM user's tag or the address rule")
        return None, "; ".join(problems)

    def _usable(self, value: str, source: str) -> tuple[Contact | None, str]:
        kind = contact_kind(value)
        if kind is None:
            return None, f"the contact {value!r} ({source}) is neither an email address nor a Slack user id"
        sink = self.notify.email_sink if kind == "email" else self.notify.slack_sink
        if sink is None:
            return None, f"the contact is {kind} {value}, but audit.owners.notify.{kind}_sink is not set"
        address = value.removeprefix("slack:")
        return Contact(kind, address, source), ""

    def _user_tags(self, account_id: str, user: str) -> dict[str, str] | str:
        key = (account_id, user)
        if key not in self._tags:
            try:
                self._tags[key] = self._list_user_tags(account_id, user)
            except ClientError as exc:
                self._tags[key] = str(exc.response.get("Error", {}).get("Code", "error"))
            except BotoCoreError as exc:
                self._tags[key] = type(exc).__name__
        return self._tags[key]


def list_user_tags(ctx: RunContext) -> Callable[[str, str], dict[str, str]]:
    def read(account_id: str, user: str) -> dict[str, str]:
        iam = ctx.factory.client("iam", region=ctx.config.aws.sts_region, account_id=account_id)
        tags: dict[str, str] = {}
        for page in iam.get_paginator("list_user_tags").paginate(UserName=user):
            tags.update({t["Key"]: t.get("Value", "") for t in page.get("Tags", [])})
        return tags

    return read


def templates(notify: OwnerNotifyConfig) -> Any:
    """The Jinja environment: `templates_dir` first (a user's override, file by file), then the shipped ones."""
    from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    loaders: list[Any] = []
    if notify.templates_dir:
        directory = Path(notify.templates_dir)
        if not directory.is_dir():
            raise FleetwardenError(f"audit.owners.notify.templates_dir {notify.templates_dir!r} is not a directory")
        loaders.append(FileSystemLoader(str(directory)))
    loaders.append(PackageLoader("fleetwarden.owners", "templates"))
    # Plain text (no HTML escaping); sandboxed, since a template may come from anyone who can edit the config.
    return SandboxedEnvironment(
        loader=ChoiceLoader(loaders), undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def render(env: Any, context: dict[str, Any]) -> Notification:
    subject = " ".join(env.get_template(SUBJECT_TEMPLATE).render(**context).split())
    text = env.get_template(TEMPLATE).render(**context)
    return Notification(subject=subject, text=re.sub(r"\n{3,}", "\n\n", text).strip() + "\n")


def notify_owners(ctx: RunContext, report: RunReport, apply: bool) -> list[Delivery]:
    """Send (with apply) or list (dry run) the owner digests of an audit run; see the module's docstring."""
    notify = ctx.config.audit.owners.notify
    if notify is None:
        return []
    digests = build_digests(ctx.config, report)
    if not digests:
        report.summary["owner_digests"] = []
        return []
    env = templates(notify)
    finder = ContactFinder(notify, list_user_tags(ctx))
    day = report.started_at.date().isoformat()
    base = {
        "day": day,
        "run_id": report.run_id,
        "dry_run": report.dry_run,
        "action": ctx.config.audit.action,
        "required_tags": list(ctx.config.audit.required_tags),
    }
    deliveries: list[Delivery] = []
    listed: list[dict[str, Any]] = []
    orphans: list[Digest] = []
    for digest in digests:
        digest.contact, digest.why_no_contact = finder.find(digest)
        if digest.contact is None:
            orphans.append(digest)
            listed.append(
                {"owner": digest.owner, "instances": len(digest.items), "contact": None, "why": digest.why_no_contact}
            )
            continue
        context = {
            **base,
            "owner": digest.owner,
            "contact": str(digest.contact),
            "fallback": False,
            "groups": [_group(digest)],
            "items": digest.items,
        }
        notification = render(env, context)
        label = f"owner {digest.owner} ({digest.contact})"
        delivery = _send_once(
            ctx,
            report,
            apply,
            day,
            digest.owner,
            label,
            digest,
            partial(_send_to_owner, ctx, notify, digest, notification, report),
        )
        deliveries.append(delivery)
        listed.append(
            {
                "owner": digest.owner,
                "instances": len(digest.items),
                "contact": str(digest.contact),
                "contact_source": digest.contact.source,
                "outcome": delivery.outcome,
            }
        )
    if orphans:
        items = [i for d in orphans for i in d.items]
        context = {
            **base,
            "owner": FALLBACK,
            "contact": "",
            "fallback": True,
            "groups": [_group(d) for d in orphans],
            "items": items,
        }
        notification = render(env, context)
        if notify.fallback:
            label = f"owners without a contact ({', '.join(notify.fallback)})"
            fallback_digest = Digest(FALLBACK, UNKNOWN, items)
            deliveries.append(
                _send_once(
                    ctx,
                    report,
                    apply,
                    day,
                    FALLBACK,
                    label,
                    fallback_digest,
                    partial(_send_fallback, ctx, notify, notification, report),
                )
            )
        else:
            log.warning("%d owner(s) without a contact and no audit.owners.notify.fallback sink", len(orphans))
    report.summary["owner_digests"] = listed
    return deliveries


def _group(digest: Digest) -> dict[str, Any]:
    return {
        "owner": digest.owner,
        "owner_source": digest.owner_source,
        "items": digest.items,
        "why_no_contact": digest.why_no_contact,
    }


def _send_to_owner(
    ctx: RunContext, notify: OwnerNotifyConfig, digest: Digest, notification: Notification, report: RunReport
) -> None:
    contact = digest.contact
    assert contact is not None
    if contact.kind == "email":
        assert notify.email_sink is not None
        sink = build_sink(notify.email_sink, ctx.config.sinks[notify.email_sink], ctx.sink_context)
        from ..sinks.email import EmailSink

        assert isinstance(sink, EmailSink)
        sink.config = sink.settings.model_copy(update={"to": [contact.address]})
        sink.send(notification, report)
        return
    assert notify.slack_sink is not None
    from ..sinks.slack import SlackSink

    slack = build_sink(notify.slack_sink, ctx.config.sinks[notify.slack_sink], ctx.sink_context)
    assert isinstance(slack, SlackSink)
    slack.send_direct(contact.address, notification, report)


def _send_fallback(ctx: RunContext, notify: OwnerNotifyConfig, notification: Notification, report: RunReport) -> None:
    outcome = deliver(notify.fallback, ctx.config.sinks, notification, report, ctx.sink_context)
    failed = [f"{d.sink}: {d.error}" for d in outcome if d.outcome == "failed"]
    if len(failed) == len(outcome):
        raise FleetwardenError("; ".join(failed))
    if failed:
        log.warning("owner digest fallback: some sinks failed: %s", "; ".join(failed))


def _send_once(
    ctx: RunContext,
    report: RunReport,
    apply: bool,
    day: str,
    owner: str,
    label: str,
    digest: Digest,
    send: Callable[[], None],
) -> Delivery:
    """Send one digest unless it went out already this run-day: claim, send, journal (give the claim back on
    failure)."""
    if not apply:
        return Delivery(
            sink=label, outcome="skipped", error=f"dry run: would send {len(digest.items)} instance(s); --apply sends"
        )
    key = f"{day}#{owner}"
    store = ctx.store
    existing = store.get_record(KIND, key)
    if existing is not None:
        return Delivery(
            sink=label, outcome="skipped", error=f"already sent on {day} (run {existing[0].get('run_id', '?')})"
        )
    claim = {"run_id": report.run_id, "sent_at": ctx.clock().isoformat(), "instances": len(digest.items)}
    try:
        store.put_record(KIND, key, claim, expected_version=None)
    except VersionConflict:
        return Delivery(sink=label, outcome="skipped", error=f"another run is sending it ({day})")
    error: str | None = None
    try:
        send()
    except _SEND_ERRORS as exc:
        from ..aws.targets import error_text

        error = ctx.secrets.redact(error_text(exc))
        # Give the claim back: the next run tries again.
        store.delete_record(KIND, key)
        log.warning("owner digest to %s failed: %s (the next run tries again)", label, error)
    _journal(ctx, report, day, owner, label, digest, error)
    if error is not None:
        return Delivery(sink=label, outcome="failed", error=error)
    return Delivery(sink=label, outcome="sent")


def _journal(
    ctx: RunContext, report: RunReport, day: str, owner: str, label: str, digest: Digest, error: str | None
) -> None:
    accounts = sorted({i["account_id"] for i in digest.items})
    ident = hashlib.sha256(f"{report.run_id}|{day}|{owner}".encode()).hexdigest()[:24]
    ctx.store.journal(
        JournalEntry(
            id=f"owner-digest-{ident}",
            run_id=report.run_id,
            workflow="audit",
            account_id=accounts[0] if len(accounts) == 1 else "multiple",
            region="global",
            resource_id=f"owner:{owner}",
            action="owner-digest",
            outcome=ActionOutcome.FAILED if error else ActionOutcome.DONE,
            at=ctx.clock(),
            after={
                "to": label,
                "day": day,
                "accounts": accounts,
                "instances": [i["instance_id"] for i in digest.items],
            },
            error=error,
        )
    )
