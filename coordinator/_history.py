"""``InsightsService.GetHistory``: runs and their tasks' timings, read from what is already kept.

Nothing here adds work per task: every field comes from what the engine holds for a run in
memory (its task entries, the transition log) or what the store keeps for a finished run
(task rows, the story of failed attempts, ``task_telemetry``). Where a fact is not kept, the
field is derived from facts that are (see :func:`_ready_times`) or left 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from xpipe._domain import error_type_name
from xpipe._limits import HISTORY_DEFAULT_RUNS, HISTORY_MAX_TASKS, MAX_LIST_RUNS
from xpipe._proto import common_pb2 as pb
from xpipe._proto import insights_pb2
from xpipe.security._principal import DEFAULT_NAMESPACE

from ._events import TaskRecord

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["get_history", "HISTORY_SCAN_RUNS", "ERROR_CHARS"]

#: Run headers read (newest first) to find the runs a request's pipeline and ``since`` select.
HISTORY_SCAN_RUNS = 20_000
#: An error message in a history is cut to this many characters (the full one is in GetRun).
ERROR_CHARS = 500
#: After a run of at least this many tasks (~12 µs each), the answer yields the event loop.
YIELD_EVERY_TASKS = 1_000


async def get_history(
    coordinator: Coordinator, request: insights_pb2.GetHistoryRequest
) -> insights_pb2.GetHistoryResponse:
    """The newest runs the caller may read (of ``request.pipeline``, since ``request.since``).

    Bounded by ``max_runs`` (default :data:`HISTORY_DEFAULT_RUNS`) and
    :data:`HISTORY_MAX_TASKS` tasks in all; the answer's ``note`` says when it was cut.
    """
    engine = coordinator.engine
    max_runs = min(request.max_runs or HISTORY_DEFAULT_RUNS, MAX_LIST_RUNS)
    headers = await engine.store.list_runs(HISTORY_SCAN_RUNS)
    chosen = []
    for rec in headers:  # newest first: stop at the first run older than ``since``
        if request.since and rec.created_at < request.since:
            break
        if not request.pipeline or rec.name == request.pipeline:
            chosen.append(rec)
    chosen, more = await _readable(coordinator, chosen, max_runs)
    notes = [f"only the newest {max_runs} of {more} runs (max_runs)"] if more else []
    answer = insights_pb2.GetHistoryResponse()
    ready_by_task = _ready_times(engine.state.transitions, {rec.run_id for rec in chosen})
    worker_names = {w.worker_id: w.name for w in engine.state.workers.values()}  # rows hold worker ids
    tasks_left = HISTORY_MAX_TASKS
    for rec in chosen:
        live = engine.state.runs.get(rec.run_id)
        if live is not None:
            spec, created_at, finished_at, state = live.spec, live.created_at, live.finished_at, live.state
            records = {r.name: r for r in engine.state.iter_records(rec.run_id)}
        else:
            stored = await engine.store.get_run(rec.run_id)
            if stored is None:  # deleted (retention) between the listing and now
                continue
            spec, records = stored.spec, stored.tasks
            created_at, finished_at, state = stored.header.created_at, stored.header.finished_at, stored.header.state
        count = len(spec.tasks) if spec is not None else len(records)
        if count > tasks_left:
            notes.append(
                f"only the newest {len(answer.runs)} of {len(chosen)} runs: the next would pass "
                f"{HISTORY_MAX_TASKS} tasks in all"
            )
            break
        tasks_left -= count
        run = answer.runs.add(
            run_id=rec.run_id, pipeline=rec.name, state=pb.RunState.Name(state), created_at=created_at,
            finished_at=finished_at, namespace=(spec.namespace if spec is not None else "") or DEFAULT_NAMESPACE,
        )  # fmt: skip
        _add_tasks(run, spec, records, created_at, ready_by_task, worker_names)
        if count >= YIELD_EVERY_TASKS:
            await asyncio.sleep(0)  # a big run: let the engine take its turn before the next
    answer.note = "; ".join(notes)
    return answer


async def _readable(coordinator: Coordinator, runs: list, max_runs: int) -> tuple[list, int | str]:
    """The newest ``max_runs`` of ``runs`` the caller may read, and how many there were when
    more (0 when none was left out; "more than N" when the count was not finished).

    Namespaces are looked up a page at a time, so a short answer costs a short lookup.
    """
    auth = coordinator.guard.auth
    if auth is None:
        return runs[:max_runs], len(runs) if len(runs) > max_runs else 0
    out: list = []
    for start in range(0, len(runs), max_runs + 1):
        page = runs[start : start + max_runs + 1]
        visible = await auth.readable([rec.run_id for rec in page])
        out += page if visible is None else [rec for rec in page if rec.run_id in visible]
        if len(out) > max_runs:
            left = start + len(page) < len(runs)
            return out[:max_runs], f"more than {max_runs}" if left else len(out)
    return out, 0


def _ready_times(transitions: Iterable[tuple], run_ids: set[str]) -> dict[tuple[str, str], float]:
    """When each task of ``run_ids`` last moved to READY, from the in-memory transition log.

    The log is bounded, so older runs are not in it; :func:`_add_tasks` then derives the time.
    """
    out: dict[tuple[str, str], float] = {}
    if not run_ids:
        return out
    ready = pb.READY
    for entry in transitions:  # (time, stimulus, run_id, task, attempt, from, to, reason)
        if entry[6] == ready and entry[2] in run_ids:
            out[(entry[2], entry[3])] = entry[0]
    return out


def _add_tasks(
    run: insights_pb2.RunHistory, spec: pb.PipelineSpec | None, records: Mapping[str, TaskRecord],
    created_at: float, ready_by_task: Mapping[tuple[str, str], float], worker_names: Mapping[str, str],
) -> None:  # fmt: skip
    """One ``TaskHistory`` per task of the spec (in its order), from its row.

    ~12 µs per task (10,000 tasks: ~120 ms on the event loop, one run between awaits).
    """
    specs = {t.name: t for t in spec.tasks} if spec is not None else {}
    state_name = pb.TaskState.Name
    out = []
    for name in list(specs) or list(records):
        rec = records.get(name)
        tspec = specs.get(name)
        fields: dict = {"name": name, "requested_cpu": 1.0}
        deps: list[str] = []
        if tspec is not None:
            deps = [*tspec.depends_on]
            if tspec.flows:
                deps = list(dict.fromkeys([*deps, *(f.source_task for f in tspec.flows)]))
            fields["depends_on"] = deps
            fields["priority"] = tspec.priority
            if tspec.HasField("resources"):
                res = tspec.resources
                fields["requested_cpu"] = res.cpu_cores if res.cpu_cores > 0 else 1.0
                fields["requested_memory_bytes"] = res.memory_bytes
        if rec is None:
            out.append(insights_pb2.TaskHistory(state=state_name(pb.PENDING), **fields))
            continue
        started, finished = rec.started_at, rec.finished_at
        if started and finished >= started:
            fields["duration_s"] = finished - started
        if rec.history:
            fields["retries"] = sum(1 for e in rec.history if e[6] == pb.RETRY_WAIT)
        if rec.error is not None and rec.error.ByteSize():
            fields["error_type"] = error_type_name(rec.error)
            fields["error"] = rec.error.message[:ERROR_CHARS]
        ready_at = ready_by_task.get((run.run_id, name), 0.0)
        if not ready_at and not rec.history:
            # Not in the log: a task never retried nor requeued became READY when its last
            # upstream ended (a root: when the run was submitted).
            if not deps:
                ready_at = created_at
            else:
                ends = [records[d].finished_at if d in records else 0.0 for d in deps]
                ready_at = max(ends) if all(ends) else 0.0
        if ready_at:
            fields["ready_at"] = ready_at
            if started >= ready_at:
                fields["queue_wait_s"] = started - ready_at
        telemetry = rec.telemetry
        if telemetry is not None:
            if telemetry.HasField("performance"):
                fields["cpu_s"] = telemetry.performance.cpu_s
                fields["peak_rss_bytes"] = telemetry.performance.peak_rss_bytes
            if telemetry.metrics:
                fields["metrics"] = {p.name: p.value for p in telemetry.metrics}  # the last value of each name
        out.append(insights_pb2.TaskHistory(
            state=state_name(rec.state), attempts=rec.attempt, worker=worker_names.get(rec.worker, rec.worker),
            started_at=started, finished_at=finished, **fields,
        ))  # fmt: skip
    run.tasks.extend(out)
