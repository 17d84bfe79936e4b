"""What a task records about itself: the value rule, the checks, the recorder, the config,
the decorators, and how the state machine carries it (no network; the task runner runs here)."""

from __future__ import annotations

import math
import threading
import time

import pytest

import xpipe
from xpipe import Pipeline, PipelineValidationError, record_metric
from xpipe._limits import MAX_METRIC_LABELS, MAX_METRIC_NAME_CHARS, MAX_METRIC_POINTS
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, worker_pb2
from xpipe._result import TaskRunInfo
from xpipe.coordinator._events import (
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskSucceeded,
    Tick,
    WorkerConnected,
    task_info,
)
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import check_event, validate_spec
from xpipe.telemetry._monitoring import parse_monitoring_config
from xpipe.telemetry._task import AttemptRecorder, TaskMetrics, check_metric, metric_key, tracked_value
from xpipe.worker._runtask import run_assignment

HERE = __name__


# ---- the value rule of track_metric --------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "returned", "key", "expected"),
    [
        ("data_quality_score", {"processed_data": [1], "data_quality_score": 0.9}, None, 0.9),  # the name itself
        ("data_quality_score", {"processed_data": [1], "quality_score": 0.75}, None, 0.75),  # seed: inside the name
        ("revenue_impact", {"data": "rows", "revenue": 1200}, None, 1200.0),  # seed: non-numeric 'data' ignored
        ("rows", 42, None, 42.0),  # the return itself
        ("rows", {"n": 3, "rows_total": 9}, "n", 3.0),  # key= wins
        ("score", {"score": 1, "s": 2}, None, 1.0),  # the exact name beats a key inside it
    ],
)
def test_tracked_value_takes_the_value_by_the_rule(metric, returned, key, expected):
    assert tracked_value(metric, returned, key) == (expected, "")


@pytest.mark.parametrize(
    ("returned", "key", "says"),
    [
        ({"processed_data": [1]}, None, "keys seen: 'processed_data'"),  # nothing fits
        ({"quality": 1, "score": 2}, None, "keys 'quality', 'score' of the task's return all fit"),  # two fit
        ({"quality_score": "high"}, None, "keys seen: 'quality_score'"),  # not numeric: does not fit
        ({"data_quality_score": "high"}, None, "key 'data_quality_score' holds str 'high', not a number"),
        ({"data_quality_score": math.nan}, None, "not a finite number"),
        ({"data_quality_score": True}, None, "holds bool True, not a number"),
        ("text", None, "returned str, neither a number nor a mapping"),
        (True, None, "returned bool"),
        ({"a": 1}, "missing", "has no key 'missing'; keys seen: 'a'"),
        (5, "k", "has no key 'k' (it returned int)"),
    ],
)
def test_tracked_value_names_the_metric_and_the_keys_when_nothing_fits(returned, key, says):
    value, problem = tracked_value("data_quality_score", returned, key)
    assert value is None
    assert "tracked metric 'data_quality_score'" in problem and says in problem


# ---- record_metric's checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "labels", "error", "says"),
    [
        (3, 1.0, {}, TypeError, "metric name must be a str, got int"),
        ("1st", 1.0, {}, ValueError, "'1st' is not a valid Prometheus metric name"),
        ("rows-dropped", 1.0, {}, ValueError, "[a-zA-Z_:][a-zA-Z0-9_:]*"),
        ("x" * (MAX_METRIC_NAME_CHARS + 1), 1.0, {}, ValueError, f"the limit is {MAX_METRIC_NAME_CHARS}"),
        ("rows", True, {}, TypeError, "must be a real number (int or float, not bool), got bool"),
        ("rows", "12", {}, TypeError, "got str '12'"),
        ("rows", math.inf, {}, ValueError, "must be finite, got inf"),
        ("rows", math.nan, {}, ValueError, "must be finite, got nan"),
        ("rows", 1, {"bad-label": "x"}, ValueError, "label 'bad-label' of metric 'rows' is not a valid"),
        ("rows", 1, {"__x": "x"}, ValueError, "not start with '__'"),
        ("rows", 1, {"task": "x"}, ValueError, "label 'task' of metric 'rows' is reserved"),
        ("rows", 1, {"table": 3}, TypeError, "label 'table' of metric 'rows' must be a str, got int"),
        ("rows", 1, {"table": "x" * 300}, ValueError, "has 300 characters"),
        ("rows", 1, {f"l{i}": "x" for i in range(MAX_METRIC_LABELS + 1)}, ValueError, "labels; the limit is"),
    ],
)
def test_check_metric_refuses_bad_input_naming_it(name, value, labels, error, says):
    with pytest.raises(error) as caught:
        check_metric(name, value, labels)
    assert says in str(caught.value)


