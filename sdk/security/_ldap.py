"""LDAP authentication: a simple bind as the user, roles from the groups they belong to.

The user's own bind proves the password (xpipe holds no service account password), and the
group search runs on that same connection. Group DNs map to xpipe roles in a TOML file::

    # --auth ldap://ldap.example:389 with this file as its settings
    user_dn_template = "uid={user},ou=people,dc=example,dc=org"
    group_base = "ou=groups,dc=example,dc=org"
    group_filter = "(&(objectClass=groupOfNames)(member={user_dn}))"   # the default
    timeout_s = 5.0
    [group_roles]
    "cn=xpipe-operators,ou=groups,dc=example,dc=org" = ["operator"]
    "cn=analysts,ou=groups,dc=example,dc=org" = ["submitter"]

Every call opens its own connection with connect and receive timeouts, so a server that is
down or stalls yields :class:`AuthUnavailableError` within ``timeout_s``, never a hang.
"""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException, LDAPResponseTimeoutError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from ._errors import AuthUnavailableError, SecurityConfigError
from ._principal import Principal, check_name

__all__ = ["DEFAULT_GROUP_FILTER", "DEFAULT_LDAP_TIMEOUT_S", "LdapAuthenticator", "LdapConfig"]

logger = logging.getLogger(__name__)

DEFAULT_LDAP_TIMEOUT_S = 5.0
DEFAULT_GROUP_FILTER = "(&(objectClass=groupOfNames)(member={user_dn}))"
_MAX_USER_CHARS = 256
_INVALID_CREDENTIALS = 49  # RFC 4511 resultCode invalidCredentials
_CONFIG_KEYS = {"user_dn_template", "group_base", "group_filter", "group_roles", "timeout_s"}


