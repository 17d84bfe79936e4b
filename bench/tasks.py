"""Task functions both systems run, importable by xpipe workers and Dask workers alike.

They do (almost) nothing on purpose: a benchmark of orchestration overhead must not be
dominated by the work itself. Both systems call them by reference (xpipe by import path
``bench.tasks:noop``, Dask by pickling the module-level function), so neither pays for
shipping code.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["noop", "add", "reduce_all", "make_payload", "consume"]


def noop(*args: Any) -> None:
    """Do nothing; arguments only make each task distinct."""
    return None


def add(*numbers: Any) -> Any:
    """Sum of the arguments (a chain passes its running total along)."""
    return sum(numbers)


def reduce_all(*values: Any) -> int:
    """Count the upstream results, so a fan-in's answer can be checked."""
    return len(values)


def make_payload(size: int, compressible: bool, seed: int = 0) -> bytes:
    """``size`` bytes: a repeating pattern (zstd shrinks it ~1000x) or random bytes (it cannot).

    ``seed`` only makes each task distinct; random bytes are fresh on every call.
    """
    if compressible:
        pattern = (b"xpipe-bench-%08d|" % seed) * 64
        return (pattern * (size // len(pattern) + 1))[:size]
    return os.urandom(size)


def consume(data: bytes) -> int:
    """Length of the payload received, to check it arrived whole."""
    return len(data)
