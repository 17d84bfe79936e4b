"""PartitionPoller: a slow partition's poll stays in flight, nothing it reads is lost, errors come after records."""

from __future__ import annotations

import asyncio

from xpipe.streams._connectors._polling import PartitionPoller


def test_busy_partition_returns_first_and_idle_poll_is_kept() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        started: list[int] = []

        async def poll(p: int, timeout_s: float) -> list[str]:
            started.append(p)
            if p == 1:
                await release.wait()  # the idle partition: its records come later
            return [f"p{p}-a", f"p{p}-b"]

        poller = PartitionPoller(poll)
        results, error = await poller.wait([0, 1], 5.0)
        assert error is None and results == [(0, ["p0-a", "p0-b"])]
        assert poller.busy(1) and not poller.busy(0)
        release.set()
        results, error = await poller.wait([0, 1], 5.0)
        # Partition 1's first poll was not restarted: its records arrive, none lost.
        assert started.count(1) == 1 and (1, ["p1-a", "p1-b"]) in results
        await poller.close()
        assert not poller.busy(0) and not poller.busy(1)

    asyncio.run(scenario())


def test_an_error_comes_with_the_other_partitions_records() -> None:
    async def poll(p: int, timeout_s: float) -> list[int]:
        if p == 1:
            raise ConnectionError("partition 1 broke")
        return [p]

    async def scenario() -> None:
        poller = PartitionPoller(poll)
        got, errors = [], []
        for _ in range(10):  # each wait returns once at least one poll finished
            results, error = await poller.wait([] if got or errors else [0, 1], 1.0)
            got += results
            errors += [error] if error else []
            if not (poller.busy(0) or poller.busy(1)):
                break
        assert got == [(0, [0])] and [type(e) for e in errors] == [ConnectionError]
        await poller.close()

    asyncio.run(scenario())


def test_nothing_within_the_timeout_returns_empty_and_close_cancels() -> None:
    async def poll(p: int, timeout_s: float) -> list[int]:
        await asyncio.sleep(60)
        return [p]

    async def scenario() -> None:
        poller = PartitionPoller(poll)
        assert await poller.wait([0], 0.05) == ([], None)
        assert poller.busy(0)
        await poller.close()
        assert not poller.busy(0)

    asyncio.run(scenario())


def test_close_during_a_wait_ends_it_and_starts_no_poll() -> None:
    started: list[int] = []

    async def poll(p: int, timeout_s: float) -> list[int]:
        started.append(p)
        await asyncio.sleep(60)
        return [p]

    async def scenario() -> None:
        poller = PartitionPoller(poll)
        waiting = asyncio.ensure_future(poller.wait([0, 1], 30.0))
        while len(started) < 2:  # both polls under way
            await asyncio.wait({waiting}, timeout=0.01)
        await poller.close()
        assert await asyncio.wait_for(waiting, 5.0) == ([], None)
        assert started == [0, 1] and not poller.busy(0)

    asyncio.run(scenario())