@dataclass(frozen=True, slots=True)
class LdapConfig:
    """Where users and groups live and which group grants which roles.

    Attributes:
        user_dn_template: The bind DN with ``{user}`` where the (escaped) user name goes.
        group_base: The subtree searched for the user's groups.
        group_roles: Group DN (compared case-insensitively) -> xpipe roles.
        group_filter: LDAP filter with ``{user_dn}`` (escaped); default: groupOfNames members.
        timeout_s: Connect and receive timeout of each step.
    """

    user_dn_template: str
    group_base: str
    group_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    group_filter: str = DEFAULT_GROUP_FILTER
    timeout_s: float = DEFAULT_LDAP_TIMEOUT_S

    def __post_init__(self) -> None:
        if "{user}" not in self.user_dn_template:
            raise SecurityConfigError(
                f"LDAP user_dn_template {self.user_dn_template!r} must contain {{user}}"
            )
        if "{user_dn}" not in self.group_filter:
            raise SecurityConfigError(f"LDAP group_filter {self.group_filter!r} must contain {{user_dn}}")
        if not 0 < self.timeout_s <= 60:
            raise SecurityConfigError(f"LDAP timeout_s {self.timeout_s!r}: expected seconds in (0, 60]")
        roles: dict[str, tuple[str, ...]] = {}
        for dn, value in self.group_roles.items():
            names = (value,) if isinstance(value, str) else tuple(value)
            try:
                roles[dn.lower()] = tuple(check_name("role", r) for r in names)
            except ValueError as exc:
                raise SecurityConfigError(f"LDAP group_roles[{dn!r}]: {exc}") from None
        object.__setattr__(self, "group_roles", MappingProxyType(roles))

    @classmethod
    def load(cls, path: str | Path) -> LdapConfig:
        """Read the TOML settings file (see the module docstring).

        Raises:
            SecurityConfigError: unreadable, not TOML, an unknown or missing key, a bad value.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SecurityConfigError(f"LDAP settings {path}: cannot read: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"LDAP settings {path}: not valid TOML: {exc}") from None
        unknown = sorted(set(data) - _CONFIG_KEYS)
        if unknown:
            raise SecurityConfigError(f"LDAP settings {path}: unknown key(s) {', '.join(unknown)}")
        missing = sorted({"user_dn_template", "group_base"} - set(data))
        if missing:
            raise SecurityConfigError(f"LDAP settings {path}: missing key(s) {', '.join(missing)}")
        return cls(**data)


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise SecurityConfigError(f"--auth {url!r}: expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query:
        raise SecurityConfigError(
            f"--auth {url!r}: no path or query allowed; put settings in the LDAP settings file"
        )
    try:
        port = parts.port or (636 if parts.scheme == "ldaps" else 389)
    except ValueError:
        raise SecurityConfigError(f"--auth {url!r}: bad port") from None
    return parts.hostname, port, parts.scheme == "ldaps"


class LdapAuthenticator:
    """Authenticates a user name and password by binding to an LDAP server as that user.

    Args:
        url: ``ldap://HOST:PORT`` (or ``ldaps://``).
        config: Where users and groups are, and the group -> roles map.

    Raises:
        SecurityConfigError: a malformed URL.
    """

    def __init__(self, url: str, config: LdapConfig) -> None:
        self.url = url
        self.config = config
        host, port, use_ssl = _parse_url(url)
        # ldap3 packs the receive timeout into SO_RCVTIMEO as whole seconds.
        self._receive_timeout_s = max(1, math.ceil(config.timeout_s))
        self._server = ldap3.Server(host, port=port, use_ssl=use_ssl, get_info=ldap3.NONE,
                                    connect_timeout=config.timeout_s)  # fmt: skip

    def authenticate(self, user: str, password: str) -> Principal | None:
        """The principal for a correct user name and password, else None.

        An empty password is refused here: LDAP treats a bind with a DN and no password as
        an anonymous bind that *succeeds* (RFC 4513 section 5.1.2).

        Raises:
            AuthUnavailableError: the server could not be reached or did not answer within
                ``timeout_s``; the message names the URL and the timeout.
        """
        if not user or not password or len(user) > _MAX_USER_CHARS:
            return None
        try:
            principal_name = check_name("principal", user)
        except ValueError:
            return None  # a name xpipe cannot represent cannot be a principal
        user_dn = self.config.user_dn_template.format(user=escape_rdn(user))
        conn = ldap3.Connection(self._server, user=user_dn, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                                receive_timeout=self._receive_timeout_s, raise_exceptions=False,
                                read_only=True)  # fmt: skip
        try:
            if not conn.bind():
                code = conn.result.get("result") if conn.result else None
                if code == _INVALID_CREDENTIALS:
                    return None
                raise AuthUnavailableError(f"LDAP {self.url}: bind as {user_dn!r} failed: {conn.result}")
            conn.search(self.config.group_base,
                        self.config.group_filter.format(user_dn=escape_filter_chars(user_dn)),
                        search_scope=ldap3.SUBTREE, attributes=[])  # fmt: skip
            groups = [
                entry["dn"].lower() for entry in conn.response or () if entry.get("type") == "searchResEntry"
            ]
        except (LDAPCommunicationError, LDAPResponseTimeoutError) as exc:
            raise AuthUnavailableError(f"LDAP {self.url} did not answer within {self.config.timeout_s:g} s: "
                                       f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        except LDAPException as exc:
            raise AuthUnavailableError(f"LDAP {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            try:
                conn.unbind()
            except LDAPException:  # the socket is already gone; nothing left to release
                logger.debug("LDAP unbind after a failure raised", exc_info=True)
        roles: list[str] = []
        for dn in groups:
            roles.extend(self.config.group_roles.get(dn, ()))
        return Principal.build(principal_name, roles=roles, source="ldap")

    def groups_roles(self) -> Sequence[str]:
        """Every role some group grants (for start-up checks against the policy)."""
        return sorted({r for roles in self.config.group_roles.values() for r in roles})
