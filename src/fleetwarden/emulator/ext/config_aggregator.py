"""AWS Config `SelectAggregateResourceConfig` (advanced query over an aggregator), which moto lacks.

The query is evaluated against moto's in-process EC2 backends: every EC2 instance of every account and region
the aggregator covers (its account sources, or every account for an organization source; its regions, or all)
is a configuration item of type `AWS::EC2::Instance`. There is no recording lag: a state change shows at once
(real Config takes minutes, see docs/discovery.md).

Only a restricted SQL subset is understood; anything else is an `InvalidExpressionException`:

    SELECT field [, field ...] [WHERE condition [AND condition ...]]
    condition := field = 'value' | field IN ('value' [, 'value' ...])

Fields: resourceId, resourceType, accountId, awsRegion, availabilityZone, configuration.instanceId,
configuration.state.name, configuration.instanceType, configuration.launchTime, configuration.imageId, and (in
SELECT only) tags. Results are JSON strings of nested objects (`{"configuration": {"state": {"name": ...}}}`),
`tags` as `[{"key", "value"}]`; pages of `Limit` (or `MaxResults`, default 25, at most 100) with a `NextToken`.
An aggregator the caller's account and region do not have is a `NoSuchConfigurationAggregatorException`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import Extension, Request, StartResponse, json_error, json_response

RESOURCE_TYPE = "AWS::EC2::Instance"
DEFAULT_LIMIT = 25
MAX_LIMIT = 100

Item = dict[str, Any]
_SCALARS: dict[str, Callable[[Item], str]] = {
    "resourceId": lambda i: str(i["resourceId"]),
    "resourceType": lambda i: RESOURCE_TYPE,
    "accountId": lambda i: str(i["accountId"]),
    "awsRegion": lambda i: str(i["awsRegion"]),
    "availabilityZone": lambda i: str(i["availabilityZone"]),
    "configuration.instanceId": lambda i: str(i["resourceId"]),
    "configuration.state.name": lambda i: str(i["state"]),
    "configuration.instanceType": lambda i: str(i["instanceType"]),
    "configuration.launchTime": lambda i: str(i["launchTime"]),
    "configuration.imageId": lambda i: str(i["imageId"]),
}
_SELECTABLE = (*_SCALARS, "tags")
_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<op>[=,()])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")


class InvalidExpression(ValueError):
    """The query is outside the emulated subset or malformed."""


@dataclass(frozen=True)
class Query:
    """A parsed query: the selected fields and the conditions (field, allowed values), all ANDed."""

    fields: tuple[str, ...]
    conditions: tuple[tuple[str, frozenset[str]], ...]

    def matches(self, item: Item) -> bool:
        return all(_SCALARS[name](item) in values for name, values in self.conditions)

    def project(self, item: Item) -> Item:
        out: Item = {}
        for name in self.fields:
            value: Any = (
                [{"key": k, "value": v} for k, v in sorted(item["tags"].items())]
                if name == "tags"
                else _SCALARS[name](item)
            )
            node = out
            *parents, leaf = name.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out


def _tokens(expression: str) -> Iterator[tuple[str, str]]:
    position = 0
    expression = expression.rstrip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None or match.end() == position:
            raise InvalidExpression(f"unexpected text at position {position}: {expression[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup or ""
        text = match.group(kind)
        if kind == "string":
            yield "string", text[1:-1].replace("''", "'")
        elif kind == "word" and text.upper() in ("SELECT", "WHERE", "AND", "IN"):
            yield "keyword", text.upper()
        else:
            yield kind, text


def parse(expression: str) -> Query:
    """Parse the emulated SQL subset (see the module docstring)."""
    tokens = list(_tokens(expression))
    pos = 0

    def take(kind: str, text: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise InvalidExpression(f"the query ends early: expected {text or kind}")
        got_kind, got = tokens[pos]
        if got_kind != kind or (text is not None and got != text):
            raise InvalidExpression(f"expected {text or kind}, got {got!r}")
        pos += 1
        return got

    def peek(text: str) -> bool:
        return pos < len(tokens) and tokens[pos][1] == text and tokens[pos][0] in ("keyword", "op")

    take("keyword", "SELECT")
    fields = [take("word")]
    while peek(","):
        take("op", ",")
        fields.append(take("word"))
    for name in fields:
        if name not in _SELECTABLE:
            raise InvalidExpression(f"field {name!r} is not emulated (emulated: {', '.join(_SELECTABLE)})")
    conditions: list[tuple[str, frozenset[str]]] = []
    if peek("WHERE"):
        take("keyword", "WHERE")
        while True:
            name = take("word")
            if name not in _SCALARS:
                raise InvalidExpression(f"cannot filter on {name!r} (emulated: {', '.join(_SCALARS)})")
            if peek("IN"):
                take("keyword", "IN")
                take("op", "(")
                values = [take("string")]
                while peek(","):
                    take("op", ",")
                    values.append(take("string"))
                take("op", ")")
            else:
                take("op", "=")
                values = [take("string")]
            conditions.append((name, frozenset(values)))
            if not peek("AND"):
                break
            take("keyword", "AND")
    if pos != len(tokens):
        raise InvalidExpression(f"unexpected {tokens[pos][1]!r} (only =, IN and AND are emulated)")
    return Query(tuple(fields), tuple(conditions))


class ConfigAggregatorExtension(Extension):
    """SelectAggregateResourceConfig over moto's EC2 instances of the aggregator's accounts and regions."""

    name = "config-aggregator"

    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "config" or request.action != "SelectAggregateResourceConfig":
            return None
        try:
            body = request.json()
        except json.JSONDecodeError as exc:
            return json_error(start_response, 400, "SerializationException", str(exc))
        if not isinstance(body, dict):
            return json_error(start_response, 400, "SerializationException", "the body must be a JSON object")
        name = str(body.get("ConfigurationAggregatorName", ""))
        scope = _aggregator_scope(request.account_id, request.region, name)
        if scope is None:
            message = f"The configuration aggregator does not exist: {name}"
            return json_error(start_response, 400, "NoSuchConfigurationAggregatorException", message)
        expression = str(body.get("Expression", ""))
        try:
            query = parse(expression)
        except InvalidExpression as exc:
            return json_error(start_response, 400, "InvalidExpressionException", str(exc))
        limit = body.get("Limit") or body.get("MaxResults") or DEFAULT_LIMIT
        if not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
            return json_error(start_response, 400, "InvalidLimitException", f"Limit must be 0 to {MAX_LIMIT}")
        digest = hashlib.sha256(f"{name}\n{expression}".encode()).hexdigest()[:16]
        offset = _offset(body.get("NextToken"), digest)
        if offset is None:
            return json_error(start_response, 400, "InvalidNextTokenException", "The nextToken is not valid")
        accounts, regions = scope
        results = [json.dumps(query.project(i)) for i in _items(accounts, regions) if query.matches(i)]
        payload: dict[str, Any] = {
            "Results": results[offset : offset + limit],
            "QueryInfo": {"SelectFields": [{"Name": f} for f in query.fields]},
        }
        if offset + limit < len(results):
            token = json.dumps({"offset": offset + limit, "query": digest}).encode()
            payload["NextToken"] = base64.urlsafe_b64encode(token).decode()
        return json_response(start_response, payload)


def _offset(token: Any, digest: str) -> int | None:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(str(token)))
        return int(data["offset"]) if data["query"] == digest else None
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def _aggregator_scope(
    account_id: str, region: str, name: str
) -> tuple[frozenset[str] | None, frozenset[str] | None] | None:
    """The aggregator's (accounts, regions), None meaning all; None if the aggregator does not exist."""
    from moto.config.models import config_backends

    account = dict.get(config_backends, account_id)
    backend = dict.get(account, region) if account is not None else None
    aggregator = backend.config_aggregators.get(name) if backend is not None else None
    if aggregator is None:
        return None
    accounts: set[str] | None = set()
    regions: set[str] | None = set()
    sources: list[Any] = list(aggregator.account_aggregation_sources or [])
    if aggregator.organization_aggregation_source is not None:
        accounts = None
        sources.append(aggregator.organization_aggregation_source)
    for source in sources:
        if accounts is not None:
            accounts.update(getattr(source, "account_ids", None) or [])
        if regions is not None:
            if source.all_aws_regions:
                regions = None
            else:
                regions.update(source.aws_regions or [])
    return (None if accounts is None else frozenset(accounts), None if regions is None else frozenset(regions))


