"""An outbox for alerts: an alert is stored before it is sent and removed only once every sink took it.

An alert that fails to deliver is retried on the next run, and the store never claims an alert went out when
it did not. (A crash between storing an alert and recording its findings can send it twice, never zero times.)
"""

from __future__ import annotations

import base64
from typing import Any

from .model import Delivery, RunReport
from .sinks import Attachment, Notification, SinkContext, deliver
from .state import StateStore, VersionConflict

KIND = "outbox"


def _encode(notification: Notification) -> dict[str, Any]:
    return {
        "subject": notification.subject,
        "text": notification.text,
        "attachments": [
            {"filename": a.filename, "content": base64.b64encode(a.content).decode(), "content_type": a.content_type}
            for a in notification.attachments
        ],
    }


def _decode(data: dict[str, Any]) -> Notification:
    return Notification(
        subject=data["subject"],
        text=data["text"],
        attachments=[
            Attachment(a["filename"], base64.b64decode(a["content"]), a["content_type"]) for a in data["attachments"]
        ],
    )


class Outbox:
    """Pending alerts in the state store, per workflow."""

    def __init__(self, store: StateStore, workflow: str) -> None:
        self.store = store
        self.workflow = workflow

    def enqueue(self, alert_id: str, sinks: list[str], notification: Notification, created_at: str) -> None:
        data = {
            "workflow": self.workflow,
            "sinks": sinks,
            "created_at": created_at,
            "attempts": 0,
            **_encode(notification),
        }
        self.store.put_record(KIND, alert_id, data, expected_version=None)

    def pending(self) -> list[tuple[str, dict[str, Any], int]]:
        return sorted(
            (r for r in self.store.list_records(KIND) if r[1].get("workflow") == self.workflow),
            key=lambda r: str(r[1].get("created_at")),
        )

    def flush(self, sinks: dict[str, dict[str, Any]], report: RunReport, context: SinkContext) -> list[Delivery]:
        """Try every pending alert (oldest first); keep what failed for the next run."""
        deliveries: list[Delivery] = []
        for alert_id, data, version in self.pending():
            names = [n for n in data["sinks"] if n in sinks]
            outcome = deliver(names, sinks, _decode(data), report, context)
            deliveries += [d.model_copy(update={"sink": f"{d.sink} (alert {alert_id})"}) for d in outcome]
            remaining = [d.sink for d in outcome if d.outcome == "failed"]
            try:
                if remaining:
                    data = {**data, "sinks": remaining, "attempts": int(data.get("attempts", 0)) + 1}
                    self.store.put_record(KIND, alert_id, data, expected_version=version)
                else:
                    self.store.delete_record(KIND, alert_id)
            except VersionConflict:
                continue  # another run handled it meanwhile
        return deliveries
