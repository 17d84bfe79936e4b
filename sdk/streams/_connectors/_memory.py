"""``memory://name``: streams on the coordinator's memory broker, over ``StreamService`` with grpc.aio.

A memory URI names no host: the coordinator is the one :func:`configure` names (the SDK's
``PipelineManager`` calls it), else the one the worker gives its task processes in the
environment (``XPIPE_COORDINATOR`` = ``host:port[,host:port]``, ``XPIPE_TOKEN`` and the TLS
variables :meth:`TLSConfig.from_env` reads). With several coordinators a call follows the
leader: an ``UNAVAILABLE`` answer naming the leader (``xpipe-leader``, as the SDK's client
reads it) goes there; another ``UNAVAILABLE`` or ``FAILED_PRECONDITION`` tries the next
address, each at most once per call.

A source keeps its position per partition locally: its first fetch of a partition starts at
the group's committed offset, the next ones after the last record fetched. If the broker
says that position is past the partition's end (the coordinator restarted and the broker is
empty), the source starts over from the group's committed offset.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from ..._client import _OPTIONS, leader_hint, parse_addresses
from ..._proto import stream_pb2, stream_pb2_grpc
from ...errors import DataStreamError
from ...security._auth import AUTHORIZATION_KEY, authorization_value
from ...security._tls import TLSConfig, client_token
from .._memory_limits import MAX_FETCH_WAIT_MS, MAX_PRODUCE_BYTES
from .._records import partition_of
from .._uri import StreamURI
from ._base import Connector, Message, OutRecord, Sink, Source

__all__ = ["COORDINATOR_ENV", "MemoryConnector", "configure"]

log = logging.getLogger(__name__)

#: Where a task process finds its coordinator (set by the worker; ``host:port[,host:port]``).
COORDINATOR_ENV = "XPIPE_COORDINATOR"
#: Deadline of a Produce, Commit or DescribeStream call, and slack on top of a Fetch's long poll.
CALL_TIMEOUT_S = 10.0
#: Where a follower's answer named the leader, jumps in a row to it within one call.
_MAX_HINT_JUMPS = 3
_FOLLOW = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION})
_PERMISSION = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


@dataclass(frozen=True, slots=True)
class _Settings:
    addresses: tuple[str, ...]
    tls: TLSConfig | None
    token: str | None


_configured: _Settings | None = None


def configure(address: str | Sequence[str] | None, tls: TLSConfig | None = None, token: str | None = None) -> None:
    """Name the coordinator whose memory broker ``memory://`` streams use in this process.

    Args:
        address: ``"host:port[,host:port]"`` or a list of them; None forgets the setting
            (the environment is read again).
        tls: how to reach it over TLS; None: plaintext.
        token: the credential sent on every call (it needs permission ``stream:io``).

    Raises:
        DataStreamError: a malformed address.
    """
    global _configured
    if address is None:
        _configured = None
        return
    try:
        addresses = tuple(parse_addresses(address))
    except ValueError as exc:
        raise DataStreamError(f"memory streams: {exc}") from None
    _configured = _Settings(addresses, tls, token)


def _settings() -> _Settings:
    if _configured is not None:
        return _configured
    raw = os.environ.get(COORDINATOR_ENV, "").strip()
    if not raw:
        raise DataStreamError(
            "memory:// streams live on a coordinator and none is configured: pass a PipelineManager, "
            f"call xpipe.streams._connectors._memory.configure('HOST:PORT'), or set {COORDINATOR_ENV}=HOST:PORT"
        )
    try:
        addresses = tuple(parse_addresses(raw))
    except ValueError as exc:
        raise DataStreamError(f"memory streams: {COORDINATOR_ENV}={raw!r:.120}: {exc}") from None
    return _Settings(addresses, TLSConfig.from_env(), client_token(None))


class _Link:
    """One grpc.aio channel to the coordinator, moved to the leader or the next address when told."""

    def __init__(self, uri: StreamURI, settings: _Settings):
        self.uri = uri
        self.settings = settings
        self.addresses = list(settings.addresses)
        self.index = 0
        token = settings.token
        self._metadata = ((AUTHORIZATION_KEY, authorization_value(token)),) if token else None
        self._channel: grpc.aio.Channel | None = None
        self._stub: stream_pb2_grpc.StreamServiceStub | None = None

    @property
    def address(self) -> str:
        return self.addresses[self.index]

    def _stub_now(self) -> stream_pb2_grpc.StreamServiceStub:
        if self._stub is None:
            tls = self.settings.tls
            if tls is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=_OPTIONS)
            else:
                options = [*_OPTIONS, *tls.channel_options()]
                self._channel = grpc.aio.secure_channel(self.address, tls.channel_credentials(), options=options)
            self._stub = stream_pb2_grpc.StreamServiceStub(self._channel)
        return self._stub

    async def _move(self, address: str) -> None:
        await self.close()
        if address not in self.addresses:
            self.addresses.append(address)
        self.index = self.addresses.index(address)

    async def call(self, method: str, request, timeout_s: float = CALL_TIMEOUT_S):
        """``method`` of StreamService, following the leader.

        Raises:
            DataStreamError: the call failed; the message names the URI, the coordinator and the cause.
        """
        tries = len(self.addresses) + _MAX_HINT_JUMPS
        for attempt in itertools.count(1):
            try:
                return await getattr(self._stub_now(), method)(request, timeout=timeout_s, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _FOLLOW or attempt >= tries:
                    raise self._error(method, exc) from exc
                hint = leader_hint(exc)
                nxt = hint or self.addresses[(self.index + 1) % len(self.addresses)]
                if not hint and attempt >= len(self.addresses):
                    raise self._error(method, exc) from exc
                log.info("%s: %s on %s answered %s; trying %s", self.uri, method, self.address, exc.code().name, nxt)
                await self._move(nxt)
        raise AssertionError("unreachable")

    def _error(self, method: str, exc: grpc.aio.AioRpcError) -> DataStreamError:
        code = exc.code()
        why = f"{code.name}: {exc.details()}"
        if code in _PERMISSION:
            why += " (memory streams need permission stream:io: roles worker, submitter or admin)"
        return DataStreamError(f"{self.uri}: {method} on coordinator {self.address} failed: {why}")

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


class MemorySource(Source):
    """Reads some partitions of a memory stream in one group, keeping each partition's position."""

    def __init__(self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None):
        self.uri = uri
        self.group = group
        self._owned = None if partitions is None else list(partitions)
        self._positions: dict[int, int | None] = {}
        self._turn = 0
        self._link: _Link | None = None

    async def start(self) -> None:
        self._link = _Link(self.uri, _settings())
        if self._owned is None:
            answer = await self._link.call("DescribeStream", stream_pb2.DescribeStreamRequest(stream=self.uri.name))
            self._owned = list(range(answer.partitions if answer.exists else 1))
        self._positions = {p: None for p in self._owned}

    def _request(self, partition: int, max_records: int, wait_ms: int) -> stream_pb2.FetchRequest:
        position = self._positions[partition]
        return stream_pb2.FetchRequest(
            stream=self.uri.name,
            group=self.group,
            partition=partition,
            from_committed=position is None,
            from_offset=position or 0,
            max_records=max_records,
            wait_ms=wait_ms,
        )

    async def _fetch_one(self, partition: int, max_records: int, wait_ms: int) -> stream_pb2.FetchResponse:
        assert self._link is not None, "fetch before start"
        timeout_s = wait_ms / 1000 + CALL_TIMEOUT_S
        try:
            return await self._link.call("Fetch", self._request(partition, max_records, wait_ms), timeout_s)
        except DataStreamError as exc:
            if not isinstance(exc.__cause__, grpc.aio.AioRpcError) or exc.__cause__.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            log.warning("%s: partition %d: %s; starting over from the committed offset", self.uri, partition, exc)
            self._positions[partition] = None
            return await self._link.call("Fetch", self._request(partition, max_records, wait_ms), timeout_s)

    def _take(self, partition: int, answer: stream_pb2.FetchResponse, limit: int) -> list[Message]:
        taken = answer.records[:limit]
        if taken:
            self._positions[partition] = taken[-1].offset + 1
        return [
            Message(r.value, r.key or None, partition, r.offset, r.offset, r.timestamp or None) for r in taken
        ]

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        owned = self._owned or []
        if not owned or max_records <= 0:
            return []
        # A quick pass over every partition, starting one further each time so none starves.
        self._turn = (self._turn + 1) % len(owned)
        out: list[Message] = []
        for p in owned[self._turn :] + owned[: self._turn]:
            if len(out) >= max_records:
                break
            out += self._take(p, await self._fetch_one(p, max_records - len(out), 0), max_records - len(out))
        wait_ms = min(int(timeout_s * 1000), MAX_FETCH_WAIT_MS)
        if out or wait_ms <= 0:
            return out
        # Nothing anywhere: long-poll every partition at once and take what the first answers bring.
        polls = {asyncio.create_task(self._fetch_one(p, max_records, wait_ms)): p for p in owned}
        try:
            pending = set(polls)
            while pending and not out:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    out += self._take(polls[task], task.result(), max_records - len(out))
        finally:
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
        return out

    async def commit(self, last: Mapping[int, Message]) -> None:
        assert self._link is not None, "commit before start"
        link = self._link
        await asyncio.gather(
            *(
                link.call("Commit", stream_pb2.CommitRequest(stream=self.uri.name, group=self.group, partition=p, offset=m.offset + 1))
                for p, m in last.items()
            )
        )

    async def lag(self) -> int | None:
        if self._link is None:
            return None
        try:
            answer = await self._link.call(
                "DescribeStream", stream_pb2.DescribeStreamRequest(stream=self.uri.name, group=self.group)
            )
        except DataStreamError as exc:
            log.warning("%s: lag unknown: %s", self.uri, exc)
            return None
        if not answer.exists:
            return 0
        owned = [p for p in self._owned or () if p < answer.partitions]
        return sum(max(answer.end_offsets[p] - answer.committed[p], 0) for p in owned)

    async def stop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()


