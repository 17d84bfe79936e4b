"""The memory broker and the memory:// connector against a real coordinator process (no workers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import grpc
import pytest
from xpipe._proto import stream_pb2, stream_pb2_grpc
from xpipe.errors import DataStreamError
from xpipe.streams._connectors import OutRecord, connector_for
from xpipe.streams._connectors import _memory
from xpipe.streams._memory_limits import MAX_RECORD_BYTES
from xpipe.streams._records import partition_of
from xpipe.streams._uri import parse_uri

from tests.harness import Cluster, SecureSetup, free_port

memory = _memory.MemoryConnector()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("memory"), workers=0) as cluster:
        yield cluster


@pytest.fixture
def configured(coordinator):
    _memory.configure(coordinator.address)
    yield coordinator
    _memory.configure(None)


async def drain(source, want: int, timeout_s: float = 20.0) -> list:
    """Fetch until ``want`` records came (or the deadline passed)."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += await source.fetch(500, 1.0)
    return got


def test_registry_gives_the_memory_connector():
    assert type(connector_for("memory://x")).__name__ == "MemoryConnector"


def test_thousand_keyed_records_over_four_partitions_read_by_two_sources(configured, broker_ns):
    uri = parse_uri(f"memory://{broker_ns}.keyed")
    sent = [OutRecord(json.dumps({"i": i}).encode(), key=f"user-{i % 37}".encode()) for i in range(1000)]

    async def main():
        assert await memory.ensure(uri, partitions=4) == 4
        assert await memory.partitions(uri) == 4
        sink = memory.sink(uri)
        await sink.start()
        for i in range(0, 1000, 100):
            await sink.write(sent[i : i + 100])
        await sink.stop()
        a = memory.source(uri, group="g", partitions=[0, 2])
        b = memory.source(uri, group="g", partitions=[1, 3])
        await a.start(), await b.start()
        got_a, got_b = await drain(a, sum(partition_of(r.key, 4) in (0, 2) for r in sent)), await drain(b, 1)
        got_b += await drain(b, 1000 - len(got_a) - len(got_b))
        await a.stop(), await b.stop()
        return got_a, got_b

    got_a, got_b = asyncio.run(main())
    assert {m.partition for m in got_a} == {0, 2} and {m.partition for m in got_b} == {1, 3}
    assert Counter(m.value for m in got_a + got_b) == Counter(r.value for r in sent)
    for p in range(4):
        read = [m.value for m in got_a + got_b if m.partition == p]
        assert read == [r.value for r in sent if partition_of(r.key, 4) == p], f"partition {p} out of order"
        assert [m.seq for m in got_a + got_b if m.partition == p] == list(range(len(read)))


def test_restart_continues_after_the_last_commit_and_lag_counts_the_rest(configured, broker_ns):
    uri = parse_uri(f"memory://{broker_ns}.restart")

    async def main():
        sink = memory.sink(uri)
        await sink.start()
        await sink.write([OutRecord(b"%d" % i) for i in range(100)])
        await sink.stop()
        first = memory.source(uri, group="g", partitions=None)
        await first.start()
        got = await drain(first, 100)
        assert [m.value for m in got] == [b"%d" % i for i in range(100)]
        assert await first.lag() == 100
        await first.commit({0: got[49]})
        lag = await first.lag()
        await first.stop()
        again = memory.source(uri, group="g", partitions=[0])
        await again.start()
        rest = await drain(again, 50)
        await again.commit({0: rest[-1]})
        return lag, rest, await again.lag()

    lag, rest, lag_after = asyncio.run(main())
    assert lag == 50
    assert [m.value for m in rest] == [b"%d" % i for i in range(50, 100)]  # record 51 first
    assert lag_after == 0


