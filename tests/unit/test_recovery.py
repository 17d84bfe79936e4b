"""Recovery handlers: the synthetic attempt, reading its decision, and what the state
machine does for each decision (pure: events in, actions out)."""

from __future__ import annotations

import pickle

import pytest

from xpipe._codec import decode, encode
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._recovery import (
    CONTINUE,
    DECISIONS,
    HALT,
    RETRY_WITH_FALLBACK,
    SKIP,
    recovered_task,
    recovery_args,
    recovery_name,
    recovery_spec,
)
from xpipe.coordinator._recovery import read_decision as _read_decision
from xpipe.coordinator._recovery_codec import PICKLE_CODEC, encode_args


def read_decision(result, error):
    """The engine's way: the shell's codec decodes, the pure core decides."""
    return _read_decision(result, error, PICKLE_CODEC.decode_result)


def recovery_spec_of(task, handler, error, **context):
    return recovery_spec(task, handler, encode_args(recovery_args(task, error, **context)))

# ---------------------------------------------------------------- pure helpers


def test_synthetic_names_cannot_collide_with_task_names():
    assert recovery_name("extract") == "extract/recovery"
    assert recovered_task("extract/recovery") == "extract"
    assert recovered_task("extract") is None and recovered_task("/recovery") is None
    # Task names hold no '/', so "a#recovery"-style user names never look synthetic.
    assert recovered_task("a#recovery") is None


def test_recovery_spec_calls_the_handler_with_task_error_and_context():
    handler = pb.PythonCall(code_hash="ab" * 32)
    error = pb.TaskError(error_type="TIMEOUT", exception_type="", message="slow", traceback="tb")
    spec = recovery_spec_of("load", handler, error, run_id="r1", pipeline="etl", attempt=3)
    assert spec.name == "load/recovery" and spec.python.code_hash == "ab" * 32 and spec.timeout_s > 0
    assert not spec.depends_on and not spec.flows
    args, kwargs = decode(spec.args)
    assert kwargs == {}
    assert args == (
        "load",
        {"error_type": "TIMEOUT", "exception_type": "", "message": "slow", "traceback": "tb"},
        {"run_id": "r1", "pipeline": "etl", "attempt": 3},
    )


def test_recovery_spec_without_an_error_still_names_a_failure():
    spec = recovery_spec_of("t", pb.PythonCall(import_path="m:f"), None, run_id="r", pipeline="p", attempt=1)
    assert decode(spec.args)[0][1]["error_type"] == "TASK_FAILURE"


@pytest.mark.parametrize("decision", DECISIONS)
def test_each_decision_is_read_from_a_pickled_or_json_string(decision):
    assert read_decision(encode(decision, "pickle"), None) == (decision, "")
    assert read_decision(encode(decision, "json"), None) == (decision, "")


@pytest.mark.parametrize(
    ("value", "shown"),
    [("retry", "'retry'"), (None, "None"), (42, "42"), (["skip"], "['skip']"), ("x" * 200, "xxx...")],
)
def test_anything_else_counts_as_continue_and_says_what_came_back(value, shown):
    decision, problem = read_decision(encode(value, "pickle"), None)
    assert decision == CONTINUE
    assert shown in problem and "not one of" in problem and "'halt_pipeline'" in problem


def test_a_handler_that_raised_or_timed_out_counts_as_continue():
    raised = pb.TaskError(error_type="TASK_FAILURE", exception_type="KeyError", message="'x'")
    assert read_decision(None, raised) == (CONTINUE, "recovery handler raised (KeyError: 'x')")
    slow = pb.TaskError(error_type="TIMEOUT", message="task 't/recovery' timed out after 60 s")
    decision, problem = read_decision(None, slow)
    assert decision == CONTINUE and problem.startswith("recovery handler timed out")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run in the coordinator",))


def test_a_pickle_that_would_load_code_is_refused_not_run(capsys):
    payload = pb.Payload(codec=pb.CODEC_PICKLE, data=pickle.dumps(_Evil()))
    decision, problem = read_decision(payload, None)
    assert decision == CONTINUE and "refusing to load" in problem
    assert "must never run" not in capsys.readouterr().out


def test_oversized_compressed_or_odd_codec_results_are_not_decisions():
    big = encode("skip" + " " * 50_000, "pickle")  # compressed
    assert read_decision(big, None)[0] == CONTINUE
    raw = pb.Payload(codec=pb.CODEC_RAW, data=b"skip")
    assert read_decision(raw, None) == (CONTINUE, read_decision(raw, None)[1])
    assert "codec" in read_decision(raw, None)[1]
    assert read_decision(pb.Payload(codec=pb.CODEC_JSON, data=b"{"), None)[0] == CONTINUE
    assert "None" in read_decision(pb.Payload(), None)[1]  # an empty result is None


