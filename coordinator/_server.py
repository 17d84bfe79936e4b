"""gRPC servicers of the coordinator: thin translators between the wire and the engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from xpipe._limits import KEEPALIVE_TIME_MS, MAX_LIST_RUNS, MAX_MESSAGE_BYTES, MAX_SLOTS, MIN_PING_INTERVAL_MS
from xpipe._limits import shown as quoted
from xpipe._proto import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, governance_pb2, governance_pb2_grpc, insights_pb2, insights_pb2_grpc, stream_pb2, stream_pb2_grpc
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc, worker_pb2, worker_pb2_grpc
from xpipe._proto import autoscale_pb2, autoscale_pb2_grpc, debug_pb2, debug_pb2_grpc
from xpipe.security._principal import DEFAULT_NAMESPACE
from xpipe.security._atrest import at_rest
from xpipe.security._rbac import DEFAULT_POLICY, Policy
from xpipe._domain import REJECTED_FIELD, REJECTION_KIND_KEY
from xpipe.errors import PipelineValidationError
from xpipe.telemetry._tracing import check_trace_context

from xpipe._backoff import Backoff

from ._admin import AdminServicer, InstallRequests
from ._artifacts import ResultDataLoss, accepts_zstd
from ._artifacts_service import serve_artifact
from ._audit_service import AuditServicer
from ._autoscale_service import AutoscaleServicer
from ._auditlog import AuditLog, audit_local_calls
from ._authn import CallAuth, NamespaceCache, Security
from ._caller import caller
from ._lineage import DataTap
from ._engine import Engine, EngineConfig, InternalError
from ._governance import GovernanceServicer
from ._alerting import Alerting
from ._insights_service import InsightsServicer
from ._debug_service import DebugServicer
from ._stream_service import StreamServicer
from ._membroker import MemoryBroker
from ._logs import LogFollower, TaskLogStore, check_log_batch
from ._guard import CallGuard, GuardedRegistrar, Malformed, abort_malformed, checks_itself
from ._events import (
    CancelRequested,
    HeartbeatReceived,
    TaskFailed,
    TaskReleased,
    TaskStarted,
    TaskSucceeded,
    WorkerConnected,
    WorkerDisconnected,
    task_info,
)
from xpipe._domain import TERMINAL_RUN_STATES
from ._store import Store, StoreFault
from ._task_checkpoints import check_checkpoint_save
from ._trust import RunSigner, check_submission, code_grants
from ._validate import (
    check_event,
    check_heartbeat,
    check_install_result,
    check_register,
    rejection_kind,
)

if TYPE_CHECKING:
    from xpipe.telemetry._export import MetricsEndpoint

    from ._autoscale_loop import AutoscaleLoop
    from ._leader import LeaderElection
    from ._metrics import CoordinatorMetrics

__all__ = ["Coordinator", "MAX_MESSAGE_BYTES", "MAX_SLOTS"]

log = logging.getLogger(__name__)



def _ref(key: tuple[str, str, int]) -> worker_pb2.AttemptRef:
    return worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])


def _key(ref: worker_pb2.AttemptRef) -> tuple[str, str, int]:
    return (ref.run_id, ref.task, ref.attempt)


async def _abort_store_fault(context, fault: StoreFault) -> None:
    """A write the store refused: RESOURCE_EXHAUSTED for a full disk, else UNAVAILABLE; retry later."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if fault.disk_full else grpc.StatusCode.UNAVAILABLE
    await context.abort(code, f"{fault}; nothing was recorded, retry once the store accepts writes again")


def _trace_submit(c: Coordinator, submit: pipeline_pb2.SubmitPipelineRequest):
    """Give the run its trace context; return the ``coordinator.submit`` span, or None.

    The client's context (the SDK's ``run <pipeline>`` span) is the parent. A coordinator
    that traces starts a trace itself for a client that sent none, and the run then carries
    this span's context; one that does not trace passes the client's context on unchanged,
    so workers still join the client's trace. ``trace_context`` is always overwritten: it
    is ours, not the client's.

    Raises:
        ValueError: a malformed traceparent or tracestate (names the field).
    """
    check_trace_context(submit.traceparent, submit.tracestate)
    spec = submit.pipeline
    tracing = c.config.tracing
    if tracing is None:
        spec.trace_context = f"{submit.traceparent}\n{submit.tracestate}" if submit.tracestate else submit.traceparent
        return None
    span = tracing.start_span(
        "coordinator.submit", traceparent=submit.traceparent, tracestate=submit.tracestate,
        attributes={"xpipe.pipeline": spec.name, "xpipe.tasks": len(spec.tasks)},
    )  # fmt: skip
    traceparent, tracestate = tracing.headers_of(span)
    spec.trace_context = f"{traceparent}\n{tracestate}" if tracestate else traceparent
    return span