def test_long_poll_wakes_on_produce(configured, broker_ns):
    stream = f"{broker_ns}.poll"

    async def main():
        async with grpc.aio.insecure_channel(configured.address) as channel:
            stub = stream_pb2_grpc.StreamServiceStub(channel)
            # A stream nobody produced to yet: the fetch waits its wait_ms and answers empty.
            started = time.monotonic()
            empty = await stub.Fetch(stream_pb2.FetchRequest(stream=stream, group="g", from_committed=True, wait_ms=300))
            waited_s = time.monotonic() - started
            wakes = []
            for i in range(5):
                poll = asyncio.ensure_future(
                    stub.Fetch(stream_pb2.FetchRequest(stream=stream, group="g", from_offset=i, wait_ms=2000))
                )
                done, _ = await asyncio.wait([poll], timeout=0.2)
                assert not done, "the fetch answered before any record was produced"
                await stub.Produce(stream_pb2.ProduceRequest(stream=stream, records=[stream_pb2.StreamRecord(value=b"x")]))
                produced = time.monotonic()
                answer = await poll
                wakes.append(time.monotonic() - produced)
                assert [r.offset for r in answer.records] == [i]
            return empty, waited_s, wakes

    empty, waited_s, wakes = asyncio.run(main())
    assert list(empty.records) == [] and waited_s >= 0.29
    print(f"long-poll wake after produce: max {max(wakes) * 1000:.1f} ms, all {[round(w * 1000, 1) for w in wakes]}")
    assert max(wakes) < 0.25, wakes  # measured ~1-3 ms on loopback; generous for a loaded 2-core machine


