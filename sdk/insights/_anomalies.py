"""Anomalies: task attempts whose duration, queue wait, CPU or memory left their own history.

Each task of each run in the window is judged against the same task (same pipeline, same
task name) in the runs created BEFORE it, over all the history the coordinator keeps, so a
run early in the window still has a baseline. Two models:

* ``"median_mad"`` (the default): per metric, the robust z-score against the median and MAD
  (:func:`._robust.robust_z`, kept incrementally); sensitivity low/medium/high means |z| >= 6/4/3.
* ``"isolation_forest"``: scikit-learn's IsolationForest on (duration, CPU, memory, queue
  wait) per task, each as its log ratio to the task's median and 0 when not material
  (:func:`_deviations`), fitted once per task on its kept samples, with the contamination
  taken from the sensitivity (an optional extra: ``pip install 'xpipe-cluster[insights]'``).

Either way a finding must also be material: at least :data:`MIN_DELTA` away from the median
in the metric's unit and at least :data:`MIN_RATIO` times above it (or below 1/x of it), so
a steady 0.1 s task that once takes 0.2 s, or a 20% wobble, is not paged about. The MAD is
floored at :data:`SPREAD_FLOOR_FRACTION` of the median, since five samples may agree closely
by chance. A task needs
:data:`MIN_HISTORY` earlier samples before it is judged at all.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._retry import parse_duration_s
from ._history import History, RunRecord, TaskRecord
from ._robust import SENSITIVITY_Z, z_from

__all__ = [
    "MIN_HISTORY",
    "MODELS",
    "SENSITIVITY_CONTAMINATION",
    "SENSITIVITY_Z",
    "Anomaly",
    "detect_anomalies",
    "window_s",
]  # fmt: skip

#: ``ml_model`` values; the first is the default.
MODELS = ("median_mad", "isolation_forest")
#: Sensitivity -> the |robust z| at which the median/MAD model calls a value anomalous.
#: Sensitivity -> the isolation forest's contamination (the share of samples it may flag).
SENSITIVITY_CONTAMINATION: dict[str, float] = {"low": 0.01, "medium": 0.05, "high": 0.1}
#: Earlier samples of a task needed before one of its attempts is judged.
MIN_HISTORY = 5
#: A finding must also be this many times above (or below 1/x of) the median.
MIN_RATIO = 1.5
#: The robust spread is at least this share of the median (see :func:`._robust.robust_z`).
SPREAD_FLOOR_FRACTION = 0.1
#: Metric -> (its TaskRecord field, its smallest material distance from the median, its unit).
METRICS: dict[str, tuple[str, float, str]] = {
    "duration": ("duration_s", 0.5, "s"),
    "queue_wait": ("queue_wait_s", 0.5, "s"),
    "cpu": ("cpu_s", 0.5, "s"),
    "memory": ("peak_rss_bytes", 64 * 2**20, "bytes"),
}
MIN_DELTA = {name: floor for name, (_, floor, _) in METRICS.items()}
_NAMED_WINDOWS = ("last_30m", "last_24h", "last_7d")


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One metric of one task attempt that left its history.

    Attributes:
        run_id: the run the attempt belongs to.
        task: the task's name.
        metric: ``duration``, ``queue_wait``, ``cpu`` or ``memory``.
        value: what the attempt measured (seconds, or bytes for memory).
        expected: the task's median over its earlier runs, in the same unit.
        score: |robust z| (median/MAD), or the forest's anomaly score in 0..1.
        reason: the finding in words.
    """

    run_id: str
    task: str
    metric: str
    value: float
    expected: float
    score: float
    reason: str

    def __str__(self) -> str:
        return f"{self.run_id} {self.task}: {self.reason} (score {self.score:.2f})"


def window_s(time_window: str | float | timedelta) -> float:
    """Seconds in ``time_window``: "last_24h", "last_7d", "last_30m" (any "last_<duration>"),
    seconds or a timedelta.

    Raises:
        ValueError: naming the value and what is accepted.
    """
    try:
        if isinstance(time_window, str):
            if not time_window.startswith("last_"):
                raise ValueError("a named window starts with 'last_'")
            seconds = parse_duration_s(time_window.removeprefix("last_"))
        else:
            seconds = parse_duration_s(time_window)
    except ValueError as exc:
        raise ValueError(
            f"time_window {time_window!r:.80} is not a window ({exc}); use one of {', '.join(_NAMED_WINDOWS)}, "
            "seconds or a timedelta"
        ) from None
    if seconds <= 0:
        raise ValueError(f"time_window {time_window!r} must be longer than 0 s")
    return seconds


