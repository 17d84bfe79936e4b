"""The stream runtime end to end: real coordinator, real workers, real brokers.

Each test starts a stream pipeline with ``StreamPipeline.start(manager=pm)`` on a real
cluster, feeds its source through the broker's own client, and reads its sink the same
way, so what is checked is what a user would see on the broker.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time

import pytest

from tests.harness import Cluster, eventually
from tests.helpers_streamjobs import Counting, Double, Enrich, Poisoned, Slow, WindowCount
from xpipe import DataStream, DataStreamError, PipelineManager, StreamPipeline

pytestmark = pytest.mark.integration

IMPORTS = ("tests.helpers_tasks", "tests.helpers_streamjobs")


@pytest.fixture
def cluster(tmp_path):
    with Cluster(tmp_path, workers=2, slots=4, imports=IMPORTS) as c:
        yield c


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def events(n: int, users: int = 7) -> list[dict]:
    """``n`` events with a per-user sequence number, so per-key order can be checked."""
    seq: collections.Counter = collections.Counter()
    out = []
    for i in range(n):
        user = f"u{i % users}"
        seq[user] += 1
        out.append({"id": i, "user": user, "seq": seq[user], "value": i % 10, "ts": 1_700_000_000 + i * 0.01})
    return out


def assert_per_key_order(records: list[dict]) -> None:
    last: dict[str, int] = {}
    for r in records:
        assert r["seq"] > last.get(r["user"], 0), f"user {r['user']}: seq {r['seq']} after {last.get(r['user'])}"
        last[r["user"]] = r["seq"]


# ------------------------------------------------------------------ Kafka helpers


def kafka_produce(bootstrap: str, topic: str, records: list[dict], key: str = "user") -> None:
    from aiokafka import AIOKafkaProducer

    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            futures = [
                await producer.send(topic, json.dumps(r).encode(), key=str(r[key]).encode() if key else None)
                for r in records
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(go())


def kafka_read(bootstrap: str, topic: str, at_least: int, timeout_s: float = 60.0) -> dict[int, list[dict]]:
    """Records of every partition of ``topic``, in partition order, once ``at_least`` arrived."""
    from aiokafka import AIOKafkaConsumer

    async def go():
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got: dict[int, list[dict]] = collections.defaultdict(list)
        deadline = time.monotonic() + timeout_s
        try:
            while sum(map(len, got.values())) < at_least and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, messages in batch.items():
                    got[tp.partition] += [json.loads(m.value) for m in messages]
            # a short extra read: duplicates after the count was reached show up too
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                got[tp.partition] += [json.loads(m.value) for m in messages]
        finally:
            await consumer.stop()
        return dict(got)

    return asyncio.run(go())


def kafka_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    asyncio.run(go())


def redis_feed(client, key: str, records: list[dict]) -> None:
    """Each record as one entry ``data=<json>`` of stream ``key``, as the issue says a user writes them."""
    pipe = client.pipeline(transaction=False)
    for record in records:
        pipe.xadd(key, {"data": json.dumps(record)})
    pipe.execute()


def flat(by_partition: dict[int, list[dict]]) -> list[dict]:
    return [r for records in by_partition.values() for r in records]


# ------------------------------------------------------------------ tests


def test_kafka_two_stages_every_record_once_in_key_order(pm, kafka_server, broker_ns):
    bootstrap = kafka_server.bootstrap
    source, sink = f"{broker_ns}.in", f"{broker_ns}.out"
    kafka_topic(bootstrap, source, 4)
    kafka_topic(bootstrap, sink, 3)
    sent = events(2000)
    kafka_produce(bootstrap, source, sent)

    sp = StreamPipeline(f"{broker_ns}-p")
    stream = DataStream("events", source=f"kafka://{bootstrap}/{source}", key="user")
    enriched = sp.transform(stream, Enrich(), parallelism=2, buffer_size=500)
    doubled = sp.transform(enriched, Double(), parallelism=2)
    sp.output(doubled, f"kafka://{bootstrap}/{sink}")
    handle = sp.start(manager=pm)
    try:
        got = kafka_read(bootstrap, sink, len(sent))
        records = flat(got)
        assert sorted(r["id"] for r in records) == list(range(len(sent)))  # exactly once each: no kill, no duplicate
        assert all(r["enriched"] and r["value"] == (r["id"] % 10) * 2 for r in records)
        for partition_records in got.values():
            assert_per_key_order(partition_records)
        status = handle.status()
        assert {s.name for s in status.stages} == {"enrich", "double"}
        assert eventually(lambda: handle.status().stages[0].records_in >= len(sent), timeout_s=10)
    finally:
        final = handle.stop(drain=True, timeout_s=30)
    assert final.state == "stopped"


def test_worker_killed_mid_stream_loses_nothing_and_reports_duplicates(cluster, pm, kafka_server, broker_ns):
    bootstrap = kafka_server.bootstrap
    source, sink = f"{broker_ns}.in", f"{broker_ns}.out"
    kafka_topic(bootstrap, source, 2)
    kafka_topic(bootstrap, sink, 1)
    sent = events(6000)
    kafka_produce(bootstrap, source, sent[:3000])

    sp = StreamPipeline(f"{broker_ns}-k")
    stream = DataStream("events", source=f"kafka://{bootstrap}/{source}", key="user")
    slow = sp.transform(stream, Slow(0.02), parallelism=2, buffer_size=200)
    sp.output(slow, f"kafka://{bootstrap}/{sink}")
    handle = sp.start(manager=pm)
    try:
        assert eventually(lambda: sum(s.records_out for s in handle.status().stages) > 500, timeout_s=30)
        victim = handle.status().stages[0].instances[0].worker_name
        cluster.workers[victim].stop_signal(signal.SIGKILL, group=True)
        kafka_produce(bootstrap, source, sent[3000:])
        records = flat(kafka_read(bootstrap, sink, len(sent), timeout_s=90))
        ids = collections.Counter(r["id"] for r in records)
        assert set(ids) == set(range(len(sent))), f"lost: {sorted(set(range(len(sent))) - set(ids))[:20]}"
        duplicates = sum(n - 1 for n in ids.values())
        reported = eventually(lambda: handle.status().stages[0].redelivered or None, timeout_s=15) if duplicates else 0
        assert duplicates == 0 or reported > 0
    finally:
        handle.stop(drain=False, timeout_s=20)


def test_memory_source_file_sink_with_dlq_for_malformed_and_failing_records(pm, tmp_path, broker_ns):
    from xpipe.streams._connectors import OutRecord, connector_for
    from xpipe.streams._uri import parse_uri

    out_path = tmp_path / "out.jsonl"
    source_uri = parse_uri(f"memory://{broker_ns}-in")
    sp = StreamPipeline(f"{broker_ns}-m")
    stream = DataStream("events", source=str(source_uri), key="user")
    checked = sp.transform(stream, Poisoned(), parallelism=1, name="checked")
    sp.output(checked, f"file://{out_path}")
    handle = sp.start(manager=pm)  # configures this process's memory connector for the manager's coordinator

    good = events(300)
    poison = [{"id": 10_000 + i, "user": "p", "seq": i + 1, "poison": True} for i in range(3)]
    raw = [json.dumps(r).encode() for r in good[:150] + poison + good[150:]] + [b"{not json"]

    async def feed():
        sink = connector_for(source_uri).sink(source_uri)
        await sink.start()
        await sink.write([OutRecord(value) for value in raw])
        await sink.stop()

    asyncio.run(feed())
    try:
        def written():
            return [json.loads(line) for line in out_path.read_text().splitlines()] if out_path.exists() else []

        assert eventually(lambda: len(written()) >= len(good), timeout_s=30)
        assert sorted(r["id"] for r in written()) == [r["id"] for r in good]
        stage = eventually(lambda: (s := handle.status().stages[0]).dead_lettered >= 4 and s, timeout_s=15)
        assert stage.dead_lettered == 4  # three poisoned records, isolated one by one, and one malformed
        assert stage.errors >= 3
        dlq = parse_uri(f"memory://{sp.name}.checked.dlq")

        async def read_dlq():
            src = connector_for(dlq).source(dlq, group="t", partitions=None)
            await src.start()
            got = await src.fetch(100, 2.0)
            await src.stop()
            return [json.loads(m.value) for m in got]

        letters = asyncio.run(read_dlq())
        assert sorted(l["record"]["id"] for l in letters if "record" in l) == [10_000, 10_001, 10_002]
        assert any(l.get("raw") == "{not json" for l in letters)
        assert all(l["error"] for l in letters)
    finally:
        handle.stop(drain=True, timeout_s=30)


def test_event_time_windows_with_late_records_match_a_hand_computed_answer(pm, redis_server, broker_ns):
    import redis

    r = redis.Redis(port=redis_server.port)
    key, out_key = f"{broker_ns}:in", f"{broker_ns}:out"
    # 10-second tumbling windows on event time "t"; allowed lateness 0.
    times = [0, 1, 5, 9, 10, 12, 19, 3, 21, 25, 30, 2, 41]  # 3 is late once 12 was seen; 2 is late too
    base = 1_700_000_000  # a multiple of 10
    redis_feed(r, key, [{"id": i, "t": base + t, "user": "a"} for i, t in enumerate(times)])

    sp = StreamPipeline(f"{broker_ns}-w")
    stream = DataStream("events", source=redis_server.url(key), time_field="t")
    counted = sp.transform(stream, WindowCount(), parallelism=1, window_size="10s", name="counted")
    sp.output(counted, redis_server.url(out_key))
    handle = sp.start(manager=pm)
    try:
        def windows():
            return [json.loads(fields[b"data"]) for _, fields in r.xrange(out_key)]

        # The watermark reaches 41: windows [0,10), [10,20), [20,30) and [30,40) fire.
        assert eventually(lambda: len(windows()) >= 4, timeout_s=30)
        got = {(w["start"] - base, w["end"] - base): w["ids"] for w in windows()}
        assert got == {(0, 10): [0, 1, 2, 3], (10, 20): [4, 5, 6], (20, 30): [8, 9], (30, 40): [10]}
        late_key = f"{sp.name}.counted.late"
        late = [json.loads(fields[b"data"]) for _, fields in r.xrange(late_key)]
        assert sorted(x["id"] for x in late) == [7, 11]
        assert eventually(lambda: handle.status().stages[0].late == 2, timeout_s=10)
    finally:
        handle.stop(drain=True, timeout_s=30)


def test_nats_to_nats_every_record_arrives(pm, nats_server, broker_ns):
    import nats

    subject_in, subject_out = f"{broker_ns}.in", f"{broker_ns}.out"
    sent = events(500)
    sp = StreamPipeline(f"{broker_ns}-n")
    stream = DataStream("events", source=nats_server.url(subject_in), key="user")
    sp.output(sp.transform(stream, Enrich(), parallelism=2), nats_server.url(subject_out))
    handle = sp.start(manager=pm)  # creates the JetStream streams for both subjects

    async def go():
        nc = await nats.connect(nats_server.server_url)
        js = nc.jetstream()
        for record in sent:
            await js.publish(subject_in, json.dumps(record).encode())
        got: list[dict] = []
        sub = await js.subscribe(subject_out)
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                continue
            got.append(json.loads(msg.data))
            await msg.ack()
        await nc.close()
        return got

    try:
        got = asyncio.run(go())
        assert sorted(r["id"] for r in got) == list(range(len(sent)))
        assert all(r["enriched"] for r in got)
    finally:
        handle.stop(drain=True, timeout_s=30)


def test_drop_oldest_under_a_slow_stage_bounds_the_buffer_and_counts_drops(pm, redis_server, broker_ns):
    import redis

    r = redis.Redis(port=redis_server.port)
    key, out_key = f"{broker_ns}:in", f"{broker_ns}:out"
    n = 3000
    redis_feed(r, key, events(n))

    sp = StreamPipeline(f"{broker_ns}-d")
    stream = DataStream("events", source=redis_server.url(key))
    sp.output(sp.transform(stream, Slow(0.2), parallelism=1, buffer_size=50, name="slow"), redis_server.url(out_key))
    handle = sp.start(backpressure_strategy="drop_oldest", manager=pm)
    try:
        stage = eventually(lambda: (s := handle.status().stages[0]).records_in >= n and s, timeout_s=30)
        fills = [handle.status().stages[0].buffer_fill for _ in range(3)]
        assert max(fills) <= 1.0
        stage = eventually(
            lambda: (s := handle.status().stages[0]).records_out + s.dropped >= n and s, timeout_s=30
        )
        assert stage.dropped > 0
        assert stage.records_out + stage.dropped == n  # each record either written or counted as dropped
        assert r.xlen(out_key) == stage.records_out
    finally:
        handle.stop(drain=False, timeout_s=20)


def test_block_drops_nothing_and_lag_grows_in_the_broker(pm, kafka_server, broker_ns):
    bootstrap = kafka_server.bootstrap
    source, sink = f"{broker_ns}.in", f"{broker_ns}.out"
    kafka_topic(bootstrap, source, 1)
    sent = events(3000)
    kafka_produce(bootstrap, source, sent)

    sp = StreamPipeline(f"{broker_ns}-b")
    stream = DataStream("events", source=f"kafka://{bootstrap}/{source}")
    sp.output(sp.transform(stream, Slow(0.05), parallelism=1, buffer_size=100, name="slow"), f"kafka://{bootstrap}/{sink}")
    handle = sp.start(backpressure_strategy="block", manager=pm)
    try:
        lag = eventually(lambda: handle.status().stages[0].lag > 1000 and handle.status().stages[0].lag, timeout_s=30)
        assert lag > 1000
        assert handle.status().stages[0].buffer_fill <= 1.0
    finally:
        final = handle.stop(drain=False, timeout_s=20)
    assert final.stages[0].dropped == 0


def test_max_throughput_is_honoured_within_ten_percent(pm, redis_server, broker_ns):
    import redis

    r = redis.Redis(port=redis_server.port)
    key, out_key = f"{broker_ns}:in", f"{broker_ns}:out"
    redis_feed(r, key, events(4000))
    rate = 500.0

    sp = StreamPipeline(f"{broker_ns}-r")
    stream = DataStream("events", source=redis_server.url(key))
    sp.output(sp.transform(stream, Enrich(), parallelism=2, name="enrich"), redis_server.url(out_key))
    handle = sp.start(max_throughput_per_second=rate, manager=pm)
    try:
        assert eventually(lambda: r.xlen(out_key) >= 200, timeout_s=30)
        t0, n0 = time.monotonic(), r.xlen(out_key)
        eventually(lambda: time.monotonic() - t0 >= 4.0, timeout_s=10)
        t1, n1 = time.monotonic(), r.xlen(out_key)
        measured = (n1 - n0) / (t1 - t0)
        assert abs(measured - rate) <= 0.1 * rate, f"{measured:.0f} records/s against a limit of {rate:.0f}"
    finally:
        handle.stop(drain=False, timeout_s=20)


def test_state_survives_a_restart_of_the_instance(cluster, pm, redis_server, broker_ns):
    import redis

    r = redis.Redis(port=redis_server.port)
    key, out_key = f"{broker_ns}:in", f"{broker_ns}:out"
    redis_feed(r, key, events(100))
    sp = StreamPipeline(f"{broker_ns}-s")
    stream = DataStream("events", source=redis_server.url(key))
    sp.output(sp.transform(stream, Counting(), parallelism=1, name="count"), redis_server.url(out_key))
    handle = sp.start(manager=pm)
    try:
        assert eventually(lambda: r.xlen(out_key) >= 100, timeout_s=30)
        # A stateful stage saves its checkpoint, then commits: once nothing is left to commit
        # (lag 0), the checkpoint holds the count of all 100.
        before = eventually(lambda: (s := handle.status().stages[0]).lag == 0 and s, timeout_s=15)
        victim = before.instances[0].worker_name
        cluster.workers[victim].stop_signal(signal.SIGKILL, group=True)
        redis_feed(r, key, events(150)[100:])
        assert eventually(lambda: r.xlen(out_key) >= 150, timeout_s=60)
        after = [json.loads(fields[b"data"]) for _, fields in r.xrange(out_key)][100:]
        # The restarted instance went on counting from its checkpoint (from 0 it would say 1..50).
        assert min(x["n"] for x in after) == 101
    finally:
        handle.stop(drain=False, timeout_s=20)


def test_unreachable_broker_fails_start_with_a_clear_error(pm, broker_ns):
    from tests.harness import free_port

    port = free_port()
    sp = StreamPipeline(f"{broker_ns}-u")
    stream = DataStream("events", source=f"kafka://127.0.0.1:{port}/events")
    sp.output(sp.transform(stream, Enrich()), f"kafka://127.0.0.1:{port}/out")
    started = time.monotonic()
    with pytest.raises(DataStreamError, match=f"127.0.0.1:{port}"):
        sp.start(manager=pm)
    assert time.monotonic() - started < 15
    assert not [s for s in pm.get_stream_health().streams if s == sp.name]


def test_the_seed_sample_runs_on_the_embedded_default(kafka_server, broker_ns, monkeypatch):
    """The seed's stream sample as written, but for its URIs (see docs/streams.md)."""
    from xpipe import StreamTask
    from xpipe.streams._start import close_default_manager

    monkeypatch.setenv("XPIPE_KAFKA_BOOTSTRAP", kafka_server.bootstrap)  # the seed's bare kafka:// URIs

    class EnrichmentStream(StreamTask):  # defined here: the classes travel cloudpickled
        def process_batch(self, batch):
            return [dict(r, enriched=True) for r in batch]

    class AnalyticsStream(StreamTask):
        def process_batch(self, batch):
            return [{"window": list(self.window), "count": len(batch), "enriched": all(r["enriched"] for r in batch)}]

    stream_pipeline = StreamPipeline(f"{broker_ns}-seed")
    data_stream = DataStream("events", source=f"kafka://{broker_ns}.events-topic")
    enriched_stream = stream_pipeline.transform(data_stream, EnrichmentStream(), parallelism=4, buffer_size=1000)
    analytics_stream = stream_pipeline.transform(enriched_stream, AnalyticsStream(), parallelism=2, window_size="5min")
    with pytest.raises(DataStreamError, match="unsupported scheme 'elasticsearch'; supported: kafka, redis, nats"):
        stream_pipeline.output(analytics_stream, "elasticsearch://metrics")
    stream_pipeline.output(analytics_stream, f"kafka://{broker_ns}.analytics-results")
    try:
        handle = stream_pipeline.start(backpressure_strategy="drop_oldest", max_throughput_per_second=10000, auto_scaling=True)
        kafka_produce(kafka_server.bootstrap, f"{broker_ns}.events-topic", events(100), key="")

        def both_stages_read_all():
            stages = {s.name: s for s in handle.status().stages}
            return stages if stages and stages["analytics_stream"].records_in >= 100 else None

        stages = eventually(both_stages_read_all, timeout_s=60)
        assert stages["enrichment_stream"].records_out == 100 and len(stages["enrichment_stream"].instances) == 4
        final = handle.stop(drain=True, timeout_s=30)  # a drain fires the open 5-minute windows
        assert final.state == "stopped"
        windows = flat(kafka_read(kafka_server.bootstrap, f"{broker_ns}.analytics-results", 1, timeout_s=20))
        assert sum(w["count"] for w in windows) == 100 and all(w["enriched"] for w in windows)
    finally:
        close_default_manager()


