"""Redis Streams as a stream broker: consumer groups over ``XADD``/``XREADGROUP``/``XACK``.

A user's stream key is one partition. An internal stream of ``n`` partitions is the keys
``K:0`` .. ``K:n-1`` (just ``K`` when ``n == 1``), its count kept in the hash
:data:`PARTITIONS_HASH` under field ``K``. A record is one entry with the field ``data``
(the value) and, when it has one, ``key``, so ``XADD K * data <json>`` from any client is a
record. Each (group, partition) reads as one fixed consumer name, so a restarted source
finds the entries its predecessor read and never acked in that consumer's pending list,
and returns them before anything new.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from ...errors import DataStreamError
from .._uri import StreamURI
from ._base import Connector, Message, OutRecord, Sink, Source
from ._polling import PartitionPoller

__all__ = ["PARTITIONS_HASH", "RedisConnector", "partition_key"]

log = logging.getLogger(__name__)

#: The hash that records an internal stream's partition count (field: the stream key).
PARTITIONS_HASH = "xpipe:partitions"
#: Bound on one command's reply when no caller timeout applies (sink writes, commits).
_COMMAND_TIMEOUT_S = 30.0

T = TypeVar("T")


def partition_key(name: str, partition: int, partitions: int) -> str:
    """The Redis key of ``partition`` of stream ``name`` that has ``partitions`` partitions."""
    return name if partitions == 1 else f"{name}:{partition}"


def _id_seq(entry_id: str) -> int:
    ms, _, seq = entry_id.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def _client(uri: StreamURI, timeout_s: float) -> aioredis.Redis:
    # No socket_timeout: XREADGROUP BLOCK holds the socket open for the caller's timeout;
    # every call is bounded by asyncio.wait_for instead (see _bounded). Two quick retries
    # ride over a dropped connection; redis-py's default backoff (up to 10 s) would let a
    # refused connection outlast the caller's timeout, and the runtime retries anyway.
    return aioredis.Redis(
        host=uri.host, port=uri.port, db=uri.db or 0, socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
    )  # fmt: skip


async def _bounded(uri: StreamURI, what: str, call: Awaitable[T], timeout_s: float) -> T:
    """``await call`` within ``timeout_s``, any failure a DataStreamError naming ``uri`` and ``what``."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise DataStreamError(f"{uri}: {what}: no reply from Redis within {timeout_s:g} s") from None
    except (RedisError, OSError) as exc:
        raise DataStreamError(f"{uri}: {what}: {type(exc).__name__}: {exc}") from exc


async def _count(client: aioredis.Redis, name: str) -> int:
    raw = await client.hget(PARTITIONS_HASH, name)
    return 1 if raw is None else int(raw)


class RedisConnector(Connector):
    """Sources, sinks and partition counts of ``redis://HOST:PORT[/DB]/KEY`` streams."""

    scheme = "redis"

    def source(
        self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, codec: str = "json"
    ) -> Source:
        return RedisSource(uri, group=group, partitions=partitions)

    def sink(self, uri: StreamURI, *, codec: str = "json") -> Sink:
        return RedisSink(uri)

    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        if partitions < 1:
            raise DataStreamError(f"{uri}: partitions must be >= 1, got {partitions}")
        client = _client(uri, timeout_s)
        try:
            # HSETNX: the first creator wins, so concurrent ensures agree on one count.
            await _bounded(uri, "ensure", client.hsetnx(PARTITIONS_HASH, uri.name, partitions), timeout_s)
            return await _bounded(uri, "ensure", _count(client, uri.name), timeout_s)
        finally:
            await client.aclose()

    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        client = _client(uri, timeout_s)
        try:
            return await _bounded(uri, "partitions", _count(client, uri.name), timeout_s)
        finally:
            await client.aclose()

    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        client = _client(uri, timeout_s)
        try:
            await _bounded(uri, "unreachable", client.ping(), timeout_s)
        finally:
            await client.aclose()


