"""SNS sink: publishes the notification's subject and text to a topic."""

from __future__ import annotations

import re

from pydantic import field_validator

from ..model import RunReport
from .base import Notification, Sink, SinkConfig, sink_registry

TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):[\w-]+$")
SNS_SUBJECT_MAX = 100  # SNS rejects longer subjects
SNS_MESSAGE_MAX = 256 * 1024


class SnsSinkConfig(SinkConfig):
    topic_arn: str

    @field_validator("topic_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not TOPIC_ARN.match(value):
            raise ValueError(f"not an SNS topic ARN: {value!r}")
        return value


@sink_registry.register("sns")
class SnsSink(Sink):
    """Publish a summary to an SNS topic (email, SQS, chat integrations subscribe to it)."""

    type_name = "sns"
    config_model = SnsSinkConfig
    permissions = ("sns:Publish",)

    def send(self, notification: Notification, report: RunReport) -> None:
        assert isinstance(self.config, SnsSinkConfig)
        match = TOPIC_ARN.match(self.config.topic_arn)
        assert match is not None
        region = match.group(1)
        client = self.context.factory.client("sns", region=region)
        subject = " ".join(notification.subject.split())[:SNS_SUBJECT_MAX]
        message = notification.text.encode("utf-8")[:SNS_MESSAGE_MAX].decode("utf-8", "ignore")
        client.publish(TopicArn=self.config.topic_arn, Subject=subject, Message=message)
