"""The NATS JetStream connector on a real nats-server: partitions, durable consumers, at-least-once, lag, failures."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.api import StorageType
from xpipe import DataStreamError
from xpipe.streams._connectors._base import OutRecord, connector_for
from xpipe.streams._connectors._nats import KEY_HEADER, NatsConnector, stream_name
from xpipe.streams._uri import parse_uri

from tests import helpers_connectors as scenarios


def _uri(nats_server, subject: str):
    return parse_uri(nats_server.url(subject))


async def _stream_info(nats_server, name: str):
    nc = await nats.connect(nats_server.server_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().stream_info(name)
    finally:
        await nc.close()


def test_registry_gives_the_nats_connector(nats_server, broker_ns) -> None:
    assert isinstance(connector_for(nats_server.url(broker_ns)), NatsConnector)


def test_stream_name_is_valid_for_jetstream() -> None:
    assert stream_name("app.events-1") == "XP_app_events-1"
    assert stream_name("a.b/c") == "XP_a_b_c"


def test_ensure_and_partitions(nats_server, broker_ns) -> None:
    uri = _uri(nats_server, f"{broker_ns}.out")
    asyncio.run(scenarios.ensure_round_trip(NatsConnector(), uri, _uri(nats_server, f"{broker_ns}.user")))
    info = asyncio.run(_stream_info(nats_server, stream_name(uri.name)))
    assert info.config.subjects == [f"{uri.name}.*"] and info.config.storage == StorageType.FILE


def test_two_sources_split_four_partitions(nats_server, broker_ns) -> None:
    uri = _uri(nats_server, f"{broker_ns}.split")
    asyncio.run(scenarios.two_sources_split(NatsConnector(), uri, f"{broker_ns}-g"))
    info = asyncio.run(_stream_info(nats_server, stream_name(uri.name)))
    assert info.state.messages == 1000


def test_restarted_source_gets_uncommitted_first(nats_server, broker_ns) -> None:
    asyncio.run(
        scenarios.at_least_once(NatsConnector(), _uri(nats_server, f"{broker_ns}.alo"), f"{broker_ns}-g")
    )


def test_lag_counts_uncommitted(nats_server, broker_ns) -> None:
    asyncio.run(scenarios.lag_after(NatsConnector(), _uri(nats_server, f"{broker_ns}.lag"), f"{broker_ns}-g"))


def test_plain_publish_is_read_unchanged(nats_server, broker_ns) -> None:
    uri = _uri(nats_server, f"{broker_ns}.plain")
    payload = json.dumps({"user": "ü", "n": [1, 2]}).encode()

    async def scenario():
        connector = NatsConnector()
        await connector.ensure(uri, partitions=1)
        nc = await nats.connect(nats_server.server_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            ack = await nc.jetstream().publish(uri.name, payload)
            await nc.jetstream().publish(uri.name, b"{}", headers={KEY_HEADER: "user-7"})
        finally:
            await nc.close()
        source = connector.source(uri, group="g", partitions=None)
        await source.start()
        try:
            return ack, await scenarios.drain(source, 2)
        finally:
            await source.stop()

    ack, got = asyncio.run(scenario())
    assert got[0].value == payload and got[0].key is None and got[0].seq == ack.seq
    assert got[0].timestamp_s is not None
    assert got[1].key == b"user-7"


def test_unreachable_fails_in_time(broker_ns) -> None:
    uri = parse_uri(f"nats://127.0.0.1:{scenarios.dead_port()}/{broker_ns}")
    connector = NatsConnector()
    for call in (
        lambda: connector.check(uri, timeout_s=2.0),
        lambda: connector.source(uri, group="g", partitions=None).start(),
        lambda: connector.sink(uri).start(),
        lambda: connector.ensure(uri, partitions=2, timeout_s=2.0),
    ):
        exc, took_s = asyncio.run(scenarios.timed(call, 10.0))
        assert isinstance(exc, DataStreamError), exc
        assert str(uri) in str(exc) and took_s < 3.0  # refused: fails at once, not at the timeout


def test_bad_input_is_named(nats_server, broker_ns) -> None:
    uri = _uri(nats_server, f"{broker_ns}.bad")

    async def scenario() -> None:
        connector = NatsConnector()
        await connector.ensure(uri, partitions=2)
        with pytest.raises(DataStreamError, match="partition 5 out of range; the stream has 2"):
            source = connector.source(uri, group="g", partitions=[5])
            try:
                await source.start()
            finally:
                await source.stop()
        sink = connector.sink(uri)
        await sink.start()
        try:
            with pytest.raises(DataStreamError, match="record 1 is for partition 2, but the stream has 2"):
                await sink.write([OutRecord(b"1", partition=0), OutRecord(b"2", partition=2)])
            with pytest.raises(DataStreamError, match=r"record 0 has a key that is not UTF-8"):
                await sink.write([OutRecord(b"1", b"\xff\xfe", 0)])
        finally:
            await sink.stop()
        with pytest.raises(DataStreamError, match="partitions must be >= 1, got 0"):
            await connector.ensure(uri, partitions=0)

    asyncio.run(scenario())


def test_a_users_own_jetstream_stream_is_used(nats_server, broker_ns) -> None:
    """A subject already captured by the user's stream (``<ns>.>``) is read and written there."""
    uri = _uri(nats_server, f"{broker_ns}.orders")
    mine = f"USR_{broker_ns}"

    async def scenario():
        nc = await nats.connect(nats_server.server_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await js.add_stream(name=mine, subjects=[f"{broker_ns}.>"])
            await js.publish(uri.name, b'{"n": 1}')
            connector = NatsConnector()
            assert await connector.partitions(uri) == 1
            sink = connector.sink(uri)
            await sink.start()
            await sink.write([OutRecord(b'{"n": 2}', b"k")])
            await sink.stop()
            source = connector.source(uri, group="g", partitions=None)
            await source.start()
            try:
                got = await scenarios.drain(source, 2)
            finally:
                await source.stop()
            return got, (await js.stream_info(mine)).state.messages
        finally:
            await nc.close()

    got, held = asyncio.run(scenario())
    assert [(m.value, m.key) for m in got] == [(b'{"n": 1}', None), (b'{"n": 2}', b"k")]
    assert held == 2


def test_write_reports_records_not_taken(nats_server, broker_ns) -> None:
    """The stream is deleted under a started sink: no stream takes the subject, write fails naming it."""
    uri = _uri(nats_server, f"{broker_ns}.gone")

    async def scenario() -> None:
        sink = NatsConnector().sink(uri)
        await sink.start()
        try:
            await sink.write([OutRecord(b"1")])
            nc = await nats.connect(nats_server.server_url, connect_timeout=5, max_reconnect_attempts=0)
            await nc.jetstream().delete_stream(stream_name(uri.name))
            await nc.close()
            with pytest.raises(DataStreamError, match=rf"{uri}: 2 of 2 records not written; record 0: "):
                await sink.write([OutRecord(b"2"), OutRecord(b"3")])
        finally:
            await sink.stop()

    asyncio.run(scenario())


def test_colliding_stream_names_fail_clearly(nats_server, broker_ns) -> None:
    """``<ns>.x`` and ``<ns>_x`` map to one JetStream name: the second is refused, naming both."""

    async def scenario() -> None:
        connector = NatsConnector()
        assert await connector.ensure(_uri(nats_server, f"{broker_ns}.x"), partitions=2) == 2
        other = _uri(nats_server, f"{broker_ns}_x")
        assert await connector.partitions(other) == 1  # not the first one's count
        with pytest.raises(
            DataStreamError, match=rf"cannot create JetStream stream XP_.* for subject '{other.name}'"
        ):
            await connector.ensure(other, partitions=1)

    asyncio.run(scenario())


def test_restart_during_a_long_poll_loses_nothing(nats_server, broker_ns) -> None:
    uri = _uri(nats_server, f"{broker_ns}.poll")
    asyncio.run(scenarios.restart_during_long_poll(NatsConnector(), uri, f"{broker_ns}-g"))
