"""``dashboard.generate_performance_report()``: per task and per pipeline figures from the history.

A pure function of a :class:`~._history.History`, so it is tested on histories built by hand.
The HTML form is one self-contained file whose plots are SVG drawn here (no JS library):
operators mail it or attach it to a ticket.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._history import History, RunRecord, TaskRecord

__all__ = [
    "PerformanceReport", "TaskStats", "PipelineStats", "performance_report", "percentile", "critical_path",
    "TREND_RUNS", "STEADY_PCT",
]  # fmt: skip

#: The trend is the slope of run duration over this many newest finished runs.
TREND_RUNS = 20
#: A slope within this many percent (of the mean duration) per run is "steady".
STEADY_PCT = 2.0
#: Attempts that ended without success, by task state (a retried attempt is counted by ``retries``).
_FAILED_STATES = frozenset({"FAILED"})


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def critical_path(durations: Mapping[str, float], deps: Mapping[str, Iterable[str]]) -> tuple[float, list[str]]:
    """The longest path through the DAG by duration: ``(seconds, task names in order)``.

    ``deps`` maps a task to its upstream tasks; upstream names not in ``durations`` are
    ignored (a task of an older plan). O(V+E).
    """
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}

    def visit(name: str, stack: frozenset[str] = frozenset()) -> float:
        if name in finish:
            return finish[name]
        best, best_dep = 0.0, None
        for d in deps.get(name, ()):
            if d in durations and d not in stack:
                t = visit(d, stack | {name})
                if t > best:
                    best, best_dep = t, d
        finish[name] = best + durations[name]
        via[name] = best_dep
        return finish[name]

    for name in durations:
        visit(name)
    if not finish:
        return 0.0, []
    end = max(finish, key=finish.__getitem__)
    path: list[str] = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = via[node]
    return finish[end], path[::-1]


@dataclass(frozen=True, slots=True)
class TaskStats:
    """One task name's figures over the runs it appears in.

    ``failure_rate`` is failed attempts over attempts (a retried failure counts); ``cpu_s``
    and ``peak_rss_bytes`` are None when the task never measured itself (track_performance).
    ``critical_share`` is how often it was on its run's critical path (0-1) and
    ``critical_time_share`` the mean part of that path's time it took when it was.
    """

    name: str
    runs: int
    p50_s: float
    p95_s: float
    max_s: float
    failure_rate: float
    retries: int
    queue_wait_p50_s: float
    queue_wait_p95_s: float
    cpu_s: float | None
    peak_rss_bytes: int | None
    critical_share: float
    critical_time_share: float


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """One pipeline's run durations and their trend (``trend_pct_per_run`` < 0: getting faster)."""

    pipeline: str
    runs: int
    succeeded: int
    failed: int
    p50_s: float
    p95_s: float
    max_s: float
    trend_pct_per_run: float
    trend: str  # faster | slower | steady | unknown (fewer than 3 finished runs)
    points: tuple[tuple[float, float], ...] = field(default=(), repr=False)  # (created_at, duration_s), oldest first