async def _submit(c: Coordinator, submit: pipeline_pb2.SubmitPipelineRequest, context) -> str:
    """Submit and map what can go wrong to one status code each."""
    try:
        span = _trace_submit(c, submit)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"SubmitPipelineRequest: {exc}",
                            trailing_metadata=((REJECTION_KIND_KEY, REJECTED_FIELD),))  # fmt: skip
    if span is None:
        return await _submit_to_engine(c, submit, context)
    tracing = c.config.tracing
    try:
        run_id = await _submit_to_engine(c, submit, context)
        span.set_attribute("xpipe.run_id", run_id)
        return run_id
    except BaseException as exc:
        tracing.set_error(span, f"submit refused: {type(exc).__name__}: {exc}")
        raise
    finally:
        span.end()


async def _submit_to_engine(c: Coordinator, submit: pipeline_pb2.SubmitPipelineRequest, context) -> str:
    spec = submit.pipeline
    principal = caller()
    refusal = check_submission(spec, principal, c.policy)
    if refusal is not None:
        await context.abort(grpc.StatusCode[refusal.code], refusal.message)
    grants = code_grants(principal, spec.namespace or DEFAULT_NAMESPACE, c.policy)
    try:
        return await c.engine.submit(spec, idempotency_key=submit.idempotency_key, principal=(principal.name, grants))
    except PipelineValidationError as exc:
        kind = ((REJECTION_KIND_KEY, rejection_kind(exc)),)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc), trailing_metadata=kind)
    except StoreFault as exc:
        await _abort_store_fault(context, exc)
    except InternalError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))
    except RuntimeError as exc:
        if not c.stopping:
            raise
        # The engine stopped under this submit (past the grace, or a submit inside WatchRun):
        # it may or may not be durable; submitting again with the same key finds out.
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; submit again with the same idempotency key")
    raise AssertionError("unreachable: context.abort raises")


class _UsesEngine:
    """Servicers look the engine up per call: an HA coordinator gets a fresh engine each term."""

    c: Coordinator

    @property
    def engine(self) -> Engine:
        return self.c.engine


#: A summary-only watch gets at most one event per this long while its run goes on (the
#: end event leaves at once). Each engine turn changes a busy run's counts: a 10,000-task
#: run sent ~2,300 summaries, one per turn, costing coordinator and client CPU per task.
SUMMARY_EVENT_INTERVAL_S = 0.1


async def _hold_summary(queue: asyncio.Queue, event, until: float, loop):
    """Fold the summaries that come before ``until`` into ``event``; return early at the end.

    Returns None if the engine stopped meanwhile (``event`` is then dropped: the caller
    aborts the watch, and the client watches again).
    """
    while event.summary.state not in TERMINAL_RUN_STATES:
        left_s = until - loop.time()
        if left_s <= 0:
            break
        try:
            more = await asyncio.wait_for(queue.get(), left_s)
        except TimeoutError:
            break
        if more is None:
            return None
        event.summary.CopyFrom(more.summary)
    return event


