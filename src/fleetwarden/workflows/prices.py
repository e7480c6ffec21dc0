"""`fleetwarden prices refresh`: rebuild burn-rate's price table from the AWS Price List into the state store.

regions (the config's; `regions: all` -> those the shipped table knows, China's left out) -> one GetProducts
query per region (concurrently, a few at a time) -> compare with the stored table (else the shipped one) ->
with --apply, one `price-table` record per region (optimistic write on its version). A region whose query fails
or finds nothing is an error target (exit 4) and keeps its previous table; the others are stored.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws.fanout import fan_out
from ..aws.targets import current_scope
from ..collect.pricelist import PRICING_REGION, SOURCE, RegionPrices, fetch_region
from ..collect.spend.prices import PriceTableError, RegionTable, TableInfo, describe_tables, load_prices
from ..config import Config
from ..model import RunReport, TargetResult, TargetStatus
from ..state import StateStore
from ..state.base import VersionConflict
from .base import RunContext

log = logging.getLogger(__name__)

WORKFLOW = "prices-refresh"
KIND = "price-table"  # state store records: key = region
# DynamoDB refuses items over 400 KB; a region's ~900 types take ~25 KB as compact JSON. A table this big is wrong.
MAX_RECORD_BYTES = 350_000
# The Price List API's documented rate is low; a few regions at a time keep clear of throttling.
MAX_CONCURRENCY = 4
# Regions priced by another Price List endpoint (api.pricing.cn-northwest-1.amazonaws.com.cn): not refreshed here.
OTHER_PRICE_LISTS = ("cn-",)
LARGEST_SHOWN = 5
STORE_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, sqlite3.Error, OSError, ValueError)


@dataclass
class PricesOptions:
    apply: bool = False


def refresh_regions(config: Config) -> list[str]:
    """The regions to refresh: the config's, or with `regions: all` every region the shipped table has a
    multiplier for (the regions fleetwarden knows prices for) outside China; less exclude_regions and --regions."""
    if config.regions == "all":
        known = load_prices().region_multipliers
        regions = sorted(r for r in known if not r.startswith(OTHER_PRICE_LISTS))
    else:
        regions = list(config.regions)
    excluded = set(config.exclude_regions)
    scope = current_scope()
    return [r for r in regions if r not in excluded and (scope is None or scope.regions is None or r in scope.regions)]


def stored_tables(store: StateStore) -> tuple[dict[str, RegionTable], str | None]:
    """The stored Price List tables by region, and why some (or all) could not be read. Never raises: a guard that
    cannot read them prices from the shipped table and says so."""
    try:
        records = store.list_records(KIND)
    except STORE_ERRORS as exc:
        log.warning("the stored price tables could not be read: %s", exc)
        return {}, f"the state store could not be read: {type(exc).__name__}: {exc}"
    tables: dict[str, RegionTable] = {}
    problems: list[str] = []
    for region, data, _version in records:
        try:
            tables[region] = RegionTable.from_record(region, data)
        except PriceTableError as exc:
            problems.append(str(exc))
    return tables, "; ".join(problems) or None


def _record(result: RegionPrices, now: datetime) -> dict[str, Any]:
    parsed = result.parsed
    return {
        "prices": dict(sorted(parsed.prices.items())),
        "refreshed_at": now.isoformat(),
        "source": SOURCE,
        "products": parsed.products,
        "pages": result.pages,
        "skipped": dict(sorted(parsed.skipped.items())),
        "conflicts": {t: sorted(set(seen)) for t, seen in sorted(parsed.conflicts.items())},
    }


def store_table(store: StateStore, region: str, data: dict[str, Any]) -> int:
    """Write one region's table over whatever version is there; on a lost race, read again and retry once."""
    for attempt in (1, 2):
        current = store.get_record(KIND, region)
        try:
            return store.put_record(KIND, region, data, expected_version=current[1] if current else None)
        except VersionConflict:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def compare(
    new: dict[str, float], old: dict[str, float], old_name: str, region: str
) -> tuple[dict[str, Any], list[str]]:
    """Counts of changed, new and removed types against `old`, and the largest changes, largest first."""
    changed = sorted(
        (t for t in new.keys() & old.keys() if abs(new[t] - old[t]) > 1e-9 * max(new[t], old[t])),
        key=lambda t: (-abs(new[t] - old[t]) / old[t] if old[t] else float("-inf"), t),
    )
    largest = [f"{t} ${old[t]:g} -> ${new[t]:g} ({(new[t] - old[t]) / old[t]:+.1%})" for t in changed[:LARGEST_SHOWN]]
    counts = {
        "compared_with": old_name,
        "changed": len(changed),
        "new": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "unchanged": len(new.keys() & old.keys()) - len(changed),
        "largest_changes": largest,
    }
    return counts, largest


