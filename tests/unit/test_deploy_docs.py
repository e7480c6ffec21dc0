"""docs/deploy.md is followed alone, so what it shows must be real: every `fleetwarden ...` command it shows parses
with the real command line (no AWS call: click's `make_context` only), every stack parameter it names is a
parameter of that stack's template, and every file, path and link it names exists."""

from __future__ import annotations

import glob
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from fleetwarden import deploy
from fleetwarden.cli import main
from fleetwarden.events import parse_event

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOC = DOCS / "deploy.md"

# A fenced block, possibly indented (inside a list item): its indent, language and body.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SHELL = {"sh", "bash", "shell", "console"}
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>\w+)\1")
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
# A repository path named in the text: deploy/..., src/..., tests/..., docs/..., bench/... (not inside a URL).
REPO_PATH = re.compile(r"(?<![\w./:$<{-])(?P<path>(?:deploy|src|tests|docs|bench)/[\w./*-]*[\w*/])")
# The stacks the page deploys, by the stack (or stack set) name it gives them.
STACKS = {"fleetwarden-hub": "hub", "fleetwarden-member": "member", "fleetwarden-billing": "billing"}
# `Key=value` spans in the prose that are AWS CLI shorthand, not stack parameters.
CLI_SHORTHAND = {
    "Enabled",
    "RetainStacksOnAccountRemoval",
    "OrganizationalUnitIds",
    "Status",
    "FailureTolerancePercentage",
    "MaxConcurrentPercentage",
}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced block, the body dedented by the fence's indent."""
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines())
        yield match["lang"], body


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _shell_lines(body: str) -> Iterator[str]:
    """The logical lines of a shell block: continuations joined, heredoc bodies left out."""
    lines = iter(body.splitlines())
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        heredoc = HEREDOC.search(logical)
        yield logical
        if heredoc:
            for inner in lines:
                if inner.strip() == heredoc["word"]:
                    break


def _simple_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line (split at `&&`, `|`, `;`, `$(`, redirections cut off)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    current: list[str] = []
    redirected = False
    for token in lexer:
        if token and all(c in "();<>|&" for c in token):
            if token in (">", ">>", "<", ">&"):
                redirected = True
                continue
            if current:
                yield current
            current, redirected = [], False
            continue
        if redirected:
            redirected = False  # the redirection's target
            continue
        current.append(token.removesuffix("$") if token.endswith("=$") else token)
    if current:
        yield current


def _fleetwarden_args(words: list[str]) -> list[str] | None:
    """The arguments after `fleetwarden` (or `.venv/bin/fleetwarden`), leading `VAR=value` words skipped."""
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words = words[1:]
    if words and Path(words[0]).name == "fleetwarden":
        return words[1:]
    return None


def doc_cli_commands(text: str) -> list[list[str]]:
    """Every fleetwarden command line of the page: in shell blocks, and in inline code spans of the prose."""
    commands: list[list[str]] = []
    for lang, body in _blocks(text):
        if lang not in SHELL:
            continue
        for line in _shell_lines(body):
            for words in _simple_commands(line):
                args = _fleetwarden_args(words)
                if args is not None:
                    commands.append(args)
    for span in SPAN.findall(_prose(text).replace("\n", " ")):
        if re.match(r"(\S+=\S+ )*(\S*/)?fleetwarden (-|[a-z])", span):
            for words in _simple_commands(span):
                args = _fleetwarden_args(words)
                if args is not None:
                    commands.append(args)
    return commands


def _pending(ctx: click.Context) -> list[str]:
    protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
    return [*protected, *ctx.args]


def parse_cli(args: list[str]) -> str:
    """Parse `fleetwarden ARGS` down to its command, as click would before running it; the command's path.

    Unknown commands and options, bad choices and missing required options raise click's UsageError."""
    try:
        ctx = main.make_context("fleetwarden", list(args))
        command: click.Command = main
        while isinstance(command, click.Group):
            rest = _pending(ctx)
            if not rest:
                raise click.UsageError(f"{ctx.command_path}: a group, without one of its commands")
            name, sub, rest = command.resolve_command(ctx, rest)
            assert name is not None and sub is not None
            ctx = sub.make_context(name, rest, parent=ctx)
            command = sub
        if ctx.args:
            raise click.UsageError(f"unexpected arguments: {ctx.args}")
        return ctx.command_path
    except click.exceptions.Exit as exc:  # --version, --help
        if exc.exit_code != 0:
            raise
        return "fleetwarden"