class _HostileMapping(dict):
    def __contains__(self, key):
        raise RuntimeError("no peeking")


def test_a_return_that_raises_when_read_gives_a_warning_not_a_failure():
    recorder = AttemptRecorder(_spec(track=[pb.TrackedMetric(name="score", kind=pb.METRIC_KIND_TRACKED)]))
    recorder.returned(_HostileMapping(score=1))
    (warning,) = recorder.telemetry().warnings
    assert warning == "tracked metric 'score': reading the task's return raised RuntimeError: no peeking"


def test_a_label_may_be_called_value():
    recorder = AttemptRecorder(_spec())
    recorder.start()
    try:
        record_metric("rows", 1, value="x")
    finally:
        recorder.close()
    assert TaskMetrics.from_proto(recorder.telemetry()).metrics == {'rows{value="x"}': 1.0}


def test_check_metric_accepts_prometheus_names_and_numbers():
    assert check_metric("ns:rows_total", 3, {"table": "users"}) == 3.0
    assert check_metric("_x", 2.5, {}) == 2.5


def test_record_metric_outside_a_task_says_so():
    with pytest.raises(RuntimeError, match=r"record_metric\(\) was called outside a task"):
        record_metric("rows", 1)
    assert xpipe.record_metric is record_metric


# ---- the recorder ---------------------------------------------------------------------------------


def _spec(**fields) -> pb.TaskSpec:
    return pb.TaskSpec(name="t", python=pb.PythonCall(import_path="m:f"), **fields)


def test_an_attempt_that_records_nothing_sends_nothing():
    recorder = AttemptRecorder(_spec())
    recorder.start()
    recorder.stop()
    recorder.close()
    assert recorder.telemetry() is None


def test_points_past_the_cap_are_dropped_with_a_warning_and_the_last_value_wins():
    recorder = AttemptRecorder(_spec())
    recorder.start()
    try:
        for i in range(MAX_METRIC_POINTS + 5):
            record_metric("rows", i)
    finally:
        recorder.close()
    made = recorder.telemetry()
    assert made is not None and len(made.metrics) == MAX_METRIC_POINTS
    assert made.warnings == [f"record_metric: 5 point(s) dropped; an attempt keeps at most {MAX_METRIC_POINTS}"]
    assert TaskMetrics.from_proto(made).metrics == {"rows": MAX_METRIC_POINTS - 1}
    with pytest.raises(RuntimeError, match="outside a task"):
        record_metric("rows", 1)  # closed: the attempt is over


def test_custom_metrics_off_checks_points_but_keeps_none():
    recorder = AttemptRecorder(_spec(custom_metrics_off=True))
    recorder.start()
    try:
        record_metric("rows", 1)
        with pytest.raises(ValueError, match="not a valid Prometheus metric name"):
            record_metric("bad name", 1)
    finally:
        recorder.close()
    assert recorder.telemetry() is None


