"""Meta-tests over the registries and the CLI: everything is documented, typed and declares its permissions."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from fleetwarden.checks import load_checks
from fleetwarden.cli import main
from fleetwarden.permissions import declared, policy_documents
from fleetwarden.sinks import sink_registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        out.append((full, command))
        if isinstance(command, click.Group):
            out += _commands(command, full + " ")
    return out


def test_every_command_has_help_and_is_documented() -> None:
    cli_doc = (DOCS / "cli.md").read_text()
    for name, command in _commands(main):
        assert command.help and len(command.help) > 20, f"`{name}` needs a help text"
        result = CliRunner().invoke(main, [*name.split(), "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
        assert f"`{name}" in cli_doc, f"`{name}` is not in docs/cli.md"


def test_every_sink_and_check_is_documented_with_config_and_permissions() -> None:
    for name, sink in sink_registry.items():
        assert sink.__doc__, name
        assert sink.permissions, f"sink {name} declares no permissions"
        assert sink.config_model.model_config.get("extra") == "forbid"
        assert name in (DOCS / "sinks.md").read_text(), f"sink {name} missing from docs/sinks.md"
    for name, check in load_checks().items():
        assert check.__doc__ and check.permissions, name
        assert check.config_model.model_config.get("extra") == "forbid"
        assert (DOCS / "checks" / f"{name}.md").exists(), f"docs/checks/{name}.md"


def test_permissions_command_prints_policies() -> None:
    result = CliRunner().invoke(main, ["--config", "/nonexistent.yaml", "permissions"])
    assert result.exit_code == 0
    docs = json.loads(result.output)
    # Without a config every feature is in (narrowed actions sit in their own statements).
    member = {a for statement in docs["member_role"]["Statement"] for a in statement["Action"]}
    assert {"ec2:DescribeInstances", "ec2:StopInstances", "ec2:TerminateInstances", "iam:ListUsers"} <= member
    hub = {a for statement in docs["hub"]["Statement"] for a in statement["Action"]}
    assert {"sts:AssumeRole", "organizations:ListAccounts", "sns:Publish", "dynamodb:PutItem"} <= hub


def test_every_declared_permission_looks_like_an_iam_action() -> None:
    for part, actions in declared().items():
        for action in actions:
            service, _, name = action.partition(":")
            assert service.islower() and name[:1].isupper(), f"{part}: {action}"
    assert policy_documents()["hub"]["Version"] == "2012-10-17"
