"""Auth sources by ``--auth`` spec, and reading the ``authorization`` metadata value.

A small registry keyed by scheme (``tokens``, ``jwt``, ``ldap``, ``ldaps``), so adding a
source touches this file and its own module. The coordinator's per-call check
(``coordinator/_authn.py``) reads ``authorization`` once per call, parses it with
:func:`parse_authorization`, and asks the configured source; the TLS peer certificate is the other identity, read with
:func:`xpipe.security._certs.identity_from_certificate`.

Clients send ``authorization: Bearer <token>`` (tokens file or JWT) or ``authorization:
Basic base64(user:password)`` (LDAP).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._errors import SecurityConfigError
from ._principal import Principal

__all__ = [
    "AUTHORIZATION_KEY",
    "AUTH_SCHEMES",
    "Authenticator",
    "Credential",
    "authenticator_from_spec",
    "authorization_value",
    "parse_authorization",
]

#: The gRPC metadata key (lower case, as gRPC requires) that carries the credential.
AUTHORIZATION_KEY = "authorization"


@dataclass(frozen=True, slots=True)
class Credential:
    """What a caller presented: a bearer token, or a user name and password."""

    token: str = ""
    user: str = ""
    password: str = ""


class Authenticator(Protocol):
    """One identity source: the principal of a credential, or None when it is not valid.

    Raises :class:`~xpipe.security._errors.AuthUnavailableError` when the source cannot
    answer now (the caller fails closed with UNAVAILABLE, not UNAUTHENTICATED).
    """

    def check(self, credential: Credential) -> Principal | None: ...


class _Bearer:
    """Adapts a token authenticator (tokens file, JWT) to :class:`Authenticator`."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def check(self, credential: Credential) -> Principal | None:
        return self.inner.authenticate(credential.token) if credential.token else None


class _Password:
    """Adapts the LDAP authenticator to :class:`Authenticator`."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def check(self, credential: Credential) -> Principal | None:
        return self.inner.authenticate(credential.user, credential.password) if credential.user else None


def _tokens(spec: str, ldap_config: Path | None) -> Authenticator:
    from ._tokens import TokenAuthenticator

    path = spec.partition(":")[2]
    if not path:
        raise SecurityConfigError(f"--auth {spec!r}: expected tokens:/path/to/tokens.json")
    if not Path(path).is_file():
        raise SecurityConfigError(
            f"--auth {spec!r}: no tokens file at {path} (create one with `xpipe tokens create`)"
        )
    return _Bearer(TokenAuthenticator(path))


def _jwt(spec: str, ldap_config: Path | None) -> Authenticator:
    from ._jwt import JwtAuthenticator

    return _Bearer(JwtAuthenticator(spec))


def _ldap(spec: str, ldap_config: Path | None) -> Authenticator:
    from ._ldap import LdapAuthenticator, LdapConfig

    if ldap_config is None:
        raise SecurityConfigError(
            f"--auth {spec!r}: LDAP needs its settings file (user DN template, group roles)"
        )
    return _Password(LdapAuthenticator(spec, LdapConfig.load(ldap_config)))


#: ``--auth`` scheme -> factory(spec, ldap settings path).
AUTH_SCHEMES: dict[str, Callable[[str, Path | None], Authenticator]] = {
    "tokens": _tokens,
    "jwt": _jwt,
    "ldap": _ldap,
    "ldaps": _ldap,
}


def authenticator_from_spec(spec: str, *, ldap_config: str | Path | None = None) -> Authenticator:
    """Build the authenticator an ``--auth`` value names.

    Raises:
        SecurityConfigError: an unknown scheme, or the source's own configuration error.
    """
    scheme = spec.partition(":")[0]
    factory = AUTH_SCHEMES.get(scheme)
    if factory is None:
        raise SecurityConfigError(f"--auth {spec!r}: unknown scheme {scheme!r} (expected one of: "
                                  f"{', '.join(f'{s}:' for s in AUTH_SCHEMES)})")  # fmt: skip
    return factory(spec, Path(ldap_config) if ldap_config is not None else None)


def authorization_value(token: str) -> str:
    """The ``authorization`` value a client sends for ``token`` (the inverse of :func:`parse_authorization`).

    Tokens (``xpt_...``) and JWTs never hold ``:``, so ``user:password`` means an LDAP
    user and is sent as ``Basic``; anything else as ``Bearer``.
    """
    if ":" in token:
        return "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
    return f"Bearer {token}"


def parse_authorization(value: str | None) -> Credential | None:
    """Parse an ``authorization`` metadata value; None when absent or malformed.

    ``Bearer <token>`` and ``Basic base64(user:password)`` are understood (scheme names are
    case-insensitive, as in HTTP).
    """
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return None
    if scheme.lower() == "bearer":
        return Credential(token=rest)
    if scheme.lower() == "basic":
        try:
            user, sep, password = base64.b64decode(rest, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credential(user=user, password=password) if sep and user else None
    return None
