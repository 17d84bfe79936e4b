"""The seed's ``enterprise_config``: each key is acted on, or refused with what to do instead.

``PipelineManager(enterprise_config)`` reads the sections ``security``, ``compliance`` and
``integration`` (see docs/security.md, "enterprise_config"). A key is either acted on
(lineage and PII marks on every pipeline the manager submits, flags for the embedded
default's processes) or refused with a :class:`ValueError` naming the key, why, and what
to run instead. No key is silently ignored; a false or empty value asks for nothing.
Everything is checked before any process starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .security._privacy import DEFAULT_PII_FIELDS

__all__ = [
    "ENTERPRISE_SECTIONS",
    "KEYRING_FILE",
    "EnterpriseSettings",
    "enterprise_settings",
    "prepare_keyring",
]

#: The sections of the seed's enterprise_config.
ENTERPRISE_SECTIONS = ("security", "compliance", "integration")
#: The embedded default's keyring, in its data directory.
KEYRING_FILE = "keyring.json"

_AUTH_HOW = (
    "run a coordinator with --auth ldap://HOST:PORT (and --ldap-config FILE; docs/security.md), "
    "then PipelineManager(coordinator='HOST:PORT', token=...) or XPIPE_TOKEN"
)
_TLS_HOW = (
    "run a coordinator with --tls-cert, --tls-key and --tls-ca (certificates from `xpipe certs`), "
    "then PipelineManager(coordinator='HOST:PORT', tls=TLSConfig(ca=..., cert=..., key=...)) or XPIPE_TLS_CA"
)
_INTEGRATION_HOW = {
    "active_directory": "Active Directory speaks LDAP: run a coordinator with --auth ldap://AD-HOST:389",
    "enterprise_vault": (
        "xpipe reads its keyring and token files from disk and fetches nothing from a vault: have your vault "
        "agent write the file given to --encryption-key-file / --auth tokens:FILE"
    ),
    "monitoring_systems": (
        "export metrics with --metrics-listen HOST:PORT (Prometheus) and traces with --otlp-endpoint / "
        "PipelineManager(otlp_endpoint=...) (OTLP; Datadog and New Relic agents ingest both)"
    ),
    "notification_systems": "alerts and notifications are not built yet (issue 15)",
}
_KNOWN = {
    "security": ("authentication", "authorization", "encryption_at_rest", "encryption_in_transit"),
    "compliance": (
        "audit_logging",
        "data_lineage",
        "privacy_controls",
        "retention_policies",
        "retention_days",
    ),
    "integration": tuple(_INTEGRATION_HOW),
}


@dataclass(frozen=True, slots=True)
class EnterpriseSettings:
    """What an ``enterprise_config`` asks of the manager.

    Attributes:
        lineage: mark every submitted pipeline ``track_lineage`` (``compliance.data_lineage``).
        pii_fields: mark every submitted pipeline with these PII fields (``compliance.privacy_controls``).
        retention_days: the embedded coordinator's ``--retention-days``.
        encryption_at_rest: the embedded processes get a keyring (``--encryption-key-file``).
    """

    lineage: bool = False
    pii_fields: tuple[str, ...] = ()
    retention_days: float | None = None
    encryption_at_rest: bool = False

    def coordinator_args(self) -> tuple[str, ...]:
        """Flags for the embedded coordinator only."""
        return ("--retention-days", repr(self.retention_days)) if self.retention_days is not None else ()


def _refuse(key: str, why: str) -> ValueError:
    return ValueError(f"enterprise_config {key}: {why}")


def _flag(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(f"{section}.{key}", f"must be True or False, got {value!r}")
    return value


def enterprise_settings(cfg: Mapping[str, Any], *, embedded: bool) -> EnterpriseSettings:
    """Check the enterprise sections of a manager config; what they ask for.

    Args:
        cfg: the whole PipelineManager config dict (other keys are not looked at).
        embedded: the manager starts the embedded default (else it talks to a remote
            coordinator, whose flags the client cannot set).

    Raises:
        ValueError: a key that cannot be acted on here; the message names the key, why,
            and what to run instead.
    """
    sections: dict[str, Mapping[str, Any]] = {}
    for name in ENTERPRISE_SECTIONS:
        if name not in cfg:
            continue
        section = cfg[name]
        if not isinstance(section, Mapping):
            raise _refuse(name, f"must be a dict of settings, got {type(section).__name__}")
        unknown = sorted(set(section) - set(_KNOWN[name]))
        if unknown:
            raise _refuse(f"{name}.{unknown[0]}", f"is not a known key; {name} takes {list(_KNOWN[name])}")
        sections[name] = section
    where = "the embedded default" if embedded else "a remote coordinator"
    security = sections.get("security", {})
    compliance = sections.get("compliance", {})

    auth = security.get("authentication")
    if auth:
        if embedded:
            raise _refuse("security.authentication", f"{auth!r} cannot guard the embedded default (one local "
                          f"user on loopback, who is admin); for authentication {_AUTH_HOW}")  # fmt: skip
        raise _refuse("security.authentication", f"{auth!r} is the coordinator's to enforce, not the client's: "
                      f"{_AUTH_HOW}")  # fmt: skip
    authz = security.get("authorization")
    if authz not in (None, False, "rbac"):
        raise _refuse(
            "security.authorization", f"{authz!r} is not available; xpipe authorizes with 'rbac' only"
        )
    # 'rbac' is acted on by being what every coordinator does: each RPC is checked against
    # its permission (xpipe.security RPC_PERMISSIONS) for the caller the coordinator authenticated.

    encryption_at_rest = _flag("security", "encryption_at_rest", security.get("encryption_at_rest", False))
    if encryption_at_rest and not embedded:
        raise _refuse("security.encryption_at_rest", "is set where the data is stored: start the coordinator and "
                      "workers with --encryption-key-file K (K from `xpipe keys create --file K`)")  # fmt: skip
    if _flag("security", "encryption_in_transit", security.get("encryption_in_transit", False)):
        raise _refuse(
            "security.encryption_in_transit", f"cannot be turned on from here for {where}: {_TLS_HOW}"
        )

    if compliance.get("audit_logging") is False:
        raise _refuse(
            "compliance.audit_logging", "cannot be turned off: every coordinator keeps the audit log"
        )
    _flag("compliance", "audit_logging", compliance.get("audit_logging", True))  # True: always on already
    lineage = _flag("compliance", "data_lineage", compliance.get("data_lineage", False))
    privacy = compliance.get("privacy_controls", False)
    if privacy is True:
        pii: tuple[str, ...] = DEFAULT_PII_FIELDS
    elif privacy is False:
        pii = ()
    elif isinstance(privacy, (list, tuple)) and privacy and all(isinstance(f, str) and f for f in privacy):
        pii = tuple(privacy)
    else:
        raise _refuse(
            "compliance.privacy_controls",
            f"must be True, False or a list of PII field names, got {privacy!r}",
        )

    retention = _flag("compliance", "retention_policies", compliance.get("retention_policies", False))
    days = compliance.get("retention_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))
                             or not math.isfinite(days) or days <= 0):  # fmt: skip
        raise _refuse("compliance.retention_days", f"must be a positive number of days, got {days!r}")
    if retention and days is None:
        raise _refuse("compliance.retention_policies", "True needs a limit: add compliance.retention_days "
                      "(finished runs older than that many days are deleted)")  # fmt: skip
    if days is not None and not embedded:
        raise _refuse("compliance.retention_days", "retention is the coordinator's to enforce: start it with "
                      f"--retention-days {days} (or --retention NAMESPACE=DAYS)")  # fmt: skip

    for key, value in sections.get("integration", {}).items():
        if value:
            raise _refuse(f"integration.{key}", f"{value!r} is not integrated: {_INTEGRATION_HOW[key]}")

    return EnterpriseSettings(lineage=lineage, pii_fields=pii, retention_days=float(days) if days is not None else None,
                              encryption_at_rest=encryption_at_rest)  # fmt: skip


def prepare_keyring(data_dir: Path) -> Path:
    """The embedded default's keyring file in ``data_dir``, created (0600) if it is not there yet."""
    from .security._keys import create_keyring

    path = Path(data_dir) / KEYRING_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_keyring(path)
    return path
