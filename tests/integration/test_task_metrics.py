"""What tasks record about themselves, end to end on real coordinator and worker processes.

The seed's "Advanced Monitoring and Observability" sample runs as written (its undefined
helpers are defined here), then its metrics, performance and warnings are read from the
result, and again through ``pm.get_metrics`` after the coordinator restarted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import Cluster
from tests.helpers_seed import SEED_MONITORING
from xpipe import Pipeline, PipelineManager, PipelineValidationError, RunNotFoundError, record_metric

#: The seed's sample, from ``monitoring_config = {`` to its last tracked task (seed lines
#: 193-242, ``xlibrary.pipeline`` read as ``xpipe``), unchanged.


#: How long complex_algorithm sleeps and how much CPU it burns, so performance can be checked.
SLEEP_S = 0.3
BUSY_CPU_S = 0.2


def calculate_data_quality(data):
    return sum(1 for row in data if row["amount"] is not None) / len(data)


def complex_algorithm(data):
    started = time.process_time()
    while time.process_time() - started < BUSY_CPU_S:  # real CPU work, for cpu_s
        pass
    time.sleep(SLEEP_S)
    return sorted(row["amount"] or 0 for row in data)


def calculate_revenue_impact(data):
    return float(sum(row["amount"] or 0 for row in data))


DATA = [{"amount": 10}, {"amount": None}, {"amount": 30}, {"amount": 60}]


def seed_pipeline() -> Pipeline:
    """The seed's sample, with its helpers; its tasks take ``data``, which the seed never
    passes (they have no upstream), so it is given as each task's argument."""
    namespace = {
        "__name__": "seed_monitoring",  # not importable: the workers get the functions pickled
        "Pipeline": Pipeline,
        "calculate_data_quality": calculate_data_quality,
        "complex_algorithm": complex_algorithm,
        "calculate_revenue_impact": calculate_revenue_impact,
    }
    exec(compile(SEED_MONITORING, "seed_monitoring", "exec"), namespace)  # noqa: S102 - the seed's own text
    pipeline = namespace["monitored_pipeline"]
    for task in pipeline:
        task.args = (DATA,)
    return pipeline


def per_table_counts() -> int:
    record_metric("rows_loaded", 10, table="users")
    record_metric("rows_loaded", 5, table="orders")
    record_metric("rows_loaded", 1)
    record_metric("rows_loaded", 15)  # the last value of a name (and labels) wins
    return 30


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def test_the_seed_monitored_pipeline_records_and_keeps_its_metrics(cluster, pm):
    monitored_pipeline = seed_pipeline()
    # The sample's next line (tests/integration/test_seed_monitoring.py runs the whole sample).
    assert pm.get_monitoring_dashboard() is not None
    monitored_pipeline.task(per_table_counts)

    @monitored_pipeline.track_metric("error_rate")
    def nothing_fits():
        return {"rows": 3, "status": "ok"}

    result = pm.execute_pipeline(monitored_pipeline)
    assert result.succeeded, result
    tasks = result.tasks
    assert tasks["data_quality_task"].metrics == {"data_quality_score": 0.75}
    assert tasks["revenue_calculation"].metrics == {"revenue_impact": 100.0}
    assert tasks["per_table_counts"].metrics == {
        "rows_loaded": 15.0, 'rows_loaded{table="users"}': 10.0, 'rows_loaded{table="orders"}': 5.0,
    }  # fmt: skip
    # A tracked value that is not there: the task succeeds, the warning names the metric and the keys.
    assert result.outputs["nothing_fits"] == {"rows": 3, "status": "ok"}
    assert tasks["nothing_fits"].metrics == {}
    (warning,) = tasks["nothing_fits"].metric_warnings
    assert "tracked metric 'error_rate'" in warning and "keys seen: 'rows', 'status'" in warning
    # system_metrics=True measures every task; expensive_computation slept and burnt CPU.
    perf = tasks["expensive_computation"].performance
    assert perf is not None, tasks["expensive_computation"]
    assert perf.wall_s >= SLEEP_S + BUSY_CPU_S * 0.9, perf
    assert perf.cpu_s >= BUSY_CPU_S * 0.9 and perf.cpu_s < perf.wall_s, perf
    assert perf.peak_rss_bytes > 10 * 2**20, perf
    assert all(t.performance is not None for t in tasks.values())
    assert result.outputs["expensive_computation"] == [0, 10, 30, 60]

    # Kept in the store: a restarted coordinator serves the same figures for the past run.
    cluster.restart_coordinator()
    past = pm.get_metrics(result.run_id)
    assert set(past) == set(tasks)
    for name, task in tasks.items():
        assert past[name].metrics == task.metrics, name
        assert past[name].performance == task.performance, name
        assert past[name].warnings == task.metric_warnings, name


