"""The SNS sink against the emulator: the summary reaches a subscribed SQS queue; failures become Deliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.stub import Stubber

from fleetwarden.aws.session import SessionFactory
from fleetwarden.output import summary_subject, summary_text
from fleetwarden.secrets import REDACTED, SecretResolver
from fleetwarden.sinks import Notification, SinkContext, build_sink, deliver
from fleetwarden.sinks.sns import SnsSink
from sample_reports import make_report

REGION = "eu-west-1"


@dataclass
class Topic:
    arn: str
    raw_queue: str  # subscribed with RawMessageDelivery=true: the body is the message itself
    envelope_queue: str  # subscribed without: the body is SNS's JSON envelope (carries the Subject)


def _subscribe(factory: SessionFactory, topic_arn: str, queue: str, raw: bool) -> str:
    sqs = factory.client("sqs", region=REGION)
    url = str(sqs.create_queue(QueueName=queue)["QueueUrl"])
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    factory.client("sns", region=REGION).subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true" if raw else "false"},
    )
    return url


def _messages(factory: SessionFactory, queue_url: str) -> list[str]:
    sqs = factory.client("sqs", region=REGION)
    response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [str(m["Body"]) for m in response.get("Messages", [])]


@pytest.fixture
def topic(factory: SessionFactory) -> Topic:
    arn = str(factory.client("sns", region=REGION).create_topic(Name="fleetwarden-alerts")["TopicArn"])
    return Topic(arn, _subscribe(factory, arn, "raw", True), _subscribe(factory, arn, "envelope", False))


@pytest.fixture
def context(factory: SessionFactory) -> SinkContext:
    return SinkContext(factory, SecretResolver(factory, region=REGION))


def _notification() -> Notification:
    report = make_report()
    return Notification(subject=summary_subject(report), text=summary_text(report))


def test_build_sink_makes_an_sns_sink(topic: Topic, context: SinkContext) -> None:
    sink = build_sink("ops", {"type": "sns", "topic_arn": topic.arn}, context)
    assert isinstance(sink, SnsSink)
    assert sink.name == "ops" and sink.permissions == ("sns:Publish",)


def test_sns_sink_publishes_the_summary(topic: Topic, context: SinkContext, factory: SessionFactory) -> None:
    notification = _notification()
    sinks = {"ops": {"type": "sns", "topic_arn": topic.arn}}

    deliveries = deliver(["ops"], sinks, notification, make_report(), context)

    assert [(d.sink, d.outcome, d.error) for d in deliveries] == [("ops", "sent", None)]
    assert _messages(factory, topic.raw_queue) == [notification.text]
    envelope = json.loads(_messages(factory, topic.envelope_queue)[0])
    assert envelope["Subject"] == notification.subject
    assert envelope["Message"] == notification.text
    assert "i-0new0000000000002: missing: department, project" in envelope["Message"]


def test_missing_topic_fails_and_the_other_sinks_still_deliver(
    topic: Topic, context: SinkContext, factory: SessionFactory
) -> None:
    gone = topic.arn.rsplit(":", 1)[0] + ":no-such-topic"
    sinks: dict[str, dict[str, Any]] = {
        "gone": {"type": "sns", "topic_arn": gone},
        "ops": {"type": "sns", "topic_arn": topic.arn},
    }
    notification = _notification()

    deliveries = deliver(["gone", "ops"], sinks, notification, make_report(), context)

    assert [(d.sink, d.outcome) for d in deliveries] == [("gone", "failed"), ("ops", "sent")]
    assert deliveries[0].error is not None and "NotFound" in deliveries[0].error
    assert deliveries[1].error is None
    assert _messages(factory, topic.raw_queue) == [notification.text]


def test_a_resolved_secret_is_redacted_from_a_failure(
    topic: Topic, context: SinkContext, factory: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "xoxb-4242-very-secret-token"
    monkeypatch.setenv("FLEETWARDEN_TEST_TOKEN", secret)
    assert context.secrets.resolve("env:FLEETWARDEN_TEST_TOKEN") == secret
    # moto never echoes request values in its errors, so this one error shape comes from a Stubber on the
    # very client (cached by the factory) that the sink will use.
    client = factory.client("sns", region=REGION)
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "publish",
            service_error_code="AuthorizationError",
            service_message=f"User is not authorized (token {secret})",
            http_status_code=403,
        )
        deliveries = deliver(
            ["ops"], {"ops": {"type": "sns", "topic_arn": topic.arn}}, _notification(), make_report(), context
        )
        stubber.assert_no_pending_responses()

    assert [(d.sink, d.outcome) for d in deliveries] == [("ops", "failed")]
    error = deliveries[0].error or ""
    assert secret not in error
    assert f"AuthorizationError: User is not authorized (token {REDACTED})" in error
    assert _messages(factory, topic.raw_queue) == []
