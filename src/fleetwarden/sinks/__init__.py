"""The sinks registry; importing this package registers every built-in sink."""

from __future__ import annotations

from . import email, opensearch, s3, securityhub, slack, sns  # noqa: F401  (registers the plugins)
from .base import Attachment, Notification, Sink, SinkConfig, SinkContext, build_sink, deliver, sink_registry

__all__ = [
    "Attachment",
    "Notification",
    "Sink",
    "SinkConfig",
    "SinkContext",
    "build_sink",
    "deliver",
    "sink_registry",
]
