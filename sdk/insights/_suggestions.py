"""Optimization suggestions: concrete rules over the run history and the workers.

Each rule needs :data:`MIN_RUNS` finished runs of a pipeline before it speaks, so one odd
run never yields advice. ``estimated_gain`` is always seconds of run wall time saved per run
(an upper bound); rules about capacity rather than time (over-asked resources, idle
workers) gain 0 s per run and say in the message what they free.

The rules:

* ``critical_path``: a task takes more than :data:`DOMINANT_SHARE` of its run's duration in
  most runs: split or speed it; gain its median duration.
* ``retries``: a task retried in more than :data:`RETRY_RATE` of its runs; gain its median
  duration times its mean retries (the time spent on attempts that failed).
* ``overrequested_cpu`` / ``overrequested_memory``: a task asks for at least
  :data:`CPU_OVERREQUEST` times the cores it used (``cpu_s / duration_s``, at most), or
  :data:`MEMORY_OVERREQUEST` times its peak RSS, when measured (``track_performance``);
  the default one core is not such a request. The figure suggested (:func:`lowered_cpu`,
  :func:`lowered_memory`) is what ``pm.optimize_pipeline_performance`` applies.
* ``idle_worker``: a worker (from ``client.list_workers()``) that ran no task of the history.
* ``slot_bound``: a pipeline with tasks that wait long (a task's median queue wait at least
  :data:`QUEUE_WAIT_SHARE` of its median duration, and :data:`MIN_QUEUE_WAIT_S`) while
  every slot of the workers was busy, in most such waits; gain the median per run of its
  longest wait.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._history import History, RunRecord, TaskRecord

__all__ = ["MIN_RUNS", "Suggestion", "lowered_cpu", "lowered_memory", "optimization_suggestions"]

#: Finished runs of a pipeline needed before any rule speaks about it.
MIN_RUNS = 5
#: A task whose duration is more than this share of its run's dominates the critical path.
DOMINANT_SHARE = 0.5
#: A task retried in more than this share of its runs retries often.
RETRY_RATE = 0.2
#: Requested cores at least this many times the cores used is over-asking.
CPU_OVERREQUEST = 2.0
#: Requested memory at least this many times the peak RSS is over-asking.
MEMORY_OVERREQUEST = 4.0
#: Lowered requests keep this much room above the most that was used.
HEADROOM = 1.5
#: Fewest cores a lowered CPU request asks for; lowered requests are rounded up to this step too.
CPU_FLOOR_CORES = 0.25
#: Fewest bytes a lowered memory request asks for; lowered requests are rounded up to whole MiB.
MEMORY_FLOOR_BYTES = 64 * 2**20
_MIB = 2**20
#: Queue waits this long relative to the duration mean the pipeline waits for slots...
QUEUE_WAIT_SHARE = 0.5
#: ...and at least this long in absolute terms.
MIN_QUEUE_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One piece of advice.

    Attributes:
        kind: the rule: ``critical_path``, ``retries``, ``overrequested_cpu``,
            ``overrequested_memory``, ``idle_worker`` or ``slot_bound``.
        target: ``"<pipeline>/<task>"``, a worker's name, or a pipeline.
        message: what to do and why, with the figures.
        estimated_gain: seconds of run wall time saved per run, at most (0 for capacity advice).
    """

    kind: str
    target: str
    message: str
    estimated_gain: float

    def __str__(self) -> str:
        gain = f" (up to {self.estimated_gain:.1f} s per run)" if self.estimated_gain > 0 else ""
        return f"[{self.kind}] {self.target}: {self.message}{gain}"


def _by_pipeline(history: History) -> dict[str, list[RunRecord]]:
    runs: dict[str, list[RunRecord]] = defaultdict(list)
    for run in history.runs:
        if run.finished_at > 0 and "CANCELLED" not in run.state:  # "SUCCEEDED" or "RUN_SUCCEEDED" alike
            runs[run.pipeline].append(run)
    return {name: got for name, got in runs.items() if len(got) >= MIN_RUNS}


