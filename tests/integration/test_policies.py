"""Task fault-tolerance policies on a real coordinator and real worker processes."""

from __future__ import annotations

import time

import pytest

from tests import helpers_tasks as ht
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def test_retries_with_backoff_until_the_task_succeeds(pm, tmp_path):
    p = Pipeline("flaky")
    p.configure_fault_tolerance(max_retries_per_task=3, retry_backoff_strategy="exponential")
    p.add_task(Task("fetch", ht.fail_times, args=(str(tmp_path), 2), retry_delay_s=0.05))
    result = pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert result.outputs["fetch"] == 3
    assert result.tasks["fetch"].attempts == 3 and result.tasks["fetch"].status == "succeeded"


def test_fallback_after_the_last_retry_and_skip_passes_none_downstream(pm, tmp_path):
    p = Pipeline("resilient_etl")
    fetch = Task("fetch", ht.flaky_fetch, args=(str(tmp_path), 10), max_retries=1, retry_delay_s=0.01)
    skipped = Task("validate", ht.fetch, args=("invalid",))
    sink = Task("sink", ht.describe, depends_on=[fetch, skipped])
    p.add_tasks([fetch, skipped, sink])
    result = pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert result.status == "succeeded"
    cached = {"cached": True, "args": [str(tmp_path), 10], "kwargs": {}}
    assert result.outputs["fetch"] == cached
    info = result.tasks["fetch"]
    assert info.fallback_used and info.attempts == 2 and info.exception_type == "ConnectionError"
    assert (tmp_path / "calls").read_text() == "2"  # one retry, then the fallback on the last try
    assert result.tasks["validate"].status == "skipped" and "validate" not in result.outputs
    assert result.tasks["validate"].exception_type == "DataValidationError"
    assert result.outputs["sink"] == {"args": [cached, None], "kwargs": {}}


def test_an_error_outside_retry_on_is_not_retried(pm):
    p = Pipeline("strict")
    p.add_task(Task("t", ht.fetch_no_fallback, args=("bug",), max_retries=5, retry_delay_s=0.01))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    t = info.value.result.tasks["t"]
    assert t.status == "failed" and t.attempts == 1 and t.exception_type == "KeyError"


def test_failure_isolation_off_cancels_the_running_branch(pm):
    p = Pipeline("fail_fast")
    p.configure_fault_tolerance(failure_isolation=False)
    p.add_tasks([Task("slow", ht.sleep, args=(60,)), Task("bad", ht.fail_with_value_error)])
    started = time.monotonic()
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    assert time.monotonic() - started < 30  # not waiting out the 60 s task
    result = info.value.result
    assert result.status == "failed"
    assert result.tasks["bad"].status == "failed" and result.tasks["slow"].status == "cancelled"


def test_failure_isolation_on_lets_the_other_branch_finish(pm):
    p = Pipeline("isolated")
    p.add_tasks([Task("slow", ht.sleep, args=(0.3,)), Task("bad", ht.fail_with_value_error)])
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    result = info.value.result
    assert result.status == "failed" and result.outputs["slow"] == 0.3
