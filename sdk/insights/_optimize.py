"""``pm.optimize_pipeline_performance(pipeline)``: apply the SAFE suggestions to the Pipeline object.

Safe means a change that cannot alter a result, only when and where tasks run:

* priorities, critical path first: each task's priority is its rank by bottom level (its
  median duration plus the longest chain of median durations after it), so a ready task
  that heads a long chain starts before one that ends a short one. Only when no task of
  the pipeline has a priority of its own (we never override an author's order).
* resource requests the author made, lowered to the most the task used times
  :data:`HEADROOM` (CPU: ``cpu_s / duration_s``; memory: peak RSS), when measured in at
  least :data:`MIN_RUNS` runs; never raised, never below :data:`CPU_FLOOR_CORES` or
  :data:`MEMORY_FLOOR_BYTES`. Requests left at their default are left alone.

The pipeline is changed in place, for its next run; the report lists each change and why.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .._limits import RESOURCE_ALIASES, normalize_resources
from ._history import History, load_history
from ._suggestions import (  # noqa: F401  the floors are named in the docstring above
    CPU_FLOOR_CORES, HEADROOM, MEMORY_FLOOR_BYTES, MIN_RUNS, lowered_cpu, lowered_memory,
)  # fmt: skip

__all__ = ["Change", "OptimizationReport", "optimize_from_history", "optimize_pipeline"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change made to a task: ``task.<field>`` went from ``old`` to ``new``, because ``why``."""

    task: str
    field: str
    old: Any
    new: Any
    why: str

    def __str__(self) -> str:
        return f"{self.task}.{self.field}: {self.old!r} -> {self.new!r} ({self.why})"


@dataclass(frozen=True, slots=True)
class OptimizationReport:
    """What :func:`optimize_pipeline` changed in a pipeline, from how many runs, and notes on what it left."""

    pipeline: str
    runs_used: int
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def __str__(self) -> str:
        head = f"pipeline {self.pipeline!r}: {len(self.changes)} change(s) from {self.runs_used} run(s)"
        return "\n".join([head, *(f"  {c}" for c in self.changes), *(f"  note: {n}" for n in self.notes)])


def optimize_pipeline(manager: Any, pipeline: Any) -> OptimizationReport:
    """Load ``pipeline``'s history from the coordinator and apply :func:`optimize_from_history`."""
    return optimize_from_history(pipeline, load_history(manager.client, pipeline.name))


def optimize_from_history(pipeline: Any, history: History) -> OptimizationReport:
    """Apply the safe changes to ``pipeline`` (in place) from ``history``; a pure step, for tests."""
    runs = [r for r in history.of(pipeline.name).runs if r.finished_at > 0 and "CANCELLED" not in r.state]
    if len(runs) < MIN_RUNS:
        return OptimizationReport(
            pipeline.name, len(runs),
            notes=(f"nothing changed: {len(runs)} finished run(s) kept, at least {MIN_RUNS} needed to judge",),
        )  # fmt: skip
    durations: dict[str, list[float]] = defaultdict(list)
    cores_used: dict[str, list[float]] = defaultdict(list)
    rss: dict[str, list[int]] = defaultdict(list)
    for run in runs:
        for t in run.tasks:
            if t.duration_s > 0:
                durations[t.name].append(t.duration_s)
                if t.cpu_s > 0:
                    cores_used[t.name].append(t.cpu_s / t.duration_s)
            if t.peak_rss_bytes > 0:
                rss[t.name].append(t.peak_rss_bytes)
    changes: list[Change] = []
    notes: list[str] = []
    changes.extend(_priorities(pipeline, {n: statistics.median(d) for n, d in durations.items()}, notes))
    for task in pipeline:
        changes.extend(_requests(task, cores_used.get(task.name, []), rss.get(task.name, [])))
    if not changes:
        notes.append("nothing changed: priorities and resource requests already fit the history")
    return OptimizationReport(pipeline.name, len(runs), tuple(changes), tuple(notes))


def _priorities(pipeline: Any, median_s: dict[str, float], notes: list[str]) -> list[Change]:
    tasks = {task.name: task for task in pipeline}
    if len(tasks) < 2:
        return []
    children: dict[str, list[str]] = defaultdict(list)
    for task in tasks.values():
        for upstream in task.depends_on:
            children[upstream].append(task.name)
    level: dict[str, float] = {}

    def bottom_level(name: str) -> float:  # the DAG is validated acyclic when tasks are added
        if name not in level:
            level[name] = median_s.get(name, 0.0) + max(
                (bottom_level(c) for c in children[name]), default=0.0
            )
        return level[name]

    ranked = sorted(tasks, key=lambda n: (bottom_level(n), n))  # ascending: the longest chain last
    wanted = {name: rank + 1 for rank, name in enumerate(ranked)}
    current = {name: task.priority or 0 for name, task in tasks.items()}
    if current == wanted:
        return []
    if any(current.values()):
        notes.append("priorities left as set: the pipeline's tasks have priorities of their own")
        return []
    critical = max(tasks, key=bottom_level)
    changes = []
    for name, priority in wanted.items():
        tasks[name].priority = priority
        why = f"bottom level {level[name]:.2f} s" + (" (heads the critical path)" if name == critical else "")
        changes.append(Change(name, "priority", current[name], priority, why))
    return sorted(changes, key=lambda c: -c.new)


def _requests(task: Any, cores_used: list[float], rss: list[int]) -> list[Change]:
    asked = dict(task.resource_requirements or {})
    if not asked:
        return []
    amounts = normalize_resources(asked)
    changes: list[Change] = []
    new = dict(asked)
    if amounts.cpu_cores and len(cores_used) >= MIN_RUNS:
        cores = lowered_cpu(max(cores_used))
        if cores < amounts.cpu_cores:
            _drop(new, "cpu_cores")
            new["cpu"] = cores
            why = f"used at most {max(cores_used):.2f} cores in {len(cores_used)} runs; x{HEADROOM} headroom"
            changes.append(Change(task.name, "resource_requirements.cpu", amounts.cpu_cores, cores, why))
    if amounts.memory_bytes and len(rss) >= MIN_RUNS:
        memory = lowered_memory(max(rss))
        if memory < amounts.memory_bytes:
            _drop(new, "memory_bytes")
            new["memory"] = memory
            why = f"peak RSS at most {max(rss) / 2**20:.0f} MiB in {len(rss)} runs; x{HEADROOM} headroom"
            changes.append(
                Change(task.name, "resource_requirements.memory", amounts.memory_bytes, memory, why)
            )
    if changes:
        task.resource_requirements = new
    return changes


def _drop(requirements: dict[str, Any], canonical: str) -> None:
    """Remove whichever alias (``cpu``, ``cpu_cores``, ``memory_mb``, ...) gave ``canonical``."""
    for key in [k for k in requirements if RESOURCE_ALIASES.get(k, (k, 1))[0] == canonical]:
        del requirements[key]
