"""Encryption at rest: the one place that decides what is sealed, how, and how it is told apart.

The coordinator (SQLite, etcd, task logs) and the worker (artifact files) seal data with an
:class:`AtRest`, a :class:`~xpipe.security._keys.Keyring` read from ``--encryption-key-file``.

How a sealed value is told from a plain one, so a store written before encryption was
turned on stays readable:

- Store values (protobuf, zstd frames, JSON, task log chunks) are sealed as
  ``SEALED_PREFIX + keyring blob``: a NUL byte then ``XPE`` and the blob version. No
  protobuf message (field 0 does not exist), zstd frame (``28 b5 2f fd``) or JSON text
  starts with a NUL; a task's output chunk that starts with these exact five bytes would be
  misread as sealed (and then refused as tampered), which printable output never does.
- Artifact files can hold any bytes (``raw`` results), so a prefix could collide: a sealed
  artifact is named ``RUN/TASK.ATTEMPT.xpe`` instead (:data:`ARTIFACT_SUFFIX`), and its
  reference says so before anything is read.

Each blob is bound to its place by the AES-GCM associated data (``aad``: ``result:RUN/TASK``,
``artifact:RUN/TASK.ATTEMPT``, an etcd key...), so a blob copied to another row or file
fails to open there.

Rotation: a daemon re-reads the keyring file when its modification time or size changes,
checked at most once a second (:data:`RELOAD_CHECK_S`) when it seals, and at once when it
meets a key id it does not hold; ``xpipe keys rotate`` replaces the file atomically, so a
daemon sees the old ring or the new, never half of one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .._codec import ARTIFACT_SEALED_SUFFIX as ARTIFACT_SUFFIX
from ._errors import DecryptionError, SecurityConfigError
from ._keys import BLOB_VERSION, MAGIC, Keyring

__all__ = [
    "ARTIFACT_SUFFIX",
    "ENV_KEY_FILE",
    "RELOAD_CHECK_S",
    "SEALED_PREFIX",
    "AtRest",
    "artifact_aad",
    "at_rest",
    "configure",
    "is_sealed",
    "open_artifact",
    "open_value",
    "seal_artifact",
    "sealed_key_id",
]

log = logging.getLogger(__name__)

#: What every sealed store value starts with (see the module docs).
SEALED_PREFIX = b"\x00" + MAGIC + bytes([BLOB_VERSION])
#: A running daemon looks at its keyring file's mtime at most this often.
RELOAD_CHECK_S = 1.0
#: The environment variable that hands the keyring path to a worker's executor children.
ENV_KEY_FILE = "XPIPE_ENCRYPTION_KEY_FILE"


def is_sealed(value: bytes | memoryview | None) -> bool:
    """Was ``value`` written by :meth:`AtRest.seal`?"""
    return value is not None and bytes(value[:5]) == SEALED_PREFIX


def sealed_key_id(value: bytes) -> str:
    """The key id a sealed value names (its keyring blob's header).

    Raises:
        DecryptionError: not a sealed value, or a truncated one.
    """
    if not is_sealed(value):
        raise DecryptionError("not a value sealed at rest")
    return Keyring.key_id_of(value[1:])


class AtRest:
    """Seals and opens data at rest with the keyring at ``path``, re-read when the file changes.

    Thread-safe: a reload swaps the keyring object whole.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ring, self._stamp = self._load()
        self._checked_at = time.monotonic()

    @classmethod
    def from_file(cls, path: str | Path) -> AtRest:
        """Load the keyring at ``path``.

        Raises:
            SecurityConfigError: missing, unreadable or malformed (the message names the file).
        """
        return cls(path)

    def _load(self) -> tuple[Keyring, tuple[int, int]]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SecurityConfigError(f"keyring {self.path}: cannot read: {exc.strerror or exc}") from None
        return Keyring.load(self.path), (st.st_mtime_ns, st.st_size)

    @property
    def active_key_id(self) -> str:
        return self._ring.active

    @property
    def key_ids(self) -> tuple[str, ...]:
        return self._ring.key_ids

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the keyring if its file changed (checked at most once a second unless
        ``force``); True when a new ring was loaded. A file that cannot be read now keeps
        the ring in use (logged): a daemon never loses its keys to a half-done edit."""
        now = time.monotonic()
        if not force and now - self._checked_at < RELOAD_CHECK_S:
            return False
        with self._lock:
            self._checked_at = now
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_size) == self._stamp:
                    return False
                ring, stamp = self._load()
            except (OSError, SecurityConfigError) as exc:
                log.warning("keyring %s changed but cannot be read (%s); keeping key ids %s",
                            self.path, exc, ", ".join(self._ring.key_ids))  # fmt: skip
                return False
            if ring.active != self._ring.active:
                log.info("keyring %s reloaded: active key is now %s (was %s)", self.path, ring.active, self._ring.active)
            self._ring, self._stamp = ring, stamp
            return True

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        """``data`` encrypted with the active key, bound to ``aad`` (where it is stored)."""
        if time.monotonic() - self._checked_at >= RELOAD_CHECK_S:
            self.refresh()
        return self._ring.encrypt(data, aad, prefix=SEALED_PREFIX[:1])

    def open(self, value: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """The plaintext of a value :meth:`seal` made with the same ``aad``.

        Raises:
            DecryptionError: its key id is not in the keyring (named, even after re-reading
                the file), or it was altered or moved; the message names ``what``.
        """
        blob = memoryview(value)[1:]  # no copy of a big value
        ring = self._ring
        try:
            try:
                return ring.decrypt(blob, aad)
            except DecryptionError:
                if ring.key_id_of(blob) in ring.key_ids or not self.refresh(force=True):
                    raise
            return self._ring.decrypt(blob, aad)  # rotated elsewhere a moment ago: the new key may be it
        except DecryptionError as exc:
            raise DecryptionError(f"cannot decrypt {what}: {exc}") from None


def artifact_aad(relative_path: str) -> bytes:
    """A sealed artifact's place: its path inside the artifact directory, without the suffix.

    Relative, so a shared directory mounted at different paths on two machines reads the same.
    """
    relative_path = relative_path.removesuffix(ARTIFACT_SUFFIX)
    return b"artifact:" + relative_path.encode()


def seal_artifact(data: bytes | memoryview, relative_path: str) -> tuple[bytes, str] | None:
    """``(sealed bytes, file name)`` for an artifact at ``relative_path`` when this process
    seals at rest; None when it does not (the file is written plain, under its own name)."""
    crypt = at_rest()
    if crypt is None:
        return None
    return crypt.seal(data, artifact_aad(relative_path)), relative_path + ARTIFACT_SUFFIX


def open_artifact(data: bytes, relative_path: str, what: str) -> bytes:
    """The plaintext of a sealed artifact file (named ``*.xpe``) with this process's keyring.

    Raises:
        DecryptionError: the file is not sealed (its name lies), this process has no keyring,
            or the keyring refused it; the message names the key id.
    """
    what = f"{what} (artifact {relative_path})"
    if not is_sealed(data):
        raise DecryptionError(f"cannot decrypt {what}: the file is named {ARTIFACT_SUFFIX} but is not sealed")
    return open_value(at_rest(), data, artifact_aad(relative_path), what)


def open_value(crypt: AtRest | None, value: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """``value`` as stored: opened if sealed, as is if plain (written before encryption was on).

    Raises:
        DecryptionError: sealed, and this process has no keyring (the message names the key
            id and the flag), or :meth:`AtRest.open` refused it.
    """
    if not is_sealed(value):
        return value if isinstance(value, bytes) else bytes(value)
    if crypt is None:
        raise DecryptionError(
            f"{what} is encrypted at rest (key id {sealed_key_id(bytes(value))!r}) but no "
            "--encryption-key-file was given"
        )
    return crypt.open(value, aad, what)


_current: AtRest | None = None
_configured = False
_current_lock = threading.Lock()


def configure(crypt: AtRest | None) -> None:
    """Set this process's keyring for artifact files (the daemons call it once at start)."""
    global _current, _configured
    with _current_lock:
        _current, _configured = crypt, True


def at_rest() -> AtRest | None:
    """This process's keyring: the one :func:`configure` set, else the file named by
    :data:`ENV_KEY_FILE` (a worker's executor child), else None (encryption off).

    Raises:
        SecurityConfigError: the environment names a keyring that cannot be read.
    """
    global _current, _configured
    if _configured:
        return _current
    with _current_lock:
        if not _configured:
            path = os.environ.get(ENV_KEY_FILE)
            _current = AtRest(path) if path else None
            _configured = True
    return _current
