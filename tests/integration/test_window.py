"""The scan window against the emulator: open starts exactly the eligible stopped instances, close stops exactly
what the window started, whatever happened in between (including a crash between two processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from fleet import ACCOUNTS, WINDOW_REGIONS, cli, ec2, launch, states, window_config

from fleetwarden.aws.session import SessionFactory
from fleetwarden.emulator.server import EmulatorServer

A, B, _ = ACCOUNTS
REGIONS = WINDOW_REGIONS


def fleet(factory: SessionFactory) -> dict[str, list[str]]:
    return {
        "a_east_stopped": launch(factory, A, "us-east-1", {"team": "web"}, 3, state="stopped"),
        "a_east_running": launch(factory, A, "us-east-1", {"team": "web"}, 1),
        "a_west_stopped": launch(factory, A, "eu-west-1", {"team": "data"}, 2, state="stopped"),
        "b_east_stopped": launch(factory, B, "us-east-1", {"team": "web"}, 2, state="stopped"),
    }


def all_states(factory: SessionFactory, f: dict[str, list[str]]) -> dict[str, str]:
    out = {}
    for key, ids in f.items():
        account = A if key.startswith("a_") else B
        region = "us-east-1" if "_east_" in key else "eu-west-1"
        out.update(states(factory, account, region, ids))
    return out


def test_dry_run_plans_and_writes_nothing(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    config = window_config(tmp_path, aws.url)
    result = cli("--config", str(config), "--json", "window", "open")
    assert result.exit_code == 0, result.stderr
    planned = {a["resource_id"] for a in result.report["actions"] if a["outcome"] == "planned"}
    assert planned == set(f["a_east_stopped"] + f["a_west_stopped"] + f["b_east_stopped"])
    assert all_states(factory, f)[f["a_east_stopped"][0]] == "stopped"
    status = json.loads(cli("--config", str(config), "--json", "window", "status").stdout)
    assert status["windows"] == []


def test_open_then_close_returns_exactly_what_it_started(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    f = fleet(factory)
    keep = f["a_east_stopped"][0]
    config = window_config(tmp_path, aws.url)
    added = cli(
        "--config", str(config), "exceptions", "add", "--kind", "do-not-start", "--resource-id", keep, "--reason", "x"
    )
    assert added.exit_code == 0, added.stderr
    opened = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opened.exit_code == 0, opened.stderr
    window_id = opened.report["summary"]["window_id"]
    started = {a["resource_id"] for a in opened.report["actions"] if a["outcome"] == "done"}
    assert started == set(f["a_east_stopped"][1:] + f["a_west_stopped"] + f["b_east_stopped"])
    now = all_states(factory, f)
    assert now[keep] == "stopped" and all(now[i] == "running" for i in started)

    # a second window on the same account-regions is refused while this one is open
    second = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert second.exit_code == 4 and all(t["status"] == "error" for t in second.report["targets"])

    # meanwhile someone starts the do-not-start instance by hand: the window did not start it
    ec2(factory, A, "us-east-1").start_instances(InstanceIds=[keep])
    shown = cli("--config", str(config), "--json", "window", "status")
    assert shown.exit_code == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert [w["window_id"] for w in status["windows"]] == [window_id]
    assert len(status["windows"][0]["instances"]) == len(started)

    closed = cli("--config", str(config), "--json", "window", "close", "--apply")
    assert closed.exit_code == 0, closed.stderr
    after = all_states(factory, f)
    assert all(after[i] == "stopped" for i in started)
    assert after[keep] == "running"  # started by hand: untouched
    assert after[f["a_east_running"][0]] == "running"  # was running before the window: untouched
    assert closed.report["summary"]["closed"] == [window_id]
    assert json.loads(cli("--config", str(config), "--json", "window", "status").stdout)["windows"] == []
    # the lock is released: a new window can open
    assert cli("--config", str(config), "--json", "window", "open", "--apply").exit_code == 0


def test_do_not_stop_and_select_tags_and_asg(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    asg_member = launch(
        factory, A, "us-east-1", {"team": "web", "aws:autoscaling:groupName": "web-asg"}, state="stopped"
    )
    config = window_config(tmp_path, aws.url, select_tags={"team": "web"})
    stay = f["b_east_stopped"][0]
    added = cli(
        "--config", str(config), "exceptions", "add", "--kind", "do-not-stop", "--resource-id", stay, "--reason", "x"
    )
    assert added.exit_code == 0, added.stderr
    opening = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opening.exit_code == 0, opening.stderr
    opened = opening.report
    outcome = {a["resource_id"]: a for a in opened["actions"]}
    assert set(f["a_west_stopped"]).isdisjoint(outcome)  # team=data: not selected
    assert outcome[asg_member[0]]["outcome"] == "skipped" and "Auto Scaling" in outcome[asg_member[0]]["reason"]
    closing = cli("--config", str(config), "--json", "window", "close", "--apply")
    assert closing.exit_code == 0, closing.stderr
    closed = closing.report
    after = all_states(factory, f)
    assert after[stay] == "running"  # do-not-stop honoured at close
    assert all(after[i] == "stopped" for i in f["a_east_stopped"] + f["b_east_stopped"][1:])
    assert not [a for a in closed["actions"] if a["action"] == "verify"]


def test_one_instance_failing_to_start(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    bad = f["a_east_stopped"][1]
    # moto starts everything; the emulator's ec2_faults extension fails calls that include `bad` (as AWS does)
    aws.admin(
        "/_fleetwarden/ec2_faults/rules",
        {"rules": [{"action": "StartInstances", "instance_ids": [bad], "code": "InsufficientInstanceCapacity"}]},
    )
    config = window_config(tmp_path, aws.url)
    opened = cli("--config", str(config), "--json", "window", "open", "--apply")
    aws.admin("/_fleetwarden/ec2_faults/rules", {"rules": []})
    outcome = {a["resource_id"]: a["outcome"] for a in opened.report["actions"]}
    assert outcome[bad] == "failed"
    assert [outcome[i] for i in f["a_east_stopped"] if i != bad] == ["done", "done"]
    assert opened.exit_code == 4
    # someone starts it by hand later: the window did not start it, so close leaves it running
    ec2(factory, A, "us-east-1").start_instances(InstanceIds=[bad])
    closed = cli("--config", str(config), "--json", "window", "close", "--apply")
    assert closed.exit_code == 0, closed.stderr
    stopped = {a["resource_id"] for a in closed.report["actions"] if a["action"] == "stop" and a["outcome"] == "done"}
    assert stopped == set(f["a_east_stopped"] + f["a_west_stopped"] + f["b_east_stopped"]) - {bad}
    after = all_states(factory, f)
    assert after[bad] == "running"
    assert all(after[i] == "stopped" for i in f["a_east_stopped"] if i != bad)


def test_tripped_account_is_refused(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    config = window_config(tmp_path, aws.url)
    data = yaml.safe_load(config.read_text())
    data["guard"] = {"max_running_instances": 0, "lockout": {"mode": "off"}}
    config.write_text(yaml.safe_dump(data))
    assert cli("--config", str(config), "guard", "run", "--apply").exit_code == 0  # A trips (1 running > 0)
    opening = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opening.exit_code == 0, opening.stderr
    opened = opening.report
    skipped = {(t["account_id"], t["region"], t["status"]) for t in opened["targets"]}
    assert skipped == {(a, r, "ok" if a == B else "skipped") for a in (A, B) for r in REGIONS}
    started = {a["resource_id"] for a in opened["actions"] if a["action"] == "start" and a["outcome"] == "done"}
    assert started == set(f["b_east_stopped"])
    a_east = all_states(factory, {"a_east_all": f["a_east_stopped"] + f["a_east_running"]})
    assert set(a_east.values()) == {"stopped"}  # nothing started; the guard's halt stopped the running one


def test_crash_between_open_and_close_in_separate_processes(
    aws: EmulatorServer, tmp_path: Path, factory: SessionFactory
) -> None:
    f = fleet(factory)
    config = window_config(tmp_path, aws.url)
    env = {**os.environ, "AWS_ENDPOINT_URL": aws.url}
    command = [sys.executable, "-m", "fleetwarden.cli", "--config", str(config), "--json", "window"]
    opened = subprocess.run([*command, "open", "--apply"], env=env, capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0, opened.stderr
    window_id = json.loads(opened.stdout)["summary"]["window_id"]
    # the opening process is gone; a new process finds the open window in the state store and closes it
    closed = subprocess.run([*command, "close", "--apply"], env=env, capture_output=True, text=True, timeout=120)
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["summary"]["closed"] == [window_id]
    after = all_states(factory, f)
    assert all(after[i] == "stopped" for i in f["a_east_stopped"] + f["a_west_stopped"] + f["b_east_stopped"])
    assert after[f["a_east_running"][0]] == "running"


def test_guard_does_not_count_window_instances(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    config = window_config(tmp_path, aws.url)
    data = yaml.safe_load(config.read_text())
    # A limit of 2: counting the window's 5 instances in A (1 + 5 = 6) or its 2 in B would trip both accounts.
    data["guard"] = {"max_running_instances": 2, "lockout": {"mode": "off"}}
    config.write_text(yaml.safe_dump(data))
    opened = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opened.exit_code == 0, opened.stderr
    window_ids = f["a_east_stopped"] + f["a_west_stopped"] + f["b_east_stopped"]
    assert {a["resource_id"] for a in opened.report["actions"] if a["outcome"] == "done"} == set(window_ids)
    assert set(all_states(factory, f).values()) == {"running"}  # the window really started them

    guard = cli("--config", str(config), "--json", "guard", "run")
    assert guard.exit_code == 0, guard.stderr
    assert guard.report["summary"]["running_by_account"] == {A: 1, B: 0}  # only a_east_running is counted
    assert guard.report["summary"]["tripped"] == []
    assert guard.report["actions"] == []

    # Control: instances started by hand ARE counted (1 + 2 = 3 > 2), the window's still are not (else 8).
    by_hand = launch(factory, A, "eu-west-1", {"team": "data"}, 2)
    tripped = cli("--config", str(config), "--json", "guard", "run")
    assert tripped.exit_code == 0, tripped.stderr
    assert tripped.report["summary"]["running_by_account"] == {A: 3, B: 0}
    assert tripped.report["summary"]["tripped"] == [A]
    # The dry run plans the halt of A's running instances (window ones included) and changes nothing.
    planned = {a["resource_id"] for a in tripped.report["actions"] if a["action"] == "stop"}
    assert planned == set(f["a_east_stopped"] + f["a_east_running"] + f["a_west_stopped"] + by_hand)
    assert set(all_states(factory, f).values()) == {"running"}


def test_config_aggregator_discovery(aws: EmulatorServer, tmp_path: Path, factory: SessionFactory) -> None:
    f = fleet(factory)
    factory.client("config", region="us-east-1").put_configuration_aggregator(
        ConfigurationAggregatorName="org-view",
        AccountAggregationSources=[{"AccountIds": [A, B], "AllAwsRegions": True}],
    )
    config = window_config(tmp_path, aws.url, discovery={"type": "config-aggregator", "aggregator": "org-view"})
    opened = cli("--config", str(config), "--json", "window", "open", "--apply")
    assert opened.exit_code == 0, opened.stderr
    started = {a["resource_id"] for a in opened.report["actions"] if a["outcome"] == "done"}
    assert started == set(f["a_east_stopped"] + f["a_west_stopped"] + f["b_east_stopped"])
    assert cli("--config", str(config), "--json", "window", "close", "--apply").exit_code == 0
    assert all(v == "stopped" for k, v in all_states(factory, f).items() if k not in f["a_east_running"])
