"""optimization_suggestions and failure_probabilities on hand-built histories: each rule fires and holds its peace."""

from __future__ import annotations

import pytest

from xpipe._types import WorkerInfo
from xpipe.insights import History, RunRecord, TaskRecord
from xpipe.insights._failures import failure_probabilities
from xpipe.insights._suggestions import MIN_RUNS, Suggestion, optimization_suggestions

T0 = 1_800_000_000.0
MIB = 2**20


def _run(
    i: int, *tasks: TaskRecord, pipeline: str = "etl", state: str = "SUCCEEDED", spacing_s: float = 100.0
) -> RunRecord:
    created = T0 + i * spacing_s
    end = max((t.finished_at for t in tasks), default=created)
    shifted = tuple(
        TaskRecord(**{**{f: getattr(t, f) for f in TaskRecord.__slots__},
                      "ready_at": t.ready_at + created if t.ready_at else 0.0,
                      "started_at": t.started_at + created if t.started_at else 0.0,
                      "finished_at": t.finished_at + created if t.finished_at else 0.0})
        for t in tasks
    )  # fmt: skip
    return RunRecord(f"r{i}", pipeline, state, created, created + end, tasks=shifted)


def _t(name: str, start_s: float, duration_s: float, *, wait_s: float = 0.0, **fields) -> TaskRecord:
    """A task of a run, its times in seconds after the run's first second (0 means unknown)."""
    start_s += 1.0
    return TaskRecord(
        name, fields.pop("state", "SUCCEEDED"), ready_at=start_s - wait_s, started_at=start_s,
        finished_at=start_s + duration_s, duration_s=duration_s, queue_wait_s=wait_s, **fields,
    )  # fmt: skip


def _worker(name: str, slots: int = 2, state: str = "ready") -> WorkerInfo:
    return WorkerInfo(name + "-id", name, "127.0.0.1", state, slots, 0, {}, {}, (), None, {}, "none")


def _kinds(found: list[Suggestion]) -> set[tuple[str, str]]:
    return {(s.kind, s.target) for s in found}


def _balanced(n: int = 8, **load_fields) -> History:
    """extract and load in parallel, neither dominating: no rule fires."""
    return History(tuple(
        _run(i, _t("extract", 0, 4.0, worker="w1", **load_fields), _t("load", 0, 4.0, worker="w1"),
             _t("report", 4.0, 4.0, worker="w1"))
        for i in range(n)))  # fmt: skip


def test_a_balanced_history_yields_nothing():
    assert optimization_suggestions(_balanced(), workers=[_worker("w1")]) == []


def test_a_task_dominating_the_critical_path_is_named_with_its_time_as_gain():
    history = History(tuple(_run(i, _t("extract", 0, 1.0), _t("train", 1.0, 9.0 + i % 2)) for i in range(6)))
    found = optimization_suggestions(history)
    assert _kinds(found) == {("critical_path", "etl/train")}
    assert found[0].estimated_gain == pytest.approx(9.5)
    assert "of the run in 6 of 6 runs" in found[0].message
    assert str(found[0]) == (
        "[critical_path] etl/train: takes 83% of the run in 6 of 6 runs (median 9.50 s): "
        "split it into parallel tasks or make it faster (up to 9.5 s per run)"
    )


def test_dominating_only_in_a_minority_of_runs_is_not_reported():
    runs = [_run(i, _t("extract", 0, 1.0), _t("train", 1.0, 9.0 if i < 2 else 1.0)) for i in range(6)]
    assert optimization_suggestions(History(tuple(runs))) == []


def test_too_little_history_gives_no_suggestion():
    history = History(
        tuple(_run(i, _t("extract", 0, 1.0), _t("train", 1.0, 9.0)) for i in range(MIN_RUNS - 1))
    )
    assert optimization_suggestions(history, workers=[_worker("idle")]) == []


def test_a_task_that_retries_often_is_named():
    runs = [
        _run(i, _t("fetch", 0, 2.0, attempts=2 if i % 3 == 0 else 1, retries=1 if i % 3 == 0 else 0,
                   error_type="NETWORK" if i % 3 == 0 else ""), _t("a", 0, 2.0), _t("b", 2.0, 2.0))
        for i in range(9)
    ]  # fmt: skip
    found = optimization_suggestions(History(tuple(runs)))
    assert _kinds(found) == {("retries", "etl/fetch")}
    assert "retried in 3 of 9 runs" in found[0].message and "NETWORK" in found[0].message
    assert found[0].estimated_gain == pytest.approx(2.0 / 3)


def test_retrying_in_a_fifth_of_runs_or_less_is_not_often():
    runs = [
        _run(i, _t("fetch", 0, 2.0, retries=1 if i == 0 else 0), _t("a", 0, 2.0), _t("b", 2.0, 2.0))
        for i in range(5)
    ]
    assert optimization_suggestions(History(tuple(runs))) == []


