"""Scenarios every broker connector passes, run by each broker's test module on its real server.

Each scenario takes the connector and a URI on a fresh namespace, drives the
``Connector``/``Source``/``Sink`` interface the stream runtime uses, and asserts the rules
of ``xpipe.streams._connectors._base``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

from xpipe.streams._connectors._base import Connector, Message, OutRecord, Source
from xpipe.streams._uri import StreamURI


async def drain(source: Source, want: int, *, timeout_s: float = 10.0, batch: int = 200) -> list[Message]:
    """Fetch until ``want`` records came, or fail after ``timeout_s``."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want:
        assert time.monotonic() < deadline, f"got {len(out)} of {want} records in {timeout_s} s"
        out += await source.fetch(batch, 0.2)
    return out


async def ensure_round_trip(connector: Connector, uri: StreamURI, user_uri: StreamURI) -> None:
    assert await connector.partitions(uri) == 1  # does not exist yet
    assert await connector.ensure(uri, partitions=4) == 4
    assert await connector.partitions(uri) == 4
    assert await connector.ensure(uri, partitions=2) == 4  # the first count stays
    assert await connector.partitions(user_uri) == 1


def _keyed(n: int, partitions: int) -> list[OutRecord]:
    return [OutRecord(f'{{"i": {i}}}'.encode(), f"k{i % 7}".encode(), i % partitions) for i in range(n)]


async def two_sources_split(connector: Connector, uri: StreamURI, group: str) -> None:
    await connector.ensure(uri, partitions=4)
    records = _keyed(1000, 4)
    sink = connector.sink(uri)
    await sink.start()
    try:
        for i in range(0, len(records), 250):
            await sink.write(records[i : i + 250])
    finally:
        await sink.stop()
    a = connector.source(uri, group=group, partitions=[0, 2])
    b = connector.source(uri, group=group, partitions=[1, 3])
    await a.start()
    await b.start()
    try:
        got_a, got_b = await asyncio.gather(drain(a, 500), drain(b, 500))
        assert await a.fetch(10, 0.2) == [] and await b.fetch(10, 0.2) == []
        assert await a.lag() == 500
        await a.commit({m.partition: m for m in got_a})  # the last of each partition
        await b.commit({m.partition: m for m in got_b})
        assert await a.lag() == 0 and await b.lag() == 0
    finally:
        await a.stop()
        await b.stop()
    assert {m.partition for m in got_a} == {0, 2} and {m.partition for m in got_b} == {1, 3}
    got = got_a + got_b
    assert Counter((m.value, m.key) for m in got) == Counter((r.value, r.key) for r in records)
    for p in range(4):
        mine = [m for m in got if m.partition == p]
        assert [m.value for m in mine] == [r.value for r in records if r.partition == p]
        assert [m.seq for m in mine] == sorted(m.seq for m in mine)


async def at_least_once(connector: Connector, uri: StreamURI, group: str) -> None:
    records = [OutRecord(f'{{"i": {i}}}'.encode()) for i in range(100)]
    sink = connector.sink(uri)
    await sink.start()
    await sink.write(records)
    await sink.stop()
    first = connector.source(uri, group=group, partitions=None)
    await first.start()
    try:
        got = await drain(first, 100, batch=30)
        assert [m.value for m in got] == [r.value for r in records]
        await first.commit({0: got[49]})
    finally:
        await first.stop()
    await first.stop()  # twice is fine
    second = connector.source(uri, group=group, partitions=[0])
    await second.start()
    try:
        again = await drain(second, 50, batch=30)
        assert [m.value for m in again] == [r.value for r in records[50:]]
        assert [m.seq for m in again] == [m.seq for m in got[50:]]
        await second.commit({0: again[-1]})
        assert await second.fetch(10, 0.2) == []
        assert await second.lag() == 0
    finally:
        await second.stop()


async def lag_after(connector: Connector, uri: StreamURI, group: str) -> None:
    source = connector.source(uri, group=group, partitions=None)
    await source.start()
    sink = connector.sink(uri)
    await sink.start()
    try:
        assert await source.lag() == 0
        await sink.write([OutRecord(b'{"n": %d}' % i) for i in range(40)])
        assert await source.lag() == 40
        got = await drain(source, 40)
        assert await source.lag() == 40  # fetched is not committed
        await source.commit({0: got[14]})
        assert await source.lag() == 25
        await source.commit({0: got[-1]})
        assert await source.lag() == 0
    finally:
        await sink.stop()
        await source.stop()


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed, by us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def timed(call, limit_s: float) -> tuple[BaseException | None, float]:
    """Run ``call()``; return what it raised and how long it took, failing past ``limit_s``."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(call(), limit_s + 5)
    except BaseException as exc:  # noqa: BLE001 - the caller asserts the type
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def restart_during_long_poll(connector: Connector, uri: StreamURI, group: str) -> None:
    """A source stopped while its long poll waits: its successor gets what comes next at once."""
    first = connector.source(uri, group=group, partitions=None)
    await first.start()
    try:
        assert await first.fetch(10, 0.5) == []
        poll = asyncio.ensure_future(first.fetch(10, 20.0))  # still waiting when stopped
        await asyncio.wait({poll}, timeout=0.3)
        assert not poll.done()
    finally:
        await first.stop()
    poll.cancel()
    second = connector.source(uri, group=group, partitions=None)
    await second.start()
    sink = connector.sink(uri)
    await sink.start()
    try:
        await sink.write([OutRecord(b'{"after": 1}')])
        started = time.monotonic()
        got = await drain(second, 1, timeout_s=10.0)
        assert [m.value for m in got] == [b'{"after": 1}'] and time.monotonic() - started < 3.0
    finally:
        await sink.stop()
        await second.stop()
