"""The seed's monitoring sample, as written, on the embedded default (issue 15's "done means").

The sample's text is the seed's, verbatim (``tests/helpers_seed.py``; a test checks it against
the seed when the seed is next to the repository). Its user functions are filled in, and its
tasks, which take ``data`` but have no upstream, are given the data as their argument
between the sample's two halves. The pipeline runs a few times first, so the insights have
history to work from; then the sample's own lines ask for the dashboard, a real-time view,
a run, the report, anomalies and suggestions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers_seed import SEED_MONITORING, SEED_MONITORING_INSIGHTS
from xpipe import Pipeline, PipelineManager

pytestmark = pytest.mark.integration

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_6b5727be2d08e351.txt"
DATA = [{"amount": 10}, {"amount": None}, {"amount": 30}, {"amount": 60}]


def calculate_data_quality(data):
    return sum(1 for row in data if row["amount"] is not None) / len(data)


def complex_algorithm(data):
    time.sleep(0.05)
    return sorted(row["amount"] or 0 for row in data)


def calculate_revenue_impact(data):
    return float(sum(row["amount"] or 0 for row in data))


@pytest.mark.skipif(not SEED.exists(), reason="the seed design is not next to the repository")
def test_the_sample_here_is_the_seeds_own_text():
    seed = SEED.read_text()
    assert SEED_MONITORING.strip() in seed
    assert SEED_MONITORING_INSIGHTS.strip() in seed


def test_the_seed_monitoring_sample_prints_a_report_anomalies_and_suggestions(capsys):
    build, insights = SEED_MONITORING, SEED_MONITORING_INSIGHTS
    pm = PipelineManager()  # the embedded default: it sends alerts to loopback receivers only
    try:
        namespace = {
            "__name__": "seed_monitoring", "pm": pm, "Pipeline": Pipeline,
            "calculate_data_quality": calculate_data_quality, "complex_algorithm": complex_algorithm,
            "calculate_revenue_impact": calculate_revenue_impact,
        }  # fmt: skip
        exec(compile(build, "seed_monitoring", "exec"), namespace)  # noqa: S102 - the seed's own text
        pipeline = namespace["monitored_pipeline"]
        for task in pipeline:
            task.args = (DATA,)
        for _ in range(5):  # history for the insights
            assert pm.execute_pipeline(pipeline).succeeded
        exec(compile(insights, "seed_monitoring", "exec"), namespace)  # noqa: S102
        view = namespace["real_time_metrics"]
        try:
            assert namespace["result"].succeeded
            report = namespace["performance_report"]
            print(report)
            print(namespace["anomalies"])
            print(namespace["optimization_suggestions"])
            stats = report.to_dict()
            durations = {t["name"]: t for t in stats["tasks"]}
            assert set(durations) == {"data_quality_task", "expensive_computation", "revenue_calculation"}
            assert durations["expensive_computation"]["p50_s"] >= 0.05  # a real number, from 6 runs
            assert durations["expensive_computation"]["runs"] == 6
            assert isinstance(namespace["anomalies"], list) and isinstance(namespace["optimization_suggestions"], list)
            assert view.snapshot()["run_id"]  # the view follows the pipeline's runs
            assert namespace["monitoring_dashboard"].url.startswith("http://127.0.0.1:")
        finally:
            view.stop()
        out = capsys.readouterr().out
        assert "expensive_computation" in out
    finally:
        pm.close()
