"""Who is calling: the :class:`Principal` every authenticator returns.

A leaf module: the authenticators (tokens, JWT, LDAP, certificates) build principals and the
RBAC module reads them, so neither imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ALL_NAMESPACES",
    "DEFAULT_NAMESPACE",
    "NAME_PATTERN",
    "PRINCIPAL_PATTERN",
    "Principal",
    "check_name",
]

#: Runs belong to a namespace; a run submitted without one is in this one.
DEFAULT_NAMESPACE = "default"
#: Written in a namespaces list, grants every namespace.
ALL_NAMESPACES = "*"
#: Role, permission and namespace names: letters, digits and ``_ . : @ -``, at most 128.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}")
#: Principal names come from outside (a JWT ``sub`` such as ``auth0|5f1c``, an e-mail, an LDAP
#: uid): any printable characters but whitespace, at most 256.
PRINCIPAL_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")
_HINTS = {
    "principal": "1-256 printable characters, no whitespace",
    "default": "1-128 of A-Z a-z 0-9 _ . : @ - (no spaces)",
}


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid ``kind`` name, else raise ValueError naming both.

    ``kind`` is ``principal``, ``role``, ``permission`` or ``namespace``; a namespace may also
    be :data:`ALL_NAMESPACES`.
    """
    pattern = PRINCIPAL_PATTERN if kind == "principal" else NAME_PATTERN
    if isinstance(value, str) and (
        pattern.fullmatch(value) or (kind == "namespace" and value == ALL_NAMESPACES)
    ):
        return value
    raise ValueError(f"invalid {kind} {value!r}: expected {_HINTS.get(kind, _HINTS['default'])}")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Frozen and hashable, so the RBAC layer can cache each principal's effective permissions
    instead of recomputing them on every RPC.

    Attributes:
        name: Who it is (token principal, JWT ``sub``, LDAP user, certificate CN).
        roles: Role names (``viewer``, ``submitter``, ``operator``, ``admin``, ``worker`` or
            a policy's own).
        permissions: Permissions granted directly, besides those of the roles.
        namespaces: Namespaces it may act in; ``None`` means all of them.
        source: Where the identity came from: ``token``, ``jwt``, ``ldap`` or ``cert``.
    """

    name: str
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    namespaces: frozenset[str] | None = None
    source: str = ""

    @classmethod
    def build(
        cls,
        name: str,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        namespaces: Iterable[str] | None = None,
        source: str = "",
    ) -> Principal:
        """Validate names and build.

        ``namespaces=None`` or a list holding ``*`` means all namespaces; an empty list means
        none (fail closed: a claim that lists nothing grants nothing).

        Raises:
            ValueError: a name is malformed; the message names it.
        """
        check_name("principal", name)
        ns = None
        if namespaces is not None:
            ns = frozenset(check_name("namespace", n) for n in namespaces)
            if ALL_NAMESPACES in ns:
                ns = None
        return cls(
            name=name,
            roles=frozenset(check_name("role", r) for r in roles),
            permissions=frozenset(check_name("permission", p) for p in permissions),
            namespaces=ns,
            source=source,
        )

    def may_act_in(self, namespace: str) -> bool:
        """True when this principal's namespaces include ``namespace``."""
        return self.namespaces is None or namespace in self.namespaces
