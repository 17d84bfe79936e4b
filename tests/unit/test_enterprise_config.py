"""The seed's enterprise_config: every key acted on, or refused with what to run instead."""

from __future__ import annotations

import copy
import os
import stat

import pytest
from xpipe import PipelineManager
from xpipe._enterprise import KEYRING_FILE, EnterpriseSettings, enterprise_settings, prepare_keyring
from xpipe.security import DEFAULT_PII_FIELDS
from xpipe.security._keys import Keyring

#: The seed's dict, as written there.
SEED = {
    "security": {"authentication": "ldap", "authorization": "rbac", "encryption_at_rest": True,
                 "encryption_in_transit": True},
    "compliance": {"audit_logging": True, "data_lineage": True, "privacy_controls": True, "retention_policies": True},
    "integration": {"active_directory": True, "enterprise_vault": True,
                    "monitoring_systems": ["datadog", "newrelic"], "notification_systems": ["slack", "teams", "email"]},
}  # fmt: skip


def test_the_seed_dict_is_refused_at_its_first_key_that_cannot_be_enforced():
    with pytest.raises(ValueError, match=r"enterprise_config security.authentication: 'ldap' cannot guard the "
                                         r"embedded default .* --auth ldap://HOST:PORT"):  # fmt: skip
        PipelineManager(SEED)  # checked before any process starts: nothing to clean up


def test_what_is_acted_on():
    cfg = {"security": {"authorization": "rbac", "encryption_at_rest": True, "encryption_in_transit": False},
           "compliance": {"audit_logging": True, "data_lineage": True, "privacy_controls": True,
                          "retention_policies": True, "retention_days": 30},
           "integration": {"active_directory": False, "monitoring_systems": []}}  # fmt: skip
    got = enterprise_settings(cfg, embedded=True)
    assert got == EnterpriseSettings(lineage=True, pii_fields=DEFAULT_PII_FIELDS, retention_days=30.0,
                                     encryption_at_rest=True)  # fmt: skip
    assert got.coordinator_args() == ("--retention-days", "30.0")
    assert enterprise_settings({"compliance": {"privacy_controls": ["email", "iban"]}}, embedded=False).pii_fields == (
        "email", "iban")  # fmt: skip
    assert enterprise_settings({}, embedded=True) == EnterpriseSettings()


def _variant(section: str, key: str, value) -> dict:
    cfg = copy.deepcopy({"security": {}, "compliance": {}, "integration": {}})
    cfg[section][key] = value
    return cfg


@pytest.mark.parametrize(("section", "key", "value", "embedded", "message"), [
    ("security", "authentication", "ldap", False, "is the coordinator's to enforce, not the client's: run a coordinator with --auth ldap://"),
    ("security", "authorization", "abac", True, "'abac' is not available; xpipe authorizes with 'rbac' only"),
    ("security", "encryption_at_rest", True, False, "start the coordinator and workers with --encryption-key-file K"),
    ("security", "encryption_at_rest", "yes", True, "must be True or False, got 'yes'"),
    ("security", "encryption_in_transit", True, True, "cannot be turned on from here for the embedded default: run a coordinator with --tls-cert"),
    ("security", "encryption_in_transit", True, False, "for a remote coordinator: run a coordinator with --tls-cert"),
    ("security", "tls", True, True, "is not a known key; security takes"),
    ("compliance", "audit_logging", False, True, "cannot be turned off: every coordinator keeps the audit log"),
    ("compliance", "privacy_controls", "all", True, "must be True, False or a list of PII field names, got 'all'"),
    ("compliance", "retention_policies", True, True, "True needs a limit: add compliance.retention_days"),
    ("compliance", "retention_days", 0, True, "must be a positive number of days, got 0"),
    ("compliance", "retention_days", 30, False, "start it with --retention-days 30"),
    ("integration", "active_directory", True, True, "Active Directory speaks LDAP: run a coordinator with --auth ldap://AD-HOST:389"),
    ("integration", "enterprise_vault", True, True, "fetches nothing from a vault"),
    ("integration", "monitoring_systems", ["datadog"], True, "--metrics-listen HOST:PORT (Prometheus) and traces with --otlp-endpoint"),
    ("integration", "notification_systems", ["slack"], True, "alerts and notifications are not built yet (issue 15)"),
    ("integration", "pagerduty", True, True, "is not a known key; integration takes"),
])  # fmt: skip
def test_each_key_that_cannot_be_acted_on_is_refused_by_name(section, key, value, embedded, message):
    with pytest.raises(ValueError, match=rf"^enterprise_config {section}\.{key}: .*{_re(message)}"):
        enterprise_settings(_variant(section, key, value), embedded=embedded)


def test_a_section_must_be_a_dict():
    with pytest.raises(
        ValueError, match="enterprise_config compliance: must be a dict of settings, got list"
    ):
        enterprise_settings({"compliance": ["audit_logging"]}, embedded=True)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_prepare_keyring_creates_a_private_keyring_once(tmp_path):
    path = prepare_keyring(tmp_path / "data")
    assert path == tmp_path / "data" / KEYRING_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = Keyring.load(path)
    assert prepare_keyring(tmp_path / "data") == path and Keyring.load(path).key_ids == ring.key_ids  # kept