def _items(accounts: frozenset[str] | None, regions: frozenset[str] | None) -> list[Item]:
    """Every EC2 instance moto holds in the scope, as flat items, in a stable order."""
    from moto.ec2.models import ec2_backends

    items: list[Item] = []
    for account_id, per_region in sorted(dict.items(ec2_backends)):
        if accounts is not None and account_id not in accounts:
            continue
        for region, backend in sorted(dict.items(per_region)):
            if regions is not None and region not in regions:
                continue
            for reservation in list(backend.reservations.values()):
                for instance in reservation.instances:
                    items.append(_item(account_id, region, backend, instance))
    items.sort(key=lambda i: (i["accountId"], i["awsRegion"], i["resourceId"]))
    return items


def _item(account_id: str, region: str, backend: Any, instance: Any) -> Item:
    launch = instance.launch_time
    launch_text = launch.strftime("%Y-%m-%dT%H:%M:%S.000Z") if isinstance(launch, datetime) else str(launch)
    return {
        "resourceId": instance.id,
        "accountId": account_id,
        "awsRegion": region,
        "availabilityZone": instance.placement.zone or "",
        "state": instance.state,
        "instanceType": instance.instance_type,
        "launchTime": launch_text,
        "imageId": instance.image_id,
        "tags": dict(backend.tags.get(instance.id, {})),
    }
