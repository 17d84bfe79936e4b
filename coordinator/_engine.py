"""The I/O shell around :class:`SchedulerState`: inbox, group commit, dispatch, watchers.

One loop owns the state machine. gRPC handlers only :meth:`Engine.post` events and wake
it. Each turn it drains every queued event, feeds them to the state machine, asks it to
schedule, commits all resulting records to the store in one transaction, and only then
sends assignments to workers and updates to watchers. While a commit is in flight new
events pile up and ride the next turn together: batching grows with load by itself and
costs nothing when idle.

Each event is posted with a ``stimulus_id`` naming its cause, cheap to make: the shell
already knows it (``"rpc-submit-<run>"``, ``"tick-<n>"``, ``"recovery-<run>"``,
``"evict-<run>"``; the servicers name worker messages and other RPCs). The state machine
stamps it on what the event causes, and :meth:`Engine.story` reads the result back.

Two kinds of failure are told apart. A bug while the state machine handles one event is
a bug in one run: that run is failed with an ``INTERNAL`` error
(:meth:`SchedulerState.fail_run`) and the loop goes on for every other run. A commit that
fails (:class:`StoreFault`, a full disk) is different: memory has moved past the store,
so nothing of the turn is acted on, pending submits get the fault, and the loop ends
with it; the :class:`~._server.Coordinator` waits for the store and builds a fresh
engine from it, as a restart would.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpipe._domain import TERMINAL_RUN_STATES
from xpipe._limits import shown
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, worker_pb2
from xpipe.telemetry._logformat import iso_time, log_ids

from ._events import (
    Action,
    Assign,
    CancelAttempts,
    DrainWorker,
    Event,
    HeartbeatPaceChanged,
    ResetWorker,
    RunEvicted,
    RunRecord,
    RunRestored,
    RunSubmitted,
    StoryEntry,
    TaskRecord,
    Tick,
    task_info,
)
from ._artifacts import needs_shaping, shape_results
from ._heartbeats import DEFAULT_MAX_HEARTBEATS_PER_S, HeartbeatPacer
from ._recovery_codec import PICKLE_CODEC
from ._state import SchedulerState
from ._story import story_from_records
from ._store import Store, StoreFault
from ._task_checkpoints import TaskCheckpointBook
from ._validate import validate_spec

if TYPE_CHECKING:  # OpenTelemetry is imported only when metrics are on
    from ._alerting import Alerting
    from ._lineage import DataTap
    from ._metrics import CoordinatorMetrics

__all__ = ["Engine", "EngineConfig", "InternalError", "assignment_bytes", "estimate_run_bytes"]

log = logging.getLogger(__name__)


#: The key of ``Assignment.task`` on the wire: its field number, wire type 2 (length-delimited).
_TASK_KEY = bytes([worker_pb2.Assignment.DESCRIPTOR.fields_by_name["task"].number << 3 | 2])
#: The key of ``Assignment.traceparent`` (length-delimited too).
_TRACEPARENT_KEY = bytes([worker_pb2.Assignment.DESCRIPTOR.fields_by_name["traceparent"].number << 3 | 2])


def _varint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def assignment_bytes(action: Assign, checkpoint: bytes = b"") -> bytes:
    """A serialized ``Assignment`` for ``action``, its TaskSpec serialized from the run's spec.

    Building an ``Assignment`` message copied the TaskSpec into it only to serialize it
    again; here the spec is serialized once and appended as field ``task`` (fields of a
    message may come in any order on the wire). ~6.3 -> ~4.6 µs per task in a batch. The
    run's signed principal comes already encoded (``RunEntry.principal``, once per run), and
    so does ``checkpoint``, the field ``Assignment.checkpoint`` (``_task_checkpoints``).
    """
    run_id, task, attempt = action.attempt
    head = worker_pb2.Assignment(
        attempt=worker_pb2.AttemptRef(run_id=run_id, task=task, attempt=attempt),
        upstream=action.upstream,
        last_try=action.last_try,
    ).SerializeToString()
    spec = action.task.SerializeToString()
    if action.traceparent:  # only traced runs pay for it
        parent = action.traceparent.encode()
        return b"".join(
            (head, _TASK_KEY, _varint(len(spec)), spec, _TRACEPARENT_KEY, _varint(len(parent)), parent, action.principal,
             checkpoint)
        )
    return b"".join((head, _TASK_KEY, _varint(len(spec)), spec, action.principal, checkpoint))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Scheduling knobs of one coordinator."""

    #: Most assignments a worker may hold beyond its slots (hides the round trip for short
    #: tasks); each worker gets what about 20 ms of its tasks need, from 1 up to this.
    prefetch: int = 64
    #: A worker unheard of for this long is lost; its attempts go to other workers.
    heartbeat_timeout_s: float = 10.0
    #: How often workers send heartbeats (told to them on registration).
    heartbeat_interval_s: float = 1.0
    #: The fleet's heartbeats a second at most: a big fleet's interval (and timeout) stretch
    #: to keep under it (see ``_heartbeats``); 0: every worker beats at ``heartbeat_interval_s``.
    max_heartbeats_per_s: float = DEFAULT_MAX_HEARTBEATS_PER_S
    #: How often timers (retries, heartbeat deadlines) are checked.
    tick_interval_s: float = 0.1
    #: Directory for results too big to travel inline (workers write, the coordinator reads);
    #: empty keeps every result inline.
    artifact_dir: str = ""
    #: Finished runs are kept in memory for fast GetRun up to about this many bytes (an
    #: estimate, :func:`estimate_run_bytes`); older ones are read from the store. The
    #: newest finished run always stays, however big.
    finished_runs_memory_bytes: int = 64 * 1024 * 1024
    #: Where this coordinator's spans go (:class:`xpipe.telemetry._tracing.Tracing`); None: tracing off.
    tracing: Any = None
    #: Signs each run's principal (:class:`._trust.RunSigner`); None: assignments go unsigned
    #: (workers refuse them). :class:`~._server.Coordinator` always sets one.
    signer: Any = None


