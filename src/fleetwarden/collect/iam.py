"""IAM users per account (paginated), fetched once per account however many regions ask."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..model import IamUser

PERMISSIONS = ("iam:ListUsers",)


def list_users(client: Any, account_id: str) -> list[IamUser]:
    users = []
    for page in client.get_paginator("list_users").paginate():
        for raw in page.get("Users", []):
            users.append(IamUser(account_id=account_id, name=raw["UserName"], arn=raw["Arn"], user_id=raw["UserId"]))
    return users


class PerAccount:
    """Computes a value once per account, shared by concurrent callers (the first one does the work)."""

    def __init__(self, compute: Callable[[str], Any]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._futures: dict[str, Future[Any]] = {}

    def get(self, account_id: str) -> Any:
        with self._lock:
            future = self._futures.get(account_id)
            owner = future is None
            if future is None:
                future = self._futures[account_id] = Future()
        if owner:
            try:
                future.set_result(self._compute(account_id))
            except BaseException as exc:  # noqa: BLE001 - propagated to every waiter for this account, then re-raised
                future.set_exception(exc)
        return future.result()