def _tasks(runs: Sequence[RunRecord]) -> dict[str, list[TaskRecord]]:
    tasks: dict[str, list[TaskRecord]] = defaultdict(list)
    for run in runs:
        for task in run.tasks:
            tasks[task.name].append(task)
    return tasks


def optimization_suggestions(history: History, *, workers: Iterable[Any] = ()) -> list[Suggestion]:
    """Suggestions from the rules above, largest gain first.

    Args:
        history: the runs kept (every pipeline's, or one's).
        workers: ``client.list_workers()`` (``WorkerInfo``): for idle workers and slots.
    """
    workers = list(workers)
    found: list[Suggestion] = []
    by_pipeline = _by_pipeline(history)
    for pipeline, runs in sorted(by_pipeline.items()):
        tasks = _tasks(runs)
        found.extend(_critical_path(pipeline, runs))
        found.extend(_retries(pipeline, tasks))
        found.extend(_overrequested(pipeline, tasks))
        found.extend(_slot_bound(pipeline, runs, history, workers))
    if by_pipeline:
        found.extend(_idle_workers(history, workers))
    return sorted(found, key=lambda s: (-s.estimated_gain, s.kind, s.target))


def _critical_path(pipeline: str, runs: Sequence[RunRecord]) -> Iterable[Suggestion]:
    dominant: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run.duration_s <= 0:
            continue
        for task in run.tasks:
            if task.duration_s > DOMINANT_SHARE * run.duration_s:
                dominant[task.name].append(task.duration_s / run.duration_s)
    for name, shares in sorted(dominant.items()):
        if len(shares) * 2 > len(runs):
            durations = [t.duration_s for r in runs for t in r.tasks if t.name == name and t.duration_s > 0]
            median_s = statistics.median(durations)
            yield Suggestion(
                "critical_path", f"{pipeline}/{name}",
                f"takes {statistics.median(shares):.0%} of the run in {len(shares)} of {len(runs)} runs "
                f"(median {median_s:.2f} s): split it into parallel tasks or make it faster",
                median_s,
            )  # fmt: skip


def _retries(pipeline: str, tasks: dict[str, list[TaskRecord]]) -> Iterable[Suggestion]:
    for name, records in sorted(tasks.items()):
        ran = [t for t in records if t.attempts > 0]
        if len(ran) < MIN_RUNS:
            continue
        retried = sum(1 for t in ran if t.retries > 0)
        if retried / len(ran) > RETRY_RATE:
            durations = [t.duration_s for t in ran if t.duration_s > 0] or [0.0]
            mean_retries = sum(t.retries for t in ran) / len(ran)
            errors = sorted({t.error_type for t in ran if t.error_type})
            yield Suggestion(
                "retries", f"{pipeline}/{name}",
                f"retried in {retried} of {len(ran)} runs ({mean_retries:.2f} retries per run"
                f"{'; errors: ' + ', '.join(errors[:3]) if errors else ''}): fix the cause or make it idempotent "
                "and cheaper to retry",
                statistics.median(durations) * mean_retries,
            )  # fmt: skip


def lowered_cpu(used_cores: float) -> float:
    """The request to suggest for a task that used at most ``used_cores``: with headroom, in steps, floored."""
    return max(CPU_FLOOR_CORES, math.ceil(used_cores * HEADROOM / CPU_FLOOR_CORES) * CPU_FLOOR_CORES)


def lowered_memory(peak_rss_bytes: int) -> int:
    """The request to suggest for a task whose peak RSS was at most ``peak_rss_bytes``: in whole MiB, floored."""
    return max(MEMORY_FLOOR_BYTES, math.ceil(peak_rss_bytes * HEADROOM / _MIB) * _MIB)