class MemorySink(Sink):
    """Writes to a memory stream: one Produce per write (several only past MAX_PRODUCE_BYTES)."""

    def __init__(self, uri: StreamURI):
        self.uri = uri
        self._link: _Link | None = None
        self._partitions = 1
        self._next = itertools.count()

    async def start(self) -> None:
        self._link = _Link(self.uri, _settings())
        answer = await self._link.call("DescribeStream", stream_pb2.DescribeStreamRequest(stream=self.uri.name))
        self._partitions = answer.partitions if answer.exists else 1

    def _partition(self, record: OutRecord) -> int:
        if record.partition is not None:
            return record.partition
        if record.key is not None:
            return partition_of(record.key, self._partitions)
        return next(self._next) % self._partitions  # unkeyed: spread evenly

    async def write(self, records: Sequence[OutRecord]) -> None:
        assert self._link is not None, "write before start"
        batch: list[stream_pb2.StreamRecord] = []
        size = 0
        for record in records:
            item = stream_pb2.StreamRecord(key=record.key or b"", value=record.value, partition=self._partition(record))
            if batch and size + len(item.key) + len(item.value) > MAX_PRODUCE_BYTES:
                await self._produce(batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item.key) + len(item.value)
        if batch:
            await self._produce(batch)

    async def _produce(self, batch: list[stream_pb2.StreamRecord]) -> None:
        assert self._link is not None
        await self._link.call("Produce", stream_pb2.ProduceRequest(stream=self.uri.name, records=batch))

    async def stop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()


class MemoryConnector(Connector):
    """The ``memory`` scheme: streams on the coordinator's memory broker."""

    scheme = "memory"

    def source(self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, codec: str = "json") -> Source:
        return MemorySource(uri, group=group, partitions=partitions)

    def sink(self, uri: StreamURI, *, codec: str = "json") -> Sink:
        return MemorySink(uri)

    async def _describe(self, uri: StreamURI, create: int, timeout_s: float) -> stream_pb2.DescribeStreamResponse:
        link = _Link(uri, _settings())
        try:
            request = stream_pb2.DescribeStreamRequest(stream=uri.name, create_partitions=create)
            return await link.call("DescribeStream", request, timeout_s)
        finally:
            await link.close()

    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        return (await self._describe(uri, max(partitions, 1), timeout_s)).partitions

    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        answer = await self._describe(uri, 0, timeout_s)
        return answer.partitions if answer.exists else 1

    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        await self._describe(uri, 0, timeout_s)
