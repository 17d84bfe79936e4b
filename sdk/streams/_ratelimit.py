"""``max_throughput_per_second``: a token bucket at a stream's sources.

Each record costs one token; tokens refill at ``rate_per_s`` up to ``burst``. A taker that
finds too few tokens goes into debt and is told how long to wait, so a late wake-up (a loaded
host, a coarse timer) costs no throughput: the time overslept has already refilled the
bucket. The clock is injected, so the arithmetic is tested without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import DataStreamError
from ._options import check_rate

__all__ = ["TokenBucket"]

#: A default burst of this many seconds' worth of tokens: smooth, but not one sleep per record.
DEFAULT_BURST_S = 0.1


class TokenBucket:
    """Admit at most ``rate_per_s`` records per second on average, ``burst`` at once.

    Args:
        rate_per_s: the refill rate, tokens (records) per second.
        burst: the bucket's size; default :data:`DEFAULT_BURST_S` seconds' worth, at least 1.
        clock: monotonic seconds; injected by tests.
        sleep: an awaitable sleep; injected by tests.
    """

    __slots__ = ("_clock", "_sleep", "_stamp_s", "_tokens", "burst", "rate_per_s")

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        rate = check_rate(rate_per_s)
        if rate is None:
            raise DataStreamError(
                "a token bucket needs a rate; pass max_throughput_per_second=None to have none"
            )
        self.rate_per_s = rate
        self.burst = max(1.0, rate * DEFAULT_BURST_S) if burst is None else float(burst)
        if not math.isfinite(self.burst) or self.burst < 1:
            raise DataStreamError(f"burst={burst!r}: must be a number >= 1 (tokens)")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp_s = clock()

    def reserve(self, n: int = 1) -> float:
        """Take ``n`` tokens now, going into debt if needed; the seconds to wait before using them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp_s) * self.rate_per_s) - n
        self._stamp_s = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    def try_take(self, n: int = 1) -> bool:
        """Take ``n`` tokens if they are all there now; never goes into debt."""
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._stamp_s) * self.rate_per_s)
        self._stamp_s = now
        if tokens >= n:
            self._tokens = tokens - n
            return True
        self._tokens = tokens
        return False

    async def take(self, n: int = 1) -> None:
        """Take ``n`` tokens, sleeping as long as the rate requires."""
        wait_s = self.reserve(n)
        if wait_s > 0:
            await self._sleep(wait_s)
