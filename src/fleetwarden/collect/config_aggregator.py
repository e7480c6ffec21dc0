"""Discovery through an AWS Config aggregator: the stopped EC2 instances of many accounts and regions in a few
queries (`SelectAggregateResourceConfig`), instead of one DescribeInstances sweep per account-region.

Config's SQL has no parameter binding, so every value put into a query is first checked against a strict
pattern (`validate_account_id`, `validate_region`); anything else raises ValueError before any call. Config
records changes with a lag of minutes (docs/discovery.md): the answer is a candidate list, and
`confirm_stopped` re-checks it with EC2 before anything acts on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from ..model import Instance
from .ec2 import instance_from_api

PERMISSIONS = ("config:SelectAggregateResourceConfig",)
# confirm_stopped reads EC2 with the member role (ec2:DescribeInstances, declared by collect.ec2).
EC2_FILTER_CHUNK = 200
RESOURCE_TYPE = "AWS::EC2::Instance"
PAGE_SIZE = 100  # Config's maximum Limit
# Config refuses expressions over 4,096 characters; 100 quoted account ids take about 1,600.
ACCOUNTS_PER_QUERY = 100
SELECT_FIELDS = (
    "resourceId",
    "accountId",
    "awsRegion",
    "configuration.state.name",
    "configuration.instanceType",
    "configuration.launchTime",
    "tags",
)

_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d", re.ASCII)
# AWS's documented pattern for ConfigurationAggregatorName: [\w\-]+, 1 to 256 characters.
_AGGREGATOR = re.compile(r"[\w\-]{1,256}", re.ASCII)
_STATE = re.compile(r"[a-z-]{1,20}", re.ASCII)


def validate_account_id(value: str) -> str:
    """A 12-digit account id, or ValueError (the value goes into a query as text)."""
    if not isinstance(value, str) or not _ACCOUNT.fullmatch(value):
        raise ValueError(f"not an AWS account id (12 digits): {value!r}")
    return value


def validate_region(value: str) -> str:
    """A region name such as us-east-1 or us-gov-west-1, or ValueError."""
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ValueError(f"not an AWS region name: {value!r}")
    return value


def validate_aggregator(value: str) -> str:
    """A Config aggregator name (letters, digits, _ and -; 1 to 256 characters), or ValueError."""
    if not isinstance(value, str) or not _AGGREGATOR.fullmatch(value):
        raise ValueError(f"not a Config aggregator name ([A-Za-z0-9_-], 1-256 characters): {value!r}")
    return value


def _in_list(values: Sequence[str]) -> str:
    # Only ever called with validated values: no quote or backslash can reach the query.
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def build_query(account_ids: Sequence[str], regions: Sequence[str], state: str = "stopped") -> str:
    """The advanced query for instances in `state` of the given accounts and regions (validated here)."""
    accounts = [validate_account_id(a) for a in account_ids]
    wanted = [validate_region(r) for r in regions]
    if not _STATE.fullmatch(state):
        raise ValueError(f"not an instance state: {state!r}")
    if not accounts or not wanted:
        raise ValueError("a query needs at least one account and one region")
    return (
        f"SELECT {', '.join(SELECT_FIELDS)} WHERE resourceType = '{RESOURCE_TYPE}'"
        f" AND configuration.state.name = '{state}'"
        f" AND accountId IN {_in_list(accounts)} AND awsRegion IN {_in_list(wanted)}"
    )


def instance_from_item(item: dict[str, Any]) -> Instance:
    """Normalize one query result (a configuration item's selected fields) into an Instance."""
    configuration = item.get("configuration") or {}
    raw_tags = item.get("tags") or []
    tags = {t["key"]: t.get("value", "") for t in raw_tags if isinstance(t, dict) and "key" in t}
    launch_text = configuration.get("launchTime")
    launch = datetime.fromtimestamp(0, UTC)
    if isinstance(launch_text, str) and launch_text:
        launch = datetime.fromisoformat(launch_text.replace("Z", "+00:00"))
        if launch.tzinfo is None:
            launch = launch.replace(tzinfo=UTC)
    return Instance(
        id=item["resourceId"],
        account_id=item["accountId"],
        region=item["awsRegion"],
        state=(configuration.get("state") or {}).get("name", "unknown"),
        instance_type=configuration.get("instanceType", ""),
        launch_time=launch,
        tags=tags,
        asg_name=tags.get("aws:autoscaling:groupName"),
    )


def stopped_instances(
    client: Any, aggregator: str, account_ids: Sequence[str], regions: Sequence[str]
) -> Iterator[Instance]:
    """The stopped instances the aggregator knows of in the given accounts and regions, page by page.

    `client` is a Config client in the aggregator's account and region. Raises ValueError for any account id,
    region or aggregator name that does not match its pattern, before any call.
    """
    name = validate_aggregator(aggregator)
    accounts = sorted({validate_account_id(a) for a in account_ids})
    wanted = sorted({validate_region(r) for r in regions})
    if not accounts or not wanted:
        return
    paginator = client.get_paginator("select_aggregate_resource_config")
    for start in range(0, len(accounts), ACCOUNTS_PER_QUERY):
        expression = build_query(accounts[start : start + ACCOUNTS_PER_QUERY], wanted)
        pages = paginator.paginate(
            Expression=expression, ConfigurationAggregatorName=name, PaginationConfig={"PageSize": PAGE_SIZE}
        )
        for page in pages:
            for result in page.get("Results", []):
                yield instance_from_item(json.loads(result))


def confirm_stopped(ec2_client: Any, instances: Sequence[Instance]) -> list[Instance]:
    """The given instances (of one account-region) that EC2 says are stopped now, as EC2 describes them.

    Config lags by minutes: an instance it lists as stopped may have been started (or terminated) since. Acting
    on Config's word could start, and later stop, an instance someone else is running; so EC2 decides.
    """
    if not instances:
        return []
    account_id, region = instances[0].account_id, instances[0].region
    if any((i.account_id, i.region) != (account_id, region) for i in instances):
        raise ValueError("confirm_stopped takes the instances of one account-region")
    ids = sorted({i.id for i in instances})
    confirmed: list[Instance] = []
    paginator = ec2_client.get_paginator("describe_instances")
    # An instance-id filter, not InstanceIds: an id that is gone is simply absent instead of failing the call.
    for start in range(0, len(ids), EC2_FILTER_CHUNK):
        filters = [
            {"Name": "instance-id", "Values": ids[start : start + EC2_FILTER_CHUNK]},
            {"Name": "instance-state-name", "Values": ["stopped"]},
        ]
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                confirmed += [instance_from_api(raw, account_id, region) for raw in reservation.get("Instances", [])]
    return confirmed
