"""Security and governance (issue 13): certificates, identities, permissions, keys, audit.

One concept per module, each a pure core the coordinator, the worker and the CLI share:

- ``_certs``: a private CA, certificates with a role and name, the identity of a TLS peer;
- ``_tokens``, ``_jwt``, ``_ldap``: identity sources; ``_auth`` picks one by ``--auth`` spec;
- ``_rbac``: roles, permissions, the policy file and the RPC -> permission table;
- ``_tls``: :class:`TLSConfig` (clients) and server credentials, from PEM files;
- ``_keys``: a keyring and AES-256-GCM for data at rest;
- ``_audit``: the audit log's hash chain;
- ``_cli``: ``xpipe certs``, ``xpipe tokens``, ``xpipe keys``.

Names are served lazily, so ``import xpipe.security`` does not load ``cryptography``,
``jwt`` or ``ldap3`` until one of them is used. See docs/security.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditEntry": "_audit", "AuditProblem": "_audit", "chain": "_audit", "verify": "_audit",
    "Authenticator": "_auth", "Credential": "_auth", "authenticator_from_spec": "_auth",
    "parse_authorization": "_auth",
    "CertIdentity": "_certs", "identity_from_certificate": "_certs", "init_ca": "_certs", "issue_cert": "_certs",
    "AuthUnavailableError": "_errors", "DecryptionError": "_errors", "SecurityConfigError": "_errors",
    "JwtAuthenticator": "_jwt",
    "Keyring": "_keys",
    "LdapAuthenticator": "_ldap", "LdapConfig": "_ldap",
    "Principal": "_principal",
    "Policy": "_rbac", "Refusal": "_rbac", "RPC_PERMISSIONS": "_rbac", "authorize": "_rbac",
    "TokenAuthenticator": "_tokens",
    "TLSConfig": "_tls",
}  # fmt: skip

__all__ = [
    "RPC_PERMISSIONS",
    "AuditEntry",
    "AuditProblem",
    "AuthUnavailableError",
    "Authenticator",
    "CertIdentity",
    "Credential",
    "DecryptionError",
    "JwtAuthenticator",
    "Keyring",
    "LdapAuthenticator",
    "LdapConfig",
    "Policy",
    "Principal",
    "Refusal",
    "SecurityConfigError",
    "TLSConfig",
    "TokenAuthenticator",
    "authenticator_from_spec",
    "authorize",
    "chain",
    "identity_from_certificate",
    "init_ca",
    "issue_cert",
    "parse_authorization",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
