"""The real brokers of the stream tests: each one produces and consumes, namespaces stay apart.

Kafka through ``aiokafka`` with a consumer group and a commit, Redis Streams with
``XADD``/``XREADGROUP``/``XACK`` on the field ``data``, NATS JetStream with a durable
pull consumer and acks: the calls the stream runtime makes. Also the failure paths of
the helpers: a missing broker, a server that cannot start, a Kafka that is not fetched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, SESSION_PIDS, assert_no_leaks
from tests.helpers_brokers import (
    BrokerMissing,
    KafkaServer,
    NatsServer,
    RedisServer,
    find_kafka_libs,
    find_program,
    missing_broker,
    new_namespace,
)

_RECORDS = [{"id": i, "user": f"u{i % 2}"} for i in range(5)]
# Namespaces seen by test_namespaces_are_fresh, across its parametrized runs.
_SEEN_NAMESPACES: dict[str, list[str]] = {}


def _encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


# --------------------------------------------------------------------------- Kafka


async def _kafka_produce(bootstrap: str, topic: str, records: list[dict]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await producer.start()
        for record in records:
            await producer.send(topic, _encode(record), key=record["user"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _kafka_consume_all(bootstrap: str, topic: str, group: str, expected: int) -> list[dict]:
    """Read ``topic`` from the start in ``group`` until ``expected`` records or end; commit."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    got: list[dict] = []
    try:
        await consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        while len(got) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            got += [json.loads(m.value) for msgs in batches.values() for m in msgs]
        # Drain anything beyond `expected` (a shared namespace would show up here).
        for msgs in (await consumer.getmany(timeout_ms=300)).values():
            got += [json.loads(m.value) for m in msgs]
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _kafka_committed(bootstrap: str, topic: str, group: str) -> int | None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


def test_kafka_group_consumes_and_commits(kafka_server, broker_ns) -> None:
    topic, group = f"{broker_ns}.events", f"{broker_ns}-group"
    asyncio.run(_kafka_produce(kafka_server.bootstrap, topic, _RECORDS))

    got = asyncio.run(_kafka_consume_all(kafka_server.bootstrap, topic, group, len(_RECORDS)))

    assert got == _RECORDS  # one partition: order kept
    assert asyncio.run(_kafka_committed(kafka_server.bootstrap, topic, group)) == len(_RECORDS)
    # The group resumes after its commit: a second consumer sees only what comes next.
    asyncio.run(_kafka_produce(kafka_server.bootstrap, topic, [{"id": 99, "user": "u9"}]))
    assert asyncio.run(_kafka_consume_all(kafka_server.bootstrap, topic, group, 1)) == [
        {"id": 99, "user": "u9"}
    ]


# --------------------------------------------------------------------------- Redis


def test_redis_stream_group_reads_and_acks(redis_server, broker_ns) -> None:
    key, group = f"{broker_ns}.events", f"{broker_ns}-group"
    with redis_server.client() as client:
        for record in _RECORDS:
            client.xadd(key, {"data": _encode(record)})
        client.xgroup_create(key, group, id="0")

        reply = client.xreadgroup(group, "c1", {key: ">"}, count=100, block=2000)
        [(stream, entries)] = reply
        assert stream == key.encode()
        assert [json.loads(fields[b"data"]) for _, fields in entries] == _RECORDS
        assert client.xpending(key, group)["pending"] == len(_RECORDS)  # read, not yet acked

        assert client.xack(key, group, *[entry_id for entry_id, _ in entries]) == len(_RECORDS)
        assert client.xpending(key, group)["pending"] == 0
        assert client.xreadgroup(group, "c1", {key: ">"}, count=100, block=100) == []


# --------------------------------------------------------------------------- NATS


