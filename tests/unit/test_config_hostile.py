"""The config loader against hostile input (issue 8, defects 10, 4b and 12b): every case exits 2 with one problem
line naming the file and the key path, no traceback, in bounded time and memory; the Lambda handler returns the
same as an error result."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fleetwarden.cli import main
from fleetwarden.config import Config, load_config, parse_config
from fleetwarden.config_source import load_config_from
from fleetwarden.errors import ConfigError

BILLION_LAUGHS = "\n".join(
    [
        'lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 9)),
        "audit:",
        "  required_tags: *lol8",
        "",
    ]
)


def validate(path: Path, content: str | bytes | None = None) -> Result:
    """`fleetwarden validate --config PATH`, after writing `content` there (text as UTF-8)."""
    if content is not None:
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return CliRunner().invoke(main, ["validate", "--config", str(path)])


def the_problem(result: Result, source: Path | str) -> str:
    """The one problem of a failed `validate`: exit 2, `error: invalid config SOURCE:` and one `key.path: message`."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    head = f"error: invalid config {source}:"
    assert lines[0].startswith(head), lines
    problems = [lines[0][len(head) :].strip()] if len(lines) == 1 else [line.removeprefix("  - ") for line in lines[1:]]
    assert len(problems) == 1, lines
    return problems[0]


def test_a_plain_config_still_validates(tmp_path: Path) -> None:
    result = validate(tmp_path / "ok.yaml", "regions: [us-east-1]\naudit: {action: stop, grace_minutes: 30}\n")
    assert result.exit_code == 0, result.output
    assert "ok " in result.stderr and "audit action: stop" in result.stderr


# 1 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("audit:\n  action: report\n  action: terminate\n", "audit.action: duplicate key (lines 2 and 3)"),
        ("apply: false\nregions: [us-east-1]\napply: true\n", "apply: duplicate key (lines 1 and 3)"),
        (
            "accounts:\n  - id: '111111111111'\n    id: '222222222222'\n",
            "accounts[0].id: duplicate key (lines 2 and 3)",
        ),
        (
            "sinks:\n  ops: {type: sns, topic_arn: 'arn:aws:sns:us-east-1:111111111111:a', topic_arn: x}\n",
            "sinks.ops.topic_arn: duplicate key (line 2, columns 20 and 71)",
        ),
        ("audit:\n  tag_values:\n    project: [a]\n    project: [b]\n", "audit.tag_values.project: duplicate key"),
    ],
)
def test_duplicate_keys_are_refused_at_every_level_with_both_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "dup.yaml"
    assert the_problem(validate(path, text), path).startswith(problem)


def test_a_merge_key_may_be_overridden_by_an_explicit_key() -> None:
    config = parse_config("audit:\n  notify: &n []\n  <<: {action: stop}\n  action: report\n", "m.yaml")
    assert config.audit.action == "report"


# 2 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("audit:\n  action: stop # café\n".encode("latin-1"), "line 2: not UTF-8 text (byte 0xe9)"),
        ("audit: {action: stop}\n".encode("utf-16"), "line 1: UTF-16 or UTF-32 text, not UTF-8"),
        ("audit: {action: st\u00f6p}\n".encode("cp1252"), "line 1: not UTF-8 text (byte 0xf6)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00", "line 1: a binary file (NUL byte), not YAML text"),
        (b"audit:\n  action: stop\x07\n", "line 2: not valid YAML: character #x0007 is not allowed"),
    ],
)
def test_non_utf8_and_binary_files_are_one_line(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    assert the_problem(validate(path, content), path).startswith(problem)


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    result = validate(tmp_path / "bom.yaml", "\ufeffaudit: {action: stop}\n")
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "bom.yaml").audit.action == "stop"


def test_a_directory_as_the_config_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetwarden.yaml").mkdir()
    result = CliRunner().invoke(main, ["validate"])  # the default path, not checked by click
    assert the_problem(result, "fleetwarden.yaml") == "is a directory, not a config file"
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config_from(str(tmp_path / "fleetwarden.yaml"))


