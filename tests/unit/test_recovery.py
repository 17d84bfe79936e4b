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
    read_decision,
    recovered_task,
    recovery_name,
    recovery_spec,
)

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
    spec = recovery_spec("load", handler, error, run_id="r1", pipeline="etl", attempt=3)
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
    spec = recovery_spec("t", pb.PythonCall(import_path="m:f"), None, run_id="r", pipeline="p", attempt=1)
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