def test_decision_constants():
    assert DECISIONS == (HALT, RETRY_WITH_FALLBACK, SKIP, CONTINUE)
    assert DECISIONS == ("halt_pipeline", "retry_with_fallback", "skip", "continue")


# ---------------------------------------------------------------- the state machine

from xpipe.coordinator._events import (  # noqa: E402
    Assign,
    CancelAttempts,
    CancelRequested,
    RunRecord,
    RunRestored,
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskReleased,
    TaskSucceeded,
    Tick,
    WorkerConnected,
)
from xpipe.coordinator._state import SchedulerState  # noqa: E402
from xpipe.coordinator._validate import validate_spec  # noqa: E402

HANDLER_HASH = "cd" * 32


def spec_of(edges, *, retries=0, fail_fast=False, handler=True) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name="p", retry_on_failure=True)
    spec.fault_tolerance.fail_fast = fail_fast
    if handler:
        spec.recovery_handler.code_hash = HANDLER_HASH
        spec.code.add(code_hash=HANDLER_HASH, data=b"pickled handler")
    for name, deps in edges.items():
        t = spec.tasks.add(name=name, depends_on=deps)
        t.python.import_path = "m:f"
        t.retry.max_retries = retries
    return spec


def start(edges, **kw) -> SchedulerState:
    s = SchedulerState(prefetch=0, validate=True, recovery_codec=PICKLE_CODEC)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 4))
    spec = spec_of(edges, **kw)
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    return s


def assigns(actions) -> dict[str, Assign]:
    return {a.attempt[1]: a for a in actions if isinstance(a, Assign)}


def state_of(s: SchedulerState, task: str) -> str:
    return pb.TaskState.Name(s.runs["r1"].tasks[task].state)


def run_state(actions) -> int | None:
    runs = [a for a in actions if isinstance(a, RunRecord)]
    return runs[-1].state if runs else None


def fail(key, now, message="down", **kw) -> TaskFailed:
    err = pb.TaskError(error_type="TASK_FAILURE", exception_type="ConnectionError", message=message, **kw)
    return TaskFailed(now, "w1", key, now, err)


def ok(key, now, value=b"v") -> TaskSucceeded:
    return TaskSucceeded(now, "w1", key, now, pb.Payload(codec=pb.CODEC_RAW, data=value))


def answer(key, now, decision) -> TaskSucceeded:
    return TaskSucceeded(now, "w1", key, now, encode(decision, "pickle"))


def fail_into_recovery(s: SchedulerState, task: str, now: float = 1.0) -> Assign:
    """Fail ``task``'s current attempt for good; return the handler call sent for it."""
    key = ("r1", task, s.runs["r1"].tasks[task].attempt)
    out = s.handle(fail(key, now))
    assert [r.state for r in out if isinstance(r, TaskRecord) and r.name == task] == [pb.RECOVERING]
    (call,) = assigns(s.schedule(now)).values()
    return call


def test_a_task_that_fails_for_good_waits_in_recovering_while_a_worker_runs_the_handler():
    s = start({"a": [], "b": ["a"]})
    a = assigns(s.schedule(0.0))["a"]
    call = fail_into_recovery(s, "a")
    assert call.attempt == ("r1", "a/recovery", 1) and call.worker_id == "w1" and call.last_try
    assert call.task.python.code_hash == HANDLER_HASH and call.code[0].data == b"pickled handler"
    args, _ = decode(call.task.args)
    assert args[0] == "a" and args[1]["exception_type"] == "ConnectionError" and args[1]["message"] == "down"
    assert args[2] == {"run_id": "r1", "pipeline": "p", "attempt": a.attempt[2]}
    assert "a/recovery" not in s.runs["r1"].tasks  # synthetic: kept out of the run's tasks
    assert state_of(s, "b") == "PENDING" and s.runs["r1"].state == pb.RUN_RUNNING


def test_retries_come_first_and_the_handler_only_after_the_last_one():
    s = start({"a": []}, retries=1)
    a = assigns(s.schedule(0.0))["a"]
    s.handle(fail(a.attempt, 1.0))
    assert state_of(s, "a") == "RETRY_WAIT"
    s.handle(Tick(1.0))
    assert assigns(s.schedule(1.0))["a"].last_try
    fail_into_recovery(s, "a", 2.0)


