"""Fuzzing (hypothesis, bounded): the config loader and the Lambda event parser fail only in their documented way.

`parse_config` returns a Config or raises ConfigError; `parse_event` returns a ParsedEvent or raises EventError;
nothing else (no RecursionError, TypeError, UnicodeError...), and every error message is short, one line per
problem. The example counts keep the whole module under about 20 s (issue 8: bounded time inside `make test`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwarden.config import Config, parse_config
from fleetwarden.errors import ConfigError
from fleetwarden.events import ACTIONS, EventError, ParsedEvent, parse_event

FUZZ = settings(
    max_examples=150,
    deadline=None,  # a shared 2-core machine: time is bounded by the example count, not per example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples on every run: a fuzz failure is reproducible, never flaky
)

# -- values --------------------------------------------------------------------------------------------------
HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 1, 45, 45.5, 1e30, -1e30, 10**40, -(10**40), math.inf, -math.inf, math.nan, True, False, 0.0, 2**63]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    HOSTILE_NUMBERS,
    st.text(max_size=20),
    st.sampled_from(["111111111111", "١٢٣٤٥٦٧٨٩٠١٢", "111111111111\n", "us-east-1", "all", "ssm:/x", "hunter2"]),
)


def json_values(leaves: st.SearchStrategy[Any] = LEAVES) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=12,
    )


def assert_short_lines(message: str) -> None:
    assert "Traceback" not in message
    for line in message.splitlines():
        assert len(line) < 1_000, line[:200]


# -- the event parser ----------------------------------------------------------------------------------------
EVENT_KEYS = [
    "action",
    "apply",
    "account",
    "start_instances",
    "confirm_terminate",
    "window_id",
    "compact",
    "collect_findings",
    "detail-type",
    "source",
    "detail",
    "resources",
    "alarmArn",
    "alarmData",
]
KNOWN_STRINGS = st.sampled_from(
    [
        *ACTIONS,
        "Scheduled Event",
        "CloudWatch Alarm State Change",
        "EC2 State Manager Association State Change",
        "aws.events",
        "aws.cloudwatch",
        "aws.ssm",
        "ALARM",
        "OK",
    ]
)
EVENT_VALUES = json_values(st.one_of(LEAVES, KNOWN_STRINGS))
SHAPED_EVENTS = st.one_of(
    st.fixed_dictionaries(
        {"action": st.one_of(KNOWN_STRINGS, EVENT_VALUES)}, optional=dict.fromkeys(EVENT_KEYS[1:], EVENT_VALUES)
    ),
    st.fixed_dictionaries(
        {"detail-type": KNOWN_STRINGS, "source": KNOWN_STRINGS},
        optional={
            "detail": st.fixed_dictionaries(
                {},
                optional={
                    "alarmName": EVENT_VALUES,
                    "state": st.fixed_dictionaries({"value": st.one_of(KNOWN_STRINGS, EVENT_VALUES)}),
                    "association-id": EVENT_VALUES,
                    "document-name": EVENT_VALUES,
                },
            ),
            "resources": EVENT_VALUES,
        },
    ),
)


def check_event(event: object) -> None:
    try:
        parsed = parse_event(event)
    except EventError as exc:
        assert exc.exit_code == 2
        assert "\n" not in str(exc) and len(str(exc)) < 3_000
        return
    assert isinstance(parsed, ParsedEvent) and parsed.action in ACTIONS
    assert parsed.apply in (None, True, False)
    # The reason goes into the result and the log line: printable, one line, bounded.
    assert parsed.reason.isprintable() and len(parsed.reason) < 1_000, parsed.reason[:200]


@FUZZ
@given(EVENT_VALUES)
def test_any_json_value_is_an_event_or_an_event_error(event: object) -> None:
    check_event(event)


@FUZZ
@given(SHAPED_EVENTS)
def test_events_shaped_like_the_real_ones_are_parsed_or_refused(event: dict[str, Any]) -> None:
    check_event(event)
    check_event(json.dumps(event))  # the double-encoded form a console test sends


@FUZZ
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_any_string_event_is_parsed_or_refused(event: str | bytes) -> None:
    check_event(event)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # json.loads raised RecursionError
        ({"action": "audit", "apply": nested(5_000)}, "apply: Input should be a valid boolean (got [[[...]]])"),
        ({"action": nested(5_000)}, "unknown action [[[...]]]"),  # repr() of the value raised RecursionError
        ({"action": "guard-release", "account": "١٢٣٤٥٦٧٨٩٠١٢"}, "12 digits (ASCII 0-9)"),  # passed as an id
        ({"action": "guard-release", "account": "111111111111\n"}, "12 digits (ASCII 0-9)"),  # passed (`$`)
        ({"action": "window-close", "window_id": "w-1\n"}, "a window id is 1-128 ASCII letters"),  # passed (`$`)
        ({"action": "pass", **{f"k{i}": i for i in range(1_000)}}, "and 990 more"),  # 1,000 problems listed
    ],
)
def test_hostile_events_found_by_fuzzing_are_refused_in_one_short_line(event: object, expected: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(event)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and len(message) < 1_000


# -- the config loader ---------------------------------------------------------------------------------------
def check_config(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.problems
        assert str(exc).startswith("invalid config fuzz.yaml")
        assert_short_lines(str(exc))
        for problem in exc.problems:
            assert "\n" not in str(problem)
        return
    assert isinstance(config, Config)


YAML_ALPHABET = st.sampled_from([*"{}[]:,-&*!|>'\"#%@`?<=~.\\ \t\n\r0123456789abcxyz", "\ufeff", "é", "\x85"])
YAML_WORDS = st.sampled_from(
    [
        "audit:",
        "  action: terminate\n",
        "grace_minutes: ",
        "&a ",
        "*a",
        "<<: ",
        "!!int ",
        "!!binary ",
        "!!timestamp ",
        "!!python/object ",
        "2024-13-45",
        "1e30",
        ".nan",
        ".inf",
        "0x1F",
        "1:20:30",
        "9" * 50,
        "regions: ",
        "accounts:\n  - id: ",
        "sinks: {s: {type: ",
        "---\n",
        "? ",
        "\n  ",
        "[",
        "{",
    ]
)


@FUZZ
@given(st.lists(st.one_of(YAML_ALPHABET, YAML_WORDS), max_size=40).map("".join))
def test_any_yamlish_text_is_a_config_or_a_config_error(text: str) -> None:
    check_config(text)


CONFIG_KEYS = [
    "apply",
    "aws",
    "endpoint_url",
    "max_attempts",
    "max_concurrency",
    "connect_timeout",
    "read_timeout",
    "accounts",
    "id",
    "name",
    "role_arn",
    "guard",
    "max_running_instances",
    "spend_max_usd",
    "regions",
    "exclude_regions",
    "state",
    "sinks",
    "type",
    "token",
    "password",
    "auth",
    "audit",
    "grace_minutes",
    "action",
    "max_actions",
    "tag_values",
    "canary",
    "tags",
    "notify",
    "spend",
    "max_usd",
    "window_hours",
    "sources",
    "lockout",
    "window",
    "settle_minutes",
    "timeout_minutes",
    "discovery",
    "compliance",
]
CONFIG_LEAVES = st.one_of(
    LEAVES,
    st.sampled_from(
        [
            "report",
            "stop",
            "terminate",
            "sns",
            "slack",
            "email",
            "opensearch",
            "s3",
            "burn-rate",
            "http://127.0.0.1:5000",
            "ftp://x",
            "http://",
            "arn:aws:iam::111111111111:role/R",
            "arn:aws:sns:us-east-1:111111111111:t",
            "sqlite:///s.db",
        ]
    ),
)
DOCUMENTS = st.recursive(
    CONFIG_LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(CONFIG_KEYS), children, max_size=4)
    ),
    max_leaves=16,
)
TOP_LEVEL = st.dictionaries(st.sampled_from(CONFIG_KEYS), DOCUMENTS, max_size=5)


@FUZZ
@given(TOP_LEVEL)
def test_documents_built_from_the_real_keys_are_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    check_config(yaml.safe_dump(document, allow_unicode=True))
    check_config(json.dumps(document, allow_nan=True))  # JSON is YAML too (NaN is not, and must be refused cleanly)


def _one_clean_line_each(exc: ConfigError) -> None:
    message = str(exc)
    assert len(message) < 20_000, f"{len(message)} characters"
    for problem in exc.problems:
        text = str(problem)
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text), repr(text[:200])


@pytest.mark.parametrize(
    "text",
    [
        'regions: ["us-east-1\\nFAKE LINE"]\n',
        'audit: {action: "\\e[2Jx"}\n',
        "sinks: {a: {type: [1]}}\n",
        'audit: {"grace\\nminutes": 5}\n',
        'sinks: {"a\\nb": {type: pager}}\n',
        'audit: {"\\e]0;pwned\\a": 5}\n',
        'audit: {"\\e[31mred": 5}\n',
        'audit:\n  "a\\nb": 1\n  "a\\nb": 2\n',  # a duplicate key: the YAML walk's own key path
        "accounts: [" + ", ".join(['{id: "1"}'] * 5_000) + "]\n",
    ],
)
def test_config_errors_are_one_clean_line_per_problem_and_bounded(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "probe.yaml")
    _one_clean_line_each(info.value)


@pytest.mark.parametrize(
    "event",
    [
        {"detail-type": "Scheduled Event", "source": "aws.events", "resources": ["rule\nFAKE LOG LINE" + "x" * 10_000]},
        {
            "detail-type": "EC2 State Manager Association State Change",
            "source": "aws.ssm",
            "detail": {"association-id": "a\nb" * 5_000, "document-name": "\x1b[2J"},
        },
        {
            "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch",
            "detail": {"alarmName": "n", "state": {"value": "OK\nFAKE"}},
        },
    ],
    ids=["scheduled-rule", "ssm-association", "alarm-state"],
)
def test_a_reason_built_from_event_strings_is_one_bounded_printable_line(event: dict[str, Any]) -> None:
    # Before: the rule ARN, association id and document name went into the reason (result and log) verbatim.
    reason = parse_event(event).reason
    assert reason.isprintable() and len(reason) < 300, reason[:200]


def test_a_key_with_a_newline_or_an_escape_is_shown_quoted_and_many_problems_are_counted() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('audit: {"grace\\nminutes": 5, "\\e[31mred": 1}\n', "probe.yaml")
    lines = str(info.value).splitlines()
    assert lines[1].startswith("  - audit['grace\\nminutes']: unknown key"), lines
    assert lines[2].startswith("  - audit['\\x1b[31mred']: unknown key"), lines
    with pytest.raises(ConfigError) as info:
        parse_config("accounts: [" + ", ".join(['{id: "1"}'] * 5_000) + "]\n", "probe.yaml")
    assert len(info.value.problems) == 21 and str(info.value.problems[-1]) == "and 4980 more problems"
