"""Security facts other modules share, in a leaf that imports nothing heavy.

The ``xpipe`` CLI builds its parser from these without loading ``cryptography``.
"""

from __future__ import annotations

__all__ = ["CA_DAYS", "CERT_ROLES", "DEFAULT_CERT_DAYS", "DEFAULT_SANS", "KEY_TYPES", "MAX_CERT_DAYS"]

#: Roles a certificate can carry (``worker`` is also the RBAC role of the same name).
CERT_ROLES = ("coordinator", "worker", "client")
#: Private key types: ``ec`` is P-256, ``rsa`` is 3072 bits.
KEY_TYPES = ("ec", "rsa")
#: A CA is valid this many days (10 years).
CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365
MAX_CERT_DAYS = CA_DAYS
#: A coordinator certificate without ``--san`` is valid for loopback, the embedded default.
DEFAULT_SANS = ("localhost", "127.0.0.1")
