"""optimize_from_history on a real Pipeline and a hand-built history: only safe changes, each reported."""

from __future__ import annotations

import pytest

from xpipe import Pipeline, Task
from xpipe.insights import History, RunRecord, TaskRecord
from xpipe.insights._optimize import MEMORY_FLOOR_BYTES, optimize_from_history

MIB = 2**20


def _noop(*_args):
    return None


def _pipeline(**extract_options) -> Pipeline:
    p = Pipeline("etl")
    p.add_task(Task("extract", _noop, **extract_options))
    p.add_task(Task("clean", _noop, depends_on=["extract"]))
    p.add_task(Task("train", _noop, depends_on=["clean"]))
    p.add_task(Task("audit", _noop))
    return p


def _history(n: int, *, cpu_s: float = 0.0, rss: int = 0, pipeline: str = "etl") -> History:
    runs = []
    for i in range(n):
        t0 = 1_800_000_000.0 + 100 * i
        tasks = (
            TaskRecord("extract", "SUCCEEDED", started_at=t0 + 1, finished_at=t0 + 3, duration_s=2.0, cpu_s=cpu_s,
                       peak_rss_bytes=rss),
            TaskRecord("clean", "SUCCEEDED", started_at=t0 + 3, finished_at=t0 + 4, duration_s=1.0),
            TaskRecord("train", "SUCCEEDED", started_at=t0 + 4, finished_at=t0 + 9, duration_s=5.0),
            TaskRecord("audit", "SUCCEEDED", started_at=t0 + 1, finished_at=t0 + 5, duration_s=4.0),
        )  # fmt: skip
        runs.append(RunRecord(f"r{i}", pipeline, "SUCCEEDED", t0, t0 + 9, tasks=tasks))
    return History(tuple(reversed(runs)))


def test_priorities_put_the_critical_path_first():
    p = _pipeline()
    report = optimize_from_history(p, _history(6))
    # Bottom levels: extract 2+1+5=8, clean 6, train 5, audit 4.
    assert [p.tasks[n].priority for n in ("extract", "clean", "train", "audit")] == [4, 3, 2, 1]
    assert [c.task for c in report.changes] == ["extract", "clean", "train", "audit"]
    assert "heads the critical path" in report.changes[0].why
    text = str(report)
    assert text.splitlines()[0] == "pipeline 'etl': 4 change(s) from 6 run(s)"
    assert "extract.priority: 0 -> 4 (bottom level 8.00 s (heads the critical path))" in text
    again = optimize_from_history(p, _history(6))  # idempotent: nothing left to change
    assert not again.changed and "already fit" in again.notes[0]


def test_priorities_an_author_set_are_left_alone():
    p = _pipeline(priority=9)
    report = optimize_from_history(p, _history(6))
    assert not report.changed and p.tasks["extract"].priority == 9 and p.tasks["audit"].priority == 0
    assert any("priorities left as set" in n for n in report.notes)


def test_requests_are_lowered_to_use_with_headroom_never_raised_never_below_the_floor():
    p = _pipeline(resource_requirements={"cpu": 4, "memory": "2Gi"})
    report = optimize_from_history(p, _history(6, cpu_s=1.0, rss=100 * MIB))  # 0.5 cores, 100 MiB
    got = {c.field: c for c in report.changes if c.task == "extract" and c.field != "priority"}
    assert got["resource_requirements.cpu"].new == 0.75 and got["resource_requirements.cpu"].old == 4
    assert got["resource_requirements.memory"].new == 150 * MIB
    assert dict(p.tasks["extract"].resource_requirements) == {"cpu": 0.75, "memory": 150 * MIB}
    tiny = _pipeline(resource_requirements={"memory_mb": 512})
    optimize_from_history(tiny, _history(6, rss=1 * MIB))
    assert dict(tiny.tasks["extract"].resource_requirements) == {"memory": MEMORY_FLOOR_BYTES}
    tight = _pipeline(resource_requirements={"cpu": 1})
    report = optimize_from_history(tight, _history(6, cpu_s=1.9))  # 0.95 cores: x1.5 is above what was asked
    assert dict(tight.tasks["extract"].resource_requirements) == {"cpu": 1}
    assert all(c.field == "priority" for c in report.changes)


def test_unmeasured_or_default_requests_are_not_touched():
    p = _pipeline(resource_requirements={"cpu": 4})
    optimize_from_history(p, _history(6))  # cpu never measured
    assert dict(p.tasks["extract"].resource_requirements) == {"cpu": 4}
    assert not p.tasks["clean"].resource_requirements


@pytest.mark.parametrize("runs", [0, 4])
def test_too_little_history_changes_nothing_and_says_why(runs):
    p = _pipeline(resource_requirements={"cpu": 4})
    report = optimize_from_history(p, _history(runs, cpu_s=0.1))
    assert not report.changed and p.tasks["extract"].priority == 0
    assert report.notes == (f"nothing changed: {runs} finished run(s) kept, at least 5 needed to judge",)
    assert "0 change(s)" in str(report)


def test_another_pipelines_history_is_not_used():
    report = optimize_from_history(_pipeline(), _history(6, pipeline="other"))
    assert not report.changed and report.runs_used == 0
