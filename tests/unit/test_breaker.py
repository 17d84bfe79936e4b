"""Circuit breaker transitions, driven by hand with explicit times (no clock, no I/O)."""

from __future__ import annotations

import pytest

from xpipe.coordinator._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreakers, CircuitSnapshot


def opened(threshold=3, window_s=10.0, open_s=5.0, name="p/t", at=0.0) -> CircuitBreakers:
    b = CircuitBreakers(threshold=threshold, window_s=window_s, open_s=open_s)
    for i in range(threshold):
        b.record_failure(name, at + i * 0.1)
    assert b.state(name, at + threshold * 0.1) == OPEN
    return b


def test_an_unknown_circuit_is_closed_and_allows():
    b = CircuitBreakers()
    assert b.allow("p/t", 0.0) and b.state("p/t", 0.0) == CLOSED
    assert b.snapshot() == []


def test_failures_below_the_threshold_keep_it_closed():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    b.record_failure("p/t", 0.0)
    b.record_failure("p/t", 1.0)
    assert b.allow("p/t", 1.5) and b.state("p/t", 1.5) == CLOSED
    assert b.snapshot() == [CircuitSnapshot("p/t", CLOSED, 2, 0.0)]


def test_threshold_failures_within_the_window_open_it_and_it_fails_fast():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    for t in (0.0, 4.0, 9.0):
        b.record_failure("p/t", t)
    assert b.state("p/t", 9.0) == OPEN
    assert not b.allow("p/t", 9.0) and not b.allow("p/t", 13.9)
    assert b.snapshot() == [("p/t", OPEN, 3, 9.0)]  # a plain tuple too


def test_failures_spread_wider_than_the_window_do_not_open_it():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    for t in (0.0, 6.0, 12.0, 18.0):  # never three within 10 s
        b.record_failure("p/t", t)
    assert b.state("p/t", 18.0) == CLOSED and b.allow("p/t", 18.0)
    assert b.snapshot(18.0)[0].failures == 2


def test_after_open_s_exactly_one_probe_goes_through():
    b = opened()
    assert b.state("p/t", 5.3) == HALF_OPEN  # what allow() would find
    assert b.allow("p/t", 5.3)  # the probe
    assert not b.allow("p/t", 5.4) and not b.allow("p/t", 9.0)  # one at a time
    assert b.snapshot()[0].state == HALF_OPEN


def test_a_successful_probe_closes_it_and_forgets_old_failures():
    b = opened()
    assert b.allow("p/t", 6.0)
    b.record_success("p/t", 6.5)
    assert b.state("p/t", 6.5) == CLOSED and b.allow("p/t", 6.6) and b.allow("p/t", 6.7)
    b.record_failure("p/t", 7.0)  # one new failure does not reopen it
    assert b.state("p/t", 7.0) == CLOSED
    (snap,) = b.snapshot()
    assert (snap.name, snap.state, snap.failures) == ("p/t", CLOSED, 1)


def test_a_failed_probe_reopens_it_for_another_open_s():
    b = opened()
    assert b.allow("p/t", 6.0)
    b.record_failure("p/t", 6.5)
    assert b.state("p/t", 6.5) == OPEN and b.snapshot()[0].opened_at == 6.5
    assert not b.allow("p/t", 11.4)
    assert b.allow("p/t", 11.5)  # the next probe


def test_a_probe_that_never_reports_is_given_up_after_open_s():
    b = opened()
    assert b.allow("p/t", 6.0)  # probe sent; its worker dies and no outcome ever comes
    assert not b.allow("p/t", 10.9)
    assert b.allow("p/t", 11.0)  # a second probe
    assert not b.allow("p/t", 11.1)


def test_a_late_failure_while_open_changes_nothing_and_success_while_open_does_not_close():
    b = opened()
    b.record_failure("p/t", 1.0)
    b.record_success("p/t", 1.0)
    assert b.state("p/t", 1.0) == OPEN and b.snapshot()[0] == ("p/t", OPEN, 3, 0.2)