def test_threads_of_the_thread_executor_record_into_their_own_attempts():
    got: dict[str, pb.TaskTelemetry | None] = {}
    both_started = threading.Barrier(2)

    def attempt(name: str) -> None:
        recorder = AttemptRecorder(_spec())
        recorder.start()
        try:
            both_started.wait(5)
            record_metric("who", len(name), attempt=name)
        finally:
            recorder.close()
        got[name] = recorder.telemetry()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("a", "bb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert TaskMetrics.from_proto(got["a"]).metrics == {'who{attempt="a"}': 1.0}
    assert TaskMetrics.from_proto(got["bb"]).metrics == {'who{attempt="bb"}': 2.0}


def test_a_thread_the_task_starts_in_an_executor_child_records_into_its_attempt():
    # An executor child runs its task in the main thread (as this test does).
    assert threading.current_thread() is threading.main_thread()
    recorder = AttemptRecorder(_spec())
    recorder.start()
    try:
        helper = threading.Thread(target=record_metric, args=("from_thread", 7))
        helper.start()
        helper.join(10)
    finally:
        recorder.close()
    assert TaskMetrics.from_proto(recorder.telemetry()).metrics == {"from_thread": 7.0}


def test_performance_measures_the_call_only_for_tracked_tasks():
    recorder = AttemptRecorder(_spec(track_performance=True))
    recorder.start()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # busy: CPU time, not just wall time
        pass
    recorder.stop()
    recorder.close()
    perf = TaskMetrics.from_proto(recorder.telemetry()).performance
    assert perf is not None
    assert perf.wall_s >= 0.04 and perf.cpu_s >= 0.04 and perf.peak_rss_bytes > 1 << 20
    untracked = AttemptRecorder(_spec())
    untracked.start()
    untracked.stop()
    untracked.close()
    assert untracked.telemetry() is None


def test_metric_keys_show_labels_sorted_and_escaped():
    assert metric_key("rows", {}) == "rows"
    assert metric_key("rows", {"z": "1", "a": 'say "hi"\\'}) == 'rows{a="say \\"hi\\"\\\\",z="1"}'


# ---- the task runner: the real code path of both executors ---------------------------------------


def records_and_returns(n: int) -> dict:
    record_metric("rows_seen", n)
    record_metric("rows_seen", n, table="users")
    return {"processed_data": list(range(n)), "quality_score": n / 10}


def records_then_raises() -> None:
    record_metric("before_failure", 1)
    raise RuntimeError("boom")


def records_a_bad_name() -> None:
    record_metric("rows-dropped", 1)


def plain() -> int:
    return 1


def _assignment(func: str, *, args: tuple = (), **fields) -> worker_pb2.Assignment:
    from xpipe import _codec

    task = pb.TaskSpec(name="t", python=pb.PythonCall(import_path=f"{HERE}:{func}"), **fields)
    if args:
        task.args.CopyFrom(_codec.encode((args, {}), "pickle"))
    made = worker_pb2.Assignment(task=task)
    made.attempt.run_id, made.attempt.task, made.attempt.attempt = "r1", "t", 1
    return made


def test_the_outcome_carries_points_tracked_values_and_performance():
    tracked = [pb.TrackedMetric(name="data_quality_score", kind=pb.METRIC_KIND_TRACKED),
               pb.TrackedMetric(name="missing_metric", kind=pb.METRIC_KIND_BUSINESS)]  # fmt: skip
    event = run_assignment(_assignment("records_and_returns", args=(5,), track=tracked, track_performance=True), None, {})
    assert event.WhichOneof("kind") == "succeeded"
    measured = TaskMetrics.from_proto(event.telemetry)
    assert measured.metrics == {"rows_seen": 5.0, 'rows_seen{table="users"}': 5.0, "data_quality_score": 0.5}
    kinds = {p.name: p.kind for p in event.telemetry.metrics}
    assert kinds == {"rows_seen": pb.METRIC_KIND_CUSTOM, "data_quality_score": pb.METRIC_KIND_TRACKED}
    assert measured.performance is not None and measured.performance.wall_s >= 0
    (warning,) = measured.warnings
    assert "tracked metric 'missing_metric'" in warning and "'processed_data', 'quality_score'" in warning


def test_a_failed_attempt_keeps_what_it_recorded_and_a_bad_name_fails_the_task():
    event = run_assignment(_assignment("records_then_raises"), None, {})
    assert event.WhichOneof("kind") == "failed" and event.failed.error.message == "boom"
    assert TaskMetrics.from_proto(event.telemetry).metrics == {"before_failure": 1.0}
    bad = run_assignment(_assignment("records_a_bad_name"), None, {})
    assert bad.WhichOneof("kind") == "failed"
    assert bad.failed.error.exception_type == "ValueError"
    assert "'rows-dropped' is not a valid Prometheus metric name" in bad.failed.error.message


def test_an_untracked_task_that_records_nothing_has_no_telemetry_on_its_event():
    event = run_assignment(_assignment("plain"), None, {})
    assert event.WhichOneof("kind") == "succeeded" and not event.HasField("telemetry")


# ---- enable_monitoring's config -----------------------------------------------------------------

SEED_CONFIG = {
    "metrics_collection": {"system_metrics": True, "business_metrics": True, "custom_metrics": True,
                           "collection_interval": "10s"},
    "alerting": {"slack_webhook": "https://hooks.slack.com/...", "email_alerts": ["ops@company.com"], "pager_duty": True},
    "anomaly_detection": {"enabled": True, "sensitivity": "medium", "ml_model": "isolation_forest"},
    "predictive_analytics": {"failure_prediction": True, "performance_forecasting": True,
                             "resource_optimization": True},
}  # fmt: skip


def test_the_seed_config_is_taken_and_kept_whole():
    import json

    config = parse_monitoring_config(SEED_CONFIG)
    assert (config.system_metrics, config.custom_metrics, config.business_metrics) == (True, True, True)
    assert config.collection_interval_s == 10.0
    kept = json.loads(config.to_json())
    assert kept["alerting"] == SEED_CONFIG["alerting"]
    assert kept["metrics_collection"]["collection_interval_s"] == 10.0
    assert kept["anomaly_detection"]["ml_model"] == "isolation_forest"


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"metrics_collection": {"colection_interval": "10s"}},
         "monitoring_config['metrics_collection']['colection_interval']: unknown key; known: business_metrics, "
         "collection_interval, custom_metrics, system_metrics"),
        ({"alerts": {}}, "monitoring_config['alerts']: unknown section; known: metrics_collection, alerting"),
        ({"metrics_collection": {"system_metrics": "yes"}}, "['system_metrics']: must be True or False, got str"),
        ({"metrics_collection": {"collection_interval": "10 parsecs"}}, "['collection_interval']: cannot read duration"),
        ({"metrics_collection": {"collection_interval": 0}}, "must be longer than 0 s"),
        ({"alerting": {"slack_webhook": "hooks.slack.com"}}, "['slack_webhook']: must be an http(s) URL"),
        ({"alerting": {"email_alerts": ["ops"]}}, "['email_alerts'][0]: is not an e-mail address"),
        ({"anomaly_detection": {"sensitivity": "extreme"}}, "must be one of low, medium, high"),
        ({"predictive_analytics": []}, "['predictive_analytics']: must be a dict"),
        (["metrics_collection"], "monitoring_config: must be a dict of sections"),
    ],
)  # fmt: skip
def test_a_bad_config_is_refused_naming_the_key_path(config, says):
    with pytest.raises(PipelineValidationError) as caught:
        Pipeline("p").enable_monitoring(config)
    assert says in str(caught.value)