def _overrequested(pipeline: str, tasks: dict[str, list[TaskRecord]]) -> Iterable[Suggestion]:
    for name, records in sorted(tasks.items()):
        measured = [t for t in records if t.cpu_s > 0 and t.duration_s > 0]
        asked = records[0].requested_cpu
        # One core is what a task gets when it asks for nothing (insights.proto): not a request to undo.
        if len(measured) >= MIN_RUNS and asked > 1:
            used_cores = max(t.cpu_s / t.duration_s for t in measured)
            if asked >= CPU_OVERREQUEST * used_cores:
                better = lowered_cpu(used_cores)
                yield Suggestion(
                    "overrequested_cpu", f"{pipeline}/{name}",
                    f"asks for {asked:g} cores but used at most {used_cores:.2f} in {len(measured)} runs: "
                    f"ask for {better:g} (pm.optimize_pipeline_performance does) to free {asked - better:g} cores",
                    0.0,
                )  # fmt: skip
        rss = [t.peak_rss_bytes for t in records if t.peak_rss_bytes > 0]
        asked_bytes = records[0].requested_memory_bytes
        if len(rss) >= MIN_RUNS and asked_bytes and asked_bytes >= MEMORY_OVERREQUEST * max(rss):
            yield Suggestion(
                "overrequested_memory", f"{pipeline}/{name}",
                f"asks for {asked_bytes / _MIB:.0f} MiB but its peak RSS was at most {max(rss) / _MIB:.0f} MiB "
                f"in {len(rss)} runs: ask for {lowered_memory(max(rss)) / _MIB:.0f} MiB "
                "(pm.optimize_pipeline_performance does)",
                0.0,
            )  # fmt: skip


def _idle_workers(history: History, workers: Sequence[Any]) -> Iterable[Suggestion]:
    used = {t.worker for r in history.runs for t in r.tasks if t.worker}
    for w in workers:
        if w.state in ("ready", "busy") and w.worker_id not in used and w.name not in used:
            yield Suggestion(
                "idle_worker", w.name or w.worker_id,
                f"ran no task in the {len(history.runs)} runs kept ({w.slots} slots, labels {dict(w.labels)}): "
                "check its labels and resources match the tasks, or stop it to save its cost",
                0.0,
            )  # fmt: skip


def _busy_at(t: float, intervals: Sequence[tuple[float, float]]) -> int:
    return sum(1 for start, end in intervals if start <= t < end)


def _slot_bound(
    pipeline: str, runs: Sequence[RunRecord], history: History, workers: Sequence[Any]
) -> Iterable[Suggestion]:
    slots = sum(w.slots for w in workers if w.state in ("ready", "busy"))
    if slots <= 0:
        return
    waiting: list[str] = []
    long_waits: list[TaskRecord] = []
    for name, records in sorted(_tasks(runs).items()):
        timed = [t for t in records if t.ready_at > 0 and t.started_at > 0 and t.duration_s > 0]
        if len(timed) < MIN_RUNS:
            continue
        wait_s = statistics.median(t.queue_wait_s for t in timed)
        if wait_s >= MIN_QUEUE_WAIT_S and wait_s >= QUEUE_WAIT_SHARE * statistics.median(
            t.duration_s for t in timed
        ):
            waiting.append(f"{name} {wait_s:.2f} s")
            long_waits.extend(t for t in timed if t.queue_wait_s >= MIN_QUEUE_WAIT_S)
    if not waiting:
        return
    # Busy slots over the whole history (every pipeline's tasks hold slots), at each wait's middle.
    intervals = [
        (t.started_at, t.finished_at)
        for r in history.runs
        for t in r.tasks
        if t.started_at > 0 and t.finished_at > 0
    ]
    full = sum(1 for t in long_waits if _busy_at((t.ready_at + t.started_at) / 2, intervals) >= slots)
    if full * 2 <= len(long_waits):
        return
    per_run = [max((t.queue_wait_s for t in r.tasks), default=0.0) for r in runs]
    yield Suggestion(
        "slot_bound", pipeline,
        f"tasks waited for a slot (median wait: {', '.join(waiting)}) while all {slots} slots were busy in "
        f"{full} of {len(long_waits)} long waits: add workers or slots (xpipe-worker --slots), or give its "
        "critical tasks a higher priority",
        statistics.median(per_run),
    )  # fmt: skip
