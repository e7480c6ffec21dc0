"""Config SQL has no parameter binding: every value is validated before it reaches a query, so injection attempts
are refused with ValueError before any AWS call. Also the emulator's parser of the restricted SQL subset."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.collect.config_aggregator import (
    build_query,
    instance_from_item,
    stopped_instances,
    validate_account_id,
    validate_aggregator,
    validate_region,
)
from fleetwarden.emulator.ext.config_aggregator import InvalidExpression, parse

BAD_REGIONS = [
    "us-east-1' OR '1'='1",
    "us-east-1') OR accountId IN ('",
    "us-east-1\n",
    "us-east-1 ",
    "US-EAST-1",
    "us-east-12",
    "us_east_1",
    "us-east-",
    "",
    "us-east-1'--",
]
BAD_ACCOUNTS = [
    "11111111111'",
    "1111111111111",
    "11111111111",
    "111111111111' OR '1'='1",
    "111111111111\n",
    "\u0661" * 12,  # twelve Arabic-Indic digits: \d without re.ASCII would accept them
    "",
]
BAD_AGGREGATORS = ["", "a b", "org'--", "org;", "x" * 257, "agg\u00e9", "org\n"]


class NoCalls:
    """A Config client that fails the test if it is ever called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"no AWS call may be made, got {name}")


@pytest.mark.parametrize("value", BAD_REGIONS)
def test_bad_regions_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        validate_region(value)
    with pytest.raises(ValueError):
        list(stopped_instances(NoCalls(), "org", ["111111111111"], [value]))


@pytest.mark.parametrize("value", BAD_ACCOUNTS)
def test_bad_account_ids_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        validate_account_id(value)
    with pytest.raises(ValueError):
        list(stopped_instances(NoCalls(), "org", ["111111111111", value], ["us-east-1"]))


@pytest.mark.parametrize("value", BAD_AGGREGATORS)
def test_bad_aggregator_names_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        validate_aggregator(value)
    with pytest.raises(ValueError):
        list(stopped_instances(NoCalls(), value, ["111111111111"], ["us-east-1"]))


def test_good_values_pass() -> None:
    for region in ("us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "cn-north-1", "il-central-1"):
        assert validate_region(region) == region
    assert validate_account_id("012345678901") == "012345678901"
    assert validate_aggregator("org-Aggregator_1") == "org-Aggregator_1"


def test_query_text_and_parse_round_trip() -> None:
    query = build_query(["111111111111", "222222222222"], ["us-east-1", "eu-west-1"])
    assert query == (
        "SELECT resourceId, accountId, awsRegion, configuration.state.name, configuration.instanceType, "
        "configuration.launchTime, tags WHERE resourceType = 'AWS::EC2::Instance' "
        "AND configuration.state.name = 'stopped' "
        "AND accountId IN ('111111111111', '222222222222') AND awsRegion IN ('us-east-1', 'eu-west-1')"
    )
    parsed = parse(query)
    assert parsed.fields[0] == "resourceId" and parsed.fields[-1] == "tags"
    assert dict(parsed.conditions)["awsRegion"] == {"us-east-1", "eu-west-1"}
    with pytest.raises(ValueError):
        build_query([], ["us-east-1"])
    with pytest.raises(ValueError):
        build_query(["111111111111"], ["us-east-1"], state="stopped' OR '1'='1")


def test_emulator_parser_keeps_quotes_inside_values_and_refuses_the_rest() -> None:
    # A quote doubled inside a literal is part of the value, never the end of the condition.
    parsed = parse("SELECT resourceId WHERE awsRegion = 'us-east-1'' OR ''1''=''1'")
    assert parsed.conditions == (("awsRegion", frozenset({"us-east-1' OR '1'='1"})),)
    for bad in (
        "SELECT resourceId WHERE awsRegion = 'us-east-1' OR accountId = '1'",
        "SELECT resourceId WHERE awsRegion = 'us-east-1'; DROP",
        "SELECT resourceId WHERE awsRegion = 'unterminated",
        "SELECT secret WHERE awsRegion = 'us-east-1'",
        "SELECT resourceId WHERE tags = 'x'",
        "SELECT resourceId WHERE NOT awsRegion = 'us-east-1'",
        "DELETE resourceId",
    ):
        with pytest.raises(InvalidExpression):
            parse(bad)


def test_instance_from_item() -> None:
    instance = instance_from_item(
        {
            "resourceId": "i-1",
            "accountId": "111111111111",
            "awsRegion": "eu-west-1",
            "configuration": {
                "state": {"name": "stopped"},
                "instanceType": "t3.micro",
                "launchTime": "2026-01-02T03:04:05.000Z",
            },
            "tags": [{"key": "Name", "value": "web"}, {"key": "aws:autoscaling:groupName", "value": "asg"}],
        }
    )
    assert (instance.id, instance.state, instance.instance_type, instance.asg_name) == (
        "i-1",
        "stopped",
        "t3.micro",
        "asg",
    )
    assert instance.tags["Name"] == "web" and instance.launch_time.isoformat() == "2026-01-02T03:04:05+00:00"
