"""Discovery through a Config aggregator against the emulator's SelectAggregateResourceConfig: two accounts, two
regions, only the stopped instances of the requested ones; paging; the aggregator's own scope; errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fleet import ec2, launch

from fleetwarden.aws.session import SessionFactory
from fleetwarden.collect.config_aggregator import confirm_stopped, stopped_instances
from fleetwarden.emulator.server import EmulatorServer

A, B, C = "111111111111", "222222222222", "333333333333"
TAGS = {"Name": "batch", "team": "data"}


def hub_config(factory: SessionFactory, name: str = "org", **source: Any) -> Any:
    client = factory.client("config", region="us-east-1")
    sources = {"AccountIds": [A, B], "AllAwsRegions": True, **source}
    client.put_configuration_aggregator(ConfigurationAggregatorName=name, AccountAggregationSources=[sources])
    return client


@pytest.fixture
def fleet(factory: SessionFactory) -> dict[str, list[str]]:
    return {
        "a_east": launch(factory, A, "us-east-1", TAGS, 2, state="stopped"),
        "a_east_running": launch(factory, A, "us-east-1", TAGS, 2),
        "a_west": launch(factory, A, "eu-west-1", {}, state="stopped"),
        "b_east": launch(factory, B, "us-east-1", {"aws:autoscaling:groupName": "asg-1"}, state="stopped"),
        "b_sydney": launch(factory, B, "ap-southeast-2", {}, state="stopped"),
        "c_east": launch(factory, C, "us-east-1", {}, state="stopped"),
    }


def test_stopped_instances_of_requested_accounts_and_regions(
    aws: EmulatorServer, factory: SessionFactory, fleet: dict[str, list[str]]
) -> None:
    client = hub_config(factory)
    found = list(stopped_instances(client, "org", [A, B], ["us-east-1", "eu-west-1"]))

    assert sorted(i.id for i in found) == sorted(fleet["a_east"] + fleet["a_west"] + fleet["b_east"])
    by_id = {i.id: i for i in found}
    first = by_id[fleet["a_east"][0]]
    assert (first.account_id, first.region, first.state) == (A, "us-east-1", "stopped")
    assert first.tags == TAGS and first.instance_type and first.launch_time.tzinfo is not None
    assert by_id[fleet["b_east"][0]].asg_name == "asg-1"
    # One account and one region only.
    assert sorted(i.id for i in stopped_instances(client, "org", [B], ["us-east-1"])) == fleet["b_east"]
    # C is asked for but outside the aggregator: Config knows nothing of it.
    assert list(stopped_instances(client, "org", [C], ["us-east-1"])) == []


def test_confirm_stopped_lets_ec2_decide(
    aws: EmulatorServer, factory: SessionFactory, fleet: dict[str, list[str]]
) -> None:
    listed = list(stopped_instances(hub_config(factory), "org", [A], ["us-east-1"]))
    assert sorted(i.id for i in listed) == sorted(fleet["a_east"])
    # Config lags: one was started by hand and one terminated since it recorded them.
    client = ec2(factory, A, "us-east-1")
    started, gone = fleet["a_east"]
    client.start_instances(InstanceIds=[started])
    client.terminate_instances(InstanceIds=[gone])
    assert confirm_stopped(client, listed) == []
    client.stop_instances(InstanceIds=[started])
    confirmed = confirm_stopped(client, listed)
    assert [i.id for i in confirmed] == [started] and confirmed[0].volume_ids
    with pytest.raises(ValueError):
        confirm_stopped(client, listed + list(stopped_instances(hub_config(factory), "org", [B], ["us-east-1"])))


def test_aggregator_regions_limit_the_answer(
    aws: EmulatorServer, factory: SessionFactory, fleet: dict[str, list[str]]
) -> None:
    client = hub_config(factory, "east-only", AllAwsRegions=False, AwsRegions=["us-east-1"])
    found = {i.id for i in stopped_instances(client, "east-only", [A, B], ["us-east-1", "eu-west-1"])}
    assert found == set(fleet["a_east"] + fleet["b_east"])


def test_paging_over_more_than_one_page(aws: EmulatorServer, factory: SessionFactory) -> None:
    ids = launch(factory, A, "eu-west-1", {}, 130, state="stopped")
    client = hub_config(factory)
    aws.client.reset_calls()

    assert sorted(i.id for i in stopped_instances(client, "org", [A], ["eu-west-1"])) == sorted(ids)
    selects = [c for c in aws.client.calls()["calls"] if c["action"] == "SelectAggregateResourceConfig"]
    assert sum(c["count"] for c in selects) == 2  # pages of 100

    expression = "SELECT resourceId, configuration.state.name WHERE resourceType = 'AWS::EC2::Instance'"
    page = client.select_aggregate_resource_config(Expression=expression, ConfigurationAggregatorName="org", Limit=7)
    assert len(page["Results"]) == 7 and page["NextToken"]
    assert page["QueryInfo"]["SelectFields"] == [{"Name": "resourceId"}, {"Name": "configuration.state.name"}]
    item = json.loads(page["Results"][0])
    assert item["configuration"]["state"]["name"] == "stopped" and item["resourceId"].startswith("i-")


def test_unknown_aggregator_and_invalid_expression(aws: EmulatorServer, factory: SessionFactory) -> None:
    client = hub_config(factory)
    with pytest.raises(ClientError) as err:
        list(stopped_instances(client, "missing", [A], ["us-east-1"]))
    assert err.value.response["Error"]["Code"] == "NoSuchConfigurationAggregatorException"
    # The aggregator lives in the hub's account and region, not in another region.
    other = factory.client("config", region="eu-west-1")
    with pytest.raises(ClientError) as err:
        list(stopped_instances(other, "org", [A], ["us-east-1"]))
    assert err.value.response["Error"]["Code"] == "NoSuchConfigurationAggregatorException"
    # Queries outside the emulated subset are refused, not answered wrongly.
    with pytest.raises(ClientError) as err:
        client.select_aggregate_resource_config(
            Expression="SELECT resourceId WHERE awsRegion = 'us-east-1' OR accountId = '111111111111'",
            ConfigurationAggregatorName="org",
        )
    assert err.value.response["Error"]["Code"] == "InvalidExpressionException"
    with pytest.raises(ClientError) as err:
        client.select_aggregate_resource_config(
            Expression="SELECT resourceId", ConfigurationAggregatorName="org", NextToken="bogus"
        )
    assert err.value.response["Error"]["Code"] == "InvalidNextTokenException"
