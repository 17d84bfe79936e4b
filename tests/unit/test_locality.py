"""Locality: a task whose inputs are big results goes to the worker that made them, load allowing.

Pure tests of the coordinator's state machine and placement index: events in, actions out.
"""

from __future__ import annotations

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._placement import PlacementIndex, Request, big_input_holder
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec

BIG = pb.Payload(codec=pb.CODEC_RAW, artifact_ref="file:///artifacts/r1/a.1", size_bytes=1 << 20)
SMALL = pb.Payload(codec=pb.CODEC_RAW, data=b"small", size_bytes=5)


def _started(others: int, result: pb.Payload) -> tuple[SchedulerState, Assign]:
    """w1 (2 slots) holds producer ``a`` and ``others`` more tasks; w2 (1 slot) joins idle;
    ``a`` ends with ``result``.

    Returns the state and the Assign of ``a``'s consumer ``b``.
    """
    s = SchedulerState(prefetch=2, validate=True)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 2))
    spec = pb.PipelineSpec(name="p")
    for name, deps in {"a": [], **{f"y{i}": [] for i in range(others)}, "b": ["a"]}.items():
        spec.tasks.add(name=name, depends_on=deps).python.import_path = "m:f"
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    first = [a for a in s.schedule(0.0) if isinstance(a, Assign)]
    assert {a.worker_id for a in first} == {"w1"} and len(first) == 1 + others
    s.handle(WorkerConnected(0.0, "w2", "w2", "host", 1))
    s.handle(TaskSucceeded(1.0, "w1", ("r1", "a", 1), 1.0, result))
    (b,) = [a for a in s.schedule(1.0) if isinstance(a, Assign)]
    assert b.attempt == ("r1", "b", 1)
    return s, b


def test_consumer_of_a_big_result_goes_to_the_holder_when_it_has_room():
    s, b = _started(1, BIG)
    # The strategy alone would choose idle w2 (see the next test); w1 holds a's bytes and
    # one other task, with a slot free: locality wins.
    assert b.worker_id == "w1"
    assert s.placement.locality_hits == 1
    assert b.upstream[0].artifact_ref == BIG.artifact_ref


def test_consumer_of_a_small_result_is_placed_by_the_strategy_alone():
    s, b = _started(1, SMALL)
    assert b.worker_id == "w2"
    assert s.placement.locality_hits == 0


def test_consumer_of_a_big_result_avoids_a_busy_holder():
    # w1 has credit left but holds three attempts, more than its two slots beyond idle
    # w2's: queueing there costs more than reading the file w1 wrote.
    s, b = _started(3, BIG)
    assert b.worker_id == "w2"
    assert s.placement.locality_hits == 0


def test_a_holder_without_room_is_not_preferred():
    idx = PlacementIndex()
    for wid in ("w1", "w2"):
        idx.upsert(wid, slots=1, credit=1, resources=None, labels={})
    one = Request.of(None)
    idx.hold("w1", "y", one)  # w1's only slot is taken
    assert idx.prefer_holder("w1", "w2", one) == "w2"
    idx.release("w1", "y")
    assert idx.prefer_holder("w1", "w2", one) == "w1"
    idx.set_eligible("w1", False)  # draining or disconnected
    assert idx.prefer_holder("w1", "w2", one) == "w2"
    assert idx.prefer_holder("gone", "w2", one) == "w2"
    assert idx.locality_hits == 1


def test_holder_is_the_worker_with_most_bytes_by_reference():
    big = pb.Payload(artifact_ref="file:///d/r/x.1", size_bytes=3 << 20)
    assert big_input_holder([("w1", BIG), ("w2", big), ("w1", SMALL)]) == "w2"
    assert big_input_holder([("w1", SMALL), ("w2", None), ("", BIG)]) == ""


def test_a_ready_consumer_of_a_big_result_goes_before_more_producers():
    # One worker, one slot: when a's slot frees, b (a's consumer) takes it ahead of d,
    # although d heads a longer chain (d -> e); with a small result, d goes first.
    for result, expected in ((BIG, "b"), (SMALL, "d")):
        s = SchedulerState(prefetch=0, validate=True)
        s.handle(WorkerConnected(0.0, "w1", "w1", "host", 1))
        spec = pb.PipelineSpec(name="p")
        for name, deps in {"a": [], "b": ["a"], "c": [], "d": ["c"], "e": ["d"]}.items():
            spec.tasks.add(name=name, depends_on=deps).python.import_path = "m:f"
        s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
        (c,) = [x for x in s.schedule(0.0) if isinstance(x, Assign)]  # c heads the longest chain
        s.handle(TaskSucceeded(1.0, "w1", c.attempt, 1.0, SMALL))
        (a,) = [x for x in s.schedule(1.0) if isinstance(x, Assign)]
        assert a.attempt[1] == "a"
        s.handle(TaskSucceeded(2.0, "w1", a.attempt, 2.0, result))
        (nxt,) = [x for x in s.schedule(2.0) if isinstance(x, Assign)]
        assert nxt.attempt[1] == expected
