"""The streams bench (``python -m bench.streams``) run tiny on the session's real Kafka.

Benchmarks are not tests: this checks that each peer delivers every event exactly once
through both stages (read back from the output topic by the test itself), that the
sample's fields are filled, that xpipe is reported as not run while its runtime is not
built, and that a peer that dies or a lost event fails the measurement with a clear message.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys

import pytest

from bench import streams
from bench._report import BenchError
from bench._streams_peers import quix_missing
from tests.harness import REPO_ROOT

EVENTS = 2_000
PARTITIONS = 4


async def _output_ids(bootstrap: str, topic: str, count: int) -> collections.Counter[int]:
    """The ids on ``topic``, read by a consumer of the test's own, stopping at ``count`` records."""
    async with streams.Collector(bootstrap, topic, lambda: None) as collector:
        seen = await collector.until(count, timeout_s=30.0)
        # Anything beyond ``count`` (a duplicate) would already be there: the pipeline has stopped.
        more = await collector._consumer.getmany(timeout_ms=500)
    extra = [json.loads(r.value)["id"] for records in more.values() for r in records]
    return collections.Counter(seen.ids + extra)


def _starters() -> list:
    quix = pytest.param(streams.start_quix, id="quix",
                        marks=pytest.mark.skipif(quix_missing() is not None, reason=str(quix_missing())))  # fmt: skip
    return [pytest.param(streams.start_plain, id="aiokafka"), quix]


@pytest.mark.parametrize("start", _starters())
def test_peer_delivers_every_event_once(kafka_server, broker_ns, start) -> None:
    topics = streams.Topics(broker_ns)
    sample = streams.measure_throughput(kafka_server.bootstrap, topics, EVENTS, start, partitions=PARTITIONS,
                                        timeout_s=60.0)  # fmt: skip
    expected = streams.expected_ids(range(EVENTS))
    assert 0 < expected.total() < EVENTS  # the filter drops some events, keeps most
    got = asyncio.run(_output_ids(kafka_server.bootstrap, topics.output, expected.total()))
    assert got == expected
    assert sample["events"] == EVENTS and sample["outputs"] == expected.total()
    assert sample["events_per_s"] > 0 and sample["total_s"] >= sample["startup_s"] > 0


def test_scenario_measures_xpipe_and_the_plain_loop(kafka_server) -> None:
    sizes = streams.StreamSizes(events=500, paced_events=500, paced_rate_per_s=5_000.0, partitions=PARTITIONS,
                                timeout_s=60.0)  # fmt: skip
    try:
        entry = streams.run_scenario(kafka_server.bootstrap, sizes, systems=["xpipe", "aiokafka"])  # quix: above
    finally:
        streams.close_xpipe_managers()
    assert entry["systems"] == {"xpipe": "measured", "aiokafka": "measured", "quix": "skipped: left out (--systems)"}
    for system in ("xpipe", "aiokafka"):
        sample = entry["samples"][system][0]  # every event arrived exactly once, or the run failed
        for key in ("events_per_s", "steady_events_per_s", "startup_s", "p50_ms", "p99_ms", "produced_per_s"):
            assert sample[key] > 0, (system, key)
        assert sample["p50_ms"] <= sample["p99_ms"] <= sample["max_ms"]
        assert isinstance(sample["kept_up"], bool) and sample["drain_s"] > -1.0  # within clock steps
    rows = {row["metric"]: row for row in entry["summary"]}
    assert rows["events_per_s"]["aiokafka"]["n"] == 1 and rows["events_per_s"]["xpipe"]["n"] == 1
    assert rows["events_per_s"]["ratio_aiokafka"] > 0
    assert rows["events_per_s"]["met"] is None  # judged only with both peers measured
    assert "aiokafka" in streams.format_table(entry)


def test_a_peer_that_dies_fails_the_measurement(kafka_server, broker_ns) -> None:
    def start_broken(bootstrap: str, topics: streams.Topics) -> streams.Running:
        return streams.PeerProcess("no-such-peer", bootstrap, topics)

    with pytest.raises(
        BenchError, match=r"the pipeline stopped with 0 of \d+ output records: exit 1: .*no-such-peer"
    ):
        streams.measure_throughput(kafka_server.bootstrap, streams.Topics(broker_ns), 10, start_broken,
                                   partitions=1, timeout_s=30.0)  # fmt: skip


def test_a_failing_system_is_reported_and_the_others_still_measured(kafka_server, monkeypatch) -> None:
    def start_broken(bootstrap: str, topics: streams.Topics) -> streams.Running:
        return streams.PeerProcess("no-such-peer", bootstrap, topics)

    # The aiokafka slot runs a peer process that exits at once; quix still runs for real.
    monkeypatch.setattr(streams, "start_plain", start_broken)
    sizes = streams.StreamSizes(events=200, paced_events=0, partitions=PARTITIONS, timeout_s=30.0)
    if quix_missing() is not None:
        pytest.skip(quix_missing())
    entry = streams.run_scenario(kafka_server.bootstrap, sizes, systems=["aiokafka", "quix"])
    assert entry["systems"]["aiokafka"].startswith("failed: the pipeline stopped with 0 of")
    assert entry["systems"]["quix"] == "measured" and entry["samples"]["quix"][0]["events"] == 200


def test_lost_or_duplicated_events_are_named() -> None:
    expected = collections.Counter([1, 2, 3])
    seen = streams.Seen(ids=[1, 3, 3, 4], ts_s=[0.0] * 4, seen_s=[0.0] * 4)
    with pytest.raises(BenchError, match=r"1 missing \(e\.g\. \[2\]\), 2 extra \(e\.g\. \[3, 4\]\)"):
        streams.check_ids(seen, expected, "run x")
    streams.check_ids(streams.Seen([3, 2, 1], [0.0] * 3, [0.0] * 3), expected, "run y")  # same multiset: fine


def test_a_pipeline_that_never_delivers_times_out_with_the_count(kafka_server, broker_ns) -> None:
    topic = f"{broker_ns}-out"
    asyncio.run(streams.create_topics(kafka_server.bootstrap, [topic], 2))

    async def wait_for_one() -> None:
        async with streams.Collector(kafka_server.bootstrap, topic, lambda: None) as collector:
            await collector.until(1, timeout_s=0.5)

    with pytest.raises(BenchError, match=rf"{topic}: 0 of 1 output records after 0.5 s"):
        asyncio.run(wait_for_one())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--events", "0"], "--events: must be at least 1, got 0"),
        (["--paced-rate", "0"], "--paced-rate: must be above 0, got 0.0"),
        (["--paced-events", "-1"], "--paced-events: must be 0 or more, got -1"),
        (["--paced-events", "many"], "--paced-events: expected a whole number, got 'many'"),
        (["--timeout-s", "soon"], "--timeout-s: expected a number, got 'soon'"),
        (["--systems", "xpipe,flink"], "--systems: unknown system(s) ['flink']"),
    ],
)
def test_bad_arguments_are_refused_before_kafka_starts(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        streams.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_quix_not_installed_is_reported_as_skipped() -> None:
    # A real interpreter in which ``import quixstreams`` fails, as where the bench extra is missing.
    code = (
        "import sys; sys.modules['quixstreams'] = None\n"
        "from bench import streams\n"
        "starters, skipped = streams._starters(streams.StreamSizes())\n"
        "print(sorted(starters), skipped['quix'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert "['aiokafka', 'xpipe'] quixstreams is not installed" in done.stdout
