"""Pure tests of the coordinator's state machine: events in, actions out, no I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe._domain import error_type_name
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import (
    Assign,
    CancelAttempts,
    CancelRequested,
    DrainRequested,
    DrainWorker,
    HeartbeatReceived,
    RunRecord,
    RunRestored,
    ResetWorker,
    RunEvicted,
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskReleased,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerConnected,
    WorkerDisconnected,
)
from xpipe.coordinator._state import InvalidTransition, SchedulerState
from xpipe.coordinator._validate import validate_spec


def spec_of(edges: dict[str, list[str]], *, retries: dict[str, int] | None = None, handler: dict[str, str] | None = None,
            max_parallel: int = 0) -> pb.PipelineSpec:  # fmt: skip
    spec = pb.PipelineSpec(name="p", retry_on_failure=True, max_parallel=max_parallel)
    for name, deps in edges.items():
        t = spec.tasks.add(name=name, depends_on=deps)
        if handler and name in handler:
            t.handler.name = handler[name]
        else:
            t.python.import_path = "m:f"
        if retries and name in retries:
            t.retry.max_retries = retries[name]
    return spec


def submit(state: SchedulerState, edges, now=0.0, run_id="r1", **kw):
    spec = spec_of(edges, **kw)
    return state.handle(RunSubmitted(now, run_id, spec, tuple(validate_spec(spec))))


def connect(state: SchedulerState, wid="w1", slots=1, now=0.0, **kw):
    return state.handle(WorkerConnected(now, wid, wid, "host", slots, **kw))


def ok(key, wid="w1", now=1.0, value=b"v"):
    return TaskSucceeded(now, wid, key, now, pb.Payload(codec=pb.CODEC_RAW, data=value))


def fail(key, wid="w1", now=1.0, error_type="TASK_FAILURE"):
    return TaskFailed(now, wid, key, now, pb.TaskError(error_type=error_type, message="boom"))


def assigns(actions):
    return [a for a in actions if isinstance(a, Assign)]


def states(state, run_id="r1"):
    return {n: pb.TaskState.Name(t.state) for n, t in state.runs[run_id].tasks.items()}


def test_chain_runs_in_order_and_passes_results():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    out = submit(s, {"a": [], "b": ["a"], "c": ["b"]})
    assert isinstance(out[0], RunRecord) and out[0].spec is not None
    (a,) = assigns(s.schedule(0.0))
    assert a.attempt == ("r1", "a", 1)
    assert assigns(s.schedule(0.0)) == []  # no credit left, b not ready
    s.handle(ok(a.attempt, value=b"A"))
    (b,) = assigns(s.schedule(1.0))
    assert b.attempt[1] == "b" and b.upstream[0].data == b"A"
    s.handle(ok(b.attempt))
    (c,) = assigns(s.schedule(1.0))
    out = s.handle(ok(c.attempt))
    run_rec = [r for r in out if isinstance(r, RunRecord)]
    assert run_rec and run_rec[-1].state == pb.RUN_SUCCEEDED
    assert states(s) == {"a": "SUCCEEDED", "b": "SUCCEEDED", "c": "SUCCEEDED"}


def test_assigned_record_precedes_its_assign():
    s = SchedulerState(prefetch=0)
    connect(s)
    submit(s, {"a": []})
    actions = s.schedule(0.0)
    kinds = [type(a).__name__ for a in actions]
    assert kinds == ["TaskRecord", "Assign"]
    assert actions[0].state == pb.ASSIGNED and actions[0].attempt == 1


def test_credit_is_slots_plus_prefetch():
    s = SchedulerState(prefetch=2)
    connect(s, slots=3)
    submit(s, {f"t{i}": [] for i in range(20)})
    assert len(assigns(s.schedule(0.0))) == 5
    assert assigns(s.schedule(0.0)) == []


def test_load_is_balanced_across_workers():
    s = SchedulerState(prefetch=0)
    connect(s, "w1", slots=4)
    connect(s, "w2", slots=4)
    submit(s, {f"t{i}": [] for i in range(8)})
    by_worker = {}
    for a in assigns(s.schedule(0.0)):
        by_worker[a.worker_id] = by_worker.get(a.worker_id, 0) + 1
    assert by_worker == {"w1": 4, "w2": 4}


def test_handler_tasks_go_only_to_workers_serving_the_handler():
    s = SchedulerState(prefetch=4)
    connect(s, "plain", slots=4)
    connect(s, "resizer", slots=1, handlers=frozenset({"resize"}))
    submit(s, {"h1": [], "h2": [], "p": []}, handler={"h1": "resize", "h2": "resize"})
    placed = {a.attempt[1]: a.worker_id for a in assigns(s.schedule(0.0))}
    assert placed["h1"] == "resizer" and placed["h2"] == "resizer"


def test_handler_task_waits_for_a_worker_that_serves_it():
    """With ``wait_for_resources_s`` (else it fails HANDLER_NOT_FOUND: the tests below)."""
    s = SchedulerState(prefetch=0)
    connect(s, "plain")
    spec = spec_of({"h": []}, handler={"h": "resize"})
    spec.wait_for_resources_s = 60.0
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    assert assigns(s.schedule(0.0)) == []
    connect(s, "resizer", handlers=frozenset({"resize"}))
    assert [a.worker_id for a in assigns(s.schedule(0.0))] == ["resizer"]


def test_pickled_code_is_sent_once_per_worker():
    s = SchedulerState(prefetch=0)
    connect(s, slots=1)
    spec = pb.PipelineSpec(name="p")
    for name in ("a", "b"):
        spec.tasks.add(name=name).python.code_hash = "h1"
    spec.code.add(code_hash="h1", data=b"code")
    s.handle(RunSubmitted(0.0, "r1", spec, ("a", "b")))
    (first,) = assigns(s.schedule(0.0))
    assert [c.code_hash for c in first.code] == ["h1"]
    s.handle(ok(first.attempt))
    (second,) = assigns(s.schedule(1.0))
    assert second.code == ()


def test_failure_marks_dependents_upstream_failed_and_independent_branch_goes_on():
    s = SchedulerState(prefetch=4, validate=True)
    connect(s, slots=2)
    submit(s, {"a": [], "b": ["a"], "c": ["b"], "x": []})
    got = {a.attempt[1]: a for a in assigns(s.schedule(0.0))}
    s.handle(fail(got["a"].attempt))
    assert states(s)["b"] == "UPSTREAM_FAILED" and states(s)["c"] == "UPSTREAM_FAILED"
    assert error_type_name(s.runs["r1"].tasks["b"].error) == "UPSTREAM_FAILED"
    out = s.handle(ok(got["x"].attempt))
    assert [r.state for r in out if isinstance(r, RunRecord)] == [pb.RUN_FAILED]


def test_retry_waits_then_runs_a_new_attempt():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    spec = spec_of({"a": []}, retries={"a": 1})
    spec.tasks[0].retry.retry_delay_s = 5.0
    s.handle(RunSubmitted(0.0, "r1", spec, ("a",)))
    (a1,) = assigns(s.schedule(0.0))
    s.handle(fail(a1.attempt, now=1.0))
    assert states(s)["a"] == "RETRY_WAIT"
    s.handle(Tick(5.9))
    assert assigns(s.schedule(5.9)) == []
    s.handle(Tick(6.0))
    (a2,) = assigns(s.schedule(6.0))
    assert a2.attempt == ("r1", "a", 2)
    s.handle(fail(a2.attempt, now=7.0))
    assert states(s)["a"] == "FAILED"


def test_a_failed_attempts_result_is_kept_with_the_failed_task_and_the_last_attempt_wins():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    spec = spec_of({"a": []}, retries={"a": 1})
    spec.tasks[0].retry.retry_delay_s = 1.0
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    (a1,) = assigns(s.schedule(0.0))
    kept = pb.Payload(codec=pb.CODEC_JSON, data=b'{"stdout": "1", "stderr": "", "exit_code": 3}')
    s.handle(TaskFailed(1.0, "w1", a1.attempt, 1.0, pb.TaskError(message="exit 3", exit_code=3), result=kept))
    assert states(s)["a"] == "RETRY_WAIT"
    s.handle(Tick(3.0))
    (a2,) = assigns(s.schedule(3.0))
    second = pb.Payload(codec=pb.CODEC_JSON, data=b'{"stdout": "2", "stderr": "", "exit_code": 4}')
    out = s.handle(TaskFailed(4.0, "w1", a2.attempt, 4.0, pb.TaskError(message="exit 4", exit_code=4), result=second))
    (record,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "a"]
    assert record.state == pb.FAILED and record.result == second and record.error.exit_code == 4
    # A failure without a result (not a command) leaves none of an earlier attempt's behind.
    s2 = SchedulerState(prefetch=0, validate=True)
    connect(s2)
    s2.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    (b1,) = assigns(s2.schedule(0.0))
    s2.handle(TaskFailed(1.0, "w1", b1.attempt, 1.0, pb.TaskError(message="exit 3"), result=kept))
    s2.handle(Tick(3.0))
    (b2,) = assigns(s2.schedule(3.0))
    out = s2.handle(fail(b2.attempt, now=4.0))
    (record,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "a"]
    assert record.state == pb.FAILED and record.result is None


def test_retry_on_failure_false_turns_retries_off():
    s = SchedulerState(prefetch=0)
    connect(s)
    spec = spec_of({"a": []}, retries={"a": 3})
    spec.retry_on_failure = False
    s.handle(RunSubmitted(0.0, "r1", spec, ("a",)))
    (a1,) = assigns(s.schedule(0.0))
    s.handle(fail(a1.attempt))
    assert states(s)["a"] == "FAILED"


def test_stale_result_from_lost_worker_is_dropped_and_completion_recorded_once():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True)
    connect(s, "w1")
    submit(s, {"a": []})
    (first,) = assigns(s.schedule(0.0))
    connect(s, "w2", now=0.0)
    s.handle(HeartbeatReceived(9.0, "w2"))
    out = s.handle(Tick(10.5))  # w1 silent since 0.0: lost
    assert any(isinstance(r, TaskRecord) and r.state == pb.READY for r in out)
    assert s.workers["w1"].state == "lost"
    (second,) = assigns(s.schedule(10.5))
    assert second.worker_id == "w2" and second.attempt[2] == 2
    s.handle(ok(first.attempt, "w1", now=11.0))  # the lost worker comes back with an old result
    assert s.stale_results == 1 and states(s)["a"] == "ASSIGNED"
    out = s.handle(ok(second.attempt, "w2", now=12.0))
    succeeded = [r for r in out if isinstance(r, TaskRecord) and r.state == pb.SUCCEEDED]
    assert len(succeeded) == 1
    s.handle(ok(second.attempt, "w2", now=12.5))  # a duplicate of the same event
    assert s.stale_results == 2


def test_lost_worker_heard_from_again_is_reset_then_registers_and_gets_work():
    """A paused worker (SIGSTOP past the deadline, then SIGCONT) is used again."""
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True)
    connect(s, "w1")
    connect(s, "w2")
    submit(s, {"a": [], "b": []})
    first = {a.attempt[1]: a for a in assigns(s.schedule(0.0))}
    s.handle(HeartbeatReceived(9.0, "w2", tuple(a.attempt for a in first.values() if a.worker_id == "w2")))
    s.handle(Tick(10.5))  # w1 silent since 0.0: lost, its attempt requeued
    assert s.workers["w1"].state == "lost"
    out = s.handle(HeartbeatReceived(11.0, "w1", tuple(a.attempt for a in first.values() if a.worker_id == "w1")))
    assert out == [ResetWorker("w1", "worker w1 was presumed lost; register again")]
    # More word from the same stream before it closes: told once only.
    assert s.handle(HeartbeatReceived(11.1, "w1")) == []
    lost_attempt = next(a.attempt for a in first.values() if a.worker_id == "w1")
    assert s.handle(TaskStarted(11.2, "w1", lost_attempt, 11.2)) == []
    # It registers again, still running its superseded attempt: that attempt is cancelled.
    s.handle(WorkerDisconnected(11.3, "w1"))
    out = connect(s, "w1", now=11.4, running=(lost_attempt,))
    assert CancelAttempts("w1", (lost_attempt,)) in out
    assert s.workers["w1"].state == "ready" and s.workers["w1"].connected
    # And it gets work again.
    submit(s, {"c": []}, now=11.5, run_id="r2")
    placed = {a.worker_id for a in assigns(s.schedule(11.5))}
    assert "w1" in placed


def test_result_from_a_lost_worker_resets_it_and_is_fenced():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True)
    connect(s, "w1")
    submit(s, {"a": []})
    (first,) = assigns(s.schedule(0.0))
    s.handle(Tick(10.5))
    out = s.handle(ok(first.attempt, "w1", now=11.0))
    assert [a for a in out if isinstance(a, ResetWorker)] == [ResetWorker("w1", "worker w1 was presumed lost; register again")]
    assert s.stale_results == 1 and states(s)["a"] == "READY"


def test_cancel_cancels_everything_and_tells_workers():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, slots=1)
    submit(s, {"a": [], "b": ["a"], "c": []})
    (a,) = assigns(s.schedule(0.0))
    out = s.handle(CancelRequested(1.0, "r1"))
    cancels = [x for x in out if isinstance(x, CancelAttempts)]
    assert cancels == [CancelAttempts("w1", (a.attempt,))]
    assert set(states(s).values()) == {"CANCELLED"}
    assert [r.state for r in out if isinstance(r, RunRecord)] == [pb.RUN_CANCELLED]
    s.handle(fail(a.attempt, error_type="CANCELLED"))  # the worker reports the killed attempt
    assert s.workers["w1"].assigned == {}
    assert s.handle(CancelRequested(2.0, "r1")) == []  # idempotent


def test_max_parallel_one_runs_one_task_at_a_time():
    s = SchedulerState(prefetch=8)
    connect(s, slots=4)
    submit(s, {f"t{i}": [] for i in range(5)}, max_parallel=1)
    (first,) = assigns(s.schedule(0.0))
    assert assigns(s.schedule(0.0)) == []
    s.handle(ok(first.attempt))
    assert len(assigns(s.schedule(1.0))) == 1


def test_drain_stops_new_assignments():
    s = SchedulerState(prefetch=0)
    connect(s, "w1", slots=1)
    out = s.handle(DrainRequested(0.0, "w1"))
    assert out == [DrainWorker("w1")]
    submit(s, {"a": []})
    assert assigns(s.schedule(0.0)) == []


def test_released_attempt_is_requeued_at_once():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "w1")
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    s.handle(TaskReleased(1.0, "w1", a.attempt))
    assert states(s)["a"] == "READY"
    (again,) = assigns(s.schedule(1.0))
    assert again.attempt[2] == 2


def test_attempt_not_held_by_worker_is_requeued_after_grace():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0)
    connect(s, "w1")
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    s.handle(HeartbeatReceived(1.0, "w1", running=()))  # maybe still in flight: keep it
    assert states(s)["a"] == "ASSIGNED"
    s.handle(HeartbeatReceived(6.0, "w1", running=()))  # lost in transit
    assert states(s)["a"] == "READY"


def test_an_attempt_still_on_its_way_is_not_requeued_however_late():
    """On an overloaded coordinator the write of an assignment can lag its placement past the
    grace; a heartbeat whose count does not cover it says it is on its way, not lost."""
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0)
    connect(s, "w1")
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    s.handle(HeartbeatReceived(60.0, "w1", running=(), on_their_way=frozenset({a.attempt})))
    assert states(s)["a"] == "ASSIGNED", "not received yet: not lost"
    s.handle(HeartbeatReceived(61.0, "w1", running=()))  # its count covers it now, and it is not held
    assert states(s)["a"] == "READY"


def test_a_stream_session_confirms_what_the_worker_counted():
    from xpipe.coordinator._engine import _Session

    session = _Session("w1")
    for n, key in enumerate([("r", "a", 1), ("r", "b", 1), ("r", "c", 1)], start=1):
        session.queued = n
        session.unconfirmed[key] = n
    assert session.confirm(0) == {("r", "a", 1), ("r", "b", 1), ("r", "c", 1)}
    assert session.confirm(2) == {("r", "c", 1)} and list(session.unconfirmed) == [("r", "c", 1)]
    assert session.confirm(3) == frozenset() and session.unconfirmed == {}


def test_started_then_disconnect_then_reconnect_keeps_attempt():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0)
    connect(s, "w1")
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    s.handle(TaskStarted(0.5, "w1", a.attempt, 0.5))
    s.handle(WorkerDisconnected(1.0, "w1"))
    connect(s, "w1", now=2.0, running=(a.attempt,))
    s.handle(Tick(11.5))  # reconnected at 2.0: not lost
    assert states(s)["a"] == "RUNNING"
    s.handle(ok(a.attempt, now=3.0))
    assert states(s)["a"] == "SUCCEEDED"


def test_restore_resumes_run_and_waits_for_the_worker():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True)
    spec = spec_of({"a": [], "b": ["a"], "c": ["b"]})
    records = {
        "a": TaskRecord("r1", "a", pb.SUCCEEDED, 1, "w1", 0.0, 1.0, None, pb.Payload(codec=pb.CODEC_RAW, data=b"A")),
        "b": TaskRecord("r1", "b", pb.RUNNING, 1, "w1", 1.0),
    }
    s.handle(RunRestored(100.0, "r1", spec, ("a", "b", "c"), 0.0, records))
    assert states(s) == {"a": "SUCCEEDED", "b": "RUNNING", "c": "PENDING"}
    connect(s, "w1", now=101.0, running=(("r1", "b", 1),))
    s.handle(ok(("r1", "b", 1), now=102.0))
    (c,) = assigns(s.schedule(102.0))
    assert c.attempt == ("r1", "c", 1)


def test_restore_requeues_attempts_of_a_worker_that_never_returns():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0)
    spec = spec_of({"a": []})
    s.handle(RunRestored(100.0, "r1", spec, ("a",), 0.0, {"a": TaskRecord("r1", "a", pb.ASSIGNED, 3, "gone")}))
    connect(s, "w2", now=100.0)
    s.handle(HeartbeatReceived(110.0, "w2"))
    s.handle(Tick(110.5))
    (a,) = assigns(s.schedule(110.5))
    assert a.worker_id == "w2" and a.attempt == ("r1", "a", 4)


def test_invalid_transition_is_refused():
    s = SchedulerState()
    submit(s, {"a": []})
    run = s.runs["r1"]
    with pytest.raises(InvalidTransition, match="READY -> SUCCEEDED"):
        s._move(run, run.tasks["a"], pb.SUCCEEDED, [])


@st.composite
def random_dags(draw):
    n = draw(st.integers(1, 30))
    edges = {}
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=min(i, 4), unique=True)) if i else []
        edges[f"t{i}"] = [f"t{d}" for d in deps]
    return edges


@settings(max_examples=60, deadline=None)
@given(edges=random_dags(), seed=st.integers(0, 2**32 - 1), n_workers=st.integers(1, 3))
def test_random_dags_respect_dependencies_and_run_each_task_once(edges, seed, n_workers):
    """Random completion order, random worker losses: every task completes exactly once,
    never before its dependencies."""
    rng = random.Random(seed)
    s = SchedulerState(prefetch=rng.randint(0, 3), heartbeat_timeout_s=5.0, validate=True)
    now = 0.0
    for i in range(n_workers):
        connect(s, f"w{i}", slots=rng.randint(1, 3))
    submit(s, edges)
    inflight: list[Assign] = []
    completed: list[str] = []
    finished_at: dict[str, int] = {}
    for _ in range(10_000):
        now += 0.1
        inflight.extend(assigns(s.schedule(now)))
        for w in list(s.workers.values()):
            if w.state != "lost":
                s.handle(HeartbeatReceived(now, w.worker_id, running=tuple(w.assigned)))
        if s.runs["r1"].state == pb.RUN_SUCCEEDED:
            break
        if not inflight:
            continue
        a = inflight.pop(rng.randrange(len(inflight)))
        if rng.random() < 0.05 and s.workers[a.worker_id].state != "lost":
            # the worker dies: everything it holds comes back after the heartbeat timeout
            s.workers[a.worker_id].last_seen = now - 10
            s.handle(Tick(now))
            connect(s, f"w{rng.randint(100, 10**6)}", slots=1, now=now)
            continue
        out = s.handle(ok(a.attempt, a.worker_id, now=now))
        for rec in out:
            if isinstance(rec, TaskRecord) and rec.state == pb.SUCCEEDED:
                completed.append(rec.name)
                finished_at[rec.name] = len(completed)
    assert s.runs["r1"].state == pb.RUN_SUCCEEDED
    assert sorted(completed) == sorted(edges)  # each exactly once
    for name, deps in edges.items():
        for d in deps:
            assert finished_at[d] < finished_at[name]


def _credit_after(durations_s: float) -> int:
    s = SchedulerState(prefetch=64, validate=True)
    connect(s, "w1", slots=2)
    submit(s, {f"t{i}": [] for i in range(400)})
    now = 0.0
    for _ in range(30):
        for a in assigns(s.schedule(now)):
            now += durations_s
            s.handle(TaskSucceeded(now, "w1", a.attempt, now, pb.Payload(), started_at=now - durations_s))
    return s.workers["w1"].credit


def test_prefetch_adapts_to_task_duration():
    fast, slow = _credit_after(0.0005), _credit_after(2.0)
    assert fast == 2 + 64  # sub-millisecond tasks: the full prefetch
    assert slow == 2 + 1  # two-second tasks: one spare, so a late worker still finds work


def test_prefetch_zero_means_none():
    s = SchedulerState(prefetch=0)
    connect(s, "w1", slots=3)
    submit(s, {f"t{i}": [] for i in range(10)})
    assert len(assigns(s.schedule(0.0))) == 3


def test_unknown_placement_strategy_from_the_wire_is_refused():
    from xpipe.errors import PipelineValidationError

    spec = spec_of({"a": []})
    spec.placement_strategy = "random_walk"
    with pytest.raises(PipelineValidationError, match="unknown placement strategy 'random_walk'"):
        validate_spec(spec)


def test_eviction_goes_through_handle_and_keeps_live_runs():
    """The shell drops finished runs by an event, never by reaching into the state."""
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    assert s.handle(RunEvicted(0.5, "r1")) == [] and "r1" in s.runs  # still running: kept
    assert s.run_is_terminal("r1") is False
    s.handle(ok(a.attempt))
    assert s.run_is_terminal("r1") is True
    s.handle(RunEvicted(2.0, "r1"))
    assert "r1" not in s.runs and s.run_is_terminal("r1") is None


def test_worker_queries_say_what_operators_see():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0, validate=True)
    connect(s, "w1", slots=1)
    connect(s, "w2", slots=1)
    assert s.worker_name("w1") == "w1" and s.worker_name("nobody") is None
    assert s.connected_workers() == 2
    submit(s, {"a": []})
    (a,) = assigns(s.schedule(0.0))
    busy = s.workers[a.worker_id]
    idle = next(w for w in s.workers.values() if w is not busy)
    assert s.worker_shown_state(busy) == "busy" and s.worker_shown_state(idle) == "ready"
    s.handle(DrainRequested(0.1, idle.worker_id))
    assert s.worker_shown_state(idle) == "draining"
    s.handle(WorkerDisconnected(0.2, idle.worker_id))  # a drain that finished: it left as asked
    assert s.worker_shown_state(idle) == "drained" and s.connected_workers() == 1
    s.handle(HeartbeatReceived(9.0, busy.worker_id, (a.attempt,)))
    s.handle(WorkerDisconnected(9.5, busy.worker_id))
    assert s.worker_shown_state(busy) == "disconnected"
    s.handle(Tick(20.0))  # the disconnected one has been silent since 9.5: lost; the drained one stays drained
    assert s.worker_shown_state(busy) == "lost" and s.worker_shown_state(idle) == "drained"


def test_a_handler_no_worker_registered_fails_handler_not_found_instead_of_waiting_for_ever():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, handlers=frozenset({"known"}))
    submit(s, {"h": [], "after": ["h"], "ok": []}, handler={"h": "nobody-has-it"})
    out = s.schedule(0.0)
    (failed,) = [r for r in out if isinstance(r, TaskRecord) and r.state == pb.FAILED]
    assert failed.name == "h" and error_type_name(failed.error) == "HANDLER_NOT_FOUND"
    assert "no registered worker has handler 'nobody-has-it'" in failed.error.message and failed.error.non_retryable
    assert states(s)["after"] == "UPSTREAM_FAILED"
    assert [a.attempt[1] for a in assigns(out)] == ["ok"]


def test_a_missing_handler_waits_for_wait_for_resources_then_fails_saying_it_waited():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    spec = spec_of({"h": []}, handler={"h": "later"})
    spec.wait_for_resources_s = 5.0
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    s.schedule(0.0)
    assert states(s)["h"] == "READY"
    s.handle(Tick(6.0))
    (err,) = [t.error for t in s.runs["r1"].tasks.values()]
    assert error_type_name(err) == "HANDLER_NOT_FOUND" and "(waited 5s for one to join)" in err.message


def test_pickled_code_every_worker_refuses_fails_pickled_code_refused():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, accepts_pickled=False)
    spec = spec_of({"f": []})
    spec.tasks[0].python.code_hash = "h" * 32
    spec.code.add(code_hash="h" * 32, data=b"pickled")
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    s.schedule(0.0)
    (err,) = [t.error for t in s.runs["r1"].tasks.values()]
    assert error_type_name(err) == "PICKLED_CODE_REFUSED" and "--no-pickled-code" in err.message
