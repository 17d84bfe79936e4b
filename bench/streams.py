"""The streams scenario (issue 14): a 2-stage pipeline on Kafka, xpipe against its peers.

A script, not part of the default ``python -m bench`` set (it starts a Kafka JVM and
takes about a minute): ``python -m bench.streams [--events 200000] [--repeats 1]``.

One real Kafka (``tests/helpers_brokers.KafkaServer``, every topic with ``--partitions``
partitions) serves the whole run. Every measurement gets fresh topics and a fresh
consumer group. The events are ~100-byte JSON ``{"id", "user", "ts", "value", "pad"}``
keyed by user; stage 1 (:func:`enrich`) adds ``region``, stage 2 (:func:`keep`) drops
``value <= 0`` and adds ``score``; stage 1 reaches stage 2 through an intermediate topic.

Two figures per system, each from its own run:

- **throughput**: ``--events`` events are on the input topic before the pipeline starts;
  events/s = events / (pipeline start -> the last output record seen by a consumer of the
  output topic). Start-up (process, group join) is inside that time, as a user sees it;
  ``steady_events_per_s`` leaves it out (first to last output record).
- **latency** (paced): the pipeline is started and warmed up (``WARMUP_EVENTS`` pass
  through), then ``--paced-events`` are produced at ``--paced-rate``/s while it runs;
  latency = output seen - the event's ``ts`` (its produce time), p50/p99 over those.

Systems: ``aiokafka`` (plain consume->produce loops, the practical limit), ``quix``
(Quix Streams), ``xpipe`` (``StreamPipeline`` on the embedded ``PipelineManager``): see
:mod:`bench._streams_peers` and :func:`start_xpipe`. A system that cannot run is reported
as skipped or "not run: <why>", never faked. Every run checks that the output ids are
exactly the expected multiset (at-least-once may duplicate after a failure, but a clean
run must not, and nothing may be lost). The JSON goes under ``--out`` like ``python -m bench``.
"""

from __future__ import annotations

import argparse
import atexit
import asyncio
import collections
import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from xpipe import StreamTask

from bench._report import BenchError, machine_info, percentile, source_info, write_json
from bench._report import _cell as cell  # median [min-max], as python -m bench prints it
from bench._streams_peers import quix_missing

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SYSTEMS = ("xpipe", "aiokafka", "quix")
"""Table order: xpipe first; the others are what it is compared with."""

DEFAULT_EVENTS = 200_000
DEFAULT_PARTITIONS = 4
DEFAULT_PACED_RATE_PER_S = 2_000.0
"""Below every system's throughput on the 2 shared cores (the slowest, the aiokafka loop,
did about 6,000/s), and within what the bench's own producer holds while its consumer
reads; at 20,000/s both fell behind there and the figure measured a growing backlog."""
DEFAULT_PACED_EVENTS = 20_000
RATE_HELD_FRACTION = 0.9
"""A paced run whose producer reached less than this fraction of the asked rate is flagged."""
DRAINED_S = 1.0
"""A paced run whose last output came later than this after the last input is flagged: the
pipeline fell behind, so its latency is a backlog's."""
WARMUP_EVENTS = 200
"""Events a paced run passes through the started pipeline before the measured ones."""
USERS = 1_000
"""Distinct keys (``u0`` .. ``u999``)."""
REGIONS = ("eu", "us", "apac", "latam")
STOP_GRACE_S = 10.0
"""How long a peer gets to stop on SIGTERM before it is killed."""

GOAL_VS_PLAIN = 0.5
"""Issue 14: xpipe's events/s at least half the plain aiokafka loop's."""
GOAL_VS_QUIX = 1.0
"""Issue 14: xpipe ahead of Quix Streams."""


# --- the workload ------------------------------------------------------------------------


def make_event(i: int, ts_s: float) -> dict[str, Any]:
    """Event ``i``, produced at ``ts_s`` (Unix seconds); about 100 bytes as JSON.

    ``value`` is negative for about one event in ten, so stage 2's filter has work to do.
    """
    return {"id": i, "user": f"u{i % USERS}", "ts": ts_s, "value": (i * 7919) % 211 - 20, "pad": "x" * 24}


