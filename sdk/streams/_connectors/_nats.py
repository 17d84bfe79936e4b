"""NATS JetStream as a stream broker: one JetStream stream per xpipe stream, durable pull consumers.

A user's subject ``S`` is one partition, kept in the JetStream stream :func:`stream_name`
``(S)`` with subjects ``[S]``. An internal stream of ``n > 1`` partitions has subjects
``S.0`` .. ``S.n-1`` in one JetStream stream with subjects ``[S.*]``, and ``n`` written in the
stream's description (nats-server 2.9 has no stream metadata). Streams use file storage:
a record a sink's write returned for must survive a NATS restart, or delivery would not be
at-least-once.

Each (group, partition) reads through one durable pull consumer with ``AckPolicy.ALL``, so
acking message ``m`` commits everything before it. A source that stopped without
committing leaves messages "ack pending": JetStream would redeliver them only after
``ack_wait``. Rather than a short ``ack_wait`` (which redelivers slow batches to a live
source, out of order) or a ``nak`` on stop (which a killed worker never sends), a starting
source that finds ack-pending messages recreates its consumer at the ack floor + 1: the
uncommitted messages come first and at once, in order, whatever way its predecessor ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import zlib
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ...errors import DataStreamError
from .._uri import StreamURI
from ._base import Connector, Message, OutRecord, Sink, Source
from ._polling import PartitionPoller

__all__ = ["KEY_HEADER", "NatsConnector", "partition_subject", "stream_name"]

log = logging.getLogger(__name__)

#: The header that carries a record's key.
KEY_HEADER = "xpipe-key"
#: How long a delivered message may stay unacked before JetStream redelivers it to a live
#: source: longer than any batch takes through a stage and its downstream write.
ACK_WAIT_S = 300.0
#: Bound on one request when no caller timeout applies (publish acks, commits, info).
_REQUEST_TIMEOUT_S = 30.0
_DESCRIPTION = re.compile(r"xpipe partitions=(\d+)")
_INVALID = re.compile(r"[^A-Za-z0-9_-]")

T = TypeVar("T")


def stream_name(subject: str) -> str:
    """The JetStream stream made for ``subject``: ``XP_`` and the subject, ``.`` and other invalid characters as ``_``.

    Names can collide (``a.b`` and ``a_b``): :func:`_find` takes a stream of this name only
    if its subjects are the subject's, and the second one gets an error naming the first.
    """
    return "XP_" + _INVALID.sub("_", subject)


def partition_subject(subject: str, partition: int, partitions: int) -> str:
    """The subject of ``partition`` of stream ``subject`` that has ``partitions`` partitions."""
    return subject if partitions == 1 else f"{subject}.{partition}"


async def _bounded(uri: StreamURI, what: str, call: Awaitable[T], timeout_s: float) -> T:
    """``await call`` within ``timeout_s``, any failure a DataStreamError naming ``uri`` and ``what``."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except DataStreamError:
        raise
    except TimeoutError:
        raise DataStreamError(f"{uri}: {what}: no reply from NATS within {timeout_s:g} s") from None
    except (NatsError, OSError) as exc:
        raise DataStreamError(f"{uri}: {what}: {type(exc).__name__}: {exc}") from exc


