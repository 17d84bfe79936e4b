"""How long to wait between attempts to reach a peer: capped exponential backoff with jitter.

Every reconnect loop (SDK client, CLI, worker, coordinator election) takes its delays from
:class:`Backoff`, so a dead peer costs each of them a few attempts a second at most, never
a busy loop. It is pure: it reads no clock and never sleeps. The caller sleeps
(``time.sleep`` or ``asyncio.sleep``) and passes the time left before its deadline, so
sync and async code share it and a seeded ``rng`` makes its schedule exact in tests.

Example::

    backoff = Backoff()
    deadline = time.monotonic() + 30.0
    while not try_once():
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError(...)
        time.sleep(backoff.next_delay(remaining_s=remaining_s))

This module imports nothing of ours.
"""

from __future__ import annotations

import math
import os
import random

__all__ = ["Backoff", "DEFAULT_CONNECT_TIMEOUT_S", "REFUSED_GRACE_S", "CONNECT_TIMEOUT_ENV", "connect_timeout_setting"]

#: How long an SDK client (and so ``PipelineManager`` and ``xpipe``) keeps trying to reach
#: some coordinator before it raises ``CoordinatorUnavailableError``.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: The environment variable that replaces that default (seconds, or ``none``: keep trying).
CONNECT_TIMEOUT_ENV = "XPIPE_CONNECT_TIMEOUT"
#: How long a client that never reached a coordinator retries addresses that all refuse the
#: connection (nothing listens there) before it gives up: long enough for a coordinator
#: that is binding its port, short enough that a typo is not a silent wait.
REFUSED_GRACE_S = 1.0


def connect_timeout_setting(value: object = ...) -> object:
    """``value``, or when not given (``...``), ``$XPIPE_CONNECT_TIMEOUT``, else the default.

    Returns the value as given (the caller checks it): a float, None (keep trying), or
    whatever a bad environment held, named so that the caller's error points at it.

    Raises:
        ValueError: ``XPIPE_CONNECT_TIMEOUT`` is not a number of seconds >= 0 or ``none``.
    """
    if value is not ...:
        return value
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT_S
    if text.lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise ValueError(f"{CONNECT_TIMEOUT_ENV}={text!r}: expected a number of seconds >= 0 or 'none'")
    return seconds


#: Jitter source of every Backoff not given its own: seeding a fresh ``random.Random`` reads
#: the OS entropy pool, which costs more than a whole retry-free call.
_SHARED_RNG = random.Random()


class Backoff:
    """Delays that double (``multiplier``) from ``initial_s`` up to ``max_s``, with jitter.

    The n-th delay (n from 0) is drawn from ``[b * (1 - jitter), b]`` with
    ``b = min(max_s, initial_s * multiplier**n)``: jitter only shortens a delay, so
    ``max_s`` is a true cap, and peers that lost the same server do not come back in step.

    Args:
        initial_s: the first delay before jitter, in seconds.
        max_s: no delay is longer than this.
        multiplier: growth per attempt (1 keeps the delay constant).
        jitter: the fraction (0 to 1) a delay may be shortened by at random.
        rng: source of jitter; pass ``random.Random(seed)`` for a reproducible schedule.

    Raises:
        ValueError: a parameter is not finite or out of range (the message names it).
    """

    __slots__ = ("initial_s", "max_s", "multiplier", "jitter", "_rng", "_attempts", "_base_s")

    def __init__(
        self,
        initial_s: float = 0.05,
        max_s: float = 2.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        *,
        rng: random.Random | None = None,
    ):
        params = {"initial_s": initial_s, "max_s": max_s, "multiplier": multiplier, "jitter": jitter}
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Backoff {name} must be a finite number, got {value!r}")
        if initial_s <= 0:
            raise ValueError(f"Backoff initial_s must be > 0, got {initial_s!r}")
        if max_s < initial_s:
            raise ValueError(f"Backoff max_s must be >= initial_s ({initial_s!r}), got {max_s!r}")
        if multiplier < 1:
            raise ValueError(f"Backoff multiplier must be >= 1, got {multiplier!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"Backoff jitter must be between 0 and 1, got {jitter!r}")
        self.initial_s = float(initial_s)
        self.max_s = float(max_s)
        self.multiplier = float(multiplier)
        self.jitter = float(jitter)
        self._rng = rng if rng is not None else _SHARED_RNG
        self._attempts = 0
        self._base_s = self.initial_s

    @property
    def attempts(self) -> int:
        """Delays handed out since the last :meth:`reset`."""
        return self._attempts

    def next_delay(self, *, remaining_s: float | None = None) -> float:
        """Seconds to wait before the next attempt; advances the schedule.

        Args:
            remaining_s: time left before the caller's deadline, if it has one: the delay
                is clipped to it (never below 0), so nobody sleeps past a deadline.
        """
        base_s = self._base_s
        # Grown step by step and capped each time, so it never overflows however long it runs.
        self._base_s = min(self.max_s, base_s * self.multiplier)
        self._attempts += 1
        delay = base_s * (1.0 - self.jitter * self._rng.random())
        if remaining_s is not None:
            delay = min(delay, max(0.0, remaining_s))
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s``: the peer answered, so the next failure is news."""
        self._attempts = 0
        self._base_s = self.initial_s

    def __repr__(self) -> str:
        return (f"Backoff(initial_s={self.initial_s}, max_s={self.max_s}, multiplier={self.multiplier}, "
                f"jitter={self.jitter}, attempts={self._attempts})")  # fmt: skip