def _defaults(monitoring: Any, sensitivity: str | None, ml_model: str | None) -> tuple[str, str]:
    """The sensitivity and model: given, else the pipeline's ``anomaly_detection`` config, else medium/MAD."""
    configured: Mapping[str, Any] = {}
    if monitoring is not None:
        configured = dict(getattr(monitoring, "sections", ())).get("anomaly_detection", {})
    sensitivity = sensitivity or configured.get("sensitivity") or "medium"
    ml_model = ml_model or configured.get("ml_model") or MODELS[0]
    if sensitivity not in SENSITIVITY_Z:
        raise ValueError(f"sensitivity {sensitivity!r:.80} is not one of {', '.join(SENSITIVITY_Z)}")
    if ml_model not in MODELS:
        raise ValueError(f"ml_model {ml_model!r:.80} is not a model we have; known: {', '.join(MODELS)}")
    return sensitivity, ml_model


def _value(task: TaskRecord, metric: str) -> float | None:
    """The task's figure for ``metric``, or None when it was not measured (0 means unknown)."""
    if metric == "queue_wait":
        return task.queue_wait_s if task.ready_at > 0 and task.started_at > 0 else None
    raw = float(getattr(task, METRICS[metric][0]))
    return raw if raw > 0 else None


def _ratio(value: float, median: float) -> float:
    """How many times apart ``value`` and ``median`` are (>= 1, either way)."""
    return max(value, median) / max(min(value, median), 1e-9)


def _material(metric: str, value: float, median: float) -> bool:
    return abs(value - median) >= MIN_DELTA[metric] and _ratio(value, median) >= MIN_RATIO


def _shown(metric: str, value: float) -> str:
    if METRICS[metric][2] == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.3g} s" if value < 10 else f"{value:.1f} s"


def _reason(metric: str, value: float, median: float) -> str:
    label = {"queue_wait": "queue wait", "cpu": "CPU time"}.get(metric, metric)
    if median > 0 and value >= median:
        how = f"{value / median:.1f}x its median"
    elif value > 0:
        how = f"1/{median / value:.1f} of its median"
    else:
        how = "against its median"
    return f"{label} {_shown(metric, value)} is {how} {_shown(metric, median)}"


def _attempts(history: History) -> dict[tuple[str, str], list[tuple[RunRecord, TaskRecord]]]:
    """(pipeline, task) -> its finished attempts, oldest run first."""
    by_task: dict[tuple[str, str], list[tuple[RunRecord, TaskRecord]]] = defaultdict(list)
    for run in sorted(history.runs, key=lambda r: (r.created_at, r.run_id)):
        for task in run.tasks:
            if task.finished_at > 0:
                by_task[(run.pipeline, task.name)].append((run, task))
    return by_task


def detect_anomalies(
    history: History,
    *,
    time_window: str | float | timedelta = "last_24h",
    sensitivity: str | None = None,
    ml_model: str | None = None,
    monitoring: Any = None,
    now: float | None = None,
) -> list[Anomaly]:
    """Task attempts in the window whose metrics left their task's earlier history.

    Args:
        history: all the runs kept (not only the window's: they are the baseline).
        time_window: which runs are judged: created within this long before ``now``.
        sensitivity: low, medium or high; None: the pipeline's config, else medium.
        ml_model: ``median_mad`` or ``isolation_forest``; None: the config, else median_mad.
        monitoring: the pipeline's :class:`~xpipe.telemetry.MonitoringConfig` (its
            ``anomaly_detection`` section gives the defaults), or None.
        now: Unix seconds the window ends at (default: the clock).

    Returns:
        The anomalies, most severe first.

    Raises:
        ValueError: a bad window, sensitivity or model, named.
        ImportError: ``isolation_forest`` without scikit-learn, naming the extra.
    """
    start = (time.time() if now is None else now) - window_s(time_window)
    sensitivity, ml_model = _defaults(monitoring, sensitivity, ml_model)
    judge = _isolation_forest if ml_model == "isolation_forest" else _median_mad
    found: list[Anomaly] = []
    for samples in _attempts(history).values():
        found.extend(judge(samples, start, sensitivity))
    return sorted(found, key=lambda a: -a.score)


