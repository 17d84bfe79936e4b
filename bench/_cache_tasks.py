"""Importable tasks of ``bench.cache``'s 3-task run (a little real work each, ~ms)."""

from __future__ import annotations


def extract(n: int) -> list[int]:
    return list(range(n))


def transform(rows: list[int]) -> list[int]:
    return [r * r % 97 for r in rows]


def load(rows: list[int]) -> int:
    return sum(rows)