#: Memory a task of a finished run costs beyond its spec's and result's bytes: its
#: TaskEntry, its TaskSpec message object, dependency lists and request. Measured on
#: 20,000-task no-op runs (see ``bench`` notes in docs/performance.md).
TASK_OVERHEAD_BYTES = 1900


def estimate_run_bytes(run) -> int:
    """A cheap estimate of what a finished run holds in memory, computed once when it ends."""
    results = 0
    for task in run.tasks.values():
        if task.result is not None:
            results += len(task.result.data)
    return run.spec.ByteSize() + results + TASK_OVERHEAD_BYTES * len(run.tasks)


class InternalError(RuntimeError):
    """The coordinator failed handling a request's run (a bug): answered as gRPC INTERNAL."""


@dataclass(slots=True)
class _Session:
    """One connected worker stream: what the engine sends to it goes through ``outbox``."""

    worker_id: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    #: Set when the engine ends this stream on purpose: the status the worker is told.
    reset_reason: str = ""
    #: Start of the stimulus ids of this stream's messages (``"ws-<worker>-<stream>."``).
    stimulus_prefix: str = ""
    #: Assignments queued on this stream so far, and each unconfirmed attempt's number among
    #: them: a heartbeat's ``assignments_received`` confirms those it covers (see :meth:`confirm`).
    queued: int = 0
    unconfirmed: dict = field(default_factory=dict)
    #: Whether the worker's heartbeats count what it received: None until its first one says;
    #: False (an older worker) stops the numbering, which nothing would ever confirm.
    counts: bool | None = None

    def confirm(self, received: int) -> frozenset:
        """Forget the attempts the worker has received (``received`` counts them); the rest,
        still on their way to it, are returned: they must not be taken for lost."""
        unconfirmed = self.unconfirmed
        for key in [key for key, number in unconfirmed.items() if number <= received]:
            del unconfirmed[key]
        return frozenset(unconfirmed)


