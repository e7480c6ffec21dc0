"""Seeds a small organization into a running emulator through real boto3 calls, and says what to expect.

Instances are launched in few large reservations (one RunInstances per group of instances sharing tags),
IAM users are created in each account through an assumed role, and launch times are back-dated through the
emulator's `/_fleetwarden/launch-time` admin endpoint (EC2 has no API for it). The returned SeedResult names
every instance with its expected audit outcome, so tests and benchmarks can assert exact violator sets.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import boto3

from ..aws.session import AccountAccess, SessionFactory
from ..config import AwsSettings
from .server import EmulatorAdmin

Outcome = Literal["compliant", "violator", "in-grace"]

DEPARTMENTS = ("sysops", "eng", "finance")
PROJECTS = ("web-store", "data-lake", "billing-api", "ml-batch")
DEFAULT_USERS = ("alice", "bob", "carol")
IMAGE_ID = "ami-0f1ee7a4de0000001"
INSTANCE_TYPES = ("t3.micro", "t3.small", "m5.large")
CANARY_NAME = "api-canary-{region}"

# How each kind of violator breaks the tag policy of DESIGN.md's config contract
# (required created_by/department/project; department in DEPARTMENTS; project ^[a-z0-9-]+$; created_by an IAM user).
VIOLATIONS = (
    "missing-key",  # no `project`
    "empty-value",  # department=""
    "wrong-case-key",  # `Department` instead of `department`
    "bad-value",  # department not in the allowed list
    "bad-pattern",  # project does not match ^[a-z0-9-]+$
    "unknown-user",  # created_by names a user that does not exist in the instance's account
    "untagged",  # no tags at all
)


@dataclass(frozen=True)
class SeedAccount:
    """A member account to seed, reached through `arn:aws:iam::<id>:role/<role_name>`."""

    id: str
    name: str


@dataclass(frozen=True)
class FleetSpec:
    """What seed_fleet creates: per (account, region), `instances_per_target` instances including one canary."""

    accounts: Sequence[SeedAccount]
    regions: Sequence[str]
    instances_per_target: int = 40
    violator_fraction: float = 0.25
    stopped_fraction: float = 0.2
    fresh_per_target: int = 2
    grace_minutes: int = 45
    users: Sequence[str] = DEFAULT_USERS
    role_name: str = "FleetWarden"
    topic_name: str = "fleetwarden-alerts"
    topic_region: str | None = None  # default: the first region
    seed: int = 7

    def __post_init__(self) -> None:
        if not self.accounts or not self.regions:
            raise ValueError("a fleet spec needs at least one account and one region")
        if self.instances_per_target < 2 + self.fresh_per_target:
            raise ValueError("instances_per_target must leave room for the canary, the fresh ones and one more")
        if not 0 <= self.violator_fraction <= 1 or not 0 <= self.stopped_fraction <= 1:
            raise ValueError("violator_fraction and stopped_fraction are fractions within [0, 1]")


@dataclass(frozen=True)
class SeededInstance:
    """One seeded instance and what the tag audit should conclude about it."""

    instance_id: str
    account_id: str
    region: str
    outcome: Outcome
    kind: str  # "compliant", "canary" or one of VIOLATIONS
    state: Literal["running", "stopped"]
    tags: dict[str, str]
    launch_time: datetime


@dataclass
class SeedResult:
    """What was seeded: every instance with its expected outcome, the users, the alert topic and its inbox."""

    accounts: list[SeedAccount]
    regions: list[str]
    management_account_id: str
    role_name: str
    grace_minutes: int
    instances: dict[str, SeededInstance] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)
    topic_arn: str | None = None
    queue_url: str | None = None
    reservations: int = 0

    def ids(
        self,
        outcome: Outcome | None = None,
        *,
        account_id: str | None = None,
        region: str | None = None,
        state: str | None = None,
        kind: str | None = None,
    ) -> set[str]:
        """Instance ids filtered by any of outcome, account, region, state and kind."""
        return {
            i.instance_id
            for i in self.instances.values()
            if (outcome is None or i.outcome == outcome)
            and (account_id is None or i.account_id == account_id)
            and (region is None or i.region == region)
            and (state is None or i.state == state)
            and (kind is None or i.kind == kind)
        }

    @property
    def violators(self) -> set[str]:
        """Instances past their grace period that break the tag policy: the audit must flag exactly these."""
        return self.ids("violator")

    @property
    def compliant(self) -> set[str]:
        return self.ids("compliant")

    @property
    def in_grace(self) -> set[str]:
        """Violating instances still within the grace period: the audit must not flag them yet."""
        return self.ids("in-grace")

    @property
    def canaries(self) -> dict[tuple[str, str], str]:
        """(account_id, region) -> the canary instance id."""
        return {(i.account_id, i.region): i.instance_id for i in self.instances.values() if i.kind == "canary"}

    @property
    def stopped(self) -> set[str]:
        return self.ids(state="stopped")

    @property
    def running(self) -> set[str]:
        return self.ids(state="running")

    def role_arn(self, account_id: str) -> str:
        return f"arn:aws:iam::{account_id}:role/{self.role_name}"

    def summary(self) -> dict[str, Any]:
        """Counts for humans and benchmark logs."""
        return {
            "accounts": len(self.accounts),
            "regions": len(self.regions),
            "instances": len(self.instances),
            "reservations": self.reservations,
            "violators": len(self.violators),
            "in_grace": len(self.in_grace),
            "compliant": len(self.compliant),
            "stopped": len(self.stopped),
            "canaries": len(self.canaries),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for item in data["instances"].values():
            item["launch_time"] = item["launch_time"].isoformat()
        return data


@dataclass(frozen=True)
class _Group:
    """Instances launched in one reservation: same tags, same launch time."""

    count: int
    tags: dict[str, str]
    outcome: Outcome
    kind: str
    age: timedelta | None  # None: keep the real (fresh) launch time
    stopped: int = 0


def good_tags(user: str, department: str, project: str, name: str | None = None) -> dict[str, str]:
    tags = {"created_by": user, "department": department, "project": project}
    if name:
        tags["Name"] = name
    return tags


def violating_tags(kind: str, user: str, missing_user: str, rng: random.Random) -> dict[str, str]:
    """Tags breaking the policy in the way `kind` names (one of VIOLATIONS)."""
    department, project = rng.choice(DEPARTMENTS), rng.choice(PROJECTS)
    base = good_tags(user, department, project, name=f"{project}-{kind}")
    if kind == "missing-key":
        del base["project"]
    elif kind == "empty-value":
        base["department"] = ""
    elif kind == "wrong-case-key":
        base["Department"] = base.pop("department")
    elif kind == "bad-value":
        base["department"] = rng.choice(("marketing", "Eng", "ops"))
    elif kind == "bad-pattern":
        base["project"] = rng.choice(("Web_Store", "data lake", "BILLING"))
    elif kind == "unknown-user":
        base["created_by"] = missing_user
    elif kind == "untagged":
        return {}
    else:
        raise ValueError(f"unknown violation kind {kind!r}")
    return base


class _Seeder:
    """Shared machinery of seed_fleet and seed_bulk."""

    def __init__(self, url: str, accounts: Sequence[SeedAccount], regions: Sequence[str], role_name: str) -> None:
        self.admin = EmulatorAdmin(url)
        base = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=regions[0])
        self.factory = SessionFactory(AwsSettings(endpoint_url=url, max_concurrency=16), "seed", base_session=base)
        for account in accounts:
            role_arn = f"arn:aws:iam::{account.id}:role/{role_name}"
            self.factory.register_account(AccountAccess(account.id, role_arn=role_arn, name=account.name))

    def create_users(self, users: dict[str, list[str]]) -> None:
        for account_id, names in users.items():
            iam = self.factory.client("iam", region="us-east-1", account_id=account_id)
            for name in names:
                iam.create_user(UserName=name, Tags=[{"Key": "seeded-by", "Value": "fleetwarden"}])

    def create_topic(self, region: str, name: str) -> tuple[str, str]:
        """An SNS topic in the management account, with an SQS inbox subscribed (raw delivery) to read it back."""
        sns = self.factory.client("sns", region=region)
        sqs = self.factory.client("sqs", region=region)
        topic_arn = sns.create_topic(Name=name)["TopicArn"]
        queue_url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )
        return topic_arn, queue_url

    def launch(self, account_id: str, region: str, groups: Sequence[_Group], now: datetime) -> list[SeededInstance]:
        """Launch each group as one reservation, back-date it, stop what should be stopped."""
        ec2 = self.factory.client("ec2", region=region, account_id=account_id)
        seeded: list[SeededInstance] = []
        to_stop: list[str] = []
        for index, group in enumerate(groups):
            kwargs: dict[str, Any] = {
                "ImageId": IMAGE_ID,
                "InstanceType": INSTANCE_TYPES[index % len(INSTANCE_TYPES)],
                "MinCount": group.count,
                "MaxCount": group.count,
            }
            if group.tags:
                tags = [{"Key": k, "Value": v} for k, v in group.tags.items()]
                kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
            instances = ec2.run_instances(**kwargs)["Instances"]
            ids = [i["InstanceId"] for i in instances]
            # Each instance's own launch time: moto stamps them one by one, and a second can tick in between.
            launched: dict[str, datetime] = {i["InstanceId"]: i["LaunchTime"] for i in instances}
            if group.age is not None:
                backdated = (now - group.age).replace(microsecond=0)
                self.admin.set_launch_time(account_id, region, ids, backdated)
                launched = dict.fromkeys(ids, backdated)
            stopped = set(ids[: group.stopped])
            to_stop += ids[: group.stopped]
            for instance_id in ids:
                seeded.append(
                    SeededInstance(
                        instance_id=instance_id,
                        account_id=account_id,
                        region=region,
                        outcome=group.outcome,
                        kind=group.kind,
                        state="stopped" if instance_id in stopped else "running",
                        tags=dict(group.tags),
                        launch_time=launched[instance_id],
                    )
                )
        for start in range(0, len(to_stop), 1000):
            ec2.stop_instances(InstanceIds=to_stop[start : start + 1000])
        return seeded


def _split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible, dropping zeros."""
    parts = max(1, parts)
    sizes = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [s for s in sizes if s > 0]


