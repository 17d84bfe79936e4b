"""The bounded buffer in front of each stream-task instance, and what happens when it is full.

The buffer holds at most ``buffer_size`` records, so an instance's memory stays bounded
whatever its sources do. When it is full the strategy decides:

- ``block``: the producer waits (``await put``) until the task takes records; the runtime
  stops fetching meanwhile, so lag grows in the broker instead of memory here.
- ``drop_oldest``: the oldest buffered record is dropped to make room, and counted.
- ``drop_newest``: the incoming record is dropped, and counted.

One event loop owns a buffer (no locks); producers and the consumer are its coroutines.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ..errors import DataStreamError
from ._options import check_buffer_size, check_strategy

__all__ = ["BoundedBuffer", "BufferClosedError"]


class BufferClosedError(DataStreamError):
    """A record was put into a buffer that was closed (the stage is stopping)."""


class BoundedBuffer:
    """At most ``capacity`` records, first in first out, with a backpressure strategy.

    Attributes:
        capacity: the most records held at once.
        strategy: one of :data:`BACKPRESSURE_STRATEGIES`.
        dropped: records dropped by the strategy (always 0 under ``block``).
        accepted: records put and kept (a record later evicted by ``drop_oldest`` counts here and in ``dropped``).
    """

    __slots__ = (
        "_closed",
        "_items",
        "_not_empty",
        "_not_full",
        "accepted",
        "capacity",
        "dropped",
        "strategy",
    )

    def __init__(self, capacity: int, strategy: str = "block") -> None:
        self.capacity = check_buffer_size(capacity)
        self.strategy = check_strategy(strategy)
        self.dropped = 0
        self.accepted = 0
        self._items: deque[Any] = deque()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._not_empty = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fill(self) -> float:
        """How full the buffer is, 0.0 to 1.0 (the health report's "buffer fill")."""
        return len(self._items) / self.capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def oldest(self) -> Any:
        """The record that :meth:`get_batch` would return first, or None when empty."""
        return self._items[0] if self._items else None

    def put_nowait(self, item: Any) -> bool:
        """Put without waiting; True if the record was kept.

        Under ``block`` a full buffer keeps nothing and returns False (the caller must wait,
        see :meth:`put`); under the drop strategies the drop is done and counted here.

        Raises:
            BufferClosedError: the buffer was closed.
        """
        if self._closed:
            raise BufferClosedError("the stage's buffer is closed; it takes no more records")
        items = self._items
        if len(items) >= self.capacity:
            if self.strategy == "drop_newest":
                self.dropped += 1
                return False
            if self.strategy == "drop_oldest":
                items.popleft()
                self.dropped += 1
            else:
                return False
        items.append(item)
        self.accepted += 1
        if len(items) >= self.capacity:
            self._not_full.clear()
        self._not_empty.set()
        return True

    async def put(self, item: Any) -> bool:
        """Put one record; under ``block`` wait for room first. True if the record was kept.

        Raises:
            BufferClosedError: the buffer was (or got) closed while waiting.
        """
        while not self.put_nowait(item):
            if self.strategy != "block":
                return False
            await self._not_full.wait()
        return True

    def get_batch_nowait(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` records, oldest first; an empty list when there are none."""
        items = self._items
        count = min(max_items, len(items))
        batch = [items.popleft() for _ in range(count)]
        if count:
            self._not_full.set()
            if not items:
                self._not_empty.clear()
        return batch

    async def get_batch(self, max_items: int) -> list[Any]:
        """Up to ``max_items`` records, waiting until at least one is there.

        Returns an empty list only when the buffer is closed and drained.
        """
        while not self._items:
            if self._closed:
                return []
            await self._not_empty.wait()
        return self.get_batch_nowait(max_items)

    def close(self) -> None:
        """Take no more records; wake every waiter (producers raise, the consumer drains). Idempotent."""
        self._closed = True
        self._not_full.set()
        self._not_empty.set()
