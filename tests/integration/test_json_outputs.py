"""Every command's --json output validates against its published schema (docs/schemas/, generated from the models
in fleetwarden.outputs and the RunReport), the published files are current, and options a command does not use
are refused rather than ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fleet import ACCOUNTS, cli, launch, write_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer
from fleetwarden.outputs import SCHEMAS, json_schema, schema_file_name, write_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
A = ACCOUNTS[0]
REGION = "us-east-1"


def _valid(stdout: str) -> dict[str, Any]:
    document = json.loads(stdout)
    schema_id = document["schema"]
    published = json.loads((DOCS / schema_file_name(schema_id)).read_text())
    jsonschema.Draft202012Validator.check_schema(published)
    jsonschema.validate(document, published, cls=jsonschema.Draft202012Validator)
    return dict(document)


def test_the_published_schemas_are_current(tmp_path: Path) -> None:
    written = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    published = {p.name: p.read_text() for p in DOCS.glob("*.schema.json")}
    assert written == published, "docs/schemas is stale: run `make schemas`"
    assert len(written) == len(SCHEMAS)
    for schema_id in SCHEMAS:
        assert json_schema(schema_id)["title"] == schema_id


def test_every_command_output_validates(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    launch(factory, A, REGION, {})
    config = str(
        write_config(
            tmp_path,
            aws.url,
            (A,),
            [REGION],
            top={"guard": {"max_running_instances": 0}},
            created_by_must_be_iam_user=False,
        )
    )
    seen = set()

    def run(*args: str, code: int = 0) -> dict[str, Any]:
        result = cli("--config", config, "--json", *args)
        assert result.exit_code == code, result.stderr
        document = _valid(result.stdout)
        seen.add(document["schema"])
        return document

    assert run("validate")["valid"] is True
    assert run("audit")["workflow"] == "audit"
    assert run("guard", "run", "--apply")["workflow"] == "guard"
    assert [a["account_id"] for a in run("guard", "status")["accounts"]] == [A]
    assert run("window", "status")["windows"] == []
    added = run(
        "exceptions", "add", "--kind", "snooze", "--account", A, "--reason", "r", "--owner", "o", "--expires", "7d"
    )
    assert added["exception"]["source"] == "store"
    assert [e["id"] for e in run("exceptions", "list")["exceptions"]] == [added["exception"]["id"]]
    assert run("report")["workflow"] == "report"
    # The spend report's RunReport carries the report itself in summary.spend, under its own schema.
    lines = [{"date": "2026-11-02", "account": A, "service": "Amazon Simple Storage Service", "usd": "1.25"}]
    aws.admin("/_fleetwarden/ce/costs", {"account_id": "123456789012", "lines": lines})
    spend = run("spend", "report", "--as-of", "2026-11-03")["summary"]["spend"]
    assert _valid(json.dumps(spend))["total_usd"] == "1.25"
    seen.add(spend["schema"])
    assert seen == set(SCHEMAS) - {"fleetwarden.doctor/v1"}  # doctor's: tests/integration/test_doctor.py


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--output-dir", "out", "guard", "status"), "--output-dir: `guard status` writes no files"),
        (("exceptions", "list", "--output-dir", "out"), "--output-dir: `exceptions list` writes no files"),
        (("--json", "state", "init"), "--json: `state init` has no JSON output"),
        (("--json", "exceptions", "remove", "x"), "--json: `exceptions remove` has no JSON output"),
    ],
)
def test_options_a_command_does_not_use_are_refused(
    aws: EmulatorServer, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    config = str(write_config(tmp_path, aws.url, (A,), [REGION]))
    result = cli("--config", config, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (Path.cwd() / "out").exists()


def test_the_written_report_has_names_and_the_stores_trend(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    import re

    import yaml

    for _ in range(3):
        launch(factory, A, REGION, {})
    path = write_config(tmp_path, aws.url, (A,), [REGION], created_by_must_be_iam_user=False)
    data = yaml.safe_load(path.read_text())
    data["accounts"][0]["name"] = "payments-prod"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = cli("--config", str(path), "--output-dir", str(out), "audit")
    assert result.exit_code == 0, result.stderr
    page = (out / "report.html").read_text()
    assert f"{A} (payments-prod)" in page
    days = re.findall(r'<g class="day" data-day="([\d-]+)" data-new="(\d+)" data-resolved="(\d+)"', page)
    assert len(days) == 14 and sum(int(new) for _, new, _ in days) == 3  # today's three new findings