# 3 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("audit:\n  required_tags: " + "[" * 10_000 + "]" * 10_000 + "\n", "not valid YAML: exceeded maximum nesting"),
        ("audit:\n  required_tags: " + "{a: " * 10_000 + "}" * 10_000 + "\n", "not valid YAML: exceeded maximum"),
        ("audit:\n  required_tags: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
        ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n", "nested deeper than 64 levels"),
    ],
)
def test_deep_nesting_is_refused_with_a_depth_message(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "deep.yaml"
    assert problem in the_problem(validate(path, text), path)


# 4 -------------------------------------------------------------------------------------------------------------
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    assert len(BILLION_LAUGHS) < 1_600  # 1.5 KB that expands to 9^9 (387 million) strings
    path = tmp_path / "bomb.yaml"
    problem = the_problem(validate(path, BILLION_LAUGHS), path)
    assert problem.startswith("lol4[0]: aliases expand the document by more than 10000 values (the anchor at line 4")
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(ConfigError):
            parse_config(BILLION_LAUGHS, "bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - started < 5  # milliseconds in fact; today's code took 64 s and 3 GB
    assert peak < 20_000_000


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    problem = the_problem(validate(path, "audit:\n  tag_values: &t\n    project: *t\n"), path)
    assert problem == "audit.tag_values.project: an alias refers to a value that contains it (a recursive alias)"


def test_a_few_small_aliases_are_fine() -> None:
    config = parse_config("audit:\n  required_tags: &tags [owner, project]\nwindow:\n  select_tags: {}\n", "a.yaml")
    assert config.audit.required_tags == ["owner", "project"]


# 5 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("audit: {grace_minutes: 1.0e+30}", "audit.grace_minutes: Input should be a valid integer (got 1e+30)"),
        ("audit: {grace_minutes: 1e30}", "audit.grace_minutes: Input should be a valid integer (got '1e30')"),
        ("audit: {grace_minutes: 45.0}", "audit.grace_minutes: Input should be a valid integer (got 45.0)"),
        ("audit: {grace_minutes: 10000000}", "audit.grace_minutes: Input should be less than or equal to 525600"),
        ("audit: {grace_minutes: -1}", "audit.grace_minutes: Input should be greater than or equal to 0 (got -1)"),
        ("audit: {max_actions: " + "9" * 5_000 + "}", "audit.max_actions: line 1: not a valid int value"),
        ("audit: {max_actions: true}", "audit.max_actions: Input should be a valid integer (got True)"),
        ("window: {timeout_minutes: .inf}", "window.timeout_minutes: Input should be a finite number (got inf)"),
        ("window: {settle_minutes: .nan}", "window.settle_minutes: Input should be a finite number (got nan)"),
        ("window: {timeout_minutes: 1.0e+9}", "window.timeout_minutes: Input should be less than or equal to 10080"),
        ("guard: {spend: {max_usd: 1.0e+300}}", "guard.spend.max_usd: Input should be less than or equal to 1"),
        ("guard: {spend: {max_usd: 5, window_hours: 1.0e+9}}", "guard.spend.window_hours: Input should be less than"),
        ("guard: {max_running_instances: 9223372036854775808}", "guard.max_running_instances: Input should be less"),
        ("aws: {read_timeout: 1.0e+9}", "aws.read_timeout: Input should be less than or equal to 900"),
        ("aws: {max_attempts: 2.0}", "aws.max_attempts: Input should be a valid integer (got 2.0)"),
        (
            "accounts: [{id: '111111111111', guard: {spend_max_usd: .inf}}]",
            "accounts[0].guard.spend_max_usd: Input should be a finite number (got inf)",
        ),
    ],
)
def test_absurd_numbers_are_refused_with_their_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "num.yaml"
    assert the_problem(validate(path, text + "\n"), path).startswith(problem)


# 6 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://emulator.local", "scheme 'ftp': expected an http:// or https:// URL with a host"),
        ("not a url", "contains whitespace or control characters; expected an http:// or https:// URL"),
        ("http://", "no host: expected an http:// or https:// URL with a host"),
        ("127.0.0.1:5000", "no scheme: expected"),
        ("http://127.0.0.1:99999", "not a URL; expected"),
        ("https://AKIA:s3cr3t@ec2.example.com", "put no credentials in the endpoint URL"),
    ],
)
def test_an_invalid_endpoint_url_is_refused(tmp_path: Path, url: str, problem: str) -> None:
    path = tmp_path / "aws.yaml"
    message = the_problem(validate(path, f"aws:\n  endpoint_url: '{url}'\n"), path)
    assert message.startswith(f"aws.endpoint_url: {problem}")
    assert "s3cr3t" not in message