@dataclass(frozen=True, slots=True)
class PerformanceReport:
    """Figures per task and per pipeline; ``str()`` is a table, also JSON and one HTML file."""

    pipeline: str | None
    generated_at: float
    tasks: tuple[TaskStats, ...]
    pipelines: tuple[PipelineStats, ...]
    note: str = ""

    @property
    def empty(self) -> bool:
        return not self.pipelines

    def to_dict(self) -> dict:
        return {
            "pipeline": self.pipeline, "generated_at": self.generated_at, "note": self.note,
            "tasks": [asdict(t) for t in self.tasks],
            "pipelines": [{**asdict(p), "points": [list(pt) for pt in p.points]} for p in self.pipelines],
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        title = f"Performance report{f' for {self.pipeline}' if self.pipeline else ''}"
        if self.empty:
            return f"{title}: no runs yet"
        lines = [title, ""]
        lines += _table(
            ["pipeline", "runs", "ok", "failed", "p50 s", "p95 s", "max s", "trend"],
            [[p.pipeline, p.runs, p.succeeded, p.failed, _s(p.p50_s), _s(p.p95_s), _s(p.max_s), _trend(p)]
             for p in self.pipelines],
        )  # fmt: skip
        lines.append("")
        lines += _table(
            ["task", "runs", "p50 s", "p95 s", "max s", "fail %", "retries", "wait p50", "wait p95", "cpu s",
             "peak MiB", "crit %", "crit time %"],
            [[t.name, t.runs, _s(t.p50_s), _s(t.p95_s), _s(t.max_s), f"{t.failure_rate * 100:.0f}", t.retries,
              _s(t.queue_wait_p50_s), _s(t.queue_wait_p95_s), "-" if t.cpu_s is None else _s(t.cpu_s),
              "-" if t.peak_rss_bytes is None else f"{t.peak_rss_bytes / 2**20:.1f}",
              f"{t.critical_share * 100:.0f}", f"{t.critical_time_share * 100:.0f}"] for t in self.tasks],
        )  # fmt: skip
        if self.note:
            lines += ["", f"note: {self.note}"]
        return "\n".join(lines)

    def to_html(self, path: str | Path) -> Path:
        """Write the report as one self-contained HTML file (inline SVG plots); returns its path."""
        from ._report_html import render_html

        out = Path(path)
        out.write_text(render_html(self), encoding="utf-8")
        return out


def performance_report(history: History, pipeline: str | None = None) -> PerformanceReport:
    """Per task name and per pipeline figures over ``history`` (of ``pipeline`` when given)."""
    if pipeline is not None:
        history = history.of(pipeline)
    runs = sorted(history.runs, key=lambda r: r.created_at)  # oldest first
    by_pipeline: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_pipeline.setdefault(run.pipeline, []).append(run)
    per_task: dict[str, list[TaskRecord]] = {}
    critical: dict[str, list[float]] = {}  # name -> its share of each critical path it was on
    for run in runs:
        for t in run.tasks:
            per_task.setdefault(t.name, []).append(t)
        for name, share in _critical_shares(run).items():
            critical.setdefault(name, []).append(share)
    tasks = tuple(_task_stats(name, recs, critical.get(name, []), len(runs)) for name, recs in per_task.items())
    tasks = tuple(sorted(tasks, key=lambda t: -t.p50_s))
    pipelines = tuple(_pipeline_stats(name, rs) for name, rs in sorted(by_pipeline.items()))
    return PerformanceReport(pipeline, time.time(), tasks, pipelines, history.note)


def _critical_shares(run: RunRecord) -> dict[str, float]:
    durations = {t.name: t.duration_s for t in run.tasks if t.duration_s > 0}
    total, path = critical_path(durations, {t.name: t.depends_on for t in run.tasks})
    return {name: durations[name] / total for name in path} if total > 0 else {}


def _task_stats(name: str, recs: list[TaskRecord], shares: list[float], n_runs: int) -> TaskStats:
    durations = [t.duration_s for t in recs if t.duration_s > 0]
    waits = [t.queue_wait_s for t in recs if t.ready_at and t.started_at]
    attempts = sum(max(t.attempts, 0) for t in recs)
    failed = sum(t.retries + (t.state in _FAILED_STATES) for t in recs)
    cpu = [t.cpu_s for t in recs if t.cpu_s > 0]
    rss = [t.peak_rss_bytes for t in recs if t.peak_rss_bytes > 0]
    return TaskStats(
        name, len(recs), percentile(durations, 50), percentile(durations, 95), max(durations, default=0.0),
        failed / attempts if attempts else 0.0, sum(t.retries for t in recs), percentile(waits, 50),
        percentile(waits, 95), percentile(cpu, 50) if cpu else None, max(rss) if rss else None,
        len(shares) / len(recs) if recs else 0.0, sum(shares) / len(shares) if shares else 0.0,
    )  # fmt: skip


def _pipeline_stats(name: str, runs: list[RunRecord]) -> PipelineStats:
    finished = [r for r in runs if r.finished_at]
    durations = [r.duration_s for r in finished]
    states = [r.state.removeprefix("RUN_") for r in runs]
    slope_pct, word = trend(durations[-TREND_RUNS:])
    return PipelineStats(
        name, len(runs), states.count("SUCCEEDED"), states.count("FAILED"), percentile(durations, 50),
        percentile(durations, 95), max(durations, default=0.0), slope_pct, word,
        tuple((r.created_at, r.duration_s) for r in finished),
    )  # fmt: skip


def trend(durations: Sequence[float]) -> tuple[float, str]:
    """Least-squares slope of ``durations`` (oldest first) as % of their mean per run, and its word."""
    n = len(durations)
    mean = sum(durations) / n if n else 0.0
    if n < 3 or mean <= 0:
        return 0.0, "unknown"
    mean_x = (n - 1) / 2
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (d - mean) for i, d in enumerate(durations)) / sxx
    pct = slope / mean * 100
    return pct, "steady" if abs(pct) < STEADY_PCT else ("slower" if pct > 0 else "faster")


def _trend(p: PipelineStats) -> str:
    return p.trend if p.trend == "unknown" else f"{p.trend} ({p.trend_pct_per_run:+.1f}%/run)"


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths), *[fmt(r) for r in cells[1:]]]
