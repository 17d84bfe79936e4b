"""``dashboard.forecast_duration(pipeline)``: how long its next run should take, with an interval.

From the plan plus history: the critical path through the DAG with each task's p50 duration
gives the expected time, with p10 and p90 the low and high ends. A run also waits (queueing,
dispatch), so when the pipeline ran before, the median of (run duration - the critical path
of its own task durations) is added, and the interval is widened to cover the spread of
those runs' durations. A pure function of the DAG and a :class:`~._history.History`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._history import History, RunRecord
from ._report import critical_path, percentile

__all__ = ["Forecast", "forecast_duration"]


@dataclass(frozen=True, slots=True)
class Forecast:
    """A run's expected duration and an interval (seconds); ``basis`` says what it rests on.

    With no history at all every figure is 0.0 and ``basis`` says so (``has_basis`` False).
    """

    expected_s: float
    low_s: float
    high_s: float
    basis: str

    @property
    def has_basis(self) -> bool:
        return self.expected_s > 0

    def __str__(self) -> str:
        if not self.has_basis:
            return f"no forecast: {self.basis}"
        return f"{self.expected_s:.1f} s (between {self.low_s:.1f} and {self.high_s:.1f} s; {self.basis})"


def _dag_of(pipeline: Any, history: History) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(name, {task: upstream tasks}) from a Pipeline, or from the newest run of a name."""
    if pipeline is not None and not isinstance(pipeline, str):
        return pipeline.name, {name: tuple(task.upstream) for name, task in pipeline.tasks.items()}
    name = pipeline or (history.runs[0].pipeline if history.runs else "")
    runs = history.of(name).runs if name else ()
    return name, ({t.name: t.depends_on for t in runs[0].tasks} if runs else {})


def forecast_duration(pipeline: Any, history: History) -> Forecast:
    """The forecast for ``pipeline`` (a Pipeline, or a pipeline's name) from ``history``."""
    name, deps = _dag_of(pipeline, history)
    runs = history.of(name).runs if name else ()
    if not deps:
        return Forecast(0.0, 0.0, 0.0, f"pipeline {name!r} has no runs in the history and no plan given")
    samples: dict[str, list[float]] = {}
    for run in history.runs:  # a task name's durations, from any pipeline that ran it
        for t in run.tasks:
            if t.name in deps and t.state == "SUCCEEDED" and t.duration_s > 0:
                samples.setdefault(t.name, []).append(t.duration_s)
    known = [n for n in deps if n in samples]
    if not known:
        return Forecast(0.0, 0.0, 0.0, f"no task of pipeline {name!r} has a duration in the history yet")
    low, expected, high = (_path(deps, samples, q) for q in (10, 50, 90))
    finished = [r for r in runs if r.finished_at and r.state.removeprefix("RUN_") == "SUCCEEDED"]
    overhead_s = statistics.median(_overheads(finished)) if finished else 0.0
    low, expected, high = low + overhead_s, expected + overhead_s, high + overhead_s
    parts = [f"critical path of p10/p50/p90 task durations ({len(known)} of {len(deps)} tasks seen)"]
    if finished:
        durations = [r.duration_s for r in finished]
        low, high = min(low, percentile(durations, 10)), max(high, percentile(durations, 90))
        parts.append(f"{len(finished)} earlier runs (median wait {overhead_s:.2f} s)")
    missing = [n for n in deps if n not in samples]
    if missing:
        parts.append(f"no history for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (taken as 0 s)")
    return Forecast(expected, min(low, expected), max(high, expected), "; ".join(parts))


def _path(deps: Mapping[str, Sequence[str]], samples: Mapping[str, list[float]], q: float) -> float:
    return critical_path({n: percentile(samples[n], q) if n in samples else 0.0 for n in deps}, deps)[0]


def _overheads(runs: Sequence[RunRecord]) -> list[float]:
    """Per run: its duration beyond the critical path of its own task durations (>= 0)."""
    out = []
    for run in runs:
        cp, _ = critical_path({t.name: t.duration_s for t in run.tasks}, {t.name: t.depends_on for t in run.tasks})
        out.append(max(0.0, run.duration_s - cp))
    return out
