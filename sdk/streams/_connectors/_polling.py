"""Long polls on several partitions at once, for brokers that read one partition per call.

Redis reads each (group, partition) as its own consumer and NATS each as its own pull
consumer, so a source owning several partitions waits on several calls. Waiting for all of
them would hold back a busy partition for an idle one's full timeout; cancelling the slow
ones would lose what the broker already handed them (delivered, so not handed again until
a restart). So each partition's poll stays in flight across ``fetch`` calls until it
returns, and its records are collected by a later call, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["PartitionPoller"]

T = TypeVar("T")


class PartitionPoller(Generic[T]):
    """One in-flight long poll per partition.

    Args:
        poll: ``poll(partition, timeout_s)`` returns the records it read (empty on timeout).
    """

    def __init__(self, poll: Callable[[int, float], Awaitable[list[T]]]) -> None:
        self._poll = poll
        self._inflight: dict[int, asyncio.Task[list[T]]] = {}

    def busy(self, partition: int) -> bool:
        """Whether ``partition`` has a poll in flight (read it only through this poller)."""
        return partition in self._inflight

    def collect(self) -> tuple[list[tuple[int, list[T]]], BaseException | None]:
        """Records of the polls that finished, by partition, and the first error a poll raised.

        The caller keeps the records before raising the error, so a failed partition's poll
        loses nothing that another one read.
        """
        done = sorted(p for p, task in self._inflight.items() if task.done())
        out, error = [], None
        for p in done:
            task = self._inflight.pop(p)
            if task.cancelled():
                continue
            if task.exception() is not None:
                error = error or task.exception()
                continue
            out.append((p, task.result()))
        return out, error

    async def wait(
        self, partitions: Iterable[int], timeout_s: float
    ) -> tuple[list[tuple[int, list[T]]], BaseException | None]:
        """Start a poll on each of ``partitions`` not polled yet, wait for the first to finish, collect."""
        for p in partitions:
            if p not in self._inflight:
                self._inflight[p] = asyncio.create_task(self._poll(p, timeout_s), name=f"poll-p{p}")
        if self._inflight:
            await asyncio.wait(
                self._inflight.values(), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        return self.collect()

    async def close(self) -> None:
        """Cancel the polls in flight (what they had read comes back to a restarted source)."""
        tasks, self._inflight = list(self._inflight.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