def bad_metric_name() -> None:
    record_metric("rows-loaded", 1)


def bool_metric_value() -> None:
    record_metric("rows_loaded", True)


def label_not_a_string() -> None:
    record_metric("rows_loaded", 1, table=7)


def records_while_switched_off() -> int:
    record_metric("rows_loaded", 1)
    return 1


def test_bad_metrics_fail_the_task_with_a_clear_error_and_switched_off_ones_are_not_kept(pm):
    p = Pipeline("bad_metrics")
    for func in (bad_metric_name, bool_metric_value, label_not_a_string):
        p.task(func)
    result = pm.execute_pipeline(p, raise_on_failure=False)
    assert result.status == "failed"
    errors = {name: (t.status, t.exception_type, t.error) for name, t in result.tasks.items()}
    assert errors["bad_metric_name"][:2] == ("failed", "ValueError")
    assert "metric name 'rows-loaded' is not a valid Prometheus metric name" in errors["bad_metric_name"][2]
    assert errors["bool_metric_value"][:2] == ("failed", "TypeError")
    assert "value of metric 'rows_loaded' must be a real number (int or float, not bool)" in errors["bool_metric_value"][2]
    assert errors["label_not_a_string"][:2] == ("failed", "TypeError")
    assert "label 'table' of metric 'rows_loaded' must be a str, got int" in errors["label_not_a_string"][2]

    quiet = Pipeline("quiet")
    quiet.task(records_while_switched_off)
    quiet.enable_monitoring({"metrics_collection": {"custom_metrics": False}})
    done = pm.execute_pipeline(quiet)
    assert done.outputs["records_while_switched_off"] == 1
    assert done.tasks["records_while_switched_off"].metrics == {}
    assert pm.get_metrics(done.run_id)["records_while_switched_off"].metrics == {}
    with pytest.raises(RunNotFoundError):
        pm.get_metrics("no-such-run")


def burn_and_record() -> str:
    started = time.thread_time()
    while time.thread_time() - started < BUSY_CPU_S:
        pass
    record_metric("thread_rows", 3, executor="thread")
    return "done"


def test_record_metric_and_performance_work_in_the_thread_executor(tmp_path: Path):
    with Cluster(tmp_path, workers=1, worker_args=["--executor", "thread"]) as cluster:
        with PipelineManager(coordinator=cluster.address) as pm:
            p = Pipeline("threaded")
            p.track_performance(burn_and_record)
            result = pm.execute_pipeline(p)
    task = result.tasks["burn_and_record"]
    assert task.metrics == {'thread_rows{executor="thread"}': 3.0}
    assert task.performance is not None and task.performance.cpu_s >= BUSY_CPU_S * 0.9, task.performance


def test_enable_monitoring_refuses_an_unknown_key_before_anything_runs():
    p = Pipeline("typo")
    with pytest.raises(PipelineValidationError) as caught:
        p.enable_monitoring({"metrics_collection": {"colection_interval": "10s"}})
    assert str(caught.value) == (
        "monitoring_config['metrics_collection']['colection_interval']: unknown key; known: "
        "business_metrics, collection_interval, custom_metrics, system_metrics"
    )
    assert p.monitoring is None, "a refused config changes nothing"
