"""``InsightsService.GetHistory``: runs and their tasks' timings, read from what is already kept.

Nothing here adds work per task: every field comes from what the engine holds for a run in
memory (its task entries, the transition log) or what the store keeps for a finished run
(task rows, the story of failed attempts, ``task_telemetry``). Where a fact is not kept, the
field is derived from facts that are (see :func:`_ready_times`) or left 0.
"""

from __future__ import annotations

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
    tasks_left = HISTORY_MAX_TASKS
    for i, rec in enumerate(chosen):
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
                f"only the newest {i} of {len(chosen)} runs: the next would pass {HISTORY_MAX_TASKS} tasks in all"
            )
            break
        tasks_left -= count
        run = answer.runs.add(
            run_id=rec.run_id, pipeline=rec.name, state=pb.RunState.Name(state), created_at=created_at,
            finished_at=finished_at, namespace=(spec.namespace if spec is not None else "") or DEFAULT_NAMESPACE,
        )  # fmt: skip
        _add_tasks(run, spec, records, created_at, ready_by_task)
    coordinator.name_workers(t for r in answer.runs for t in r.tasks)
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
    created_at: float, ready_by_task: Mapping[tuple[str, str], float],
) -> None:  # fmt: skip
    """One ``TaskHistory`` per task of the spec (in its order), from its row."""
    specs = {t.name: t for t in spec.tasks} if spec is not None else {}
    names = list(specs) or list(records)
    for name in names:
        rec = records.get(name)
        tspec = specs.get(name)
        deps = list(dict.fromkeys([*tspec.depends_on, *(f.source_task for f in tspec.flows)])) if tspec else []
        out = run.tasks.add(name=name, depends_on=deps)
        if tspec is not None:
            out.priority = tspec.priority
            res = tspec.resources
            out.requested_cpu = res.cpu_cores if tspec.HasField("resources") and res.cpu_cores > 0 else 1.0
            out.requested_memory_bytes = res.memory_bytes if tspec.HasField("resources") else 0
        else:
            out.requested_cpu = 1.0
        if rec is None:
            out.state = pb.TaskState.Name(pb.PENDING)
            continue
        out.state = pb.TaskState.Name(rec.state)
        out.attempts = rec.attempt
        out.retries = sum(1 for e in rec.history if e[6] == pb.RETRY_WAIT)
        out.worker = rec.worker
        out.started_at = rec.started_at
        out.finished_at = rec.finished_at
        if rec.started_at and rec.finished_at >= rec.started_at:
            out.duration_s = rec.finished_at - rec.started_at
        if rec.error is not None and rec.error.ByteSize():
            out.error_type = error_type_name(rec.error)
            out.error = rec.error.message[:ERROR_CHARS]
        ready_at = ready_by_task.get((run.run_id, name), 0.0)
        if not ready_at and not rec.history:
            # Not in the log: a task never retried nor requeued became READY when its last
            # upstream ended (a root: when the run was submitted).
            ends = [records[d].finished_at for d in deps if d in records]
            ready_at = max(ends) if deps else created_at
            if deps and (len(ends) < len(deps) or not all(ends)):
                ready_at = 0.0
        out.ready_at = ready_at
        if ready_at and rec.started_at >= ready_at:
            out.queue_wait_s = rec.started_at - ready_at
        telemetry = rec.telemetry
        if telemetry is not None:
            if telemetry.HasField("performance"):
                out.cpu_s = telemetry.performance.cpu_s
                out.peak_rss_bytes = telemetry.performance.peak_rss_bytes
            for point in telemetry.metrics:  # the last value of each name
                out.metrics[point.name] = point.value