class _PipelineService(_UsesEngine, pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    async def SubmitPipeline(self, request, context):
        run_id = await _submit(self.c, request, context)
        return pipeline_pb2.SubmitPipelineResponse(run_id=run_id)

    async def GetRun(self, request, context):
        info = await self._run_info(request.run_id, request.include_results, request, context)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(request.run_id)}")
        self.c.name_workers(info.tasks)
        return info

    async def ListRuns(self, request, context):
        limit = min(request.limit or 50, MAX_LIST_RUNS)
        records = await self.engine.store.list_runs(limit)
        auth = self.c.guard.auth
        visible = None if auth is None else await auth.readable([rec.run_id for rec in records])
        runs = []
        for rec in records:
            if visible is not None and rec.run_id not in visible:
                continue
            live = self.engine.state.runs.get(rec.run_id)
            if live is not None:
                runs.append(live.summary())
            else:
                runs.append(
                    pipeline_pb2.RunSummary(
                        run_id=rec.run_id, pipeline=rec.name, state=rec.state, created_at=rec.created_at,
                        finished_at=rec.finished_at, total_tasks=rec.total,
                    )  # fmt: skip
                )
        return pipeline_pb2.ListRunsResponse(runs=runs)

    async def CancelRun(self, request, context):
        run = self.engine.state.runs.get(request.run_id)
        if run is None:
            if await self.engine.store.get_run(request.run_id) is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(request.run_id)}")
            return pipeline_pb2.CancelRunResponse(cancelled=False)
        if self.engine.state.run_is_terminal(request.run_id):
            return pipeline_pb2.CancelRunResponse(cancelled=False)
        if self.engine.fault is not None:
            await _abort_store_fault(context, self.engine.fault)
        self.engine.post(CancelRequested(time.time(), request.run_id, stimulus_id=f"rpc-cancel-{request.run_id}"))
        return pipeline_pb2.CancelRunResponse(cancelled=True)

    async def WatchRun(self, request, context):
        run_id = request.run_id
        if request.HasField("submit"):
            run_id = await _submit(self.c, request.submit, context)
        engine = self.engine
        run = engine.state.runs.get(run_id)
        if run is None:
            info = await self._run_info(run_id, request.results_on_end, request, context)
            if info is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(run_id)}")
            self.c.name_workers(info.tasks)
            yield pipeline_pb2.RunEvent(summary=info.summary, changed=info.tasks)
            return
        # Subscribe and snapshot with no await in between, so no change falls in the gap.
        queue = self.engine.watch(run_id, tasks=not request.summary_only)
        loop = asyncio.get_running_loop()
        try:
            event = pipeline_pb2.RunEvent(summary=run.summary())
            if not request.summary_only:
                event.changed.extend(task_info(rec) for rec in self.engine.state.iter_records(run_id))
            while True:
                if event.summary.state in TERMINAL_RUN_STATES:
                    if request.results_on_end:
                        info = await self._run_info(run_id, True, request, context)
                        if info is not None:
                            event = pipeline_pb2.RunEvent(summary=info.summary, changed=info.tasks)
                    self.c.name_workers(event.changed)
                    yield event
                    return
                self.c.name_workers(event.changed)
                yield event
                sent_at = loop.time()
                event = await queue.get()
                if event is not None and request.summary_only:
                    # Summaries are progress: at most one per SUMMARY_EVENT_INTERVAL_S, the end at once.
                    event = await _hold_summary(queue, event, sent_at + SUMMARY_EVENT_INTERVAL_S, loop)
                if event is None:  # the engine stopped: the coordinator is stopping, or its store failed
                    why = f"{engine.error}; watch again" if isinstance(engine.error, StoreFault) else "coordinator is shutting down"
                    await context.abort(grpc.StatusCode.UNAVAILABLE, why)
                # Coalesce what piled up while the client was slow.
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        break
                    event.summary.CopyFrom(more.summary)
                    event.changed.extend(more.changed)
        finally:
            self.engine.unwatch(run_id, queue)

    async def GetTaskResult(self, request, context):
        # Only this task's result is inlined: the others' artifacts stay on disk.
        info = await self._run_info(request.run_id, True, request, context, only_task=request.task)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(request.run_id)}")
        for task in info.tasks:
            if task.name == request.task:
                return pipeline_pb2.TaskResult(
                    state=task.state, result=task.result, error=task.error, cache_hit=task.cache_hit
                )
        await context.abort(grpc.StatusCode.NOT_FOUND, f"run {quoted(request.run_id)} has no task {quoted(request.task)}")

    async def GetArtifact(self, request, context):
        async for chunk in serve_artifact(self.engine, request, context):
            yield chunk

    async def _run_info(self, run_id: str, include_results: bool, request, context, only_task: str = ""):
        """``Engine.run_info`` with results shaped as ``request`` asks (inline_max_bytes, accept_compression)."""
        try:
            return await self.engine.run_info(
                run_id, include_results=include_results, only_task=only_task,
                inline_max_bytes=request.inline_max_bytes, accept_zstd=accepts_zstd(request.accept_compression),
            )  # fmt: skip
        except ResultDataLoss as exc:
            await context.abort(grpc.StatusCode.DATA_LOSS, f"run {quoted(run_id)}: {exc}")

    async def GetTaskStats(self, request, context):
        if len(request.names) > 100_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"GetTaskStats: {len(request.names)} names; at most 100000")
        stats = await self.engine.store.task_stats(list(request.names))
        return pipeline_pb2.GetTaskStatsResponse(
            stats={name: pipeline_pb2.TaskStats(mean_duration_s=mean, samples=n) for name, (mean, n) in stats.items()}
        )

    async def GetTaskLogs(self, request, context):
        """Stream stored log rows; with ``follow``, new ones until the task (or run) is done.

        When it is done is :class:`~._logs.LogFollower`'s rule, shared with the dashboard.
        """
        run_id, task = request.run_id, request.task
        problem = await self._log_target_problem(run_id, task)
        if problem:
            await context.abort(grpc.StatusCode.NOT_FOUND, problem)
        follower = LogFollower(self.c.task_logs, self.engine.state.runs, run_id, task, request.attempt,
                               after_seq=min(request.after_seq, _MAX_SEQ), follow=request.follow)  # fmt: skip
        async with contextlib.aclosing(follower.rows()) as rows:
            async for row in rows:
                if row is not None:
                    yield pipeline_pb2.TaskLogChunk(
                        task=row.task, attempt=row.attempt, stream=row.stream, data=row.data,
                        truncated_bytes=row.dropped_bytes, received_at=row.at, seq=row.seq,
                    )  # fmt: skip
                elif self.c.stopping:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down; follow again")

    async def _log_target_problem(self, run_id: str, task: str) -> str:
        """Why GetTaskLogs has nothing to serve ("" when the run, and the task if named, exist)."""
        run = self.engine.state.runs.get(run_id)
        if run is not None:
            names = run.tasks
        else:
            stored = await self.engine.store.get_run(run_id)
            if stored is None:
                return f"no run {quoted(run_id)}"
            names = set(stored.tasks)
            if stored.spec is not None:
                names |= {t.name for t in stored.spec.tasks}
        if task and task not in names:
            return f"run {quoted(run_id)} has no task {quoted(task)}"
        return ""


