"""The tag check: required tags (exact, case-sensitive keys; blank values count as missing), allowed values,
`created_by` naming a real IAM user of the instance's own account, after a grace period from launch; and the
region canary's identity (one stopped instance with the canary tags per region)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import regex

from ..config import AuditConfig
from ..model import Finding, Instance, Severity
from . import Check, check_registry

log = logging.getLogger(__name__)
# How long one tag value may keep a `re:` pattern busy. A 256-character value matches in microseconds, but the
# timeout is wall time: a thread the OS does not schedule for a while (a busy machine, a throttled Lambda) can
# pass a short one without any real work. So a short timeout first, then one long retry: an ordinary value never
# fails twice, and a value that makes the pattern backtrack for ever costs at most both.
MATCH_TIMEOUTS_SECONDS = (0.2, 2.0)

CONTROL = "required-tags"
AUDITED_STATES = frozenset({"pending", "running", "stopping", "stopped"})
# A region's canary is a stopped instance with the canary tags; instances that only look like it get these controls.
CANARY_STATE = "stopped"
CANARY_LOOKALIKE = "canary-lookalike"
CANARY_DUPLICATE = "canary-duplicate"
CANARY_REMEDIATION = {
    CANARY_LOOKALIKE: "Stop the instance if it is the canary, or remove the canary tags from it.",
    CANARY_DUPLICATE: "Keep one stopped canary per region: remove the canary tags from the others.",
}


@check_registry.register("tags")
class TagCheck(Check):
    """Every instance carries the required tags with valid values once its grace period is over."""

    name = "tags"
    config_model = AuditConfig
    default_severity = Severity.MEDIUM
    permissions: ClassVar[tuple[str, ...]] = ("ec2:DescribeInstances", "iam:ListUsers")
    remediation = "Tag the instance with the required keys and allowed values, or stop it."

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.grace = timedelta(minutes=config.grace_minutes)
        self._patterns: dict[str, regex.Pattern[str]] = {
            key: regex.compile(rule[3:]) for key, rule in config.tag_values.items() if isinstance(rule, str)
        }

    def needs_iam_users(self) -> bool:
        return self.config.created_by_must_be_iam_user

    def problems(self, tags: dict[str, str], iam_users: Collection[str] | None) -> tuple[list[str], dict[str, str]]:
        """The missing keys and the invalid ones (key -> why) for a tag set."""
        missing: list[str] = []
        invalid: dict[str, str] = {}
        for key in self.config.required_tags:
            if not tags.get(key, "").strip():
                missing.append(key)
        for key, rule in self.config.tag_values.items():
            value = tags.get(key)
            if value is None or not value.strip():
                continue
            if isinstance(rule, list):
                if value not in rule:
                    invalid[key] = f"{value!r} is not one of {', '.join(rule)}"
            else:
                why = self._mismatch(key, value, rule[3:])
                if why:
                    invalid[key] = why
        creator_key = self.config.created_by_tag
        creator = tags.get(creator_key, "").strip()
        needs_user = self.config.created_by_must_be_iam_user and creator and creator_key not in invalid
        if needs_user and (iam_users is None or creator not in iam_users):
            invalid[creator_key] = f"{creator!r} is not an IAM user of this account"
        return missing, invalid

    def _mismatch(self, key: str, value: str, pattern: str) -> str | None:
        """Why a value does not match its pattern, or None. A tag value is anyone's input: a value that keeps the
        pattern busy past the timeout (catastrophic backtracking) counts as not matching, so it cannot stall the
        audit nor slip through."""
        for timeout in MATCH_TIMEOUTS_SECONDS:
            try:
                matched = self._patterns[key].fullmatch(value, timeout=timeout)
            except TimeoutError:
                continue
            return None if matched else f"{value!r} does not match {pattern}"
        log.warning("tag %s: a value kept the pattern %s busy past %s s", key, pattern, sum(MATCH_TIMEOUTS_SECONDS))
        return f"{value[:64]!r} could not be checked against {pattern} in time (counted as not matching)"

    def evaluate(self, instance: Instance, iam_users: Collection[str] | None, now: datetime) -> Finding | None:
        """A finding for this instance, or None if it complies, is within its grace period or is gone."""
        if instance.state not in AUDITED_STATES:
            return None
        if instance.age(now) < self.grace:
            return None
        missing, invalid = self.problems(instance.tags, iam_users)
        if not missing and not invalid:
            return None
        details: dict[str, Any] = {
            "missing": missing,
            "invalid": invalid,
            "state": instance.state,
            "instance_type": instance.instance_type,
            "launch_time": instance.launch_time.isoformat(),
            "age_minutes": int(instance.age(now).total_seconds() // 60),
            "tags": dict(instance.tags),
        }
        hints = _case_hints(instance.tags, missing)
        if hints:
            details["hints"] = hints
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if invalid:
            parts.append("invalid " + ", ".join(sorted(invalid)))
        return Finding.create(
            check=self.name,
            account_id=instance.account_id,
            region=instance.region,
            resource_id=instance.id,
            control=CONTROL,
            title=f"{instance.id} tags: " + "; ".join(parts),
            now=now,
            severity=self.config.severity,
            details=details,
        )


def _case_hints(tags: dict[str, str], missing: list[str]) -> list[str]:
    """Point out keys that differ only in case: AWS tag keys are case-sensitive."""
    lowered = {k.lower(): k for k in tags}
    return [
        f"found {lowered[key.lower()]!r}, but tag keys are case-sensitive: expected {key!r}"
        for key in missing
        if key.lower() in lowered and lowered[key.lower()] != key
    ]


def canary_tags(config: AuditConfig, region: str) -> dict[str, str] | None:
    """The tags that identify this region's canary ({region} substituted), or None without a canary."""
    if config.canary is None:
        return None
    return {k: v.replace("{region}", region) for k, v in config.canary.tags.items()}