def enrich(event: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: add the user's region."""
    event["region"] = REGIONS[int(event["user"][1:]) % len(REGIONS)]
    return event


def keep(event: dict[str, Any]) -> dict[str, Any] | None:
    """Stage 2: drop events with ``value <= 0``; add a score to the rest."""
    if event["value"] <= 0:
        return None
    event["score"] = event["value"] * 2
    return event


def expected_ids(ids: Sequence[int]) -> collections.Counter[int]:
    """The multiset of ids the output topic must hold after ``ids`` went through both stages."""
    return collections.Counter(i for i in ids if keep(enrich(make_event(i, 0.0))) is not None)


class Enrich(StreamTask):
    """xpipe's stage 1: :func:`enrich` on each record of the batch."""

    def process_batch(self, batch: list[Any]) -> list[Any]:
        return [enrich(event) for event in batch]


class Keep(StreamTask):
    """xpipe's stage 2: :func:`keep` on each record of the batch, the dropped ones left out."""

    def process_batch(self, batch: list[Any]) -> list[Any]:
        return [out for event in batch if (out := keep(event)) is not None]


@dataclass(frozen=True, slots=True)
class Topics:
    """One measurement's topics; ``prefix`` also names xpipe's pipeline."""

    prefix: str

    @property
    def source(self) -> str:
        return f"{self.prefix}-in"

    @property
    def middle(self) -> str:
        return f"{self.prefix}-mid"

    @property
    def xpipe_middle(self) -> str:
        """The internal topic xpipe keeps stage 1's output in (``connectors.internal_uri``)."""
        return f"{self.prefix}.enrich"

    @property
    def output(self) -> str:
        return f"{self.prefix}-out"

    @classmethod
    def fresh(cls, label: str) -> Topics:
        return cls(f"bench-{label}-{uuid.uuid4().hex[:8]}")


# --- Kafka helpers -----------------------------------------------------------------------


TOPIC_READY_TIMEOUT_S = 30.0
"""How long new topics may take to get a leader for every partition."""


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    """Create ``names`` with ``partitions`` partitions each, and wait until every one has a leader.

    Before any client can auto-create them with the broker's default; and a client that
    comes before the leaders only logs retries (``NotLeaderForPartitionError``).

    Raises:
        BenchError: a partition still had no leader after ``TOPIC_READY_TIMEOUT_S``.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while True:
            described = await admin.describe_topics(list(names))
            waiting = [
                t["topic"] for t in described
                if t["error_code"] or len(t["partitions"]) < partitions
                or any(p["error_code"] or p["leader"] < 0 for p in t["partitions"])
            ]  # fmt: skip
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"topics {waiting} have no leader yet after {TOPIC_READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)  # polls the broker's metadata; there is no event to wait on
    finally:
        await admin.close()


def _encode(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return json.dumps(event, separators=(",", ":")).encode(), event["user"].encode()


async def produce(bootstrap: str, topic: str, ids: Sequence[int], *, rate_per_s: float | None = None) -> None:
    """Produce events ``ids`` to ``topic``, each stamped with its produce time, all delivered.

    With ``rate_per_s`` they go out in 5 ms slices at that rate (a slice that falls behind
    is sent at once, so the mean rate holds); without, as fast as the producer takes them.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        deliveries = []
        began = time.perf_counter()
        slice_n = max(1, int(rate_per_s * 0.005)) if rate_per_s else len(ids)
        for at in range(0, len(ids), slice_n):
            if rate_per_s:
                delay_s = began + at / rate_per_s - time.perf_counter()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)  # pacing the producer, not waiting for a result
            for i in ids[at : at + slice_n]:
                value, key = _encode(make_event(i, time.time()))
                deliveries.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


@dataclass(slots=True)
class Seen:
    """What the output consumer saw: per record its id, its ``ts`` and when it was seen (Unix s)."""

    ids: list[int]
    ts_s: list[float]
    seen_s: list[float]


