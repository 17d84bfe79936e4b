"""Run and task state as the dashboard's JSON: compact parallel arrays, counts, critical path.

Pure functions over the engine's entries (live runs) or the store's records (older runs):
both carry ``name, state, attempt, worker, started_at, finished_at, error``, so one path
serves both. Built for 10,000-task runs: one pass per array, no protobuf per task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from xpipe._domain import error_type_name
from xpipe._proto import common_pb2

__all__ = ["TASK_FIELDS", "critical_path", "run_json", "run_state_name", "lean_columns", "task_columns", "task_state_name"]

#: Task state number -> proto name ("RUNNING"), and run state number -> name ("RUN_RUNNING").
_TASK_STATES = {v.number: v.name for v in common_pb2.TaskState.DESCRIPTOR.values}
_RUN_STATES = {v.number: v.name for v in common_pb2.RunState.DESCRIPTOR.values}
#: The parallel arrays of ``tasks`` (run detail adds ``depends_on``; see docs/api.md).
TASK_FIELDS = ("name", "state", "attempt", "worker", "started_at", "finished_at", "error_type", "error_message")


def task_state_name(state: int) -> str:
    return _TASK_STATES.get(state, str(state))


def run_state_name(state: int) -> str:
    return _RUN_STATES.get(state, str(state))


def run_state_names() -> dict[str, int]:
    """Run state names (``RUN_RUNNING``) to numbers, for the ``state`` filter."""
    return {name: number for number, name in _RUN_STATES.items()}


def task_columns(tasks: Iterable[Any], worker_name) -> dict[str, list]:
    """The tasks as parallel arrays (:data:`TASK_FIELDS`); ``worker_name(id)`` names workers."""
    cols: dict[str, list] = {f: [] for f in TASK_FIELDS}
    names, states, attempts, workers = cols["name"], cols["state"], cols["attempt"], cols["worker"]
    started, finished, etypes, emsgs = cols["started_at"], cols["finished_at"], cols["error_type"], cols["error_message"]
    shown: dict[str, str] = {"": ""}  # worker id -> name: a handful of workers for thousands of tasks
    for t in tasks:
        names.append(t.name)
        states.append(_TASK_STATES.get(t.state, str(t.state)))
        attempts.append(t.attempt)
        w = t.worker or ""
        name = shown.get(w)
        if name is None:
            name = shown[w] = worker_name(w) or w
        workers.append(name)
        started.append(t.started_at)
        finished.append(t.finished_at)
        error = t.error
        if error is not None and (error.message or error.exception_type or error.type or error.error_type):
            etypes.append(error_type_name(error))
            emsgs.append(error.message)
        else:
            etypes.append("")
            emsgs.append("")
    return cols


def lean_columns(tasks: Iterable[Any]) -> dict[str, list]:
    """Only ``name, state, started_at, finished_at``: a big run's snapshot for its page, which
    paints cells from these (the task panel reads the rest from the task's own document)."""
    names: list = []
    states: list = []
    started: list = []
    finished: list = []
    for t in tasks:
        names.append(t.name)
        states.append(_TASK_STATES.get(t.state, str(t.state)))
        started.append(t.started_at)
        finished.append(t.finished_at)
    return {"name": names, "state": states, "started_at": started, "finished_at": finished}


def critical_path(
    names: Sequence[str], deps: Sequence[Sequence[int]], started: Sequence[float], finished: Sequence[float], now: float
) -> tuple[list[str], float]:
    """The longest path through the DAG by task duration so far, source first, and its seconds.

    A finished task weighs ``finished - started``, a running one ``now - started``, one not
    started 0. ``deps[i]`` are the indices of task ``i``'s upstream tasks. O(tasks + edges).
    """
    n = len(names)
    if n == 0:
        return [], 0.0
    if not any(deps):  # no edges (a wide run): the longest single task
        own = [0.0 if not s else max(0.0, (f or now) - s) for s, f in zip(started, finished)]
        end = max(range(n), key=own.__getitem__)
        return [names[end]], own[end]
    indegree = [0] * n
    down: list[list[int]] = [[] for _ in range(n)]
    for i, ups in enumerate(deps):
        indegree[i] = len(ups)
        for u in ups:
            down[u].append(i)
    best = [0.0] * n  # longest path ending at i, i included
    prev = [-1] * n
    ready = [i for i in range(n) if indegree[i] == 0]
    while ready:
        i = ready.pop()
        s = started[i]
        own = 0.0 if not s else max(0.0, (finished[i] or now) - s)
        best[i] += own
        for j in down[i]:
            if prev[j] < 0 or best[i] > best[j]:
                best[j] = best[i]
                prev[j] = i
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    end = max(range(n), key=best.__getitem__)
    path = []
    i = end
    while i >= 0:
        path.append(names[i])
        i = prev[i]
    path.reverse()
    return path, best[end]


def run_json(
    run_id: str, pipeline: str, namespace: str, state: int, created_at: float, finished_at: float, total: int,
    counts: dict[str, int], now: float,
) -> dict:  # fmt: skip
    """One run's summary as the API shows it (see docs/api.md, "Run")."""
    end = finished_at or now
    return {
        "run_id": run_id, "pipeline": pipeline, "namespace": namespace, "state": run_state_name(state),
        "created_at": created_at, "finished_at": finished_at, "duration_s": max(0.0, end - created_at) if created_at else 0.0,
        "total_tasks": total, "counts": counts,
    }  # fmt: skip


def counts_of(states: Iterable[int]) -> dict[str, int]:
    """Tasks per state name (only states that occur)."""
    out: dict[int, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return {task_state_name(s): n for s, n in out.items()}
