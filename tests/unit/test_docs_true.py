"""Docs that stay true (issue 12 item 6): every `fleetwarden ...` command shown in README.md and docs/ parses as
written against the real CLI (options, choices, arguments); those that need no AWS run; every relative link, every
anchor and every repository path they name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fleetwarden.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CODE_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)
# Commands to type are in shell blocks; an untagged block shows output (which may start with "fleetwarden").
SHELL_BLOCK = re.compile(r"```(?:sh|bash|shell|console)\n(.*?)```", re.S)
# A synopsis names its arguments in capitals (PATH, ID, COMMAND) or shows alternatives: the path is checked, not
# the arguments.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$|\||\.\.\.|<")


def _shown_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text(encoding="utf-8")):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("fleetwarden ") or line == "fleetwarden":
                    found.append((doc.relative_to(ROOT).as_posix(), line))
    return found


COMMANDS = _shown_commands()


def _words(line: str) -> tuple[list[str], bool]:
    """The arguments after `fleetwarden` (no comment, no redirection, optional parts kept), and whether the line
    is a synopsis."""
    words = shlex.split(line, comments=True)[1:]
    if ">" in words:
        words = words[: words.index(">")]
    synopsis = any(PLACEHOLDER.search(w.strip("[]")) for w in words)
    return [w.strip("[]") for w in words if w.strip("[]")], synopsis


def _parse(words: list[str], synopsis: bool) -> click.Command:
    """Resolve the command path and (unless a synopsis) parse the options exactly as the CLI would, without running."""
    command: click.Command = main
    ctx = main.make_context("fleetwarden", list(words), resilient_parsing=synopsis)
    while isinstance(command, click.Group):
        # click 8.2+ deprecates the protected_args property (its value is in _protected_args); 8.1 has only it.
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        rest = [*protected, *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=synopsis)
    return command


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 30
    assert {doc for doc, _ in COMMANDS} >= {"README.md", "docs/audit.md", "docs/guard.md", "docs/window.md"}


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{line[:60]}" for d, line in COMMANDS])
def test_every_command_shown_parses(doc: str, line: str) -> None:
    words, synopsis = _words(line)
    try:
        command = _parse(words, synopsis)
    except click.exceptions.Exit:
        return  # --version / --help: parsed and answered
    except click.UsageError as exc:
        pytest.fail(f"{doc}: `{line}` does not parse: {exc.format_message()}")
    assert not isinstance(command, click.Group) or "COMMAND" in line, f"{doc}: `{line}` names no command"


def test_the_commands_that_need_no_aws_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetwarden.yaml").write_text('accounts: [{id: "111111111111"}]\nregions: [us-east-1]\n')
    ran = 0
    for doc, line in COMMANDS:
        words, synopsis = _words(line)
        offline = words[:1] in (["validate"], ["permissions"], ["--version"]) or words[:2] == ["deploy", "render"]
        if synopsis or not offline:
            continue
        result = CliRunner().invoke(main, words)
        assert result.exit_code == 0, f"{doc}: `{line}` exited {result.exit_code}: {result.output}"
        ran += 1
    assert ran >= 6


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_anchor_and_path_named_exists() -> None:
    problems = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        prose = CODE_BLOCK.sub("", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                problems.append(f"{doc.name}: link to {target}: no such file")
            elif anchor and linked.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(encoding="utf-8"), re.M)}
                if anchor not in headings:
                    problems.append(f"{doc.name}: link to {target}: no such heading")
        for named in set(re.findall(r"`((?:src|tests|docs|bench|deploy|\.ci)/[\w./-]+)`", text)):
            if not (ROOT / named.rstrip("/")).exists():
                problems.append(f"{doc.name}: names {named}, which does not exist")
    assert problems == []