def test_every_fleetwarden_command_in_the_page_parses() -> None:
    commands = doc_cli_commands(_text())
    failures = []
    paths = set()
    for args in commands:
        try:
            paths.add(parse_cli(args))
        except click.UsageError as exc:
            failures.append(f"fleetwarden {shlex.join(args)}: {exc.format_message()}")
    assert not failures, "\n".join(failures)
    # The extraction itself works: the walkthrough's commands were found.
    for expected in (
        "fleetwarden validate",
        "fleetwarden permissions",
        "fleetwarden deploy package",
        "fleetwarden deploy render",
        "fleetwarden guard status",
        "fleetwarden guard release",
    ):
        assert expected in paths, f"{expected} not found among the page's commands: {sorted(paths)}"


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "package", "--config", "fleetwarden.yaml"],  # deploy package takes no config
        ["deploy", "render", "--kind", "members"],
        ["permissions", "--tier", "readonly"],
        ["targets"],
        ["guard", "release", "--apply"],  # --account is required
        ["deploy"],
    ],
)
def test_the_parser_refuses_what_the_cli_refuses(args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        parse_cli(args)


def test_the_extractor_finds_commands_in_blocks_spans_and_continuations() -> None:
    text = (
        "Run `fleetwarden guard status --config\nx.yaml` first.\n\n"
        "```sh\n"
        "VERSION=$(fleetwarden --version | awk '{print $NF}')\n"
        "cat > f.yaml <<YAML\nfleetwarden: not a command\nYAML\n"
        "fleetwarden deploy render --kind hub \\\n  --from-config --config f.yaml > hub.yaml  # a comment\n"
        "PATH=/opt/py/bin:$PATH .venv/bin/fleetwarden deploy package && echo done\n"
        "```\n"
    )
    assert doc_cli_commands(text) == [
        ["--version"],
        ["deploy", "render", "--kind", "hub", "--from-config", "--config", "f.yaml"],
        ["deploy", "package"],
        ["guard", "status", "--config", "x.yaml"],
    ]


def _aws_commands(text: str, *prefix: str) -> Iterator[list[str]]:
    for lang, body in _blocks(text):
        if lang not in SHELL:
            continue
        for line in _shell_lines(body):
            for words in _simple_commands(line):
                if words[: len(prefix)] == list(prefix):
                    yield words


def _option(words: list[str], name: str) -> str | None:
    return next((value for option, value in itertools.pairwise(words) if option == name), None)


def test_every_event_the_page_sends_is_one_the_handler_accepts() -> None:
    """`aws lambda invoke --payload` and the org-run's `{"event": ...}` input: events `parse_event` accepts, so an
    operator following the page never gets an `error` result for the event itself."""
    text = _text()
    payloads = [p for words in _aws_commands(text, "aws", "lambda", "invoke") if (p := _option(words, "--payload"))]
    org_runs = [
        json.loads(i)["event"]
        for words in _aws_commands(text, "aws", "stepfunctions", "start-execution")
        if (i := _option(words, "--input")) and "event" in json.loads(i)
    ]
    assert len(payloads) >= 3 and org_runs, (payloads, org_runs)
    for event in [json.loads(p) for p in payloads] + org_runs:
        assert parse_event(event).action == event["action"]
    # Every invoke that sends JSON says how (AWS CLI v2 otherwise reads --payload as base64).
    for words in _aws_commands(text, "aws", "lambda", "invoke"):
        if _option(words, "--payload"):
            assert _option(words, "--cli-binary-format") == "raw-in-base64-out", shlex.join(words)


def _template_parameters() -> dict[str, set[str]]:
    return {
        "hub": set(deploy.hub_template(deploy.load_state_machine())["Parameters"]),
        "member": set(deploy.member_role_template()["Parameters"]),
        "billing": set(deploy.billing_role_template()["Parameters"]),
    }


def _stack_parameters(words: list[str]) -> list[str]:
    """The parameter keys a CloudFormation command gives: `--parameter-overrides K=V ...`, `--parameters
    ParameterKey=K,...`."""
    keys: list[str] = []
    option = ""
    for word in words:
        if word.startswith("--"):
            option = word
            continue
        if option == "--parameter-overrides" and "=" in word:
            keys.append(word.split("=", 1)[0])
        elif option == "--parameters":
            match = re.match(r"ParameterKey=([^,]+)", word)
            if match:
                keys.append(match[1])
    return keys


def _stack_kind(words: list[str]) -> str | None:
    name = _option(words, "--stack-name") or _option(words, "--stack-set-name")
    return STACKS.get(name) if name else None


def test_every_stack_parameter_in_the_commands_is_one_of_its_template() -> None:
    parameters = _template_parameters()
    checked: dict[str, set[str]] = {"hub": set(), "member": set(), "billing": set()}
    failures = []
    for lang, body in _blocks(_text()):
        if lang not in SHELL:
            continue
        for line in _shell_lines(body):
            for words in _simple_commands(line):
                if words[:2] != ["aws", "cloudformation"]:
                    continue
                keys = _stack_parameters(words)
                kind = _stack_kind(words)
                if keys and kind is None:
                    failures.append(f"parameters for a stack the test cannot tell: {shlex.join(words)}")
                    continue
                for key in keys:
                    assert kind is not None
                    checked[kind].add(key)
                    if key not in parameters[kind]:
                        failures.append(f"{key} is not a parameter of the {kind} template: {shlex.join(words)}")
    assert not failures, "\n".join(failures)
    # The walkthrough deploys the hub with these, and the member role with these: the check above saw them.
    assert {"CodeBucket", "CodeKey", "ConfigReference", "RulesState"} <= checked["hub"]
    assert {"HubAccountId", "ExternalId"} <= checked["member"]


def test_every_parameter_named_in_the_prose_exists() -> None:
    """`RulesState=DISABLED`, `Disabled=true` in the text: hub (or role) parameters, or known CLI shorthand."""
    known = set().union(*_template_parameters().values()) | CLI_SHORTHAND
    named = {
        match[1]
        for span in SPAN.findall(_prose(_text()))
        if (match := re.fullmatch(r"([A-Z][A-Za-z0-9]+)=\S*", span.strip()))
    }
    assert named, "no `Key=value` span found: the pattern is wrong"
    assert named <= known, f"not a parameter of any template: {sorted(named - known)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _broken_links(path: Path, only_to: Path | None = None) -> list[str]:
    broken = []
    for match in LINK.finditer(_prose(path.read_text(encoding="utf-8"))):
        target = match["target"]
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if only_to is not None and resolved != only_to.resolve():
            continue
        if not resolved.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{path.relative_to(ROOT)}: {target}: no heading #{anchor}")
    return broken


def test_every_link_of_the_page_resolves() -> None:
    assert not _broken_links(DOC), "\n".join(_broken_links(DOC))


def test_every_link_into_the_page_resolves() -> None:
    """Other pages link to the page's sections (#the-lambda-package, #organization-scale-runs)."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]
    broken = [line for page in pages if page != DOC for line in _broken_links(page, only_to=DOC)]
    assert not broken, "\n".join(broken)


def test_every_repository_path_named_in_the_page_exists() -> None:
    paths = {m["path"].rstrip("/.") for m in REPO_PATH.finditer(_text())}
    assert "deploy/templates/hub.yaml" in paths and "src/fleetwarden/aws/targets.py" in paths
    missing = [p for p in sorted(paths) if not (glob.glob(str(ROOT / p)) if "*" in p else (ROOT / p).exists())]
    assert not missing, f"named in docs/deploy.md, not in the repository: {missing}"


def test_the_other_helpers_sections_keep_their_headings() -> None:
    """Links elsewhere (docs/lambda.md) point at these; the walkthrough links to the reference sections."""
    anchors = _anchors(DOC)
    for anchor in ("the-lambda-package", "organization-scale-runs", "the-scan-window-in-aws"):
        assert anchor in anchors
