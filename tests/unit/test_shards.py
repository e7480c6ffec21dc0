"""Shards without AWS: the shard fields of workflow events, list-shards and aggregate events, shard items (each
account once, max_actions shares within the limit), and the merge of RunReport fragments."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwarden.events import EventError, parse_event
from fleetwarden.model import ActionOutcome, ActionResult, Finding, RunReport, TargetResult, TargetStatus
from fleetwarden.workflows.shards import (
    RunFiles,
    first_exit_code,
    max_actions_share,
    merge_reports,
    merge_summaries,
    shard_items,
)

EVENTS = Path(__file__).resolve().parents[1] / "events" / "shards"
A, B, C = "111111111111", "222222222222", "333333333333"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- events --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "action"), [("audit_shard", "audit"), ("list_shards", "list-shards"), ("aggregate", "aggregate")]
)
def test_sample_shard_events_parse(name: str, action: str) -> None:
    parsed = parse_event(json.loads((EVENTS / f"{name}.json").read_text()))
    assert parsed.action == action


def test_a_shard_event_carries_its_fields_apart_from_the_workflow_params() -> None:
    parsed = parse_event(json.loads((EVENTS / "audit_shard.json").read_text()))
    assert parsed.params == {"confirm_terminate": False}
    assert parsed.shard == {
        "accounts": [A, B],
        "regions": ["us-east-1", "eu-west-1"],
        "run_id": "20250301T120500Z-1a2b3c4d",
        "shard": 0,
        "fragments": "s3://fleetwarden-runs-123456789012/runs",
    }
    assert "shard of 2 account(s)" in parsed.reason
    whole = parse_event({"action": "audit"})
    assert whole.shard == {} and whole.params == {"confirm_terminate": False}


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"action": "audit", "accounts": []}, "accounts"),
        ({"action": "audit", "accounts": [A, A]}, "each item once"),
        ({"action": "audit", "accounts": ["12345678901"]}, "12 digits"),
        ({"action": "audit", "accounts": A}, "accounts"),
        ({"action": "audit", "regions": ["US East"]}, "region"),
        ({"action": "audit", "accounts": [A], "run_id": "a/b"}, "run id"),
        ({"action": "audit", "accounts": [A], "fragments": "s3://bkt/p"}, "fragments needs run_id and shard"),
        ({"action": "audit", "shard": 1}, "shard needs accounts"),
        ({"action": "audit", "accounts": [A], "run_id": "r", "shard": 0, "fragments": "http://x"}, "s3://"),
        ({"action": "audit", "accounts": [A], "max_actions": -1}, "max_actions"),
        ({"action": "guard", "accounts": [A], "max_actions": 3}, "unknown key"),
        ({"action": "window-close", "accounts": [A]}, "a shard is accepted only by"),
        ({"action": "guard-release", "account": A, "accounts": [A]}, "unknown key"),
        ({"action": "list-shards"}, "event: required"),
        ({"action": "list-shards", "event": {"action": "audit"}, "size": 0}, "size"),
        ({"action": "aggregate", "run_id": "r"}, "fragments: required"),
    ],
)
def test_bad_shard_events_are_refused_with_the_key(event: dict[str, Any], problem: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(event)
    assert problem in str(caught.value)


def test_every_workflow_event_that_resolves_targets_accepts_a_shard() -> None:
    for action in ("audit", "guard", "window-open", "compliance-sync", "list-targets"):
        assert parse_event({"action": action, "accounts": [A], "regions": ["eu-west-1"]}).shard["accounts"] == [A]


# -- shard items -----------------------------------------------------------------------------------------
def test_shard_items_are_the_template_plus_each_shards_fields() -> None:
    shards = [[A, B], [C]]
    items = shard_items({"action": "audit", "apply": False}, shards, run_id="r1", fragments="s3://bkt/runs")
    assert items == [
        {
            "action": "audit",
            "apply": False,
            "accounts": [A, B],
            "run_id": "r1",
            "shard": 0,
            "fragments": "s3://bkt/runs",
        },
        {"action": "audit", "apply": False, "accounts": [C], "run_id": "r1", "shard": 1, "fragments": "s3://bkt/runs"},
    ]
    for item in items:  # each item is a valid shard event
        assert parse_event(item).shard["run_id"] == "r1"


@pytest.mark.parametrize(("limit", "sizes"), [(100, [25, 25, 25, 3]), (7, [3, 3, 3]), (0, [5]), (52, [6] * 8 + [4])])
def test_max_actions_shares_never_add_up_to_more_than_the_limit(limit: int, sizes: list[int]) -> None:
    shards = [[f"{n * 1000 + i:012d}" for i in range(size)] for n, size in enumerate(sizes)]
    items = shard_items({"action": "audit", "apply": True}, shards, run_id="r", fragments=None, audit_max_actions=limit)
    assert sum(item["max_actions"] for item in items) <= limit
    assert [item["max_actions"] for item in items] == [max_actions_share(limit, s, sum(sizes)) for s in sizes]


def test_run_files_layout() -> None:
    files = RunFiles.parse("s3://bucket/runs", "r1")
    assert (files.key("shards.json"), files.fragment_key(7)) == ("runs/r1/shards.json", "runs/r1/fragments/00007.json")
    assert RunFiles.parse("s3://bucket", "r1").key("report.json") == "r1/report.json"


# -- merging -----------------------------------------------------------------------------------------------
def test_exit_status_is_the_first_that_applies_in_designs_order() -> None:
    assert first_exit_code([0, 4, 0]) == 4
    assert first_exit_code([4, 5, 1]) == 5
    assert first_exit_code([1, 4, 2]) == 2
    assert first_exit_code([0, 3]) == 3
    assert first_exit_code([]) == 0


def test_summaries_add_up_counts_and_keep_what_every_shard_agrees_on() -> None:
    merged = merge_summaries(
        [
            {"instances_audited": 3, "findings_by_status": {"new": 2}, "required_tags": ["a"], "note": "x"},
            {"instances_audited": 4, "findings_by_status": {"new": 1, "ongoing": 1}, "required_tags": ["a"]},
            {"instances_audited": 0, "findings_by_status": {}, "required_tags": ["a"], "note": "y", "ok": True},
        ]
    )
    tripped = merge_summaries([{"tripped": [A]}, {"tripped": []}, {"tripped": [B, C]}])
    assert tripped == {"tripped": [A, B, C]}
    assert merged == {
        "instances_audited": 7,
        "findings_by_status": {"new": 3, "ongoing": 1},
        "required_tags": ["a"],
        "note": "x; y",
        "ok": True,
    }


def _fragment(account: str, started: datetime, findings: int) -> RunReport:
    report = RunReport(run_id="r", workflow="audit", dry_run=True, started_at=started, finished_at=started)
    for region in ("us-east-1", "eu-west-1"):
        report.targets.append(TargetResult(account_id=account, region=region))
    report.findings = [
        Finding(
            id=f"{account}-{n}",
            check="tags",
            account_id=account,
            region="us-east-1",
            resource_id=f"i-{n}",
            control="tags.required",
            title="t",
            first_seen=started,
            last_seen=started,
        )
        for n in range(findings)
    ]
    report.actions = [
        ActionResult(
            action="stop", account_id=account, region="us-east-1", resource_id=f"i-{n}", outcome=ActionOutcome.PLANNED
        )
        for n in range(findings)
    ]
    report.summary = {"violators": findings}
    return report


def test_fragments_merge_in_one_process_order_whatever_order_they_arrive_in() -> None:
    late, early = T0 + timedelta(seconds=30), T0
    fragments = [_fragment(C, late, 1), _fragment(A, early, 2), _fragment(B, early, 0)]
    merged = merge_reports("r", "audit", fragments, T0)
    assert [(t.account_id, t.region) for t in merged.targets] == [
        (a, r) for a in (A, B, C) for r in ("eu-west-1", "us-east-1")
    ]
    assert [f.id for f in merged.findings] == [f"{A}-0", f"{A}-1", f"{C}-0"]
    assert len(merged.actions) == 3 and merged.summary == {"violators": 3}
    assert (merged.started_at, merged.finished_at, merged.dry_run) == (early, late, True)
    assert all(t.status == TargetStatus.OK for t in merged.targets)