class RedisSource(Source):
    """Reads owned partitions in one consumer group: pending entries first, then new ones.

    Args:
        uri: the stream.
        group: the consumer group (created at the stream's beginning if absent).
        partitions: the partitions owned; None: all of them.
        start_timeout_s: bound on :meth:`start`.
    """

    def __init__(
        self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, start_timeout_s: float = 10.0
    ) -> None:
        self.uri = uri
        self.group = group
        self._wanted = None if partitions is None else list(partitions)
        self._start_timeout_s = start_timeout_s
        self._client: aioredis.Redis | None = None
        self._keys: dict[int, str] = {}
        self._by_key: dict[str, int] = {}
        # Per partition: where its pending-list scan is (None once it reached the end).
        self._pending_from: dict[int, str | None] = {}
        # Per partition: IDs returned by fetch and not yet acked, in stream order.
        self._unacked: dict[int, deque[str]] = {}
        self._backlog: deque[Message] = deque()
        self._poller: PartitionPoller = PartitionPoller(self._poll)
        #: COUNT of the long polls the current fetch starts: its max_records, so what is read
        #: and not yet returned stays within one fetch's worth per partition.
        self._poll_count = 1

    def _consumer(self, partition: int) -> str:
        # Fixed per (group, partition): a restarted source reads its predecessor's pending list.
        return f"{self.group}-p{partition}"

    async def start(self) -> None:
        self._client = _client(self.uri, self._start_timeout_s)
        await _bounded(self.uri, "start", self._join(), self._start_timeout_s)

    async def _join(self) -> None:
        client = self._client
        count = await _count(client, self.uri.name)
        owned = list(range(count)) if self._wanted is None else self._wanted
        for p in owned:
            if not 0 <= p < count:
                raise DataStreamError(f"{self.uri}: partition {p} out of range; the stream has {count}")
        for p in owned:
            key = partition_key(self.uri.name, p, count)
            try:
                await client.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._keys[p], self._by_key[key] = key, p
            self._pending_from[p] = "0"
            self._unacked[p] = deque()

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        if self._client is None:
            raise DataStreamError(f"{self.uri}: fetch before start")
        self._take(*self._poller.collect())
        if not self._backlog:
            # Cheap first: pending lists, then new entries, of every partition not long-polled
            # already, without blocking, in one round trip.
            pipe = self._client.pipeline(transaction=False)
            asked = []
            for p, key in self._keys.items():
                if not self._poller.busy(p):
                    at = self._pending_from[p]
                    pipe.xreadgroup(self.group, self._consumer(p), {key: at or ">"}, count=max_records)
                    asked.append((p, at))
            if asked:
                replies = await _bounded(self.uri, "fetch", pipe.execute(), _COMMAND_TIMEOUT_S)
                for (p, at), reply in zip(asked, replies, strict=True):
                    await self._add(p, at, reply[0][1] if reply else [])
        if not self._backlog and timeout_s > 0:
            self._poll_count = max_records
            idle = [p for p in self._keys if self._pending_from[p] is None]
            self._take(*await self._poller.wait(idle, timeout_s))
        out = []
        while self._backlog and len(out) < max_records:
            out.append(self._backlog.popleft())
        return out

    async def _poll(self, p: int, timeout_s: float) -> list:
        # A long poll for new entries; BLOCK 0 would wait forever, hence at least 1 ms.
        reply = await _bounded(
            self.uri,
            "fetch",
            self._client.xreadgroup(
                self.group, self._consumer(p), {self._keys[p]: ">"}, count=self._poll_count,
                block=max(1, int(timeout_s * 1000)),
            ),
            timeout_s + _COMMAND_TIMEOUT_S,
        )  # fmt: skip
        return reply[0][1] if reply else []

    def _take(self, results: list, error: BaseException | None) -> None:
        for p, entries in results:
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                self._unacked[p].append(entry_id)
                self._backlog.append(self._message(p, entry_id, fields))
        if error is not None:
            raise error

    async def _add(self, p: int, at: str | None, entries: list) -> None:
        if at is not None:
            if not entries:
                self._pending_from[p] = None  # pending list read out: new entries from now on
                return
            self._pending_from[p] = entries[-1][0].decode()
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if fields is None:
                # Deleted (XDEL/XTRIM) while pending: nothing to deliver; ack so it leaves the list.
                gone = self._client.xack(self._keys[p], self.group, entry_id)
                await _bounded(self.uri, "fetch", gone, _COMMAND_TIMEOUT_S)
                continue
            self._unacked[p].append(entry_id)
            self._backlog.append(self._message(p, entry_id, fields))

    @staticmethod
    def _message(partition: int, entry_id: str, fields: dict[bytes, bytes]) -> Message:
        value = fields.get(b"data")
        if value is None:
            # Not written as a record (no `data` field): hand over all fields as a JSON object
            # rather than drop the entry; the codec sees a well-formed object.
            value = json.dumps(
                {
                    k.decode(errors="backslashreplace"): v.decode(errors="backslashreplace")
                    for k, v in fields.items()
                }
            ).encode()
        ms = int(entry_id.partition("-")[0])
        return Message(value, fields.get(b"key"), partition, entry_id, _id_seq(entry_id), ms / 1000)

    async def commit(self, last: Mapping[int, Message]) -> None:
        if self._client is None:
            raise DataStreamError(f"{self.uri}: commit before start")
        acks: dict[str, list[str]] = {}
        for p, message in last.items():
            unacked = self._unacked.get(p)
            if unacked is None:
                raise DataStreamError(f"{self.uri}: commit of partition {p}, which this source does not own")
            upto, ids = _id_seq(message.offset), []
            while unacked and _id_seq(unacked[0]) <= upto:
                ids.append(unacked.popleft())
            if ids:
                acks[self._keys[p]] = ids
        if not acks:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, ids in acks.items():
            pipe.xack(key, self.group, *ids)
        await _bounded(self.uri, "commit", pipe.execute(), _COMMAND_TIMEOUT_S)

    async def lag(self) -> int | None:
        if self._client is None:
            return None
        total = 0
        for key in self._by_key:
            groups = await _bounded(self.uri, "lag", self._client.xinfo_groups(key), _COMMAND_TIMEOUT_S)
            info = next((g for g in groups if _text(g.get("name")) == self.group), None)
            if info is None:
                return None
            # Redis >= 7 reports `lag` (entries not yet delivered to the group) next to
            # `pending` (delivered, not acked); it is nil after deletions inside the range,
            # and absent before 7: then fall back to XLEN minus entries-read, else unknown.
            undelivered = info.get("lag")
            if undelivered is None:
                read = info.get("entries-read")
                if read is None:
                    return None
                undelivered = max(0, await self._client.xlen(key) - int(read))
            total += int(undelivered) + int(info.get("pending", 0))
        return total

    async def stop(self) -> None:
        await self._poller.close()
        client, self._client = self._client, None
        self._backlog.clear()
        if client is not None:
            await client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSink(Sink):
    """Writes records with pipelined ``XADD``: one round trip per batch.

    A record with no partition goes to ``crc32(key) % n`` (round-robin without a key).
    """

    def __init__(self, uri: StreamURI, *, start_timeout_s: float = 10.0) -> None:
        self.uri = uri
        self._start_timeout_s = start_timeout_s
        self._client: aioredis.Redis | None = None
        self._count = 1
        self._next = 0

    async def start(self) -> None:
        self._client = _client(self.uri, self._start_timeout_s)
        self._count = await _bounded(
            self.uri, "start", _count(self._client, self.uri.name), self._start_timeout_s
        )

    def _partition(self, record: OutRecord, index: int) -> int:
        p = record.partition
        if p is None:
            if record.key is not None:
                return zlib.crc32(record.key) % self._count
            self._next += 1
            return self._next % self._count
        if not 0 <= p < self._count:
            raise DataStreamError(
                f"{self.uri}: record {index} is for partition {p}, but the stream has {self._count}"
            )
        return p

    async def write(self, records: Sequence[OutRecord]) -> None:
        if self._client is None:
            raise DataStreamError(f"{self.uri}: write before start")
        if not records:
            return
        pipe = self._client.pipeline(transaction=False)
        for i, record in enumerate(records):
            fields = {b"data": record.value}
            if record.key is not None:
                fields[b"key"] = record.key
            pipe.xadd(partition_key(self.uri.name, self._partition(record, i), self._count), fields)
        replies = await _bounded(self.uri, "write", pipe.execute(raise_on_error=False), _COMMAND_TIMEOUT_S)
        failed = [(i, r) for i, r in enumerate(replies) if isinstance(r, Exception)]
        if failed:
            i, first = failed[0]
            raise DataStreamError(
                f"{self.uri}: {len(failed)} of {len(records)} records not written; record {i}: {first}"
            )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
