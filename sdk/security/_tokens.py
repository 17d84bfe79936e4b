"""Bearer tokens: a JSON file of token hashes, and the authenticator that reads it.

The file never holds a token, only its SHA-256, so a leaked tokens file grants nothing.
Tokens are ``xpt_`` plus 32 random bytes (URL-safe base64): the prefix makes a token
greppable in logs and by secret scanners. ``xpipe tokens create`` appends an entry and
prints the token once.

File format (version 1)::

    {"version": 1, "tokens": [
      {"sha256": "<hex>", "principal": "dana", "roles": ["submitter"],
       "permissions": ["customer_data_read"], "namespaces": ["default"], "created_at": 1764...}
    ]}

``namespaces`` absent or null means all namespaces.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import SecurityConfigError
from ._files import atomic_write, locked
from ._principal import Principal

__all__ = [
    "TOKEN_PREFIX",
    "TokenAuthenticator",
    "TokenEntry",
    "create_token",
    "hash_token",
    "read_tokens_file",
]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "xpt_"
_TOKEN_BYTES = 32
_FILE_VERSION = 1
_ENTRY_KEYS = {"sha256", "principal", "roles", "permissions", "namespaces", "created_at"}
#: Checking the file's mtime costs a stat(); once a second is fresh enough for revocations.
DEFAULT_RELOAD_INTERVAL_S = 1.0


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored in the file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of the tokens file: a token's hash and whom it authenticates."""

    sha256: str
    principal: Principal
    created_at: float

    def to_json(self) -> dict[str, object]:
        p = self.principal
        return {
            "sha256": self.sha256,
            "principal": p.name,
            "roles": sorted(p.roles),
            "permissions": sorted(p.permissions),
            "namespaces": None if p.namespaces is None else sorted(p.namespaces),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, where: str, data: object) -> TokenEntry:
        if not isinstance(data, dict):
            raise SecurityConfigError(f"{where}: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - _ENTRY_KEYS)
        if unknown:
            raise SecurityConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        digest = data.get("sha256")
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            raise SecurityConfigError(f"{where}: sha256 must be 64 lowercase hex digits")
        try:
            principal = Principal.build(
                data.get("principal"),  # type: ignore[arg-type]
                roles=_list(data, "roles"),
                permissions=_list(data, "permissions"),
                namespaces=None if data.get("namespaces") is None else _list(data, "namespaces"),
                source="token",
            )
        except (ValueError, TypeError) as exc:
            raise SecurityConfigError(f"{where}: {exc}") from None
        created_at = data.get("created_at", 0.0)
        if not isinstance(created_at, (int, float)) or isinstance(created_at, bool):
            raise SecurityConfigError(f"{where}: created_at must be a number (Unix seconds)")
        return cls(sha256=digest, principal=principal, created_at=float(created_at))


def _list(data: Mapping[str, object], key: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list, got {type(value).__name__}")
    return value


def read_tokens_file(path: str | Path) -> list[TokenEntry]:
    """Parse and validate a tokens file; a missing file is an empty list.

    Raises:
        SecurityConfigError: unreadable, not JSON, a wrong version, or a malformed entry
            (named by its index).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SecurityConfigError(f"tokens file {path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"tokens file {path}: not valid JSON: {exc}") from None
    if (
        not isinstance(data, dict)
        or data.get("version") != _FILE_VERSION
        or not isinstance(data.get("tokens"), list)
    ):
        raise SecurityConfigError(
            f'tokens file {path}: expected {{"version": {_FILE_VERSION}, "tokens": [...]}}'
        )
    unknown = sorted(set(data) - {"version", "tokens"})
    if unknown:
        raise SecurityConfigError(f"tokens file {path}: unknown key(s) {', '.join(unknown)}")
    return [TokenEntry.from_json(f"tokens file {path}: tokens[{i}]", e) for i, e in enumerate(data["tokens"])]


def create_token(
    path: str | Path,
    principal: str,
    *,
    roles: Iterable[str],
    permissions: Iterable[str] = (),
    namespaces: Iterable[str] | None = None,
    known_roles: Iterable[str] | None = None,
    now: float | None = None,
) -> str:
    """Append a new token for ``principal`` to the file at ``path`` and return the token.

    The token itself is returned once and never stored. Existing entries are kept as they
    are (a malformed file is refused, not rewritten).

    Raises:
        SecurityConfigError: a malformed name, a role not in ``known_roles``, no role and no
            permission, an unreadable or unwritable file, or a malformed existing file.
    """
    path = Path(path)
    roles, permissions = list(roles), list(permissions)
    if not roles and not permissions:
        raise SecurityConfigError("--roles: a token needs at least one role or permission")
    if known_roles is not None:
        unknown = sorted(set(roles) - set(known_roles))
        if unknown:
            raise SecurityConfigError(f"--roles: unknown role(s) {', '.join(unknown)} "
                                      f"(known: {', '.join(sorted(known_roles))})")  # fmt: skip
    try:
        p = Principal.build(
            principal, roles=roles, permissions=permissions, namespaces=namespaces, source="token"
        )
    except ValueError as exc:
        raise SecurityConfigError(str(exc)) from None
    if not path.parent.is_dir():
        raise SecurityConfigError(f"--file {path}: directory {path.parent} does not exist")
    token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    entry = TokenEntry(sha256=hash_token(token), principal=p, created_at=time.time() if now is None else now)
    try:
        with locked(path):
            entries = [*read_tokens_file(path), entry]
            body = {"version": _FILE_VERSION, "tokens": [e.to_json() for e in entries]}
            atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise SecurityConfigError(f"--file {path}: cannot write: {exc.strerror or exc}") from None
    return token


class TokenAuthenticator:
    """Authenticates bearer tokens against a tokens file, reloading it when it changes.

    Args:
        path: The tokens file.
        reload_interval_s: Look at the file's (mtime, size, inode) at most this often; a
            change reloads it. A reload that fails (a half-edited file) keeps the previous
            entries and logs the error: a typo must not lock every client out.
        clock: Monotonic seconds, injectable for tests.

    Raises:
        SecurityConfigError: the file is malformed at start-up (fail fast there).
    """

    def __init__(self, path: str | Path, *, reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
                 clock=time.monotonic) -> None:  # fmt: skip
        self.path = Path(path)
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._by_hash = self._index(read_tokens_file(self.path))
        self._checked_at = clock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @staticmethod
    def _index(entries: list[TokenEntry]) -> dict[bytes, TokenEntry]:
        return {bytes.fromhex(e.sha256): e for e in entries}

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < self.reload_interval_s:
            return
        with self._lock:
            self._checked_at = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                by_hash = self._index(read_tokens_file(self.path))
            except SecurityConfigError as exc:
                logger.error("keeping the previous %d token(s): reload failed: %s", len(self._by_hash), exc)
                return
            self._stamp, self._by_hash = stamp, by_hash
            logger.info("reloaded tokens file %s: %d token(s)", self.path, len(by_hash))

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None.

        The token is hashed first and only its hash is looked up, so lookup timing reveals
        nothing usable about the secret; the final comparison is constant-time anyway.
        """
        self._maybe_reload()
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        entry = self._by_hash.get(digest)
        stored = bytes.fromhex(entry.sha256) if entry else b"\0" * 32
        if entry is None or not hmac.compare_digest(stored, digest):
            return None
        return entry.principal

    def __len__(self) -> int:
        return len(self._by_hash)
