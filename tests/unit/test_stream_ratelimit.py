"""The token bucket behind max_throughput_per_second: exact with a fake clock, within 10% with the real one."""

from __future__ import annotations

import asyncio
import time

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams import TokenBucket
from xpipe.streams._options import check_rate


class FakeClock:
    """A clock that moves only when a sleep is awaited, by exactly that long."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.slept_s: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.now_s += seconds


def test_the_bucket_admits_its_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(100, burst=10, clock=clock, sleep=clock.sleep)

    async def take(n):
        for _ in range(n):
            await bucket.take()

    asyncio.run(take(10))
    assert clock.slept_s == []  # the burst is free
    asyncio.run(take(100))
    assert clock.now_s - 1000.0 == pytest.approx(1.0)  # 100 more at 100/s: one second
    assert len(clock.slept_s) == 100 and all(s == pytest.approx(0.01) for s in clock.slept_s)


def test_an_idle_bucket_refills_only_up_to_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    assert bucket.burst == 100  # 0.1 s worth by default
    assert bucket.reserve(100) == 0.0
    clock.now_s += 3600  # an hour idle does not bank an hour of tokens
    assert bucket.reserve(100) == 0.0
    assert bucket.reserve(50) == pytest.approx(0.05)
    assert not bucket.try_take(1)  # in debt: nothing to take without waiting
    clock.now_s += 0.051
    assert bucket.try_take(1)
    assert TokenBucket(0.5, clock=clock).burst == 1.0  # at least one record at a time


def test_oversleeping_costs_no_throughput():
    clock = FakeClock()

    async def late_sleep(seconds):  # every wake-up 5 ms late, as on a loaded host
        clock.now_s += seconds + 0.005

    bucket = TokenBucket(200, burst=1, clock=clock, sleep=late_sleep)

    async def take(n):
        for _ in range(n):
            await bucket.take(10)

    asyncio.run(take(100))  # 1,000 records at 200/s: 5 s, however late each wake-up
    assert clock.now_s - 1000.0 == pytest.approx(5.0, abs=0.01)


def test_the_real_clock_holds_the_rate_within_ten_percent():
    rate = 2000.0
    bucket = TokenBucket(rate, burst=20)

    async def pump(duration_s):
        taken = 0
        start = time.monotonic()
        while time.monotonic() - start < duration_s:
            await bucket.take(10)
            taken += 10
        return taken, time.monotonic() - start

    taken, elapsed_s = asyncio.run(pump(0.6))
    assert taken / elapsed_s == pytest.approx(rate, rel=0.10)


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan"), "100", True])
def test_a_bad_rate_names_the_value(rate):
    with pytest.raises(DataStreamError, match="max_throughput_per_second=.*must be a number > 0"):
        check_rate(rate)
    with pytest.raises(DataStreamError):
        TokenBucket(rate)


def test_no_rate_means_no_bucket():
    assert check_rate(None) is None
    with pytest.raises(DataStreamError, match="a token bucket needs a rate"):
        TokenBucket(None)
    with pytest.raises(DataStreamError, match="burst=0.5: must be a number >= 1"):
        TokenBucket(10, burst=0.5)