def test_a_valid_endpoint_url_is_kept() -> None:
    assert parse_config("aws: {endpoint_url: 'https://ec2.example.com:8443/x'}", "u.yaml").aws.endpoint_url


# 7 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("regions: []\n", "regions: an empty list selects no region: name at least one, or use `all`"),
        (
            "regions: [us-east-1, eu-west-1]\nexclude_regions: [eu-west-1, us-east-1, ap-south-1]\n",
            "exclude_regions: removes every region listed under `regions`: nothing would be audited or guarded",
        ),
    ],
)
def test_an_empty_region_set_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "regions.yaml"
    assert the_problem(validate(path, text), path) == problem


def test_exclusions_leaving_a_region_are_fine() -> None:
    config = parse_config("regions: [us-east-1, eu-west-1]\nexclude_regions: [eu-west-1]\n", "r.yaml")
    assert config.regions == ["us-east-1", "eu-west-1"] and config.exclude_regions == ["eu-west-1"]
    assert parse_config("regions: all\nexclude_regions: [eu-west-1]\n", "r.yaml").regions == "all"


# 8 -------------------------------------------------------------------------------------------------------------
ARABIC_INDIC = "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"accounts: [{{id: '{ARABIC_INDIC}'}}]", "accounts[0].id: an AWS account id is 12 digits (ASCII 0-9)"),
        ('accounts: [{id: "111111111111\\n"}]', "accounts[0].id: an AWS account id is 12 digits (ASCII 0-9)"),
        ("accounts: [{id: '11111111111\uff11'}]", "accounts[0].id: an AWS account id is 12 digits (ASCII 0-9)"),
        (
            f"accounts: [{{id: '111111111111', role_arn: 'arn:aws:iam::{ARABIC_INDIC}:role/FleetWarden'}}]",
            "accounts[0].role_arn: not an IAM role ARN",
        ),
        (
            "accounts: [{id: '999999999999', role_arn: 'arn:aws:iam::123456789012:role/FleetWarden'}]",
            "accounts[0].role_arn: the role is in account 123456789012, not in this entry's account 999999999999",
        ),
        (
            f"guard: {{spend: {{max_usd: 1, billing_account: {{role_arn: 'arn:aws:iam::{ARABIC_INDIC}:role/B'}}}}}}",
            "guard.spend.billing_account.role_arn: not an IAM role ARN",
        ),
        (
            f"sinks: {{b: {{type: s3, bucket: my-bucket, expected_bucket_owner: '{ARABIC_INDIC}'}}}}",
            "sinks.b.expected_bucket_owner: an AWS account id is 12 digits (ASCII 0-9)",
        ),
    ],
)
def test_account_ids_are_twelve_ascii_digits_everywhere(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "ids.yaml"
    assert the_problem(validate(path, text + "\n"), path).startswith(problem)


# 9 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sink", "where"),
    [
        ("{type: slack, channel: C0123ABCD, token: xoxb-hunter2-1234}", "sinks.chat.token"),
        ("{type: slack, channel: C0123ABCD, token: 8675309}", "sinks.chat.token"),
        ("{type: slack, channel: C0123ABCD, token: [hunter2]}", "sinks.chat.token"),
        ("{type: email, host: smtp.example.com, from: a@example.com, to: [b@example.com], password: 8675309}", ""),
        ("{type: opensearch, url: 'https://s.example', auth: {type: basic, username: u, password: [hunter2]}}", ""),
        ("{type: sns, topic_arn: 'arn:aws:sns:us-east-1:111111111111:t', api_key: hunter2}", "sinks.chat.api_key"),
    ],
)
def test_a_mistyped_secret_is_never_echoed(tmp_path: Path, sink: str, where: str) -> None:
    path = tmp_path / "secret.yaml"
    problem = the_problem(validate(path, f"sinks:\n  chat: {sink}\n"), path)
    assert problem.startswith(where or "sinks.chat.")
    assert "hunter2" not in problem and "8675309" not in problem


