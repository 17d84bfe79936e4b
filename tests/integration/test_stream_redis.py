"""The Redis Streams connector on a real redis-server: partitions, groups, at-least-once, lag, failures."""

from __future__ import annotations

import asyncio
import json

import pytest
from xpipe import DataStreamError
from xpipe.streams._connectors._base import OutRecord, connector_for
from xpipe.streams._connectors._redis import PARTITIONS_HASH, RedisConnector, partition_key
from xpipe.streams._uri import parse_uri

from tests import helpers_connectors as scenarios


def _uri(redis_server, key: str, db: int = 0):
    return parse_uri(redis_server.url(key, db))


def test_registry_gives_the_redis_connector(redis_server, broker_ns) -> None:
    assert isinstance(connector_for(redis_server.url(broker_ns)), RedisConnector)


def test_ensure_and_partitions(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.out")
    asyncio.run(scenarios.ensure_round_trip(RedisConnector(), uri, _uri(redis_server, f"{broker_ns}.user")))
    with redis_server.client() as client:
        assert client.hget(PARTITIONS_HASH, uri.name) == b"4"


def test_two_sources_split_four_partitions(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.split")
    asyncio.run(scenarios.two_sources_split(RedisConnector(), uri, f"{broker_ns}-g"))
    with redis_server.client() as client:
        assert [client.xlen(partition_key(uri.name, p, 4)) for p in range(4)] == [250] * 4
        assert client.xinfo_groups(f"{uri.name}:0")[0]["pending"] == 0  # all committed


def test_restarted_source_gets_uncommitted_first(redis_server, broker_ns) -> None:
    asyncio.run(
        scenarios.at_least_once(RedisConnector(), _uri(redis_server, f"{broker_ns}.alo"), f"{broker_ns}-g")
    )


def test_lag_counts_uncommitted(redis_server, broker_ns) -> None:
    asyncio.run(
        scenarios.lag_after(RedisConnector(), _uri(redis_server, f"{broker_ns}.lag"), f"{broker_ns}-g")
    )


def test_db_in_uri_is_used(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.db", db=3)

    async def write() -> None:
        sink = RedisConnector().sink(uri)
        await sink.start()
        await sink.write([OutRecord(b'{"a": 1}', b"k")])
        await sink.stop()

    asyncio.run(write())
    with redis_server.client(db=3) as client3, redis_server.client() as client0:
        [(_, fields)] = client3.xrange(uri.name)
        assert fields == {b"data": b'{"a": 1}', b"key": b"k"}
        assert client0.exists(uri.name) == 0


def test_plain_xadd_is_read_unchanged(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.plain")
    payload = json.dumps({"user": "ü", "n": [1, 2]}).encode()
    with redis_server.client() as client:
        first = client.xadd(uri.name, {"data": payload}).decode()
        client.xadd(uri.name, {"other": "x", "n": "2"})  # not an xpipe record: no `data`

    async def read():
        source = RedisConnector().source(uri, group="g", partitions=None)
        await source.start()
        try:
            return await scenarios.drain(source, 2)
        finally:
            await source.stop()

    got = asyncio.run(read())
    assert got[0].value == payload and got[0].key is None and got[0].offset == first
    ms, seq = first.split("-")
    assert got[0].seq == int(ms) * 1_000_000 + int(seq) and got[0].timestamp_s == int(ms) / 1000
    assert json.loads(got[1].value) == {"other": "x", "n": "2"}


def test_unreachable_fails_in_time(broker_ns) -> None:
    uri = parse_uri(f"redis://127.0.0.1:{scenarios.dead_port()}/{broker_ns}")
    connector = RedisConnector()
    for call in (
        lambda: connector.check(uri, timeout_s=2.0),
        lambda: connector.source(uri, group="g", partitions=None).start(),
        lambda: connector.sink(uri).start(),
        lambda: connector.ensure(uri, partitions=2, timeout_s=2.0),
    ):
        exc, took_s = asyncio.run(scenarios.timed(call, 10.0))
        assert isinstance(exc, DataStreamError), exc
        assert str(uri) in str(exc) and took_s < 3.0  # refused: fails at once, not at the timeout


def test_bad_partitions_are_named(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.bad")

    async def scenario() -> None:
        connector = RedisConnector()
        await connector.ensure(uri, partitions=2)
        with pytest.raises(DataStreamError, match="partition 5 out of range; the stream has 2"):
            await connector.source(uri, group="g", partitions=[5]).start()
        sink = connector.sink(uri)
        await sink.start()
        with pytest.raises(DataStreamError, match="record 1 is for partition 2, but the stream has 2"):
            await sink.write([OutRecord(b"1", partition=0), OutRecord(b"2", partition=2)])
        await sink.stop()
        with pytest.raises(DataStreamError, match="partitions must be >= 1, got 0"):
            await connector.ensure(uri, partitions=0)

    asyncio.run(scenario())


def test_write_reports_a_rejected_record(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.wrongtype")
    with redis_server.client() as client:
        client.set(uri.name, "a string, not a stream")

    async def scenario() -> None:
        sink = RedisConnector().sink(uri)
        await sink.start()
        try:
            with pytest.raises(DataStreamError, match=r"2 of 2 records not written; record 0: WRONGTYPE"):
                await sink.write([OutRecord(b"1"), OutRecord(b"2")])
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_restart_during_a_long_poll_loses_nothing(redis_server, broker_ns) -> None:
    uri = _uri(redis_server, f"{broker_ns}.poll")
    asyncio.run(scenarios.restart_during_long_poll(RedisConnector(), uri, f"{broker_ns}-g"))
