"""The Kafka connector against a real Kafka (KRaft) on loopback.

Each test keeps one rule of ``xpipe.streams._connectors._base``: topics are created with
the asked partition count and keep it; sources split partitions and together read exactly
what was written, in order per partition; commits are at-least-once (what was not
committed is read again by the next source of the group); lag counts what is not
committed; an unreachable or lost broker is a ``DataStreamError`` naming the URI, in
bounded time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict

import pytest

from xpipe import DataStreamError
from xpipe.streams._connectors._base import Message, OutRecord, connector_for
from xpipe.streams._connectors._kafka import KafkaConnector, KafkaSink, KafkaSource
from xpipe.streams._uri import StreamURI, parse_uri

pytestmark = pytest.mark.timeout(60)


async def _read(source: KafkaSource, count: int, *, timeout_s: float = 20.0) -> list[Message]:
    """Fetch until ``count`` records came, failing the test after ``timeout_s``."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        assert time.monotonic() < deadline, f"read {len(got)} of {count} records in {timeout_s} s"
        got += await source.fetch(min(500, count - len(got)), 0.5)
    return got


async def _write_keyed(uri: StreamURI, count: int) -> list[OutRecord]:
    records = [OutRecord(f"r{i}".encode(), key=f"k{i % 37}".encode()) for i in range(count)]
    sink = connector_for(uri).sink(uri)
    await sink.start()
    try:
        for i in range(0, count, 250):
            await sink.write(records[i : i + 250])
    finally:
        await sink.stop()
    return records


def test_the_registry_serves_kafka_uris_with_this_connector(kafka_server, broker_ns) -> None:
    assert isinstance(connector_for(kafka_server.url(f"{broker_ns}.t")), KafkaConnector)


def test_ensure_creates_partitions_and_a_second_ensure_keeps_the_count(kafka_server, broker_ns) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.events"))
    kafka = connector_for(uri)

    async def main() -> tuple[int, ...]:
        absent = await kafka.partitions(uri)
        created = await kafka.ensure(uri, partitions=3)
        read = await kafka.partitions(uri)
        again = await kafka.ensure(uri, partitions=5)
        return absent, created, read, again

    # partitions() of an absent topic is 1 and must not auto-create it with the broker's default.
    assert asyncio.run(main()) == (1, 3, 3, 3)
    with pytest.raises(DataStreamError, match=r"partitions must be at least 1, got 0"):
        asyncio.run(kafka.ensure(uri, partitions=0))


def test_a_topic_kafka_refuses_is_an_error_naming_it_and_kafkas_reason(kafka_server, broker_ns) -> None:
    kafka = KafkaConnector()
    underscore = parse_uri(kafka_server.url(f"{broker_ns}_x"))
    dot = parse_uri(kafka_server.url(f"{broker_ns}.x"))  # Kafka forbids names differing only in . and _
    assert asyncio.run(kafka.ensure(underscore, partitions=2)) == 2
    refused = f"{dot}: Kafka refused to create topic '{dot.name}' with 2 partitions: InvalidTopicError:"
    expected = re.escape(refused)
    expected += ".*collides"
    with pytest.raises(DataStreamError, match=expected):
        asyncio.run(kafka.ensure(dot, partitions=2))