def _missing_user(account_id: str, users: dict[str, list[str]]) -> str:
    """A user name that exists in another seeded account but not in this one (or a made-up one)."""
    mine = set(users[account_id])
    for other, names in users.items():
        for name in names:
            if other != account_id and name not in mine:
                return name
    return "departed-contractor"


def _account_users(accounts: Sequence[SeedAccount], common: Sequence[str]) -> dict[str, list[str]]:
    # Each account also has its own deployer user, so `unknown-user` violators can name a user of another account.
    return {a.id: [*common, f"{a.name}-deployer"] for a in accounts}


def _fleet_groups(
    spec: FleetSpec, account: SeedAccount, region: str, users: dict[str, list[str]], rng: random.Random
) -> list[_Group]:
    n = spec.instances_per_target
    names = users[account.id]
    grace = timedelta(minutes=spec.grace_minutes)

    def old() -> timedelta:
        # well past the grace period: between 2 hours and 60 days
        return max(grace + timedelta(hours=1), timedelta(minutes=rng.randint(120, 60 * 24 * 60)))

    def stopped_of(count: int) -> int:
        return round(count * spec.stopped_fraction)

    canary = _Group(
        1,
        good_tags(names[0], "sysops", "api-canary", name=CANARY_NAME.format(region=region)),
        "compliant",
        "canary",
        old(),
        stopped=1,
    )
    groups = [canary]
    fresh = spec.fresh_per_target
    violators = min(round(n * spec.violator_fraction), n - 2 - fresh)
    compliant = n - 1 - fresh - violators
    missing = _missing_user(account.id, users)
    for kind, count in zip(VIOLATIONS, _split(violators, min(len(VIOLATIONS), violators)), strict=False):
        tags = violating_tags(kind, rng.choice(names), missing, rng)
        groups.append(_Group(count, tags, "violator", kind, old(), stopped_of(count)))
    for count in _split(compliant, 3):
        tags = good_tags(rng.choice(names), rng.choice(DEPARTMENTS), rng.choice(PROJECTS), name="app-server")
        groups.append(_Group(count, tags, "compliant", "compliant", old(), stopped_of(count)))
    if fresh:
        kind = VIOLATIONS[rng.randrange(len(VIOLATIONS) - 1)]
        groups.append(_Group(fresh, violating_tags(kind, names[0], missing, rng), "in-grace", kind, None))
    return groups


