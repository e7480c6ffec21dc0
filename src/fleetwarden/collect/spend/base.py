"""What every spend source shares: the reading, the error, the window and the billing account's clients."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ...aws.session import AccountAccess, SessionFactory, reaching
from ...config import BillingAccount
from ...errors import EXIT_PARTIAL, FleetwardenError

# Billing data (CloudWatch billing metrics, Cost Explorer) lives in us-east-1 whatever the fleet's regions.
BILLING_REGION = "us-east-1"
AWS_ERRORS = (ClientError, BotoCoreError)


@dataclass(frozen=True)
class SpendReading:
    """One source's spend figure for one account over the guard's window, with how it was obtained."""

    source: str  # "burn-rate" | "cloudwatch" | "cost-explorer" | "cur"
    account_id: str
    usd: float
    window_start: datetime
    window_end: datetime
    detail: str  # the formula's inputs and the source's latency caveat, for the notification


class SpendSourceError(FleetwardenError):
    """A spend source could not be read: it is reported (exit 4), never taken as zero spend.

    `failed` maps the accounts that could not be read to the reason ("*" when the whole source failed);
    `readings` holds the accounts that were read, so a caller may still act on them.
    """

    exit_code = EXIT_PARTIAL

    def __init__(
        self,
        source: str,
        reason: str,
        *,
        failed: Mapping[str, str] | None = None,
        readings: Mapping[str, SpendReading] | None = None,
    ) -> None:
        self.source = source
        self.reason = reason
        self.failed = dict(failed or {"*": reason})
        self.readings = dict(readings or {})
        super().__init__(f"{source}: {reason}")


@dataclass(frozen=True)
class Window:
    """The guard's spend window: [start, end), end being `now`."""

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, now: datetime, hours: float) -> Window:
        end = now if now.tzinfo else now.replace(tzinfo=UTC)
        end = end.astimezone(UTC)
        return cls(end - timedelta(hours=hours), end)

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def __contains__(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def months(self) -> list[tuple[int, int]]:
        """The calendar months (UTC) the window overlaps, oldest first."""
        last = self.end - timedelta(microseconds=1)
        year, month = self.start.year, self.start.month
        out = [(year, month)]
        while (year, month) < (last.year, last.month):
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            out.append((year, month))
        return out


def month_start(when: datetime) -> datetime:
    return when.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def stamp(when: datetime) -> str:
    """A short UTC timestamp for details: 2025-03-01 02:00Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def aws_error_text(exc: BaseException) -> str:
    """One line naming the failed operation and AWS's error code and message."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "") or "call"
        return f"{operation} failed: {err.get('Code', 'Error')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def payer_account_id(role_arn: str) -> str:
    """The account id inside a role ARN (arn:aws:iam::ACCOUNT:role/NAME)."""
    return role_arn.split(":")[4]


@dataclass
class BillingClients:
    """Clients for the billing sources: in the payer account through `billing_account.role_arn`, else with the
    current credentials.

    The payer is often also a fleet account reached another way (the management account with the current
    credentials, or a member role), and the factory keys sessions by account id. Registering the billing role on
    the shared factory would then either be ignored (session already cached) or change how the guard reaches that
    account. So unless the factory already reaches the payer through exactly this role, the billing role gets a
    factory of its own with the same settings and base credentials.
    """

    factory: SessionFactory
    billing: BillingAccount | None
    _reader: SessionFactory | None = field(default=None, init=False)

    @property
    def account_id(self) -> str | None:
        """The payer account read through the role, or None for the current credentials."""
        role = self.billing.role_arn if self.billing else None
        return payer_account_id(role) if role else None

    @property
    def via(self) -> str:
        role = self.billing.role_arn if self.billing else None
        return f"through {role}" if role else "with the current credentials"

    def client(self, service: str, region: str = BILLING_REGION) -> Any:
        payer = self.account_id
        if payer is None or self.billing is None:
            return self.factory.client(service, region=region)
        return self._factory_for(payer, self.billing).client(service, region=region, account_id=payer)

    def _factory_for(self, payer: str, billing: BillingAccount) -> SessionFactory:
        if self._reader is None:  # billing calls still count with the run's others
            wanted = AccountAccess(payer, billing.role_arn, billing.external_id, name="billing")
            self._reader = reaching(self.factory, wanted)
        return self._reader