_CONNECT = "/xpipe.v1.WorkerService/Connect"
#: The largest log sequence number there can be; a larger ``after_seq`` asks for nothing.
_MAX_SEQ = (1 << 63) - 1


class _WorkerService(_UsesEngine, worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self._streams = itertools.count(1)  # numbers worker streams, for their stimulus ids

    @checks_itself
    async def Connect(self, request_iterator, context):
        # Guarded here, not by a wrapper (see _guard): every worker message is on the hot path.
        if self.c.stopping:
            await self.c.guard.refuse(context)
        auth = self.c.guard.auth
        if auth is not None:  # once per stream, never per message
            await auth.admit(_CONNECT, "worker:connect", None, context)
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        if isinstance(first, Malformed):
            await abort_malformed(context, _CONNECT, first)
        if first.WhichOneof("body") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on a worker stream must be Register")
        reg = first.register
        problem = _check_register(reg)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        engine = self.engine
        try:
            session = engine.connect_worker(reg.worker_id)
        except StoreFault as exc:  # the worker keeps its outcomes and comes back later
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"coordinator cannot take work: {exc}")
        # Stimulus ids of this stream's messages: "ws-<worker>-<stream>.<n>", the register being 0.
        session.stimulus_prefix = f"ws-{reg.worker_id}-{next(self._streams)}."
        register_id = session.stimulus_prefix + "0"
        engine.post(
            WorkerConnected(
                time.time(), reg.worker_id, reg.name or reg.worker_id, reg.host, reg.slots,
                frozenset(reg.handlers), dict(reg.labels), reg.resources,
                tuple(_key(r) for r in reg.running), reg.accepts_pickled_code, reg.memory_enforcement,
                frozenset(reg.allowed_code),
                stimulus_id=register_id,
            )  # fmt: skip
        )
        # Outcomes the previous stream may have lost; already-recorded ones are dropped as stale.
        # (check_register has checked them.)
        self._post_events(reg.worker_id, reg.recent, time.time(), register_id)
        log.info("worker %s (%s) connected with %d slots", reg.name, reg.worker_id, reg.slots)
        yield worker_pb2.CoordinatorMessage(
            registered=worker_pb2.Registered(
                coordinator_id=self.c.coordinator_id,
                heartbeat_interval_s=engine.config.heartbeat_interval_s,
                prefetch=engine.config.prefetch,
                artifact_dir=engine.config.artifact_dir,
                encryption_at_rest=at_rest() is not None,
                signing_key=engine.config.signer.public_key,
                signing_key_id=engine.config.signer.key_id,
            )
        )
        # The fleet's pace comes as its own message, right after: an older worker ignores it
        # and keeps the configured (shortest) interval, so no later shrink can leave it beating
        # slower than the timeout in effect.
        paced = engine.pacer.announced
        if paced.interval_s != engine.config.heartbeat_interval_s:
            yield paced.message()
        reader = asyncio.create_task(self._read(reg.worker_id, session, request_iterator))
        try:
            outbox = session.outbox
            while True:
                message = await outbox.get()
                if message is None:
                    break
                # Batches that queued while the previous write was in flight go out as one.
                # Assignment batches are CoordinatorMessageView (assignments as bytes, the
                # same wire format): the generated serializer writes either.
                while message.WhichOneof("body") == "assignments" and not outbox.empty():
                    following = outbox.get_nowait()
                    if following is None or following.WhichOneof("body") != "assignments":
                        yield message
                        message = following
                        break
                    message.assignments.assignments.extend(following.assignments.assignments)
                    message.assignments.code.extend(following.assignments.code)
                if message is None:
                    break
                yield message
            # The reader stops on a message that must not reach the engine: say why.
            problem = reader.result() if reader.done() and not reader.cancelled() and not reader.exception() else ""
            if problem:
                log.warning("worker %s (%s) sent a bad message: %s; closing its stream", reg.name, reg.worker_id, problem)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            if session.reset_reason:
                # Stop reading first: cancelling a read in flight while the call ends made
                # gRPC finish it INTERNAL ("Internal error from Core") instead of this status.
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # logged by the finally
                    await reader
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details(session.reset_reason)
                return
        finally:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("reading from worker %s failed", reg.name)
            self.c.installs.lost(session)
            if engine.disconnect_worker(session):
                engine.post(WorkerDisconnected(time.time(), reg.worker_id, stimulus_id=session.stimulus_prefix + "end"))
                log.info("worker %s (%s) disconnected", reg.name, reg.worker_id)

    def _post_events(self, worker_id: str, events, now: float, sid: str) -> str:
        """Post each event (caused by message ``sid``); stop at the first that is not valid and return why ("" if none)."""
        post = self.engine.post
        for ev in events:
            kind = ev.WhichOneof("kind")
            problem = check_event(ev, kind)
            if problem:
                return problem
            key = _key(ev.attempt)
            if kind == "succeeded":
                done = ev.succeeded
                post(TaskSucceeded(
                    now, worker_id, key, ev.at, done.result, ev.started_at, done.skipped,
                    done.fallback_used, done.cause if done.HasField("cause") else None,
                    ev.telemetry if ev.HasField("telemetry") else None, ev.cache_hit, stimulus_id=sid,
                ))  # fmt: skip
            elif kind == "failed":
                post(TaskFailed(
                    now, worker_id, key, ev.at, ev.failed.error, ev.started_at,
                    ev.telemetry if ev.HasField("telemetry") else None,
                    ev.failed.result if ev.failed.HasField("result") else None, stimulus_id=sid,
                ))  # fmt: skip
            elif kind == "started":
                post(TaskStarted(now, worker_id, key, ev.at, stimulus_id=sid))
            elif kind == "released":
                post(TaskReleased(now, worker_id, key, stimulus_id=sid))
        return ""

    async def _read(self, worker_id: str, session, request_iterator) -> str:
        """Feed the worker's messages to the engine; return why it stopped early ("" at the end).

        A message that fails validation ends the stream (the caller aborts it with
        INVALID_ARGUMENT); what came before it has been taken.
        """
        post = self.engine.post
        prefix, seq = session.stimulus_prefix, 0
        try:
            async for message in request_iterator:
                if isinstance(message, Malformed):
                    return f"malformed {_CONNECT} request: {message.error}"
                body = message.WhichOneof("body")
                now = time.time()
                seq += 1
                sid = prefix + str(seq)
                if body == "events":
                    problem = self._post_events(worker_id, message.events.events, now, sid)
                    if problem:
                        return problem
                elif body == "heartbeat":
                    hb = message.heartbeat
                    problem = check_heartbeat(hb)
                    if problem:
                        return problem
                    # A worker that counts what it received confirms those attempts; the rest
                    # are on their way, not lost (an older worker: time alone decides).
                    on_their_way = frozenset()
                    if hb.HasField("assignments_received"):
                        session.counts = True
                        on_their_way = session.confirm(hb.assignments_received)
                    elif session.counts is None:
                        session.counts = False
                        session.unconfirmed.clear()
                    post(HeartbeatReceived(
                        now, worker_id, tuple(_key(r) for r in hb.running), hb.metrics, hb.draining, on_their_way,
                        stimulus_id=sid,
                    ))  # fmt: skip
                elif body == "task_logs":
                    # Not the engine's: logs go to their own store, off the scheduling path.
                    problem = check_log_batch(message.task_logs)
                    if problem:
                        return problem
                    self.c.task_logs.append(message.task_logs, now)
                elif body == "checkpoint":
                    problem = check_checkpoint_save(message.checkpoint)
                    if problem:
                        return problem
                    # Awaited here: the store write (off the engine's turn) precedes the
                    # attempt's outcome, which comes after it on this stream.
                    await self.engine.checkpoints.save(worker_id, message.checkpoint)
                elif body == "install_result":
                    problem = check_install_result(message.install_result)
                    if problem:
                        return problem
                    self.c.installs.answer(session, message.install_result)
                else:
                    log.warning("worker %s sent an unexpected %s message; ignored", worker_id, body)
            return ""
        finally:
            session.outbox.put_nowait(None)