async def _nats_round_trip(
    server_url: str, stream: str, subject: str, records: list[dict]
) -> tuple[list, object]:
    import nats

    nc = await nats.connect(server_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for record in records:
            ack = await js.publish(subject, _encode(record))
            assert ack.stream == stream
        sub = await js.pull_subscribe(subject, durable=f"{stream}-durable")
        msgs = await sub.fetch(len(records), timeout=5)
        for msg in msgs:
            await msg.ack_sync()
        info = await js.consumer_info(stream, f"{stream}-durable")
        return [json.loads(m.data) for m in msgs], info
    finally:
        await nc.close()


def test_nats_jetstream_durable_pull_acks(nats_server, broker_ns) -> None:
    got, info = asyncio.run(
        _nats_round_trip(nats_server.server_url, broker_ns, f"{broker_ns}.events", _RECORDS)
    )

    assert got == _RECORDS
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.delivered.stream_seq == len(_RECORDS)


@pytest.mark.parametrize(("appendonly", "survivors"), [(True, 3), (False, 0)])
def test_redis_appendonly_keeps_acknowledged_entries_across_a_crash(tmp_path, appendonly, survivors) -> None:
    """With ``appendonly`` what XADD acknowledged survives SIGKILL; without it nothing does."""
    with RedisServer(tmp_path, appendonly=appendonly) as server:
        with server.client() as client:
            for record in _RECORDS[:3]:
                client.xadd("events", {"data": _encode(record)})
        server.kill()
        server.start()
        with server.client() as client:
            assert client.xlen("events") == survivors


def test_kafka_restart_after_a_crash_keeps_committed_records_and_offsets(tmp_path) -> None:
    """SIGKILL and start again on the same ports and log dir: records and the group's offset stay."""
    try:
        server, missing = KafkaServer(tmp_path), None
    except BrokerMissing as exc:
        server, missing = None, exc
    if missing is not None:
        missing_broker(missing)
    with server:
        asyncio.run(_kafka_produce(server.bootstrap, "events", _RECORDS))
        assert asyncio.run(_kafka_consume_all(server.bootstrap, "events", "g", len(_RECORDS))) == _RECORDS
        server.kill()
        server.start()
        assert asyncio.run(_kafka_committed(server.bootstrap, "events", "g")) == len(_RECORDS)
        asyncio.run(_kafka_produce(server.bootstrap, "events", [{"id": 99, "user": "u9"}]))
        assert asyncio.run(_kafka_consume_all(server.bootstrap, "events", "g", 1)) == [
            {"id": 99, "user": "u9"}
        ]
        # A new group reads the log from its start: what was there before the crash is still there.
        everything = asyncio.run(_kafka_consume_all(server.bootstrap, "events", "fresh", len(_RECORDS) + 1))
        assert everything == [*_RECORDS, {"id": 99, "user": "u9"}]


async def _nats_stream_messages(server_url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(server_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_nats_restart_after_a_crash_keeps_jetstream_messages(tmp_path) -> None:
    """JetStream's file store (``-sd``) keeps what a publish ack confirmed across SIGKILL."""
    with NatsServer(tmp_path) as server:
        assert asyncio.run(_nats_count(server.server_url, "crash", "crash.events", _RECORDS)) == len(_RECORDS)
        server.kill()
        server.start()
        assert asyncio.run(_nats_stream_messages(server.server_url, "crash")) == len(_RECORDS)


# --------------------------------------------------------------------------- namespaces


async def _nats_count(server_url: str, stream: str, subject: str, records: list[dict]) -> int:
    import nats

    nc = await nats.connect(server_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for record in records:
            await js.publish(subject, _encode(record))
        return (await js.stream_info(stream)).state.messages
    finally:
        await nc.close()


@pytest.mark.parametrize("run", ["first", "second"])
def test_namespaces_are_fresh(run, kafka_server, redis_server, nats_server, broker_ns) -> None:
    """Both runs write the same names under their prefix: each must see only its own records.

    Were the prefix shared, the second run would read the first run's records back.
    """
    for other in _SEEN_NAMESPACES.values():
        assert broker_ns not in other
    _SEEN_NAMESPACES[run] = [broker_ns]
    mine = [{"id": i, "run": run, "user": "u"} for i in range(3)]
    name = f"{broker_ns}.events"

    asyncio.run(_kafka_produce(kafka_server.bootstrap, name, mine))
    assert asyncio.run(_kafka_consume_all(kafka_server.bootstrap, name, f"{broker_ns}-g", 3)) == mine

    with redis_server.client() as client:
        for record in mine:
            client.xadd(name, {"data": _encode(record)})
        assert [json.loads(f[b"data"]) for _, f in client.xrange(name)] == mine

    assert asyncio.run(_nats_count(nats_server.server_url, broker_ns, name, mine)) == 3


def test_session_brokers_are_not_counted_as_leaks(redis_server, nats_server) -> None:
    """A test that checks for leaked children itself must not see the shared brokers."""
    assert redis_server.proc.alive() and nats_server.proc.alive()
    assert {redis_server.proc.pid, nats_server.proc.pid} <= SESSION_PIDS
    assert assert_no_leaks() == set()


def test_new_namespace_is_valid_everywhere() -> None:
    ns = new_namespace("test_x[Kafka/Redis] ünï")
    assert ns != new_namespace("test_x[Kafka/Redis] ünï")
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in ns), ns
    assert ns.startswith("test-x-kafka-redis")


# --------------------------------------------------------------------------- failure paths


def test_missing_broker_fails_in_ci_and_skips_locally(monkeypatch) -> None:
    with pytest.raises(BrokerMissing, match=r"xpipe-no-such-server not found.*make install.*apt-get install"):
        find_program("xpipe-no-such-server")
    exc = BrokerMissing("redis-server not found: run `make install`")

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="broker missing in CI: redis-server not found"):
        missing_broker(exc)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="broker missing: redis-server not found"):
        missing_broker(exc)


def test_server_that_cannot_bind_fails_with_its_log(tmp_path) -> None:
    """A port already taken: redis-server exits, and the error carries its own reason."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = RedisServer(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(
            AssertionError, match=r"(?s)redis failed to start: .*exited.*Address already in use"
        ):
            server.start()
        server.stop()
    assert not server.proc.alive()


def test_kafka_without_jars_fails_naming_the_format_step(tmp_path) -> None:
    empty = tmp_path / "no-libs"
    empty.mkdir()
    server = KafkaServer(tmp_path, libs=empty)
    with pytest.raises(AssertionError, match=r"(?s)kafka storage format failed.*kafka\.tools\.StorageTool"):
        server.start()
    server.stop()


def _fetch_kafka(*args: str, env_path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "fetch_kafka.py"), *args],
        capture_output=True, text=True, check=False,
        env={"PATH": env_path, "HOME": str(Path.home()),
             **{k: os.environ[k] for k in ("XPIPE_CACHE_DIR", "XDG_CACHE_HOME") if k in os.environ}},
    )  # fmt: skip


def test_fetch_kafka_is_a_no_op_once_cached_and_names_maven_when_it_must_fetch() -> None:
    """With no mvn or java on PATH, a cached version is still found (no network, no Maven)."""
    try:
        libs, missing = find_kafka_libs(), None
    except BrokerMissing as exc:
        libs, missing = None, exc
    if missing is not None:
        missing_broker(missing)
    cached = _fetch_kafka(env_path="/nonexistent")
    assert cached.returncode == 0, cached.stderr
    assert Path(cached.stdout.strip()) == libs

    missing = _fetch_kafka("--version", "0.0.0-none", env_path="/nonexistent")
    assert missing.returncode == 1
    assert "needs Java 17+ and Maven" in missing.stderr
    check = _fetch_kafka("--check", "--version", "0.0.0-none", env_path="/nonexistent")
    assert check.returncode == 1 and "Kafka 0.0.0-none is not cached" in check.stderr


def test_fetch_kafka_reports_a_failed_maven_run_and_leaves_no_partial_cache(tmp_path) -> None:
    """Real Maven, offline with an empty local repository (no network): it fails, we say so."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        missing_broker(BrokerMissing("mvn and java are needed to fetch Kafka: apt-get install maven"))
    (tmp_path / ".m2").mkdir()
    (tmp_path / ".m2" / "settings.xml").write_text(
        f"<settings><offline>true</offline><localRepository>{tmp_path / 'repo'}</localRepository></settings>"
    )
    cache = tmp_path / "cache"
    # Maven finds settings.xml under Java's user.home (from the password file, not $HOME).
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XPIPE_CACHE_DIR": str(cache),
           "MAVEN_OPTS": f"-Duser.home={tmp_path}"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "fetch_kafka.py")],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "mvn copy-dependencies for org.apache.kafka:kafka_2.13:" in done.stderr
    assert "offline" in done.stderr.lower()  # Maven's own reason is passed on
    assert list(cache.iterdir()) == []  # the temporary directory is gone, nothing looks fetched
