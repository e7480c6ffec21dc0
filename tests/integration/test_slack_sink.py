"""The Slack sink against a loopback Slack Web API: the Block Kit message, the external-upload flow with the
exact file bytes, errors as failed Deliveries without the token, and tokens from env: and from SSM."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError
from slack_fake import CHANNEL, POSTED_TS, TOKEN, FakeSlack

from fleetwarden.aws.session import SessionFactory
from fleetwarden.output import findings_csv, summary_subject, summary_text
from fleetwarden.secrets import SecretResolver
from fleetwarden.sinks import Attachment, Notification, SinkContext, build_sink, deliver
from fleetwarden.sinks.slack import MAX_SECTIONS, SlackSink, SlackSinkConfig, message_blocks, text_sections
from sample_reports import make_report


def _sink_config(slack: FakeSlack, token: str = "env:FLEETWARDEN_SLACK_TOKEN", **extra: Any) -> dict[str, Any]:
    return {"type": "slack", "channel": CHANNEL, "token": token, "api_url": f"{slack.url}/api/", **extra}


def _env_context() -> SinkContext:
    # env: references need no AWS: the factory is never asked for a client.
    return SinkContext(SessionFactory(run_id="test"), SecretResolver(None))


def _notification(attach: bool = True) -> tuple[Notification, bytes]:
    report = make_report()
    csv = findings_csv(report.findings)
    attachments = [Attachment("findings.csv", csv)] if attach else []
    return Notification(summary_subject(report), summary_text(report), attachments), csv


def test_posts_a_block_kit_message_and_uploads_the_exact_csv(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    notification, csv = _notification()
    report = make_report()

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, notification, report, context)

    assert [(d.sink, d.outcome, d.error) for d in deliveries] == [("chat", "sent", None)]
    assert [r.method for r in slack.requests] == [
        "chat.postMessage",
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    for request in slack.requests:
        if request.method != "upload":
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
            assert request.path == f"/api/{request.method}"

    posted = slack.calls("chat.postMessage")[0].params
    assert posted["channel"] == CHANNEL
    assert posted["text"] == notification.subject
    blocks = posted["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "context"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": notification.subject}
    section = blocks[1]["text"]
    assert section["type"] == "mrkdwn" and section["text"].startswith("```") and section["text"].endswith("```")
    assert "i-0new0000000000002: missing: department, project" in section["text"]
    # mrkdwn control characters from tag values are escaped, so they cannot form links or mentions.
    assert "&lt;script&gt;" in section["text"] and "<script>" not in section["text"]
    context_text = blocks[2]["elements"][0]["text"]
    assert report.run_id in context_text and "dry run" in context_text and "findings.csv" in context_text

    url_request = slack.calls("files.getUploadURLExternal")[0].params
    assert url_request["filename"] == "findings.csv"
    assert int(url_request["length"]) == len(csv)
    assert list(slack.uploads.values()) == [csv]  # the exact bytes, byte for byte
    completed = slack.calls("files.completeUploadExternal")[0].params
    assert json.loads(completed["files"]) == [{"id": next(iter(slack.uploads)), "title": "findings.csv"}]
    assert completed["channel_id"] == CHANNEL
    assert "thread_ts" not in completed
    assert not slack.calls("files.upload")  # never the retired upload method


def test_token_from_an_ssm_securestring_and_files_in_the_thread(slack: FakeSlack, factory: SessionFactory) -> None:
    factory.client("ssm", region="us-east-1").put_parameter(
        Name="/fleetwarden/slack-token", Value=TOKEN, Type="SecureString"
    )
    context = SinkContext(factory, SecretResolver(factory, region="us-east-1"))
    notification, csv = _notification()
    config = _sink_config(slack, token="ssm:/fleetwarden/slack-token", files_in_thread=True)

    deliveries = deliver(["chat"], {"chat": config}, notification, make_report(), context)

    assert [(d.outcome, d.error) for d in deliveries] == [("sent", None)]
    assert slack.calls("chat.postMessage")[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert list(slack.uploads.values()) == [csv]
    completed = slack.calls("files.completeUploadExternal")[0].params
    assert completed["thread_ts"] == POSTED_TS and completed["channel_id"] == CHANNEL


def test_several_attachments_share_one_completion(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    files = [Attachment("new.csv", b"id\r\n1\r\n"), Attachment("resolved.csv", "id\r\né\r\n".encode())]
    notification = Notification("compliance drift", "2 new, 1 resolved", files)

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, notification, make_report(), context)

    assert deliveries[0].outcome == "sent"
    assert sorted(slack.uploads.values()) == sorted(a.content for a in files)
    completions = slack.calls("files.completeUploadExternal")
    assert len(completions) == 1
    assert [f["title"] for f in json.loads(completions[0].params["files"])] == ["new.csv", "resolved.csv"]


def test_a_message_without_attachments_uploads_nothing(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    notification, _ = _notification(attach=False)

    build_sink("chat", _sink_config(slack), context).send(notification, make_report())

    assert [r.method for r in slack.requests] == ["chat.postMessage"]


def test_a_slack_error_is_a_failed_delivery_with_the_code_and_without_the_token(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    slack.fail["chat.postMessage"] = "channel_not_found"
    notification, _ = _notification()

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, notification, make_report(), context)

    assert [(d.sink, d.outcome) for d in deliveries] == [("chat", "failed")]
    error = deliveries[0].error or ""
    assert "chat.postMessage" in error and "channel_not_found" in error
    assert TOKEN not in error
    assert slack.uploads == {} and not slack.calls("files.getUploadURLExternal")


def test_an_upload_error_names_the_upload_method(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    slack.fail["files.completeUploadExternal"] = "not_in_channel"
    notification, _ = _notification()

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, notification, make_report(), context)

    assert deliveries[0].outcome == "failed"
    assert "Slack files.completeUploadExternal: not_in_channel" in (deliveries[0].error or "")


def test_a_wrong_token_is_refused_and_not_echoed(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", "xoxb-wrong-token-value")
    context = _env_context()

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, _notification()[0], make_report(), context)

    assert deliveries[0].outcome == "failed"
    error = deliveries[0].error or ""
    assert "invalid_auth" in error and "xoxb-wrong-token-value" not in error


def test_an_unreachable_api_is_a_failed_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    context = _env_context()
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    config = {"type": "slack", "channel": CHANNEL, "token": "env:FLEETWARDEN_SLACK_TOKEN"}
    config["api_url"] = f"http://127.0.0.1:{port}/api/"

    deliveries = deliver(["chat"], {"chat": config}, _notification()[0], make_report(), context)

    assert deliveries[0].outcome == "failed"
    assert "connection_error" in (deliveries[0].error or "") and TOKEN not in (deliveries[0].error or "")


# -- rate limits (issue 8, defect 14) -----------------------------------------------------------------------
def test_a_rate_limited_call_is_retried_after_retry_after(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    slack.rate_limited = {"chat.postMessage": 1, "files.getUploadURLExternal": 1}
    slack.retry_after = "1"
    notification, csv = _notification()

    deliveries = deliver(["chat"], {"chat": _sink_config(slack)}, notification, make_report(), _env_context())

    assert [(d.outcome, d.error) for d in deliveries] == [("sent", None)]
    assert [r.method for r in slack.requests] == [
        "chat.postMessage",  # 429
        "chat.postMessage",
        "files.getUploadURLExternal",  # 429
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    posts = slack.calls("chat.postMessage")
    assert posts[1].params == posts[0].params  # the same message, retried
    assert posts[1].at - posts[0].at >= 1.0  # after the Retry-After Slack asked for
    urls = slack.calls("files.getUploadURLExternal")
    assert urls[1].at - urls[0].at >= 1.0
    assert list(slack.uploads.values()) == [csv]


def test_rate_limited_forever_fails_after_the_bounded_retries(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    slack.rate_limited = {"chat.postMessage": -1}
    config = _sink_config(slack, rate_limit_retries=2)

    deliveries = deliver(["chat"], {"chat": config}, _notification()[0], make_report(), _env_context())

    assert [d.outcome for d in deliveries] == ["failed"]
    assert deliveries[0].error == (
        "SlackError: Slack chat.postMessage: ratelimited"
        " (HTTP 429, still rate limited after 2 retries (Retry-After 0 s))"
    )
    assert [r.method for r in slack.requests] == ["chat.postMessage"] * 3  # the first try and two retries
    assert slack.uploads == {}


def test_a_retry_after_longer_than_the_limit_fails_at_once(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARDEN_SLACK_TOKEN", TOKEN)
    slack.rate_limited = {"chat.postMessage": 1}
    slack.retry_after = "120"
    config = _sink_config(slack, rate_limit_max_wait_seconds=5)

    deliveries = deliver(["chat"], {"chat": config}, _notification()[0], make_report(), _env_context())

    assert [d.outcome for d in deliveries] == ["failed"]
    assert "ratelimited (HTTP 429, Retry-After 120 s is longer than rate_limit_max_wait_seconds (5): not retried)" in (
        deliveries[0].error or ""
    )
    assert [r.method for r in slack.requests] == ["chat.postMessage"]  # no sleep, no retry


def test_connection_errors_are_still_retried() -> None:
    from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

    sink = build_sink("chat", {"type": "slack", "channel": CHANNEL, "token": "env:T"}, _env_context())
    assert isinstance(sink, SlackSink)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T", TOKEN)
        handlers = sink._client().retry_handlers
    assert len(handlers) == 2
    assert isinstance(handlers[0], ConnectionErrorRetryHandler)
    assert isinstance(handlers[1], RateLimitErrorRetryHandler) and handlers[1].max_retry_count == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channel": "#fleet-alerts"}, "use the channel ID"),
        ({"channel": "fleet-alerts"}, "not a Slack channel ID"),
        ({"token": "xoxb-literal-token"}, "secrets must be references"),
        ({"api_url": "http://slack.example.com/api/"}, "https://"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_config_is_checked_before_any_call(changes: dict[str, str], message: str) -> None:
    raw = {"type": "slack", "channel": CHANNEL, "token": "ssm:/fleetwarden/slack-token", **changes}
    with pytest.raises(ValidationError, match=message):
        SlackSinkConfig.model_validate(raw)


def test_config_defaults_and_declared_permissions() -> None:
    cfg = SlackSinkConfig.model_validate({"type": "slack", "channel": "G0123ABCDE", "token": "env:T"})
    assert cfg.api_url == "https://slack.com/api/"
    assert SlackSinkConfig.model_validate({**cfg.model_dump(), "api_url": "https://chat.example/api"}).api_url == (
        "https://chat.example/api/"
    )
    assert set(SlackSink.permissions) == {"ssm:GetParameter", "secretsmanager:GetSecretValue"}


def test_long_text_is_split_into_sections_and_capped() -> None:
    line = "x" * 100
    text = "\n".join([line] * 100)  # 10,100 characters
    sections = text_sections(text, limit=2900)
    assert len(sections) == 4 and all(len(s) <= 2900 for s in sections)
    assert "\n".join(sections) == text  # cut between lines, nothing lost
    assert text_sections("&" * 10, limit=12) == ["&amp;&amp;", "&amp;&amp;", "&amp;&amp;", "&amp;&amp;", "&amp;&amp;"]

    huge = Notification("s" * 400, "\n".join([line] * 5000))
    blocks = message_blocks(huge, make_report())
    assert len(blocks) == MAX_SECTIONS + 2 <= 50
    assert len(blocks[0]["text"]["text"]) <= 150
    assert "truncated" in blocks[-2]["text"]["text"]
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks[1:-1])
