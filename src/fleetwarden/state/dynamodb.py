"""The DynamoDB state store: the deployed backend, one table (single-table design, on-demand capacity).

Item shapes (every item has the string keys `pk` and `sk`; whole models are kept as JSON in `data`, so they
round-trip exactly, and the other attributes exist to query, filter and condition on):

- finding:   pk `finding#<check>#<account>#<region>`, sk the finding id; check, account_id, region, status, data
- exception: pk `exception`, sk the exception id; kind, data
- journal:   pk `journal`, sk the entry id; at, written, run_id, workflow, account_id, data
- lease:     pk `lease`, sk `<workflow>#<account>`; workflow, account_id, owner, expires_at, expires_at_epoch
- record:    pk `record#<kind>`, sk the record key; version, data

Leases and records are decided by conditional writes. TTL on `expires_at_epoch` only tidies expired leases
(DynamoDB deletes them within days; moto never does), so the lease condition checks `expires_at` itself.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.table import BatchWriter
from botocore.exceptions import ClientError

from ..errors import StateError
from ..model import ExceptionRule, Finding, FindingStatus, JournalEntry
from .base import StateStore, VersionConflict, valid_exceptions

if TYPE_CHECKING:
    from ..aws.session import SessionFactory

# What the backend calls at run time (on the table ARN). `fleetwarden permissions` reads this.
PERMISSIONS: tuple[str, ...] = (
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:Scan",
)

# What `fleetwarden state init` additionally needs to create the table and turn on TTL.
INIT_PERMISSIONS: tuple[str, ...] = (
    "dynamodb:CreateTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:UpdateTimeToLive",
)

TTL_ATTRIBUTE = "expires_at_epoch"

_EXCEPTION_PK = "exception"
_JOURNAL_PK = "journal"
_LEASE_PK = "lease"
_FINDING_PREFIX = "finding#"
_RECORD_PREFIX = "record#"
_CONDITION_FAILED = "ConditionalCheckFailedException"
_TABLE_MISSING = "ResourceNotFoundException"

Item = dict[str, dict[str, Any]]


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _time_key(moment: datetime) -> str:
    """A fixed-width UTC timestamp that sorts as text in time order (naive datetimes are taken as UTC)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _finding_pk(check: str, account_id: str, region: str) -> str:
    return f"{_FINDING_PREFIX}{check}#{account_id}#{region}"


