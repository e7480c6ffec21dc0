"""Slack sink: a Block Kit message through the Web API, with attachments uploaded by Slack's current
external-upload flow (files.getUploadURLExternal, POST to the upload URL, files.completeUploadExternal)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..config import SecretRef
from ..errors import FleetwardenError
from ..model import RunReport
from .base import Notification, Sink, SinkConfig, sink_registry

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError
    from slack_sdk.http_retry import RetryHandler

CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
DEFAULT_API_URL = "https://slack.com/api/"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HEADER_MAX = 150  # Slack refuses longer header blocks
SECTION_MAX = 2900  # a section's text may hold 3,000 characters; the code fence takes six
MAX_SECTIONS = 40  # a message holds at most 50 blocks
TRUNCATED = "… (truncated: the full text is in the attached files or run.json)"


class SlackError(FleetwardenError):
    """A Slack Web API call failed; `code` is Slack's error code (e.g. `channel_not_found`) when it gave one."""

    def __init__(self, method: str, code: str, detail: str = "") -> None:
        self.method = method
        self.code = code
        super().__init__(f"Slack {method}: {code}" + (f" ({detail})" if detail else ""))


class SlackSinkConfig(SinkConfig):
    channel: str
    token: SecretRef  # a bot token (xoxb-...) by reference: ssm:/..., secretsmanager:..., env:...
    api_url: str = DEFAULT_API_URL
    files_in_thread: bool = False  # upload attachments as replies to the message instead of into the channel
    timeout_seconds: int = Field(default=30, ge=1, le=300)
    # HTTP 429: wait as long as Slack's Retry-After says and try again, at most this many times per call...
    rate_limit_retries: int = Field(default=3, ge=0, le=10)
    # ...unless Slack asks for a longer wait than this (then the delivery fails at once; an outbox retries later).
    rate_limit_max_wait_seconds: int = Field(default=30, ge=0, le=300)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if CHANNEL_ID.match(value):
            return value
        where = "in Slack, open the channel's details: the ID is at the bottom of the About tab"
        if value.startswith("#"):
            raise ValueError(f"use the channel ID (e.g. C0123ABCD), not the channel name {value!r}: {where}")
        raise ValueError(f"not a Slack channel ID: {value!r} (expected e.g. C0123ABCD; {where})")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        # The bot token travels in a header: only a loopback test server may be reached without TLS.
        secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)
        if not parts.hostname or not secure:
            raise ValueError(f"api_url must be an https:// URL (http:// only on loopback), got {value!r}")
        return value if value.endswith("/") else value + "/"


def mrkdwn_escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters (so `<!channel>` or
    `<https://x|label>` from a tag value or an item title is shown, never acted on)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unfence(text: str) -> str:
    # A run of three backticks in a value would close the code block the text is shown in; a zero-width
    # space between them keeps the block closed and reads the same.
    return text.replace("``", "`\u200b`")