def test_cpu_requested_far_above_use_is_named_and_near_use_is_not():
    over = _balanced(cpu_s=4.0 * 0.5, requested_cpu=4.0)  # used 0.5 of 4 cores
    found = optimization_suggestions(over)
    assert _kinds(found) == {("overrequested_cpu", "etl/extract")}
    assert found[0].message == (
        "asks for 4 cores but used at most 0.50 in 8 runs: ask for 0.75 "
        "(pm.optimize_pipeline_performance does) to free 3.25 cores"
    )
    assert found[0].estimated_gain == 0
    assert optimization_suggestions(_balanced(cpu_s=4.0 * 0.9, requested_cpu=1.5)) == []  # 0.9 of 1.5


def test_the_default_one_core_is_not_an_overrequest():
    assert optimization_suggestions(_balanced(cpu_s=0.1, requested_cpu=1.0)) == []  # a sleeper on the default


def test_memory_requested_far_above_peak_rss_is_named_and_unmeasured_is_not():
    over = _balanced(peak_rss_bytes=100 * MIB, requested_memory_bytes=1024 * MIB)
    found = optimization_suggestions(over)
    assert _kinds(found) == {("overrequested_memory", "etl/extract")}
    assert "1024 MiB but its peak RSS was at most 100 MiB in 8 runs: ask for 150 MiB" in found[0].message
    assert (
        optimization_suggestions(_balanced(peak_rss_bytes=300 * MIB, requested_memory_bytes=1024 * MIB)) == []
    )
    assert optimization_suggestions(_balanced(requested_memory_bytes=1024 * MIB)) == []  # never measured


def test_a_worker_that_ran_nothing_is_idle():
    found = optimization_suggestions(
        _balanced(), workers=[_worker("w1"), _worker("w2"), _worker("gone", state="lost")]
    )
    assert _kinds(found) == {("idle_worker", "w2")}


def test_waiting_long_while_every_slot_is_busy_is_slot_bound():
    # Two slots; three 5 s tasks ready at once: the third waits 5 s for a slot each run.
    def run(i: int) -> RunRecord:
        return _run(
            i,
            _t("a", 0, 5.0, worker="w1"),
            _t("b", 0, 5.0, worker="w1"),
            _t("c", 5.0, 5.0, wait_s=5.0, worker="w1"),
        )

    history = History(tuple(run(i) for i in range(6)))
    found = optimization_suggestions(history, workers=[_worker("w1", slots=2)])
    assert ("slot_bound", "etl") in _kinds(found)
    slot = next(s for s in found if s.kind == "slot_bound")
    assert slot.estimated_gain == pytest.approx(5.0) and "all 2 slots were busy" in slot.message
    # With 3 slots the same waits were not for a slot (something else held the task).
    assert "slot_bound" not in {
        s.kind for s in optimization_suggestions(history, workers=[_worker("w1", slots=3)])
    }


def test_short_waits_are_not_slot_bound():
    history = History(tuple(
        _run(i, _t("a", 0, 5.0, worker="w1"), _t("b", 0, 5.0, worker="w1"), _t("c", 5.1, 5.0, wait_s=0.1, worker="w1"))
        for i in range(6)))  # fmt: skip
    assert "slot_bound" not in {
        s.kind for s in optimization_suggestions(history, workers=[_worker("w1", slots=2)])
    }


def test_failure_probability_is_smoothed_and_weighted_to_recent_runs():
    clean = [_run(i, _t("t", 0, 1.0)) for i in range(20)]
    assert failure_probabilities(History(())) == {}
    never = failure_probabilities(History(tuple(clean)))["t"]
    assert 0 < never < 0.1  # the prior keeps it above 0
    failing_recent = [_run(i, _t("t", 0, 1.0, state="FAILED" if i >= 15 else "SUCCEEDED")) for i in range(20)]
    failing_old = [_run(i, _t("t", 0, 1.0, state="FAILED" if i < 5 else "SUCCEEDED")) for i in range(20)]
    recent = failure_probabilities(History(tuple(failing_recent)))["t"]
    old = failure_probabilities(History(tuple(failing_old)))["t"]
    assert recent > old > never
    retried = [_run(i, _t("t", 0, 1.0, attempts=2, retries=1)) for i in range(20)]
    assert failure_probabilities(History(tuple(retried)))["t"] == pytest.approx(0.5, abs=0.05)


def test_failure_probabilities_name_the_pipeline_when_the_history_holds_several():
    runs = [_run(0, _t("t", 0, 1.0)), _run(1, _t("t", 0, 1.0), pipeline="other")]
    assert set(failure_probabilities(History(tuple(runs)))) == {"etl/t", "other/t"}
