"""Errors of the security package, under the one root :class:`xpipe.errors.XpipeError`.

::

    XpipeError
    ├── SecurityConfigError     a certificate, key, tokens, policy or spec file is wrong: fix it
    ├── AuthUnavailableError    an identity source (LDAP) cannot answer now: retry or fail closed
    └── DecryptionError         an encrypted blob cannot be opened: missing key id, tampering

A refused credential is not an error: authenticators return ``None`` and
:func:`xpipe.security._rbac.authorize` returns a :class:`~xpipe.security._rbac.Refusal`,
because a refusal is an expected answer, not a fault.
"""

from __future__ import annotations

from ..errors import XpipeError

__all__ = ["AuthUnavailableError", "DecryptionError", "SecurityConfigError"]


class SecurityConfigError(XpipeError, ValueError):
    """A security setting or file is malformed, missing or unsafe; the message names it."""


class AuthUnavailableError(XpipeError):
    """An identity source did not answer in time (LDAP down); the caller must fail closed."""


class DecryptionError(XpipeError):
    """Encrypted data cannot be opened: bad header, a key id not in the keyring, or tampering."""
