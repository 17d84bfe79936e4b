"""Kafka topics as streams, through ``aiokafka``.

A stage instance owns some partitions of a topic, so its source uses MANUAL assignment
(``consumer.assign``) in the pipeline's consumer group rather than a group rebalance: the
runtime, not Kafka, decides who reads what. Offsets are committed only when the runtime
says so (``enable_auto_commit=False``), which gives at-least-once delivery; a partition the
group never committed starts at the earliest record, so nothing produced before start is
lost.

Every call that talks to the broker is bounded (``timeout_s`` / ``start_timeout_s`` /
``delivery_timeout_s``) and turns Kafka and socket errors into
:class:`~xpipe.DataStreamError` naming the URI and the cause: an unreachable broker is an
error, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2

from ...errors import DataStreamError
from .._uri import StreamURI, kafka_bootstrap
from ._base import Connector, Message, OutRecord, Sink, Source

__all__ = ["KafkaConnector", "KafkaSink", "KafkaSource"]

logger = logging.getLogger(__name__)

#: How long a source's or sink's start() may take before an unreachable broker is an error.
START_TIMEOUT_S = 10.0
#: How long write() waits for the broker to acknowledge a record before it is an error.
DELIVERY_TIMEOUT_S = 30.0
#: Producer batching: wait this long for more records to fill a batch (throughput over latency).
LINGER_MS = 5
#: Producer batch size per partition; large enough that a 500-record write is a few requests.
MAX_BATCH_BYTES = 512 * 1024
#: The same aiokafka warning or error is logged at most once per this many seconds.
LOG_REPEAT_INTERVAL_S = 30.0

# Errors a broker call may raise that mean "Kafka did not do it": its own, sockets, timeouts.
_BROKER_ERRORS = (KafkaError, OSError, asyncio.TimeoutError)


class _RepeatFilter(logging.Filter):
    """Let an aiokafka record through once per interval per message, counting the rest.

    aiokafka retries a lost broker every ~100 ms and logs an error for each try; a worker's
    log would be nothing else. The first of each is kept (a real error is never hidden),
    and the next one after the interval says how many were dropped in between.
    """

    def __init__(
        self, interval_s: float = LOG_REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} similar suppressed in the last {self.interval_s:.0f} s)"
        if len(self._seen) > 1000:  # bounded: messages are templates, but be safe
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def _quiet_aiokafka_repeats() -> None:
    # Logger filters are not inherited, so each aiokafka module logger gets the one filter.
    repeat_filter = _RepeatFilter()
    for name in list(logging.root.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logging.getLogger(name).addFilter(repeat_filter)


_quiet_aiokafka_repeats()


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _unreachable(uri: StreamURI, bootstrap: str, exc: BaseException) -> DataStreamError:
    cause = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        cause = "timed out"
    return DataStreamError(f"{uri}: cannot reach Kafka at {bootstrap}: {cause}")


@contextlib.asynccontextmanager
async def _admin(uri: StreamURI, timeout_s: float) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client whose start and use are bounded by ``timeout_s`` in all."""
    bootstrap = kafka_bootstrap(uri)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=max(1, int(timeout_s * 1000)))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            yield admin
    except _BROKER_ERRORS as exc:
        raise _unreachable(uri, bootstrap, exc) from exc
    finally:
        with contextlib.suppress(*_BROKER_ERRORS):
            await admin.close()


async def _topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """The topic's partition count, or None if the broker does not know the topic.

    Asking for one topic's metadata would auto-create it (with the broker's default count)
    on brokers that allow that, so the topic is first looked for among all names.
    """
    if topic not in await admin.list_topics():
        return None
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] or not described["partitions"]:
        return None
    return len(described["partitions"])


async def _default_replication(admin: AIOKafkaAdminClient) -> int:
    """The broker's ``default.replication.factor``: what an operator chose for new topics.

    aiokafka's CreateTopics is older than the "-1 means the broker's default" form, so the
    value is asked for, and capped at the number of brokers (a 1-node test cluster).
    """
    cluster = await admin.describe_cluster()
    brokers = cluster["brokers"]
    node = str(brokers[0]["node_id"])
    resource = ConfigResource(ConfigResourceType.BROKER, node, {"default.replication.factor": None})
    factor = 1
    for response in await admin.describe_configs([resource]):
        for entry in response.to_object()["resources"]:
            for config in entry["config_entries"]:
                if config["config_names"] == "default.replication.factor" and config["config_value"]:
                    factor = int(config["config_value"])
    return max(1, min(factor, len(brokers)))