def test_two_sources_on_split_partitions_read_exactly_what_was_written_in_order(
    kafka_server, broker_ns
) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.keyed"))
    kafka = connector_for(uri)
    group = f"{broker_ns}-g"

    async def main() -> tuple[list[OutRecord], list[Message], list[Message]]:
        assert await kafka.ensure(uri, partitions=4) == 4
        written = await _write_keyed(uri, 1000)
        even = kafka.source(uri, group=group, partitions=[0, 2])
        odd = kafka.source(uri, group=group, partitions=[3, 1])
        await even.start()
        await odd.start()
        try:
            # Both fetch at once; together they hold all 1,000, and neither sees the other's partitions.
            got_even: list[Message] = []
            got_odd: list[Message] = []
            deadline = time.monotonic() + 20
            while len(got_even) + len(got_odd) < 1000:
                assert time.monotonic() < deadline, f"read {len(got_even) + len(got_odd)} of 1000"
                a, b = await asyncio.gather(even.fetch(300, 0.3), odd.fetch(300, 0.3))
                got_even += a
                got_odd += b
            assert await even.fetch(100, 0.3) == [] and await odd.fetch(100, 0.3) == []
            return written, got_even, got_odd
        finally:
            await even.stop()
            await odd.stop()

    written, got_even, got_odd = asyncio.run(main())
    assert {m.partition for m in got_even} == {0, 2} and {m.partition for m in got_odd} == {1, 3}
    everything = got_even + got_odd
    assert Counter((m.key, m.value) for m in everything) == Counter((r.key, r.value) for r in written)
    by_partition: dict[int, list[Message]] = defaultdict(list)
    for m in everything:
        by_partition[m.partition].append(m)
    for partition, messages in by_partition.items():
        # Order within a partition is write order: offsets run 0.. and record numbers grow.
        assert [m.offset for m in messages] == list(range(len(messages))), partition
        assert [m.seq for m in messages] == [m.offset for m in messages]
        numbers = [int(m.value[1:]) for m in messages]
        assert numbers == sorted(numbers), partition
    # A key lands where every Kafka client puts it (aiokafka's own partitioner, murmur2).
    from aiokafka.partitioner import DefaultPartitioner

    assert all(m.partition == DefaultPartitioner()(m.key, [0, 1, 2, 3], [0, 1, 2, 3]) for m in everything)
    assert all(m.timestamp_s is not None and abs(m.timestamp_s - time.time()) < 300 for m in everything)


def test_a_new_source_of_the_group_rereads_what_was_not_committed(kafka_server, broker_ns) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.alo"))
    kafka = connector_for(uri)
    group = f"{broker_ns}-g"

    async def main() -> tuple[list[Message], list[Message], int | None]:
        await kafka.ensure(uri, partitions=1)
        await _write_keyed(uri, 100)
        first = kafka.source(uri, group=group, partitions=None)
        await first.start()
        try:
            read = await _read(first, 100)
            await first.commit({0: read[49]})
        finally:
            await first.stop()
        again = kafka.source(uri, group=group, partitions=[0])
        await again.start()
        try:
            reread = await _read(again, 50)
            lag = await again.lag()
            assert await again.fetch(10, 0.3) == []
        finally:
            await again.stop()
        return read, reread, lag

    read, reread, lag = asyncio.run(main())
    assert [m.value for m in read] == [f"r{i}".encode() for i in range(100)]
    assert [m.value for m in reread] == [f"r{i}".encode() for i in range(50, 100)]
    assert [m.seq for m in reread] == [m.offset for m in reread] == list(range(50, 100))
    assert lag == 50


def test_lag_is_written_minus_committed(kafka_server, broker_ns) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.lag"))
    kafka = connector_for(uri)
    group = f"{broker_ns}-g"

    async def main() -> list[int | None]:
        await kafka.ensure(uri, partitions=2)
        await _write_keyed(uri, 300)
        source = kafka.source(uri, group=group, partitions=None)
        await source.start()
        try:
            lags = [await source.lag()]  # nothing committed: all 300
            read = await _read(source, 300)
            last: dict[int, Message] = {}
            for m in read[:120]:
                last[m.partition] = m
            committed = sum(m.offset + 1 for m in last.values())
            await source.commit(last)
            lags += [await source.lag(), 300 - committed]
            await source.commit({m.partition: m for m in read})
            lags.append(await source.lag())
            return lags
        finally:
            await source.stop()
            await source.stop()  # twice is fine

    before, after, expected, done = asyncio.run(main())
    assert (before, after, done) == (300, expected, 0)


def test_writing_to_a_partition_the_topic_lacks_fails_naming_it_and_sends_nothing(
    kafka_server, broker_ns
) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.parts"))
    kafka = connector_for(uri)

    async def main() -> list[Message]:
        await kafka.ensure(uri, partitions=2)
        sink = kafka.sink(uri)
        await sink.start()
        try:
            await sink.write([OutRecord(b"a", partition=1), OutRecord(b"b", partition=0)])
            expected = rf"{uri}: no partition 7 in topic '{uri.name}'; it has 2"
            with pytest.raises(DataStreamError, match=expected):
                await sink.write([OutRecord(b"c", partition=1), OutRecord(b"d", partition=7)])
        finally:
            await sink.stop()
        source = kafka.source(uri, group="g", partitions=None)
        await source.start()
        try:
            read = await _read(source, 2)
            assert await source.fetch(10, 0.3) == []
            return read
        finally:
            await source.stop()

    assert sorted((m.partition, m.value) for m in asyncio.run(main())) == [(0, b"b"), (1, b"a")]