def _split_escaped(line: str, limit: int) -> list[str]:
    """Cut an escaped line into pieces of at most `limit` characters, never inside an `&...;` entity."""
    pieces = []
    while len(line) > limit:
        cut = limit
        amp = line.rfind("&", max(0, cut - 4), cut)
        if amp != -1 and ";" not in line[amp:cut]:
            cut = amp
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def text_sections(text: str, limit: int = SECTION_MAX, max_sections: int = MAX_SECTIONS) -> list[str]:
    """The escaped text in chunks of whole lines (a longer line is cut) that each fit one section block."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for raw in text.rstrip("\n").splitlines():
        for piece in _split_escaped(mrkdwn_escape(_unfence(raw)), limit):
            if current and size + 1 + len(piece) > limit:
                chunks.append("\n".join(current))
                current, size = [], 0
            current.append(piece)
            size += len(piece) + (1 if size else 0)
    if current:
        chunks.append("\n".join(current))
    if len(chunks) > max_sections:
        chunks = chunks[:max_sections]
        last = chunks[-1]
        chunks[-1] = last[: limit - len(TRUNCATED) - 1].rstrip("&") + "\n" + TRUNCATED
    return chunks


def message_blocks(notification: Notification, report: RunReport) -> list[dict[str, Any]]:
    """The Block Kit message: a header (the subject), the text in code sections, and a context line."""
    subject = " ".join(notification.subject.split()) or "fleetwarden"
    if len(subject) > HEADER_MAX:
        subject = subject[: HEADER_MAX - 1].rstrip() + "…"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": subject}}]
    # verbatim: Slack does not turn bare URLs, #channel names or @here/@channel in the text into links or mentions.
    for chunk in text_sections(notification.text):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{chunk}```", "verbatim": True}})
    mode = "dry run" if report.dry_run else "applied"
    files = ", ".join(a.filename for a in notification.attachments)
    context = f"fleetwarden {report.workflow} · run {report.run_id} · {mode}" + (f" · files: {files}" if files else "")
    context_text = {"type": "mrkdwn", "text": mrkdwn_escape(context), "verbatim": True}
    blocks.append({"type": "context", "elements": [context_text]})
    return blocks


def fallback_text(notification: Notification) -> str:
    """The message's top-level `text` (notifications, screen readers): the subject on one line, escaped like mrkdwn
    because Slack parses `<!channel>` there too."""
    return mrkdwn_escape(" ".join(notification.subject.split()))


def retry_after_seconds(headers: Mapping[str, list[str] | str]) -> float | None:
    """Slack's Retry-After (seconds) from a 429 response's headers; None when absent or unreadable."""
    for name, values in headers.items():
        if name.lower() == "retry-after" and values:
            try:
                return max(0.0, float(values if isinstance(values, str) else values[0]))
            except ValueError:
                return None
    return None


def rate_limit_handler(max_retries: int, max_wait_seconds: int) -> RetryHandler:
    """slack_sdk's RateLimitErrorRetryHandler, bounded: at most `max_retries` retries per call, each after the
    Retry-After Slack sent (1 s if none) plus a little jitter; no retry when Slack asks for more than
    `max_wait_seconds`."""
    from slack_sdk.http_retry import RateLimitErrorRetryHandler
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    class BoundedRateLimitHandler(RateLimitErrorRetryHandler):
        def _can_retry(
            self,
            *,
            state: RetryState,
            request: HttpRequest,
            response: HttpResponse | None = None,
            error: Exception | None = None,
        ) -> bool:
            if response is None or response.status_code != 429:
                return False
            wait = retry_after_seconds(response.headers)
            return wait is None or wait <= max_wait_seconds

        def prepare_for_next_attempt(
            self,
            *,
            state: RetryState,
            request: HttpRequest,
            response: HttpResponse | None = None,
            error: Exception | None = None,
        ) -> None:
            wait = retry_after_seconds(response.headers) if response is not None else None
            state.next_attempt_requested = True
            # The jitter spreads out clients that were all told the same second.
            time.sleep((1.0 if wait is None else wait) + random.uniform(0, 0.25))
            state.increment_current_attempt()

    return BoundedRateLimitHandler(max_retry_count=max_retries)


@sink_registry.register("slack")
class SlackSink(Sink):
    """Post a Block Kit summary to a Slack channel (by ID) and upload the attachments (e.g. findings.csv)."""

    type_name = "slack"
    config_model = SlackSinkConfig
    # AWS permissions only: reading the bot token. The Slack app needs the scopes chat:write and files:write.
    permissions = ("ssm:GetParameter", "secretsmanager:GetSecretValue")

    @property
    def settings(self) -> SlackSinkConfig:
        assert isinstance(self.config, SlackSinkConfig)
        return self.config

    def _client(self) -> WebClient:
        from slack_sdk import WebClient
        from slack_sdk.http_retry import ConnectionErrorRetryHandler

        cfg = self.settings
        return WebClient(
            token=self.context.secrets.resolve(cfg.token),
            base_url=cfg.api_url,
            timeout=cfg.timeout_seconds,
            # The SDK's default is the connection-error handler alone: a 429 would fail the delivery at once.
            retry_handlers=[
                ConnectionErrorRetryHandler(),
                rate_limit_handler(cfg.rate_limit_retries, cfg.rate_limit_max_wait_seconds),
            ],
        )

    def send(self, notification: Notification, report: RunReport) -> None:
        self._send(self.settings.channel, notification, report)

    def send_direct(self, user_id: str, notification: Notification, report: RunReport) -> None:
        """Send the notification as a direct message to one Slack user (owner digests): `conversations.open` with
        the user id gives the direct-message channel, then the same message (and files) as `send`. Needs the
        bot scope `im:write` besides `chat:write`."""
        from slack_sdk.errors import SlackApiError, SlackClientError

        client = self._client()
        try:
            opened = client.conversations_open(users=user_id)
        except SlackApiError as exc:
            raise self._api_error(exc, "conversations.open") from None
        except SlackClientError as exc:
            raise SlackError("conversations.open", "client_error", self.context.secrets.redact(str(exc))) from None
        except OSError as exc:
            detail = self.context.secrets.redact(f"{type(exc).__name__}: {exc}")
            raise SlackError("conversations.open", "connection_error", detail) from None
        channel = (opened.get("channel") or {}).get("id")
        if not channel:
            raise SlackError("conversations.open", "no_channel", "the answer named no direct-message channel")
        self._send(str(channel), notification, report, client)

    def _send(
        self, channel: str, notification: Notification, report: RunReport, client: WebClient | None = None
    ) -> None:
        from slack_sdk.errors import SlackApiError, SlackClientError

        cfg = self.settings
        client = client or self._client()
        method = "chat.postMessage"
        try:
            posted = client.chat_postMessage(
                channel=channel,
                text=fallback_text(notification),
                blocks=message_blocks(notification, report),
                unfurl_links=False,
                unfurl_media=False,
            )
            if notification.attachments:
                method = "files.getUploadURLExternal"
                # files_upload_v2 is Slack's current flow: files.getUploadURLExternal per file, a POST of the
                # bytes to the returned upload URL, then one files.completeUploadExternal sharing them all.
                client.files_upload_v2(
                    file_uploads=[
                        {"content": a.content, "filename": a.filename, "title": a.filename}
                        for a in notification.attachments
                    ],
                    channel=channel,
                    thread_ts=posted.get("ts") if cfg.files_in_thread else None,
                )
        except SlackApiError as exc:
            raise self._api_error(exc, method) from None
        except SlackClientError as exc:  # the SDK refused a request or an upload answered with an error status
            raise SlackError(method, "client_error", self.context.secrets.redact(str(exc))) from None
        except OSError as exc:  # connection refused, DNS, TLS, timeouts, HTTP errors from the upload URL
            detail = self.context.secrets.redact(f"{type(exc).__name__}: {exc}")
            raise SlackError(method, "connection_error", detail) from None

    def _api_error(self, exc: SlackApiError, method: str) -> SlackError:
        response = exc.response
        api_url = str(getattr(response, "api_url", "") or "")
        if api_url:
            method = api_url.rstrip("/").rsplit("/", 1)[-1]
        status = getattr(response, "status_code", None)
        code = str(response.get("error") or f"http_{status or 'error'}")
        needed = response.get("needed")
        detail = f"needed scope: {needed}" if needed else ""
        if status == 429:
            cfg = self.settings
            wait = retry_after_seconds(getattr(response, "headers", None) or {})
            if wait is not None and wait > cfg.rate_limit_max_wait_seconds:
                detail = (
                    f"HTTP 429, Retry-After {wait:g} s is longer than rate_limit_max_wait_seconds"
                    f" ({cfg.rate_limit_max_wait_seconds}): not retried"
                )
            else:
                asked = f"Retry-After {wait:g} s" if wait is not None else "no Retry-After"
                detail = f"HTTP 429, still rate limited after {cfg.rate_limit_retries} retries ({asked})"
        return SlackError(method, self.context.secrets.redact(code), self.context.secrets.redact(detail))