# ---- the decorators -----------------------------------------------------------------------------


def test_the_decorators_register_tasks_and_mark_the_spec():
    p = Pipeline("production_etl")

    @p.track_metric("data_quality_score")
    def data_quality_task(data):
        return {"processed_data": data, "quality_score": 1.0}

    @p.track_performance
    def expensive_computation(data):
        return data

    @p.track_business_metric("revenue_impact", key="revenue")
    @p.track_performance(depends_on=["expensive_computation"])
    def revenue_calculation(data):
        return {"data": data, "revenue": 1}

    assert list(p.tasks) == ["data_quality_task", "expensive_computation", "revenue_calculation"]
    assert data_quality_task({"x": 1})["quality_score"] == 1.0  # still callable as a function
    specs = {t.name: t for t in p.to_proto().tasks}
    assert [(t.name, t.kind, t.key) for t in specs["data_quality_task"].track] == [
        ("data_quality_score", pb.METRIC_KIND_TRACKED, "")]
    assert not specs["data_quality_task"].track_performance
    assert specs["expensive_computation"].track_performance and not specs["expensive_computation"].track
    assert [(t.name, t.kind, t.key) for t in specs["revenue_calculation"].track] == [
        ("revenue_impact", pb.METRIC_KIND_BUSINESS, "revenue")]
    assert specs["revenue_calculation"].track_performance
    assert list(specs["revenue_calculation"].depends_on) == ["expensive_computation"]
    assert not p.to_proto().monitoring_json


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda p: p.track_metric("data-quality"), "is not a valid Prometheus metric name"),
        (lambda p: p.track_metric(lambda: 1), 'needs the metric\'s name: @pipeline.track_metric("data_quality_score")'),
        (lambda p: p.track_business_metric("revenue", key=3), "key must be a non-empty str or None"),
        (lambda p: p.track_performance(3), "track_performance takes a function"),
    ],
)
def test_the_decorators_refuse_bad_names_and_keys(call, says):
    with pytest.raises(PipelineValidationError) as caught:
        call(Pipeline("p"))
    assert says in str(caught.value)


def test_tracking_one_metric_twice_on_a_task_is_refused():
    p = Pipeline("p")
    with pytest.raises(PipelineValidationError, match="tracks metric 'score' already"):

        @p.track_metric("score")
        @p.track_metric("score")
        def f():
            return 1


def test_enable_monitoring_switches_what_the_tasks_keep():
    p = Pipeline("p")
    p.track_metric("quality", name="q")(lambda: 1)
    p.track_business_metric("revenue", name="r")(lambda: 1)
    p.task(name="plain")(lambda: 1)
    p.add_task(xpipe.Task.command("shell", ["true"]))
    p.enable_monitoring({"metrics_collection": {"custom_metrics": False, "system_metrics": True}})
    spec = p.to_proto()
    by_name = {t.name: t for t in spec.tasks}
    assert not by_name["q"].track, "custom_metrics=False drops track_metric"
    assert [t.name for t in by_name["r"].track] == ["revenue"]
    assert all(t.custom_metrics_off and t.track_performance for n, t in by_name.items() if n != "shell")
    assert not by_name["shell"].track_performance, "command tasks are not measured"
    assert '"custom_metrics":false' in spec.monitoring_json
    p.enable_monitoring({"metrics_collection": {"business_metrics": False}})
    assert all(t.kind != pb.METRIC_KIND_BUSINESS for task in p.to_proto().tasks for t in task.track)
    validate_spec(p.to_proto())  # the coordinator takes what the SDK makes