@pytest.mark.parametrize("what", ["check", "source", "sink"])
def test_an_unreachable_broker_fails_fast_naming_the_uri(what: str) -> None:
    from tests.harness import free_port

    port = free_port()  # nothing listens there
    uri = parse_uri(f"kafka://127.0.0.1:{port}/t")
    kafka = connector_for(uri)

    async def attempt() -> None:
        if what == "check":
            await kafka.check(uri, timeout_s=3.0)
            return
        if what == "source":
            part = kafka.source(uri, group="g", partitions=None, start_timeout_s=3.0)
        else:
            part = kafka.sink(uri, start_timeout_s=3.0)
        try:
            await part.start()
        finally:
            await part.stop()
            await part.stop()

    started = time.monotonic()
    expected = rf"^kafka://127\.0\.0\.1:{port}/t: cannot reach Kafka at 127\.0\.0\.1:{port}: "
    with pytest.raises(DataStreamError, match=expected):
        asyncio.run(attempt())
    assert time.monotonic() - started < 3.0 + 1.0


def test_use_before_start_is_a_clear_error(kafka_server, broker_ns) -> None:
    uri = parse_uri(kafka_server.url(f"{broker_ns}.unstarted"))
    source, sink = KafkaSource(uri, group="g", partitions=[0]), KafkaSink(uri)
    with pytest.raises(DataStreamError, match=r"the Kafka source is not started"):
        asyncio.run(source.fetch(1, 0.1))
    with pytest.raises(DataStreamError, match=r"the Kafka sink is not started"):
        asyncio.run(sink.write([OutRecord(b"x")]))
    with pytest.raises(DataStreamError, match=r"partitions must be >= 0, got \[-1, 0\]"):
        KafkaSource(uri, group="g", partitions=[0, -1])


def test_a_lost_broker_fails_write_naming_the_topic_and_the_sink_recovers_after(tmp_path) -> None:
    """SIGKILL the broker under a started sink and source: write raises in bounded time, lag is
    unknown, and once the broker is back the same sink writes and the source reads on."""
    from tests.helpers_brokers import BrokerMissing, KafkaServer, missing_broker

    try:
        server = KafkaServer(tmp_path)
    except BrokerMissing as exc:
        missing_broker(exc)
    with server:
        uri = parse_uri(server.url("lost"))
        kafka = connector_for(uri)

        async def main() -> tuple[float, int | None, list[Message]]:
            await kafka.ensure(uri, partitions=1)
            sink = kafka.sink(uri, delivery_timeout_s=3.0)
            source = kafka.source(uri, group="g", partitions=[0], start_timeout_s=3.0)
            await sink.start()
            await source.start()
            try:
                await sink.write([OutRecord(f"before{i}".encode()) for i in range(10)])
                assert len(await _read(source, 10)) == 10
                await asyncio.to_thread(server.kill)
                started = time.monotonic()
                expected = (
                    rf"^{uri}: 5 of 5 records were not written to Kafka topic 'lost': "
                    r"not acknowledged within 3 s$"
                )
                with pytest.raises(DataStreamError, match=expected):
                    await sink.write([OutRecord(f"lost{i}".encode()) for i in range(5)])
                failed_after_s = time.monotonic() - started
                lag = await source.lag()
                await asyncio.to_thread(server.start)
                await sink.write([OutRecord(f"after{i}".encode()) for i in range(10)])
                # The failed write's records may land once the broker is back: read past them.
                after: list[Message] = []
                deadline = time.monotonic() + 30
                while sum(not m.value.startswith(b"lost") for m in after) < 10:
                    assert time.monotonic() < deadline, f"read {[m.value for m in after]}"
                    after += await source.fetch(100, 0.5)
                return failed_after_s, lag, after
            finally:
                await source.stop()
                await sink.stop()

        failed_after_s, lag, after = asyncio.run(main())
    assert failed_after_s < 3.0 + 2.0
    assert lag is None
    # At-least-once: a write that failed may still have landed; what was acknowledged follows in order.
    acknowledged = [m.value for m in after if not m.value.startswith(b"lost")]
    assert acknowledged == [f"after{i}".encode() for i in range(10)]