def _baseline(region: str, stored: dict[str, RegionTable]) -> tuple[dict[str, float], str]:
    if region in stored:
        table = stored[region]
        return table.prices, f"the stored table of {table.refreshed_at.date()}"
    shipped = load_prices()
    prices = {t: shipped.price(t, region).usd_per_hour for t in shipped.prices}
    prices.update(shipped.region_prices.get(region, {}))
    return prices, f"the shipped table (compiled {shipped.compiled})"


def run_prices_refresh(ctx: RunContext, options: PricesOptions) -> RunReport:
    """Fetch every region's on-demand Linux prices; show what changed; with `apply`, store them."""
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=not options.apply, started_at=now)
    regions = refresh_regions(ctx.config)
    stored, problem = stored_tables(ctx.store)
    client = ctx.factory.client("pricing", region=PRICING_REGION)
    per_region: dict[str, dict[str, Any]] = {}
    lines: dict[str, str] = {}
    written: list[str] = []
    concurrency = max(1, min(MAX_CONCURRENCY, ctx.config.aws.max_concurrency))
    for outcome in fan_out(regions, lambda r: fetch_region(client, r), max_concurrency=concurrency, label="prices"):
        region = outcome.key
        result = outcome.value
        error = outcome.error if result is None else result.error
        if result is None or error is not None:
            report.targets.append(TargetResult(account_id="*", region=region, status=TargetStatus.ERROR, error=error))
            per_region[region] = {"error": error, "kept": "the stored table" if region in stored else "none stored"}
            lines[region] = f"failed: {error}"
            continue
        parsed = result.parsed
        old, old_name = _baseline(region, stored)
        counts, largest = compare(parsed.prices, old, old_name, region)
        entry: dict[str, Any] = {
            "types": len(parsed.prices),
            "products": parsed.products,
            "pages": result.pages,
            **counts,
            "notes": parsed.notes(),
            "stored": False,
        }
        data = _record(result, now)
        size = len(json.dumps(data, separators=(",", ":")))
        entry["record_bytes"] = size
        status, target_error = TargetStatus.OK, None
        if size > MAX_RECORD_BYTES:
            status, target_error = TargetStatus.ERROR, f"the table is {size} bytes, over {MAX_RECORD_BYTES}: not stored"
        elif options.apply:
            try:
                entry["version"] = store_table(ctx.store, region, data)
                entry["stored"] = True
                written.append(region)
            except VersionConflict:
                status, target_error = TargetStatus.ERROR, "another run wrote this region's table at the same time"
            except STORE_ERRORS as exc:
                status, target_error = TargetStatus.ERROR, f"could not store the table: {type(exc).__name__}: {exc}"
        report.targets.append(TargetResult(account_id="*", region=region, status=status, error=target_error))
        if target_error:
            entry["error"] = target_error
        per_region[region] = entry
        verb = "stored" if entry["stored"] else ("not stored" if target_error else "would store")
        # Types the shipped table has and the Price List did not return stay priced from the shipped table.
        gone = "only in the shipped table" if region not in stored else "no longer listed"
        text = (
            f"{verb} {len(parsed.prices)} types from {parsed.products} products; against {old_name}: "
            f"{counts['changed']} changed, {counts['new']} new, {counts['removed']} {gone}"
        )
        if largest:
            text += "; largest: " + ", ".join(largest[:3])
        if parsed.skipped:
            text += f"; {sum(parsed.skipped.values())} products skipped"
        lines[region] = text
    if written:
        stored, problem = stored_tables(ctx.store)
    info: TableInfo = describe_tables(stored, ctx.clock(), problem=problem)
    report.summary = {
        "regions": dict(sorted(per_region.items())),
        "stored": sorted(written),
        "failed": sorted(t.region for t in report.targets if t.status == TargetStatus.ERROR),
        "price_table": info.as_dict(),
        "prices": info.line,
        **{f"region {r}": text for r, text in sorted(lines.items())},
    }
    report.finished_at = ctx.clock()
    return report


def skipped_refresh(ctx: RunContext, apply: bool) -> RunReport:
    """The scheduled refresh in a config without a burn-rate source: nothing reads the table, so nothing is fetched
    (an ok run that says so, not a failure that would raise the PartialRuns alarm every week)."""
    now = ctx.clock()
    report = RunReport(run_id=ctx.run_id, workflow=WORKFLOW, dry_run=not apply, started_at=now, finished_at=now)
    report.summary = {"skipped": "guard.spend has no burn-rate source: no price table to keep current"}
    return report
