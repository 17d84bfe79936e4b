"""Importable task functions for the result cache tests: each call appends a line to a file.

The file is the side-effect counter: a run whose tasks all hit the cache adds no line.
"""

from __future__ import annotations

import threading


def _count(counter: str, name: str) -> None:
    with open(counter, "a") as f:
        f.write(name + "\n")


def calls(counter: str) -> list[str]:
    """The task names that ran, one per call, in order."""
    try:
        with open(counter) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def extract(counter: str, n: int) -> list[int]:
    _count(counter, "extract")
    return list(range(n))


def transform(rows: list[int], counter: str) -> list[int]:
    _count(counter, "transform")
    return [r * 2 for r in rows]


def load(rows: list[int], counter: str) -> int:
    _count(counter, "load")
    return sum(rows)


def big(counter: str, size_bytes: int) -> bytes:
    _count(counter, "big")
    return b"x" * size_bytes


def unpicklable(counter: str) -> object:
    _count(counter, "unpicklable")
    return threading.Lock()
