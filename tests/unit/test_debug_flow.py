"""Pure tests of debug runs in the state machine (``_debug_flow``): HELD instead of READY."""

from __future__ import annotations

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import CancelRequested, DebugReleaseRequested, RunRecord, RunRestored
from xpipe.coordinator._events import RunSubmitted, TaskRecord
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec

from tests.unit.test_state import assigns, connect, ok, spec_of, states


def debug_run(s: SchedulerState, edges) -> pb.PipelineSpec:
    spec = spec_of(edges)
    spec.debug = True
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    return spec


def test_a_debug_run_holds_each_task_until_released_and_holds_no_slot():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, slots=1)
    debug_run(s, {"a": [], "b": ["a"]})
    assert states(s) == {"a": "HELD", "b": "PENDING"}
    assert assigns(s.schedule(0.0)) == []
    assert s.held_tasks("r1") == ["a"]
    # Another run goes on meanwhile: the only slot is free.
    other = spec_of({"x": []})
    s.handle(RunSubmitted(0.0, "r2", other, ("x",)))
    (x,) = assigns(s.schedule(0.0))
    assert x.attempt == ("r2", "x", 1)
    s.handle(ok(x.attempt))
    s.handle(DebugReleaseRequested(1.0, "r1", ("a", "b", "nope")))  # b is not held yet: left alone
    assert states(s) == {"a": "READY", "b": "PENDING"}
    (a,) = assigns(s.schedule(1.0))
    s.handle(ok(a.attempt, now=2.0))
    assert states(s)["b"] == "HELD"
    s.handle(DebugReleaseRequested(3.0, "r1", ("b",)))
    (b,) = assigns(s.schedule(3.0))
    out = s.handle(ok(b.attempt, now=4.0))
    assert [r.state for r in out if isinstance(r, RunRecord)] == [pb.RUN_SUCCEEDED]


def test_cancel_cancels_held_tasks():
    s = SchedulerState(prefetch=0, validate=True)
    debug_run(s, {"a": [], "b": []})
    out = s.handle(CancelRequested(1.0, "r1"))
    assert set(states(s).values()) == {"CANCELLED"}
    assert [r.state for r in out if isinstance(r, RunRecord)] == [pb.RUN_CANCELLED]


def test_held_tasks_stay_held_after_a_restart():
    s = SchedulerState(prefetch=0, validate=True)
    spec = spec_of({"a": [], "b": ["a"], "c": ["a"]})
    spec.debug = True
    records = {
        "a": TaskRecord("r1", "a", pb.SUCCEEDED, 1, "w1", 0.0, 1.0, None, pb.Payload(data=b"A")),
        "b": TaskRecord("r1", "b", pb.HELD, 0, ""),
    }
    s.handle(RunRestored(100.0, "r1", spec, ("a", "b", "c"), 0.0, records))
    # b was held before the restart and stays so; c's upstream is done, so it is held now.
    assert states(s) == {"a": "SUCCEEDED", "b": "HELD", "c": "HELD"}
    connect(s, now=100.0)
    assert assigns(s.schedule(100.0)) == []