def _run(
    seeder: _Seeder,
    result: SeedResult,
    plans: dict[tuple[str, str], list[_Group]],
    workers: int,
) -> SeedResult:
    now = datetime.now(UTC)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(plans)))) as pool:
        futures = [
            pool.submit(seeder.launch, account_id, region, groups, now)
            for (account_id, region), groups in plans.items()
        ]
        for future in futures:
            for instance in future.result():
                result.instances[instance.instance_id] = instance
    result.reservations = sum(len(groups) for groups in plans.values())
    return result


def seed_fleet(url: str, spec: FleetSpec, *, workers: int = 8) -> SeedResult:
    """Seed accounts x regions with a mixed fleet (compliant, violators, in-grace, a stopped canary), IAM users
    in each account and an alert topic in the management account."""
    rng = random.Random(spec.seed)
    seeder = _Seeder(url, spec.accounts, spec.regions, spec.role_name)
    users = _account_users(spec.accounts, spec.users)
    seeder.create_users(users)
    result = SeedResult(
        accounts=list(spec.accounts),
        regions=list(spec.regions),
        management_account_id=seeder.factory.caller_identity()["account_id"],
        role_name=spec.role_name,
        grace_minutes=spec.grace_minutes,
        users=users,
    )
    result.topic_arn, result.queue_url = seeder.create_topic(spec.topic_region or spec.regions[0], spec.topic_name)
    plans = {
        (account.id, region): _fleet_groups(spec, account, region, users, rng)
        for account in spec.accounts
        for region in spec.regions
    }
    return _run(seeder, result, plans, workers)