class Collector:
    """Reads the output topic from its beginning, noting when each record was seen.

    Reads every partition itself (no group), so it may start before or after the pipeline;
    one collector serves a whole run, so its own start-up is not inside any latency.
    """

    def __init__(self, bootstrap: str, topic: str, failure: Callable[[], str | None]) -> None:
        self.bootstrap, self.topic, self.failure = bootstrap, topic, failure
        self.seen = Seen([], [], [])
        self._consumer: Any = None

    async def __aenter__(self) -> Self:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        try:
            partitions = await _partitions(self._consumer, self.topic)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def until(self, count: int, *, timeout_s: float) -> Seen:
        """Read until ``count`` records came in all.

        Raises:
            BenchError: the time ran out, or ``failure()`` says the pipeline died.
        """
        seen = self.seen
        deadline = time.monotonic() + timeout_s
        while len(seen.ids) < count:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.topic}: {len(seen.ids)} of {count} output records after {timeout_s:g} s"
                )
            if (why := self.failure()) is not None:
                raise BenchError(
                    f"the pipeline stopped with {len(seen.ids)} of {count} output records: {why}"
                )
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    seen.ids.append(event["id"])
                    seen.ts_s.append(event["ts"])
                    seen.seen_s.append(now)
        return seen


async def _partitions(consumer: Any, topic: str) -> set[int]:
    if partitions := consumer.partitions_for_topic(topic):
        return partitions
    await (
        consumer._client.force_metadata_update()
    )  # aiokafka's only way to learn a topic's partitions unsubscribed
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise BenchError(f"topic {topic!r} has no partitions; was it created?")
    return partitions


def check_ids(seen: Seen, expected: collections.Counter[int], what: str) -> None:
    """Fail unless the output ids are exactly ``expected`` (as a multiset)."""
    got = collections.Counter(seen.ids)
    if got != expected:
        missing = expected - got
        extra = got - expected
        raise BenchError(
            f"{what}: output ids differ from the input: {sum(missing.values())} missing "
            f"(e.g. {sorted(missing)[:5]}), {sum(extra.values())} extra (e.g. {sorted(extra)[:5]})"
        )


# --- the systems -------------------------------------------------------------------------


class Running(Protocol):
    """A started pipeline of some system."""

    def failure(self) -> str | None:
        """Why it stopped by itself, or None while it runs."""

    def stop(self) -> None:
        """Stop it and everything it started; idempotent."""


Starter = Callable[[str, Topics], Running]
"""Starts one system's pipeline on a broker (bootstrap) over some topics."""


class PeerProcess:
    """A peer of :mod:`bench._streams_peers` in its own process, its output in a log file."""

    def __init__(self, kind: str, bootstrap: str, topics: Topics) -> None:
        # Open for the process's whole life, closed in stop(): no ``with`` can hold it.
        self.log = tempfile.NamedTemporaryFile(prefix=f"xpipe-bench-{kind}-", suffix=".log", delete=False)  # noqa: SIM115
        argv = [sys.executable, "-m", "bench._streams_peers", kind, bootstrap,
                topics.source, topics.middle, topics.output, f"{topics.prefix}-group"]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def failure(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        return f"exit {code}: {self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "peer %s ignored SIGTERM for %g s; killing it", self.proc.args[3], STOP_GRACE_S
                )
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def start_plain(bootstrap: str, topics: Topics) -> Running:
    return PeerProcess("plain", bootstrap, topics)


def start_quix(bootstrap: str, topics: Topics) -> Running:
    return PeerProcess("quix", bootstrap, topics)


class XpipeRunning:
    """xpipe's pipeline, started on the bench's embedded cluster (which outlives it)."""

    def __init__(self, manager: Any, handle: Any) -> None:
        self.manager, self.handle = manager, handle

    def failure(self) -> str | None:
        try:
            status = self.handle.status()
        except Exception as exc:  # noqa: BLE001 - the cluster itself is gone
            return f"status unavailable: {exc}"
        return f"stream {status.state}: {status.problem}" if status.state == "failed" else None

    def stop(self) -> None:
        self.handle.stop(drain=False, timeout_s=30)


_managers: dict[int, Any] = {}


