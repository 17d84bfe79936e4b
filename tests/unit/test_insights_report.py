"""The performance report and the duration forecast on histories built by hand."""

from __future__ import annotations

import json

import pytest
from xpipe import Pipeline, Task
from xpipe.insights._forecast import forecast_duration
from xpipe.insights._history import History, RunRecord, TaskRecord
from xpipe.insights._report import critical_path, percentile, performance_report, trend

T0 = 1_700_000_000.0


def run(i: int, *, slow_s: float = 2.0, extract_s: float = 1.0, pipeline: str = "etl", flaky_fails: bool = False,
        wait_s: float = 0.5, gap_s: float = 0.25) -> RunRecord:  # fmt: skip
    """extract -> transform (slow) -> load, plus a side task ``audit`` after extract.

    Each task waits ``wait_s`` in the queue; the run ends ``gap_s`` after its last task.
    """
    created = T0 + i * 100
    t = created
    tasks = []
    for name, duration_s, deps in (("extract", extract_s, ()), ("transform", slow_s, ("extract",)),
                                   ("load", 0.5, ("transform",))):  # fmt: skip
        ready = t
        start = ready + wait_s
        t = start + duration_s
        tasks.append(TaskRecord(name, "SUCCEEDED", ready_at=ready, started_at=start, finished_at=t,
                                duration_s=duration_s, queue_wait_s=wait_s, depends_on=deps))  # fmt: skip
    audit_start = tasks[0].finished_at + wait_s
    tasks.append(
        TaskRecord("audit", "FAILED" if flaky_fails else "SUCCEEDED", attempts=2 if flaky_fails else 1,
                   retries=1 if flaky_fails else 0, ready_at=tasks[0].finished_at, started_at=audit_start,
                   finished_at=audit_start + 0.1, duration_s=0.1, queue_wait_s=wait_s, depends_on=("extract",),
                   cpu_s=0.05, peak_rss_bytes=50 * 2**20, error_type="TASK_FAILURE" if flaky_fails else "")
    )  # fmt: skip
    state = "RUN_FAILED" if flaky_fails else "RUN_SUCCEEDED"
    return RunRecord(f"r{i}", pipeline, state, created, t + gap_s, "default", tuple(tasks))


def history(*runs: RunRecord) -> History:
    return History(tuple(sorted(runs, key=lambda r: -r.created_at)))  # newest first, as GetHistory


def test_percentile_interpolates_and_is_zero_for_nothing():
    assert percentile([], 50) == 0.0
    assert percentile([4.0], 95) == 4.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 95) == pytest.approx(9.5)


