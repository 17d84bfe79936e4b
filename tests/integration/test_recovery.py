"""Recovery handlers and circuit breakers on a real coordinator and real worker processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests import helpers_tasks as ht
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task, handle_errors
from xpipe._cli import main as cli_main


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def recorder(log_dir: Path, decision):
    """A recovery handler (a closure, so it travels cloudpickled) that logs each call."""
    log_file = str(log_dir / "handler.jsonl")

    def handler(failed_task, error, context):
        with open(log_file, "a") as f:
            f.write(json.dumps({"task": failed_task, "error": error, "context": context}) + "\n")
        if isinstance(decision, BaseException):
            raise decision
        return decision

    return handler


def calls(log_dir: Path) -> list[dict]:
    path = log_dir / "handler.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_halt_pipeline_cancels_the_running_branch_and_fails_the_run(pm, tmp_path):
    p = Pipeline("halting")
    p.add_tasks([Task("bad", ht.fail_with_value_error, args=("corrupt input",)), Task("slow", ht.sleep, args=(60,)),
                 Task("after", ht.noop, depends_on=["bad"])])  # fmt: skip
    p.recovery_handler(recorder(tmp_path, "halt_pipeline"))
    started = time.monotonic()
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert time.monotonic() - started < 30  # the 60 s task was cancelled, not waited for
    result = info.value.result
    assert result.status == "failed" and info.value.task == "bad"
    states = {name: t.status for name, t in result.tasks.items()}
    assert states == {"bad": "failed", "slow": "cancelled", "after": "upstream_failed"}
    assert "halted the pipeline" in result.tasks["bad"].error
    (call,) = calls(tmp_path)
    assert call["task"] == "bad"
    assert call["error"]["exception_type"] == "ValueError" and call["error"]["message"] == "corrupt input"
    assert call["error"]["error_type"] == "TASK_FAILURE" and "ValueError" in call["error"]["traceback"]
    assert call["context"] == {"run_id": result.run_id, "pipeline": "halting", "attempt": 1}


def test_skip_ends_the_task_skipped_and_dependents_get_none(pm, tmp_path):
    p = Pipeline("skipping")
    p.configure_fault_tolerance(max_retries_per_task=1)
    bad = Task("bad", ht.fail_with_value_error, retry_delay_s=0.01)
    p.add_tasks([bad, Task("sink", ht.describe, depends_on=[bad], args=("x",))])
    p.recovery_handler(recorder(tmp_path, "skip"))
    result = pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert result.status == "succeeded"
    assert result.tasks["bad"].status == "skipped" and result.tasks["bad"].attempts == 2
    assert result.outputs["sink"] == {"args": [None, "x"], "kwargs": {}}
    assert [c["context"]["attempt"] for c in calls(tmp_path)] == [2]  # asked once, after the retry


def test_continue_fails_the_branch_and_lets_the_other_finish(pm, tmp_path):
    p = Pipeline("continuing")
    p.add_tasks([Task("bad", ht.fail_with_value_error), Task("after", ht.noop, depends_on=["bad"]),
                 Task("other", ht.sleep, args=(0.2,))])  # fmt: skip
    p.recovery_handler(recorder(tmp_path, "continue"))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    result = info.value.result
    assert info.value.error_type == "TASK_FAILURE" and result.status == "failed"
    assert result.tasks["bad"].status == "failed" and result.tasks["after"].status == "upstream_failed"
    assert result.outputs["other"] == 0.2
    assert result.tasks["bad"].error == "bad value"


def test_a_handler_that_raises_counts_as_continue_and_says_why(pm, tmp_path):
    p = Pipeline("broken_handler")
    p.add_task(Task("bad", ht.fail_with_value_error))
    p.recovery_handler(recorder(tmp_path, RuntimeError("pager is down")))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    bad = info.value.result.tasks["bad"]
    assert bad.status == "failed" and bad.exception_type == "ValueError"
    assert bad.error == "bad value (recovery handler raised (RuntimeError: pager is down))"


def cache_that_works_the_second_time(counter_dir: str) -> dict:
    """A fallback that fails on its first call (counted in ``counter_dir/fallback``) only."""
    path = Path(counter_dir) / "fallback"
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count == 1:
        raise RuntimeError("cache is warming up")
    return {"cached": True, "fallback_call": count}


@handle_errors(fallback=cache_that_works_the_second_time)
def always_down(counter_dir: str) -> dict:
    ht.count_call(counter_dir)
    raise ConnectionError("api.example is down")


def test_retry_with_fallback_runs_once_more_and_the_fallback_value_is_used(pm, tmp_path):
    p = Pipeline("retry_fallback")
    p.add_tasks([Task("fetch", always_down, args=(str(tmp_path),)), Task("use", ht.describe, depends_on=["fetch"])])
    p.recovery_handler(recorder(tmp_path, "retry_with_fallback"))
    result = pm.execute_pipeline(p, monitor=False, timeout_s=30)
    fetch = result.tasks["fetch"]
    assert fetch.status == "succeeded" and fetch.fallback_used and fetch.attempts == 2
    assert result.outputs["fetch"] == {"cached": True, "fallback_call": 2}
    assert (tmp_path / "calls").read_text() == "2"  # the task itself ran twice
    (call,) = calls(tmp_path)
    assert "cache is warming up" in call["error"]["message"]
    assert result.outputs["use"] == {"args": [{"cached": True, "fallback_call": 2}], "kwargs": {}}


def test_an_open_circuit_fails_fast_with_circuit_open_and_shows_in_status(pm, tmp_path, capsys):
    p = Pipeline("payments")
    p.configure_fault_tolerance(circuit_breaker_enabled=True, circuit_failure_threshold=2, circuit_open_s=600)
    p.add_task(Task("charge", ht.fail_times, args=(str(tmp_path), 100), circuit="payments-api", max_retries=4,
                    retry_delay_s=0.01))  # fmt: skip
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert info.value.error_type == "CIRCUIT_OPEN"
    charge = info.value.result.tasks["charge"]
    assert charge.attempts == 5 and "'payments-api' is open" in charge.error
    assert (tmp_path / "calls").read_text() == "2"  # only two attempts reached a worker

    (circuit,) = pm.get_cluster_status().circuits
    assert (circuit.name, circuit.state, circuit.failures) == ("payments-api", "open", 2)
    assert circuit.opened_at > 0
    address = ["--coordinator", pm.client.address]
    capsys.readouterr()
    assert cli_main(["status", info.value.result.run_id, *address]) == 0
    out = capsys.readouterr().out
    assert "payments-api" in out and "open" in out
    assert cli_main(["cluster", "--json", *address]) == 0
    shown = json.loads(capsys.readouterr().out)["circuits"]
    assert [(c["name"], c["state"], c["failures"]) for c in shown] == [("payments-api", "open", 2)]

    # Another run through the same named dependency fails fast at once, without a worker.
    q = Pipeline("refunds")
    q.configure_fault_tolerance(circuit_breaker_enabled=True)
    q.add_task(Task("refund", ht.count_call, args=(str(tmp_path),), circuit="payments-api"))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(q, monitor=False, timeout_s=30)
    assert info.value.error_type == "CIRCUIT_OPEN"
    assert (tmp_path / "calls").read_text() == "2"
