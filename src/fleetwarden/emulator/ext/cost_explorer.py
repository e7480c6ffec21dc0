"""Cost Explorer GetCostAndUsage computed from seeded cost lines, in AWS's documented request and response shapes.

moto's GetCostAndUsage only replays canned responses (`/moto-api/static/ce/cost-and-usage-results`), whatever the
request asks. This extension answers instead from cost lines seeded for the caller's account (the payer), so a
request for the wrong days, grouping or filter gets the wrong figures, as it would from AWS. An account with no
seeded lines is left to moto (its canned results keep working).

`GetCostAndUsage` (awsJson1.1, `X-Amz-Target: AWSInsightsIndexService.GetCostAndUsage`):

- `TimePeriod` `{Start, End}` (`YYYY-MM-DD`, End exclusive); Start not before End is `ValidationException`.
- `Granularity` `DAILY` or `MONTHLY` (results per day, or per calendar month clipped to the period).
- `Metrics`: any of `UnblendedCost`, `BlendedCost`, `AmortizedCost`, `NetUnblendedCost`, `NetAmortizedCost`
  (the seeded amount for each; usage metrics are not modelled and are a `ValidationException`).
- `GroupBy`: up to two `{"Type": "DIMENSION", "Key": K}` with K one of `LINKED_ACCOUNT`, `SERVICE`, `REGION`;
  grouped results have an empty `Total` and one group per key combination with a cost, as AWS's.
- `Filter`: `{"Dimensions": {"Key": K, "Values": [...]}}`, or `{"And": [...]}` / `{"Or": [...]}` / `{"Not": {...}}`
  of those.
- Paging: at most `page_size` groups per page (100 by default); a period's groups may continue on the next page
  under the same `TimePeriod`, as AWS's do. `NextPageToken` is opaque and bound to the query
  (else `InvalidNextTokenException`).
- `DimensionValueAttributes` gives each linked account's name (`description`) when the seed names it.

Seeding, through admin endpoints under `/_fleetwarden/ce/`:

- `POST costs` `{"account_id": PAYER, "lines": [{"date": "2026-11-03", "account": "111111111111",
  "service": "Amazon Elastic Compute Cloud - Compute", "region": "us-east-1", "usd": "12.34",
  "estimated": false}], "account_names": {"111111111111": "prod"}}`: adds cost lines for that payer.
- `POST page-size` `{"groups": 100}`.
- `GET costs`: what is stored, for debugging.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from . import (
    BadToken,
    Extension,
    Request,
    StartResponse,
    json_error,
    json_response,
    page_token,
    query_digest,
    token_offset,
)

_TARGET = "GetCostAndUsage"
COST_METRICS = ("UnblendedCost", "BlendedCost", "AmortizedCost", "NetUnblendedCost", "NetAmortizedCost")
DIMENSIONS = {"LINKED_ACCOUNT": "account", "SERVICE": "service", "REGION": "region"}
DEFAULT_PAGE_SIZE = 100


class _Invalid(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdminBadRequest(ValueError):
    """A malformed admin request."""


@dataclass(frozen=True)
class _Line:
    day: date
    account: str
    service: str
    region: str
    usd: Decimal
    estimated: bool


@dataclass
class _State:
    lines: dict[str, list[_Line]] = field(default_factory=dict)  # payer account -> lines
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # payer -> linked account -> name
    page_size: int = DEFAULT_PAGE_SIZE


class CostExplorerExtension(Extension):
    """GetCostAndUsage over seeded cost lines, grouped, filtered and paged as AWS does."""

    name = "ce"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()

    def reset(self) -> None:
        with self._lock:
            self._state = _State()

    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "ce" or request.action != _TARGET:
            return None
        with self._lock:
            lines = list(self._state.lines.get(request.account_id, ()))
            names = dict(self._state.names.get(request.account_id, {}))
            page_size = self._state.page_size
        if not lines:
            return None  # moto's canned results, if any
        try:
            body = request.json()
            if not isinstance(body, dict):
                raise _Invalid("ValidationException", "the request body must be a JSON object")
            payload = _answer(body, lines, names, page_size)
        except json.JSONDecodeError as exc:
            return json_error(start_response, 400, "ValidationException", str(exc))
        except _Invalid as exc:
            return json_error(start_response, 400, exc.code, str(exc))
        return json_response(start_response, payload)

    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        from ..middleware import AdminError

        try:
            if path == "costs" and method == "POST":
                return self._seed(body)
            if path == "page-size" and method == "POST":
                groups = body.get("groups") if isinstance(body, dict) else None
                if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
                    raise AdminBadRequest('POST {"groups": N} with N >= 1')
                with self._lock:
                    self._state.page_size = groups
                return {"groups": groups}
        except AdminBadRequest as exc:
            raise AdminError(f"ce/{path}: {exc}") from None
        if path == "costs" and method == "GET":
            with self._lock:
                return {
                    payer: [{**line.__dict__, "day": line.day.isoformat(), "usd": str(line.usd)} for line in lines]
                    for payer, lines in self._state.lines.items()
                }
        return None

    def _seed(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("lines"), list):
            raise AdminBadRequest('POST {"account_id": PAYER, "lines": [...], "account_names": {...}}')
        payer = body.get("account_id")
        if not isinstance(payer, str) or not payer:
            raise AdminBadRequest("account_id (the payer, who calls GetCostAndUsage) is a required string")
        lines = [_seed_line(raw) for raw in body["lines"]]
        names = body.get("account_names") or {}
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise AdminBadRequest("account_names must map account ids to names")
        with self._lock:
            self._state.lines.setdefault(payer, []).extend(lines)
            self._state.names.setdefault(payer, {}).update({str(k): v for k, v in names.items()})
            total = len(self._state.lines[payer])
        return {"added": len(lines), "total": total}


def _seed_line(raw: Any) -> _Line:
    if not isinstance(raw, dict):
        raise AdminBadRequest("each line must be an object")
    try:
        usd = Decimal(str(raw["usd"]))
        day = date.fromisoformat(str(raw["date"]))
    except (KeyError, ValueError, InvalidOperation):
        raise AdminBadRequest(f"a line needs date (YYYY-MM-DD) and usd (a number): {raw!r}") from None
    account = raw.get("account")
    if not isinstance(account, str) or not account:
        raise AdminBadRequest(f"a line needs account: {raw!r}")
    return _Line(
        day,
        account,
        str(raw.get("service", "Amazon Elastic Compute Cloud - Compute")),
        str(raw.get("region", "us-east-1")),
        usd,
        bool(raw.get("estimated", False)),
    )


def _day(value: Any, what: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise _Invalid("ValidationException", f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


def _periods(start: date, end: date, granularity: str) -> list[tuple[date, date]]:
    if granularity == "DAILY":
        return [(start + timedelta(days=i), start + timedelta(days=i + 1)) for i in range((end - start).days)]
    out = []
    cursor = start
    while cursor < end:
        following = (cursor.replace(day=28) + timedelta(days=4)).replace(day=1)
        out.append((cursor, min(following, end)))
        cursor = following
    return out


def _matches(line: _Line, expression: Any) -> bool:
    if not expression:
        return True
    if not isinstance(expression, dict) or len(expression) != 1:
        raise _Invalid("ValidationException", "Filter: an expression has exactly one of And, Or, Not, Dimensions")
    ((kind, value),) = expression.items()
    if kind == "And" and isinstance(value, list):
        return all(_matches(line, e) for e in value)
    if kind == "Or" and isinstance(value, list):
        return any(_matches(line, e) for e in value)
    if kind == "Not":
        return not _matches(line, value)
    if kind == "Dimensions" and isinstance(value, dict) and value.get("Key") in DIMENSIONS:
        return getattr(line, DIMENSIONS[value["Key"]]) in (value.get("Values") or [])
    raise _Invalid("ValidationException", f"Filter: unsupported expression {kind} {value!r}")


def _answer(body: dict[str, Any], lines: list[_Line], names: dict[str, str], page_size: int) -> dict[str, Any]:
    period = body.get("TimePeriod") or {}
    start, end = _day(period.get("Start"), "Start"), _day(period.get("End"), "End")
    if start >= end:
        raise _Invalid("ValidationException", "Start date (and hour) should be before end date (and hour)")
    granularity = body.get("Granularity")
    if granularity not in ("DAILY", "MONTHLY"):
        raise _Invalid("ValidationException", f"Granularity must be DAILY or MONTHLY, got {granularity!r}")
    metrics = body.get("Metrics") or []
    if not metrics or not all(m in COST_METRICS for m in metrics):
        raise _Invalid("ValidationException", f"Metrics must be cost metrics of {', '.join(COST_METRICS)}")
    group_by = body.get("GroupBy") or []
    if len(group_by) > 2:
        raise _Invalid("ValidationException", "GroupBy: you can group by up to two dimensions")
    keys = []
    for group in group_by:
        if not isinstance(group, dict) or group.get("Type") != "DIMENSION" or group.get("Key") not in DIMENSIONS:
            raise _Invalid("ValidationException", f"GroupBy: unsupported group {group!r}")
        keys.append(DIMENSIONS[group["Key"]])
    query = query_digest({k: v for k, v in body.items() if k != "NextPageToken"})
    offset = _offset(body.get("NextPageToken"), query)
    chosen = [line for line in lines if start <= line.day < end and _matches(line, body.get("Filter"))]

    # Every (period, group) in order; a page takes page_size of them.
    entries: list[tuple[tuple[date, date], tuple[str, ...] | None, Decimal, bool]] = []
    for p_start, p_end in _periods(start, end, granularity):
        inside = [line for line in chosen if p_start <= line.day < p_end]
        estimated = any(line.estimated for line in inside)
        if not keys:
            entries.append(((p_start, p_end), None, sum((line.usd for line in inside), Decimal(0)), estimated))
            continue
        sums: dict[tuple[str, ...], Decimal] = {}
        for line in inside:
            combination = tuple(str(getattr(line, k)) for k in keys)
            sums[combination] = sums.get(combination, Decimal(0)) + line.usd
        if not sums:
            entries.append(((p_start, p_end), (), Decimal(0), estimated))  # a period with no group
        entries.extend(((p_start, p_end), k, v, estimated) for k, v in sorted(sums.items()))
    page = entries[offset : offset + page_size]
    results: list[dict[str, Any]] = []
    for (p_start, p_end), group_key, usd, estimated in page:
        if not results or results[-1]["TimePeriod"]["Start"] != p_start.isoformat():
            results.append(
                {
                    "TimePeriod": {"Start": p_start.isoformat(), "End": p_end.isoformat()},
                    "Total": {},
                    "Groups": [],
                    "Estimated": estimated,
                }
            )
        amounts = {m: {"Amount": str(usd), "Unit": "USD"} for m in metrics}
        if group_key is None:
            results[-1]["Total"] = amounts
        elif group_key:
            results[-1]["Groups"].append({"Keys": list(group_key), "Metrics": amounts})
    answer: dict[str, Any] = {
        "GroupDefinitions": group_by,
        "ResultsByTime": results,
        "DimensionValueAttributes": [
            {"Value": account, "Attributes": {"description": names[account]}}
            for account in sorted({line.account for line in chosen})
            if account in names and "account" in keys
        ],
    }
    if offset + page_size < len(entries):
        answer["NextPageToken"] = page_token(query, offset + page_size)
    return answer


def _offset(token: Any, query: str) -> int:
    try:
        return token_offset(token, query)
    except BadToken:
        raise _Invalid("InvalidNextTokenException", "The NextPageToken is not valid.") from None
