"""Config validation: each malformed config gets a message naming the file, the key path and the expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwarden.config import load_config, parse_config
from fleetwarden.errors import ConfigError

FULL = """
apply: false
aws: {endpoint_url: null, max_attempts: 8, max_concurrency: 32}
accounts:
  - id: "111111111111"
    name: dev
    role_arn: "arn:aws:iam::111111111111:role/FleetWarden"
    external_id: "abc"
    guard: {max_running_instances: 10}
organization:
  role_name: FleetWarden
  external_id: "abc"
  include_management_account: true
regions: [us-east-1, eu-west-1]
exclude_regions: []
state: "sqlite:///state.db"
sinks:
  ops: {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:fleetwarden-alerts"}
audit:
  required_tags: [created_by, department, project]
  tag_values: {department: [sysops, eng, finance], project: "re:^[a-z0-9-]+$"}
  created_by_tag: created_by
  created_by_must_be_iam_user: true
  grace_minutes: 45
  action: report
  snapshot_before_terminate: true
  max_actions: 100
  canary: {tags: {Name: "api-canary-{region}"}}
  notify: [ops]
guard:
  max_running_instances: 4
  max_running_instances_org: null
  spend:
    max_usd: 500
    window_hours: 6
    sources: [burn-rate, {type: cloudwatch}, {type: cur, bucket: B, prefix: P}]
    billing_account: {role_arn: "arn:aws:iam::999999999999:role/FleetWardenBilling"}
  lockout: {mode: deactivate, exempt_users: [breakglass], exempt_roles: [], revoke_role_sessions: []}
  on_unstoppable: leave
  notify: [ops]
window:
  settle_minutes: 3
  wait_for_inspector: true
  timeout_minutes: 90
  select_tags: {}
  discovery: {type: ec2}
compliance:
  types: ["Custom:InSpec"]
  association_ids: []
  document_names: [AWS-RunInspecChecks]
  notify: [ops]
"""


def test_the_design_contract_parses_as_written() -> None:
    config = parse_config(FULL, "fleetwarden.yaml")
    assert config.accounts[0].guard is not None and config.accounts[0].guard.max_running_instances == 10
    assert config.audit.tag_values["project"] == "re:^[a-z0-9-]+$"
    assert config.guard.spend is not None and len(config.guard.spend.sources) == 3


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml")
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith("invalid config my.yaml")
    return message


def test_unknown_key_names_its_path_and_the_allowed_keys() -> None:
    message = problems("audit:\n  grace_minuts: 5\n")
    assert "audit.grace_minuts: unknown key" in message
    assert "grace_minutes" in message


def test_wrong_type() -> None:
    message = problems("audit:\n  grace_minutes: soon\n")
    assert "audit.grace_minutes" in message and "integer" in message


def test_bad_regex() -> None:
    message = problems('audit:\n  tag_values: {project: "re:^[a-z"}\n')
    assert "audit.tag_values" in message and "bad regex" in message


def test_literal_secret_refused() -> None:
    message = problems("sinks:\n  chat: {type: sns, topic_arn: nope}\n")
    assert "sinks.chat.topic_arn" in message


def test_unknown_sink_type_and_dangling_reference() -> None:
    assert "unknown sink type 'pager'" in problems("sinks:\n  p: {type: pager}\n")
    assert "names sink 'ops'" in problems("audit:\n  notify: [ops]\n")


def test_bad_account_id_and_region() -> None:
    message = problems('accounts: [{id: "1234"}]\nregions: [mars-east-1]\n')
    assert "accounts[0].id" in message and "12 digits" in message
    assert "regions[0]" in message


@pytest.mark.parametrize(
    ("region", "suggestion"),
    [("us-eats-1", "us-east-1"), ("eu-wset-1", "eu-west-1"), ("ap-southeast-9", "ap-southeast-"), ("xx-moon-1", None)],
)
def test_a_region_that_looks_right_but_does_not_exist_is_refused(region: str, suggestion: str | None) -> None:
    # botocore's partition data decides, not the name's shape: us-east-9 has the shape of a region.
    message = problems(f"regions: [us-east-1, {region}]\nexclude_regions: [{region}]\naws: {{sts_region: {region}}}\n")
    for field in ("regions[1]", "exclude_regions[0]", "aws.sts_region"):
        assert field in message
    assert f"unknown AWS region '{region}'" in message and "botocore" in message
    assert ("did you mean " + suggestion in message) if suggestion else "did you mean" not in message


def test_every_region_botocore_knows_is_accepted() -> None:
    from fleetwarden.config.models import known_regions

    regions = sorted(known_regions())
    assert {"us-east-1", "us-gov-west-1", "cn-north-1", "eusc-de-east-1"} <= set(regions)
    assert not any(r.endswith("-global") for r in regions)
    config = parse_config("regions: [" + ", ".join(regions) + "]\n", "test.yaml")
    assert config.regions == regions


def test_not_yaml_names_the_line() -> None:
    assert "line 3, column 1" in problems("audit:\n  required_tags: [a\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "file not found" in str(info.value)


def test_a_tagged_union_does_not_put_its_tag_into_the_key_path() -> None:
    message = problems(
        "sinks:\n  search: {type: opensearch, url: 'https://search.example', index: a,"
        " auth: {type: basic, username: u, password: 'env:P', colour: red}}\n"
    )
    assert "sinks.search.auth.colour: unknown key" in message


@pytest.mark.parametrize("url", ["not a url", "http://", "ftp://config-host"])
@pytest.mark.parametrize("ref", ["s3://fleetwarden-config/fleetwarden.yaml", "ssm:/fleetwarden/config"])
def test_a_bad_aws_endpoint_url_is_a_config_error_result_in_lambda(
    monkeypatch: pytest.MonkeyPatch, url: str, ref: str
) -> None:
    # Before: botocore's ValueError ("Invalid endpoint") escaped the handler, so Lambda recorded a function error
    # and retried an invocation that could only fail again.
    from fleetwarden.lambda_handler import handler

    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("FLEETWARDEN_CONFIG", ref)
    monkeypatch.delenv("FLEETWARDEN_DISABLED", raising=False)
    result = handler({"action": "guard"}, None)
    assert result["status"] == "error" and result["exit_code"] == 2, result
    assert result["error"].startswith(f"invalid config {ref}: AWS_ENDPOINT_URL: "), result["error"]
    assert "http:// or https://" in result["error"] and len(result["error"].splitlines()) == 1


def test_owner_notify_config_is_checked() -> None:
    import yaml

    sinks = {"ops": {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}}
    for owners, message in (
        ({"notify": {"email_sink": "ops"}}, "not of type email"),
        ({"notify": {"fallback": ["nope"]}}, "names sink 'nope'"),
        ({"notify": {"address_rule": "{name}@example.com"}}, "address_rule needs {user}"),
        ({"notify": {"contacts": {"bob": "#general"}}}, "neither an email address nor a Slack user id"),
        ({"max_calls": 0}, "max_calls"),
    ):
        raw = yaml.safe_dump({"sinks": sinks, "audit": {"owners": owners}})
        with pytest.raises(ConfigError) as raised:
            parse_config(raw, "x.yaml")
        assert message in str(raised.value), str(raised.value)