def test_skip_ends_the_task_skipped_and_dependents_run_with_none():
    s = start({"a": [], "b": ["a"]})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(answer(call.attempt, 2.0, "skip"))
    task = s.runs["r1"].tasks["a"]
    assert state_of(s, "a") == "SKIPPED" and task.error.skipped
    assert "recovery handler" in task.error.message and "down" in task.error.message
    b = assigns(s.schedule(2.0))["b"]
    assert b.upstream[0] == pb.Payload()  # None for the skipped input
    assert run_state(s.handle(ok(b.attempt, 3.0))) == pb.RUN_SUCCEEDED


def test_continue_fails_the_task_and_its_dependents_while_independent_branches_go_on():
    s = start({"a": [], "b": ["a"], "c": []})
    first = assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(answer(call.attempt, 2.0, "continue"))
    assert state_of(s, "a") == "FAILED" and state_of(s, "b") == "UPSTREAM_FAILED"
    assert s.runs["r1"].tasks["a"].error.message == "down"  # a plain failure, nothing added
    assert state_of(s, "c") == "ASSIGNED"
    assert run_state(s.handle(ok(first["c"].attempt, 3.0))) == pb.RUN_FAILED


def test_halt_pipeline_fails_the_task_cancels_everything_unfinished_and_the_run_fails():
    s = start({"a": [], "b": ["a"], "slow": [], "later": ["slow"]})
    first = assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    out = s.handle(answer(call.attempt, 2.0, "halt_pipeline"))
    states = {n: state_of(s, n) for n in ("a", "b", "slow", "later")}
    assert states == {"a": "FAILED", "b": "UPSTREAM_FAILED", "slow": "CANCELLED", "later": "CANCELLED"}
    (cancel,) = [x for x in out if isinstance(x, CancelAttempts)]
    assert cancel.attempts == (first["slow"].attempt,)
    assert "halted the pipeline" in s.runs["r1"].tasks["a"].error.message
    assert "recovery handler halted the pipeline after task 'a' failed" in s.runs["r1"].tasks["slow"].error.message
    assert run_state(out) == pb.RUN_FAILED


def test_retry_with_fallback_gives_one_last_try_and_does_not_ask_the_handler_twice():
    s = start({"a": [], "b": ["a"]}, retries=1)
    a1 = assigns(s.schedule(0.0))["a"]
    s.handle(fail(a1.attempt, 1.0))
    s.handle(Tick(1.0))
    a2 = assigns(s.schedule(1.0))["a"]
    assert a2.last_try
    call = fail_into_recovery(s, "a", 2.0)
    s.handle(answer(call.attempt, 3.0, "retry_with_fallback"))
    assert state_of(s, "a") == "READY"
    a3 = assigns(s.schedule(3.0))["a"]
    assert a3.attempt[2] == 3 and a3.last_try  # the worker runs the fallback if this fails
    out = s.handle(fail(a3.attempt, 4.0, message="still down"))
    assert state_of(s, "a") == "FAILED" and state_of(s, "b") == "UPSTREAM_FAILED"
    assert not assigns(s.schedule(4.0)) and run_state(out) == pb.RUN_FAILED


def test_retry_with_fallback_whose_last_try_uses_the_fallback_succeeds():
    s = start({"a": [], "b": ["a"]})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(answer(call.attempt, 2.0, "retry_with_fallback"))
    a2 = assigns(s.schedule(2.0))["a"]
    cause = pb.TaskError(exception_type="ConnectionError", message="down")
    s.handle(TaskSucceeded(3.0, "w1", a2.attempt, 3.0, pb.Payload(codec=pb.CODEC_RAW, data=b"cached"),
                           fallback_used=True, cause=cause))  # fmt: skip
    assert state_of(s, "a") == "SUCCEEDED" and s.runs["r1"].tasks["a"].error.fallback_used
    assert assigns(s.schedule(3.0))["b"].upstream[0].data == b"cached"


@pytest.mark.parametrize("bad", ["retry", None, 3])
def test_a_handler_returning_anything_else_counts_as_continue_and_the_error_says_so(bad):
    s = start({"a": [], "b": ["a"]})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    out = s.handle(answer(call.attempt, 2.0, bad))
    message = s.runs["r1"].tasks["a"].error.message
    assert state_of(s, "a") == "FAILED" and state_of(s, "b") == "UPSTREAM_FAILED"
    assert message.startswith("down (recovery handler returned") and repr(bad) in message
    assert run_state(out) == pb.RUN_FAILED


