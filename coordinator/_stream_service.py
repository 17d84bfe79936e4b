"""``StreamService``: the memory broker, the stream instances' control channel, and the users' view.

Thin: the memory broker's calls go to :mod:`._membroker` (its servicer functions), the
control and view calls to the :class:`~._streams.StreamRegistry`. See proto/xpipe/v1/stream.proto.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
from xpipe._proto import common_pb2 as pb
from xpipe._proto import stream_pb2, stream_pb2_grpc
from xpipe.security._rbac import authorize

from ._caller import caller
from ._events import CancelRequested
from ._store import StoreFault
from ._streams import MAX_CHECKPOINT_BYTES, BadInstance, StreamRegistry, current_runs, is_stale, namespace_of, stream_of

from . import _membroker as membroker

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["StreamServicer"]

log = logging.getLogger(__name__)


class StreamServicer(stream_pb2_grpc.StreamServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator
        #: Reports, stops and scaling; outlives engines (a new term keeps what instances said).
        self.streams = StreamRegistry()
        self._timers: set[asyncio.Task] = set()

    # ------------------------------------------------------------ memory broker (._membroker)

    async def Produce(self, request: stream_pb2.ProduceRequest, context) -> stream_pb2.ProduceResponse:
        return await membroker.produce(self.coordinator.stream_broker, request, context)

    async def Fetch(self, request: stream_pb2.FetchRequest, context) -> stream_pb2.FetchResponse:
        return await membroker.fetch(self.coordinator.stream_broker, request, context)

    async def Commit(self, request: stream_pb2.CommitRequest, context) -> stream_pb2.CommitResponse:
        return await membroker.commit(self.coordinator.stream_broker, request, context)

    async def DescribeStream(self, request: stream_pb2.DescribeStreamRequest, context) -> stream_pb2.DescribeStreamResponse:
        return await membroker.describe_stream(self.coordinator.stream_broker, request, context)

    # ------------------------------------------------------------ control and view (._streams)

    async def ReportInstance(self, request: stream_pb2.InstanceReport, context) -> stream_pb2.InstanceControl:
        try:
            return self.streams.report(self.engine.state.runs, request, time.time())
        except BadInstance as exc:
            await context.abort(grpc.StatusCode[exc.code], f"ReportInstance: {exc}")

    async def SaveCheckpoint(self, request: stream_pb2.StreamCheckpoint, context) -> stream_pb2.SaveCheckpointResponse:
        ref = request.ref
        size = len(request.state)
        if size > MAX_CHECKPOINT_BYTES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"SaveCheckpoint: the state of {ref.stream}/{ref.stage}[{ref.instance}] is {size} bytes, "
                                f"over the limit of {MAX_CHECKPOINT_BYTES} bytes (64 MiB)")  # fmt: skip
        run = await self._instance_run(ref.stream, ref.stage, ref.instance, "SaveCheckpoint", context)
        task = self.streams.instance_task(run, ref.stage, ref.instance)
        if is_stale(ref, run, task):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"SaveCheckpoint: fenced: {ref.stream}/{ref.stage}[{ref.instance}] run {ref.run_id} "
                                f"attempt {ref.attempt} is not the current one (run {run.run_id} attempt {task.attempt})")  # fmt: skip
        try:
            stored = await self.engine.store.put_checkpoint((ref.stream, ref.stage, ref.instance), request.seq,
                                                            request.SerializeToString())  # fmt: skip
        except StoreFault as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"SaveCheckpoint: {exc}; nothing was saved, save again")
        if not stored:
            log.info("ignored checkpoint seq %d of %s/%s[%d]: a newer one is stored", request.seq, ref.stream,
                     ref.stage, ref.instance)  # fmt: skip
        return stream_pb2.SaveCheckpointResponse()

    async def LoadCheckpoint(self, request: stream_pb2.LoadCheckpointRequest, context) -> stream_pb2.StreamCheckpoint:
        await self._instance_run(request.stream, request.stage, request.instance, "LoadCheckpoint", context)
        data = await self.engine.store.get_checkpoint((request.stream, request.stage, request.instance))
        return stream_pb2.StreamCheckpoint() if data is None else stream_pb2.StreamCheckpoint.FromString(data)

    async def GetStreams(self, request: stream_pb2.GetStreamsRequest, context) -> stream_pb2.GetStreamsResponse:
        state = self.engine.state
        runs = current_runs(state.runs.values())
        unknown = [name for name in request.names if name not in runs]
        if unknown:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"GetStreams: no stream pipeline named {', '.join(map(repr, unknown))}")
        wanted = request.names or sorted(runs)
        now = time.time()
        out = stream_pb2.GetStreamsResponse()
        for name in wanted:
            run = runs[name]
            if self._may(run, "stream:read"):
                out.streams.append(self.streams.status(run, now, state.worker_name))
        return out

    async def StopStream(self, request: stream_pb2.StopStreamRequest, context) -> stream_pb2.StopStreamResponse:
        run = await self._controlled(request.name, "StopStream", context)
        if not self.engine.state.run_is_terminal(run.run_id):
            stop = self.streams.request_stop(run, request.drain, request.timeout_s, time.time())
            task = asyncio.create_task(self._cancel_after(request.name, run.run_id, stop.deadline), name=f"xpipe-stop-{run.run_id}")
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)
        return stream_pb2.StopStreamResponse(status=self.streams.status(run, time.time(), self.engine.state.worker_name))

    async def _cancel_after(self, name: str, run_id: str, deadline: float) -> None:
        """Cancel a stopping stream's run that is still going at ``deadline`` (the existing cancel path)."""
        await asyncio.sleep(max(0.0, deadline - time.time()))  # a timer, not a synchronization
        engine = self.engine
        if run_id in engine.state.runs and not engine.state.run_is_terminal(run_id):
            log.warning("stream %s did not stop within its timeout: cancelling run %s", name, run_id)
            engine.post(CancelRequested(time.time(), run_id, stimulus_id=f"stream-stop-{run_id}"))

    async def RestartStreams(self, request: stream_pb2.RestartStreamsRequest, context) -> stream_pb2.RestartStreamsResponse:
        state = self.engine.state
        runs = current_runs(state.runs.values())
        if request.names:
            chosen = [await self._controlled(name, "RestartStreams", context) for name in request.names]
        else:
            now = time.time()
            chosen = [run for name, run in sorted(runs.items())
                      if self._may(run, "stream:control") and not self.streams.status(run, now).healthy]  # fmt: skip
        out = stream_pb2.RestartStreamsResponse()
        for run in chosen:
            name = stream_of(run)
            if not state.run_is_terminal(run.run_id):
                self.engine.post(CancelRequested(time.time(), run.run_id, stimulus_id=f"stream-restart-{run.run_id}"))
            spec = pb.PipelineSpec()
            spec.CopyFrom(run.spec)
            principal = (spec.principal.name, tuple(spec.principal.grants))
            spec.ClearField("principal")
            spec.ClearField("trace_context")
            try:
                out.run_ids[name] = await self.engine.submit(spec, principal=principal)
            except StoreFault as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"RestartStreams: {exc}; restarted so far: {dict(out.run_ids)}")
            self.streams.forget_stop(name)
            log.info("restarted stream %s: run %s -> %s", name, run.run_id, out.run_ids[name])
        return out

    # ------------------------------------------------------------ helpers

    @property
    def engine(self):
        return self.coordinator.engine

    def _may(self, run, permission: str) -> bool:
        """The caller holds ``permission`` in the run's namespace (always, with auth off)."""
        return authorize(caller(), permission, namespace_of(run), self.coordinator.policy) is None

    async def _controlled(self, name: str, method: str, context):
        """The stream's current run, if the caller may control it; aborts NOT_FOUND / PERMISSION_DENIED."""
        try:
            run = self.streams.current(self.engine.state.runs, name)
        except BadInstance as exc:
            await context.abort(grpc.StatusCode[exc.code], f"{method}: {exc}")
        refusal = authorize(caller(), "stream:control", namespace_of(run), self.coordinator.policy)
        if refusal is not None:
            await context.abort(grpc.StatusCode[refusal.code], f"{method}: {refusal.message}")
        return run

    async def _instance_run(self, stream: str, stage: str, instance: int, method: str, context):
        try:
            run = self.streams.current(self.engine.state.runs, stream)
            self.streams.instance_task(run, stage, instance)
        except BadInstance as exc:
            await context.abort(grpc.StatusCode[exc.code], f"{method}: {exc}")
        return run