def _check_register(reg: worker_pb2.Register) -> str:
    """Why a Register is refused ("" if accepted); see :func:`check_register`."""
    return check_register(reg)


class Coordinator:
    """One coordinator process: store, engine and gRPC server.

    Use ``async with Coordinator(...)`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        store: Store,
        *,
        listen: str = "127.0.0.1:0",
        config: EngineConfig = EngineConfig(),
        election: LeaderElection | None = None,
        metrics: MetricsEndpoint | None = None,
        task_logs: TaskLogStore | None = None,
        security: Security | None = None,
        alerting: Alerting | None = None,
    ):
        self.store = store
        #: TLS credentials and how callers are known (``--tls-*``, ``--auth``); None: plaintext, auth off.
        self.security = security
        if config.signer is None:  # never unsigned: workers refuse assignments without a principal
            config = dataclasses.replace(config, signer=RunSigner.generate())
        #: Task output workers ship (see ``_logs``); in memory unless given one with a file.
        self.task_logs = task_logs if task_logs is not None else TaskLogStore(None)
        self.listen = listen
        self.config = config
        #: HA: only the elected leader runs an engine; without an election this one always leads.
        self.election = election
        self._election_task: asyncio.Task | None = None
        #: What the engines feed when ``--metrics-listen`` is set (outlives engines); else None.
        self.metrics: CoordinatorMetrics | None = None
        if metrics is not None:
            from ._metrics import CoordinatorMetrics  # OpenTelemetry loads only when metrics are on

            self.metrics = CoordinatorMetrics(metrics, lambda: self.engine.state)
        self.engine = self._new_engine()
        self.coordinator_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        #: InstallDependencies calls waiting for workers (see :class:`~._admin.InstallRequests`).
        self.installs = InstallRequests()
        #: memory:// streams, in this process's memory only (lost on restart; see ._membroker).
        self.stream_broker = MemoryBroker()
        #: Alert rules and delivery (issue 15); the dashboard and ListAlerts read its history.
        self.alerting = alerting if alerting is not None else Alerting()
        self.engine.alerting = self.alerting
        self.address = ""
        #: The web dashboard's URL once ``--http-listen`` serves it (see ``_web``); "" when off.
        self.dashboard_url = ""
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_names: list[str] = []
        self._stopped = asyncio.Event()
        #: Refuses calls once stopping and answers unparsable requests (see _guard).
        auth = None
        if security is not None and security.auth_on:
            auth = CallAuth(security, policy=lambda: self.policy, audit=lambda: self.audit,
                            run_namespace=NamespaceCache(self._live_namespace, self._stored_namespace))  # fmt: skip
        self.guard = CallGuard(lambda: self._stopped.is_set(), auth)
        #: Roles and grants calls are authorized against (``--policy``; built-in roles by default).
        self.policy: Policy = DEFAULT_POLICY
        #: Where audited calls and data accesses are reported (see ``_auditsink``): stored, chained.
        self.audit: AuditLog = AuditLog(store, leading=lambda: self.election is None or self.election.is_leader)
        #: Audit and lineage of marked tasks; every engine reports to it (see ``_lineage``).
        self.data_tap = DataTap(self.audit, store, artifact_root=config.artifact_dir or None)
        self.engine.tap = self.data_tap
        #: Single node: outlives store faults (see :meth:`_supervise`); HA leaves that to the election.
        self._supervisor: asyncio.Task | None = None
        #: Fresh engines built after the store refused writes and then took them again.
        self.store_recoveries = 0
        self._recovered_at = -1e9
        #: Waits between store probes: 0.2 s doubling up to 5 s, so a freed disk is noticed within seconds.
        self._fault_backoff = Backoff(initial_s=0.2, max_s=5.0, jitter=0.2)
        #: The autoscaler's loop (``--autoscale-provider``; see ``_autoscale_loop``); None when off.
        self.autoscaler: AutoscaleLoop | None = None

    def _new_engine(self) -> Engine:
        engine = Engine(self.store, self.config, metrics=self.metrics)
        engine.tap = getattr(self, "data_tap", None)
        engine.alerting = getattr(self, "alerting", None)
        return engine

    def _live_namespace(self, run_id: str) -> str | None:
        run = self.engine.state.runs.get(run_id)
        return None if run is None else run.spec.namespace or DEFAULT_NAMESPACE

    async def _stored_namespace(self, run_id: str) -> str | None:
        stored = await self.engine.store.get_run(run_id)
        if stored is None:
            return None
        return (stored.spec.namespace if stored.spec is not None else "") or DEFAULT_NAMESPACE

    def name_workers(self, tasks) -> None:
        """Show worker names rather than ids in task infos."""
        state = self.engine.state
        for t in tasks:
            name = state.worker_name(t.worker)
            if name is not None:
                t.worker = name

    async def start(self) -> str:
        """Open the store, resume runs, serve; returns the bound address."""
        await self.store.open()
        await self.task_logs.open()
        # SQLite: the alert history lives in its database, sealed like the rest of it.
        await self.alerting.start(getattr(self.store, "path", None), getattr(self.store, "crypt", None))
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients (SDK, workers) ping every KEEPALIVE_TIME_MS, also on idle watches and
            # idle channels: accept that, so they never get GOAWAY too_many_pings.
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ("grpc.so_reuseport", 0),
        ]
        # The stop gate and the malformed-request check are bound to each handler once, at
        # registration (see _guard), not run per call as interceptors.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.election is not None:
            from ._leader import LeaderGate  # HA only: keeps the etcd client out of single-node imports

            interceptors.append(LeaderGate(self.election))
        server = grpc.aio.server(options=options, interceptors=interceptors or None)
        guarded = GuardedRegistrar(server, self.guard)
        # Audited calls are recorded as "local" when auth is off (see _auditlog.audit_local_calls).
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(audit_local_calls(_PipelineService(self), self.audit), guarded)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(_WorkerService(self), guarded)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(audit_local_calls(AdminServicer(self), self.audit), guarded)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(self), guarded)
        governance_pb2_grpc.add_GovernanceServiceServicer_to_server(audit_local_calls(GovernanceServicer(self), self.audit), guarded)
        stream_pb2_grpc.add_StreamServiceServicer_to_server(audit_local_calls(StreamServicer(self), self.audit), guarded)
        insights_pb2_grpc.add_InsightsServiceServicer_to_server(InsightsServicer(self), guarded)
        debug_pb2_grpc.add_DebugServiceServicer_to_server(audit_local_calls(DebugServicer(self), self.audit), guarded)
        autoscale_pb2_grpc.add_AutoscaleServiceServicer_to_server(audit_local_calls(AutoscaleServicer(self), self.audit), guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, guarded)
        names = [
            pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
            worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
            governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"].full_name,
            stream_pb2.DESCRIPTOR.services_by_name["StreamService"].full_name,
            insights_pb2.DESCRIPTOR.services_by_name["InsightsService"].full_name,
            debug_pb2.DESCRIPTOR.services_by_name["DebugService"].full_name,
            autoscale_pb2.DESCRIPTOR.services_by_name["AutoscaleService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        # What reflection.enable_server_reflection does for an aio server, through the guard.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names), guarded)
        host, _, port = self.listen.rpartition(":")
        credentials = self.security.credentials if self.security is not None else None
        bound = server.add_secure_port(self.listen, credentials) if credentials else server.add_insecure_port(self.listen)
        if bound == 0:
            raise OSError(f"cannot listen on {self.listen}")
        self.address = f"{host or '127.0.0.1'}:{bound}"
        if self.election is None:
            await self.engine.start()
        await server.start()
        self._server = server
        self._health_names = ["", *names[:3]]
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.election is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="xpipe-supervisor")
        else:
            self.election.address = self.election.address or self.address
            self._election_task = asyncio.create_task(self.election.run(self._lead, self._step_down), name="xpipe-election")
        log.info("coordinator %s serving on %s (runs signed with key %s)", self.coordinator_id, self.address,
                 self.config.signer.key_id)
        return self.address

    @property
    def stopping(self) -> bool:
        """True from the first step of :meth:`stop` on: new calls are refused."""
        return self._stopped.is_set()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let calls finish for ``grace_s``, then close the store (idempotent).

        The order matters: new calls are refused (UNAVAILABLE, clients try again) while
        the engine still runs, so a submit already in flight is committed and answered
        rather than failed half-way; then the engine stops, which ends worker streams and
        watches; then the server, with what is left of its grace; then the store.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace_s
            self.guard.last_refused = loop.time()
            try:
                await asyncio.wait_for(self.guard.settle(), timeout=grace_s)
            except TimeoutError:
                log.warning("%d calls still running after %.1fs; stopping anyway", self.guard.in_flight, grace_s)
            if self._election_task is not None:
                self.election.stop()  # steps down (stopping the engine) and revokes the lease
                await asyncio.gather(self._election_task, return_exceptions=True)
            if self._supervisor is not None:
                self._supervisor.cancel()
                await asyncio.gather(self._supervisor, return_exceptions=True)
            await self.engine.stop()
            try:
                await asyncio.wait_for(self.guard.quiet(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass  # clients kept calling through the whole grace: the server stops under them
            await self._server.stop(max(0.0, deadline - loop.time()))
        await self.task_logs.close()
        await self.alerting.stop()
        await self.data_tap.stop()
        await self.audit.stop()
        await self.store.close()

    # ------------------------------------------------------------------ HA

    async def _lead(self, term: int) -> asyncio.Future:
        """Elected: build a fresh engine from the store (resuming every unfinished run)."""
        engine = self._new_engine()
        await engine.start()
        self.engine = engine
        self.stream_broker = MemoryBroker()  # memory streams of an earlier term here may be stale: start empty
        log.info("leading term %d with %d runs resumed", term, len(engine.state.runs))
        return asyncio.ensure_future(engine.wait())

    async def _step_down(self, reason: str) -> None:
        """Deposed: stop scheduling at once; worker streams and watches end and go to the leader."""
        engine, self.engine = self.engine, self._new_engine()
        await engine.stop()

    # ------------------------------------------------------------------ store faults

    async def _set_health(self, status: int) -> None:
        for name in self._health_names:
            await self._health.set(name, status)

    async def _supervise(self) -> None:
        """Single node: ride out store faults; end only for what no fresh engine can fix.

        A commit that failed leaves the engine's memory ahead of the store, so that engine
        is done. Until the store takes a write again, a placeholder engine answers reads
        from the store and refuses writes and workers with the fault; then a fresh engine
        is built from the store exactly as a restart would, and workers reconnect to it
        and report what they hold.
        """
        while True:
            try:
                await self.engine.wait()
                return
            except StoreFault as fault:
                await self._ride_out(fault)

    async def _ride_out(self, fault: StoreFault) -> None:
        failed = self.engine
        placeholder = self._new_engine()
        placeholder.fault = fault
        self.engine = placeholder
        await failed.stop()  # worker streams and watches end; they come back to the fresh engine
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.error("the store refuses writes; taking no work until it accepts one again: %s", fault)
        # A fresh engine that failed again soon after goes on with the same backoff: a probe
        # may fit where the resumed runs' commits do not.
        if time.monotonic() - self._recovered_at >= 30.0:
            self._fault_backoff.reset()
        while True:
            await asyncio.sleep(self._fault_backoff.next_delay())
            try:
                await self.store.probe()
                engine = self._new_engine()
                await engine.start()
            except StoreFault as again:
                placeholder.fault = again  # the latest cause is what callers are told
                log.debug("store still refuses writes: %s", again)
                continue
            break
        self.engine = engine
        self.store_recoveries += 1
        self._recovered_at = time.monotonic()
        await placeholder.stop()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.warning("the store accepts writes again; resumed %d runs (recovery %d)", len(engine.state.runs),
                    self.store_recoveries)  # fmt: skip

    async def cluster_view(self) -> tuple[str, list[str], int]:
        """(leader address, member addresses, term) as this coordinator knows them."""
        if self.election is None:
            return self.address, [self.address], 1
        return await self.election.status()

    async def wait_fatal(self) -> None:
        """Return (or raise) when this coordinator cannot go on.

        Without HA that is its engine failing in a way that is neither one run's bug
        (contained) nor a store fault (ridden out by :meth:`_supervise`). An HA member
        never gives up that way: it steps down and campaigns again; only its election
        loop failing counts.
        """
        if self._election_task is None:
            assert self._supervisor is not None, "wait_fatal() before start()"
            await self._supervisor
        else:
            await self._election_task

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def write_ready_file(path: str | Path, address: str) -> None:
    """Atomically write the bound address (for ``--listen ...:0`` callers)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(address)
    tmp.replace(path)
