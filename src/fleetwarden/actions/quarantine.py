"""The guard's quarantine (`guard.quarantine`, docs/guard.md "Containment"): a service control policy attached to
a tripped account from the organization's management account (or the delegated administrator for Organizations
policies), denying the launch and credential paths to every principal but fleetwarden's own roles and the
break-glass principals.

The policy is created once (by name) and reused; when the config's exemptions change, its content is updated.
Attaching is journaled `planned` before the call (with whether it was attached before: one attached by someone
else is never ours to detach), then `done`; release detaches exactly what the journal says this guard attached.
The management account is never quarantined: SCPs do not apply to it. An organization whose root does not have
SCPs enabled cannot be quarantined: that is reported as a failed action, never skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..aws.targets import error_text
from ..model import ActionOutcome, ActionResult, JournalEntry
from .base import JournaledActions

SCP = "SERVICE_CONTROL_POLICY"
QUARANTINE, UNQUARANTINE, POLICY = "quarantine", "unquarantine", "quarantine-policy"
KINDS = (QUARANTINE, UNQUARANTINE, POLICY)
SCP_MAX_CHARS = 5120  # Organizations' limit on an SCP's size
PERMISSIONS = (
    "organizations:DescribeOrganization",
    "organizations:ListRoots",
    "organizations:ListPolicies",
    "organizations:DescribePolicy",
    "organizations:CreatePolicy",
    "organizations:UpdatePolicy",
    "organizations:ListPoliciesForTarget",
    "organizations:AttachPolicy",
    "organizations:DetachPolicy",
)
# What the quarantine denies, and why (docs/guard.md lists the same): every way to start compute again, and every
# way to mint or revive credentials that the lockout took away.
DENIED_ACTIONS = (
    # EC2 capacity: launch, start, change an instance's type or user data, Spot and fleets, scheduled instances.
    "ec2:RunInstances",
    "ec2:StartInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:RequestSpotInstances",
    "ec2:RequestSpotFleet",
    "ec2:CreateFleet",
    "ec2:RunScheduledInstances",
    # Auto Scaling: groups that would replace what the halt stopped, and resuming what it suspended.
    "autoscaling:CreateAutoScalingGroup",
    "autoscaling:UpdateAutoScalingGroup",
    "autoscaling:SetDesiredCapacity",
    "autoscaling:ResumeProcesses",
    # IAM: new users and keys, console passwords, keys the lockout deactivated.
    "iam:CreateUser",
    "iam:CreateAccessKey",
    "iam:UpdateAccessKey",
    "iam:CreateLoginProfile",
    "iam:UpdateLoginProfile",
    # Other compute that mines as well as EC2 does.
    "lambda:CreateFunction",
    "lambda:UpdateFunctionCode",
    "ecs:RunTask",
    "ecs:StartTask",
    "ecs:CreateService",
    "ecs:UpdateService",
    "eks:CreateNodegroup",
    "eks:UpdateNodegroupConfig",
    "batch:SubmitJob",
    "lightsail:CreateInstances",
    "sagemaker:CreateNotebookInstance",
    "sagemaker:CreateTrainingJob",
)


def policy_document(exempt_arns: Sequence[str]) -> dict[str, Any]:
    """Deny DENIED_ACTIONS on everything, unless the principal's ARN matches an exempt pattern."""
    statement: dict[str, Any] = {
        "Sid": "FleetwardenQuarantine",
        "Effect": "Deny",
        "Action": list(DENIED_ACTIONS),
        "Resource": "*",
    }
    if exempt_arns:
        statement["Condition"] = {"ArnNotLike": {"aws:PrincipalArn": sorted(set(exempt_arns))}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def policy_content(exempt_arns: Sequence[str]) -> str:
    return json.dumps(policy_document(exempt_arns), separators=(",", ":"), sort_keys=True)


def role_arn_of(principal_arn: str) -> list[str]:
    """The `aws:PrincipalArn` patterns of a caller: an assumed-role session is its role (with or without a path,
    which the session ARN does not show); a user or role ARN is itself."""
    parts = principal_arn.split(":")
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        role = parts[5].split("/")[1]
        return [f"arn:{parts[1]}:iam::{parts[4]}:role/{role}", f"arn:{parts[1]}:iam::{parts[4]}:role/*/{role}"]
    return [principal_arn]


class Quarantine(JournaledActions):
    """Attach / detach the quarantine SCP for one tripped account, through an Organizations client of the
    management account (or the delegated administrator)."""

    def __init__(
        self,
        client: Any,
        *,
        account_id: str,
        policy_name: str,
        exempt_arns: Sequence[str],
        run_id: str,
        workflow: str,
        journal: Callable[[JournalEntry], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.client = client
        self.account_id = account_id
        self.region = "global"
        self.policy_name = policy_name
        self.content = policy_content(exempt_arns)
        self.run_id = run_id
        self.workflow = workflow
        self.journal = journal
        self.clock = clock

    # -- trip ----------------------------------------------------------------------------------------------
    def ensure(self, *, apply: bool) -> list[ActionResult]:
        """Quarantine the account (idempotent): create or update the policy, attach it unless it already is."""
        try:
            organization = self.client.describe_organization()["Organization"]
            if organization.get("MasterAccountId") == self.account_id:
                return [self._say(ActionOutcome.SKIPPED, "the organization's management account: SCPs do not apply "
                                  "to it, so it cannot be quarantined (its halt and lockout still apply)")]  # fmt: skip
            if not self._scps_enabled():
                return [self._say(ActionOutcome.FAILED, "not quarantined: service control policies are not enabled "
                                  "in this organization (organizations enable-policy-type --policy-type "
                                  "SERVICE_CONTROL_POLICY)")]  # fmt: skip
            policy_id = self._policy_id()
            if not apply:
                if policy_id is not None and self._attached(policy_id):
                    return [self._say(ActionOutcome.SKIPPED, f"already quarantined (policy {self.policy_name})")]
                return [self._say(ActionOutcome.PLANNED, f"dry run: would attach SCP {self.policy_name}")]
            if policy_id is None:
                policy_id = self._create_policy()
            elif self._stale(policy_id):
                self._update_policy(policy_id)  # the exemptions changed: every quarantined account gets them
            if self._attached(policy_id):
                return [self._say(ActionOutcome.SKIPPED, f"already quarantined (policy {self.policy_name})")]
            return [self._attach(policy_id)]
        except (ClientError, BotoCoreError) as exc:
            return [self._say(ActionOutcome.FAILED, f"not quarantined: {error_text(exc)}")]

    def _scps_enabled(self) -> bool:
        roots = self.client.list_roots()["Roots"]
        return any(
            t.get("Type") == SCP and t.get("Status") == "ENABLED" for root in roots for t in root.get("PolicyTypes", [])
        )

    def _policy_id(self) -> str | None:
        for page in self.client.get_paginator("list_policies").paginate(Filter=SCP):
            for policy in page["Policies"]:
                if policy["Name"] == self.policy_name:
                    return str(policy["Id"])
        return None

    def _stale(self, policy_id: str) -> bool:
        content = self.client.describe_policy(PolicyId=policy_id)["Policy"]["Content"]
        try:
            return bool(json.loads(content) != json.loads(self.content))
        except ValueError:
            return True

    def _create_policy(self) -> str:
        entry = self._entry(POLICY, self.policy_name, before={"exists": False})
        self.journal(entry)
        try:
            created = self.client.create_policy(
                Name=self.policy_name,
                Type=SCP,
                Content=self.content,
                Description="fleetwarden guard quarantine: denies launches and new credentials (docs/guard.md)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DuplicatePolicyException":
                self.journal(self._final(entry, ActionOutcome.FAILED, error_text(exc)))
                raise
            policy_id = self._policy_id()  # created by a run that died before recording it
            if policy_id is None:
                raise
        else:
            policy_id = str(created["Policy"]["PolicySummary"]["Id"])
        self.journal(self._final(entry, ActionOutcome.DONE, None, after={"policy_id": policy_id}))
        return policy_id

    def _update_policy(self, policy_id: str) -> None:
        entry = self._entry(POLICY, self.policy_name, before={"policy_id": policy_id, "stale": True})
        self.journal(entry)
        self.client.update_policy(PolicyId=policy_id, Content=self.content)
        self.journal(self._final(entry, ActionOutcome.DONE, None))

    def _attached(self, policy_id: str) -> bool:
        pages = self.client.get_paginator("list_policies_for_target").paginate(TargetId=self.account_id, Filter=SCP)
        return any(p["Id"] == policy_id for page in pages for p in page["Policies"])

    def _attach(self, policy_id: str) -> ActionResult:
        # `attached_before: False` is what makes it ours to detach on release (checked just above).
        entry = self._entry(QUARANTINE, self.account_id, before={"policy_id": policy_id, "attached_before": False})
        self.journal(entry)
        try:
            self.client.attach_policy(PolicyId=policy_id, TargetId=self.account_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DuplicatePolicyAttachmentException":
                self.journal(self._final(entry, ActionOutcome.FAILED, error_text(exc)))
                return self._say(ActionOutcome.FAILED, f"not quarantined: {error_text(exc)}")
        self.journal(self._final(entry, ActionOutcome.DONE, None, after={"attached": True}))
        return self._say(ActionOutcome.DONE, f"SCP {self.policy_name} ({policy_id}) attached")

    # -- release -------------------------------------------------------------------------------------------
    def release(self, entries: Sequence[JournalEntry], *, apply: bool) -> list[ActionResult]:
        """Detach what this guard's journal says it attached to this account (done, or planned: it may have
        happened); an attachment that was there before the trip stays."""
        ours = sorted(
            {
                str(e.before["policy_id"])
                for e in entries
                if e.action == QUARANTINE
                and e.account_id == self.account_id
                and e.outcome in (ActionOutcome.DONE, ActionOutcome.PLANNED)
                and e.before.get("attached_before") is False
            }
        )
        results = []
        for policy_id in ours:
            if not apply:
                results.append(self._say(ActionOutcome.PLANNED, f"dry run: would detach SCP {policy_id}", UNQUARANTINE))
                continue
            entry = self._entry(UNQUARANTINE, self.account_id, before={"policy_id": policy_id})
            self.journal(entry)
            try:
                self.client.detach_policy(PolicyId=policy_id, TargetId=self.account_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("PolicyNotAttachedException",):
                    self.journal(self._final(entry, ActionOutcome.FAILED, error_text(exc)))
                    results.append(self._say(ActionOutcome.FAILED, error_text(exc), UNQUARANTINE))
                    continue
            self.journal(self._final(entry, ActionOutcome.DONE, None, after={"attached": False}))
            results.append(self._say(ActionOutcome.DONE, f"SCP {policy_id} detached", UNQUARANTINE))
        return results

    # -- helpers -------------------------------------------------------------------------------------------
    def _say(self, outcome: ActionOutcome, reason: str, action: str = QUARANTINE) -> ActionResult:
        return self._result(action, self.account_id, outcome, reason)

    def _final(
        self, entry: JournalEntry, outcome: ActionOutcome, error: str | None, after: dict[str, Any] | None = None
    ) -> JournalEntry:
        return entry.model_copy(update={"outcome": outcome, "at": self.clock(), "error": error, "after": after or {}})