def test_pydantic_renders_no_config_input_values() -> None:
    with pytest.raises(Exception) as info:
        Config.model_validate({"audit": {"grace_minutes": "hunter2"}})
    assert "hunter2" not in str(info.value) and "input_value" not in str(info.value)


# 10 ------------------------------------------------------------------------------------------------------------
def big_config(size: int = 1_000_000) -> str:
    lines = ["sinks:"]
    for i in range(300):
        lines.append(f"  chat{i}: {{type: slack, channel: C0123ABC{i % 10}, token: 'ssm:/fleetwarden/slack-{i}'}}")
        lines.append(f"  ops{i}: {{type: sns, topic_arn: 'arn:aws:sns:us-east-1:123456789012:alerts-{i}'}}")
    lines.append("accounts:")
    i = 0
    while sum(len(line) + 1 for line in lines) < size:
        account = 100_000_000_000 + i
        lines.append(
            f'  - {{id: "{account}", name: acct-{i}, role_arn: "arn:aws:iam::{account}:role/FleetWarden",'
            " guard: {max_running_instances: 10}}"
        )
        i += 1
    return "\n".join(lines) + "\n"


def test_a_1mb_config_validates_in_bounded_time_and_memory() -> None:
    text = big_config()
    assert len(text) >= 1_000_000
    tracemalloc.start()
    started = time.process_time()
    try:
        config = parse_config(text, "big.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.process_time() - started
    assert len(config.accounts) > 7_000 and len(config.sinks) == 600
    # The target is < 1 s and < 200 MB (docs/config.md has the measured figures); tracemalloc slows the run ~2x and
    # the test machine is shared, so the time bound only catches a quadratic or exponential regression.
    assert peak < 200_000_000
    assert elapsed < 30


def test_a_config_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    problem = the_problem(validate(path, "# " + "x" * 4_100_000 + "\n"), path)
    assert problem == "larger than 4 MB"


# 11 (the fuzz tests are tests/unit/test_fuzz.py; these are the cases it found) ----------------------------------
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("audit: {max_actions: !!int }", "audit.max_actions: line 1: not a valid int value"),
        ("audit: {notify: [!!timestamp ]}", "audit.notify[0]: line 1: not a valid timestamp value"),
        ("audit: {notify: [2024-13-45]}", "audit.notify[0]: line 1: not a valid timestamp value"),
        ("apply: !!bool maybe", "apply: line 1: not a valid bool value"),
        ("audit: {max_actions: !!float x}", "audit.max_actions: line 1: not a valid float value"),
        ("audit: !!python/object:os.system {}", "line 1, column 8: not valid YAML: could not determine a constructor"),
        ("sinks: {1: {type: sns}}", "sinks[1]: the key 1 must be a string"),
        ("sinks: {ops: {type: [sns]}}", "sinks.ops.type: unknown sink type ['sns']"),
    ],
)
def test_values_yaml_cannot_build_are_one_line_at_their_key(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "fuzz.yaml"
    assert the_problem(validate(path, text + "\n"), path).startswith(problem)


def test_text_with_an_unpaired_surrogate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid Unicode text"):
        parse_config("audit: {action: '\ud800'}", "s.yaml")


# the Lambda handler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"audit:\n  action: report\n  action: terminate\n", "audit.action: duplicate key (lines 2 and 3)"),
        (BILLION_LAUGHS.encode(), "aliases expand the document by more than 10000 values"),
        (b"audit: {grace_minutes: 1.0e+30}\n", "audit.grace_minutes: Input should be a valid integer"),
        ("audit: café\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_the_lambda_handler_returns_a_bad_config_as_an_error_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, problem: str
) -> None:
    from fleetwarden.lambda_handler import handler

    path = tmp_path / "lambda.yaml"
    path.write_bytes(content)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", str(path))
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    result: dict[str, Any] = handler({"action": "list-targets"})
    assert result["status"] == "error" and result["exit_code"] == 2
    assert result["error"].startswith(f"invalid config {path}:") and problem in result["error"]
