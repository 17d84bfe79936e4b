"""detect_anomalies on hand-built histories: both models find a 10x slower task, ignore jitter."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xpipe.insights import History, RunRecord, TaskRecord
from xpipe.insights._anomalies import Anomaly, _Baseline, detect_anomalies, window_s
from xpipe.insights._robust import median_mad
from xpipe.telemetry._monitoring import parse_monitoring_config

NOW = 1_800_000_000.0
HOUR_S = 3600.0


def _task(
    name: str, duration_s: float, *, cpu_s: float = 0.0, rss: int = 0, wait_s: float = 0.05, t0: float
) -> TaskRecord:
    return TaskRecord(
        name, "SUCCEEDED", ready_at=t0, started_at=t0 + wait_s, finished_at=t0 + wait_s + duration_s,
        duration_s=duration_s, queue_wait_s=wait_s, cpu_s=cpu_s, peak_rss_bytes=rss,
    )  # fmt: skip


def _history(
    n_runs: int, *, slow_last: float = 1.0, jitter: float = 0.2, seed: int = 7, spacing_s: float = HOUR_S
) -> History:
    """``n_runs`` runs of extract (2 s) -> load (1 s), one per ``spacing_s``, newest last
    made ``slow_last`` times slower in extract; each figure jittered by +-``jitter``."""
    rng = random.Random(seed)
    runs = []
    for i in range(n_runs):
        created = NOW - (n_runs - i) * spacing_s
        factor = slow_last if i == n_runs - 1 else 1.0
        wobble = lambda: 1 + rng.uniform(-jitter, jitter)
        extract = _task(
            "extract", 2.0 * wobble() * factor, cpu_s=1.8 * wobble() * factor, rss=200 * 2**20, t0=created
        )
        load = _task("load", 1.0 * wobble(), cpu_s=0.5 * wobble(), rss=100 * 2**20, t0=created + 3)
        runs.append(RunRecord(f"r{i}", "etl", "SUCCEEDED", created, created + 4, tasks=(extract, load)))
    return History(tuple(reversed(runs)))


@pytest.mark.parametrize("model", ["median_mad", "isolation_forest"])
def test_a_task_ten_times_slower_is_found_and_named(model):
    found = detect_anomalies(_history(20, slow_last=10.0), ml_model=model, now=NOW)
    assert found, "the 10x slower extract was not found"
    assert {(a.run_id, a.task) for a in found} == {("r19", "extract")}
    top = found[0]
    assert top.metric in ("duration", "cpu")
    assert top.value > 9 * top.expected
    assert "x its median" in top.reason
    assert str(top).startswith("r19 extract: ") and "\n" not in str(top)


@pytest.mark.parametrize("model", ["median_mad", "isolation_forest"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_normal_jitter_is_not_an_anomaly(model, seed):
    assert detect_anomalies(_history(30, seed=seed), ml_model=model, time_window="last_7d", now=NOW) == []


def _short_noisy_history(seed: int) -> History:
    """Seven runs of one 0.3 s task, the last 10x slower; queue wait, CPU and memory wobble
    by amounts that are not material (as on a loaded CI machine)."""
    rng = random.Random(seed)
    runs = []
    for i in range(7):
        created = NOW - (7 - i) * 60
        wait_s = rng.uniform(0.001, 0.3)
        duration_s = 3.0 if i == 6 else 0.3 + rng.uniform(0, 0.02)
        task = TaskRecord(
            "b", "SUCCEEDED", ready_at=created, started_at=created + wait_s, finished_at=created + wait_s + duration_s,
            duration_s=duration_s, queue_wait_s=wait_s, cpu_s=rng.uniform(0.001, 0.05),
            peak_rss_bytes=int((40 + rng.uniform(0, 30)) * 2**20),
        )  # fmt: skip
        runs.append(RunRecord(f"r{i}", "p", "SUCCEEDED", created, created + 4, tasks=(task,)))
    return History(tuple(reversed(runs)))


# Seeds on which the forest over raw figures (9 of 120 seeds) isolated a normal run first and missed r6.
@pytest.mark.parametrize("seed", [16, 22, 36, 37, 64])
def test_the_forest_finds_the_slow_run_in_a_short_history_with_immaterial_noise(seed):
    found = detect_anomalies(_short_noisy_history(seed), ml_model="isolation_forest", now=NOW)
    assert {(a.run_id, a.task, a.metric) for a in found} == {("r6", "b", "duration")}, [str(a) for a in found]


def test_the_median_mad_reason_reads_in_words():
    found = detect_anomalies(_history(12, slow_last=10.0, jitter=0.0), now=NOW)
    duration = next(a for a in found if a.metric == "duration")
    assert duration.reason == "duration 20.0 s is 10.0x its median 2 s"
    assert duration.score >= 4


def test_only_runs_in_the_window_are_judged_against_all_history_before_them():
    history = _history(20, slow_last=10.0)
    # The slow run was created 1 h before NOW: a 30 min window leaves it out.
    assert detect_anomalies(history, time_window="last_30m", now=NOW) == []
    assert detect_anomalies(history, time_window=timedelta(hours=2), now=NOW)
    assert detect_anomalies(history, time_window=2 * HOUR_S, now=NOW)


def test_too_little_history_judges_nothing():
    # 5 runs: the slow one has only 4 earlier samples (MIN_HISTORY is 5).
    assert detect_anomalies(_history(5, slow_last=10.0), now=NOW) == []
    assert detect_anomalies(_history(6, slow_last=10.0), now=NOW)


def test_sensitivity_moves_the_threshold():
    # 1.55x slower on a steady history: |z| is 5.5 against a spread floored at 10% of the median,
    # above medium's 4 and high's 3, below low's 6.
    history = _history(20, slow_last=1.55, jitter=0.0)
    for sensitivity, expected in (("high", {"extract"}), ("medium", {"extract"}), ("low", set())):
        found = detect_anomalies(history, sensitivity=sensitivity, now=NOW)
        assert {a.task for a in found} == expected, sensitivity


def test_a_small_absolute_change_is_not_material():
    """A 50 ms task taking 200 ms is 4x, but under the 0.5 s floor: not an anomaly."""
    runs = []
    for i in range(10):
        created = NOW - (10 - i) * 60
        runs.append(RunRecord(f"r{i}", "p", "SUCCEEDED", created, created + 1, tasks=(
            _task("tiny", 0.2 if i == 9 else 0.05, t0=created),)))  # fmt: skip
    assert detect_anomalies(History(tuple(runs)), sensitivity="high", now=NOW) == []


def test_memory_and_queue_wait_are_judged_when_measured():
    runs = []
    for i in range(10):
        created = NOW - (10 - i) * 60
        last = i == 9
        runs.append(RunRecord(f"r{i}", "p", "SUCCEEDED", created, created + 10, tasks=(
            _task("t", 1.0, rss=(2048 if last else 100) * 2**20, wait_s=30.0 if last else 0.1, t0=created),)))  # fmt: skip
    metrics = {a.metric for a in detect_anomalies(History(tuple(runs)), now=NOW)}
    assert metrics == {"memory", "queue_wait"}
    unmeasured = History(tuple(RunRecord(r.run_id, r.pipeline, r.state, r.created_at, r.finished_at, tasks=tuple(
        TaskRecord(t.name, t.state, finished_at=t.finished_at, duration_s=t.duration_s) for t in r.tasks))
        for r in runs))  # fmt: skip
    assert detect_anomalies(unmeasured, now=NOW) == []


def test_defaults_come_from_the_pipelines_anomaly_detection_config():
    history = _history(20, slow_last=10.0)
    config = parse_monitoring_config(
        {"anomaly_detection": {"sensitivity": "low", "ml_model": "isolation_forest"}}
    )
    found = detect_anomalies(history, monitoring=config, now=NOW)
    assert found and found[0].score < 1  # the forest's score is in 0..1; a z-score here would be >> 1
    unknown = parse_monitoring_config({"anomaly_detection": {"ml_model": "prophet"}})
    with pytest.raises(ValueError, match="ml_model 'prophet'.*known: median_mad, isolation_forest"):
        detect_anomalies(history, monitoring=unknown, now=NOW)


@pytest.mark.parametrize("bad", ["yesterday", "last_", "last_-5h", 0, -3, "last_24 parsecs", None])
def test_a_bad_time_window_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="time_window"):
        detect_anomalies(_history(3), time_window=bad, now=NOW)


def test_window_names_read_as_durations():
    assert window_s("last_24h") == 86400 and window_s("last_7d") == 7 * 86400 and window_s("last_30m") == 1800


def test_a_bad_sensitivity_or_model_is_refused_by_name():
    with pytest.raises(ValueError, match="sensitivity 'extreme' is not one of low, medium, high"):
        detect_anomalies(_history(3), sensitivity="extreme", now=NOW)
    with pytest.raises(ValueError, match="ml_model 'lstm'"):
        detect_anomalies(_history(3), ml_model="lstm", now=NOW)


def test_isolation_forest_without_scikit_learn_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(ImportError, match=r"xpipe-cluster\[insights\]"):
        detect_anomalies(_history(10), ml_model="isolation_forest", now=NOW)


def test_anomaly_is_frozen():
    a = Anomaly("r", "t", "duration", 2.0, 1.0, 5.0, "duration 2 s is 2.0x its median 1 s")
    with pytest.raises(AttributeError):
        a.score = 1.0  # type: ignore[misc]


@given(
    st.lists(st.floats(min_value=0, max_value=1e6) | st.integers(0, 5).map(float), min_size=1, max_size=60)
)
def test_the_sorted_baseline_agrees_with_median_mad(values):
    """The incremental median/MAD used per task equals the plain one on any values (ties too)."""
    baseline = _Baseline()
    for v in values:
        baseline.add(v)
    median, mad = median_mad(values)
    assert baseline.median() == pytest.approx(median) and baseline.mad(median) == pytest.approx(mad)
