"""gRPC servicers of the coordinator: thin translators between the wire and the engine."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xpipe._proto import admin_pb2, admin_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc, worker_pb2, worker_pb2_grpc
from xpipe._proto import common_pb2 as pb
from xpipe.errors import PipelineValidationError

from ._engine import Engine, EngineConfig, task_info
from ._events import (
    CancelRequested,
    DrainRequested,
    HeartbeatReceived,
    TaskFailed,
    TaskReleased,
    TaskStarted,
    TaskSucceeded,
    WorkerConnected,
    WorkerDisconnected,
)
from ._state import TERMINAL_RUN_STATES
from ._store import Store

__all__ = ["Coordinator", "MAX_MESSAGE_BYTES", "MAX_SLOTS"]

log = logging.getLogger(__name__)

#: Largest gRPC message accepted or sent (a whole pipeline spec travels in one).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Most slots one worker may claim; more is a lie or a typo.
MAX_SLOTS = 4096
VERSION = "0.1.0"


def _ref(key: tuple[str, str, int]) -> worker_pb2.AttemptRef:
    return worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])


def _key(ref: worker_pb2.AttemptRef) -> tuple[str, str, int]:
    return (ref.run_id, ref.task, ref.attempt)


class _PipelineService(pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.engine = coordinator.engine

    async def SubmitPipeline(self, request, context):
        try:
            run_id = await self.engine.submit(request.pipeline, idempotency_key=request.idempotency_key)
        except PipelineValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pipeline_pb2.SubmitPipelineResponse(run_id=run_id)

    async def GetRun(self, request, context):
        info = await self.engine.run_info(request.run_id, include_results=request.include_results)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}")
        self.c.name_workers(info.tasks)
        return info

    async def ListRuns(self, request, context):
        limit = request.limit or 50
        records = await self.engine.store.list_runs(limit)
        runs = []
        for rec in records:
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
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}")
            return pipeline_pb2.CancelRunResponse(cancelled=False)
        if run.state in TERMINAL_RUN_STATES:
            return pipeline_pb2.CancelRunResponse(cancelled=False)
        self.engine.post(CancelRequested(time.time(), request.run_id))
        return pipeline_pb2.CancelRunResponse(cancelled=True)

    async def WatchRun(self, request, context):
        run_id = request.run_id
        run = self.engine.state.runs.get(run_id)
        if run is None:
            info = await self.engine.run_info(run_id, include_results=False)
            if info is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r}")
            yield pipeline_pb2.RunEvent(summary=info.summary, changed=info.tasks)
            return
        # Subscribe and snapshot with no await in between, so no change falls in the gap.
        queue = self.engine.watch(run_id)
        try:
            tasks = [task_info(rec) for rec in self.engine.state.iter_records(run_id)]
            self.c.name_workers(tasks)
            yield pipeline_pb2.RunEvent(summary=run.summary(), changed=tasks)
            if run.state in TERMINAL_RUN_STATES:
                return
            while True:
                event = await queue.get()
                if event is None:  # the coordinator is stopping
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down")
                # Coalesce what piled up while the client was slow.
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        break
                    event.summary.CopyFrom(more.summary)
                    event.changed.extend(more.changed)
                self.c.name_workers(event.changed)
                yield event
                if event.summary.state in TERMINAL_RUN_STATES:
                    return
        finally:
            self.engine.unwatch(run_id, queue)

    async def GetTaskResult(self, request, context):
        info = await self.engine.run_info(request.run_id, include_results=True)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id!r}")
        for task in info.tasks:
            if task.name == request.task:
                return pipeline_pb2.TaskResult(state=task.state, result=task.result, error=task.error)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"run {request.run_id!r} has no task {request.task!r}")


class _WorkerService(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.engine = coordinator.engine

    async def Connect(self, request_iterator, context):
        try:
            first = await request_iterator.__anext__()
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on a worker stream must be Register")
        reg = first.register
        problem = _check_register(reg)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        engine = self.engine
        session = engine.connect_worker(reg.worker_id)
        engine.post(
            WorkerConnected(
                time.time(), reg.worker_id, reg.name or reg.worker_id, reg.host, reg.slots,
                frozenset(reg.handlers), dict(reg.labels), reg.resources,
                tuple(_key(r) for r in reg.running), reg.accepts_pickled_code,
            )  # fmt: skip
        )
        # Outcomes the previous stream may have lost; already-recorded ones are dropped as stale.
        self._post_events(reg.worker_id, reg.recent, time.time())
        log.info("worker %s (%s) connected with %d slots", reg.name, reg.worker_id, reg.slots)
        yield worker_pb2.CoordinatorMessage(
            registered=worker_pb2.Registered(
                coordinator_id=self.c.coordinator_id,
                heartbeat_interval_s=engine.config.heartbeat_interval_s,
                prefetch=engine.config.prefetch,
            )
        )
        reader = asyncio.create_task(self._read(reg.worker_id, session, request_iterator))
        try:
            outbox = session.outbox
            while True:
                message = await outbox.get()
                if message is None:
                    break
                # Batches that queued while the previous write was in flight go out as one.
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
        finally:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("reading from worker %s failed", reg.name)
            if engine.disconnect_worker(session):
                engine.post(WorkerDisconnected(time.time(), reg.worker_id))
                log.info("worker %s (%s) disconnected", reg.name, reg.worker_id)

    def _post_events(self, worker_id: str, events, now: float) -> None:
        post = self.engine.post
        for ev in events:
            key = _key(ev.attempt)
            kind = ev.WhichOneof("kind")
            if kind == "succeeded":
                done = ev.succeeded
                post(TaskSucceeded(
                    now, worker_id, key, ev.at, done.result, ev.started_at, done.skipped,
                    done.fallback_used, done.cause if done.HasField("cause") else None,
                ))  # fmt: skip
            elif kind == "failed":
                post(TaskFailed(now, worker_id, key, ev.at, ev.failed.error, ev.started_at))
            elif kind == "started":
                post(TaskStarted(now, worker_id, key, ev.at))
            elif kind == "released":
                post(TaskReleased(now, worker_id, key))

    async def _read(self, worker_id: str, session, request_iterator) -> None:
        post = self.engine.post
        try:
            async for message in request_iterator:
                body = message.WhichOneof("body")
                now = time.time()
                if body == "events":
                    self._post_events(worker_id, message.events.events, now)
                elif body == "heartbeat":
                    hb = message.heartbeat
                    post(HeartbeatReceived(now, worker_id, tuple(_key(r) for r in hb.running), hb.metrics, hb.draining))
                else:
                    log.warning("worker %s sent an unexpected %s message; ignored", worker_id, body)
        finally:
            session.outbox.put_nowait(None)


def _check_register(reg: worker_pb2.Register) -> str:
    if not reg.worker_id:
        return "Register.worker_id is empty"
    if not 0 < reg.slots <= MAX_SLOTS:
        return f"Register.slots must be between 1 and {MAX_SLOTS}, got {reg.slots}"
    if reg.resources.cpu_cores < 0:
        return f"Register.resources.cpu_cores must not be negative, got {reg.resources.cpu_cores}"
    return ""


class _AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
        self.engine = coordinator.engine

    async def GetClusterStatus(self, request, context):
        state = self.engine.state
        return admin_pb2.ClusterStatus(
            coordinator_id=self.c.coordinator_id,
            leader_address=self.c.address,
            members=[self.c.address],
            term=1,
            workers=sum(1 for w in state.workers.values() if w.state != "lost" and w.connected),
            active_runs=state.active_runs(),
            version=VERSION,
        )

    async def ListWorkers(self, request, context):
        out = []
        for w in self.engine.state.workers.values():
            running = len(w.assigned)
            if w.state == "lost" or (not w.connected and w.state != "lost"):
                shown = "lost" if w.state == "lost" else "disconnected"
            elif w.state == "draining":
                shown = "draining"
            else:
                shown = "busy" if running >= w.slots else "ready"
            info = admin_pb2.WorkerInfo(
                worker_id=w.worker_id, name=w.name, host=w.host, state=shown, slots=w.slots, running=running,
                labels=w.labels, handlers=sorted(w.handlers), last_heartbeat=w.last_seen,
            )  # fmt: skip
            if w.resources is not None:
                info.resources.CopyFrom(w.resources)
            if w.metrics is not None:
                info.metrics.CopyFrom(w.metrics)
            out.append(info)
        return admin_pb2.ListWorkersResponse(workers=out)

    async def DrainWorker(self, request, context):
        worker = self.engine.state.worker_by_name(request.name)
        if worker is None:
            return admin_pb2.DrainWorkerResponse(found=False)
        self.engine.post(DrainRequested(time.time(), worker.worker_id))
        return admin_pb2.DrainWorkerResponse(found=True)


class _Malformed:
    """Stands in for a request that did not parse, so the handler can answer INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