def test_auto_scaling_parks_an_idle_instance_and_the_other_takes_its_partitions(pm, kafka_server, broker_ns):
    bootstrap = kafka_server.bootstrap
    source, sink = f"{broker_ns}.in", f"{broker_ns}.out"
    kafka_topic(bootstrap, source, 2)
    kafka_topic(bootstrap, sink, 1)
    sent = events(400)
    kafka_produce(bootstrap, source, sent[:200])

    sp = StreamPipeline(f"{broker_ns}-a")
    stream = DataStream("events", source=f"kafka://{bootstrap}/{source}", key="user")
    sp.output(sp.transform(stream, Enrich(), parallelism=2, name="enrich"), f"kafka://{bootstrap}/{sink}")
    handle = sp.start(auto_scaling=True, manager=pm)
    try:
        assert len(flat(kafka_read(bootstrap, sink, 200))) >= 200
        # No lag for the down cooldown (30 s): one instance is enough, the other parks, and
        # the one left running takes the parked one's partition.
        def scaled_in():
            stage = handle.status().stages[0]
            seen = sorted((i.state, i.partitions) for i in stage.instances)
            return stage.active == 1 and seen == [("paused", ()), ("running", (0, 1))]

        eventually(scaled_in, timeout_s=75)
        kafka_produce(bootstrap, source, sent[200:])
        records = flat(kafka_read(bootstrap, sink, len(sent)))
        assert sorted(r["id"] for r in records) == list(range(len(sent)))  # nothing lost, nothing twice
    finally:
        handle.stop(drain=True, timeout_s=30)