class KafkaConnector(Connector):
    """Kafka topics: sources by manual partition assignment, idempotent sinks, an admin client.

    ``codec`` is not used here: Kafka records are bytes both ways, and the runtime encodes
    and decodes them.
    """

    scheme = "kafka"

    def source(
        self,
        uri: StreamURI,
        *,
        group: str,
        partitions: Sequence[int] | None,
        codec: str = "json",
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> KafkaSource:
        """A source over ``partitions`` of the topic (None: all it has at start) in ``group``."""
        return KafkaSource(uri, group=group, partitions=partitions, start_timeout_s=start_timeout_s)

    def sink(
        self,
        uri: StreamURI,
        *,
        codec: str = "json",
        start_timeout_s: float = START_TIMEOUT_S,
        delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
    ) -> KafkaSink:
        """A sink writing to the topic with acks from all in-sync replicas."""
        return KafkaSink(uri, start_timeout_s=start_timeout_s, delivery_timeout_s=delivery_timeout_s)

    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        """Create the topic with ``partitions`` if absent; return the partitions it has.

        An existing topic keeps its count (Kafka can only grow it, and growing would move
        keys between partitions); the caller compares and decides.

        Raises:
            DataStreamError: ``partitions`` < 1, the broker is unreachable, or refused the topic.
        """
        if partitions < 1:
            raise DataStreamError(f"{uri}: partitions must be at least 1, got {partitions}")
        async with _admin(uri, timeout_s) as admin:
            known = await _topic_partitions(admin, uri.name)
            if known is not None:
                return known
            replication = await _default_replication(admin)
            response = await admin.create_topics(
                [NewTopic(uri.name, partitions, replication)], timeout_ms=max(1, int(timeout_s * 1000))
            )
            (result,) = response.to_object()["topic_errors"]
            error = for_code(result["error_code"]) if result["error_code"] else None
            if error is None:
                logger.info(
                    "created Kafka topic %s with %d partitions (replication %d)", uri, partitions, replication
                )
                return partitions
            if error is not TopicAlreadyExistsError:  # another instance may have won the race
                raise DataStreamError(
                    f"{uri}: Kafka refused to create topic {uri.name!r} with {partitions} partitions: "
                    f"{error.__name__}: {result['error_message']}"
                )
            # It exists (made by another instance, or not yet in this broker's metadata):
            # its own count is the answer, once the metadata shows it.
            while True:
                (described,) = await admin.describe_topics([uri.name])
                if not described["error_code"] and described["partitions"]:
                    return len(described["partitions"])
                await asyncio.sleep(0.05)

    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        """The topic's partition count; 1 if it does not exist yet."""
        async with _admin(uri, timeout_s) as admin:
            return await _topic_partitions(admin, uri.name) or 1

    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        """One bounded metadata round trip to the bootstrap servers."""
        async with _admin(uri, timeout_s) as admin:
            await admin.describe_cluster()


class KafkaSource(Source):
    """Reads some partitions of one topic in one consumer group, committing only when told.

    Args:
        uri: the topic.
        group: the consumer group whose committed offsets it starts from and commits to.
        partitions: the partitions it owns; None means all the topic has at start (partition
            0 if the topic does not exist yet, as :meth:`KafkaConnector.partitions` counts 1).
        start_timeout_s: how long :meth:`start` may try to reach the broker.
    """

    def __init__(
        self,
        uri: StreamURI,
        *,
        group: str,
        partitions: Sequence[int] | None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if partitions is not None and any(p < 0 for p in partitions):
            raise DataStreamError(f"{uri}: partitions must be >= 0, got {sorted(partitions)}")
        self.uri = uri
        self.group = group
        self.start_timeout_s = start_timeout_s
        self._wanted = None if partitions is None else sorted(set(partitions))
        self._bootstrap = kafka_bootstrap(uri)
        self._consumer: AIOKafkaConsumer | None = None
        self._owned: list[TopicPartition] = []

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=max(1, int(self.start_timeout_s * 1000)),
        )
        self._consumer = consumer
        try:
            async with asyncio.timeout(self.start_timeout_s):
                wanted = self._wanted
                if wanted is None:
                    count = await KafkaConnector().partitions(self.uri, timeout_s=self.start_timeout_s)
                    wanted = list(range(count))
                await consumer.start()
                self._owned = [TopicPartition(self.uri.name, p) for p in wanted]
                # Positions come from the group's committed offsets, else auto_offset_reset.
                consumer.assign(self._owned)
        except DataStreamError:
            await self.stop()
            raise
        except _BROKER_ERRORS as exc:
            await self.stop()
            raise _unreachable(self.uri, self._bootstrap, exc) from exc

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise DataStreamError(f"{self.uri}: the Kafka source is not started (or was stopped)")
        return self._consumer

    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        consumer = self._started()
        try:
            batches = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise DataStreamError(f"{self.uri}: fetch for group {self.group!r} failed: {exc}") from exc
        out: list[Message] = []
        for tp, records in batches.items():
            partition = tp.partition
            for r in records:
                ts = r.timestamp
                out.append(
                    Message(
                        # A tombstone (null value) is read as empty bytes; the codec decides.
                        value=r.value if r.value is not None else b"",
                        key=r.key,
                        partition=partition,
                        offset=r.offset,
                        seq=r.offset,
                        timestamp_s=ts / 1000.0 if ts is not None and ts >= 0 else None,
                    )
                )
        return out

    async def commit(self, last: Mapping[int, Message]) -> None:
        if not last:
            return
        consumer = self._started()
        offsets = {TopicPartition(self.uri.name, p): m.offset + 1 for p, m in last.items()}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            raise DataStreamError(
                f"{self.uri}: commit of {dict(sorted((tp.partition, o) for tp, o in offsets.items()))} "
                f"for group {self.group!r} failed: {exc}"
            ) from exc

    async def lag(self) -> int | None:
        """End offset minus the group's committed offset (log start if none), summed over owned partitions.

        None when the broker does not answer within the start timeout: the figure is a
        report, and a lost broker shows up in fetch and write as errors.
        """
        consumer = self._started()
        try:
            async with asyncio.timeout(self.start_timeout_s):
                ends = await consumer.end_offsets(self._owned)
                total = 0
                starts: dict[TopicPartition, int] | None = None
                for tp in self._owned:
                    committed = await consumer.committed(tp)
                    if committed is None:
                        if starts is None:
                            starts = await consumer.beginning_offsets(self._owned)
                        committed = starts[tp]
                    total += max(0, ends[tp] - committed)
                return total
        except _BROKER_ERRORS as exc:
            logger.warning("%s: lag of group %r unknown: %r", self.uri, self.group, exc)
            return None

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


class KafkaSink(Sink):
    """Writes to one topic; :meth:`write` returns once the in-sync replicas hold every record.

    Args:
        uri: the topic.
        start_timeout_s: how long :meth:`start` may try to reach the broker.
        delivery_timeout_s: how long a record may wait for its acknowledgement.
    """

    def __init__(
        self,
        uri: StreamURI,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
    ) -> None:
        self.uri = uri
        self.start_timeout_s = start_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self._bootstrap = kafka_bootstrap(uri)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            # Idempotence: a retried batch is not written twice, and order per partition holds.
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=max(1, int(self.delivery_timeout_s * 1000)),
        )
        self._producer = producer
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await producer.start()
        except _BROKER_ERRORS as exc:
            await self.stop()
            raise _unreachable(self.uri, self._bootstrap, exc) from exc

    async def write(self, records: Sequence[OutRecord]) -> None:
        producer = self._producer
        if producer is None:
            raise DataStreamError(f"{self.uri}: the Kafka sink is not started (or was stopped)")
        if not records:
            return
        topic = self.uri.name
        # Whole batches per partition, then one wait for all: a round trip per batch, not per
        # record, and no per-record future. One deadline covers both, since aiokafka retries
        # a lost broker's batches without end.
        sent: list[tuple[asyncio.Future, int]] = []
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(self.delivery_timeout_s):
                grouped = self._by_partition(records, await producer.partitions_for(topic))
                for partition, group in grouped.items():
                    batch = producer.create_batch()
                    for r in group:
                        if batch.append(key=r.key, value=r.value, timestamp=None) is None:  # full
                            future = await producer.send_batch(batch, topic, partition=partition)
                            sent.append((future, batch.record_count()))
                            batch = producer.create_batch()
                            batch.append(key=r.key, value=r.value, timestamp=None)  # a first record fits
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append((future, batch.record_count()))
                await asyncio.wait([future for future, _ in sent])
        except _BROKER_ERRORS as exc:
            failure = exc
        failed = len(records) - sum(count for _, count in sent)
        for future, count in sent:
            if not future.done():
                # Still queued: it may land later (at-least-once allows that); its result is
                # retrieved then, so asyncio does not log it as never retrieved.
                future.add_done_callback(_retrieve)
                failed += count
            elif future.exception() is not None:
                failed += count
                failure = failure or future.exception()
        if failed:
            if isinstance(failure, asyncio.TimeoutError):
                cause = f"not acknowledged within {self.delivery_timeout_s:g} s"
            else:
                cause = repr(failure)
            raise DataStreamError(
                f"{self.uri}: {failed} of {len(records)} records were not written to Kafka topic "
                f"{topic!r}: {cause}"
            ) from failure

    def _by_partition(self, records: Sequence[OutRecord], known: set[int]) -> dict[int, list[OutRecord]]:
        """Records grouped by partition, in order: the asked one, the key's hash, or one per write.

        Keys hash as every Kafka client does (murmur2 modulo the count), so a key lands where
        other producers put it; keyless records of one write go to one random partition
        together (Kafka's sticky partitioning), which keeps batches large.

        Raises:
            DataStreamError: a record asks for a partition the topic lacks; nothing is sent.
        """
        partitions = sorted(known)
        bad = sorted({r.partition for r in records if r.partition is not None and r.partition not in known})
        if bad:
            raise DataStreamError(
                f"{self.uri}: no partition {bad[0]} in topic {self.uri.name!r}; it has "
                f"{len(partitions)} (0..{len(partitions) - 1}); nothing of this write was sent"
            )
        sticky = random.choice(partitions)
        grouped: dict[int, list[OutRecord]] = {}
        for r in records:
            if r.partition is not None:
                partition = r.partition
            elif r.key is not None:
                partition = partitions[(murmur2(r.key) & 0x7FFFFFFF) % len(partitions)]
            else:
                partition = sticky
            grouped.setdefault(partition, []).append(r)
        return grouped

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