@pytest.mark.parametrize(
    ("method", "request_", "code", "text"),
    [
        ("Produce", stream_pb2.ProduceRequest(stream="", records=[stream_pb2.StreamRecord(value=b"v")]), "INVALID_ARGUMENT", "stream is empty"),
        ("Produce", stream_pb2.ProduceRequest(stream="n" * 256), "INVALID_ARGUMENT", "has 256 characters; the limit is 255"),
        ("Produce", stream_pb2.ProduceRequest(stream="{ns}.bad", records=[stream_pb2.StreamRecord(value=b"v", partition=3)], partitions=2), "INVALID_ARGUMENT", "records[0].partition 3 is out of range"),
        ("Produce", stream_pb2.ProduceRequest(stream="{ns}.bad", records=[stream_pb2.StreamRecord(value=b"v" * (MAX_RECORD_BYTES + 1))]), "INVALID_ARGUMENT", f"limit is {MAX_RECORD_BYTES}"),
        ("Fetch", stream_pb2.FetchRequest(stream="{ns}.have", group="g", partition=1, from_committed=True), "INVALID_ARGUMENT", "partition 1 is out of range"),
        ("Fetch", stream_pb2.FetchRequest(stream="{ns}.have", group="g", from_offset=7), "OUT_OF_RANGE", "from_offset 7 is past the end 1"),
        ("Commit", stream_pb2.CommitRequest(stream="{ns}.absent", group="g", offset=1), "NOT_FOUND", "does not exist"),
        ("Commit", stream_pb2.CommitRequest(stream="{ns}.have", group="g", offset=5), "INVALID_ARGUMENT", "offset 5 is past the end 1"),
        ("DescribeStream", stream_pb2.DescribeStreamRequest(stream="{ns}.x", create_partitions=5000), "INVALID_ARGUMENT", "create_partitions 5000"),
    ],
)
def test_bad_input_gets_a_code_naming_the_field(coordinator, broker_ns, method, request_, code, text):
    request_ = type(request_).FromString(request_.SerializeToString())
    request_.stream = request_.stream.replace("{ns}", broker_ns)

    async def main():
        async with grpc.aio.insecure_channel(coordinator.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            stub = stream_pb2_grpc.StreamServiceStub(channel)
            await stub.Produce(stream_pb2.ProduceRequest(stream=f"{broker_ns}.have", records=[stream_pb2.StreamRecord(value=b"v")]))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(stub, method)(request_, timeout=10)
            after = await stub.DescribeStream(stream_pb2.DescribeStreamRequest(stream=f"{broker_ns}.bad"))
            return caught.value, after

    error, after = asyncio.run(main())
    assert error.code().name == code
    assert text in error.details()
    assert not after.exists  # a refused produce created nothing


def test_connector_errors_name_the_problem(configured, broker_ns, monkeypatch):
    uri = parse_uri(f"memory://{broker_ns}.errors")

    async def oversize():
        sink = memory.sink(uri)
        await sink.start()
        try:
            await sink.write([OutRecord(b"v" * (MAX_RECORD_BYTES + 1))])
        finally:
            await sink.stop()

    with pytest.raises(DataStreamError, match=rf"memory://{broker_ns}.errors: Produce on coordinator .* INVALID_ARGUMENT"):
        asyncio.run(oversize())
    _memory.configure(None)
    monkeypatch.delenv(_memory.COORDINATOR_ENV, raising=False)
    with pytest.raises(DataStreamError, match="none is configured.*XPIPE_COORDINATOR=HOST:PORT"):
        asyncio.run(memory.check(uri))
    with pytest.raises(DataStreamError, match="bad coordinator address 'nope'"):
        _memory.configure("nope")


def test_environment_and_a_dead_first_address(coordinator, broker_ns, monkeypatch):
    """The worker's environment names the coordinators; a dead one first is skipped (UNAVAILABLE)."""
    monkeypatch.setenv(_memory.COORDINATOR_ENV, f"127.0.0.1:{free_port()},{coordinator.address}")
    uri = parse_uri(f"memory://{broker_ns}.env")

    async def main():
        sink = memory.sink(uri)
        await sink.start()
        await sink.write([OutRecord(b"a"), OutRecord(b"b")])
        await sink.stop()
        source = memory.source(uri, group="g", partitions=None)
        await source.start()
        got = await drain(source, 2)
        await source.stop()
        return [m.value for m in got]

    assert asyncio.run(main()) == [b"a", b"b"]


def test_tokens_worker_role_reads_and_writes_viewer_is_refused(tmp_path, broker_ns):
    setup = SecureSetup(tmp_path, mtls=False)
    uri = parse_uri(f"memory://{broker_ns}.secure")

    async def roundtrip():
        sink = memory.sink(uri)
        await sink.start()
        try:
            await sink.write([OutRecord(b"secret")])
        finally:
            await sink.stop()
        source = memory.source(uri, group="g", partitions=None)
        await source.start()
        try:
            return [m.value for m in await drain(source, 1)]
        finally:
            await source.stop()

    with Cluster(tmp_path, workers=0, security=setup) as cluster:
        try:
            _memory.configure(cluster.address, tls=setup.tls(None), token=setup.tokens["worker"])
            assert asyncio.run(roundtrip()) == [b"secret"]
            _memory.configure(cluster.address, tls=setup.tls(None), token=setup.tokens["viewer"])
            with pytest.raises(DataStreamError, match="PERMISSION_DENIED.*stream:io") as caught:
                asyncio.run(roundtrip())
            assert str(uri) in str(caught.value)
        finally:
            _memory.configure(None)


def test_follows_the_leader_and_a_new_leader_starts_empty(tmp_path, broker_ns):
    """Under HA a follower names the leader; the connector goes there. The broker is the leader's."""
    from tests.integration.test_ha import HACluster

    uri = parse_uri(f"memory://{broker_ns}.ha")

    async def roundtrip(value: bytes) -> list[bytes]:
        sink = memory.sink(uri)
        await sink.start()
        await sink.write([OutRecord(value)])
        await sink.stop()
        source = memory.source(uri, group="g", partitions=None)
        await source.start()
        got = await drain(source, 1)
        await source.stop()
        return [m.value for m in got]

    with HACluster(tmp_path, n=2, ttl_s=2) as ha:
        leader = ha.wait_leader()
        follower = next(a for a in ha.addresses if a != leader)
        try:
            _memory.configure(follower)  # knows only the follower
            assert asyncio.run(roundtrip(b"first")) == [b"first"]
            with grpc.insecure_channel(leader) as channel:  # it is held by the leader
                held = stream_pb2_grpc.StreamServiceStub(channel).DescribeStream(
                    stream_pb2.DescribeStreamRequest(stream=uri.name), timeout=5
                )
            assert list(held.end_offsets) == [1]
            with grpc.insecure_channel(follower) as channel, pytest.raises(grpc.RpcError) as refused:
                stream_pb2_grpc.StreamServiceStub(channel).DescribeStream(
                    stream_pb2.DescribeStreamRequest(stream=uri.name), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and leader in refused.value.details()
            ha.coordinators[leader].terminate()
            new_leader = ha.wait_leader(among=[follower])
            assert new_leader == follower
            _memory.configure(",".join(ha.addresses))  # the dead one first: skipped
            assert asyncio.run(roundtrip(b"second")) == [b"second"]  # the old leader's record is gone
        finally:
            _memory.configure(None)