def test_a_handler_that_raises_counts_as_continue_and_its_error_is_recorded():
    s = start({"a": []})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    err = pb.TaskError(error_type="TASK_FAILURE", exception_type="KeyError", message="'oops'")
    out = s.handle(TaskFailed(2.0, "w1", call.attempt, 2.0, err))
    assert state_of(s, "a") == "FAILED"
    assert s.runs["r1"].tasks["a"].error.message == "down (recovery handler raised (KeyError: 'oops'))"
    assert s.runs["r1"].tasks["a"].error.exception_type == "ConnectionError"  # the task's own error stays
    assert run_state(out) == pb.RUN_FAILED


def test_no_handler_means_no_recovering_state():
    s = start({"a": []}, handler=False)
    a = assigns(s.schedule(0.0))["a"]
    out = s.handle(fail(a.attempt, 1.0))
    assert state_of(s, "a") == "FAILED" and run_state(out) == pb.RUN_FAILED


def test_a_stale_or_repeated_answer_is_dropped():
    s = start({"a": [], "b": []})
    first = assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(answer(call.attempt, 2.0, "skip"))
    stale = s.stale_results
    assert s.handle(answer(call.attempt, 2.5, "halt_pipeline")) == []  # a worker re-sending it
    assert s.handle(answer(("r1", "a/recovery", 99), 2.5, "halt_pipeline")) == []
    assert s.handle(answer(("nope", "a/recovery", 1), 2.5, "halt_pipeline")) == []
    assert s.stale_results == stale + 3 and state_of(s, "a") == "SKIPPED" and state_of(s, "b") == "ASSIGNED"
    s.handle(ok(first["b"].attempt, 3.0))


def test_the_handler_call_is_resent_when_its_worker_is_lost():
    s = SchedulerState(prefetch=0, validate=True, heartbeat_timeout_s=5.0, recovery_codec=PICKLE_CODEC)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 1))
    spec = spec_of({"a": []})
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(WorkerConnected(4.0, "w2", "w2", "host", 1))
    s.handle(Tick(7.0))  # w1 said nothing for 6 s > 5 s: lost
    (again,) = assigns(s.schedule(7.0)).values()
    assert again.worker_id == "w2" and again.attempt == ("r1", "a/recovery", 2)
    assert again.code  # w2 never got the handler's code
    s.handle(TaskSucceeded(7.5, "w1", call.attempt, 7.5, encode("halt_pipeline", "pickle")))  # the lost one: stale
    assert state_of(s, "a") == "RECOVERING"
    s.handle(TaskSucceeded(8.0, "w2", again.attempt, 8.0, encode("skip", "pickle")))
    assert state_of(s, "a") == "SKIPPED" and s.runs["r1"].state == pb.RUN_SUCCEEDED


def test_a_released_handler_call_is_resent_at_once():
    s = start({"a": []})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    s.handle(TaskReleased(2.0, "w1", call.attempt))
    (again,) = assigns(s.schedule(2.0)).values()
    assert again.attempt == ("r1", "a/recovery", 2) and not again.code  # w1 has the code already


def test_the_handler_call_waits_for_a_worker_with_room():
    s = start({"a": [], "b": [], "c": [], "d": []})  # 4 slots, 4 tasks
    first = assigns(s.schedule(0.0))
    s.handle(fail(first["a"].attempt, 1.0))
    s.handle(WorkerConnected(1.0, "w1", "w1", "host", 3))  # the worker shrinks: no room now
    assert assigns(s.schedule(1.0)) == {}
    s.handle(ok(first["b"].attempt, 2.0))
    (call,) = assigns(s.schedule(2.0)).values()
    assert call.attempt[1] == "a/recovery"


def test_cancel_while_recovering_cancels_the_task_and_the_handler_call():
    s = start({"a": [], "b": ["a"]})
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    out = s.handle(CancelRequested(2.0, "r1"))
    assert state_of(s, "a") == "CANCELLED" and run_state(out) == pb.RUN_CANCELLED
    (cancel,) = [x for x in out if isinstance(x, CancelAttempts)]
    assert cancel.attempts == (call.attempt,)
    assert s.handle(answer(call.attempt, 3.0, "skip")) == []  # its late answer is stale


def test_failure_isolation_off_cancels_a_task_recovering_in_another_branch():
    s = start({"a": [], "b": []}, fail_fast=True)
    assigns(s.schedule(0.0))
    call = fail_into_recovery(s, "a")
    b = ("r1", "b", s.runs["r1"].tasks["b"].attempt)
    out = s.handle(fail(b, 2.0))  # b fails for good too; its handler call is queued
    assert state_of(s, "b") == "RECOVERING"
    out = s.handle(answer(call.attempt, 3.0, "continue"))  # a fails: the run stops
    assert state_of(s, "a") == "FAILED" and state_of(s, "b") == "CANCELLED"
    assert run_state(out) == pb.RUN_FAILED
    assert assigns(s.schedule(3.0)) == {}  # b's queued handler call is never sent


