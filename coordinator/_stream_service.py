"""``StreamService``: the memory broker, the stream instances' control channel, and the users' view.

Thin: the memory broker's calls go to :mod:`._membroker` (its servicer functions), the
control and view calls to the :class:`~._streams.StreamRegistry`. See proto/xpipe/v1/stream.proto.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from xpipe._proto import stream_pb2, stream_pb2_grpc

from . import _membroker as membroker

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["StreamServicer"]

log = logging.getLogger(__name__)


class StreamServicer(stream_pb2_grpc.StreamServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

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
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")

    async def SaveCheckpoint(self, request: stream_pb2.StreamCheckpoint, context) -> stream_pb2.SaveCheckpointResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")

    async def LoadCheckpoint(self, request: stream_pb2.LoadCheckpointRequest, context) -> stream_pb2.StreamCheckpoint:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")

    async def GetStreams(self, request: stream_pb2.GetStreamsRequest, context) -> stream_pb2.GetStreamsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")

    async def StopStream(self, request: stream_pb2.StopStreamRequest, context) -> stream_pb2.StopStreamResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")

    async def RestartStreams(self, request: stream_pb2.RestartStreamsRequest, context) -> stream_pb2.RestartStreamsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "stream control is not built yet")
