"""Task fault-tolerance policies: the backoff schedule, skip/fallback/non-retryable outcomes
in the state machine and in ``run_assignment``, failure isolation, and the SDK options."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from tests import helpers_tasks as ht
from xpipe import Pipeline, PipelineValidationError, Task, handle_errors, task
from xpipe._codec import decode, encode
from xpipe._domain import error_type_name
from xpipe._policies import ErrorPolicy, FaultTolerance, backoff_delay_s, error_policy_of, parse_duration_s
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, worker_pb2
from xpipe._result import TaskRunInfo
from xpipe.coordinator._events import (
    Assign,
    CancelAttempts,
    RunRecord,
    RunRestored,
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskSucceeded,
    Tick,
    WorkerConnected,
    WorkerLost,
)
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec
from xpipe.worker._runtask import run_assignment

# ---------------------------------------------------------------- backoff schedule


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (pb.BACKOFF_FIXED, [2.0, 2.0, 2.0, 2.0, 2.0]),
        (pb.RETRY_BACKOFF_UNSPECIFIED, [2.0, 2.0, 2.0, 2.0, 2.0]),
        (pb.BACKOFF_LINEAR, [2.0, 4.0, 6.0, 8.0, 10.0]),
        (pb.BACKOFF_EXPONENTIAL, [2.0, 4.0, 8.0, 16.0, 32.0]),
    ],
)
def test_backoff_schedule_without_jitter(backoff, expected):
    assert [backoff_delay_s(backoff, 2.0, n) for n in range(1, 6)] == expected


def test_backoff_is_capped_and_huge_exponents_stay_finite():
    capped = [backoff_delay_s(pb.BACKOFF_EXPONENTIAL, 1.0, n, max_retry_delay_s=10.0) for n in range(1, 7)]
    assert capped == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay_s(pb.BACKOFF_EXPONENTIAL, 1.0, 5000) == 1e9
    assert backoff_delay_s(pb.BACKOFF_EXPONENTIAL, 1.0, 5000, max_retry_delay_s=60.0) == 60.0


def test_jitter_shortens_within_its_fraction_and_is_reproducible_with_a_seed():
    draws = [
        backoff_delay_s(pb.BACKOFF_EXPONENTIAL, 1.0, 4, jitter=0.25, rng=random.Random(seed)) for seed in range(200)
    ]
    assert all(6.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 100  # it really varies
    again = [backoff_delay_s(pb.BACKOFF_EXPONENTIAL, 1.0, 4, jitter=0.25, rng=random.Random(s)) for s in range(200)]
    assert draws == again
    # Jitter applies after the cap, so it never exceeds it.
    assert backoff_delay_s(pb.BACKOFF_LINEAR, 5.0, 9, max_retry_delay_s=7.0, jitter=0.5, rng=random.Random(1)) <= 7.0


# ---------------------------------------------------------------- state machine helpers


def spec_with(edges: dict[str, list[str]], *, retry: dict[str, pb.RetryPolicy] | None = None,
              fail_fast: bool = False, retry_on_failure: bool = True) -> pb.PipelineSpec:  # fmt: skip
    spec = pb.PipelineSpec(name="p", retry_on_failure=retry_on_failure)
    spec.fault_tolerance.fail_fast = fail_fast
    for name, deps in edges.items():
        t = spec.tasks.add(name=name, depends_on=deps)
        t.python.import_path = "m:f"
        if retry and name in retry:
            t.retry.CopyFrom(retry[name])
    return spec


def start(edges, *, slots=4, rng=None, **kw) -> SchedulerState:
    s = SchedulerState(prefetch=0, validate=True, rng=rng)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", slots))
    spec = spec_with(edges, **kw)
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    return s


def assigns(actions) -> dict[str, Assign]:
    return {a.attempt[1]: a for a in actions if isinstance(a, Assign)}


def records(actions, name=None) -> list[TaskRecord]:
    return [a for a in actions if isinstance(a, TaskRecord) and (name is None or a.name == name)]


def run_state(actions) -> int | None:
    runs = [a for a in actions if isinstance(a, RunRecord)]
    return runs[-1].state if runs else None


def failed(key, now, *, non_retryable=False, error_type="TASK_FAILURE"):
    err = pb.TaskError(error_type=error_type, exception_type="ConnectionError", message="down",
                       non_retryable=non_retryable)  # fmt: skip
    return TaskFailed(now, "w1", key, now, err)


def succeeded(key, now, value=b"v", **kw):
    return TaskSucceeded(now, "w1", key, now, pb.Payload(codec=pb.CODEC_RAW, data=value), **kw)


def name_of(state: SchedulerState, task: str) -> str:
    return pb.TaskState.Name(state.runs["r1"].tasks[task].state)


# ---------------------------------------------------------------- retries in the state machine


def test_exponential_backoff_schedule_with_seeded_jitter_and_retry_wait_frees_the_slot():
    policy = pb.RetryPolicy(max_retries=3, retry_delay_s=1.0, backoff=pb.BACKOFF_EXPONENTIAL, jitter=0.5)
    s = start({"a": [], "b": []}, slots=1, rng=random.Random(7), retry={"a": policy})
    expected_rng = random.Random(7)
    a = assigns(s.schedule(0.0))["a"]
    assert a.last_try is False
    now = 0.0
    for retry_number in (1, 2, 3):
        now += 1.0
        s.handle(failed(a.attempt, now))
        task = s.runs["r1"].tasks["a"]
        assert name_of(s, "a") == "RETRY_WAIT"
        base = 2.0 ** (retry_number - 1)
        expected = base * (1 - 0.5 * expected_rng.random())
        assert task.retry_at == pytest.approx(now + expected)
        # Waiting is not holding a slot: the other task gets the single slot meanwhile.
        if retry_number == 1:
            b = assigns(s.schedule(now))["b"]
            s.handle(succeeded(b.attempt, now))
        # Not a moment early.
        s.handle(Tick(task.retry_at - 1e-6))
        assert name_of(s, "a") == "RETRY_WAIT"
        s.handle(Tick(task.retry_at))
        assert name_of(s, "a") == "READY"
        now = task.retry_at
        a = assigns(s.schedule(now))["a"]
        assert a.last_try is (retry_number == 3)
    out = s.handle(failed(a.attempt, now + 1))
    assert name_of(s, "a") == "FAILED"
    assert run_state(out) == pb.RUN_FAILED


def test_linear_backoff_is_capped_by_max_retry_delay():
    policy = pb.RetryPolicy(max_retries=5, retry_delay_s=4.0, backoff=pb.BACKOFF_LINEAR, max_retry_delay_s=10.0)
    s = start({"a": []}, retry={"a": policy})
    waits, now = [], 0.0
    for _ in range(4):
        a = assigns(s.schedule(now))["a"]
        s.handle(failed(a.attempt, now))
        waits.append(s.runs["r1"].tasks["a"].retry_at - now)
        now = s.runs["r1"].tasks["a"].retry_at
        s.handle(Tick(now))
    assert waits == [4.0, 8.0, 10.0, 10.0]


def test_non_retryable_error_fails_at_once_despite_retries_left():
    s = start({"a": [], "down": ["a"]}, retry={"a": pb.RetryPolicy(max_retries=5)})
    a = assigns(s.schedule(0.0))["a"]
    out = s.handle(failed(a.attempt, 1.0, non_retryable=True))
    assert name_of(s, "a") == "FAILED" and name_of(s, "down") == "UPSTREAM_FAILED"
    assert s.runs["r1"].tasks["a"].error.non_retryable
    assert run_state(out) == pb.RUN_FAILED


def test_last_try_is_set_when_retries_are_off_for_the_run():
    s = start({"a": []}, retry={"a": pb.RetryPolicy(max_retries=3)}, retry_on_failure=False)
    assert assigns(s.schedule(0.0))["a"].last_try is True


# ---------------------------------------------------------------- skip and fallback


def test_skipped_task_ends_skipped_and_its_dependents_get_an_empty_payload():
    s = start({"a": [], "b": ["a"], "c": ["b"]})
    a = assigns(s.schedule(0.0))["a"]
    cause = pb.TaskError(error_type="TASK_FAILURE", exception_type="DataValidationError", message="row 7")
    out = s.handle(TaskSucceeded(1.0, "w1", a.attempt, 1.0, pb.Payload(), skipped=True, cause=cause))
    assert name_of(s, "a") == "SKIPPED"
    (rec,) = records(out, "a")
    assert rec.result is None and rec.error.skipped and not rec.error.fallback_used
    assert error_type_name(rec.error) == "TASK_FAILURE"
    assert rec.error.exception_type == "DataValidationError" and rec.error.message == "row 7"
    b = assigns(s.schedule(1.0))["b"]
    assert len(b.upstream) == 1 and decode(b.upstream[0]) is None
    s.handle(succeeded(b.attempt, 2.0))
    c = assigns(s.schedule(2.0))["c"]
    out = s.handle(succeeded(c.attempt, 3.0))
    assert run_state(out) == pb.RUN_SUCCEEDED
    assert s.runs["r1"].summary().succeeded_tasks == 2 and s.runs["r1"].summary().failed_tasks == 0


def test_skip_counts_as_satisfied_after_a_restore():
    spec = spec_with({"a": [], "b": ["a"]})
    s = SchedulerState(prefetch=0, validate=True)
    skipped = TaskRecord("r1", "a", pb.SKIPPED, 1, "w1", 0.5, 1.0, pb.TaskError(error_type="SKIPPED"), None)
    s.handle(RunRestored(2.0, "r1", spec, ("a", "b"), 0.0, {"a": skipped}))
    assert name_of(s, "b") == "READY"


def test_fallback_result_is_the_task_result_and_the_fallback_is_recorded():
    s = start({"a": [], "b": ["a"]})
    a = assigns(s.schedule(0.0))["a"]
    cause = pb.TaskError(error_type="TASK_FAILURE", exception_type="ConnectionError", message="down")
    s.handle(succeeded(a.attempt, 1.0, b"cached", fallback_used=True, cause=cause))
    task = s.runs["r1"].tasks["a"]
    assert name_of(s, "a") == "SUCCEEDED" and task.result.data == b"cached"
    assert task.error.fallback_used and not task.error.skipped and task.error.exception_type == "ConnectionError"
    assert error_type_name(task.error) == "TASK_FAILURE"
    assert assigns(s.schedule(1.0))["b"].upstream[0].data == b"cached"
    (rec,) = [r for r in s.iter_records("r1") if r.name == "a"]
    info = pipeline_pb2.TaskInfo(name="a", state=rec.state, error=rec.error)
    assert TaskRunInfo.from_proto(info).fallback_used is True
    assert TaskRunInfo.from_proto(pipeline_pb2.TaskInfo(name="x", state=pb.SUCCEEDED)).fallback_used is False


# ---------------------------------------------------------------- failure isolation


def test_failure_isolation_lets_independent_branches_finish_and_the_run_still_fails():
    s = start({"bad": [], "after_bad": ["bad"], "good": [], "after_good": ["good"]})
    first = assigns(s.schedule(0.0))
    s.handle(failed(first["bad"].attempt, 1.0))
    assert name_of(s, "after_bad") == "UPSTREAM_FAILED"
    s.handle(succeeded(first["good"].attempt, 1.0))
    after_good = assigns(s.schedule(1.0))["after_good"]
    out = s.handle(succeeded(after_good.attempt, 2.0))
    assert name_of(s, "after_good") == "SUCCEEDED"
    assert run_state(out) == pb.RUN_FAILED


def test_without_failure_isolation_the_first_failure_cancels_the_rest_and_the_run_fails():
    retry = {"slow": pb.RetryPolicy(max_retries=2, retry_delay_s=60.0)}
    s = start({"bad": [], "slow": [], "waits": [], "after": ["waits"], "retrying": []}, fail_fast=True,
              retry=retry | {"retrying": pb.RetryPolicy(max_retries=2, retry_delay_s=60.0)})  # fmt: skip
    first = assigns(s.schedule(0.0))
    assert set(first) == {"bad", "slow", "waits", "retrying"}
    s.handle(failed(first["retrying"].attempt, 0.5))
    assert name_of(s, "retrying") == "RETRY_WAIT"
    out = s.handle(failed(first["bad"].attempt, 1.0))
    assert {n: name_of(s, n) for n in ("bad", "slow", "waits", "after", "retrying")} == {
        "bad": "FAILED", "slow": "CANCELLED", "waits": "CANCELLED", "after": "CANCELLED", "retrying": "CANCELLED",
    }  # fmt: skip
    (cancel,) = [a for a in out if isinstance(a, CancelAttempts)]
    assert set(cancel.attempts) == {first["slow"].attempt, first["waits"].attempt}
    assert "failure_isolation off" in s.runs["r1"].tasks["slow"].error.message
    assert run_state(out) == pb.RUN_FAILED
    # The cancelled attempt's late result is stale and changes nothing.
    stale = s.stale_results
    assert s.handle(succeeded(first["slow"].attempt, 2.0)) == []
    assert s.stale_results == stale + 1 and s.runs["r1"].state == pb.RUN_FAILED
    # The retry timer of a cancelled task does nothing. (By t=1000 the silent worker is lost,
    # which the alerting hears of as WorkerLost: that is not the task's doing.)
    assert [a for a in s.handle(Tick(1000.0)) if not isinstance(a, WorkerLost)] == []


# ---------------------------------------------------------------- worker side: run_assignment


def assignment(func, *args, last_try=False, upstream=(), depends_on=(), flows=()):
    spec = pb.TaskSpec(name="t", depends_on=list(depends_on))
    spec.python.import_path = f"tests.helpers_tasks:{func}"
    if args:
        spec.args.CopyFrom(encode((args, {}), "pickle"))
    for source, key, parameter in flows:
        spec.flows.add(source_task=source, key=key, parameter=parameter)
    return worker_pb2.Assignment(
        attempt=worker_pb2.AttemptRef(run_id="r", task="t", attempt=1), task=spec, upstream=list(upstream),
        last_try=last_try,
    )  # fmt: skip


def run(func, *args, **kw) -> worker_pb2.TaskEvent:
    return run_assignment(assignment(func, *args, **kw), None, {})


def test_skip_on_reports_skipped_with_the_cause():
    ev = run("fetch", "invalid")
    assert ev.WhichOneof("kind") == "succeeded"
    assert ev.succeeded.skipped and not ev.succeeded.fallback_used
    assert ev.succeeded.cause.exception_type == "DataValidationError"
    assert "row 7 has no id" in ev.succeeded.cause.message and "_raise_for" in ev.succeeded.cause.traceback
    assert decode(ev.succeeded.result) is None


def test_retryable_error_fails_retryably_until_the_last_try_then_the_fallback_runs():
    ev = run("fetch", "down")
    assert ev.WhichOneof("kind") == "failed"
    assert ev.failed.error.exception_type == "ConnectionError" and not ev.failed.error.non_retryable
    ev = run("fetch", "down", last_try=True)
    assert ev.WhichOneof("kind") == "succeeded" and ev.succeeded.fallback_used
    assert decode(ev.succeeded.result) == {"cached": True, "args": ["down"], "kwargs": {}}
    assert ev.succeeded.cause.exception_type == "ConnectionError"


def test_error_not_in_retry_on_uses_the_fallback_at_once():
    ev = run("fetch", "bug")
    assert ev.succeeded.fallback_used and ev.succeeded.cause.exception_type == "KeyError"


def test_error_not_in_retry_on_without_fallback_is_non_retryable():
    ev = run("fetch_no_fallback", "bug")
    assert ev.WhichOneof("kind") == "failed"
    assert ev.failed.error.non_retryable and ev.failed.error.exception_type == "KeyError"
    ev = run("fetch_no_fallback", "down")
    assert not ev.failed.error.non_retryable


def test_a_failing_fallback_fails_the_task_for_good_naming_both_errors():
    assert not run("fetch_broken_fallback", "down").failed.error.non_retryable  # retries come first
    ev = run("fetch_broken_fallback", "down", last_try=True)
    err = ev.failed.error
    assert err.non_retryable and err.exception_type == "RuntimeError"
    assert "fallback" in err.message and "cache is empty too" in err.message and "ConnectionError" in err.message


def test_a_policy_does_not_touch_success():
    ev = run("fetch", "ok")
    assert decode(ev.succeeded.result) == "fresh"
    assert not ev.succeeded.skipped and not ev.succeeded.fallback_used and not ev.succeeded.HasField("cause")


def test_a_data_flow_key_from_a_skipped_upstream_is_none():
    ev = run("describe", upstream=[pb.Payload(), pb.Payload()], depends_on=["a"], flows=[("a", "rows", "rows")])
    assert decode(ev.succeeded.result) == {"args": [None], "kwargs": {"rows": None}}


# ---------------------------------------------------------------- SDK: handle_errors, Task options, configure


def test_handle_errors_attaches_a_policy_and_leaves_the_function_alone():
    def f(x):
        return x + 1

    assert handle_errors(retry_on=[ConnectionError])(f) is f and f(1) == 2
    assert error_policy_of(f) == ErrorPolicy((ConnectionError,), (), None)
    assert error_policy_of(len) is None

    @task
    def g():
        return 1

    handle_errors(skip_on=ValueError)(g)  # above @task: lands on the function it runs
    assert error_policy_of(g.func).skip_on == (ValueError,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retry_on": [ConnectionError, "nope"]}, "retry_on"),
        ({"skip_on": 3}, "skip_on"),
        ({"skip_on": [int]}, "skip_on"),
        ({"fallback": "cached"}, "fallback"),
    ],
)
def test_handle_errors_rejects_bad_arguments(kwargs, match):
    with pytest.raises(TypeError, match=match):
        handle_errors(**kwargs)


def test_handle_errors_rejects_what_it_cannot_decorate():
    with pytest.raises(TypeError, match="decorate"):
        handle_errors()(Task.command("c", ["true"]))
    with pytest.raises(TypeError, match="plain function"):
        handle_errors()("abc".upper)


def test_task_retry_options_reach_the_spec():
    t = Task("t", ht.noop, max_retries=4, retry_delay_s=0.5, retry_backoff="exponential", max_retry_delay_s=30,
             retry_jitter=0.2, timeout_s=9)  # fmt: skip
    retry = t.to_proto({}).retry
    assert (retry.max_retries, retry.retry_delay_s, retry.backoff, retry.max_retry_delay_s) == (
        4, 0.5, pb.BACKOFF_EXPONENTIAL, 30.0,
    )  # fmt: skip
    assert retry.jitter == pytest.approx(0.2) and t.to_proto({}).timeout_s == 9.0
    plain = Task("p", ht.noop).to_proto({}).retry
    assert (plain.max_retries, plain.backoff, plain.max_retry_delay_s) == (0, pb.BACKOFF_FIXED, 0.0)


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        ({"retry_backoff": "quadratic"}, "retry_backoff"),
        ({"max_retry_delay_s": 0}, "max_retry_delay_s"),
        ({"max_retry_delay_s": float("inf")}, "max_retry_delay_s"),
        ({"retry_jitter": 1.5}, "retry_jitter"),
        ({"retry_jitter": "x"}, "retry_jitter"),
    ],
)
def test_bad_retry_options_name_the_field(opts, field):
    with pytest.raises(PipelineValidationError, match=f"task 't': {field}"):
        Task("t", ht.noop, **opts)


def test_configure_fault_tolerance_sets_defaults_for_tasks_that_set_none():
    p = Pipeline("resilient")
    ft = p.configure_fault_tolerance(
        checkpoint_interval="1min", max_retries_per_task=3, retry_backoff_strategy="exponential",
        failure_isolation=True, circuit_breaker_enabled=True,
    )  # fmt: skip
    assert ft == FaultTolerance(60.0, 3, "exponential", True, True)
    p.add_tasks([
        Task("default", ht.noop),
        Task("own", ht.noop, max_retries=0, retry_backoff="linear"),
    ])  # fmt: skip
    spec = p.to_proto()
    default, own = spec.tasks
    assert (default.retry.max_retries, default.retry.backoff) == (3, pb.BACKOFF_EXPONENTIAL)
    assert (own.retry.max_retries, own.retry.backoff) == (0, pb.BACKOFF_LINEAR)
    f = spec.fault_tolerance
    assert (f.checkpoint_interval_s, f.max_retries_per_task, f.retry_backoff, f.fail_fast, f.circuit_breaker_enabled) == (
        60.0, 3, pb.BACKOFF_EXPONENTIAL, False, True,
    )  # fmt: skip
    p.configure_fault_tolerance(failure_isolation=False)
    assert p.to_proto().fault_tolerance.fail_fast is True
    assert Pipeline("plain").fault_tolerance is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoint_interval": "soon"}, "cannot read duration"),
        ({"checkpoint_interval": "5 fortnights"}, "cannot read duration"),
        ({"checkpoint_interval": -1}, ">= 0"),
        ({"max_retries_per_task": -1}, "max_retries_per_task"),
        ({"max_retries_per_task": True}, "max_retries_per_task"),
        ({"retry_backoff_strategy": "random"}, "retry_backoff_strategy"),
        ({"failure_isolation": "yes"}, "failure_isolation"),
        ({"circuit_breaker_enabled": 1}, "circuit_breaker_enabled"),
    ],
)
def test_configure_fault_tolerance_rejects_bad_values(kwargs, match):
    with pytest.raises(PipelineValidationError, match=match):
        Pipeline("p").configure_fault_tolerance(**kwargs)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1min", 60.0), ("90s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25), ("2", 2.0), (7, 7.0),
     (timedelta(minutes=2), 120.0), ("1d", 86400.0)],
)  # fmt: skip
def test_parse_duration(value, seconds):
    assert parse_duration_s(value) == pytest.approx(seconds)


def test_parse_duration_rejects_other_types():
    with pytest.raises(ValueError, match="a duration must be"):
        parse_duration_s([1])  # type: ignore[arg-type]