def test_critical_path_follows_the_longest_chain():
    total, path = critical_path({"a": 1, "b": 5, "c": 2, "d": 1}, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert (total, path) == (7, ["a", "b", "d"])
    assert critical_path({}, {}) == (0.0, [])


def test_report_per_task_figures():
    h = history(*(run(i) for i in range(9)), run(9, slow_s=20.0, flaky_fails=True))
    report = performance_report(h)
    by = {t.name: t for t in report.tasks}
    transform = by["transform"]
    assert transform.runs == 10
    assert transform.p50_s == pytest.approx(2.0)
    assert transform.max_s == pytest.approx(20.0)
    assert 2.0 < transform.p95_s < 20.0
    assert transform.critical_share == 1.0  # on every run's critical path
    assert transform.critical_time_share == pytest.approx((9 * 2 / 3.5 + 20 / 21.5) / 10)
    assert by["audit"].critical_share == 0.0 and by["audit"].critical_time_share == 0.0
    # audit: 10 runs, one of which failed twice (a retry, then for good): 2 failed of 11 attempts.
    assert by["audit"].retries == 1
    assert by["audit"].failure_rate == pytest.approx(2 / 11)
    assert by["audit"].cpu_s == pytest.approx(0.05) and by["audit"].peak_rss_bytes == 50 * 2**20
    assert transform.cpu_s is None and transform.peak_rss_bytes is None  # never measured
    assert transform.queue_wait_p50_s == pytest.approx(0.5) and transform.queue_wait_p95_s == pytest.approx(0.5)
    assert report.tasks[0].name == "transform"  # slowest first


def test_report_per_pipeline_durations_and_trend():
    steady = performance_report(history(*(run(i) for i in range(10))))
    (p,) = steady.pipelines
    assert (p.pipeline, p.runs, p.succeeded, p.failed) == ("etl", 10, 10, 0)
    assert p.p50_s == pytest.approx(5.25)  # 3 waits of 0.5 + 1 + 2 + 0.5 + 0.25
    assert p.trend == "steady" and p.trend_pct_per_run == pytest.approx(0.0)
    slower = performance_report(history(*(run(i, slow_s=2.0 + i) for i in range(10)))).pipelines[0]
    assert slower.trend == "slower" and slower.trend_pct_per_run > 2
    faster = performance_report(history(*(run(i, slow_s=12.0 - i) for i in range(10)))).pipelines[0]
    assert faster.trend == "faster" and faster.trend_pct_per_run < -2
    assert trend([1.0, 2.0]) == (0.0, "unknown")  # too few runs to tell


def test_report_filters_one_pipeline_and_renders_table_json_html(tmp_path):
    h = history(*(run(i) for i in range(5)), *(run(i, pipeline="other", slow_s=9) for i in range(5, 8)))
    both = performance_report(h)
    assert [p.pipeline for p in both.pipelines] == ["etl", "other"]
    report = performance_report(h, pipeline="other")
    assert [p.pipeline for p in report.pipelines] == ["other"]
    text = str(report)
    assert "Performance report for other" in text and "transform" in text and "p95 s" in text
    data = json.loads(report.to_json())
    assert data["pipelines"][0]["runs"] == 3 and {t["name"] for t in data["tasks"]} == {
        "extract", "transform", "load", "audit"}  # fmt: skip
    assert report.to_dict() == data
    out = report.to_html(tmp_path / "report.html")
    page = out.read_text()
    assert page.count("<svg") == 2 and "<polyline" in page and "<rect" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_report_escapes_names_in_html(tmp_path):
    bad = RunRecord("r1", "<b>x</b>", "RUN_SUCCEEDED", T0, T0 + 1,
                    tasks=(TaskRecord("<script>", "SUCCEEDED", started_at=T0, finished_at=T0 + 1, duration_s=1.0),))  # fmt: skip
    page = performance_report(History((bad,))).to_html(tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_empty_history_says_no_runs_yet(tmp_path):
    report = performance_report(History())
    assert report.empty and str(report) == "Performance report: no runs yet"
    assert json.loads(report.to_json())["pipelines"] == []
    assert "No runs yet." in report.to_html(tmp_path / "e.html").read_text()


def test_report_carries_the_coordinators_note():
    note = "only the newest 1 of 2 runs (max_runs)"
    assert performance_report(History((run(0),), note=note)).note == note
    assert f"note: {note}" in str(performance_report(History((run(0),), note=note)))


def test_forecast_from_history_brackets_the_runs():
    h = history(*(run(i, slow_s=2.0 + 0.1 * (i % 3)) for i in range(10)))
    f = forecast_duration("etl", h)
    durations = sorted(r.duration_s for r in h.runs)
    assert f.has_basis and f.low_s <= f.expected_s <= f.high_s
    assert durations[0] - 0.01 <= f.expected_s <= durations[-1] + 0.01
    # critical path p50 (1 + 2.1 + 0.5) plus the median wait (3 waits + the gap: 1.75 s)
    assert f.expected_s == pytest.approx(3.6 + 1.75)
    assert f.low_s <= durations[1] and f.high_s >= durations[-2]
    assert "10 earlier runs" in f.basis


def test_forecast_of_a_pipeline_object_uses_its_plan():
    p = Pipeline("etl")
    a = Task("extract", print)
    b = Task("transform", print, depends_on=[a])
    c = Task("brand_new", print, depends_on=[b])
    p.add_tasks([a, b, c])
    f = forecast_duration(p, history(*(run(i) for i in range(5))))
    assert f.has_basis and f.expected_s == pytest.approx(1.0 + 2.0 + 1.75)
    assert "2 of 3 tasks seen" in f.basis and "no history for brand_new" in f.basis


def test_forecast_without_history_says_it_has_no_basis():
    f = forecast_duration("never_ran", History())
    assert not f.has_basis and (f.expected_s, f.low_s, f.high_s) == (0.0, 0.0, 0.0)
    assert "never_ran" in f.basis and str(f).startswith("no forecast:")
    p = Pipeline("fresh")
    p.add_task(Task("x", print))
    g = forecast_duration(p, history(run(0)))
    assert not g.has_basis and "no task of pipeline 'fresh'" in g.basis


def test_the_tty_view_draws_a_snapshot_as_a_table():
    from rich.console import Console
    from xpipe.insights._realtime import _LiveTable

    console = Console(record=True, force_terminal=True, width=100)
    table = _LiveTable(console)
    table.update({"pipeline": "etl", "run_id": "r42", "state": "RUNNING", "elapsed_s": 3.25, "error": "",
                  "counts": {"RUNNING": 1, "SUCCEEDED": 1},
                  "tasks": [{"name": "extract", "state": "SUCCEEDED", "attempts": 1, "worker": "w0", "duration_s": 1.0},
                            {"name": "load", "state": "RUNNING", "attempts": 2, "worker": "w1", "duration_s": 2.25}]})  # fmt: skip
    table.close()
    text = console.export_text()
    assert "etl  run r42  RUNNING  3.2s" in text and "running 1, succeeded 1" in text
    assert "load" in text and "2.2" in text and "w1" in text
