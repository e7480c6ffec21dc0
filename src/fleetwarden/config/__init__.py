"""The YAML config, validated by pydantic models (`extra="forbid"`) before any AWS call (DESIGN.md contract v1).

`models` holds the models and their value validators, `problems` turns validation errors into what users read
(a key path, what was expected, never a secret's value), `loader` reads bytes into a Config and refuses hostile
documents before building them.
"""

from __future__ import annotations

from .loader import MAX_CONFIG_BYTES, decode_config, load_config, load_yaml, parse_config
from .models import (
    AccountConfig,
    AccountId,
    AuditConfig,
    AwsSettings,
    BillingAccount,
    CanaryConfig,
    ComplianceConfig,
    Config,
    DiscoveryConfig,
    ExposureConfig,
    GuardConfig,
    GuardOverrides,
    LockoutConfig,
    OrganizationConfig,
    OwnerNotifyConfig,
    OwnersConfig,
    Region,
    RoleArn,
    SecretRef,
    SpendConfig,
    SpendSource,
    SpendSourceSpec,
    StrictModel,
    WindowConfig,
    contact_kind,
    endpoint_url_problem,
    shown,
)
from .problems import config_error, is_secret_path, problems_from_validation

__all__ = [
    "MAX_CONFIG_BYTES",
    "AccountConfig",
    "AccountId",
    "AuditConfig",
    "AwsSettings",
    "BillingAccount",
    "CanaryConfig",
    "ComplianceConfig",
    "Config",
    "DiscoveryConfig",
    "ExposureConfig",
    "GuardConfig",
    "GuardOverrides",
    "LockoutConfig",
    "OrganizationConfig",
    "OwnerNotifyConfig",
    "OwnersConfig",
    "Region",
    "RoleArn",
    "SecretRef",
    "SpendConfig",
    "SpendSource",
    "SpendSourceSpec",
    "StrictModel",
    "WindowConfig",
    "config_error",
    "contact_kind",
    "decode_config",
    "endpoint_url_problem",
    "is_secret_path",
    "load_config",
    "load_yaml",
    "parse_config",
    "problems_from_validation",
    "shown",
]
