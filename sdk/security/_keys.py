"""Encryption at rest: a keyring file and AES-256-GCM blobs that name their key.

``xpipe keys create --file K`` writes a keyring with one active key; ``xpipe keys rotate``
adds a new active key and keeps the old ones, so data written before a rotation still
decrypts and data written after uses the new key.

Blob layout (all of it is authenticated: the header is part of the GCM associated data)::

    b"XPE" | version (1 byte) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext+tag

Keyring file (JSON, 0600)::

    {"version": 1, "active": "k3f9a1c2e", "keys": [{"id": "k3f9a1c2e", "key": "<base64 32 bytes>", "created_at": ...}]}
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import DecryptionError, SecurityConfigError
from ._files import atomic_write, locked, write_private

__all__ = ["BLOB_VERSION", "KEY_BYTES", "MAGIC", "NONCE_BYTES", "Keyring", "create_keyring", "rotate_keyring"]

logger = logging.getLogger(__name__)

MAGIC = b"XPE"
BLOB_VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit, random per blob: 2**32 blobs per key keep collision odds below 2**-32
_FILE_VERSION = 1
_MAX_KEY_ID = 64


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    key: bytes
    created_at: float


def _new_key(now: float) -> _Key:
    return _Key(id="k" + secrets.token_hex(4), key=secrets.token_bytes(KEY_BYTES), created_at=now)


def _dump(active: str, keys: list[_Key]) -> bytes:
    body = {"version": _FILE_VERSION, "active": active,
            "keys": [{"id": k.id, "key": base64.b64encode(k.key).decode(), "created_at": k.created_at} for k in keys]}  # fmt: skip
    return (json.dumps(body, indent=1) + "\n").encode()


class Keyring:
    """Keys by id, one of them active; encrypts with the active key, decrypts with any.

    Build with :meth:`load`; ``encrypt``/``decrypt`` are thread-safe (no mutable state).
    """

    def __init__(self, keys: Mapping[str, bytes], active: str, *, source: str = "keyring") -> None:
        if active not in keys:
            raise SecurityConfigError(
                f"{source}: active key {active!r} is not among the keys ({', '.join(keys)})"
            )
        # Imported here: a worker child or client that only checks for sealed data (a prefix,
        # a file suffix) never pays for loading cryptography.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.source = source
        self.active = active
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._header = self._header_for(active)

    @staticmethod
    def _header_for(key_id: str) -> bytes:
        kid = key_id.encode("ascii")
        return MAGIC + bytes([BLOB_VERSION, len(kid)]) + kid

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        """Read a keyring file.

        Raises:
            SecurityConfigError: missing, unreadable, malformed (naming the bad field), or a
                key that is not 32 bytes.
        """
        path = Path(path)
        try:
            st = os.stat(path)
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecurityConfigError(f"keyring {path}: cannot read: {exc.strerror or exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "keyring %s is readable by group or others (mode %o); chmod 600 it", path, st.st_mode & 0o777
            )
        try:
            data = json.loads(text)
            if data.get("version") != _FILE_VERSION:
                raise ValueError(f"version must be {_FILE_VERSION}")
            keys: dict[str, bytes] = {}
            for i, entry in enumerate(data["keys"]):
                kid, key = entry["id"], base64.b64decode(entry["key"], validate=True)
                if not isinstance(kid, str) or not kid.isascii() or not 0 < len(kid) <= _MAX_KEY_ID:
                    raise ValueError(f"keys[{i}].id {kid!r} must be 1-{_MAX_KEY_ID} ASCII characters")
                if len(key) != KEY_BYTES:
                    raise ValueError(f"keys[{i}] ({kid}) is {len(key)} bytes, expected {KEY_BYTES}")
                keys[kid] = key
            active = data["active"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise SecurityConfigError(f"keyring {path}: malformed: {what}") from None
        return cls(keys, active, source=str(path))

    def encrypt(self, data: bytes, aad: bytes = b"", *, prefix: bytes = b"") -> bytes:
        """Encrypt ``data`` with the active key; ``aad`` binds the blob to its context.

        Pass where the blob belongs as ``aad`` (for example ``b"result:<run>/<task>"``), so a
        blob copied to another row fails to decrypt there. ``prefix`` goes before the blob
        (not authenticated), in the same copy: a caller's marker costs no second copy of a
        big value.
        """
        nonce = os.urandom(NONCE_BYTES)
        return b"".join((prefix, self._header, nonce, self._ciphers[self.active].encrypt(nonce, data, self._header + aad)))

    @staticmethod
    def key_id_of(blob: bytes | memoryview) -> str:
        """The key id a blob was encrypted with (for re-encryption after a rotation).

        Raises:
            DecryptionError: not an xpipe blob, or an unknown version.
        """
        if len(blob) < 5 or bytes(blob[:3]) != MAGIC:
            raise DecryptionError("not xpipe encrypted data (bad magic)")
        if blob[3] != BLOB_VERSION:
            raise DecryptionError(
                f"unsupported encrypted-data version {blob[3]} (this xpipe reads {BLOB_VERSION})"
            )
        end = 5 + blob[4]
        if len(blob) < end + NONCE_BYTES + 16:
            raise DecryptionError("encrypted data is truncated")
        return bytes(blob[5:end]).decode("ascii", errors="replace")

    def decrypt(self, blob: bytes | memoryview, aad: bytes = b"") -> bytes:
        """Decrypt a blob from :meth:`encrypt` with whichever key of the ring it names.

        A memoryview is read in place (no copy of a big blob's ciphertext).

        Raises:
            DecryptionError: bad header; its key id is not in this keyring (named, with the
                ids that are); or authentication failed (tampered, wrong ``aad``).
        """
        key_id = self.key_id_of(blob)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"key id {key_id!r} is not in keyring {self.source} (it has: {', '.join(self._ciphers)})"
            )
        from cryptography.exceptions import InvalidTag

        header_len = 5 + blob[4]
        view = memoryview(blob)
        nonce = bytes(view[header_len : header_len + NONCE_BYTES])
        try:
            return cipher.decrypt(nonce, view[header_len + NONCE_BYTES :], bytes(view[:header_len]) + aad)
        except InvalidTag:
            raise DecryptionError(f"encrypted data under key {key_id!r} failed authentication: "
                                  "it was altered, or read with the wrong context (aad)") from None  # fmt: skip


def create_keyring(path: str | Path, *, now: float | None = None) -> str:
    """Write a new keyring with one active key at ``path`` (0600) and return the key id.

    Raises:
        SecurityConfigError: the file exists or cannot be created.
    """
    path = Path(path)
    key = _new_key(time.time() if now is None else now)
    write_private(path, _dump(key.id, [key]))
    return key.id


def rotate_keyring(path: str | Path, *, now: float | None = None) -> str:
    """Add a new active key to the keyring at ``path``, keep the old ones; return the new id.

    The file is replaced atomically, under a lock, so a reader sees the old ring or the new.

    Raises:
        SecurityConfigError: the keyring is missing, malformed or cannot be written.
    """
    path = Path(path)
    try:
        with locked(path):
            ring = Keyring.load(path)
            old = json.loads(path.read_text(encoding="utf-8"))["keys"]
            keys = [_Key(e["id"], base64.b64decode(e["key"]), float(e.get("created_at", 0.0))) for e in old]
            new = _new_key(time.time() if now is None else now)
            while new.id in ring.key_ids:  # 32-bit ids: a repeat is unlikely but must not shadow a key
                new = _new_key(new.created_at)
            atomic_write(path, _dump(new.id, [*keys, new]))
    except OSError as exc:
        raise SecurityConfigError(f"keyring {path}: cannot rotate: {exc.strerror or exc}") from None
    return new.id