def xpipe_manager(parallelism: int) -> Any:
    """The embedded cluster xpipe's runs use: started once per bench run, before any timing.

    A stream pipeline is submitted to a running cluster, as a user would; the cluster's own
    start (a coordinator and two workers) is not part of any figure. Each instance holds a
    worker slot, so the workers get one per instance of both stages.
    """
    manager = _managers.get(parallelism)
    if manager is None:
        from xpipe import PipelineManager

        # The workers import the stages' classes by name (bench.streams:Enrich): from here.
        root = str(Path(__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        manager = _managers[parallelism] = PipelineManager(workers=2, slots_per_worker=max(2, parallelism))
        atexit.register(close_xpipe_managers)
    return manager


def close_xpipe_managers() -> None:
    """Stop the embedded clusters :func:`xpipe_manager` started (at exit, or after a test)."""
    while _managers:
        _, manager = _managers.popitem()
        manager.close()


def start_xpipe(bootstrap: str, topics: Topics, *, parallelism: int = 2) -> Running:
    """The same two stages as ``xpipe.StreamPipeline``, started on the embedded manager.

    Its intermediate topic is the runtime's own (:attr:`Topics.xpipe_middle`).

    Raises:
        DataStreamError: the pipeline cannot start (a broker, a slot short).
    """
    from xpipe import DataStream, StreamPipeline

    sp = StreamPipeline(topics.prefix)
    events = DataStream("events", source=f"kafka://{bootstrap}/{topics.source}", key="user")
    enriched = sp.transform(events, Enrich(), parallelism=parallelism, name="enrich")
    kept = sp.transform(enriched, Keep(), parallelism=parallelism, name="keep")
    sp.output(kept, f"kafka://{bootstrap}/{topics.output}")
    sp.plan()  # a mistake in the pipeline fails here, before a cluster starts
    manager = xpipe_manager(parallelism)
    return XpipeRunning(manager, sp.start(manager=manager))


# --- measuring ---------------------------------------------------------------------------


def measure_throughput(
    bootstrap: str, topics: Topics, n: int, start: Starter, *, partitions: int, timeout_s: float
) -> dict[str, Any]:
    """``n`` events preloaded, then the pipeline started: events/s until the last output record."""
    ids = list(range(n))
    expected = expected_ids(ids)
    asyncio.run(create_topics(bootstrap, [topics.source, topics.middle, topics.xpipe_middle, topics.output],
                              partitions))  # fmt: skip
    asyncio.run(produce(bootstrap, topics.source, ids))
    began = time.time()
    running = start(bootstrap, topics)

    async def drive() -> Seen:
        async with Collector(bootstrap, topics.output, running.failure) as collector:
            return await collector.until(expected.total(), timeout_s=timeout_s)

    try:
        seen = asyncio.run(drive())
    finally:
        running.stop()
    check_ids(seen, expected, f"throughput run on {topics.prefix}")
    first, last = min(seen.seen_s), max(seen.seen_s)
    return {
        "events": n,
        "outputs": len(seen.ids),
        "total_s": last - began,
        "startup_s": first - began,
        "events_per_s": n / (last - began),
        "steady_events_per_s": n / (last - first) if last > first else None,
    }


def measure_latency(
    bootstrap: str,
    topics: Topics,
    n: int,
    rate_per_s: float,
    start: Starter,
    *,
    partitions: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Warm the started pipeline up, then ``n`` events at ``rate_per_s``: p50/p99 latency."""
    warm = list(range(n, n + WARMUP_EVENTS))
    measured = list(range(n))
    asyncio.run(create_topics(bootstrap, [topics.source, topics.middle, topics.xpipe_middle, topics.output],
                              partitions))  # fmt: skip
    running = start(bootstrap, topics)

    async def drive() -> tuple[Seen, float, float]:
        async with Collector(bootstrap, topics.output, running.failure) as collector:
            await produce(bootstrap, topics.source, warm)
            await collector.until(expected_ids(warm).total(), timeout_s=timeout_s)
            collecting = asyncio.create_task(
                collector.until(expected_ids(warm + measured).total(), timeout_s=timeout_s)
            )
            t0 = time.perf_counter()
            try:
                await produce(bootstrap, topics.source, measured, rate_per_s=rate_per_s)
            except BaseException:
                collecting.cancel()
                raise
            produce_s, produced_at = time.perf_counter() - t0, time.time()
            return await collecting, produce_s, produced_at

    try:
        seen, produce_s, produced_at = asyncio.run(drive())
    finally:
        running.stop()
    check_ids(seen, expected_ids(warm + measured), f"paced run on {topics.prefix}")
    latencies_ms = [(s - t) * 1000 for i, t, s in zip(seen.ids, seen.ts_s, seen.seen_s, strict=True) if i < n]
    drain_s = max(seen.seen_s) - produced_at
    produced_per_s = n / produce_s
    kept_up = produced_per_s >= RATE_HELD_FRACTION * rate_per_s and drain_s <= DRAINED_S
    if not kept_up:
        logger.warning(
            "paced run on %s: produced %.0f/s of %.0f/s asked, last output %.2f s after the last input: "
            "its latency measures a backlog; lower --paced-rate", topics.prefix, produced_per_s, rate_per_s, drain_s,
        )  # fmt: skip
    return {
        "paced_events": n,
        "paced_rate_per_s": rate_per_s,
        "produced_per_s": produced_per_s,
        "drain_s": drain_s,
        "kept_up": kept_up,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
    }


def run_xpipe(bootstrap: str, topics: Topics, n: int, *, parallelism: int = 2, partitions: int = DEFAULT_PARTITIONS,
              timeout_s: float = 600.0) -> dict[str, Any]:  # fmt: skip
    """xpipe's throughput measurement on ``topics``: the one call the scenario makes for xpipe."""

    def start(bootstrap: str, topics: Topics) -> Running:
        return start_xpipe(bootstrap, topics, parallelism=parallelism)

    return measure_throughput(bootstrap, topics, n, start, partitions=partitions, timeout_s=timeout_s)


# --- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSizes:
    """How big the streams scenario is."""

    events: int = DEFAULT_EVENTS
    """Events preloaded for the throughput run."""
    paced_events: int = DEFAULT_PACED_EVENTS
    """Events produced at ``paced_rate_per_s`` in the latency run (0: no latency run)."""
    paced_rate_per_s: float = DEFAULT_PACED_RATE_PER_S
    partitions: int = DEFAULT_PARTITIONS
    """Partitions of every topic (the broker's default too, for xpipe's internal topic)."""
    parallelism: int = 2
    """Instances of each xpipe stage."""
    timeout_s: float = 600.0
    """Longest one run may take to deliver every output record."""


def _starters(sizes: StreamSizes) -> tuple[dict[str, Starter], dict[str, str]]:
    """The systems to measure, and the ones skipped with why."""
    starters: dict[str, Starter] = {"aiokafka": start_plain}
    skipped: dict[str, str] = {}
    if (why := quix_missing()) is None:
        starters["quix"] = start_quix
    else:
        skipped["quix"] = why

    def xpipe(bootstrap: str, topics: Topics) -> Running:
        return start_xpipe(bootstrap, topics, parallelism=sizes.parallelism)

    return {"xpipe": xpipe, **starters}, skipped


def _warm(systems: Sequence[str], sizes: StreamSizes) -> None:
    """Start xpipe's cluster now, outside every timed section."""
    if "xpipe" in systems:
        xpipe_manager(sizes.parallelism)


def run_scenario(bootstrap: str, sizes: StreamSizes, *, repeats: int = 1, systems: Sequence[str] = SYSTEMS,
                 log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:  # fmt: skip
    """Measure each of ``systems`` ``repeats`` times, the order rotating; the scenario's JSON entry.

    A system whose start raises ``NotImplementedError`` (xpipe before its runtime lands)
    is reported as ``"not run: <the error>"``, one whose run fails (:class:`BenchError`)
    as ``"failed: <why>"``; either is left out of the remaining repeats.
    """
    starters, skipped = _starters(sizes)
    _warm(systems, sizes)
    for name in set(SYSTEMS) - set(systems):
        starters.pop(name, None)
        skipped[name] = "left out (--systems)"
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in starters}
    status = {name: "measured" for name in starters} | {n: f"skipped: {why}" for n, why in skipped.items()}
    names = list(starters)
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for position, name in enumerate(order):
            if status[name] != "measured":
                continue
            log(f"[bench.streams] {name} / repeat {repeat + 1} ...")
            try:
                sample = measure_throughput(bootstrap, Topics.fresh(name), sizes.events, starters[name],
                                            partitions=sizes.partitions, timeout_s=sizes.timeout_s)  # fmt: skip
                if sizes.paced_events:
                    sample.update(measure_latency(
                        bootstrap, Topics.fresh(name), sizes.paced_events, sizes.paced_rate_per_s, starters[name],
                        partitions=sizes.partitions, timeout_s=sizes.timeout_s,
                    ))  # fmt: skip
            except NotImplementedError as exc:
                status[name] = f"not run: {exc}"
                log(f"[bench.streams] {name}: {status[name]}")
                continue
            except BenchError as exc:
                # One system failing (lost events, a crash, a timeout) says nothing of the
                # others: they are still measured, and the run's exit status is 1.
                status[name] = f"failed: {exc}"
                log(f"[bench.streams] {name}: {status[name]}")
                continue
            sample.update(repeat=repeat, position=position)
            samples[name].append(sample)
            log(f"[bench.streams] {name}: " + ", ".join(f"{m.key}={sample[m.key]:.4g}" for m in METRICS
                                                         if sample.get(m.key) is not None))  # fmt: skip
    return {"note": NOTE, "systems": status, "samples": samples, "summary": summarise(samples)}


# --- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool


METRICS = (
    Metric("events_per_s", "events/s, preloaded (start -> last output)", True),
    Metric("steady_events_per_s", "events/s, first -> last output", True),
    Metric("startup_s", "start -> first output s", False),
    Metric("p50_ms", "latency p50 ms, paced", False),
    Metric("p99_ms", "latency p99 ms, paced", False),
)
NOTE = (
    "2 stages on Kafka (enrich; filter value>0 + map) through an intermediate topic, all topics "
    "with the same partitions; events/s from events preloaded on the input topic, timed from the "
    "pipeline's start to the last output record seen by a consumer of the output topic; latency "
    "(output seen - produce time) from a separate paced run after a warm-up; aiokafka = two plain "
    "consume->produce loops in one process (the practical limit), quix = Quix Streams, one Application "
    "with two StreamingDataFrames"
)


def summarise(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per metric: each system's median/min/max, xpipe's ratio to each peer, and the goals."""
    import statistics

    rows = []
    for metric in METRICS:
        row: dict[str, Any] = {
            "metric": metric.key,
            "label": metric.label,
            "higher_is_better": metric.higher_is_better,
        }
        for system in SYSTEMS:
            values = [s[metric.key] for s in samples.get(system, ()) if s.get(metric.key) is not None]
            row[system] = (
                {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
                if values else None
            )  # fmt: skip
        x = row["xpipe"]
        for other in SYSTEMS[1:]:
            o = row[other]
            row[f"ratio_{other}"] = x["median"] / o["median"] if x and o and o["median"] else None
        if metric.key == "events_per_s":
            row["goal"] = f"xpipe/aiokafka >= {GOAL_VS_PLAIN:g}, xpipe/quix >= {GOAL_VS_QUIX:g}"
            ratios = (row["ratio_aiokafka"], row["ratio_quix"])
            row["met"] = None if None in ratios else ratios[0] >= GOAL_VS_PLAIN and ratios[1] >= GOAL_VS_QUIX
        else:
            row["goal"], row["met"] = None, None
        rows.append(row)
    return rows


def format_table(entry: dict[str, Any]) -> str:
    """The streams table: median [min-max] per system, xpipe's ratios, the goal."""

    header = ["metric", *SYSTEMS, "vs aiokafka", "vs quix", "goal", "met"]
    lines = []
    for row in entry["summary"]:
        ratios = [f"{r:.2f}x" if (r := row[f"ratio_{o}"]) is not None else "-" for o in SYSTEMS[1:]]
        met = {True: "yes", False: "NO", None: "-"}[row["met"]] if row["goal"] else ""
        lines.append([row["label"], *(cell(row[s]) for s in SYSTEMS), *ratios, row["goal"] or "", met])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in lines)]
    )


@contextlib.contextmanager
def kafka(partitions: int, workdir: Path | None) -> Iterator[Any]:
    """A real Kafka for the run, from the jars ``make kafka`` fetched."""
    sys.path.insert(0, str(REPO))  # tests.helpers_brokers lives beside the package, not in it
    from tests.helpers_brokers import KafkaServer

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="xpipe-bench-kafka-", dir=workdir))
        yield stack.enter_context(KafkaServer(Path(tmp), partitions=partitions))


