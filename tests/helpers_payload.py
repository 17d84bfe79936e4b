"""Tasks for the big-payload tests, importable on workers (``--import tests.helpers_payload``)."""

from __future__ import annotations

import glob
import hashlib
import os
import random
import time

#: Above the worker's ARTIFACT_MIN_BYTES, and random: zstd cannot shrink it below that.
BIG_BYTES = 1 << 20


def big(seed: int) -> bytes:
    """``BIG_BYTES`` pseudo-random bytes, the same for the same seed (the test checks them)."""
    return random.Random(seed).randbytes(BIG_BYTES)


def digest(data: bytes, *_gates: object) -> str:
    """SHA-256 of the payload received, so the test can check it arrived whole."""
    return hashlib.sha256(data).hexdigest()


def remove_artifact(pattern: str, timeout_s: float = 20.0) -> str:
    """Wait for the artifact file matching ``pattern`` to be written, then delete it.

    Makes the shared-directory copy disappear, so a consumer can only succeed through the
    producer's worker-local copy. A task waits here (not the test): the file is written
    by another task on another worker, with no event to wait on.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = glob.glob(pattern)
        if found:
            os.remove(found[0])
            return found[0]
        time.sleep(0.01)
    raise TimeoutError(f"no artifact matching {pattern} within {timeout_s}s")


def wait_for_file(path: str, timeout_s: float = 20.0) -> str:
    """Block until the test creates ``path`` (it orders a step after something it did)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.01)
    return path
