"""cur: line_item_unblended_cost summed over the window, read from a CUR 2.0 data export in S3.

An export delivers, per billing period, `<prefix>/<export-name>/metadata/BILLING_PERIOD=YYYY-MM/
<export-name>-Manifest.json`, whose `dataFiles` list the period's current gzip CSV files (`s3://bucket/key`).
Only the manifests of the periods the window overlaps are read, and only the files they list (an export that
keeps old versions leaves stale files beside them). Files are streamed and summed row by row, never loaded whole.
`prefix` may name the export's folder itself or the prefix set on the export (then exactly one export under it).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from .base import AWS_ERRORS, BILLING_REGION, BillingClients, SpendReading, SpendSourceError, Window, aws_error_text

SOURCE = "cur"
T = TypeVar("T")
ACCOUNT, START, COST = "line_item_usage_account_id", "line_item_usage_start_date", "line_item_unblended_cost"
MANIFEST_SUFFIX = "-Manifest.json"
LATENCY = "CUR 2.0 exports are refreshed up to three times a day and run up to 24 h or more late"


@dataclass
class _Tally:
    usd: dict[str, float]
    rows: dict[str, int]
    files: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)


def measure(
    clients: BillingClients, bucket: str | None, prefix: str | None, account_ids: Sequence[str], window: Window
) -> tuple[dict[str, SpendReading], dict[str, str]]:
    if not bucket:
        raise SpendSourceError(SOURCE, "the cur source needs `bucket:` (and `prefix:`) of the CUR 2.0 data export")
    base = (prefix or "").strip("/")
    where = f"s3://{bucket}/{base}"
    tally = _Tally({a: 0.0 for a in account_ids}, {a: 0 for a in account_ids})
    try:
        s3 = clients.client("s3", BILLING_REGION)
        finder = _ManifestFinder(s3, bucket, base)
        for year, month in window.months():
            key = finder.find(f"{year:04d}-{month:02d}")
            tally.manifests.append(key)
            for data_bucket, data_key in _data_files(_read_json(s3, bucket, key), bucket, key):
                _sum_file(s3, data_bucket, data_key, window, tally)
                tally.files.append(data_key)
    except AWS_ERRORS as exc:
        raise SpendSourceError(
            SOURCE, f"reading the CUR 2.0 export at {where} {clients.via}: {aws_error_text(exc)}"
        ) from None
    readings = {}
    for account_id in account_ids:
        usd = tally.usd[account_id]
        detail = (
            f"sum of {COST} over {tally.rows[account_id]} rows with {START} in "
            f"[{window.start:%Y-%m-%d %H:%MZ}, {window.end:%Y-%m-%d %H:%MZ}) = ${usd:.2f}, from "
            f"{len(tally.files)} data file(s) listed by {', '.join(f's3://{bucket}/{m}' for m in tally.manifests)} "
            f"| {LATENCY}"
        )
        readings[account_id] = SpendReading(SOURCE, account_id, usd, window.start, window.end, detail)
    return readings, {}


class _ManifestFinder:
    """Finds the manifest of a billing period under `prefix` (the export's folder, or the folder holding it)."""

    def __init__(self, s3: Any, bucket: str, base: str) -> None:
        self.s3, self.bucket, self.base = s3, bucket, base
        self._exports: list[str] | None = None

    def find(self, period: str) -> str:
        root = f"{self.base}/" if self.base else ""
        keys = self._manifests(f"{root}metadata/BILLING_PERIOD={period}/")
        if not keys:
            found = {
                e: k for e in self._export_folders() if (k := self._manifests(f"{e}metadata/BILLING_PERIOD={period}/"))
            }
            if len(found) > 1:
                names = ", ".join(sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in found))
                raise SpendSourceError(
                    SOURCE,
                    f"several exports under s3://{self.bucket}/{root} have a manifest for {period} ({names}): "
                    "set `prefix` to the one to read (<prefix>/<export-name>)",
                )
            keys = next(iter(found.values()), [])
        if not keys:
            raise SpendSourceError(
                SOURCE,
                f"no manifest for billing period {period} under s3://{self.bucket}/{root} "
                f"(expected [<export-name>/]metadata/BILLING_PERIOD={period}/<export-name>{MANIFEST_SUFFIX}; "
                "a new month's first delivery can take a day)",
            )
        if len(keys) > 1:
            raise SpendSourceError(SOURCE, f"several manifests for {period}: {', '.join(keys)}")
        return keys[0]

    def _manifests(self, folder: str) -> list[str]:
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(folder) :]
                if "/" not in rest and rest.endswith(MANIFEST_SUFFIX):
                    keys.append(obj["Key"])
        return keys

    def _export_folders(self) -> list[str]:
        if self._exports is None:
            root = f"{self.base}/" if self.base else ""
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root, Delimiter="/")
            self._exports = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        return self._exports


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        data = json.loads(body.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpendSourceError(SOURCE, f"manifest s3://{bucket}/{key} is not valid JSON: {exc}") from None
    finally:
        body.close()
    if not isinstance(data, dict):
        raise SpendSourceError(SOURCE, f"manifest s3://{bucket}/{key} is not a JSON object")
    return data


def _data_files(manifest: dict[str, Any], bucket: str, manifest_key: str) -> Iterator[tuple[str, str]]:
    files = manifest.get("dataFiles")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise SpendSourceError(SOURCE, f"manifest s3://{bucket}/{manifest_key} has no `dataFiles` list of S3 paths")
    for item in files:
        if item.startswith("s3://"):
            data_bucket, _, key = item[len("s3://") :].partition("/")
        else:
            data_bucket, key = bucket, item.lstrip("/")
        if key.endswith(".parquet"):
            raise SpendSourceError(
                SOURCE, f"{item} is Parquet: fleetwarden reads gzip CSV exports (set the export's format to text/csv)"
            )
        yield data_bucket, key


def _sum_file(s3: Any, bucket: str, key: str, window: Window, tally: _Tally) -> None:
    """Stream one gzip CSV file and add the window's rows of the wanted accounts to the tally."""
    starts: dict[str, datetime] = {}  # usage start dates repeat (hourly lines): parse each text once

    def add(values: list[str]) -> None:
        account, start, cost = values
        if account not in tally.usd:
            return
        when = starts.get(start) or starts.setdefault(start, _timestamp(start))
        if when in window:
            tally.usd[account] += float(cost) if cost else 0.0
            tally.rows[account] += 1

    for _ in read_rows(s3, bucket, key, (ACCOUNT, START, COST), parse=add):
        pass


def read_rows(
    s3: Any,
    bucket: str,
    key: str,
    columns: Sequence[str],
    optional: Sequence[str] = (),
    *,
    parse: Callable[[list[str]], T],
) -> Iterator[T]:
    """Stream one gzip CSV data file: `parse` of each row's values of `columns` then of `optional` ("" where the
    header lacks an optional column). Raises SpendSourceError for a missing column or a malformed file, naming
    the file and the line; a value `parse` cannot read (ValueError, decimal.InvalidOperation) likewise."""
    where = f"s3://{bucket}/{key}"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    line = 1
    try:
        with gzip.GzipFile(fileobj=body, mode="rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
            reader = csv.reader(text)
            header = next(reader, None)
            missing = [c for c in columns if header is None or c not in header]
            if header is None or missing:
                raise SpendSourceError(SOURCE, f"malformed CSV {where}: no column {', '.join(missing)} in the header")
            indexes = [header.index(c) for c in columns] + [header.index(c) if c in header else -1 for c in optional]
            width = max(indexes)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) <= width:
                    raise SpendSourceError(SOURCE, f"malformed CSV {where} line {line}: {len(row)} fields")
                yield parse([row[i] if i >= 0 else "" for i in indexes])
    except (OSError, EOFError, csv.Error, UnicodeDecodeError, ValueError, ArithmeticError) as exc:
        raise SpendSourceError(SOURCE, f"malformed CSV {where} (near line {line}): {exc}") from None
    finally:
        body.close()


def data_files_for(
    s3: Any, bucket: str, prefix: str | None, months: Sequence[tuple[int, int]]
) -> Iterator[tuple[str, str]]:
    """The current data files of each billing period, as the periods' manifests list them."""
    base = (prefix or "").strip("/")
    finder = _ManifestFinder(s3, bucket, base)
    for year, month in months:
        key = finder.find(f"{year:04d}-{month:02d}")
        yield from _data_files(_read_json(s3, bucket, key), bucket, key)


def _timestamp(text: str) -> datetime:
    """CUR timestamps: 2025-03-01T00:00:00Z, with milliseconds, or with a space; naive ones are UTC."""
    when = datetime.fromisoformat(text.strip())
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
