"""The coordinator's run/task state machine: pure, synchronous, no I/O, no clock.

The gRPC servicers and the store loop (``_engine.py``) translate the outside world into
:mod:`._events` events, feed them to :meth:`SchedulerState.handle`, then carry out the
returned actions: first every ``RunRecord``/``TaskRecord`` is committed to the store (group
commit), only then are ``Assign``/``CancelAttempts`` messages sent. A crash between the two
therefore never loses a transition that a worker or client has seen.

Task attempt states follow DESIGN.md::

    PENDING -> READY -> ASSIGNED -> RUNNING -> SUCCEEDED | FAILED | RETRY_WAIT | RECOVERING | MAPPED
    (a debug run: PENDING -> HELD -> READY, see ``_debug_flow``)
    (and SKIPPED, CANCELLED, UPSTREAM_FAILED from the non-terminal states)

A fanned-out task (``TaskSpec.map``) is MAPPED while its sub-tasks ``name[i]``, tasks of the
run in their own right, run; ``_mapping_flow`` (a mixin, like ``_recovery_flow``) holds that part.

A run with ``circuit_breaker_enabled`` asks the task's circuit (``_breaker``) before each
attempt is placed; an open circuit fails the attempt at once with ``CIRCUIT_OPEN``. A run
with a recovery handler parks a task that failed for good in RECOVERING and sends a worker
a synthetic attempt ``(run_id, "<task>/recovery", n)`` that runs the handler; its answer
(``_recovery``) decides the task's fate.

Each attempt has a number. A result that names any attempt but the current one (a worker
presumed lost, a cancelled attempt) is stale: it is counted in ``stale_results`` and
dropped, so a task's completion is recorded exactly once.

What each event does is read in one place, the ``{event type: handler}`` table built in
:meth:`SchedulerState.__init__`. Every task move goes through ``_move``, which checks it
against ``_ALLOWED`` and appends a :data:`~._events.StoryEntry` (time, the event's
``stimulus_id``, run, task, attempt, from, to, reason) to a bounded transition log;
:meth:`SchedulerState.story` filters it for ``xpipe story``. An attempt that fails or is
requeued also leaves its entries on the task (``history``), persisted with the task row,
so a restarted coordinator can still tell them (see ``_story``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections import deque

from xpipe._domain import DEPARTED_WORKER_STATES, TERMINAL_RUN_STATES, TERMINAL_TASK_STATES
from xpipe._domain import error_type_name, set_error_type, task_error
from xpipe._limits import STORY_HISTORY_ENTRIES, TRANSITION_LOG_ENTRIES
from xpipe._proto import common_pb2 as pb
from xpipe._retry import backoff_delay_s
from xpipe.security._codetrust import CODE_KINDS

from ._breaker import OPEN, CircuitBreakers
from ._entries import RunEntry, TaskEntry, WorkerEntry
from ._invariants import ACTIVE as _ACTIVE
from ._invariants import SATISFIED as _SATISFIED
from ._placement import PlacementIndex, big_input_holder
from ._story import ERROR_MOVES, restored_entries
from ._recovery import RecoveryCodec, recovered_task, recovery_name
from ._queries import StateQueries
from ._recovery_flow import _RECOVERY_REQUEST, RecoveryFlow
from ._debug_flow import DebugFlow
from ._mapping_flow import MappingFlow
from ._events import (
    Action,
    Assign,
    AttemptKey,
    CancelAttempts,
    CancelRequested,
    CircuitOpened,
    DebugReleaseRequested,
    DrainRequested,
    DrainWorker,
    Event,
    HeartbeatPaceChanged,
    HeartbeatReceived,
    RunRecord,
    RunRestored,
    ResetWorker,
    RunEvicted,
    RunSubmitted,
    StoryEntry,
    TaskFailed,
    TaskRecord,
    TaskReleased,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerConnected,
    WorkerDisconnected,
    WorkerLost,
)
from ._events import WorkersForgotten

#: Queued work, in seconds per slot, that adaptive prefetch aims to keep on each worker.
PREFETCH_WORK_S = 0.02
#: Added to the critical-path rank of a ready task whose inputs are big results (artifact
#: references): more than any run's critical path, so they go first within a priority.
_BIG_INPUTS_RANK = 1 << 40
#: A task's telemetry once an attempt that recorded nothing follows one that did (shared;
#: never mutated: readers copy from it).
_NO_TELEMETRY = pb.TaskTelemetry()

__all__ = ["SchedulerState", "InvalidTransition", "INTERNAL_ERROR", "TERMINAL_TASK_STATES", "TERMINAL_RUN_STATES"]

log = logging.getLogger(__name__)

#: error_type of tasks failed by :meth:`SchedulerState.fail_run`: a coordinator bug, not the task's.
INTERNAL_ERROR = "INTERNAL"

#: Every allowed task transition. ``_move`` refuses anything else.
_ALLOWED: dict[int, frozenset[int]] = {
    pb.PENDING: frozenset({pb.READY, pb.HELD, pb.UPSTREAM_FAILED, pb.CANCELLED, pb.SKIPPED}),
    # A debug run's task waits for the debugger (_debug_flow): released, or cancelled.
    pb.HELD: frozenset({pb.READY, pb.CANCELLED}),
    # READY -> RETRY_WAIT/FAILED/RECOVERING: an attempt failed fast on an open circuit.
    pb.READY: frozenset({pb.ASSIGNED, pb.CANCELLED, pb.FAILED, pb.SKIPPED, pb.RETRY_WAIT, pb.RECOVERING}),
    pb.ASSIGNED: frozenset(
        {pb.RUNNING, pb.SUCCEEDED, pb.FAILED, pb.RETRY_WAIT, pb.READY, pb.CANCELLED, pb.SKIPPED, pb.RECOVERING, pb.MAPPED}
    ),
    pb.RUNNING: frozenset(
        {pb.SUCCEEDED, pb.FAILED, pb.RETRY_WAIT, pb.READY, pb.CANCELLED, pb.SKIPPED, pb.RECOVERING, pb.MAPPED}
    ),
    # A fanned-out task's split is done and its sub-tasks run (``_mapping_flow``).
    pb.MAPPED: frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED}),
    pb.RETRY_WAIT: frozenset({pb.READY, pb.CANCELLED}),
    # The recovery handler's answer: retry_with_fallback, halt/continue, skip; or a cancel.
    pb.RECOVERING: frozenset({pb.READY, pb.FAILED, pb.SKIPPED, pb.CANCELLED}),
}
#: An attempt that failed fast on an open circuit (from READY) ends in one of these.
_FAST_FAILS = frozenset({pb.RETRY_WAIT, pb.FAILED, pb.RECOVERING})


class InvalidTransition(RuntimeError):
    """A transition not in the table was attempted: a bug in the state machine."""


class SchedulerState(RecoveryFlow, DebugFlow, MappingFlow, StateQueries):
    """All runs, tasks and workers a coordinator knows, and the rules that move them.

    Args:
        prefetch: assignments a worker may hold beyond its slots, so it never idles
            waiting for the next round trip.
        heartbeat_timeout_s: a worker unheard of for this long is lost and its attempts
            are requeued; the shell changes it as the fleet's heartbeat interval stretches
            (a ``HeartbeatPaceChanged`` event).
        heartbeat_interval_s: the interval workers are told; kept to be shown, and changed
            by the same event.
        validate: check invariants after every event (tests turn this on).
        rng: source of retry jitter; tests pass a seeded one for a reproducible schedule.
        recovery_codec: how recovery handlers' arguments and answers are encoded; the
            shell's choice (the engine passes a pickle codec), so the core imports none.
            None: runs with a recovery handler fail INTERNAL when a handler is due.
        transition_log_entries: task moves the transition log keeps (oldest dropped first).
    """

    def __init__(
        self,
        *,
        prefetch: int = 8,
        heartbeat_timeout_s: float = 10.0,
        heartbeat_interval_s: float = 1.0,
        validate: bool = False,
        rng: random.Random | None = None,
        recovery_codec: RecoveryCodec | None = None,
        transition_log_entries: int = TRANSITION_LOG_ENTRIES,
    ):
        self.rng = rng if rng is not None else random.Random()
        self.recovery_codec = recovery_codec
        self.prefetch = prefetch
        self.heartbeat_timeout_s = heartbeat_timeout_s
        #: The heartbeat interval workers are told: shown (metrics), never used here.
        self.heartbeat_interval_s = heartbeat_interval_s
        self.validate_each_step = validate
        self.runs: dict[str, RunEntry] = {}
        self.workers: dict[str, WorkerEntry] = {}
        # (-priority, -rank, seq, run_id, task): priority, then big inputs first, then critical
        # path (rank: see _push_ready), then FIFO.
        self._ready: list[tuple[int, int, int, str, str]] = []
        self.placement = PlacementIndex()
        self._to_judge: list[tuple[str, str]] = []  # READY tasks not yet checked for "can never fit"
        self._resource_waits: list[tuple[float, int, str, str]] = []  # (deadline, seq, run_id, task)
        # After a restart, workers reconnect one by one: judge "can never fit" only after this.
        self._settle_until = 0.0
        self._retries: list[tuple[float, int, str, str, int]] = []  # (at, seq, run_id, task, attempt)
        self._seq = itertools.count()
        self.stale_results = 0
        self.recent: deque[Event] = deque(maxlen=200)  # for debugging
        #: The transition log: one StoryEntry per task move, oldest dropped first.
        self.transitions: deque[StoryEntry] = deque(maxlen=transition_log_entries)
        self._log = self.transitions.append
        # The time and stimulus of the event (or schedule pass) being handled, for _move.
        self._now = 0.0
        self._stimulus = ""
        #: What each event does: the one table to read.
        self._handlers = {
            TaskSucceeded: self._on_result,
            TaskFailed: self._on_result,
            TaskStarted: self._on_started,
            TaskReleased: self._on_released,
            HeartbeatReceived: self._on_heartbeat,
            HeartbeatPaceChanged: self._on_heartbeat_pace,
            RunSubmitted: self._on_submitted,
            RunRestored: self._on_restored,
            WorkerConnected: self._on_worker_connected,
            WorkerDisconnected: self._on_worker_disconnected,
            CancelRequested: self._on_cancel,
            DebugReleaseRequested: self._on_debug_release,
            DrainRequested: self._on_drain,
            Tick: self._on_tick,
            RunEvicted: self._on_evicted,
            WorkersForgotten: self._on_workers_forgotten,
        }
        #: Circuit breakers of every run with circuit_breaker_enabled, shared across runs.
        self.breakers = CircuitBreakers()
        self._recoveries: deque[tuple[str, str]] = deque()  # (run_id, task) handler calls to send

    # ------------------------------------------------------------------ events

    def handle(self, event: Event, out: list[Action] | None = None) -> list[Action]:
        """Apply one event; return the actions the shell must carry out, in order.

        Actions are appended to ``out`` when given, so a caller that catches an exception
        still has the actions of the changes made before it (see :meth:`fail_run`).
        """
        self.recent.append(event)
        if out is None:
            out = []
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"unknown event {event!r}")
        self._now, self._stimulus = event.now, event.stimulus_id
        handler(event, out)
        if self.validate_each_step:
            self.validate()
        return out

    def _on_released(self, ev: TaskReleased, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is not None:
            self._unhold(worker, ev.attempt)
            self._heard_from(worker, out)
        self._requeue(ev.attempt, ev.now, out, reason=f"released by worker {ev.worker_id}")

    def _on_worker_disconnected(self, ev: WorkerDisconnected, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.state not in DEPARTED_WORKER_STATES:
            worker.connected = False
            worker.last_seen = ev.now
            self.placement.set_eligible(worker.worker_id, False)
            if worker.state == "draining" and not worker.assigned:
                # A drain that finished: the worker left as asked, so it is not lost
                # (no heartbeat deadline, no WorkerLost alert), only shown as departed.
                log.info("worker %s (%s) drained and left", worker.name, worker.worker_id)
                worker.state = "drained"
                self.placement.remove(worker.worker_id)

    def _on_drain(self, ev: DrainRequested, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.state == "ready":
            worker.state = "draining"
            self.placement.set_eligible(worker.worker_id, False)
            out.append(DrainWorker(worker.worker_id))

    def _on_evicted(self, ev: RunEvicted, out: list[Action]) -> None:
        self._forget_run(ev.run_id)

    def _on_submitted(self, ev: RunSubmitted, out: list[Action]) -> None:
        run = RunEntry(ev.run_id, ev.spec, ev.now)
        self.runs[run.run_id] = run
        run.set_critical_paths(ev.order)
        self._configure_circuits(run)
        self._setup_fanouts(run)
        out.append(self._run_record(run, spec=ev.spec))
        for name in ev.order:
            task = run.tasks[name]
            task.waiting = len(task.deps)
            if not task.deps:
                self._make_ready(run, task, out)

    def _on_restored(self, ev: RunRestored, out: list[Action]) -> None:
        run = RunEntry(ev.run_id, ev.spec, ev.created_at)
        self.runs[run.run_id] = run
        run.set_critical_paths(ev.order)
        self._configure_circuits(run)
        self._settle_until = max(self._settle_until, ev.now + self.heartbeat_timeout_s)
        self._setup_fanouts(run)
        self._restore_children(run, ev.tasks)
        for name, rec in ev.tasks.items():
            task = run.tasks.get(name)
            if task is None:
                continue
            task.state, task.attempt, task.worker = rec.state, rec.attempt, rec.worker
            task.started_at, task.finished_at = rec.started_at, rec.finished_at
            task.error, task.result, task.telemetry = rec.error, rec.result, rec.telemetry
            if rec.result is not None and rec.result.artifact_ref:
                run.big_results = True
            task.history = rec.history
            if rec.cache_hit:
                task.cache_hit = True
                run.cache_hits += 1
            self.transitions.extend(restored_entries(rec))
            if rec.state in TERMINAL_TASK_STATES:
                self._count_terminal(run, task)
            elif rec.state in _ACTIVE:
                run.inflight += 1
                run.charge(task, +1)
                # The worker may come back and report it; if not, the heartbeat deadline requeues it.
                worker = self.workers.get(rec.worker)
                if worker is None:
                    worker = self.workers[rec.worker] = WorkerEntry(rec.worker, ev.now)
                worker.assigned[(run.run_id, name, rec.attempt)] = ev.now
            elif rec.state == pb.RETRY_WAIT:
                task.retry_at = ev.now
                heapq.heappush(self._retries, (ev.now, next(self._seq), run.run_id, name, task.attempt))
            elif rec.state == pb.READY:
                self._push_ready(run, task)
            elif rec.state == pb.RECOVERING:  # its handler's answer was lost with the old coordinator
                task.recovered = True
                self._queue_recovery(run, task)
        for name in ev.order:
            task = run.tasks[name]
            task.waiting = sum(1 for d in task.deps if run.tasks[d].state not in _SATISFIED)
            if task.state == pb.PENDING and task.waiting == 0:
                self._make_ready(run, task, out)
        self._resume_fanouts(run, out)
        self._maybe_finish(run, ev.now, out)

    def _on_worker_connected(self, ev: WorkerConnected, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is None or worker.state in DEPARTED_WORKER_STATES:
            worker = self.workers[ev.worker_id] = WorkerEntry(ev.worker_id, ev.now)
        worker.name, worker.host, worker.slots = ev.name, ev.host, max(0, ev.slots)
        worker.handlers, worker.labels, worker.resources = ev.handlers, dict(ev.labels), ev.resources
        kinds = ev.allowed_code or frozenset(CODE_KINDS)
        worker.code_kinds = kinds if ev.accepts_pickled else kinds - {"pickle"}
        worker.memory_enforcement = ev.memory_enforcement
        worker.connected, worker.last_seen, worker.state = True, ev.now, "ready"
        worker.sent_code = set()  # a reconnecting worker may be a new process with an empty cache
        self._index_worker(worker)
        stale: list[AttemptKey] = []
        for key in ev.running:  # attempts it still runs after a coordinator restart or a blip
            task = self._current(key)
            if task is not None and task.state in _ACTIVE:
                worker.assigned.setdefault(key, ev.now)
            elif recovered_task(key[1]) is None:
                # Superseded while the worker was away (it was presumed lost, or the run
                # ended): its result would be dropped as stale, so free the slot now.
                stale.append(key)
        if stale:
            out.append(CancelAttempts(worker.worker_id, tuple(stale)))
        for key in worker.assigned:  # charge what it holds (restored attempts included)
            task = self._current(key)
            if task is not None:
                self.placement.hold(worker.worker_id, key, task.request)
            elif recovered_task(key[1]) is not None:
                self.placement.hold(worker.worker_id, key, _RECOVERY_REQUEST)

    def _on_heartbeat(self, ev: HeartbeatReceived, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is None or worker.state == "drained":
            return
        if worker.state == "lost":
            self._heard_from(worker, out)
            return
        worker.last_seen = ev.now
        worker.metrics = ev.metrics
        if ev.metrics is not None:
            self.placement.set_load(worker.worker_id, ev.metrics.cpu_percent)
        if ev.draining and worker.state == "ready":
            worker.state = "draining"
            self.placement.set_eligible(worker.worker_id, False)
        # An attempt the worker does not hold, that it has received (its heartbeat's count
        # covers it) or that was sent long enough ago to have arrived, was lost in transit
        # (a stream that broke mid-batch): requeue it. One still on its way is not lost: on an
        # overloaded coordinator, writes can lag placement by more than the grace.
        held = set(ev.running)
        on_their_way = ev.on_their_way
        grace = max(2.0, self.heartbeat_timeout_s / 2)
        for key, sent_at in list(worker.assigned.items()):
            if key not in held and key not in on_their_way and ev.now - sent_at > grace:
                self._unhold(worker, key)
                self._requeue(key, ev.now, out, reason="not held by its worker")

    def _on_heartbeat_pace(self, ev: HeartbeatPaceChanged, out: list[Action]) -> None:
        # The shell stretches the timeout with the fleet's heartbeat interval (see _heartbeats).
        self.heartbeat_interval_s = ev.interval_s
        self.heartbeat_timeout_s = ev.timeout_s

    def _heard_from(self, worker: WorkerEntry, out: list[Action]) -> None:
        """A worker we gave up on is alive after all: make it register again.

        Its attempts were requeued when it was lost, so its stream cannot simply carry
        on. Ending the stream makes the worker register afresh, reporting what it holds;
        a result of an attempt that was superseded is then fenced as stale, and the
        attempts themselves are cancelled (see ``_on_worker_connected``).
        """
        if worker.state == "lost" and not worker.reset_sent:
            worker.reset_sent = True
            log.warning("lost worker %s (%s) is alive again; asking it to register again", worker.name, worker.worker_id)
            out.append(ResetWorker(worker.worker_id, f"worker {worker.name} was presumed lost; register again"))

    def _on_started(self, ev: TaskStarted, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is not None and worker.state == "lost":
            self._heard_from(worker, out)
        task = self._current(ev.attempt)
        if task is None or task.state != pb.ASSIGNED:
            return
        run = self.runs[ev.attempt[0]]
        task.started_at = ev.at
        self._move(run, task, pb.RUNNING, out, "worker " + ev.worker_id)

    def _index_worker(self, worker: WorkerEntry) -> None:
        worker.credit = worker.slots + self._prefetch_for(worker)
        self.placement.upsert(
            worker.worker_id, slots=worker.slots, credit=worker.credit, resources=worker.resources,
            labels=worker.labels, handlers=worker.handlers, code_kinds=worker.code_kinds,
        )  # fmt: skip

    def _prefetch_for(self, worker: WorkerEntry) -> int:
        """Enough queued work to cover about PREFETCH_WORK_S per slot, at most ``prefetch``.

        Short tasks get a deep queue (the round trip would otherwise idle the worker);
        long ones get one spare each, so a worker that joins later still finds work.
        """
        if self.prefetch <= 0:
            return 0
        if worker.avg_task_s is None:
            return min(self.prefetch, max(1, worker.slots))
        wanted = math.ceil(worker.slots * PREFETCH_WORK_S / max(worker.avg_task_s, 1e-5))
        return max(1, min(self.prefetch, wanted))

    def _learn_duration(self, worker: WorkerEntry, ev: TaskSucceeded | TaskFailed) -> None:
        if not ev.started_at or ev.at < ev.started_at:
            return
        took = ev.at - ev.started_at
        worker.avg_task_s = took if worker.avg_task_s is None else 0.8 * worker.avg_task_s + 0.2 * took
        prefetch = self._prefetch_for(worker)
        old = worker.credit - worker.slots
        if worker.state not in DEPARTED_WORKER_STATES and abs(prefetch - old) >= max(1, old // 4):
            self._index_worker(worker)

    def _on_result(self, ev: TaskSucceeded | TaskFailed, out: list[Action]) -> None:
        worker = self.workers.get(ev.worker_id)
        if worker is not None:
            self._unhold(worker, ev.attempt)
            worker.last_seen = ev.now
            self._learn_duration(worker, ev)
            self._heard_from(worker, out)
        recovering = recovered_task(ev.attempt[1])
        if recovering is not None:
            self._on_recovery_result(ev, recovering, out)
            return
        task = self._current(ev.attempt)
        if task is None or task.state not in _ACTIVE:
            self.stale_results += 1
            # A repeat of an outcome already recorded (a worker re-sending after a reconnect)
            # is routine; a result for an attempt that was superseded is worth a log line.
            level = logging.DEBUG if task is not None and task.state in TERMINAL_TASK_STATES else logging.INFO
            log.log(level, "dropped stale result for attempt %s from worker %s", ev.attempt, ev.worker_id)
            return
        run = self.runs[ev.attempt[0]]
        if task.state == pb.ASSIGNED and ev.started_at:
            # A quick attempt ends before the worker reports its start (it waits a moment
            # first): the start is in the result. Logged, not recorded: the result's
            # record follows at once and supersedes a RUNNING one.
            entry = (ev.started_at, self._stimulus, run.run_id, task.name, task.attempt, pb.ASSIGNED, pb.RUNNING,
                     "worker " + ev.worker_id)  # fmt: skip
            self._log(entry)
            task.started_entry = entry
            task.state = pb.RUNNING
        task.worker = ev.worker_id
        task.finished_at = ev.at
        task.started_at = ev.started_at or task.started_at or ev.at
        if ev.telemetry is not None or task.telemetry is not None:
            # The last finished attempt's, even if it recorded nothing (an empty message
            # then replaces an earlier attempt's in the store).
            task.telemetry = ev.telemetry if ev.telemetry is not None else _NO_TELEMETRY
        if task.circuit:
            if isinstance(ev, TaskSucceeded) and not ev.fallback_used:
                self.breakers.record_success(task.circuit, ev.now)
            elif isinstance(ev, TaskSucceeded) or error_type_name(ev.error) != "CANCELLED":
                if self.breakers.record_failure(task.circuit, ev.now):
                    out.append(CircuitOpened(task.circuit, run.run_id, task.name, self.breakers.threshold_of(task.circuit)))
        if isinstance(ev, TaskSucceeded):
            # A skip or a fallback keeps the exception behind it as the task's error, with
            # its own type, so the run shows why; a flag says which of the two happened.
            task.error = None
            if ev.skipped or ev.fallback_used:
                task.error = pb.TaskError()
                if ev.cause is not None:
                    task.error.CopyFrom(ev.cause)
                if not task.error.type and not task.error.error_type:
                    set_error_type(task.error, "TASK_FAILURE")
                task.error.skipped, task.error.fallback_used = ev.skipped, not ev.skipped
            if task.fan is not None:  # a fanned-out task's split: its sub-tasks come next
                self._on_split(run, task, ev.result, ev.now, out)
                self._maybe_finish(run, ev.now, out)
                return
            task.result = None if ev.skipped else ev.result
            if ev.cache_hit:
                task.cache_hit = True
                run.cache_hits += 1
            if task.result is not None and task.result.artifact_ref:
                run.big_results = True
            self._move(run, task, pb.SKIPPED if ev.skipped else pb.SUCCEEDED, out)
            self._release_dependents(run, task, out)
        else:
            self._fail_attempt(run, task, ev.error, ev.now, out, ev.result)
        self._maybe_finish(run, ev.now, out)

    def _release_dependents(self, run: RunEntry, task: TaskEntry, out: list[Action]) -> None:
        """``task`` succeeded or was skipped: dependents with nothing else to wait for are READY."""
        for name in task.dependents:
            child = run.tasks[name]
            child.waiting -= 1
            if child.waiting == 0 and child.state == pb.PENDING:
                self._make_ready(run, child, out)

    def _fail_attempt(
        self, run: RunEntry, task: TaskEntry, error: pb.TaskError, now: float, out: list[Action],
        result: pb.Payload | None = None,
    ) -> None:  # fmt: skip
        """An attempt failed: retry after the backoff, ask the recovery handler, or fail the task.

        ``result`` is what the attempt returned all the same (a failed command's output): the
        last attempt's is kept with the task, beside its error.
        """
        task.error = error
        task.result = result
        task.failures += 1
        retryable = error_type_name(error) != "CANCELLED" and not error.non_retryable
        if retryable and task.failures <= self._retries_of(run, task):
            task.retry_at = now + self._retry_delay_s(task)
            self._move(run, task, pb.RETRY_WAIT, out)
            heapq.heappush(self._retries, (task.retry_at, next(self._seq), run.run_id, task.name, task.attempt))
        elif run.handler is not None and not task.recovered and error_type_name(error) != "CANCELLED":
            task.recovered = True
            task.worker = ""
            self._move(run, task, pb.RECOVERING, out)
            self._queue_recovery(run, task)
        else:
            self._fail_for_good(run, task, now, out)

    def _fail_for_good(self, run: RunEntry, task: TaskEntry, now: float, out: list[Action]) -> None:
        self._move(run, task, pb.FAILED, out)
        self._fail_dependents(run, task, out)
        if run.fail_fast:
            self._stop_run_after_failure(run, task, now, out)

    # ------------------------------------------------------------------ circuit breakers

    def _configure_circuits(self, run: RunEntry) -> None:
        ft = run.spec.fault_tolerance
        if not ft.circuit_breaker_enabled:
            return
        b = self.breakers
        threshold = ft.circuit_failure_threshold or b.threshold
        window_s = ft.circuit_window_s if ft.circuit_window_s > 0 else b.window_s
        open_s = ft.circuit_open_s if ft.circuit_open_s > 0 else b.open_s
        for circuit in {task.circuit for task in run.tasks.values()}:
            try:
                b.configure(circuit, threshold=threshold, window_s=window_s, open_s=open_s)
            except ValueError as exc:  # validated on submit; a restored old spec keeps the defaults
                log.warning("run %s: circuit %r: %s; using the defaults", run.run_id, circuit, exc)

    def _fail_circuit_open(self, run: RunEntry, task: TaskEntry, now: float, out: list[Action]) -> None:
        """The task's circuit is open: this attempt fails at once, without a worker."""
        snap = next((c for c in self.breakers.snapshot(now) if c.name == task.circuit), None)
        failures = snap.failures if snap is not None else 0
        task.attempt += 1
        task.worker = ""
        task.started_at = 0.0
        task.finished_at = now
        self._fail_attempt(
            run, task, task_error(
                "CIRCUIT_OPEN",
                message=f"circuit {task.circuit!r} is open ({failures} recent failures); the attempt was not run",
            ), now, out,
        )  # fmt: skip
        self._maybe_finish(run, now, out)

    @staticmethod
    def _retries_of(run: RunEntry, task: TaskEntry) -> int:
        return task.spec.retry.max_retries if run.retry_on_failure else 0

    def _retry_delay_s(self, task: TaskEntry) -> float:
        """The wait before the next retry: the task's backoff, capped, with jitter."""
        retry = task.spec.retry
        return backoff_delay_s(
            retry.backoff, retry.retry_delay_s, task.failures,
            max_retry_delay_s=retry.max_retry_delay_s, jitter=retry.jitter, rng=self.rng,
        )  # fmt: skip

    def _stop_run_after_failure(
        self, run: RunEntry, failed: TaskEntry, now: float, out: list[Action], *, why: str = ""
    ) -> None:
        """failure_isolation=False (or halt_pipeline): cancel every unfinished task; the run ends FAILED."""
        why = why or f"task {failed.name!r} failed and the run has failure_isolation off"
        self._cancel_unfinished(run, now, out, f"cancelled: {why}", set_error=True)

    def _on_cancel(self, ev: CancelRequested, out: list[Action]) -> None:
        run = self.runs.get(ev.run_id)
        if run is None or run.state in TERMINAL_RUN_STATES:
            return
        self._cancel_unfinished(run, ev.now, out, "cancelled by request", set_error=False)
        self._maybe_finish(run, ev.now, out, cancelled=True)

    def _cancel_unfinished(self, run: RunEntry, now: float, out: list[Action], why: str, *, set_error: bool) -> None:
        """Cancel every unfinished task of ``run`` and the attempts workers hold for them.

        The one path of a user's cancel and of a failure that stops the run; only the
        latter gives each task a CANCELLED error naming ``why`` (a cancelled task keeps
        the error it had, if any, on a user's cancel).
        """
        self._cancel_tasks(run, run.tasks.values(), now, out, why, set_error=set_error)

    def _cancel_tasks(self, run: RunEntry, tasks, now: float, out: list[Action], why: str, *, set_error: bool) -> None:
        """Cancel the unfinished ones of ``tasks``, and the attempts workers hold for them."""
        by_worker: dict[str, list[AttemptKey]] = {}
        for task in tasks:
            if task.state in TERMINAL_TASK_STATES:
                continue
            self._collect_attempt(run, task, by_worker)
            if set_error:
                task.error = task_error("CANCELLED", why)
            task.finished_at = now
            self._move(run, task, pb.CANCELLED, out, why)
        for worker_id, keys in by_worker.items():
            if worker_id in self.workers and self.workers[worker_id].connected:
                out.append(CancelAttempts(worker_id, tuple(keys)))

    @staticmethod
    def _collect_attempt(run: RunEntry, task: TaskEntry, by_worker: dict[str, list[AttemptKey]]) -> None:
        """Note the attempt (or recovery handler call) ``task`` has out, to cancel it."""
        if task.state in _ACTIVE and task.worker:
            by_worker.setdefault(task.worker, []).append((run.run_id, task.name, task.attempt))
        elif task.state == pb.RECOVERING:
            number, worker_id = run.recovering.pop(task.name, (0, ""))
            if worker_id:
                by_worker.setdefault(worker_id, []).append((run.run_id, recovery_name(task.name), number))

    def _on_tick(self, ev: Tick, out: list[Action]) -> None:
        now = ev.now
        while self._retries and self._retries[0][0] <= now:
            _, _, run_id, name, attempt = heapq.heappop(self._retries)
            run = self.runs.get(run_id)
            task = run.tasks.get(name) if run else None
            if task is not None and task.state == pb.RETRY_WAIT and task.attempt == attempt:
                self._move(run, task, pb.READY, out, "retry backoff over")
        while self._resource_waits and self._resource_waits[0][0] <= now:
            _, _, run_id, name = heapq.heappop(self._resource_waits)
            run = self.runs.get(run_id)
            task = run.tasks.get(name) if run else None
            if task is not None and task.state == pb.READY and task.wait_until:
                task.wait_until = 0.0
                error_type, why = self._why_never_runs(run, task)
                if why:
                    self._fail_unplaceable(run, task, error_type, why, now, out, waited=True)
        deadline = now - self.heartbeat_timeout_s
        for worker in self.workers.values():
            if worker.state not in DEPARTED_WORKER_STATES and worker.last_seen < deadline:
                self._lose_worker(worker, now, out)

    # ------------------------------------------------------------------ scheduling

    def schedule(self, now: float, out: list[Action] | None = None, *, stimulus_id: str = "schedule") -> list[Action]:
        """Place ready tasks on workers with credit and free resources; see ``_placement``.

        Ready tasks go in order of priority, then tasks whose inputs are big results, then
        critical-path length, then FIFO. A task
        that fits nowhere right now is set aside for the next pass; one that no registered
        worker could ever fit fails with RESOURCE_EXHAUSTION (after the run's
        ``wait_for_resources_s``).
        """
        if out is None:
            out = []
        self._now, self._stimulus = now, stimulus_id
        if self._to_judge and now >= self._settle_until:
            self._judge_ready(now, out)
        if self._recoveries:
            self._send_recoveries(now, out)
        index = self.placement
        deferred: list[tuple[int, int, int, str, str]] = []
        while self._ready and index.has_room():
            entry = heapq.heappop(self._ready)
            run = self.runs.get(entry[3])
            task = run.tasks.get(entry[4]) if run else None
            if task is None or task.state != pb.READY:
                continue  # cancelled or already handled: lazy deletion
            try:  # free unless raised (3.11): a bug placing one task fails its run, not the loop
                if task.circuit and self.breakers.state(task.circuit, now) == OPEN:
                    self._fail_circuit_open(run, task, now, out)
                    continue
                worker_id = None
                if not (run.max_parallel and run.inflight >= run.max_parallel) and run.within_limits(task):
                    spec = task.spec
                    kind = spec.WhichOneof("kind")
                    handler = spec.handler.name if kind == "handler" else ""
                    worker_id = index.pick(task.request, strategy=run.strategy, handler=handler, code=task.code)
                    if worker_id is not None and run.big_results:
                        tasks = run.tasks
                        holder = big_input_holder((tasks[d].worker, tasks[d].result) for d in task.deps)
                        if holder:
                            worker_id = index.prefer_holder(
                                holder, worker_id, task.request, handler=handler, code=task.code
                            )  # fmt: skip
                if worker_id is None:
                    deferred.append(entry)
                    if len(deferred) >= 1024:
                        break
                    continue
                # Asked only once a worker is found: a half-open circuit's one probe must run.
                if task.circuit and not self.breakers.allow(task.circuit, now):
                    self._fail_circuit_open(run, task, now, out)
                    continue
                self._assign(run, task, self.workers[worker_id], now, out)
            except Exception as exc:
                log.exception("run %s: internal error while scheduling task %r", run.run_id, task.name)
                out.extend(self.fail_run(run.run_id, f"internal error while scheduling task {task.name!r}: {exc!r}", now))
        for entry in deferred:
            heapq.heappush(self._ready, entry)
        return out

    def _judge_ready(self, now: float, out: list[Action]) -> None:
        """Fail (or start the wait of) READY tasks that no registered worker could ever fit."""
        if not self.placement.nodes:
            return  # nobody registered yet: workers may still be starting
        pending, self._to_judge = self._to_judge, []
        for run_id, name in pending:
            run = self.runs.get(run_id)
            task = run.tasks.get(name) if run else None
            if task is None or task.state != pb.READY or task.wait_until:
                continue
            error_type, why = self._why_never_runs(run, task)
            if not why:
                continue
            if run.wait_for_resources_s > 0:
                task.wait_until = now + run.wait_for_resources_s
                heapq.heappush(self._resource_waits, (task.wait_until, next(self._seq), run_id, name))
                log.info("run %s: task %r waits up to %.1fs for a worker: %s", run_id, name,
                         run.wait_for_resources_s, why)  # fmt: skip
            else:
                self._fail_unplaceable(run, task, error_type, why, now, out, waited=False)

    def _why_never_runs(self, run: RunEntry, task: TaskEntry) -> tuple[str, str]:
        """(error type, why) when no registered worker could ever run ``task``, else ("", "")."""
        why = run.beyond_limits(task) or self.placement.why_never_fits(task.request)
        if why:
            return "RESOURCE_EXHAUSTION", why
        spec = task.spec
        kind = spec.WhichOneof("kind")
        return self.placement.why_never_served(spec.handler.name if kind == "handler" else "", task.code)

    def _fail_unplaceable(
        self, run: RunEntry, task: TaskEntry, error_type: str, why: str, now: float, out: list[Action], *, waited: bool
    ) -> None:
        if error_type == "RESOURCE_EXHAUSTION":
            message = f"task {task.name!r} asks for {task.request.describe()}, but {why}"
            fields = {"required_resources": task.request.to_proto()}
        else:
            message, fields = f"task {task.name!r} cannot run: {why}", {}
        if waited:
            message += f" (waited {run.wait_for_resources_s:g}s for one to join)"
        task.error = task_error(error_type, message, non_retryable=True, **fields)
        task.result = None  # an earlier attempt's (a failed command's) is not this failure's
        task.finished_at = now
        self._move(run, task, pb.FAILED, out)
        self._fail_dependents(run, task, out)
        if run.fail_fast:
            self._stop_run_after_failure(run, task, now, out)
        self._maybe_finish(run, now, out)

    def _assign(self, run: RunEntry, task: TaskEntry, worker: WorkerEntry, now: float, out: list[Action]) -> None:
        task.attempt += 1
        task.worker = worker.worker_id
        task.started_at = 0.0
        key = (run.run_id, task.name, task.attempt)
        worker.assigned[key] = now
        self.placement.hold(worker.worker_id, key, task.request)
        # The shell commits this ASSIGNED record before it sends the Assign that follows.
        self._move(run, task, pb.ASSIGNED, out, "worker " + worker.worker_id)
        spec = task.spec
        upstream = tuple(run.tasks[d].result or pb.Payload() for d in spec.depends_on) + tuple(
            run.tasks[f.source_task].result or pb.Payload() for f in spec.flows
        )
        if task.part is not None:  # a fan-out's sub-task: its part in place of the first upstream result
            upstream = (task.part, *upstream[1:])
        code: tuple[pb.CodeBlob, ...] = ()
        code_hash = spec.python.code_hash if spec.WhichOneof("kind") == "python" else ""
        if code_hash and code_hash not in worker.sent_code:
            worker.sent_code.add(code_hash)
            code = (run.code[code_hash],)
        last_try = task.failures >= self._retries_of(run, task)
        out.append(Assign(worker.worker_id, key, spec, upstream, code, last_try, run.traceparent, run.principal))

    # ------------------------------------------------------------------ helpers

    def _current(self, key: AttemptKey) -> TaskEntry | None:
        run = self.runs.get(key[0])
        task = run.tasks.get(key[1]) if run else None
        if task is None or task.attempt != key[2]:
            return None
        return task

    def _requeue(self, key: AttemptKey, now: float, out: list[Action], *, reason: str) -> None:
        recovering = recovered_task(key[1])
        if recovering is not None:
            self._requeue_recovery(key, recovering, reason)
            return
        task = self._current(key)
        if task is None or task.state not in _ACTIVE:
            return
        log.warning("requeueing attempt %s: %s [%s]", key, reason, self._stimulus)
        task.worker = ""
        task.started_at = 0.0
        self._move(self.runs[key[0]], task, pb.READY, out, f"requeued: {reason}")

    def _lose_worker(self, worker: WorkerEntry, now: float, out: list[Action]) -> None:
        log.warning("worker %s (%s) lost: no word for %.1fs", worker.name, worker.worker_id, now - worker.last_seen)
        out.append(WorkerLost(worker.worker_id, worker.name, now - worker.last_seen, len(worker.assigned)))
        worker.state = "lost"
        worker.connected = False
        self.placement.remove(worker.worker_id)
        for key in list(worker.assigned):
            self._requeue(key, now, out, reason=f"worker {worker.name} lost")
        worker.assigned.clear()

    def _unhold(self, worker: WorkerEntry, key: AttemptKey) -> None:
        """The worker no longer holds this attempt: drop it and give its resources back."""
        if worker.assigned.pop(key, None) is not None:
            self.placement.release(worker.worker_id, key)

    def _fail_dependents(self, run: RunEntry, task: TaskEntry, out: list[Action]) -> None:
        stack = list(task.dependents)
        while stack:
            child = run.tasks[stack.pop()]
            if child.state == pb.PENDING:
                child.error = task_error("UPSTREAM_FAILED", f"upstream task {task.name!r} did not succeed")
                self._move(run, child, pb.UPSTREAM_FAILED, out)
                stack.extend(child.dependents)

    def _move(self, run: RunEntry, task: TaskEntry, to: int, out: list[Action], reason: str = "") -> None:
        """Move ``task`` to ``to`` (if ``_ALLOWED``), log it with ``reason``, record it."""
        frm = task.state
        if to not in _ALLOWED.get(frm, ()):
            raise InvalidTransition(
                f"task {task.name!r} of run {run.run_id}: {pb.TaskState.Name(frm)} -> {pb.TaskState.Name(to)}"
            )
        if not reason and to in ERROR_MOVES and task.error is not None:
            reason = f"{error_type_name(task.error)}: {task.error.message}"
        entry = (self._now, self._stimulus, run.run_id, task.name, task.attempt, frm, to, reason)
        self._log(entry)
        was_active = frm in _ACTIVE
        # Two references, no new tuple: the success path stays as cheap as it can.
        if to == pb.ASSIGNED:
            task.assigned_entry = entry
        elif to == pb.RUNNING:
            task.started_entry = entry
        elif was_active or (frm == pb.READY and to in _FAST_FAILS):
            # The attempt (or a fast fail on an open circuit) ended: keep its story with the row.
            if to != pb.SUCCEEDED:
                opened = (e for e in (task.assigned_entry, task.started_entry) if e is not None)
                task.history = (*task.history, *opened, entry)[-STORY_HISTORY_ENTRIES:]
            task.assigned_entry = task.started_entry = None
        task.state = to
        if to in _ACTIVE:
            if not was_active:
                run.inflight += 1
                run.charge(task, +1)
        elif was_active:
            run.inflight -= 1
            run.charge(task, -1)
        if to == pb.READY:
            self._push_ready(run, task)
        elif to in TERMINAL_TASK_STATES:
            self._count_terminal(run, task)
        out.append(
            TaskRecord(
                run.run_id, task.name, to, task.attempt, task.worker, task.started_at, task.finished_at,
                task.error, task.result if to == pb.SUCCEEDED or to == pb.MAPPED or to == pb.FAILED else None,
                self._stimulus,
                task.history, task.telemetry, task.cache_hit,
            )  # fmt: skip
        )
        if task.parent is not None and to in TERMINAL_TASK_STATES:
            self._child_finished(run, task, out)

    def _push_ready(self, run: RunEntry, task: TaskEntry) -> None:
        rank = task.cp
        tasks = run.tasks
        if run.big_results and any(tasks[d].result is not None and tasks[d].result.artifact_ref for d in task.deps):
            # Consume before producing more: the freed slot of the worker that just made the
            # big input goes to its consumer (locality), and the bytes are done with sooner.
            rank += _BIG_INPUTS_RANK
        heapq.heappush(self._ready, (-task.spec.priority, -rank, next(self._seq), run.run_id, task.name))
        if not task.wait_until:
            self._to_judge.append((run.run_id, task.name))

    @staticmethod
    def _count_terminal(run: RunEntry, task: TaskEntry) -> None:
        run.terminal += 1
        if task.state == pb.SUCCEEDED:
            run.succeeded += 1
        elif task.state in (pb.FAILED, pb.UPSTREAM_FAILED):
            run.failed += 1

    def _maybe_finish(self, run: RunEntry, now: float, out: list[Action], *, cancelled: bool = False) -> None:
        if run.state in TERMINAL_RUN_STATES or run.terminal < len(run.tasks):
            return
        if cancelled:
            run.state = pb.RUN_CANCELLED
        elif (run.fail_fast or run.halted) and run.failed:  # tasks were cancelled because one failed
            run.state = pb.RUN_FAILED
        # (Sub-tasks cancelled because a sibling failed leave the run FAILED, not CANCELLED.)
        elif any(t.state == pb.CANCELLED and t.parent is None for t in run.tasks.values()):
            run.state = pb.RUN_CANCELLED
        elif run.failed:
            run.state = pb.RUN_FAILED
        else:
            run.state = pb.RUN_SUCCEEDED
        run.finished_at = now
        out.append(self._run_record(run))

    def _run_record(self, run: RunEntry, spec: pb.PipelineSpec | None = None) -> RunRecord:
        return RunRecord(
            run.run_id, run.name, run.state, run.created_at, run.finished_at, len(run.tasks), spec,
            stimulus_id=self._stimulus,
        )  # fmt: skip

    # ------------------------------------------------------------------ containment

    def fail_run(self, run_id: str, reason: str, now: float, *, stimulus_id: str = "") -> list[Action]:
        """Force a run to RUN_FAILED after a bug while handling it; return what to record and cancel.

        An exception may have left the run half-changed (a task moved, its counters or a
        worker's hold not yet), so nothing here trusts the counters or the transition
        table: every unfinished task is FAILED with an ``INTERNAL`` error naming
        ``reason``, every attempt of the run that a worker holds is released and
        cancelled, and the counters are recounted. The records cover every task of the
        run and the run header with its spec, so the store ends up equal to memory
        whatever records the failed step lost. A run that is unknown yields nothing.
        """
        run = self.runs.get(run_id)
        if run is None:
            return []
        out: list[Action] = []
        self._now, self._stimulus = now, stimulus_id
        for worker in self.workers.values():
            keys = [key for key in worker.assigned if key[0] == run_id]
            for key in keys:
                self._unhold(worker, key)
            if keys and worker.connected:
                out.append(CancelAttempts(worker.worker_id, tuple(keys)))
        run.recovering.clear()
        run.inflight = 0
        run.used.clear()
        run.terminal = run.succeeded = run.failed = 0
        for task in run.tasks.values():
            if task.state not in TERMINAL_TASK_STATES:
                # Past the transition table on purpose (see above), but still in the story.
                self.transitions.append(
                    (now, stimulus_id, run_id, task.name, task.attempt, task.state, pb.FAILED, f"{INTERNAL_ERROR}: {reason}")
                )
                task.state = pb.FAILED
                task.error = task_error(INTERNAL_ERROR, reason, non_retryable=True)
                task.finished_at = now
            self._count_terminal(run, task)
        if run.state not in TERMINAL_RUN_STATES:
            run.state = pb.RUN_FAILED
            run.finished_at = now
        out.extend(self.iter_records(run_id))
        out.append(self._run_record(run, spec=run.spec))
        return out

    # ------------------------------------------------------------------ queries

    def _forget_run(self, run_id: str) -> None:
        """Drop a finished run from memory (the store still has it); a live run stays."""
        run = self.runs.get(run_id)
        if run is not None and run.state in TERMINAL_RUN_STATES:
            del self.runs[run_id]

    def _on_workers_forgotten(self, ev: WorkersForgotten, out: list[Action]) -> None:
        for worker_id in ev.worker_ids:
            worker = self.workers.get(worker_id)
            if worker is None or not self.is_forgettable(worker):
                continue  # gone already, or it came back after the operator looked
            if worker.state not in DEPARTED_WORKER_STATES:
                self._lose_worker(worker, ev.now, out)  # requeues what it held
            log.warning("forgetting unhealthy worker %s (%s) at an operator's request", worker.name, worker_id)
            del self.workers[worker_id]
            # A paused worker may still hold its stream: end it, so it registers afresh if it wakes.
            out.append(ResetWorker(worker_id, f"worker {worker.name} was forgotten by an operator; register again"))
