"""aiokafka's repeated connection errors are logged once per interval, with a count; nothing else hides."""

from __future__ import annotations

import logging

from xpipe.streams._connectors._kafka import _RepeatFilter


def _record(msg: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("127.0.0.1:1",), None)


def test_a_repeated_error_passes_once_per_interval_and_then_says_how_many_were_dropped() -> None:
    now = [100.0]
    repeats = _RepeatFilter(interval_s=30.0, clock=lambda: now[0])
    passed = [repeats.filter(_record("Unable connect to %s")) for _ in range(50)]
    assert passed == [True] + [False] * 49
    # Another message, another logger, and debug records are never held back.
    assert repeats.filter(_record("Unable to update metadata from %s"))
    assert repeats.filter(_record("Unable connect to %s", name="aiokafka.conn"))
    assert all(repeats.filter(_record("Unable connect to %s", level=logging.DEBUG)) for _ in range(3))
    now[0] += 30.0
    later = _record("Unable connect to %s")
    assert repeats.filter(later)
    assert later.getMessage() == "Unable connect to 127.0.0.1:1 (49 similar suppressed in the last 30 s)"
    assert not repeats.filter(_record("Unable connect to %s"))


def test_the_filter_sits_on_every_aiokafka_logger() -> None:
    names = ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender", "aiokafka.consumer.group_coordinator")
    for name in names:
        assert any(isinstance(f, _RepeatFilter) for f in logging.getLogger(name).filters), name
