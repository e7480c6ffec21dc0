"""Who launched an instance, from CloudTrail's event history: the RunInstances event that created it.

`LookupEvents` is limited to 2 requests per second per account and region, and reads only the last 90 days. So
`find_launchers` makes as few calls as it can: one `ResourceName=<id>` lookup per instance when only a few need
it, otherwise one `EventName=RunInstances` walk (paginated, 50 events a page) from the earliest launch time,
stopping as soon as every instance is found. A per-target budget (calls and seconds) bounds it; what it does not
find is returned with the reason, never waited for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

PERMISSIONS = ("cloudtrail:LookupEvents",)
HISTORY = timedelta(days=90)  # CloudTrail's event history window
PAGE_SIZE = 50  # LookupEvents' maximum
# LookupEvents allows 2 requests per second per account and region: a target's calls are paced to that, so a
# burst of lookups is not throttled (botocore's retries remain for calls made by others at the same time).
MIN_INTERVAL_SECONDS = 0.5
BURST = 2
# A RunInstances event is recorded when the call is made, a moment before the instance's LaunchTime.
LAUNCH_SLACK = timedelta(minutes=15)


@dataclass(frozen=True)
class Launcher:
    """The principal that made a RunInstances call, as fleetwarden names it.

    `owner`: the IAM user's name, "ROLE/SESSION" of an assumed role, a federated user's name, "root", or the
    invoking service. `role` is set for an assumed role.
    """

    owner: str
    identity_type: str
    arn: str = ""
    role: str | None = None
    account_id: str = ""
    event_time: str = ""
    event_id: str = ""

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"owner_type": self.identity_type, "owner_arn": self.arn}
        if self.role:
            out["owner_role"] = self.role
        if self.event_id:
            out["owner_event"] = {"id": self.event_id, "time": self.event_time, "name": "RunInstances"}
        return out


def launcher_from_identity(identity: Mapping[str, Any]) -> Launcher | None:
    """A CloudTrail `userIdentity` as a Launcher; None when it names nobody usable."""
    kind = str(identity.get("type", ""))
    arn = str(identity.get("arn", ""))
    account = str(identity.get("accountId", ""))
    if kind == "IAMUser":
        name = str(identity.get("userName") or arn.rsplit("/", 1)[-1])
        return Launcher(name, kind, arn, account_id=account) if name else None
    if kind == "AssumedRole":
        # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION (a role path is not part of this ARN)
        _, _, resource = arn.partition(":assumed-role/")
        role, _, session = resource.partition("/")
        issuer = (identity.get("sessionContext") or {}).get("sessionIssuer") or {}
        role = role or str(issuer.get("userName", ""))
        if not role:
            return None
        return Launcher(f"{role}/{session}" if session else role, kind, arn, role=role, account_id=account)
    if kind == "FederatedUser":
        # arn:aws:sts::ACCOUNT:federated-user/NAME
        name = arn.rpartition(":federated-user/")[2] or str(identity.get("userName", ""))
        return Launcher(name, kind, arn, account_id=account) if name else None
    if kind == "Root":
        return Launcher("root", kind, arn, account_id=account)
    if kind == "AWSService" and identity.get("invokedBy"):
        return Launcher(str(identity["invokedBy"]), kind, arn, account_id=account)
    if kind in ("IdentityCenterUser", "WebIdentityUser", "SAMLUser") and identity.get("userName"):
        return Launcher(str(identity["userName"]), kind, arn, account_id=account)
    return None


def parse_event(event: Mapping[str, Any]) -> tuple[list[str], Launcher | None]:
    """The instance ids a LookupEvents item created and who created them."""
    try:
        record = json.loads(str(event.get("CloudTrailEvent") or "{}"))
    except ValueError:
        record = {}
    ids = [
        str(r["ResourceName"])
        for r in event.get("Resources") or []
        if r.get("ResourceType") == "AWS::EC2::Instance" and r.get("ResourceName")
    ]
    items = (((record.get("responseElements") or {}).get("instancesSet") or {}).get("items")) or []
    ids += [str(i["instanceId"]) for i in items if isinstance(i, dict) and i.get("instanceId")]
    launcher = launcher_from_identity(record.get("userIdentity") or {})
    if launcher is not None:
        when = event.get("EventTime")
        stamp = when.isoformat() if isinstance(when, datetime) else str(record.get("eventTime", ""))
        launcher = Launcher(
            launcher.owner,
            launcher.identity_type,
            launcher.arn,
            launcher.role,
            launcher.account_id,
            stamp,
            str(event.get("EventId", record.get("eventID", ""))),
        )
    return list(dict.fromkeys(ids)), launcher


class BudgetSpent(Exception):
    """The per-target call or time budget for LookupEvents is used up."""


@dataclass
class Budget:
    """How many LookupEvents calls, and how much time, one target may spend; keeps its calls within the API's rate
    (2 per second per account and region, as a bucket of 2: two calls at once, then one every 0.5 s)."""

    max_calls: int
    max_seconds: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    min_interval: float = MIN_INTERVAL_SECONDS
    burst: int = BURST
    calls: int = 0
    started: float | None = None
    recent: list[float] = field(default_factory=list)

    def spend(self) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
        if self.calls >= self.max_calls:
            raise BudgetSpent(f"the budget of {self.max_calls} LookupEvents call(s) for this target is spent")
        window = self.min_interval * self.burst  # the bucket refills `burst` calls in this long
        recent = [t for t in self.recent if t > now - window]
        wait = 0.0 if len(recent) < self.burst else max(0.0, recent[-self.burst] + window - now)
        if now + wait - self.started > self.max_seconds:
            raise BudgetSpent(f"the budget of {self.max_seconds:g} s of LookupEvents for this target is spent")
        if wait:
            self.sleep(wait)
        self.recent = [*recent[-(self.burst - 1) :], self.clock()] if self.burst > 1 else [self.clock()]
        self.calls += 1


def _pages(client: Any, budget: Budget, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """LookupEvents pages, one budgeted call each (botocore retries throttling inside a call)."""
    token: str | None = None
    while True:
        budget.spend()
        page: dict[str, Any] = client.lookup_events(
            MaxResults=PAGE_SIZE, **kwargs, **({"NextToken": token} if token else {})
        )
        yield page
        token = page.get("NextToken")
        if not token:
            return


def find_launchers(
    client: Any,
    launches: Mapping[str, datetime],
    now: datetime,
    budget: Budget,
    *,
    walk_over: int = 3,
) -> dict[str, Launcher]:
    """Who launched each instance (id -> its launch time), for those found in the event history.

    Up to `walk_over` instances: one ResourceName lookup each; more: one RunInstances walk from the earliest
    launch. Raises BudgetSpent (with what was found so far in `.args[1]`) when the budget runs out, and lets
    botocore's ClientError (throttled past the retries, access denied) through.
    """
    found: dict[str, Launcher] = {}
    oldest = now - HISTORY
    wanted = {i: t for i, t in launches.items() if t >= oldest}
    try:
        if len(wanted) <= walk_over:
            for instance_id in sorted(wanted):
                start = max(oldest, wanted[instance_id] - LAUNCH_SLACK)
                attrs = [{"AttributeKey": "ResourceName", "AttributeValue": instance_id}]
                for page in _pages(client, budget, LookupAttributes=attrs, StartTime=start, EndTime=now):
                    if _collect(page, {instance_id}, found):
                        break
        elif wanted:
            start = max(oldest, min(wanted.values()) - LAUNCH_SLACK)
            attrs = [{"AttributeKey": "EventName", "AttributeValue": "RunInstances"}]
            remaining = set(wanted)
            for page in _pages(client, budget, LookupAttributes=attrs, StartTime=start, EndTime=now):
                if _collect(page, remaining, found):
                    break
    except BudgetSpent as exc:
        raise BudgetSpent(str(exc), found) from None
    return found


def _collect(page: Mapping[str, Any], remaining: set[str], found: dict[str, Launcher]) -> bool:
    """Record the launchers of the page's events for the ids still wanted; True once none remains."""
    for event in page.get("Events") or []:
        if event.get("EventName") != "RunInstances":
            continue
        ids, launcher = parse_event(event)
        if launcher is None:
            continue
        for instance_id in ids:
            if instance_id in remaining:
                found[instance_id] = launcher
                remaining.discard(instance_id)
    return not remaining


def outside_history(launches: Mapping[str, datetime], now: datetime) -> Collection[str]:
    """The instances launched before CloudTrail's 90-day event history: no event can name their launcher."""
    return {i for i, t in launches.items() if t < now - HISTORY}