class _Baseline:
    """Earlier values of one metric of one task, kept sorted: median and MAD in O(log^2 n).

    Judging each of a task's runs against all before it would cost O(n^2 log n) by sorting
    afresh; here an insert is one ``insort`` and the MAD is the k-th smallest of two sorted
    sequences (the distances below and above the median), found by bisection.
    """

    def __init__(self) -> None:
        self.values: list[float] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        bisect.insort(self.values, value)

    def median(self) -> float:
        v, n = self.values, len(self.values)
        return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

    def mad(self, median: float) -> float:
        n = len(self.values)
        return self._kth_distance(n // 2, median) if n % 2 else (
            self._kth_distance(n // 2 - 1, median) + self._kth_distance(n // 2, median)
        ) / 2  # fmt: skip

    def _kth_distance(self, k: int, median: float) -> float:
        """The k-th smallest (from 0) of |v - median|: merge below (walking down) and above."""
        v = self.values
        split = bisect.bisect_left(v, median)
        n_below, n_above = split, len(v) - split
        below = lambda j: median - v[split - 1 - j]  # noqa: E731  ascending in j
        above = lambda j: v[split + j] - median  # noqa: E731  ascending in j
        need = k + 1
        lo, hi = max(0, need - n_above), min(need, n_below)
        while lo < hi:  # the fewest taken from below such that the next one below is not smaller
            taken = (lo + hi) // 2
            if below(taken) < above(need - taken - 1):
                lo = taken + 1
            else:
                hi = taken
        taken = lo
        last_below = below(taken - 1) if taken > 0 else -math.inf
        last_above = above(need - taken - 1) if need - taken > 0 else -math.inf
        return max(last_below, last_above)


def _median_mad(
    samples: list[tuple[RunRecord, TaskRecord]], start: float, sensitivity: str
) -> Iterable[Anomaly]:
    threshold = SENSITIVITY_Z[sensitivity]
    for metric in METRICS:
        earlier = _Baseline()
        for run, task in samples:
            value = _value(task, metric)
            if value is None:
                continue
            if run.created_at >= start and len(earlier) >= MIN_HISTORY:
                median = earlier.median()
                z = z_from(value, median, earlier.mad(median), floor_fraction=SPREAD_FLOOR_FRACTION)
                if abs(z) >= threshold and _material(metric, value, median):
                    yield Anomaly(
                        run.run_id, task.name, metric, value, median, abs(z), _reason(metric, value, median)
                    )
            earlier.add(value)


def _load_forest() -> Any:
    try:
        from sklearn.ensemble import IsolationForest
    except ImportError as exc:
        raise ImportError(
            "ml_model='isolation_forest' needs scikit-learn: pip install 'xpipe-cluster[insights]' "
            f"(or ml_model='median_mad', which needs nothing); {exc}"
        ) from exc
    return IsolationForest


def _deviations(rows: list[list[float]]) -> list[list[float]]:
    """The forest's features: per metric, log(value / the task's median), 0 when not material.

    Raw figures would let immaterial noise decide: with a handful of runs, a 10 MiB wobble
    in memory or 0.2 s in queue wait can isolate a normal attempt faster than a 10x slower
    duration isolates the slow one, and the slow one is missed (9 of 120 seeded histories).
    Scaled to the task's own median and zeroed below :data:`MIN_DELTA` / :data:`MIN_RATIO`,
    normal attempts are alike and only material departures, in any mix of metrics, stand out.
    An unmeasured figure counts as normal.
    """
    medians = []
    for column in range(len(METRICS)):
        measured = [row[column] for row in rows if row[column] > 0]
        medians.append(statistics.median(measured) if measured else 0.0)
    features = []
    for row in rows:
        features.append([
            math.log(value / median) if value > 0 and median > 0 and _material(metric, value, median) else 0.0
            for metric, value, median in zip(METRICS, row, medians)
        ])  # fmt: skip
    return features


def _isolation_forest(
    samples: list[tuple[RunRecord, TaskRecord]], start: float, sensitivity: str
) -> Iterable[Anomaly]:
    forest_class = _load_forest()
    judged = [i for i, (run, _) in enumerate(samples) if i >= MIN_HISTORY and run.created_at >= start]
    if not judged:  # no fit for a task with nothing to judge
        return
    rows = [[_value(task, m) or 0.0 for m in METRICS] for _, task in samples]
    features = _deviations(rows)
    forest = forest_class(
        n_estimators=100, contamination=SENSITIVITY_CONTAMINATION[sensitivity], random_state=0
    ).fit(features)
    # score_samples is -(the paper's anomaly score, 0..1); below offset_ is what predict() calls -1.
    raw = forest.score_samples([features[i] for i in judged])
    for i, score in zip(judged, raw):
        if score >= forest.offset_:
            continue
        run, task = samples[i]
        # Name the metric that moved most from the task's earlier median, if any moved materially.
        best: tuple[float, str, float, float] | None = None
        for column, metric in enumerate(METRICS):
            value = _value(task, metric)
            earlier = [row[column] for row in rows[:i] if row[column] > 0]
            if value is None or len(earlier) < MIN_HISTORY:
                continue
            median = statistics.median(earlier)
            ratio = _ratio(value, median)
            if _material(metric, value, median) and (best is None or ratio > best[0]):
                best = (ratio, metric, value, median)
        if best is not None:
            _, metric, value, median = best
            yield Anomaly(
                run.run_id, task.name, metric, value, median, float(-score), _reason(metric, value, median)
            )
