"""State store backends behind one interface; `open_store` picks one from the config's `state` URL."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from ..errors import StateError
from .base import StateStore, VersionConflict

if TYPE_CHECKING:
    from ..aws.session import SessionFactory
    from .dynamodb import DynamoDbStore

__all__ = ["StateStore", "VersionConflict", "open_store"]

_SQLITE = "sqlite:///"
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_EXAMPLES = "sqlite:///path/to/state.db, sqlite:////absolute/state.db or dynamodb://table-name?region=us-east-1"


def open_store(url: str, factory: SessionFactory | None = None, *, create: bool = False) -> StateStore:
    """`sqlite:///path/to/state.db` or `dynamodb://table-name?region=us-east-1`.

    A SQLite file (and its directory) is created on first use. A DynamoDB table must exist: unless `create`
    (what `fleetwarden state init` passes before calling `init()`), opening checks it, so a missing table fails
    the run before any work with the advice to run `fleetwarden state init`.
    """
    if url.startswith(_SQLITE):
        return _open_sqlite(url)
    if url.startswith("dynamodb:"):
        store = _open_dynamodb(url, factory)
        if not create:
            store.check()
        return store
    raise StateError(f"unsupported state store URL {url!r}: expected {_EXAMPLES}")


def _open_sqlite(url: str) -> StateStore:
    from .sqlite import SqliteStore

    # sqlite:///relative/path.db -> relative/path.db; sqlite:////abs/path.db -> /abs/path.db
    path = url[len(_SQLITE) :]
    if not path or path.endswith("/") or "?" in path or "#" in path:
        raise StateError(f"invalid SQLite state URL {url!r}: expected a file path, as in {_EXAMPLES}")
    return SqliteStore(path)


def _open_dynamodb(url: str, factory: SessionFactory | None) -> DynamoDbStore:
    # Imported here so that a SQLite-only run never loads boto3's DynamoDB helpers.
    from .dynamodb import DynamoDbStore

    parts = urlsplit(url)
    table = parts.netloc
    if not url.startswith("dynamodb://") or parts.path not in ("", "/") or parts.fragment:
        raise StateError(f"invalid DynamoDB state URL {url!r}: expected dynamodb://table-name?region=us-east-1")
    if not _TABLE_NAME.match(table):
        raise StateError(
            f"invalid DynamoDB state URL {url!r}: the table name {table!r} must be 3-255 characters"
            " of letters, digits, '_', '-' and '.'"
        )
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise StateError(f"invalid DynamoDB state URL {url!r}: cannot parse the query {parts.query!r}") from None
    unknown = sorted(set(query) - {"region"})
    if unknown:
        raise StateError(f"invalid DynamoDB state URL {url!r}: unknown parameter(s) {', '.join(unknown)}; only region")
    regions = query.get("region", ["us-east-1"])
    if len(regions) != 1 or not _REGION.match(regions[0]):
        raise StateError(f"invalid DynamoDB state URL {url!r}: region must be one AWS region name, as in us-east-1")
    if factory is None:
        from ..aws.session import SessionFactory

        factory = SessionFactory()
    return DynamoDbStore(table, regions[0], factory)
