"""A running stream pipeline seen from the SDK: its status, stop, wait, and the health of many.

``StreamPipeline.start()`` returns a :class:`StreamHandle`; ``pm.get_stream_health()`` a
:class:`StreamHealth`. Both read the coordinator's ``StreamService`` (GetStreams,
StopStream, RestartStreams) through the manager's client, so they retry and fail over like
every other call. The status types are frozen mirrors of the proto's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xpipe._proto import stream_pb2, stream_pb2_grpc

if TYPE_CHECKING:
    from .._client import Client

__all__ = ["InstanceStatus", "StageStatus", "StreamHandle", "StreamHealth", "StreamStatus", "get_streams", "restart_streams"]

#: How often :meth:`StreamHandle.stop` and :meth:`StreamHandle.wait` poll the status.
POLL_INTERVAL_S = 0.2
#: Stream states after which nothing runs any more.
FINAL_STATES = frozenset({"stopped", "failed"})


@dataclass(frozen=True)
class InstanceStatus:
    """One stage instance: its task and worker, and what its last report said."""

    instance: int
    task: str
    task_state: str
    worker_id: str
    worker_name: str
    state: str  # what the instance reported: starting | running | paused | draining | stopped | failed ("" none yet)
    reported_at: float
    healthy: bool
    problem: str
    records_in: int
    records_out: int
    lag: int
    buffer_fill: int
    buffer_size: int
    last_error: str
    partitions: tuple[int, ...] = ()  # the input partitions it reads

    @classmethod
    def from_proto(cls, m: stream_pb2.InstanceStatus) -> InstanceStatus:
        r = m.last_report
        return cls(
            instance=m.instance, task=m.task, task_state=m.task_state, worker_id=m.worker_id, worker_name=m.worker_name,
            state=r.state, reported_at=m.reported_at, healthy=m.healthy, problem=m.problem, records_in=r.records_in,
            records_out=r.records_out, lag=r.lag, buffer_fill=r.buffer_fill, buffer_size=r.buffer_size,
            last_error=r.last_error, partitions=tuple(r.partitions),
        )  # fmt: skip


@dataclass(frozen=True)
class StageStatus:
    """A stage: throughput (records per second), lag (-1: unknown), buffer fill 0..1, counters."""

    name: str
    input: str
    parallelism: int
    active: int
    instances: tuple[InstanceStatus, ...]
    records_in_per_s: float
    records_out_per_s: float
    lag: int
    buffer_fill: float
    records_in: int
    records_out: int
    dropped: int
    errors: int
    dead_lettered: int
    late: int
    redelivered: int

    @classmethod
    def from_proto(cls, m: stream_pb2.StageStatus) -> StageStatus:
        return cls(
            name=m.name, input=m.input, parallelism=m.parallelism, active=m.active,
            instances=tuple(InstanceStatus.from_proto(i) for i in m.instances), records_in_per_s=m.records_in_per_s,
            records_out_per_s=m.records_out_per_s, lag=m.lag, buffer_fill=m.buffer_fill, records_in=m.records_in,
            records_out=m.records_out, dropped=m.dropped, errors=m.errors, dead_lettered=m.dead_lettered,
            late=m.late, redelivered=m.redelivered,
        )  # fmt: skip


@dataclass(frozen=True)
class StreamStatus:
    """A stream pipeline: state (starting | running | draining | stopped | failed), health, stages."""

    name: str
    run_id: str
    state: str
    healthy: bool
    problem: str
    stages: tuple[StageStatus, ...]
    started_at: float
    auto_scaling: bool
    namespace: str

    @classmethod
    def from_proto(cls, m: stream_pb2.StreamStatus) -> StreamStatus:
        return cls(
            name=m.name, run_id=m.run_id, state=m.state, healthy=m.healthy, problem=m.problem,
            stages=tuple(StageStatus.from_proto(s) for s in m.stages), started_at=m.started_at,
            auto_scaling=m.auto_scaling, namespace=m.namespace,
        )  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class StreamHealth:
    """``pm.get_stream_health()``: every stream's status, and which are unhealthy.

    A stream stopped on purpose is not unhealthy; a failed one, or a running one with a
    problem (an instance not running, silent, or failing), is.
    """

    streams: Mapping[str, StreamStatus] = field(default_factory=dict)

    @property
    def failed_streams(self) -> list[str]:
        return sorted(name for name, s in self.streams.items() if not s.healthy)

    @property
    def healthy(self) -> bool:
        return not self.failed_streams


def get_streams(client: Client, names: Iterable[str] = ()) -> dict[str, StreamStatus]:
    """Status of the named stream pipelines (all when none are named) the caller may read."""
    request = stream_pb2.GetStreamsRequest(names=list(names))
    reply = client._call_on(stream_pb2_grpc.StreamServiceStub, lambda s: s.GetStreams(request, timeout=client.call_timeout_s))
    return {m.name: StreamStatus.from_proto(m) for m in reply.streams}


def restart_streams(client: Client, names: Iterable[str] = ()) -> dict[str, str]:
    """Restart the named stream pipelines (every unhealthy one when none are named); name -> new run id."""
    request = stream_pb2.RestartStreamsRequest(names=list(names))
    reply = client._call_on(stream_pb2_grpc.StreamServiceStub, lambda s: s.RestartStreams(request, timeout=client.call_timeout_s))
    return dict(reply.run_ids)


def stop_stream(client: Client, name: str, *, drain: bool = True, timeout_s: float = 30.0) -> StreamStatus:
    """Ask the coordinator to stop a stream pipeline; returns the status at once (not waiting)."""
    request = stream_pb2.StopStreamRequest(name=name, drain=drain, timeout_s=timeout_s)
    reply = client._call_on(stream_pb2_grpc.StreamServiceStub, lambda s: s.StopStream(request, timeout=client.call_timeout_s))
    return StreamStatus.from_proto(reply.status)


class StreamHandle:
    """A started stream pipeline (``StreamPipeline.start()``): status, stop, wait.

    Args:
        client: the manager's client (calls retry and fail over through it).
    """

    def __init__(self, client: Client, name: str, run_id: str):
        self._client = client
        self.name = name
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"StreamHandle(name={self.name!r}, run_id={self.run_id!r})"

    def status(self) -> StreamStatus:
        """The stream's current status (its newest run's, after a restart)."""
        return get_streams(self._client, [self.name])[self.name]

    def stop(self, drain: bool = True, timeout_s: float = 30.0) -> StreamStatus:
        """Stop the stream and wait until it has stopped; returns the final status.

        With ``drain`` the instances finish their buffers and open windows and commit before
        returning; past ``timeout_s`` the coordinator cancels the run.

        Raises:
            TimeoutError: still not stopped a few seconds after ``timeout_s`` (names the state).
        """
        stop_stream(self._client, self.name, drain=drain, timeout_s=timeout_s)
        return self.wait(timeout_s + 10.0)

    def wait(self, timeout_s: float | None = None) -> StreamStatus:
        """Wait until the stream is stopped or failed; returns its status.

        Raises:
            TimeoutError: not finished within ``timeout_s`` (names the stream and its state).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"stream {self.name!r} is still {status.state} after {timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)  # polling the coordinator: there is no watch for streams

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_id": self.run_id}
