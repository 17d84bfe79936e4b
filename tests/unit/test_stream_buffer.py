"""The bounded buffer: block suspends the producer, the drop strategies drop and count."""

from __future__ import annotations

import asyncio

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams import BACKPRESSURE_STRATEGIES, BoundedBuffer, BufferClosedError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_drop_oldest_keeps_the_newest_records_and_counts_the_drops():
    buf = BoundedBuffer(3, "drop_oldest")
    assert all(buf.put_nowait(i) for i in range(10))
    assert (len(buf), buf.dropped, buf.accepted, buf.fill) == (3, 7, 10, 1.0)
    assert buf.get_batch_nowait(10) == [7, 8, 9]
    assert buf.fill == 0.0


def test_drop_newest_keeps_the_oldest_records_and_counts_the_drops():
    async def scenario():
        buf = BoundedBuffer(3, "drop_newest")
        kept = [await buf.put(i) for i in range(10)]
        assert kept == [True] * 3 + [False] * 7
        assert (buf.dropped, buf.accepted) == (7, 3)
        return await buf.get_batch(2), buf.get_batch_nowait(5)

    assert run(scenario()) == ([0, 1], [2])


def test_block_suspends_the_producer_until_the_consumer_makes_room():
    async def scenario():
        buf = BoundedBuffer(2, "block")
        progress = []

        async def produce():
            for i in range(6):
                await buf.put(i)
                progress.append(i)

        producer = asyncio.create_task(produce())
        while len(progress) < 2:  # the loop is ours: yield until the producer is stuck
            await asyncio.sleep(0)
        for _ in range(5):  # more turns of the loop: it stays suspended (no clock involved)
            await asyncio.sleep(0)
        assert progress == [0, 1] and len(buf) == 2 and not producer.done()  # waiting, nothing dropped
        assert not buf.put_nowait(99)  # block never drops: the caller must wait
        got = []
        while len(got) < 6:
            got += await buf.get_batch(1)
        await producer
        return got, buf.dropped, progress

    assert run(scenario()) == ([0, 1, 2, 3, 4, 5], 0, [0, 1, 2, 3, 4, 5])


def test_close_wakes_a_blocked_producer_with_an_error_and_lets_the_consumer_drain():
    async def scenario():
        buf = BoundedBuffer(1, "block")
        await buf.put("kept")
        blocked = asyncio.create_task(buf.put("refused"))
        await asyncio.sleep(0)
        buf.close()
        buf.close()  # idempotent
        with pytest.raises(BufferClosedError, match="closed"):
            await blocked
        with pytest.raises(BufferClosedError):
            buf.put_nowait("late")
        return await buf.get_batch(5), await buf.get_batch(5)

    assert run(scenario()) == (["kept"], [])


def test_a_waiting_consumer_wakes_when_a_record_arrives():
    async def scenario():
        buf = BoundedBuffer(10)
        waiting = asyncio.create_task(buf.get_batch(10))
        await asyncio.sleep(0)
        assert not waiting.done()
        buf.put_nowait("a")
        buf.put_nowait("b")
        return await waiting

    assert run(scenario()) == ["a", "b"]


@pytest.mark.parametrize(
    ("args", "problem"),
    [((0, "block"), "buffer_size=0: must be an integer >= 1"), ((2.5, "block"), "buffer_size=2.5"),
     ((True, "block"), "buffer_size=True"),
     ((10, "drop_random"), "backpressure_strategy='drop_random': expected one of 'block', 'drop_oldest', 'drop_newest'")],
)  # fmt: skip
def test_bad_buffer_options_name_the_value(args, problem):
    with pytest.raises(DataStreamError) as info:
        BoundedBuffer(*args)
    assert problem in str(info.value)
    assert BACKPRESSURE_STRATEGIES == ("block", "drop_oldest", "drop_newest")
