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
import time
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
        self._closed = False

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
        """Poll ``partitions`` until one returns records or fails, or ``timeout_s`` passes; collect.

        A poll started by an earlier call may end empty before this call's timeout: that
        partition is polled again for the time left, so the caller's wait is the one it asked.
        """
        wanted = list(partitions)
        deadline = time.monotonic() + timeout_s
        out: list[tuple[int, list[T]]] = []
        while True:
            left_s = deadline - time.monotonic()
            if self._closed:
                return out, None  # stopped while waiting: start nothing on a closed source
            if left_s > 0:
                for p in wanted:
                    if p not in self._inflight:
                        self._inflight[p] = asyncio.create_task(self._poll(p, left_s), name=f"poll-p{p}")
            if self._inflight and left_s > 0:
                await asyncio.wait(
                    self._inflight.values(), timeout=left_s, return_when=asyncio.FIRST_COMPLETED
                )
            results, error = self.collect()
            out += [(p, records) for p, records in results if records]
            if out or error is not None or time.monotonic() >= deadline:
                return out, error

    async def close(self) -> None:
        """Cancel the polls in flight (what they had read comes back to a restarted source).

        A :meth:`wait` under way returns what it has, and starts no new poll.
        """
        self._closed = True
        tasks, self._inflight = list(self._inflight.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