class Engine:
    """Args:
        metrics: fed once per turn when ``--metrics-listen`` is set; None costs one
            attribute check per turn.
    """

    def __init__(self, store: Store, config: EngineConfig = EngineConfig(), *, metrics: CoordinatorMetrics | None = None):
        self.store = store
        self.config = config
        self.metrics = metrics
        self.state = SchedulerState(
            prefetch=config.prefetch, heartbeat_timeout_s=config.heartbeat_timeout_s,
            heartbeat_interval_s=config.heartbeat_interval_s, recovery_codec=PICKLE_CODEC,
        )
        self.sessions: dict[str, _Session] = {}
        self._watchers: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._wants_tasks: set[asyncio.Queue] = set()  # watchers that want each task change
        #: run_id -> name sets of changed tasks, one per dashboard stream (see :meth:`track_changes`).
        self._changed_names: dict[str, list[set[str]]] = {}
        self._inbox: list[Event] = []
        self._submits: dict[str, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._finished: OrderedDict[str, int] = OrderedDict()  # run_id -> estimated bytes
        self._finished_bytes = 0
        self._stopping = False
        self.turns = 0
        #: What ended the loop (a StoreFault, or a bug the engine cannot contain).
        self.error: BaseException | None = None
        #: Set while the store refuses writes: this engine takes no submit and no worker.
        self.fault: StoreFault | None = None
        #: Events whose handling raised, contained (for tests and operators).
        self.contained = 0
        self._dispatched_any = False
        #: Audit and lineage of marked tasks (``_lineage.DataTap``, set by the Coordinator);
        #: runs without marks cost one dict check per turn.
        self.tap: DataTap | None = None
        #: Alert rules (``_alerting.Alerting``, set by the Coordinator); without an alerting
        #: config anywhere it costs one attribute check per turn.
        self.alerting: Alerting | None = None
        #: Tasks' saved states (``xpipe.checkpoint``), sent with their next attempt.
        self.checkpoints = TaskCheckpointBook(store, self.state)
        #: The heartbeat interval workers are told and the timeout in effect (see ``_heartbeats``).
        self.pacer = HeartbeatPacer(config.heartbeat_interval_s, config.heartbeat_timeout_s, config.max_heartbeats_per_s)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Resume every unfinished run from the store, then start the loops."""
        now = time.time()
        if self.metrics is not None:
            self.metrics.reset()
        unfinished = await self.store.load_unfinished()
        await self.checkpoints.restore(s.header.run_id for s in unfinished if s.spec is not None)
        for stored in unfinished:
            if stored.spec is None:
                log.error("run %s has no stored spec; it cannot be resumed", stored.header.run_id,
                          extra=log_ids(run_id=stored.header.run_id))
                continue
            order = tuple(validate_spec(stored.spec, restored=True))
            run_id = stored.header.run_id
            if self.config.signer is not None:  # signed by another coordinator's key, maybe
                self.config.signer.resign(stored.spec, run_id)
            if self.tap is not None:
                self.tap.watch(run_id, stored.spec)
            if self.alerting is not None:
                self.alerting.watch_run(run_id, stored.spec)
            if self.metrics is not None:
                self.metrics.restored(run_id, stored.tasks, now)
            self.post(
                RunRestored(now, run_id, stored.spec, order, stored.header.created_at, stored.tasks,
                            stimulus_id=f"recovery-{run_id}")
            )  # fmt: skip
            log.info("resuming run %s (%s)", stored.header.run_id, stored.header.name,
                     extra=log_ids(run_id=run_id))  # fmt: skip
        self._tasks = [
            asyncio.create_task(self._loop(), name="xpipe-engine"),
            asyncio.create_task(self._ticker(), name="xpipe-ticker"),
        ]

    async def wait(self) -> None:
        """Return when the loops end; raises what ended them (a store failure, say)."""
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        """Stop the loops (idempotent); outstanding submits fail with an error."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                if result is not self.error:  # that one was logged when it happened
                    log.error("engine loop ended with an error", exc_info=result)
        for fut in self._submits.values():
            if not fut.done():
                fut.set_exception(RuntimeError("coordinator is shutting down"))
        for session in self.sessions.values():
            session.outbox.put_nowait(None)
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(None)

    # ------------------------------------------------------------------ inputs

    def post(self, event: Event) -> None:
        self._inbox.append(event)
        self._wake.set()

    async def submit(
        self, spec: pb.PipelineSpec, *, idempotency_key: str = "", principal: tuple[str, tuple[str, ...]] | None = None
    ) -> str:
        """Validate, persist and start a run; returns once the run is durable.

        Args:
            principal: (name, code grants) of the submitter; the run's ``PipelineSpec.principal``
                is overwritten with it, signed once its id is known (never what the client sent).
        """
        if self.fault is not None:
            raise self.fault
        order = tuple(validate_spec(spec))
        run_id = uuid.uuid4().hex[:16] if not idempotency_key else uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex[:16]
        if run_id in self.state.runs:
            return run_id
        pending = self._submits.get(run_id)
        if pending is not None:  # the same submit retried while the first is being committed
            await asyncio.shield(pending)
            return run_id
        spec.ClearField("principal")  # the coordinator's to set, not the client's
        if principal is not None and self.config.signer is not None:
            spec.principal.CopyFrom(self.config.signer.sign(principal[0], principal[1], run_id))
        fut = asyncio.get_running_loop().create_future()
        self._submits[run_id] = fut
        if self.tap is not None:
            self.tap.watch(run_id, spec)
        if self.alerting is not None:
            self.alerting.watch_run(run_id, spec)
        self.post(RunSubmitted(time.time(), run_id, spec, order, stimulus_id=f"rpc-submit-{run_id}"))
        try:
            await fut
        finally:
            self._submits.pop(run_id, None)
        return run_id

    def connect_worker(self, worker_id: str) -> _Session:
        """A worker stream opened; raises :class:`StoreFault` while the store refuses writes."""
        if self.fault is not None:
            raise self.fault
        old = self.sessions.get(worker_id)
        if old is not None:
            old.outbox.put_nowait(None)  # a stale stream of the same worker ends
        session = self.sessions[worker_id] = _Session(worker_id)
        return session

    def disconnect_worker(self, session: _Session) -> bool:
        """Forget a stream; False if a newer stream of the same worker replaced it."""
        if self.sessions.get(session.worker_id) is session:
            del self.sessions[session.worker_id]
            return True
        return False

    def watch(self, run_id: str, *, tasks: bool = True) -> asyncio.Queue:
        """Subscribe to a run's events; ``tasks=False`` gets summaries only (cheaper)."""
        q: asyncio.Queue = asyncio.Queue()
        self._watchers[run_id].add(q)
        if tasks:
            self._wants_tasks.add(q)
        return q

    def track_changes(self, run_id: str) -> set[str]:
        """A set the engine adds the names of the run's changed tasks to (the caller clears it).

        The cheapest hook for a dashboard stream: a set add per changed task of a watched
        run, no message built; the stream reads the tasks' entries when it sends. Pair it
        with a summary-only :meth:`watch` for wake-ups, and call :meth:`untrack_changes`.
        """
        names: set[str] = set()
        self._changed_names.setdefault(run_id, []).append(names)
        return names

    def untrack_changes(self, run_id: str, names: set[str]) -> None:
        sets = self._changed_names.get(run_id)
        if sets is not None:
            sets[:] = [s for s in sets if s is not names]
            if not sets:
                del self._changed_names[run_id]

    def unwatch(self, run_id: str, q: asyncio.Queue) -> None:
        self._wants_tasks.discard(q)
        queues = self._watchers.get(run_id)
        if queues is not None:
            queues.discard(q)
            if not queues:
                del self._watchers[run_id]

    # ------------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            ticks += 1
            now = time.time()
            self._pace_heartbeats(now, ticks)
            self.post(Tick(now, stimulus_id=f"tick-{ticks}"))

    def _pace_heartbeats(self, now: float, ticks: int) -> None:
        """Stretch or shorten the fleet's heartbeat interval with its size; tell every stream."""
        pacer = self.pacer
        timeout_s = pacer.timeout_in_effect_s
        settings = pacer.update(now, len(self.sessions))
        if settings is not None or pacer.timeout_in_effect_s != timeout_s:
            self.post(HeartbeatPaceChanged(now, pacer.announced.interval_s, pacer.timeout_in_effect_s,
                                           stimulus_id=f"tick-{ticks}"))  # fmt: skip
        if settings is not None:
            kept = pacer.timeout_in_effect_s
            log.info("heartbeat interval now %.3g s, timeout %.3g s%s (%d workers, at most %g heartbeats/s)",
                     settings.interval_s, settings.timeout_s,
                     f" ({kept:.3g} s kept for one old timeout)" if kept > settings.timeout_s else "",
                     len(self.sessions), pacer.max_per_s)  # fmt: skip
            message = settings.message()
            for session in self.sessions.values():
                session.outbox.put_nowait(message)

    async def _loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._turn()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # The turn's actions are not carried out: memory is ahead of the store now.
                self.error = exc
                if isinstance(exc, StoreFault):
                    self.fault = exc  # submits and workers that come before the supervisor are refused too
                    log.error("store commit failed; this engine stops: %s", exc)
                else:
                    log.critical("engine turn failed; coordinator cannot go on", exc_info=True)
                for fut in self._submits.values():
                    if not fut.done():
                        fut.set_exception(exc)
                raise

    async def _turn(self) -> None:
        events, self._inbox = self._inbox, []
        if not events:
            return
        self.turns += 1
        state = self.state
        actions: list[Action] = []
        submitted: list[str] = []
        failed_submits: dict[str, str] = {}
        for event in events:
            try:  # free unless raised (3.11)
                state.handle(event, actions)
            except Exception as exc:
                reason = self._contain(event, exc, actions)
                if isinstance(event, RunSubmitted):
                    failed_submits[event.run_id] = reason
            if isinstance(event, RunSubmitted):
                submitted.append(event.run_id)
        now = time.time()
        try:
            state.schedule(now, actions, stimulus_id=f"schedule-{self.turns}")
        except Exception:
            # Bugs placing one task fail that run inside schedule(); this one named no run.
            self.contained += 1
            log.exception("internal error while scheduling (no run to blame); the next turn schedules again")
        records = [a for a in actions if isinstance(a, (RunRecord, TaskRecord))]
        numbered = self._number_assignments(actions)
        commit_s = -1.0
        if records:
            began = time.perf_counter()
            try:
                await self.store.commit(records)
            except StoreFault:
                raise
            except Exception as exc:
                raise StoreFault.wrap(exc) from exc
            commit_s = time.perf_counter() - began
        for run_id in submitted:
            fut = self._submits.get(run_id)
            if fut is not None and not fut.done():
                if run_id in failed_submits:
                    fut.set_exception(InternalError(failed_submits[run_id]))
                else:
                    fut.set_result(run_id)
        self._dispatch(actions, numbered)
        if records:
            self._notify(records)
            if self.tap is not None and self.tap.runs:
                self.tap.observe(records, state)
        if self.metrics is not None:
            self.metrics.turn(actions, state.runs, now, commit_s)
        alerting = self.alerting
        if alerting is not None and alerting.active:
            try:
                alerting.observe(actions, state, now)
            except Exception:  # a bug in a rule must not stop scheduling
                log.exception("alerting failed on turn %d; its alerts are lost", self.turns)

    def _contain(self, event: Event, exc: Exception, actions: list[Action]) -> str:
        """A bug handling ``event``: fail its run (if it names one) and go on; return why."""
        self.contained += 1
        run_id = getattr(event, "run_id", "") or (event.attempt[0] if hasattr(event, "attempt") else "")
        stimulus_id = event.stimulus_id
        if not run_id:
            log.error("[%s] internal error handling %r; the event is dropped", stimulus_id, event, exc_info=exc)
            return f"internal error: {exc!r}"
        reason = f"internal error in the coordinator handling {type(event).__name__}: {exc!r}"
        log.error("[%s] run %s failed: internal error handling %r", stimulus_id, run_id, event, exc_info=exc,
                  extra=log_ids(run_id=run_id, stimulus_id=stimulus_id))
        try:
            actions.extend(self.state.fail_run(run_id, reason, event.now, stimulus_id=stimulus_id))
        except Exception as again:
            raise RuntimeError(f"could not fail run {run_id} after an internal error") from again
        return f"run {run_id} failed: {reason}"

    def _number_assignments(self, actions: list[Action], worker_id: str = "") -> dict[str, _Session]:
        """Number this turn's assignments on their streams (all, or ``worker_id``'s); return the sessions used.

        Done before the turn's commit, not after it: a heartbeat read while the commit is
        awaited must find them on their way. Numbered at dispatch, they were neither held nor
        on their way to a heartbeat that came meanwhile, and a commit longer than the grace
        (a big submit on a loaded machine) had them requeued as lost.
        """
        sessions = self.sessions
        numbered: dict[str, _Session] = {}
        for action in actions:
            if isinstance(action, Assign) and (not worker_id or action.worker_id == worker_id):
                session = sessions.get(action.worker_id)
                if session is not None and session.counts is not False:  # numbered in stream order, for heartbeats
                    session.queued += 1
                    session.unconfirmed[action.attempt] = session.queued
                    numbered[action.worker_id] = session
        return numbered

    def _dispatch(self, actions: list[Action], numbered: dict[str, _Session]) -> None:
        batches: dict[str, worker_pb2.AssignmentBatchView] = {}
        traced: dict[str, list[Assign]] | None = {} if self.config.tracing is not None else None
        checkpoints = self.checkpoints
        sessions = self.sessions
        for action in actions:
            if isinstance(action, Assign):
                batch = batches.get(action.worker_id)
                if batch is None:
                    batch = batches[action.worker_id] = worker_pb2.AssignmentBatchView()
                batch.code.extend(action.code)
                batch.assignments.append(assignment_bytes(action, checkpoints.field(action.attempt) if checkpoints else b""))
                if traced is not None and action.traceparent:
                    traced.setdefault(action.traceparent, []).append(action)
            elif isinstance(action, CancelAttempts):
                self._send(
                    action.worker_id,
                    worker_pb2.CoordinatorMessage(
                        cancel=worker_pb2.Cancel(
                            attempts=[worker_pb2.AttemptRef(run_id=r, task=t, attempt=a) for r, t, a in action.attempts]
                        )
                    ),
                )
            elif isinstance(action, DrainWorker):
                self._send(action.worker_id, worker_pb2.CoordinatorMessage(drain=worker_pb2.Drain()))
            elif isinstance(action, ResetWorker):
                session = self.sessions.get(action.worker_id)
                if session is not None:
                    session.reset_reason = action.reason
                    # The reason goes as data first: a stream's final status can lose it.
                    session.outbox.put_nowait(worker_pb2.CoordinatorMessage(reset=worker_pb2.Reset(reason=action.reason)))
                    session.outbox.put_nowait(None)  # its stream ends; the worker registers again
        if batches and not self._dispatched_any:
            # Failover time is measured from a kill to this line of the new leader.
            self._dispatched_any = True
            log.info("first assignment dispatched at %s", iso_time(time.time()))
        if batches and self.metrics is not None:
            self.metrics.dispatched(len(b.assignments) for b in batches.values())
        for worker_id, batch in batches.items():
            session = sessions.get(worker_id)
            if session is not None and session.counts is not False and session is not numbered.get(worker_id):
                # The worker connected again during the commit: number them on the new stream.
                self._number_assignments(actions, worker_id)
            # Same wire format as CoordinatorMessage (the worker reads it as the view too).
            self._send(worker_id, worker_pb2.CoordinatorMessageView(assignments=batch))
        if traced:
            self._trace_assignments(traced)

    def _trace_assignments(self, traced: dict[str, list[Assign]]) -> None:
        """Note this turn's assignments of each traced run for its ``coordinator.assign`` span.

        The span is made later, on the export thread: one per run and export interval
        (200 ms by default), naming the attempts assigned in it. With a slot per worker a
        turn assigns one or two tasks, and an OTel SDK span per turn cost ~70 µs; a task
        now costs a few words in a list. The assignments are already on their way, so
        tracing never delays dispatch.
        """
        tracing = self.config.tracing
        for traceparent, assigns in traced.items():
            run_id = assigns[0].attempt[0]
            run = self.state.runs.get(run_id)
            # "task#attempt": task names hold no whitespace (validated at submit).
            names = [f"{a.attempt[1]}#{a.attempt[2]}" for a in assigns]
            tracing.note_assigned(traceparent, run_id, run.name if run else "", names, len(assigns))

    def _send(
        self, worker_id: str, message: worker_pb2.CoordinatorMessage | worker_pb2.CoordinatorMessageView
    ) -> None:
        session = self.sessions.get(worker_id)
        if session is None:
            # The worker's stream is gone; the heartbeat deadline will requeue its attempts.
            log.info("worker %s has no stream; message dropped", worker_id)
            return
        session.outbox.put_nowait(message)

    def _notify(self, records: list[Action]) -> None:
        changed: dict[str, list[pipeline_pb2.TaskInfo]] = defaultdict(list)
        finished: list[str] = []
        want = {run_id for run_id, queues in self._watchers.items() if not queues.isdisjoint(self._wants_tasks)}
        tracked = self._changed_names
        for rec in records:
            if isinstance(rec, TaskRecord):
                if rec.run_id in want:
                    changed[rec.run_id].append(task_info(rec))
                elif rec.run_id in self._watchers:
                    changed.setdefault(rec.run_id, [])
                if tracked and rec.run_id in tracked:
                    for names in tracked[rec.run_id]:
                        names.add(rec.name)
            elif rec.state in TERMINAL_RUN_STATES:
                finished.append(rec.run_id)
                changed.setdefault(rec.run_id, [])
        for run_id, infos in changed.items():
            queues = self._watchers.get(run_id)
            run = self.state.runs.get(run_id)
            if not queues or run is None:
                continue
            summary = run.summary()
            full = pipeline_pb2.RunEvent(summary=summary, changed=infos)
            for q in queues:
                q.put_nowait(full if q in self._wants_tasks else pipeline_pb2.RunEvent(summary=summary))
        if finished:
            self._remember_finished(finished)

    def _remember_finished(self, run_ids: list[str]) -> None:
        """Keep finished runs for fast reads, oldest forgotten first past the byte budget."""
        self.checkpoints.drop_runs(run_ids)
        for run_id in run_ids:
            run = self.state.runs.get(run_id)
            if run is None or run_id in self._finished:
                continue
            size = estimate_run_bytes(run)
            self._finished[run_id] = size
            self._finished_bytes += size
        budget = self.config.finished_runs_memory_bytes
        while self._finished_bytes > budget and len(self._finished) > 1:
            old, size = self._finished.popitem(last=False)
            self._finished_bytes -= size
            # Through the inbox, like every other change: handled (and contained) next turn.
            self.post(RunEvicted(time.time(), old, stimulus_id=f"evict-{old}"))

    def drop_finished(self, run_ids: list[str]) -> None:
        """Forget finished runs kept in memory, so reads go to the store (after gc or forgetting)."""
        for run_id in run_ids:
            size = self._finished.pop(run_id, None)
            if size is not None:
                self._finished_bytes -= size
            if run_id in self.state.runs:  # the state machine drops only a finished run
                self.post(RunEvicted(time.time(), run_id, stimulus_id=f"governance-{run_id}"))

    # ------------------------------------------------------------------ queries

    async def run_info(
        self, run_id: str, *, include_results: bool, only_task: str = "", inline_max_bytes: int = 0,
        accept_zstd: bool = True, shape: bool = True,
    ) -> pipeline_pb2.RunInfo | None:  # fmt: skip
        """The run's summary and tasks (just ``only_task`` if given), with results if asked.

        Results are shaped for the reader (:func:`~._artifacts.shape_results`): artifacts
        up to ``inline_max_bytes`` inlined (0: all), zstd decompressed unless
        ``accept_zstd``. ``shape=False`` leaves them as recorded (``GetArtifact``).

        Raises:
            ResultDataLoss: a result the reader needs decompressed is corrupt.
        """
        info = await self._run_info(run_id, include_results=include_results)
        if info is not None and only_task:
            wanted = [t for t in info.tasks if t.name == only_task]
            del info.tasks[:]
            info.tasks.extend(wanted)
        if info is not None and include_results and shape:
            results = [t.result for t in info.tasks if t.HasField("result")]
            if needs_shaping(results, accept_zstd=accept_zstd):
                await asyncio.to_thread(
                    shape_results, results, self.config.artifact_dir,
                    inline_max_bytes=inline_max_bytes, accept_zstd=accept_zstd,
                )  # fmt: skip
        return info

    async def story(self, run_id: str, task: str = "") -> list[StoryEntry] | None:
        """The story of a run (of one ``task`` if given): its task moves, oldest first.

        From the transition log while the run is in memory, else rebuilt from the store
        (:func:`story_from_records`). None for an unknown run; :class:`LookupError`
        naming the task for a task the run does not have.
        """
        run = self.state.runs.get(run_id)
        if run is not None:
            if task and task not in run.tasks:
                raise LookupError(f"run {run_id} has no task {shown(task)}")
            return self.state.story(run_id, task)
        stored = await self.store.get_run(run_id)
        if stored is None:
            return None
        if task and task not in stored.tasks and (stored.spec is None or all(t.name != task for t in stored.spec.tasks)):
            raise LookupError(f"run {run_id} has no task {shown(task)}")
        return story_from_records(stored.tasks.values(), task)

    async def _run_info(self, run_id: str, *, include_results: bool) -> pipeline_pb2.RunInfo | None:
        run = self.state.runs.get(run_id)
        if run is not None:
            infos = [task_info(rec, include_results) for rec in self.state.iter_records(run_id)]
            return pipeline_pb2.RunInfo(summary=run.summary(), tasks=infos)
        stored = await self.store.get_run(run_id, with_results=include_results)
        if stored is None:
            return None
        h = stored.header
        infos = [task_info(rec, include_results) for rec in stored.tasks.values()]
        known = {i.name for i in infos}
        if stored.spec is not None:
            infos.extend(
                pipeline_pb2.TaskInfo(name=t.name, state=pb.CANCELLED if h.state == pb.RUN_CANCELLED else pb.PENDING)
                for t in stored.spec.tasks
                if t.name not in known
            )
        summary = pipeline_pb2.RunSummary(
            run_id=h.run_id, pipeline=h.name, state=h.state, created_at=h.created_at, finished_at=h.finished_at,
            total_tasks=h.total,
            succeeded_tasks=sum(1 for i in infos if i.state == pb.SUCCEEDED),
            failed_tasks=sum(1 for i in infos if i.state in (pb.FAILED, pb.UPSTREAM_FAILED)),
            cache_hits=sum(1 for i in infos if i.cache_hit),
        )  # fmt: skip
        return pipeline_pb2.RunInfo(summary=summary, tasks=infos)



def inline_artifacts(payloads: list[pb.Payload], artifact_dir: str) -> None:
    """Replace artifact references with the bytes they name, so any client can read results.

    Only files inside ``artifact_dir`` are read: a reference is data from a worker, and the
    coordinator must not serve arbitrary files on its behalf.
    """
    shape_results(payloads, artifact_dir)
