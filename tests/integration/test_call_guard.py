"""The call guard (coordinator/_guard.py): bound to each handler at registration, not an interceptor.

A real coordinator serves real gRPC on a loopback port from a background event loop in this
process, so the test can hold it in its "stopping" state while calls come in.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc, worker_pb2
from xpipe.coordinator._server import Coordinator
from xpipe.coordinator._store import SQLiteStore

_CONNECT = "/xpipe.v1.WorkerService/Connect"
_GARBAGE = b"\xff\xff\xff\xff\x0f garbage"


class _Served:
    def __init__(self, tmp_path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coordinator-loop", daemon=True)
        self.thread.start()
        self.coordinator = Coordinator(SQLiteStore(tmp_path / "xpipe.db"), listen="127.0.0.1:0")
        self.address = self.run(self.coordinator.start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def set_stopping(self, stopping: bool) -> None:
        """Hold the coordinator in the state the first step of ``stop()`` puts it in."""
        event = self.coordinator._stopped
        self.loop.call_soon_threadsafe(event.set if stopping else event.clear)
        self.run(asyncio.sleep(0))  # the flag is set once this returns

    def close(self) -> None:
        try:
            self.set_stopping(False)
            self.run(self.coordinator.stop(grace_s=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def served(tmp_path) -> Iterator[_Served]:
    served = _Served(tmp_path)
    try:
        yield served
    finally:
        served.close()


def _register(worker_id: str) -> worker_pb2.WorkerMessage:
    return worker_pb2.WorkerMessage(register=worker_pb2.Register(worker_id=worker_id, name=worker_id, slots=1))


def _stream_error(channel: grpc.Channel, messages: list[bytes]) -> grpc.RpcError:
    call = channel.stream_stream(_CONNECT)(iter(messages), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    return info.value


def _spec() -> common_pb2.PipelineSpec:
    spec = common_pb2.PipelineSpec(name="p")
    spec.tasks.add(name="t").command.argv.append("true")
    return spec


def test_unparsable_requests_get_invalid_argument_naming_the_method(served):
    with grpc.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(channel.unary_stream("/xpipe.v1.PipelineService/WatchRun")(_GARBAGE, timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed /xpipe.v1.PipelineService/WatchRun request" in info.value.details()

        # The worker stream checks its own messages: the first one, and any later one.
        first = _stream_error(channel, [_GARBAGE])
        assert first.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"malformed {_CONNECT} request" in first.details()
        later = _stream_error(channel, [_register("w-later").SerializeToString(), _GARBAGE])
        assert later.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"malformed {_CONNECT} request" in later.details()

        # A method nobody serves stays UNIMPLEMENTED (the guard wraps only real handlers).
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/xpipe.v1.PipelineService/NoSuchMethod")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # The coordinator still serves.
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        run_id = stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=_spec()), timeout=10).run_id
        assert stub.GetRun(pipeline_pb2.GetRunRequest(run_id=run_id), timeout=10).summary.run_id == run_id


def test_every_kind_of_call_is_refused_unavailable_while_stopping(served):
    with grpc.insecure_channel(served.address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        run_id = stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=_spec()), timeout=10).run_id
        served.set_stopping(True)
        calls = {
            "unary SubmitPipeline": lambda: stub.SubmitPipeline(
                pipeline_pb2.SubmitPipelineRequest(pipeline=_spec()), timeout=10),
            "server stream WatchRun": lambda: list(stub.WatchRun(pipeline_pb2.WatchRunRequest(run_id=run_id), timeout=10)),
            "bidi stream Connect": lambda: list(channel.stream_stream(_CONNECT)(
                iter([_register("w-late").SerializeToString()]), timeout=10)),
            "health Check": lambda: health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10),
        }  # fmt: skip
        for what, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, what
            assert "shutting down" in info.value.details(), what
        assert served.coordinator.guard.in_flight == 0
        # Nothing was taken while refusing: the late worker never registered.
        assert "w-late" not in served.coordinator.engine.state.workers
