"""The stage instance's pure parts: topology, partition ownership, commit position, control."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers_streamjobs import Counting, Enrich, WindowCount
from xpipe import DataStream, DataStreamError, StreamPipeline
from xpipe.streams._instance import InstanceOptions, StageInstance, _Output, _percentile, stage_topology


def two_stage(source: str = "kafka://127.0.0.1:9092/events", *, p1: int = 2, p2: int = 3):
    sp = StreamPipeline("p")
    stream = DataStream("events", source=source, key="user")
    first = sp.transform(stream, Enrich(), parallelism=p1, name="first")
    second = sp.transform(first, Counting(), parallelism=p2, name="second")
    sp.output(second, "redis://127.0.0.1:6379/out")
    sp.output(first, "file:///tmp/first.jsonl")
    return sp.plan()


def instance(plan, stage: str, index: int, **options) -> StageInstance:
    async def make():  # the buffer's events want a running loop on old Pythons
        return StageInstance(plan, stage, index, InstanceOptions(**options))

    return asyncio.run(make())


def test_topology_reads_the_source_then_the_internal_stream_on_the_same_broker():
    plan = two_stage()
    first, second = plan.stages
    t1 = stage_topology(plan, first)
    assert str(t1.input_uri) == "kafka://127.0.0.1:9092/events" and t1.from_source
    assert [str(u) for u in t1.outputs] == ["kafka://127.0.0.1:9092/p.first", "file:///tmp/first.jsonl"]
    assert t1.internal_partitions == 3  # as many as the instances that read it
    t2 = stage_topology(plan, second)
    assert str(t2.input_uri) == "kafka://127.0.0.1:9092/p.first" and not t2.from_source
    assert [str(u) for u in t2.outputs] == ["redis://127.0.0.1:6379/out"]
    assert str(t2.dlq_uri) == "kafka://127.0.0.1:9092/p.second.dlq"
    assert str(t2.late_uri) == "kafka://127.0.0.1:9092/p.second.late"


def test_file_and_memory_pipelines_keep_internal_streams_on_the_memory_broker():
    plan = two_stage("file:///tmp/in.jsonl")
    assert str(stage_topology(plan, plan.stages[1]).input_uri) == "memory://p.first"


def test_partition_ownership_covers_every_partition_once():
    plan = two_stage(p1=3)
    owners = [instance(plan, "first", i)._owned(8) for i in range(3)]
    assert all(not filtering for _, filtering in owners)
    assert sorted(p for owned, _ in owners for p in owned) == list(range(8))


def test_fewer_partitions_than_instances_means_each_reads_all_and_filters_by_key():
    plan = two_stage(p1=3)
    assert instance(plan, "first", 1)._owned(1) == (None, True)


def test_auto_scaling_moves_ownership_to_the_active_instances():
    plan = two_stage(p1=3)
    runtime = instance(plan, "first", 0, auto_scaling=True)
    runtime.apply_control(active_instances=1)
    assert runtime.active == 1 and runtime._owned(4) == ([0, 1, 2, 3], False)
    runtime.apply_control(active_instances=0)  # 0: all active
    assert runtime.active == 3


def test_control_answers_drain_stop_and_fence():
    plan = two_stage()
    runtime = instance(plan, "first", 0)
    runtime.apply_control(drain=True)
    assert runtime.stopping == "drain"
    runtime.apply_control(stop=True)
    assert runtime.stopping == "stop" and runtime.buffer.closed
    runtime = instance(plan, "first", 1)
    runtime.apply_control(fenced=True)
    assert runtime.fenced and runtime.buffer.closed
    runtime.apply_control(active_instances=1)  # without auto-scaling the count is ignored
    assert runtime.active == 2


def test_commit_position_stops_before_the_oldest_record_still_pending():
    runtime = instance(two_stage(), "first", 0)
    runtime._next_index = 10  # records 0..9 fetched
    assert runtime._done_upto() == 9  # nothing pending: all done
    runtime.buffer.put_nowait((6, {}, 0.0))
    assert runtime._done_upto() == 5
    runtime._batch_first = 3  # a batch from 3 is being processed
    assert runtime._done_upto() == 2
    runtime._fetch_current = 1  # the fetcher holds 1 across an await (a dead-letter write)
    assert runtime._done_upto() == 0


def test_outputs_spread_unkeyed_records_and_pin_keyed_ones():
    output = _Output(None, None, 4)
    assert {output.record(b"x", None, None).partition for _ in range(8)} == {0, 1, 2, 3}
    keyed = {output.record(b"x", b"k", "k").partition for _ in range(5)}
    assert len(keyed) == 1
    assert _Output(None, None, 0).record(b"x", None, None).partition is None  # the broker picks


def test_bad_stage_or_instance_is_refused_by_name():
    plan = two_stage()
    with pytest.raises(DataStreamError, match="no stage 'nope'"):
        instance(plan, "nope", 0)
    with pytest.raises(DataStreamError, match=r"instance 2 is not in 0..1"):
        instance(plan, "first", 2)


def test_window_stage_is_stateful_and_checkpoints_its_windows():
    sp = StreamPipeline("w")
    stream = DataStream("events", source="memory://in", time_field="t")
    sp.output(sp.transform(stream, WindowCount(), window_size="10s", name="win"), "memory://out")
    runtime = instance(sp.plan(), "win", 0)
    assert runtime._stateful
    stateless = instance(two_stage(), "first", 0)
    assert not stateless._stateful
    stateless.task.state["n"] = 1  # a task that keeps state becomes stateful
    assert stateless._stateful


def test_latency_percentiles_weigh_each_sample_by_its_records():
    samples = [(0.01, 98), (1.0, 2)]
    assert _percentile(samples, 0.5) == 0.01
    assert _percentile(samples, 0.99) == 1.0
    assert _percentile([], 0.5) == 0.0
