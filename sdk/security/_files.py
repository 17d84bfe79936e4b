"""Writing secrets to disk safely: created private, never overwritten, replaced atomically.

Shared by the certificate, tokens and keyring files, which all hold or guard secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import SecurityConfigError

__all__ = ["atomic_write", "locked", "write_private"]


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` with ``mode`` and write ``data``; refuse to overwrite.

    ``O_EXCL`` makes "refuse" atomic, and the mode is set at creation, so a key is never
    readable by others, not even for a moment.

    Raises:
        SecurityConfigError: the file exists or cannot be created (the message says which).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise SecurityConfigError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise SecurityConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a 0600 temp file beside ``path``, fsync, and rename it over ``path``.

    Readers (a coordinator reloading) see the old file or the new one, never half of one.

    Raises:
        OSError: the directory is not writable.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` for a read-modify-write.

    Two concurrent ``xpipe tokens create`` (or ``keys rotate``) must not both read the old
    file and lose one another's entry.
    """
    fd = os.open(path.parent / f".{path.name}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
