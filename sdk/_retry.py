"""The retry schedule of a failed task, and how a duration is read: one formula for all.

A leaf module: it imports only other leaves (:mod:`xpipe._limits`) and the generated enum
values in ``xpipe._proto.common_pb2``, so the SDK (which checks a task's options), its tests
and the coordinator's pure state machine (which schedules the retry) share it without
importing each other. The reconnect backoff of clients is :mod:`xpipe._backoff`.
"""

from __future__ import annotations

import math
import numbers
import random
import re
from datetime import timedelta

from ._limits import MAX_DURATION_S
from ._proto import common_pb2

__all__ = [
    "BACKOFF_STRATEGIES",
    "backoff_delay_s",
    "duration_option",
    "duration_string_problem",
    "parse_duration_s",
]

#: User-facing strategy names -> the proto enum.
BACKOFF_STRATEGIES: dict[str, int] = {
    "fixed": common_pb2.BACKOFF_FIXED,
    "linear": common_pb2.BACKOFF_LINEAR,
    "exponential": common_pb2.BACKOFF_EXPONENTIAL,
}

#: No retry waits longer than this (about 31 years), whatever the schedule says.
_LONGEST_DELAY_S = 1e9
#: Units a duration string may use ("90s", "1min", "1.5h"), in seconds.
_DURATION_UNITS = {
    "": 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
}  # fmt: skip
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def backoff_delay_s(
    backoff: int,
    retry_delay_s: float,
    retry_number: int,
    *,
    max_retry_delay_s: float = 0.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the ``retry_number``-th retry (1 for the first).

    fixed: ``d``; linear: ``d * n``; exponential: ``d * 2**(n-1)``; then capped at
    ``max_retry_delay_s`` (0: no cap). Jitter spreads retries of many tasks that failed
    together: the wait is shortened by a random fraction up to ``jitter``, so it never
    exceeds the cap.

    Args:
        backoff: a ``RetryBackoff`` enum value (unspecified counts as fixed).
        rng: source of jitter; pass a seeded one for a reproducible schedule.
    """
    n = max(1, retry_number)
    base = max(0.0, retry_delay_s)
    if backoff == common_pb2.BACKOFF_LINEAR:
        delay = base * n
    elif backoff == common_pb2.BACKOFF_EXPONENTIAL:
        delay = base * 2.0 ** min(n - 1, 1023)
    else:
        delay = base
    if max_retry_delay_s > 0:
        delay = min(delay, max_retry_delay_s)
    delay = min(delay, _LONGEST_DELAY_S)  # uncapped exponential growth: far away, but a usable number
    if jitter > 0 and delay > 0:
        draw = (rng or random).random()
        delay *= 1.0 - min(jitter, 1.0) * draw
    return delay


def parse_duration_s(value: str | float | timedelta) -> float:
    """Seconds in ``value``: a number of seconds, a timedelta, or a string like "1min".

    Raises:
        ValueError: not a duration, negative, or an unknown unit.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.lower())
        if match is None or match.group(2) not in _DURATION_UNITS:
            raise ValueError(
                f"cannot read duration {value!r}: use a number and one of the units "
                f"{sorted(u for u in _DURATION_UNITS if u)}, e.g. '30s' or '1min'"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"a duration must be seconds, a timedelta or a string like '1min', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and >= 0, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration may be at most {MAX_DURATION_S:.0f} s (366 days), got {value!r}")
    return seconds


def duration_string_problem(name_s: str, value: str) -> str:
    """Why the ``_s`` option ``name_s`` refuses the string ``value``, and which name reads it."""
    return (
        f"takes a number of seconds, got the string {value!r:.80}; "
        f"pass a duration string as {name_s.removesuffix('_s')}={value!r:.80}"
    )


def duration_option(
    name_s: str, seconds: float | timedelta | None, duration: str | float | timedelta | None
) -> float | None:
    """Read the option pair ``<name>_s`` (seconds: a number or timedelta) and ``<name>``
    (also a string like "1min"); None when neither is given.

    ``_s`` names carry their unit, so a string there is refused rather than guessed at.

    Raises:
        ValueError: both are given, a string went to ``name_s``, or the value is not a
            duration within range; the message starts with the option's name.
    """
    name = name_s.removesuffix("_s")
    if seconds is not None and duration is not None:
        raise ValueError(f"{name}= and {name_s}= are the same option; give one")
    if duration is not None:
        try:
            return parse_duration_s(duration)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if seconds is None:
        return None
    if isinstance(seconds, str):
        raise ValueError(f"{name_s} {duration_string_problem(name_s, seconds)}")
    try:
        return parse_duration_s(seconds)
    except ValueError as exc:
        raise ValueError(f"{name_s}: {exc}") from None