def has_canary_tags(instance: Instance, wanted: dict[str, str] | None) -> bool:
    """True if the instance carries every canary tag (whatever its state)."""
    return wanted is not None and all(instance.tags.get(k) == v for k, v in wanted.items())


def is_canary(instance: Instance, wanted: dict[str, str] | None) -> bool:
    """True if the instance matches the canary definition: the canary tags AND the state `stopped`.

    Only one such instance per region is the canary (see `judge_canaries`).
    """
    return instance.state == CANARY_STATE and has_canary_tags(instance, wanted)


@dataclass
class CanaryVerdict:
    """Which instance of a region is its canary, and the findings about instances that only look like one."""

    canary: str | None = None
    stopped: list[str] = field(default_factory=list)
    lookalikes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def judge_canaries(candidates: list[Instance], now: datetime, grace: timedelta) -> CanaryVerdict:
    """Decide a region's canary among the instances carrying its tags (states outside AUDITED_STATES ignored).

    Exactly one stopped instance is the canary. One that is pending, running or stopping is not (a finding says it
    looks like the canary; it is audited like any instance), once its grace period is over, or at once when there is
    no stopped canary at all. Several stopped ones are all a finding and none is the canary: which one is genuine
    cannot be told, so every one is audited normally.
    """
    verdict = CanaryVerdict()
    for instance in sorted(candidates, key=lambda i: i.id):
        if instance.state not in AUDITED_STATES:
            continue
        if instance.state == CANARY_STATE:
            verdict.stopped.append(instance.id)
        else:
            verdict.lookalikes.append(instance.id)
            if instance.age(now) >= grace:
                title = f"{instance.id} is tagged like this region's canary but is {instance.state}, not stopped"
                verdict.findings.append(_canary_finding(instance, CANARY_LOOKALIKE, title, now))
    if not verdict.stopped:
        # No stopped canary at all: every lookalike is a finding at once, grace or not (the region's canary is
        # gone or was started).
        flagged = {f.resource_id for f in verdict.findings}
        for instance in sorted(candidates, key=lambda i: i.id):
            if instance.id in verdict.lookalikes and instance.id not in flagged:
                title = f"{instance.id} is tagged like this region's canary but is {instance.state}, not stopped"
                verdict.findings.append(_canary_finding(instance, CANARY_LOOKALIKE, title, now))
    if len(verdict.stopped) == 1:
        verdict.canary = verdict.stopped[0]
    elif verdict.stopped:
        others = {i.id: i for i in candidates}
        for instance_id in verdict.stopped:
            title = (
                f"{instance_id} is one of {len(verdict.stopped)} stopped instances tagged as this region's canary "
                f"({', '.join(verdict.stopped)}): none is taken as the canary"
            )
            finding = _canary_finding(others[instance_id], CANARY_DUPLICATE, title, now)
            finding.details["stopped_canaries"] = list(verdict.stopped)
            verdict.findings.append(finding)
    return verdict


def _canary_finding(instance: Instance, control: str, title: str, now: datetime) -> Finding:
    return Finding.create(
        check=TagCheck.name,
        account_id=instance.account_id,
        region=instance.region,
        resource_id=instance.id,
        control=control,
        title=title,
        now=now,
        severity=Severity.HIGH,
        details={
            "state": instance.state,
            "instance_type": instance.instance_type,
            "launch_time": instance.launch_time.isoformat(),
            "tags": dict(instance.tags),
            "remediation": CANARY_REMEDIATION[control],
        },
    )
