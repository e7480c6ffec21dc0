"""Sinks: named destinations for notifications and reports. Each is a small plugin with a config model
and the IAM permissions it needs; sinks never mutate the fleet."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..model import Delivery, RunReport
from ..registry import Registry

if TYPE_CHECKING:
    from ..aws.session import SessionFactory
    from ..secrets import SecretResolver

log = logging.getLogger(__name__)


class SinkConfig(BaseModel):
    """Base of every sink's config model: `type` plus the sink's own keys; unknown keys are errors."""

    # hide_input_in_errors: pydantic's own messages never show a mistyped token or password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: str


@dataclass
class Attachment:
    filename: str
    content: bytes
    content_type: str = "text/csv"


@dataclass
class Notification:
    """What a workflow wants to say: a subject, a plain-text body and optional files."""

    subject: str
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class SinkContext:
    """What a sink may use: the session factory (for AWS sinks) and the secret resolver."""

    factory: SessionFactory
    secrets: SecretResolver


class Sink(ABC):
    """A destination. Subclasses set `type_name`, `config_model`, `permissions` and implement `send`."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[SinkConfig]]
    permissions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: SinkConfig, context: SinkContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @abstractmethod
    def send(self, notification: Notification, report: RunReport) -> None:
        """Deliver; raise on failure (the caller records the delivery outcome)."""


sink_registry: Registry[type[Sink]] = Registry("sink type")


def build_sink(name: str, raw: dict[str, Any], context: SinkContext) -> Sink:
    plugin = sink_registry.get(str(raw.get("type")))
    return plugin(name, plugin.config_model.model_validate(raw), context)


def deliver(
    names: Iterable[str],
    sinks: dict[str, dict[str, Any]],
    notification: Notification,
    report: RunReport,
    context: SinkContext,
) -> list[Delivery]:
    """Send one notification to each named sink; each failure is recorded, the others still go out."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ..aws.targets import error_text
    from ..errors import FleetwardenError

    deliveries = []
    for name in names:
        try:
            build_sink(name, sinks[name], context).send(notification, report)
        except (ClientError, BotoCoreError, FleetwardenError, OSError) as exc:
            message = context.secrets.redact(error_text(exc))
            log.warning("delivery to sink %s failed: %s", name, message)
            deliveries.append(Delivery(sink=name, outcome="failed", error=message))
        else:
            deliveries.append(Delivery(sink=name, outcome="sent"))
    return deliveries
