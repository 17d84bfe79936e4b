"""The memory broker: ``memory://`` streams as partitioned logs with consumer groups, in the leader's memory.

It serves the pipelines whose sources are ``memory://`` or ``file://`` (their internal streams
live here) and tests and the embedded default, which have no Kafka. Nothing here is stored or
replicated: a coordinator restart or a leader change empties it (docs/streams.md).

:class:`MemoryBroker` is the pure core (no grpc, no asyncio, time passed in). The async
functions at the bottom are what ``StreamService`` calls: they check the request, call the
core, translate its errors to status codes, and run Fetch's long poll, woken by a Produce to
the partition (one :class:`asyncio.Event` per waited-on partition, never a sleep loop).

Memory is bounded per stream (:mod:`xpipe.streams._memory_limits`): each partition holds an
equal share of the stream's records and bytes, and a Produce past it trims the partition's
oldest records (counted, and reported in ``FetchResponse.trimmed``). Records that every group
known in a partition (one that fetched from its committed offset, or committed) has committed
are dropped early; a group that first reads later starts at the oldest record kept, as with a
Kafka topic's retention.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from xpipe._proto import stream_pb2
from xpipe.streams._memory_limits import (
    DEFAULT_FETCH_RECORDS,
    MAX_FETCH_BYTES,
    MAX_FETCH_RECORDS,
    MAX_FETCH_WAIT_MS,
    MAX_PARTITIONS,
    MAX_RECORD_BYTES,
    MAX_STREAM_BYTES,
    MAX_STREAM_NAME_CHARS,
    MAX_STREAM_RECORDS,
)

__all__ = [
    "BadRequest",
    "FetchResult",
    "MemoryBroker",
    "OffsetOutOfRange",
    "StreamRecord",
    "UnknownStream",
    "commit",
    "describe_stream",
    "fetch",
    "produce",
]

log = logging.getLogger(__name__)

# A partition's list is compacted (dropped slots removed) once this many slots at its head are dead.
_COMPACT_AFTER = 1024


class BadRequest(ValueError):
    """A request the broker refuses as given (INVALID_ARGUMENT); the message names the field and value."""


class OffsetOutOfRange(ValueError):
    """An offset past a partition's end (OUT_OF_RANGE): the reader's position is from an older broker."""


class UnknownStream(LookupError):
    """A commit to a stream the broker does not hold (NOT_FOUND)."""


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One record as the broker holds it (offset implied by its place in the partition)."""

    key: bytes
    value: bytes
    timestamp_s: float

    @property
    def size_bytes(self) -> int:
        return len(self.key) + len(self.value)


@dataclass(slots=True)
class FetchResult:
    """What a fetch found: ``records`` as ``(offset, record)``, and the partition's counters."""

    records: list[tuple[int, StreamRecord]]
    end_offset: int
    committed: int
    trimmed: int


@dataclass(slots=True)
class _Partition:
    """A log: ``slots[head:]`` hold offsets ``base`` onwards (dropped slots are None until compacted)."""

    max_records: int
    max_bytes: int
    slots: list[StreamRecord | None] = field(default_factory=list)
    head: int = 0
    base: int = 0
    size_bytes: int = 0
    trimmed: int = 0
    committed: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.base + len(self.slots) - self.head

    def append(self, record: StreamRecord) -> int:
        offset = self.end
        self.slots.append(record)
        self.size_bytes += record.size_bytes
        while self.end - self.base > self.max_records or self.size_bytes > self.max_bytes:
            self._drop_oldest()
            self.trimmed += 1
        return offset

    def drop_below(self, offset: int) -> None:
        while self.base < min(offset, self.end):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        record = self.slots[self.head]
        assert record is not None
        self.size_bytes -= record.size_bytes
        self.slots[self.head] = None  # free the bytes now; the slot goes at the next compaction
        self.head += 1
        self.base += 1
        if self.head >= _COMPACT_AFTER and self.head * 2 >= len(self.slots):
            del self.slots[: self.head]
            self.head = 0

    def read(self, start: int, max_records: int) -> list[tuple[int, StreamRecord]]:
        out: list[tuple[int, StreamRecord]] = []
        size = 0
        offset = max(start, self.base)
        while offset < self.end and len(out) < max_records:
            record = self.slots[self.head + offset - self.base]
            assert record is not None
            size += record.size_bytes
            if out and size > MAX_FETCH_BYTES:
                break
            out.append((offset, record))
            offset += 1
        return out


def _check_name(field_name: str, name: str, *, allow_empty: bool = False) -> None:
    if not name and not allow_empty:
        raise BadRequest(f"{field_name} is empty; name the stream")
    if len(name) > MAX_STREAM_NAME_CHARS:
        raise BadRequest(f"{field_name} {name[:40]!r}... has {len(name)} characters; the limit is {MAX_STREAM_NAME_CHARS}")