async def _connect(uri: StreamURI, timeout_s: float) -> NATS:
    """A connection to ``uri``'s server, or a DataStreamError within ``timeout_s``.

    Reconnects ride over a NATS restart later (JetStream keeps the streams on file), but
    with reconnects on, nats-py retries a refused first connect until its attempts run
    out; so the first error it reports ends the first connect, naming its cause.
    """
    first_error: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        if not first_error.done():
            first_error.set_result(exc)
        log.warning("%s: NATS connection: %s: %s", uri, type(exc).__name__, exc)

    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    connecting = asyncio.ensure_future(
        nats.connect(
            servers=[f"nats://{host}:{uri.port}"], connect_timeout=timeout_s, allow_reconnect=True,
            max_reconnect_attempts=120, reconnect_time_wait=0.5, error_cb=on_error,
        )
    )  # fmt: skip
    await asyncio.wait({connecting, first_error}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if connecting.done():
        return await _bounded(uri, "unreachable", connecting, timeout_s)
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    if first_error.done():
        exc = first_error.result()
        raise DataStreamError(f"{uri}: unreachable: {type(exc).__name__}: {exc}") from exc
    raise DataStreamError(f"{uri}: unreachable: no connection to NATS within {timeout_s:g} s")


async def _find(js: JetStreamContext, uri: StreamURI) -> tuple[str, int] | None:
    """The JetStream stream holding ``uri`` and its partition count, None if there is none.

    Ours first (:func:`stream_name`); else a stream the user made whose subjects take the
    subject (such as ``ORDERS`` with ``orders.>``): a new stream could not overlap it.
    """
    try:
        info = await js.stream_info(stream_name(uri.name))
        if not {uri.name, f"{uri.name}.*"} & set(info.config.subjects or ()):
            raise NotFoundError  # the name of another subject's stream (see stream_name)
    except NotFoundError:
        try:
            info = await js.stream_info(await js.find_stream_name_by_subject(uri.name))
        except NotFoundError:
            return None
        return info.config.name, 1
    found = _DESCRIPTION.fullmatch(info.config.description or "")
    return info.config.name, int(found.group(1)) if found else 1


async def _ensure(js: JetStreamContext, uri: StreamURI, partitions: int) -> tuple[str, int]:
    """Find or create the stream of ``uri``; its name and partition count."""
    known = await _find(js, uri)
    if known is not None:
        return known
    subjects = [uri.name] if partitions == 1 else [f"{uri.name}.*"]
    config = StreamConfig(
        name=stream_name(uri.name), subjects=subjects, storage=StorageType.FILE,
        description=f"xpipe partitions={partitions}",
    )  # fmt: skip
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        # A concurrent ensure created it first (same name): take its count.
        known = await _find(js, uri)
        if known is None:
            raise DataStreamError(
                f"{uri}: cannot create JetStream stream {config.name} for subject {uri.name!r}: {exc}"
            ) from exc
        return known
    return config.name, partitions


class NatsConnector(Connector):
    """Sources, sinks and partition counts of ``nats://HOST:PORT/SUBJECT`` streams."""

    scheme = "nats"

    def source(
        self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, codec: str = "json"
    ) -> Source:
        return NatsSource(uri, group=group, partitions=partitions)

    def sink(self, uri: StreamURI, *, codec: str = "json") -> Sink:
        return NatsSink(uri)

    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        if partitions < 1:
            raise DataStreamError(f"{uri}: partitions must be >= 1, got {partitions}")
        nc = await _connect(uri, timeout_s)
        try:
            _, count = await _bounded(uri, "ensure", _ensure(nc.jetstream(), uri, partitions), timeout_s)
            return count
        finally:
            await nc.close()

    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        nc = await _connect(uri, timeout_s)
        try:
            found = await _bounded(uri, "partitions", _find(nc.jetstream(), uri), timeout_s)
            return 1 if found is None else found[1]
        finally:
            await nc.close()

    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        nc = await _connect(uri, timeout_s)
        try:
            # Reachable is not enough: JetStream must be enabled on the server.
            await _bounded(uri, "JetStream unavailable", nc.jetstream().account_info(), timeout_s)
        finally:
            await nc.close()


class NatsSource(Source):
    """Reads owned partitions, each through a durable pull consumer of ``group``.

    Args:
        uri: the stream (created with one partition if absent).
        group: the consumer group; consumer names are ``<group>_p<partition>``.
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
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[int, JetStreamContext.PullSubscription] = {}
        self._backlog: deque[Message] = deque()
        self._poller: PartitionPoller = PartitionPoller(self._poll)
        #: Per partition: the stream sequence acked last (a commit at or below it is done).
        self._acked: dict[int, int] = {}
        #: Batch of the polls the current fetch starts: its max_records, so what is read and
        #: not yet returned stays within one fetch's worth per partition.
        self._batch = 1

    async def start(self) -> None:
        self._nc = await _connect(self.uri, self._start_timeout_s)
        self._js = self._nc.jetstream()
        await _bounded(self.uri, "start", self._join(), self._start_timeout_s)

    async def _join(self) -> None:
        stream, count = await _ensure(self._js, self.uri, 1)
        owned = list(range(count)) if self._wanted is None else self._wanted
        for p in owned:
            if not 0 <= p < count:
                raise DataStreamError(f"{self.uri}: partition {p} out of range; the stream has {count}")
        for p in owned:
            durable = _INVALID.sub("_", f"{self.group}_p{p}")
            config = ConsumerConfig(
                durable_name=durable, filter_subject=partition_subject(self.uri.name, p, count),
                ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT_S, max_ack_pending=1_000_000,
                deliver_policy=DeliverPolicy.ALL,
            )  # fmt: skip
            try:
                info = await self._js.consumer_info(stream, durable)
            except NotFoundError:
                info = None
            if info is not None and info.num_ack_pending:
                # A predecessor read these and never committed: start over right after the ack floor.
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = info.ack_floor.stream_seq + 1
                log.info("%s: group %s partition %d: %d uncommitted, redelivering from sequence %d",
                         self.uri, self.group, p, info.num_ack_pending, config.opt_start_seq)  # fmt: skip
                await self._js.delete_consumer(stream, durable)
                info = None
            if info is None:
                await self._js.add_consumer(stream, config)
            self._acked[p] = 0
            self._subs[p] = await self._js.pull_subscribe_bind(durable=durable, stream=stream)

    async def _poll(self, p: int, timeout_s: float) -> list:
        try:
            return await self._subs[p].fetch(self._batch, timeout=max(timeout_s, 0.05))
        except TimeoutError:  # nats.errors.TimeoutError is one too
            return []
        except NatsError as exc:
            raise DataStreamError(f"{self.uri}: fetch: {type(exc).__name__}: {exc}") from exc

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        if self._nc is None:
            raise DataStreamError(f"{self.uri}: fetch before start")
        if not self._backlog:
            self._batch = max_records
            results, error = await self._poller.wait(self._subs, timeout_s)
            for p, msgs in results:
                for msg in msgs:
                    meta = msg.metadata
                    key = (msg.headers or {}).get(KEY_HEADER)
                    self._backlog.append(
                        Message(msg.data, None if key is None else key.encode(), p, msg,
                                meta.sequence.stream, meta.timestamp.timestamp())
                    )  # fmt: skip
            if error is not None:
                raise error
        out = []
        while self._backlog and len(out) < max_records:
            out.append(self._backlog.popleft())
        return out

    async def commit(self, last: Mapping[int, Message]) -> None:
        if self._nc is None:
            raise DataStreamError(f"{self.uri}: commit before start")
        for p in last:
            if p not in self._subs:
                raise DataStreamError(f"{self.uri}: commit of partition {p}, which this source does not own")
        # AckPolicy.ALL: acking the last message of a partition acks all before it. Acked
        # synchronously so a commit that returned is one the server took.
        todo = {p: m for p, m in last.items() if m.seq > self._acked.get(p, 0)}
        acks = [m.offset.ack_sync(timeout=_REQUEST_TIMEOUT_S) for m in todo.values()]
        await _bounded(self.uri, "commit", asyncio.gather(*acks), _REQUEST_TIMEOUT_S)
        for p, m in todo.items():
            self._acked[p] = m.seq

    async def lag(self) -> int | None:
        if self._nc is None:
            return None
        total = 0
        for sub in self._subs.values():
            info = await _bounded(self.uri, "lag", sub.consumer_info(), _REQUEST_TIMEOUT_S)
            total += info.num_pending + info.num_ack_pending
        return total

    async def stop(self) -> None:
        await self._poller.close()
        nc, self._nc = self._nc, None
        self._backlog.clear()
        self._subs.clear()
        if nc is not None:
            await nc.close()


class NatsSink(Sink):
    """Publishes to JetStream, all of a batch at once, then awaits every publish ack.

    A record with no partition goes to ``crc32(key) % n`` (round-robin without a key).
    """

    def __init__(self, uri: StreamURI, *, start_timeout_s: float = 10.0) -> None:
        self.uri = uri
        self._start_timeout_s = start_timeout_s
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stream = ""
        self._count = 1
        self._next = 0

    async def start(self) -> None:
        self._nc = await _connect(self.uri, self._start_timeout_s)
        self._js = self._nc.jetstream()
        self._stream, self._count = await _bounded(
            self.uri, "start", _ensure(self._js, self.uri, 1), self._start_timeout_s
        )

    def _subject(self, record: OutRecord, index: int) -> str:
        p = record.partition
        if p is None:
            if record.key is not None:
                p = zlib.crc32(record.key) % self._count
            else:
                self._next += 1
                p = self._next % self._count
        elif not 0 <= p < self._count:
            raise DataStreamError(
                f"{self.uri}: record {index} is for partition {p}, but the stream has {self._count}"
            )
        return partition_subject(self.uri.name, p, self._count)

    @staticmethod
    def _headers(record: OutRecord, index: int, uri: StreamURI) -> dict[str, str] | None:
        if record.key is None:
            return None
        try:
            return {KEY_HEADER: record.key.decode()}
        except UnicodeDecodeError:
            raise DataStreamError(
                f"{uri}: record {index} has a key that is not UTF-8 ({record.key[:20]!r}); "
                f"NATS headers carry text"
            ) from None

    async def write(self, records: Sequence[OutRecord]) -> None:
        if self._nc is None:
            raise DataStreamError(f"{self.uri}: write before start")
        planned = [
            (self._subject(r, i), r.value, self._headers(r, i, self.uri)) for i, r in enumerate(records)
        ]

        # publish_async sends in call order (order per partition kept) and returns futures
        # of the acks; gathering them is one round trip's wait for the whole batch. No
        # expected-stream header: it would be stored with every message and parsed on every
        # read, and a subject no stream takes fails anyway (no responders).
        async def publish() -> list:
            futures = [await self._js.publish_async(s, v, headers=h) for s, v, h in planned]
            return await asyncio.gather(*futures, return_exceptions=True)

        replies = await _bounded(self.uri, "write", publish(), _REQUEST_TIMEOUT_S)
        failed = [(i, r) for i, r in enumerate(replies) if isinstance(r, BaseException)]
        if failed:
            i, first = failed[0]
            raise DataStreamError(
                f"{self.uri}: {len(failed)} of {len(records)} records not written; record {i}: "
                f"{type(first).__name__}: {first}"
            )

    async def stop(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()