# ---- the coordinator carries it ------------------------------------------------------------------


def _measured(value: float) -> pb.TaskTelemetry:
    return pb.TaskTelemetry(metrics=[pb.MetricPoint(name="rows", value=value, kind=pb.METRIC_KIND_CUSTOM)])


def test_the_state_machine_keeps_the_last_finished_attempts_telemetry():
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 2))
    spec = pb.PipelineSpec(name="p", retry_on_failure=True)
    for name in ("a", "b"):
        t = spec.tasks.add(name=name, python=pb.PythonCall(import_path="m:f"))
        t.retry.max_retries = 1
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    s.schedule(0.0)
    out = s.handle(TaskFailed(1.0, "w1", ("r1", "a", 1), 1.0, pb.TaskError(error_type="TASK_FAILURE"), 0.5, _measured(1)))
    out += s.handle(TaskSucceeded(1.0, "w1", ("r1", "b", 1), 1.0, pb.Payload()))
    records = {r.name: r for r in out if isinstance(r, TaskRecord)}
    assert records["a"].telemetry == _measured(1) and records["b"].telemetry is None
    assert task_info(records["a"]).telemetry == _measured(1) and not task_info(records["b"]).HasField("telemetry")
    s.handle(Tick(5.0))  # the retry is due
    s.schedule(5.0)
    out = s.handle(TaskSucceeded(6.0, "w1", ("r1", "a", 2), 6.0, pb.Payload()))
    (record,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "a"]
    assert record.state == pb.SUCCEEDED and record.telemetry == pb.TaskTelemetry(), "the retry recorded nothing"
    info = task_info(record)
    assert TaskRunInfo.from_proto(info).metrics == {}


def test_a_worker_event_with_unexportable_telemetry_is_refused():
    event = worker_pb2.TaskEvent(at=1.0)
    event.succeeded.result.CopyFrom(pb.Payload())
    event.telemetry.CopyFrom(_measured(math.nan))
    assert "TaskEvent.telemetry.metrics[0]: value of metric 'rows' is nan, not finite" == check_event(event)
    event.telemetry.metrics[0].value = 1.0
    event.telemetry.metrics[0].name = "bad name"
    assert "is not a valid Prometheus metric name" in check_event(event)
    event.telemetry.metrics[0].name = "rows"
    assert check_event(event) == ""


def test_a_result_shows_metrics_performance_and_warnings():
    info = pipeline_pb2.TaskInfo(name="t", state=pb.SUCCEEDED)
    info.telemetry.CopyFrom(_measured(3))
    info.telemetry.performance.wall_s = 1.5
    info.telemetry.warnings.append("w")
    shown = TaskRunInfo.from_proto(info)
    assert shown.metrics == {"rows": 3.0} and shown.performance.wall_s == 1.5 and shown.metric_warnings == ("w",)
    client_view = xpipe.TaskInfo.from_proto(info)
    assert client_view.metrics == {"rows": 3.0} and client_view.metric_warnings == ("w",)
    assert TaskRunInfo.from_proto(pipeline_pb2.TaskInfo(name="u")).performance is None


def test_the_coordinator_refuses_a_spec_with_bad_tracking_from_any_client():
    spec = pb.PipelineSpec(name="p")
    task = spec.tasks.add(name="t", python=pb.PythonCall(import_path="m:f"))
    task.track.add(name="bad name", kind=pb.METRIC_KIND_TRACKED)
    with pytest.raises(PipelineValidationError, match=r"task 't': track\[0\]: metric name 'bad name' is not a valid"):
        validate_spec(spec)
    task.track[0].name, task.track[0].kind = "good", pb.METRIC_KIND_CUSTOM
    with pytest.raises(PipelineValidationError, match=r"track\[0\]\.kind 1 is not METRIC_KIND_TRACKED"):
        validate_spec(spec)
    task.track[0].kind = pb.METRIC_KIND_BUSINESS
    spec.monitoring_json = "x" * (64 * 1024 + 1)
    with pytest.raises(PipelineValidationError, match="monitoring_json has 65537 chars; the limit is 65536"):
        validate_spec(spec)
    spec.monitoring_json = "{}"
    assert validate_spec(spec) == ["t"]
