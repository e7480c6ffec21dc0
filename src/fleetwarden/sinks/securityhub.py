"""Security Hub sink: imports a run's findings as ASFF into each finding's own account and region."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

from pydantic import Field

from ..errors import FleetwardenError
from ..model import RunReport, utcnow
from ..report.asff import GENERATOR_PREFIX, default_product_arn, finding_region, to_asff
from .base import Notification, Sink, SinkConfig, sink_registry

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # BatchImportFindings takes at most 100 findings per call
ACCOUNT_ID = re.compile(r"[0-9]{12}")
ERRORS_SHOWN = 10


class SecurityHubError(FleetwardenError):
    """Some findings were not imported: a target's call failed, or Security Hub refused individual findings."""

    def __init__(self, imported: int, failures: list[str]) -> None:
        self.imported = imported
        self.failures = failures
        shown = "; ".join(failures[:ERRORS_SHOWN])
        more = f"; and {len(failures) - ERRORS_SHOWN} more" if len(failures) > ERRORS_SHOWN else ""
        super().__init__(f"Security Hub import: {len(failures)} failed, {imported} imported: {shown}{more}")


class SecurityHubSinkConfig(SinkConfig):
    generator_prefix: str = Field(default=GENERATOR_PREFIX, pattern=r"^[\w.-]+$")  # GeneratorId: <prefix>/<check>


def _batches(items: list[dict[str, Any]], size: int = BATCH_SIZE) -> list[list[dict[str, Any]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@sink_registry.register("securityhub")
class SecurityHubSink(Sink):
    """Import the run's findings into Security Hub (ASFF), each in its own account and region; resolved
    findings are re-imported as ARCHIVED."""

    type_name = "securityhub"
    config_model = SecurityHubSinkConfig
    # Called in each finding's account, through the role fleetwarden assumes there (or the hub's credentials).
    permissions = ("securityhub:BatchImportFindings",)

    def send(self, notification: Notification, report: RunReport) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        from ..aws.targets import error_text

        assert isinstance(self.config, SecurityHubSinkConfig)
        factory = self.context.factory
        home = factory.settings.sts_region
        now = utcnow()
        by_target: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        failures: list[str] = []
        for finding in report.findings:
            if not ACCOUNT_ID.fullmatch(finding.account_id):
                failures.append(f"{finding.id}: account {finding.account_id!r} is not an AWS account id")
                continue
            region = finding_region(finding, home)
            by_target[(finding.account_id, region)].append(
                to_asff(
                    finding,
                    product_arn_for=default_product_arn,
                    generator_prefix=self.config.generator_prefix,
                    now=now,
                    home_region=home,
                )
            )

        imported = 0
        for (account_id, region), documents in sorted(by_target.items()):
            client = factory.client("securityhub", region=region, account_id=account_id)
            for batch in _batches(documents):
                try:
                    response = client.batch_import_findings(Findings=batch)
                except (ClientError, BotoCoreError) as exc:
                    # One account without Security Hub (or without the permission) must not stop the others.
                    failures.append(f"{account_id}/{region}: {len(batch)} findings: {error_text(exc)}")
                    log.warning("Security Hub import to %s/%s failed: %s", account_id, region, error_text(exc))
                    continue
                imported += int(response.get("SuccessCount", len(batch) - int(response.get("FailedCount", 0))))
                for failed in response.get("FailedFindings", []):
                    failures.append(
                        f"{account_id}/{region} {failed.get('Id', '?')}: "
                        f"{failed.get('ErrorCode', 'Error')}: {failed.get('ErrorMessage', '')}".rstrip(": ")
                    )
                if int(response.get("FailedCount", 0)) and not response.get("FailedFindings"):
                    failures.append(f"{account_id}/{region}: {response['FailedCount']} findings failed")
        log.info("Security Hub: %d findings imported into %d targets", imported, len(by_target))
        if failures:
            raise SecurityHubError(imported, failures)