def _as_accounts(accounts: Iterable[SeedAccount | str]) -> list[SeedAccount]:
    return [a if isinstance(a, SeedAccount) else SeedAccount(a, f"account-{a[-4:]}") for a in accounts]


def seed_bulk(
    url: str,
    accounts: Sequence[SeedAccount | str],
    regions: Sequence[str],
    total_instances: int,
    *,
    violator_fraction: float = 0.1,
    reservation_size: int = 500,
    canaries: bool = True,
    role_name: str = "FleetWarden",
    grace_minutes: int = 45,
    seed: int = 11,
    workers: int = 8,
) -> SeedResult:
    """Seed `total_instances` spread evenly over accounts x regions, in reservations of up to `reservation_size`.

    All are past their grace period and running (canaries stopped); `violator_fraction` of each target's
    instances break the policy, cycling through the VIOLATIONS kinds per reservation.
    """
    if reservation_size < 1 or total_instances < 0:
        raise ValueError("reservation_size must be positive and total_instances non-negative")
    rng = random.Random(seed)
    members = _as_accounts(accounts)
    if not members or not regions:
        raise ValueError("seed_bulk needs at least one account and one region")
    seeder = _Seeder(url, members, regions, role_name)
    users = _account_users(members, DEFAULT_USERS)
    seeder.create_users(users)
    result = SeedResult(
        accounts=members,
        regions=list(regions),
        management_account_id=seeder.factory.caller_identity()["account_id"],
        role_name=role_name,
        grace_minutes=grace_minutes,
        users=users,
    )
    targets = [(a, r) for a in members for r in regions]
    age = timedelta(minutes=grace_minutes, days=3)
    plans: dict[tuple[str, str], list[_Group]] = {}
    for index, (account, region) in enumerate(targets):
        count = total_instances // len(targets) + (1 if index < total_instances % len(targets) else 0)
        names = users[account.id]
        missing = _missing_user(account.id, users)
        groups: list[_Group] = []
        if canaries and count > 0:
            canary_tags = good_tags(names[0], "sysops", "api-canary", name=CANARY_NAME.format(region=region))
            groups.append(_Group(1, canary_tags, "compliant", "canary", age, stopped=1))
            count -= 1
        bad = round(count * violator_fraction)
        for chunk, size in enumerate(_chunks(bad, reservation_size)):
            kind = VIOLATIONS[chunk % len(VIOLATIONS)]
            groups.append(_Group(size, violating_tags(kind, names[0], missing, rng), "violator", kind, age))
        for size in _chunks(count - bad, reservation_size):
            tags = good_tags(rng.choice(names), rng.choice(DEPARTMENTS), rng.choice(PROJECTS), name="app-server")
            groups.append(_Group(size, tags, "compliant", "compliant", age))
        if groups:
            plans[(account.id, region)] = groups
    return _run(seeder, result, plans, workers)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]
