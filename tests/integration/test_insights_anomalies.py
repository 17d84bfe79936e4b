"""Anomalies, failure odds and the optimizer on a real cluster's history (GetHistory).

A pipeline of three independent sleeps runs six times, then once with one of them made 10x
slower by its argument: the dashboard finds that task in that run, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster
from xpipe import Pipeline, PipelineManager, Task

NORMAL_S = {"a": 0.2, "b": 0.3, "c": 0.2}
SLOW_B_S = 3.0
NORMAL_RUNS = 6


def _pipeline(b_s: float) -> Pipeline:
    p = Pipeline("anomaly-demo")
    for name, seconds in NORMAL_S.items():
        p.add_task(Task(name, ht.sleep, args=(b_s if name == "b" else seconds,)))
    return p


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PipelineManager, str]]:
    """A cluster whose history holds six normal runs and then the slow one (its run id)."""
    with Cluster(Path(tmp_path_factory.mktemp("anomalies"))) as cluster:
        pm = PipelineManager(coordinator=cluster.address)
        try:
            for _ in range(NORMAL_RUNS):
                pm.execute_pipeline(_pipeline(NORMAL_S["b"]), monitor=False)
            slow = pm.execute_pipeline(_pipeline(SLOW_B_S), monitor=False)
            yield pm, slow.run_id
        finally:
            pm.close()


@pytest.mark.parametrize("model", ["median_mad", "isolation_forest"])
def test_the_dashboard_finds_the_slow_task_and_nothing_else(ran, model):
    pm, slow_run = ran
    found = pm.get_monitoring_dashboard().detect_anomalies(ml_model=model, pipeline="anomaly-demo")
    assert found, "the 10x slower task b was not found"
    assert {(a.run_id, a.task) for a in found} == {(slow_run, "b")}, [str(a) for a in found]
    duration = next(a for a in found if a.metric == "duration")
    assert duration.value >= SLOW_B_S and duration.expected < SLOW_B_S / 5
    assert "x its median" in duration.reason


def test_failure_odds_and_the_optimizer_read_the_same_history(ran):
    pm, _ = ran
    odds = pm.get_monitoring_dashboard().predict_failures("anomaly-demo")
    assert set(odds) == {"a", "b", "c"} and all(0 < p < 0.15 for p in odds.values())
    p = _pipeline(NORMAL_S["b"])
    report = pm.optimize_pipeline_performance(p)
    assert report.runs_used == NORMAL_RUNS + 1
    # b is the longest (its median), so it heads the critical path and goes first.
    assert p.tasks["b"].priority == max(t.priority for t in p) and "heads the critical path" in str(report)
