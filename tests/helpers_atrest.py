"""Tasks for the encryption-at-rest tests: they put a marker where it would land on disk."""

from __future__ import annotations

import os

#: Big enough to leave the worker as an artifact file (``worker._objects.ARTIFACT_MIN_BYTES``).
BIG_BYTES = 300 * 1024


def shout(marker: str) -> str:
    """Print ``marker`` (a task log line) and return it (a small, inline result)."""
    print(f"log line {marker}", flush=True)
    return marker


def big_with(marker: str) -> bytes:
    """Random bytes (zstd leaves them as they are) with ``marker`` at the start, middle and end."""
    mark = marker.encode()
    body = bytearray(os.urandom(BIG_BYTES))
    for at in (0, BIG_BYTES // 2, BIG_BYTES - len(mark)):
        body[at : at + len(mark)] = mark
    return bytes(body)


def holds(data: bytes, marker: str) -> bool:
    """Does an upstream artifact hold ``marker`` (read by a worker, decrypted)?"""
    return marker.encode() in data
