"""The error model end to end: each failure reaches the SDK as its own type (issue 10, section 4)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster
from xpipe import (
    DataQualityReport,
    Pipeline,
    PipelineExecutionError,
    PipelineManager,
    PipelineValidationError,
    RequestRejectedError,
    Task,
)
from xpipe._proto import common_pb2


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineManager]:
    """One cluster for the module: every test here runs a pipeline or two of a few tasks."""
    with Cluster(Path(tmp_path_factory.mktemp("errors"))) as cluster:
        manager = PipelineManager(coordinator=cluster.address)
        try:
            yield manager
        finally:
            manager.close()


def run_failing(pm: PipelineManager, *tasks: Task, name: str) -> PipelineExecutionError:
    p = Pipeline(name)
    p.add_tasks(list(tasks))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    return info.value


def test_a_missing_module_is_dependency_failure_naming_it(pm):
    e = run_failing(pm, Task("needs_module", ht.import_missing_module), name="missing-module")
    assert e.error_type == "DEPENDENCY_FAILURE"
    assert e.missing_dependencies == ["xpipe_test_module_nobody_has"]
    assert e.task == "needs_module" and e.result.tasks["needs_module"].exception_type == "ModuleNotFoundError"


def test_dependents_of_a_failed_task_end_upstream_failed(pm):
    bad = Task("bad", ht.fail_with_value_error, args=("boom",))
    child = Task("child", ht.noop, depends_on=[bad])
    grandchild = Task("grandchild", ht.noop, depends_on=[child])
    e = run_failing(pm, bad, child, grandchild, name="upstream")
    assert e.error_type == "TASK_FAILURE" and e.task == "bad"  # the cause keeps its own type
    assert sorted(e.upstream_failed) == ["child", "grandchild"] and e.missing_dependencies == []
    for name in ("child", "grandchild"):
        info = e.result.tasks[name]
        assert (info.status, info.error_type) == ("upstream_failed", "UPSTREAM_FAILED")


def test_serialization_reaches_the_sdk_as_itself(pm):
    e = run_failing(pm, Task("lock", ht.unpicklable), name="serialization")
    assert e.error_type == "SERIALIZATION" and "result of task 'lock'" in str(e)


def test_fallback_and_skip_are_flags_not_error_types(pm):
    p = Pipeline("flags")
    p.add_tasks([Task("fell_back", ht.fetch, args=("bug",)), Task("skipped", ht.fetch, args=("invalid",))])
    result = pm.execute_pipeline(p, monitor=False)
    fell_back, skipped = result.tasks["fell_back"], result.tasks["skipped"]
    assert fell_back.status == "succeeded" and fell_back.fallback_used and not fell_back.skipped_by_policy
    assert (fell_back.error_type, fell_back.exception_type) == ("TASK_FAILURE", "KeyError")
    assert skipped.status == "skipped" and skipped.skipped_by_policy and not skipped.fallback_used
    assert (skipped.error_type, skipped.exception_type) == ("TASK_FAILURE", "DataValidationError")


def test_quality_report_is_an_object_and_apply_data_fixes_reruns_with_them(pm):
    p = Pipeline("quality-fixes")
    p.add_tasks([Task("extract", ht.echo, args=(3,)), Task("clean", ht.clean_rows, depends_on=["extract"])])
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    e = info.value
    report = e.quality_report
    assert e.error_type == "DATA_QUALITY_FAILURE" and isinstance(report, DataQualityReport)
    assert report.details == {"rows_without_id": 3} and report.suggested_fixes == ["drop_rows_without_id"]
    assert report.to_dict() == {"run_id": e.result.run_id, "pipeline": "quality-fixes", "task": "clean",
                                "details": {"rows_without_id": 3}, "suggested_fixes": ["drop_rows_without_id"]}  # fmt: skip
    assert pm.last_quality_report is report
    rerun = pm.apply_data_fixes(report.suggested_fixes)  # the seed's call: the last report by default
    assert rerun.succeeded and rerun.run_id != e.result.run_id
    assert rerun.outputs["clean"] == {"rows": 3, "applied": ["drop_rows_without_id"]}


def test_apply_data_fixes_refuses_what_it_cannot_rerun(pm):
    fresh = PipelineManager(coordinator=pm.address)
    try:
        with pytest.raises(ValueError, match="no DATA_QUALITY_FAILURE to fix"):
            fresh.apply_data_fixes(["x"])
        unknown = DataQualityReport({"suggested_fixes": ["x"]}, run_id="r-gone", pipeline="never-run", task="t")
        with pytest.raises(ValueError, match="r-gone.*never-run"):
            fresh.apply_data_fixes(["x"], unknown)
    finally:
        fresh.close()
    p = Pipeline("no-fixes-param")
    p.add_task(Task("validate", ht.fail_with_quality_report, args=(2,)))
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    with pytest.raises(TypeError, match="task 'validate' takes no 'fixes' keyword"):
        pm.apply_data_fixes(["x"], info.value.quality_report)


def test_seed_calls_without_what_they_need_say_why(pm):
    # Built (issue 17): a coordinator with no autoscale provider refuses, naming the flag.
    with pytest.raises(RequestRejectedError, match="runs no autoscale provider; start it with --autoscale-provider"):
        pm.scale_up_resources({"cpu_cores": 64})
    with pytest.raises(PipelineValidationError, match="no pipeline named 'anything' is registered"):
        pm.optimize_pipeline_performance("anything")  # built (issue 15): it needs a pipeline
    health = pm.get_stream_health()  # built (issue 14): no stream pipelines here
    assert health.healthy and health.failed_streams == []
    assert pm.restart_unhealthy_streams(health.failed_streams) == {}


def _raw_spec(name: str, deps: dict[str, list[str]]) -> common_pb2.PipelineSpec:
    """A spec as a polyglot client might send it, past the SDK's own checks."""
    spec = common_pb2.PipelineSpec(name=name)
    for task, upstream in deps.items():
        spec.tasks.add(name=task, depends_on=upstream, python=common_pb2.PythonCall(import_path="tests.helpers_tasks:noop"))
    return spec


def test_invalid_argument_maps_by_what_the_coordinator_says(pm):
    with pytest.raises(PipelineValidationError, match="dependency cycle"):
        pm.client.submit(_raw_spec("cycle", {"a": ["b"], "b": ["a"]}))
    bad_field = _raw_spec("bad-field", {"a": []})
    bad_field.tasks[0].timeout_s = math.nan
    with pytest.raises(RequestRejectedError, match="timeout_s") as info:
        pm.client.submit(bad_field)
    assert not isinstance(info.value, PipelineValidationError)


def test_a_handler_no_worker_serves_raises_handler_not_found_without_waiting(pm):
    """The worker registered no handler of that name: the task fails at once, it does not wait."""
    from xpipe import HandlerNotFoundError

    p = Pipeline("no-handler")
    p.add_tasks([Task.handler("resize", "no-such-handler"), Task("after", ht.noop, depends_on=["resize"])])
    with pytest.raises(HandlerNotFoundError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=30)
    e = info.value
    assert e.error_type == "HANDLER_NOT_FOUND" and e.task == "resize"
    assert "no registered worker has handler 'no-such-handler'" in e.task_error
    assert e.result.tasks["after"].status == "upstream_failed"