class MemoryBroker:
    """Streams by name, each a list of partitions with per-group committed offsets.

    Pure and single-threaded: the coordinator's event loop calls it. ``on_append(stream,
    partition)`` is called after records are appended, for the long polls to wake.
    """

    def __init__(self, *, max_stream_records: int = MAX_STREAM_RECORDS, max_stream_bytes: int = MAX_STREAM_BYTES):
        self.max_stream_records = max_stream_records
        self.max_stream_bytes = max_stream_bytes
        self._streams: dict[str, list[_Partition]] = {}
        self.on_append: Callable[[str, int], None] | None = None

    def __contains__(self, stream: str) -> bool:
        return stream in self._streams

    def _create(self, stream: str, partitions: int, field_name: str) -> list[_Partition]:
        if partitions > MAX_PARTITIONS:
            raise BadRequest(f"{field_name} {partitions} is over the limit of {MAX_PARTITIONS} partitions")
        n = max(partitions, 1)
        parts = [
            _Partition(max(self.max_stream_records // n, 1), max(self.max_stream_bytes // n, MAX_RECORD_BYTES))
            for _ in range(n)
        ]
        self._streams[stream] = parts
        log.info("memory stream %r created with %d partition(s)", stream, n)
        return parts

    def produce(self, stream: str, records: Sequence[tuple[bytes, bytes, int]], *, partitions: int, now_s: float) -> list[int]:
        """Append ``(key, value, partition)`` records, all or none; create the stream if absent.

        Returns:
            The offset of each record, in order.

        Raises:
            BadRequest: an empty or too long name, too many partitions, a record over
                :data:`MAX_RECORD_BYTES`, or a partition out of range (nothing is appended).
        """
        _check_name("stream", stream)
        parts = self._streams.get(stream)
        n = len(parts) if parts is not None else max(partitions, 1)
        if parts is None and partitions > MAX_PARTITIONS:
            raise BadRequest(f"partitions {partitions} is over the limit of {MAX_PARTITIONS} partitions")
        for i, (key, value, partition) in enumerate(records):
            if partition >= n:
                raise BadRequest(f"records[{i}].partition {partition} is out of range: stream {stream!r} has {n} partition(s)")
            if len(key) + len(value) > MAX_RECORD_BYTES:
                raise BadRequest(
                    f"records[{i}] has {len(key) + len(value)} bytes (key + value); the limit is {MAX_RECORD_BYTES}"
                )
        if parts is None:
            parts = self._create(stream, partitions, "partitions")
        offsets = [parts[p].append(StreamRecord(key, value, now_s)) for key, value, p in records]
        if self.on_append is not None:
            for p in sorted({p for _, _, p in records}):
                self.on_append(stream, p)
        return offsets

    def fetch(
        self, stream: str, group: str, partition: int, *, from_committed: bool, from_offset: int, max_records: int
    ) -> FetchResult:
        """Records of one partition from the group's committed offset or ``from_offset``.

        An unknown stream is empty (its producer may not have started). A start below the
        oldest record kept starts at that record (``trimmed`` tells how many were dropped).

        Raises:
            BadRequest: bad names, or a partition out of range of an existing stream.
            OffsetOutOfRange: ``from_offset`` past the partition's end.
        """
        _check_name("stream", stream)
        _check_name("group", group, allow_empty=not from_committed)
        parts = self._streams.get(stream)
        if parts is None:
            return FetchResult([], 0, 0, 0)
        part = self._partition(stream, parts, partition)
        # A group that starts reading holds what it has not committed from early drops, even before its first commit.
        committed = part.committed.setdefault(group, part.base) if from_committed else part.committed.get(group, 0)
        start = committed if from_committed else from_offset
        if start > part.end:
            raise OffsetOutOfRange(
                f"from_offset {start} is past the end {part.end} of partition {partition} of stream {stream!r} "
                f"(the memory broker restarts empty with its coordinator); fetch from_committed to start over"
            )
        limit = DEFAULT_FETCH_RECORDS if max_records == 0 else min(max_records, MAX_FETCH_RECORDS)
        return FetchResult(part.read(start, limit), part.end, committed, part.trimmed)

    def commit(self, stream: str, group: str, partition: int, offset: int) -> None:
        """Set ``group``'s committed offset (the next to read) and drop what every group has passed.

        Raises:
            BadRequest: bad names, a partition out of range, an offset past the end.
            UnknownStream: the broker holds no such stream.
        """
        _check_name("stream", stream)
        _check_name("group", group)
        parts = self._streams.get(stream)
        if parts is None:
            raise UnknownStream(
                f"stream {stream!r} does not exist on the memory broker (it restarts empty with its coordinator)"
            )
        part = self._partition(stream, parts, partition)
        if offset > part.end:
            raise BadRequest(f"offset {offset} is past the end {part.end} of partition {partition} of stream {stream!r}")
        part.committed[group] = offset
        part.drop_below(min(part.committed.values()))

    def describe(self, stream: str, group: str, *, create_partitions: int) -> tuple[bool, int, list[int], list[int]]:
        """``(exists, partitions, end offsets, group's committed offsets)``; creates the stream if asked."""
        _check_name("stream", stream)
        _check_name("group", group, allow_empty=True)
        parts = self._streams.get(stream)
        if parts is None and create_partitions > 0:
            parts = self._create(stream, create_partitions, "create_partitions")
        if parts is None:
            return False, 0, [], []
        committed = [p.committed.get(group, 0) for p in parts] if group else []
        return True, len(parts), [p.end for p in parts], committed

    @staticmethod
    def _partition(stream: str, parts: list[_Partition], partition: int) -> _Partition:
        if partition >= len(parts):
            raise BadRequest(f"partition {partition} is out of range: stream {stream!r} has {len(parts)} partition(s)")
        return parts[partition]


# ---------------------------------------------------------------- the servicer's functions


class _Wakeups:
    """One event per waited-on ``(stream, partition)``, set (and forgotten) by the next append.

    Forgotten too when its last waiter times out, so polls of streams nobody writes leave nothing behind.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], tuple[asyncio.Event, list[int]]] = {}

    def appended(self, stream: str, partition: int) -> None:
        entry = self._events.pop((stream, partition), None)
        if entry is not None:
            entry[0].set()

    async def wait(self, stream: str, partition: int, timeout_s: float) -> None:
        key = (stream, partition)
        entry = self._events.get(key)
        if entry is None:
            entry = self._events[key] = (asyncio.Event(), [0])
        event, waiters = entry
        waiters[0] += 1
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters[0] -= 1
            if waiters[0] == 0 and self._events.get(key) is entry:
                del self._events[key]

    def __len__(self) -> int:
        return len(self._events)


def _wakeups(broker: MemoryBroker) -> _Wakeups:
    """The broker's wake-ups, made on first use (the pure core only calls ``on_append``)."""
    owner = getattr(broker.on_append, "__self__", None)
    if isinstance(owner, _Wakeups):
        return owner
    wakeups = _Wakeups()
    broker.on_append = wakeups.appended
    return wakeups


async def _abort(context, exc: Exception):
    code = {
        BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
        OffsetOutOfRange: grpc.StatusCode.OUT_OF_RANGE,
        UnknownStream: grpc.StatusCode.NOT_FOUND,
    }[type(exc)]
    await context.abort(code, str(exc))


async def produce(broker: MemoryBroker, request: stream_pb2.ProduceRequest, context) -> stream_pb2.ProduceResponse:
    """Produce: append the records; the answer holds their offsets."""
    records = [(r.key, r.value, r.partition) for r in request.records]
    try:
        offsets = broker.produce(request.stream, records, partitions=request.partitions, now_s=time.time())
    except BadRequest as exc:
        await _abort(context, exc)
    return stream_pb2.ProduceResponse(offsets=offsets)


async def fetch(broker: MemoryBroker, request: stream_pb2.FetchRequest, context) -> stream_pb2.FetchResponse:
    """Fetch, long-polling up to ``wait_ms`` (cut to :data:`MAX_FETCH_WAIT_MS`) while there is nothing."""
    wakeups = _wakeups(broker)
    deadline = time.monotonic() + min(request.wait_ms, MAX_FETCH_WAIT_MS) / 1000
    while True:
        try:
            found = broker.fetch(
                request.stream,
                request.group,
                request.partition,
                from_committed=request.from_committed,
                from_offset=request.from_offset,
                max_records=request.max_records,
            )
        except (BadRequest, OffsetOutOfRange) as exc:
            await _abort(context, exc)
        remaining_s = deadline - time.monotonic()
        if found.records or remaining_s <= 0:
            break
        # No await between the fetch above and taking the event: no append can slip between.
        await wakeups.wait(request.stream, request.partition, remaining_s)
    return stream_pb2.FetchResponse(
        records=[
            stream_pb2.StreamRecord(key=r.key, value=r.value, partition=request.partition, offset=o, timestamp=r.timestamp_s)
            for o, r in found.records
        ],
        end_offset=found.end_offset,
        committed=found.committed,
        trimmed=found.trimmed,
    )


async def commit(broker: MemoryBroker, request: stream_pb2.CommitRequest, context) -> stream_pb2.CommitResponse:
    """Commit a group's position in one partition."""
    try:
        broker.commit(request.stream, request.group, request.partition, request.offset)
    except (BadRequest, UnknownStream) as exc:
        await _abort(context, exc)
    return stream_pb2.CommitResponse()


async def describe_stream(
    broker: MemoryBroker, request: stream_pb2.DescribeStreamRequest, context
) -> stream_pb2.DescribeStreamResponse:
    """DescribeStream: partitions, end offsets and the group's committed offsets; creates if asked."""
    try:
        exists, partitions, ends, committed = broker.describe(
            request.stream, request.group, create_partitions=request.create_partitions
        )
    except BadRequest as exc:
        await _abort(context, exc)
    return stream_pb2.DescribeStreamResponse(exists=exists, partitions=partitions, end_offsets=ends, committed=committed)