def _safe(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends: hostile or corrupt bytes
            return _Malformed(exc)

    return parse


async def _abort_malformed(context, method: str, bad: _Malformed):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {bad.error}")


class _RejectMalformed(grpc.aio.ServerInterceptor):
    """Answer unparsable requests with INVALID_ARGUMENT instead of gRPC's bare UNKNOWN."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        parse = _safe(handler.request_deserializer)
        out = handler.response_serializer
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                if isinstance(request, _Malformed):
                    await _abort_malformed(context, method, request)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, parse, out)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                if isinstance(request, _Malformed):
                    await _abort_malformed(context, method, request)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, parse, out)
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream

            async def checked(requests, context):
                async for request in requests:
                    if isinstance(request, _Malformed):
                        await _abort_malformed(context, method, request)
                    yield request

            async def stream_stream(requests, context):
                async for item in inner_bidi(checked(requests, context), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream, parse, out)
        return handler


class Coordinator:
    """One coordinator process: store, engine and gRPC server.

    Use ``async with Coordinator(...)`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, store: Store, *, listen: str = "127.0.0.1:0", config: EngineConfig = EngineConfig()):
        self.store = store
        self.listen = listen
        self.engine = Engine(store, config)
        self.coordinator_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopped = asyncio.Event()

    def name_workers(self, tasks) -> None:
        """Show worker names rather than ids in task infos."""
        workers = self.engine.state.workers
        for t in tasks:
            w = workers.get(t.worker)
            if w is not None:
                t.worker = w.name

    async def start(self) -> str:
        """Open the store, resume runs, serve; returns the bound address."""
        await self.store.open()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options, interceptors=[_RejectMalformed()])
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(_PipelineService(self), server)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(_WorkerService(self), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(_AdminService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name,
            worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        host, _, port = self.listen.rpartition(":")
        bound = server.add_insecure_port(self.listen)
        if bound == 0:
            raise OSError(f"cannot listen on {self.listen}")
        self.address = f"{host or '127.0.0.1'}:{bound}"
        await self.engine.start()
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in names[:3]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("coordinator %s serving on %s", self.coordinator_id, self.address)
        return self.address

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let calls finish for ``grace_s``, then close the store (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self.engine.stop()
            await self._server.stop(grace_s)
        await self.store.close()

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
