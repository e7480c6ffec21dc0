"""Exceptions as code: an `exceptions:` list in the config, reviewed and versioned with it, merged with the state
store's exceptions; each shown with where it lives; a config exception is removed by editing the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import ACCOUNTS, cli, launch, states, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A = ACCOUNTS[0]
REGION = "us-east-1"
GOOD = {"created_by": "alice", "department": "eng", "project": "web"}


def _with_exceptions(path: Path, entries: list[dict[str, Any]]) -> Path:
    config = yaml.safe_load(path.read_text())
    config["exceptions"] = entries
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_exceptions_apply_and_merge_with_the_store(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    keep, stop, snoozed = (launch(factory, A, REGION, {"department": "eng"})[0] for _ in range(3))
    config = write_config(tmp_path, aws.url, (A,), [REGION], action="stop", created_by_must_be_iam_user=False)
    _with_exceptions(
        config,
        [
            {
                "id": "db-primary",
                "kind": "do-not-stop",
                "resource_id": keep,
                "reason": "database primary, CHG-1234",
                "owner": "dba@example.com",
                "permanent": True,
            },
            {
                "kind": "snooze",
                "check": "tags",
                "resource_id": snoozed,
                "reason": "migrating",
                "owner": "alice",
                "expires": "2099-01-31",
            },
        ],
    )
    added = cli(
        "--config", str(config), "exceptions", "add", "--kind", "do-not-terminate", "--account", A,
        "--reason", "legal hold", "--owner", "legal", "--expires", "7d",
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr

    listed = cli("--config", str(config), "--json", "exceptions", "list")
    assert listed.exit_code == 0, listed.stderr
    rows = {row["reason"]: row for row in yaml.safe_load(listed.stdout)["exceptions"]}
    assert rows["database primary, CHG-1234"]["id"] == "db-primary"
    assert rows["database primary, CHG-1234"]["source"] == "config exceptions[0]"
    assert rows["database primary, CHG-1234"]["expires_at"] is None
    assert rows["migrating"]["source"] == "config exceptions[1]" and rows["migrating"]["id"].startswith("cfg-")
    assert rows["migrating"]["expires_at"].startswith("2099-01-31T00:00:00")
    assert rows["legal hold"]["source"] == "store"

    result = cli("--config", str(config), "--json", "audit", "--apply")
    assert result.exit_code == 0, result.stderr
    by_id = {a["resource_id"]: a for a in result.report["actions"]}
    assert by_id[keep]["outcome"] == "skipped" and "do-not-stop" in by_id[keep]["reason"]
    assert {f["resource_id"]: f["status"] for f in result.report["findings"]}[snoozed] == "suppressed"
    assert states(factory, A, REGION, [keep, stop, snoozed]) == {keep: "running", stop: "stopped", snoozed: "running"}

    # The id of a config exception is stable from run to run (a snooze keeps pointing at it).
    again = yaml.safe_load(cli("--config", str(config), "--json", "exceptions", "list").stdout)["exceptions"]
    assert {r["id"] for r in again} == {r["id"] for r in rows.values()}

    removed = cli("--config", str(config), "exceptions", "remove", "db-primary")
    assert removed.exit_code == 2
    assert "defined in the config (config exceptions[0]): remove it there" in removed.stderr


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "snooze", "account": A, "reason": "r", "owner": "o"}, "needs `expires`"),
        ({"kind": "snooze", "reason": "r", "owner": "o", "permanent": True}, "needs a scope"),
        ({"kind": "snooze", "account": A, "reason": "r", "permanent": True}, "exceptions[0].owner"),
        ({"kind": "snooze", "account": A, "owner": "o", "permanent": True, "reasn": "r"}, "unknown key"),
        ({"kind": "pause", "account": A, "reason": "r", "owner": "o", "permanent": True}, "exceptions[0].kind"),
        (
            {"kind": "snooze", "account": A, "reason": "r", "owner": "o", "permanent": True, "expires": "2030-01-01"},
            "keep one",
        ),
    ],
)
def test_bad_config_exceptions_are_config_errors(
    aws: EmulatorServer, tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    config = _with_exceptions(write_config(tmp_path, aws.url, (A,), [REGION]), [entry])
    result = cli("--config", str(config), "validate")
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_list_never_cuts_an_id_on_a_narrow_terminal(
    aws: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, aws.url, (A,), [REGION])
    long_id = "change-request-2026-11-30-database-primary-keep"
    _with_exceptions(
        config,
        [{"id": long_id, "kind": "do-not-stop", "account": A, "reason": "r", "owner": "o", "permanent": True}],
    )
    monkeypatch.setenv("COLUMNS", "60")
    result = cli("--config", str(config), "exceptions", "list")
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    first_column = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") > 2]
    assert long_id in "".join(first_column)
