"""The coordinator keeps a cache hit with its task: state machine, summary, both stores."""

from __future__ import annotations

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import RunRecord, TaskRecord, TaskSucceeded, task_info
from xpipe.coordinator._state import SchedulerState

from tests.unit.test_state import assigns, connect, ok, submit
from tests.unit.test_store_contract import _new_run, make_store, run, shared_etcd  # noqa: F401 - fixtures


def test_a_cache_hit_is_recorded_counted_and_shown():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, slots=2)
    submit(s, {"a": [], "b": ["a"]})
    (a,) = assigns(s.schedule(0.0))
    out = s.handle(TaskSucceeded(1.0, "w1", a.attempt, 1.0, pb.Payload(codec=pb.CODEC_RAW, data=b"A"), cache_hit=True))
    (record,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "a" and r.state == pb.SUCCEEDED]
    assert record.cache_hit and task_info(record).cache_hit
    (b,) = assigns(s.schedule(1.0))
    out = s.handle(ok(b.attempt))
    (record,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "b" and r.state == pb.SUCCEEDED]
    assert not record.cache_hit and not task_info(record).cache_hit
    assert s.runs["r1"].summary().cache_hits == 1


def test_the_cache_hit_flag_round_trips_through_the_store(make_store) -> None:  # noqa: F811 - a fixture
    async def main() -> None:
        async with make_store() as store:
            await store.commit([
                _new_run("r1", 100.0),
                TaskRecord("r1", "t0", pb.SUCCEEDED, 1, "w0", 101.0, 102.0, cache_hit=True),
                TaskRecord("r1", "t1", pb.SUCCEEDED, 1, "w0", 101.0, 102.0),
            ])  # fmt: skip
            stored = await store.get_run("r1")
            assert stored is not None
            assert stored.tasks["t0"].cache_hit and not stored.tasks["t1"].cache_hit
            assert isinstance(stored.header, RunRecord)

    run(main())
