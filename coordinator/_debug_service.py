"""``DebugService``: a debug session's controller releases the HELD tasks of its run.

Thin: the hold itself is in the state machine (:mod:`._debug_flow`); breakpoints and their
conditions live in the client (``xpipe._debug``), which may unpickle its own data; the
coordinator never does. See proto/xpipe/v1/debug.proto and docs/debugging.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc
from xpipe._limits import shown as quoted
from xpipe._proto import debug_pb2, debug_pb2_grpc

from ._events import DebugReleaseRequested

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["DebugServicer"]


class DebugServicer(debug_pb2_grpc.DebugServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

    async def ReleaseTasks(
        self, request: debug_pb2.ReleaseTasksRequest, context
    ) -> debug_pb2.ReleaseTasksResponse:
        engine = self.coordinator.engine
        run = engine.state.runs.get(request.run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no live run {quoted(request.run_id)}")
        if not run.debug:
            message = f"run {request.run_id} is not a debug run; only a debug session's run holds tasks"
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        unknown = [name for name in request.tasks if name not in run.tasks]
        if unknown:
            known = ", ".join(sorted(run.tasks))
            message = f"run {request.run_id} has no task {quoted(unknown[0])}; known: {known}"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        if engine.fault is not None:
            from ._server import _abort_store_fault  # at call time: _server imports this module

            await _abort_store_fault(context, engine.fault)
        held = set(engine.state.held_tasks(run.run_id))
        released = [name for name in dict.fromkeys(request.tasks) if name in held]
        if released:
            engine.post(DebugReleaseRequested(time.time(), run.run_id, tuple(released),
                                              stimulus_id=f"rpc-debug-release-{run.run_id}"))  # fmt: skip
        return debug_pb2.ReleaseTasksResponse(released=released)