def test_circuits_are_independent_and_a_shared_name_counts_every_task():
    b = CircuitBreakers(threshold=2, window_s=10.0, open_s=5.0)
    b.record_failure("payments-api", 0.0)  # from task a
    b.record_failure("p/other", 0.0)
    b.record_failure("payments-api", 1.0)  # from task b of another run
    assert b.state("payments-api", 1.0) == OPEN and b.state("p/other", 1.0) == CLOSED
    assert [s.name for s in b.snapshot()] == ["p/other", "payments-api"]


def test_successes_forget_a_circuit_with_no_failures_left():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    b.record_failure("p/t", 0.0)
    b.record_success("p/t", 20.0)  # the failure fell out of the window
    assert len(b) == 0 and b.snapshot() == []


def test_configure_gives_one_circuit_its_own_settings():
    b = CircuitBreakers(threshold=5, window_s=60.0, open_s=30.0)
    b.configure("fragile", threshold=1, window_s=1.0, open_s=0.5)
    b.record_failure("fragile", 0.0)
    b.record_failure("sturdy", 0.0)
    assert b.state("fragile", 0.0) == OPEN and b.state("sturdy", 0.0) == CLOSED
    assert b.allow("fragile", 0.5)


def test_snapshot_with_now_shows_an_expired_open_circuit_as_half_open():
    b = opened()
    assert b.snapshot(100.0)[0].state == HALF_OPEN
    assert b.snapshot()[0].state == OPEN  # nothing was let out by looking


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": 2.5}, "threshold"),
        ({"window_s": 0}, "window_s"),
        ({"window_s": float("inf")}, "window_s"),
        ({"open_s": -1}, "open_s"),
        ({"open_s": "30s"}, "open_s"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CircuitBreakers(**kwargs)
    settings = {"threshold": 5, "window_s": 60.0, "open_s": 30.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        CircuitBreakers().configure("x", **settings)


# ---------------------------------------------------------------- in the state machine

from xpipe._proto import common_pb2 as pb  # noqa: E402
from xpipe.coordinator._events import (  # noqa: E402
    Assign,
    RunRecord,
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskSucceeded,
    Tick,
    WorkerConnected,
)
from xpipe.coordinator._recovery_codec import PICKLE_CODEC  # noqa: E402
from xpipe.coordinator._state import SchedulerState  # noqa: E402
from xpipe.coordinator._validate import validate_spec  # noqa: E402


def spec_of(name, tasks, *, enabled=True, threshold=2, window_s=10.0, open_s=5.0, retries=0, delay_s=0.0,
            circuit=None) -> pb.PipelineSpec:  # fmt: skip
    spec = pb.PipelineSpec(name=name, retry_on_failure=True)
    ft = spec.fault_tolerance
    ft.circuit_breaker_enabled = enabled
    ft.circuit_failure_threshold, ft.circuit_window_s, ft.circuit_open_s = threshold, window_s, open_s
    for task in tasks:
        t = spec.tasks.add(name=task, circuit=circuit or "")
        t.python.import_path = "m:f"
        t.retry.max_retries, t.retry.retry_delay_s = retries, delay_s
    return spec


def machine(slots=8) -> SchedulerState:
    s = SchedulerState(prefetch=0, validate=True, heartbeat_timeout_s=1e6, recovery_codec=PICKLE_CODEC)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", slots))
    return s


def submit(s, run_id, spec, now=0.0):
    return s.handle(RunSubmitted(now, run_id, spec, tuple(validate_spec(spec))))


def assigns(actions) -> dict[tuple[str, str], Assign]:
    return {(a.attempt[0], a.attempt[1]): a for a in actions if isinstance(a, Assign)}


def fail(key, now) -> TaskFailed:
    return TaskFailed(now, "w1", key, now, pb.TaskError(error_type="TASK_FAILURE", message="503 from payments"))


def ok(key, now) -> TaskSucceeded:
    return TaskSucceeded(now, "w1", key, now, pb.Payload(codec=pb.CODEC_RAW, data=b"v"))


def task_of(s, run_id, name):
    return s.runs[run_id].tasks[name]


def run_state(actions):
    runs = [a for a in actions if isinstance(a, RunRecord)]
    return runs[-1].state if runs else None


def open_payments(s: SchedulerState, now=1.0) -> None:
    """Two runs whose tasks share the "payments" circuit fail twice: it opens."""
    for run_id in ("r1", "r2"):
        submit(s, run_id, spec_of("p", ["charge"], circuit="payments"), now)
    sent = assigns(s.schedule(now))
    for key in sent:
        s.handle(fail(sent[key].attempt, now + 0.5))
    assert s.breakers.state("payments", now + 0.5) == OPEN


def test_an_open_circuit_fails_the_attempt_fast_without_a_worker():
    s = machine()
    open_payments(s)
    out = submit(s, "r3", spec_of("other", ["refund"], circuit="payments"), 2.0)
    out += s.schedule(2.0)
    assert not assigns(out)  # never reached a worker
    task = task_of(s, "r3", "refund")
    assert task.state == pb.FAILED and task.attempt == 1 and task.worker == ""
    assert task.error.error_type == "CIRCUIT_OPEN"
    assert "'payments' is open (2 recent failures)" in task.error.message
    assert run_state(out) == pb.RUN_FAILED


def test_circuit_open_failures_go_through_retries_and_backoff():
    s = machine()
    open_payments(s)
    submit(s, "r3", spec_of("q", ["charge"], circuit="payments", retries=2, delay_s=3.0), 2.0)
    s.schedule(2.0)
    task = task_of(s, "r3", "charge")
    assert task.state == pb.RETRY_WAIT and task.retry_at == 5.0
    s.handle(Tick(5.0))
    s.schedule(5.0)  # 3.5 s after opening, still open: fails fast again
    assert task.state == pb.RETRY_WAIT and task.attempt == 2
    s.handle(Tick(12.0))
    (probe,) = assigns(s.schedule(12.0)).values()  # open_s passed: this attempt is the probe
    assert probe.attempt == ("r3", "charge", 3)
    out = s.handle(ok(probe.attempt, 12.5))
    assert task.state == pb.SUCCEEDED and run_state(out) == pb.RUN_SUCCEEDED
    assert s.breakers.state("payments", 12.5) == CLOSED


def test_half_open_lets_exactly_one_probe_through_and_the_others_fail_fast():
    s = machine()
    open_payments(s)
    submit(s, "r3", spec_of("q", ["a", "b", "c"], circuit="payments"), 7.0)
    sent = assigns(s.schedule(7.0))
    assert len(sent) == 1  # the probe
    (probe_key,) = sent
    others = [n for n in ("a", "b", "c") if n != probe_key[1]]
    for name in others:
        assert task_of(s, "r3", name).error.error_type == "CIRCUIT_OPEN"
    s.handle(fail(sent[probe_key].attempt, 7.5))  # the probe fails: open again
    assert s.breakers.state("payments", 7.5) == OPEN
    assert [c.opened_at for c in s.breakers.snapshot()] == [7.5]


def test_a_probe_waiting_for_a_worker_is_not_used_up():
    s = machine(slots=2)
    open_payments(s)  # opened at 1.5; half-open from 6.5
    submit(s, "hog", spec_of("h", ["x", "y"], enabled=False), 7.0)
    hogs = assigns(s.schedule(7.0))
    assert len(hogs) == 2  # both slots taken
    submit(s, "r3", spec_of("q", ["charge"], circuit="payments"), 7.0)
    assert assigns(s.schedule(7.0)) == {}
    assert task_of(s, "r3", "charge").state == pb.READY  # waiting for room, not failed fast
    s.handle(ok(hogs[("hog", "x")].attempt, 8.0))
    (probe,) = assigns(s.schedule(8.0)).values()
    assert probe.attempt == ("r3", "charge", 1)


def test_breakers_off_never_fail_fast_and_record_nothing():
    s = machine()
    submit(s, "r1", spec_of("p", ["charge"], enabled=False, threshold=1), 0.0)
    (sent,) = assigns(s.schedule(0.0)).values()
    s.handle(fail(sent.attempt, 0.5))
    assert len(s.breakers) == 0 and task_of(s, "r1", "charge").error.error_type == "TASK_FAILURE"


def test_default_circuit_is_pipeline_slash_task_and_results_feed_it():
    s = machine()
    submit(s, "r1", spec_of("etl", ["load"], threshold=3, retries=5), 0.0)
    assert task_of(s, "r1", "load").circuit == "etl/load"
    for i in range(2):
        (sent,) = assigns(s.schedule(float(i))).values()
        s.handle(fail(sent.attempt, i + 0.5))
        s.handle(Tick(i + 0.9))
    assert s.breakers.snapshot()[0] == ("etl/load", CLOSED, 2, 0.0)
    (sent,) = assigns(s.schedule(3.0)).values()
    s.handle(ok(sent.attempt, 3.5))  # a success while closed keeps the window's failures
    assert s.breakers.snapshot()[0].failures == 2


def test_a_fallback_counts_as_a_failure_and_a_cancel_as_nothing():
    s = machine()
    submit(s, "r1", spec_of("p", ["a", "b"], threshold=2, circuit="api"), 0.0)
    sent = assigns(s.schedule(0.0))
    s.handle(TaskSucceeded(0.5, "w1", sent[("r1", "a")].attempt, 0.5, pb.Payload(), fallback_used=True))
    s.handle(TaskFailed(0.5, "w1", sent[("r1", "b")].attempt, 0.5, pb.TaskError(error_type="CANCELLED")))
    assert s.breakers.snapshot() == [("api", CLOSED, 1, 0.0)]


def test_circuit_open_reaches_the_recovery_handler_like_any_final_failure():
    s = machine()
    open_payments(s)
    spec = spec_of("q", ["charge"], circuit="payments")
    spec.recovery_handler.import_path = "m:recover"
    out = submit(s, "r3", spec, 2.0) + s.schedule(2.0)
    assert task_of(s, "r3", "charge").state == pb.RECOVERING
    assert [r.state for r in out if isinstance(r, TaskRecord) and r.name == "charge"] == [pb.READY, pb.RECOVERING]
    assert ("r3", "charge/recovery") in assigns(s.schedule(2.0))


# ---------------------------------------------------------------- the SDK side


def test_circuit_options_reach_the_spec():
    from xpipe import Pipeline, Task

    p = Pipeline("p")
    p.configure_fault_tolerance(circuit_breaker_enabled=True, circuit_failure_threshold=3, circuit_window="2min",
                                circuit_open_s=15)  # fmt: skip
    p.add_tasks([Task("a", print, circuit="payments-api"), Task("b", print)])
    spec = p.to_proto()
    ft = spec.fault_tolerance
    assert ft.circuit_breaker_enabled and ft.circuit_failure_threshold == 3
    assert (ft.circuit_window_s, ft.circuit_open_s) == (120.0, 15.0)
    assert [t.circuit for t in spec.tasks] == ["payments-api", ""]
    defaults = Pipeline("q")
    defaults.configure_fault_tolerance()
    defaults.add_task(Task("a", print))
    ft = defaults.to_proto().fault_tolerance
    assert (ft.circuit_failure_threshold, ft.circuit_window_s, ft.circuit_open_s) == (5, 60.0, 30.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"circuit_failure_threshold": 0}, "circuit_failure_threshold"),
        ({"circuit_failure_threshold": 2.0}, "circuit_failure_threshold"),
        ({"circuit_window_s": 0}, "circuit_window_s"),
        ({"circuit_window_s": "soon"}, "circuit_window_s"),
        ({"circuit_open_s": -1}, "circuit_open_s"),
    ],
)
def test_bad_circuit_settings_name_the_setting(kwargs, match):
    from xpipe import Pipeline, PipelineValidationError

    with pytest.raises(PipelineValidationError, match=match):
        Pipeline("p").configure_fault_tolerance(**kwargs)


@pytest.mark.parametrize("circuit", ["", "  ", 3])
def test_a_bad_circuit_name_is_refused(circuit):
    from xpipe import PipelineValidationError, Task

    with pytest.raises(PipelineValidationError, match="circuit"):
        Task("a", print, circuit=circuit)