class DynamoDbStore(StateStore):
    """The state store in one DynamoDB table, reached through the session factory's base credentials."""

    def __init__(self, table: str, region: str, factory: SessionFactory) -> None:
        self.table = table
        self.region = region
        self.factory = factory

    # -- plumbing -------------------------------------------------------------------------------------
    def _client(self) -> Any:
        return self.factory.client("dynamodb", region=self.region)

    def _error(self, operation: str, exc: ClientError) -> StateError:
        if _code(exc) == _TABLE_MISSING:
            return StateError(
                f"the DynamoDB state table {self.table!r} does not exist in {self.region}: "
                "run `fleetwarden state init` to create it"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        where = f"table {self.table!r} ({self.region})"
        return StateError(f"DynamoDB {operation} on {where} failed: {_code(exc)}: {message}")

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client(), operation)(TableName=self.table, **kwargs)
        except ClientError as exc:
            raise self._error(operation, exc) from exc

    def _conditional(self, operation: str, **kwargs: Any) -> bool:
        """A conditional write: True if it happened, False if its condition failed."""
        try:
            getattr(self._client(), operation)(TableName=self.table, **kwargs)
        except ClientError as exc:
            if _code(exc) == _CONDITION_FAILED:
                return False
            raise self._error(operation, exc) from exc
        return True

    def _items(self, operation: str, **kwargs: Any) -> list[Item]:
        """Every item of a paginated Query or Scan (strongly consistent)."""
        paginator = self._client().get_paginator(operation)
        items: list[Item] = []
        try:
            for page in paginator.paginate(TableName=self.table, ConsistentRead=True, **kwargs):
                items.extend(page.get("Items", []))
        except ClientError as exc:
            raise self._error(operation, exc) from exc
        return items

    def _partition(self, pk: str, **kwargs: Any) -> list[Item]:
        names = {"#pk": "pk", **kwargs.pop("ExpressionAttributeNames", {})}
        values = {":pk": _s(pk), **kwargs.pop("ExpressionAttributeValues", {})}
        return self._items(
            "query",
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            **kwargs,
        )

    def _put_many(self, items: Iterable[Item]) -> None:
        try:
            # BatchWriter sends 25 items a call and resends what DynamoDB reports unprocessed;
            # overwrite_by_pkeys drops earlier duplicates of a key within a batch (DynamoDB refuses those).
            with BatchWriter(self.table, self._client(), overwrite_by_pkeys=["pk", "sk"]) as batch:
                for item in items:
                    batch.put_item(Item=item)
        except ClientError as exc:
            raise self._error("BatchWriteItem", exc) from exc

    # -- lifecycle ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Make sure the table exists (StateError advising `fleetwarden state init` if not)."""
        self._call("describe_table")

    def init(self) -> None:
        """Create the table if absent, wait until it is active, and turn on TTL for leases (idempotent)."""
        client = self._client()
        try:
            client.describe_table(TableName=self.table)
        except ClientError as exc:
            if _code(exc) != _TABLE_MISSING:
                raise self._error("DescribeTable", exc) from exc
            self._create_table(client)
        try:
            client.get_waiter("table_exists").wait(TableName=self.table, WaiterConfig={"Delay": 2, "MaxAttempts": 90})
            ttl = client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
            if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                client.update_time_to_live(
                    TableName=self.table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                )
        except ClientError as exc:
            raise self._error("init", exc) from exc

    def _create_table(self, client: Any) -> None:
        try:
            client.create_table(
                TableName=self.table,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            # Someone else is creating it at the same moment: waiting for it is all that is left to do.
            if _code(exc) != "ResourceInUseException":
                raise self._error("CreateTable", exc) from exc

    # -- findings -------------------------------------------------------------------------------------
    def load_findings(self, check: str, account_id: str, region: str) -> dict[str, Finding]:
        items = self._partition(
            _finding_pk(check, account_id, region),
            FilterExpression="#status <> :resolved",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":resolved": _s(FindingStatus.RESOLVED.value)},
        )
        findings = (Finding.model_validate_json(item["data"]["S"]) for item in items)
        return {finding.id: finding for finding in findings}

    def save_findings(self, findings: Iterable[Finding]) -> None:
        self._put_many(
            {
                "pk": _s(_finding_pk(f.check, f.account_id, f.region)),
                "sk": _s(f.id),
                "check": _s(f.check),
                "account_id": _s(f.account_id),
                "region": _s(f.region),
                "status": _s(f.status.value),
                "data": _s(f.model_dump_json()),
            }
            for f in findings
        )

    def list_findings(
        self,
        check: str | None = None,
        statuses: Iterable[FindingStatus] | None = None,
        account_id: str | None = None,
    ) -> list[Finding]:
        # Findings of all targets span many partitions: a filtered Scan (reports, not the hot path).
        prefix = _FINDING_PREFIX if check is None else f"{_FINDING_PREFIX}{check}#"
        if check is not None and account_id is not None:
            prefix = f"{prefix}{account_id}#"
        clauses = ["begins_with(#pk, :prefix)"]
        names = {"#pk": "pk"}
        values: Item = {":prefix": _s(prefix)}
        if account_id is not None:
            clauses.append("#account = :account")
            names["#account"] = "account_id"
            values[":account"] = _s(account_id)
        if statuses is not None:
            wanted = sorted({FindingStatus(s).value for s in statuses})
            if not wanted:
                return []
            placeholders = [f":status{i}" for i in range(len(wanted))]
            clauses.append(f"#status IN ({', '.join(placeholders)})")
            names["#status"] = "status"
            values.update({p: _s(v) for p, v in zip(placeholders, wanted, strict=True)})
        items = self._items(
            "scan",
            FilterExpression=" AND ".join(clauses),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        findings = [Finding.model_validate_json(item["data"]["S"]) for item in items]
        return sorted(findings, key=lambda f: (f.check, f.account_id, f.region, f.id))

    # -- exceptions -----------------------------------------------------------------------------------
    def add_exception(self, rule: ExceptionRule) -> None:
        item = {
            "pk": _s(_EXCEPTION_PK),
            "sk": _s(rule.id),
            "kind": _s(rule.kind.value),
            "data": _s(rule.model_dump_json()),
        }
        self._call("put_item", Item=item)

    def _stored_exceptions(self) -> list[ExceptionRule]:
        rules = valid_exceptions(item["data"]["S"] for item in self._partition(_EXCEPTION_PK))
        return sorted(rules, key=lambda r: (_time_key(r.created_at), r.id))

    def _remove_stored_exception(self, exception_id: str) -> bool:
        return self._conditional(
            "delete_item",
            Key={"pk": _s(_EXCEPTION_PK), "sk": _s(exception_id)},
            ConditionExpression="attribute_exists(#pk)",
            ExpressionAttributeNames={"#pk": "pk"},
        )

    # -- journal --------------------------------------------------------------------------------------
    def journal(self, entry: JournalEntry) -> None:
        self._call("put_item", Item=self._journal_item(entry))

    def journal_many(self, entries: Sequence[JournalEntry]) -> None:
        self._put_many(self._journal_item(e) for e in entries)  # BatchWriteItem, 25 at a time

    @staticmethod
    def _journal_item(entry: JournalEntry) -> dict[str, Any]:
        # Keyed by id alone, so the `done` record of a mutation replaces its `planned` one.
        return {
            "pk": _s(_JOURNAL_PK),
            "sk": _s(entry.id),
            "at": _s(_time_key(entry.at)),
            "written": _n(time.time_ns()),
            "run_id": _s(entry.run_id),
            "workflow": _s(entry.workflow),
            "account_id": _s(entry.account_id),
            "data": _s(entry.model_dump_json()),
        }

    def list_journal(
        self,
        *,
        run_id: str | None = None,
        account_id: str | None = None,
        workflow: str | None = None,
    ) -> list[JournalEntry]:
        clauses: list[str] = []
        names: dict[str, str] = {}
        values: Item = {}
        for attribute, value in (("run_id", run_id), ("account_id", account_id), ("workflow", workflow)):
            if value is not None:
                clauses.append(f"#{attribute} = :{attribute}")
                names[f"#{attribute}"] = attribute
                values[f":{attribute}"] = _s(value)
        extra: dict[str, Any] = {}
        if clauses:
            extra = {
                "FilterExpression": " AND ".join(clauses),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        items = self._partition(_JOURNAL_PK, **extra)
        # Oldest first; the write time breaks ties between entries of the same instant.
        items.sort(key=lambda item: (item["at"]["S"], int(item["written"]["N"])))
        return [JournalEntry.model_validate_json(item["data"]["S"]) for item in items]

    # -- leases ---------------------------------------------------------------------------------------
    def acquire_lease(self, workflow: str, account_id: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        expires = now + timedelta(seconds=ttl_seconds)
        expires_aware = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        item = {
            "pk": _s(_LEASE_PK),
            "sk": _s(f"{workflow}#{account_id}"),
            "workflow": _s(workflow),
            "account_id": _s(account_id),
            "owner": _s(owner),
            "expires_at": _s(_time_key(expires)),
            TTL_ATTRIBUTE: _n(math.ceil(expires_aware.timestamp())),
        }
        return self._conditional(
            "put_item",
            Item=item,
            ConditionExpression="attribute_not_exists(#pk) OR #expires <= :now OR #owner = :owner",
            ExpressionAttributeNames={"#pk": "pk", "#expires": "expires_at", "#owner": "owner"},
            ExpressionAttributeValues={":now": _s(_time_key(now)), ":owner": _s(owner)},
        )

    def release_lease(self, workflow: str, account_id: str, owner: str) -> None:
        # Not ours (taken over after expiry, or never held): nothing to give back.
        self._conditional(
            "delete_item",
            Key={"pk": _s(_LEASE_PK), "sk": _s(f"{workflow}#{account_id}")},
            ConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": _s(owner)},
        )

    def get_lease(self, workflow: str, account_id: str) -> tuple[str, datetime] | None:
        key = {"pk": _s(_LEASE_PK), "sk": _s(f"{workflow}#{account_id}")}
        item: Item | None = self._call("get_item", Key=key, ConsistentRead=True).get("Item")
        if item is None:
            return None
        expires = datetime.strptime(item["expires_at"]["S"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return item["owner"]["S"], expires

    def break_lease(self, workflow: str, account_id: str) -> None:
        self._call("delete_item", Key={"pk": _s(_LEASE_PK), "sk": _s(f"{workflow}#{account_id}")})

    # -- records --------------------------------------------------------------------------------------
    def get_record(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        response = self._call("get_item", Key={"pk": _s(_RECORD_PREFIX + kind), "sk": _s(key)}, ConsistentRead=True)
        item: Item | None = response.get("Item")
        if item is None:
            return None
        return _load_data(item["data"]["S"]), int(item["version"]["N"])

    def put_record(self, kind: str, key: str, data: dict[str, Any], *, expected_version: int | None) -> int:
        new_version = 1 if expected_version is None else expected_version + 1
        item = {
            "pk": _s(_RECORD_PREFIX + kind),
            "sk": _s(key),
            "version": _n(new_version),
            "data": _s(json.dumps(data, separators=(",", ":"))),
        }
        if expected_version is None:
            condition: dict[str, Any] = {
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": "pk"},
            }
        else:
            condition = {
                "ConditionExpression": "#version = :expected",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":expected": _n(expected_version)},
            }
        if not self._conditional("put_item", Item=item, **condition):
            if expected_version is None:
                raise VersionConflict(f"record {kind}/{key} already exists")
            raise VersionConflict(f"record {kind}/{key} is no longer at version {expected_version}")
        return new_version

    def list_records(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        records = [
            (item["sk"]["S"], _load_data(item["data"]["S"]), int(item["version"]["N"]))
            for item in self._partition(_RECORD_PREFIX + kind)
        ]
        return sorted(records, key=lambda record: record[0])

    def delete_record(self, kind: str, key: str) -> None:
        self._call("delete_item", Key={"pk": _s(_RECORD_PREFIX + kind), "sk": _s(key)})


def _load_data(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StateError(f"corrupt record in the state store: expected a JSON object, got {type(value).__name__}")
    return value