def _systems(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {unknown or [text]}; choose from {', '.join(SYSTEMS)}"
        )
    return names


def _non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    # Imported here: xpipe's workers import this module for Enrich and Keep, and need
    # none of python -m bench's runner.
    from bench.__main__ import _positive_float, _positive_int

    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--events", type=_positive_int, default=DEFAULT_EVENTS, help="events preloaded for the throughput run"
    )
    p.add_argument(
        "--paced-events",
        type=_non_negative_int,
        default=DEFAULT_PACED_EVENTS,
        help="events of the latency run (0: none)",
    )
    p.add_argument(
        "--paced-rate",
        type=_positive_float,
        default=DEFAULT_PACED_RATE_PER_S,
        help="events/s of the latency run",
    )
    p.add_argument(
        "--partitions", type=_positive_int, default=DEFAULT_PARTITIONS, help="partitions of every topic"
    )
    p.add_argument("--parallelism", type=_positive_int, default=2, help="instances of each xpipe stage")
    p.add_argument("--repeats", type=_positive_int, default=1, help="samples per system")
    p.add_argument("--timeout-s", type=_positive_float, default=600.0, help="longest one run may take")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"directory for the JSON (default {DEFAULT_OUT})"
    )
    p.add_argument("--workdir", type=Path, help="where Kafka keeps its data (default: system temp)")
    p.add_argument("--systems", type=_systems, default=list(SYSTEMS),
                   help=f"comma-separated subset of: {','.join(SYSTEMS)}")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # aiokafka logs each retried produce at WARNING; a freshly created topic's leader takes
    # a moment, and those retries are expected, not news.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    sizes = StreamSizes(opts.events, opts.paced_events, opts.paced_rate, opts.partitions, opts.parallelism,
                        opts.timeout_s)  # fmt: skip
    started = _dt.datetime.now(_dt.UTC)
    document: dict[str, Any] = {
        "schema": 2,
        "timestamp": started.isoformat(timespec="seconds"),
        "mode": "streams",
        "argv": argv,
        "machine": machine_info() | {"versions_streams": _versions()},
        "xpipe_source": source_info(REPO),
        "repeats": opts.repeats,
        "sizes": {k: getattr(sizes, k) for k in StreamSizes.__dataclass_fields__},
        "scenarios": {},
        "error": None,
    }
    code = 0
    try:
        with kafka(sizes.partitions, opts.workdir) as server:
            entry = run_scenario(server.bootstrap, sizes, repeats=opts.repeats, systems=opts.systems,
                                 log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
        document["systems"] = entry.pop("systems")
        document["scenarios"]["streams"] = entry
        failed = [name for name, status in document["systems"].items() if status.startswith("failed")]
        if failed:
            document["error"] = f"failed: {', '.join(failed)}"
            code = 1
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON and turned into the exit status
        document["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    document["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    path = write_json(opts.out, document, mode="streams", stamp=started.strftime("%Y%m%dT%H%M%SZ"))
    if "streams" in document["scenarios"]:
        print(format_table(document["scenarios"]["streams"]))
        for name, status in document["systems"].items():
            if status != "measured":
                print(f"{name}: {status}")
        for name, samples in document["scenarios"]["streams"]["samples"].items():
            if any(s.get("kept_up") is False for s in samples):
                print(
                    f"{name}: fell behind in a paced run; its latency is a backlog's (see kept_up, drain_s)"
                )
    if document["error"]:
        print(f"ERROR: {document['error']}")
    print(f"results: {path}")
    return code


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("aiokafka", "quixstreams", "confluent-kafka"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