def test_a_cancelled_attempt_is_not_passed_to_the_handler():
    s = start({"a": []})
    a = assigns(s.schedule(0.0))["a"]
    s.handle(TaskFailed(1.0, "w1", a.attempt, 1.0, pb.TaskError(error_type="CANCELLED", message="x")))
    assert state_of(s, "a") == "FAILED"


def test_a_task_restored_in_recovering_asks_the_handler_again():
    spec = spec_of({"a": [], "b": ["a"]})
    rec = TaskRecord("r1", "a", pb.RECOVERING, 2, "", 0.0, 1.0, pb.TaskError(message="down"))
    s = SchedulerState(prefetch=0, validate=True, recovery_codec=PICKLE_CODEC)
    s.handle(RunRestored(10.0, "r1", spec, tuple(validate_spec(spec)), 0.0, {"a": rec}))
    assert state_of(s, "a") == "RECOVERING" and assigns(s.schedule(10.0)) == {}  # no worker yet
    s.handle(WorkerConnected(10.5, "w1", "w1", "host", 2))
    (call,) = assigns(s.schedule(10.5)).values()
    args, _ = decode(call.task.args)
    assert args[1]["message"] == "down" and args[2]["attempt"] == 2
    s.handle(answer(call.attempt, 11.0, "skip"))
    assert state_of(s, "a") == "SKIPPED" and state_of(s, "b") == "READY"


def test_validate_spec_checks_the_recovery_handler_reference():
    from xpipe import PipelineValidationError

    spec = spec_of({"a": []})
    del spec.code[:]
    with pytest.raises(PipelineValidationError, match="recovery_handler refers to code"):
        validate_spec(spec)
    spec.recovery_handler.Clear()
    spec.recovery_handler.SetInParent()
    with pytest.raises(PipelineValidationError, match="recovery_handler needs"):
        validate_spec(spec)


# ---------------------------------------------------------------- the SDK side


def module_handler(failed_task, error, context):
    return "skip"


def test_recovery_handler_decorator_ships_the_handler_in_the_spec():
    from xpipe import Pipeline, Task

    p = Pipeline("p")
    p.add_task(Task("a", print))
    assert p.to_proto().HasField("recovery_handler") is False
    assert p.recovery_handler(module_handler) is module_handler  # returned unchanged
    spec = p.to_proto()
    assert spec.recovery_handler.import_path == f"{__name__}:module_handler"

    local = {"halt": True}

    @p.recovery_handler
    def closure(failed_task, error, context):
        return "halt_pipeline" if local["halt"] else "continue"

    spec = p.to_proto()
    assert not spec.recovery_handler.import_path
    blob = {b.code_hash: b.data for b in spec.code}[spec.recovery_handler.code_hash]
    assert pickle.loads(blob)("a", {}, {}) == "halt_pipeline"
    assert validate_spec(spec) == ["a"]


@pytest.mark.parametrize("bad", [lambda task: "skip", lambda a, b, c, d: "skip", "skip", int])
def test_recovery_handler_must_take_task_error_and_context(bad):
    from xpipe import Pipeline

    with pytest.raises(TypeError, match="recovery handler"):
        Pipeline("p").recovery_handler(bad)


@pytest.mark.parametrize(
    "handler", [lambda *args: "skip", lambda task, error, context, extra=None: "skip"], ids=["star-args", "default"]
)
def test_a_handler_with_defaults_or_star_args_is_accepted(handler):
    from xpipe import Pipeline, Task

    p = Pipeline("p")
    p.add_task(Task("a", print))
    p.recovery_handler(handler)
    spec = p.to_proto()
    blob = {b.code_hash: b.data for b in spec.code}[spec.recovery_handler.code_hash]
    assert pickle.loads(blob)("a", {}, {}) == "skip"  # it travels with the spec and still answers


def test_a_state_machine_without_a_recovery_codec_says_so_when_a_handler_is_due():
    s = SchedulerState(prefetch=0, validate=True)  # no recovery_codec: the shell forgot it
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 4))
    spec = spec_of({"a": []})
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    a = assigns(s.schedule(0.0))["a"]
    s.handle(fail(a.attempt, 1.0))
    with pytest.raises(RuntimeError, match="no recovery_codec"):
        s.schedule(1.0)
