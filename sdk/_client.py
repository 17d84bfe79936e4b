"""A synchronous gRPC client for the coordinator's public services.

It takes a list of coordinator addresses and moves to the next one when a call finds a
coordinator unavailable, retrying with backoff until ``connect_timeout_s`` passes, so a
client blocked in :meth:`wait` rides through a coordinator restart. Submits carry an
idempotency key, so a retried submit never starts a run twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc

from ._limits import MAX_MESSAGE_BYTES
from ._proto import admin_pb2, admin_pb2_grpc, common_pb2, pipeline_pb2, pipeline_pb2_grpc
from .errors import CoordinatorUnavailableError, from_grpc_error

__all__ = ["Client", "leader_hint", "parse_addresses"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
]
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE}
#: Trailing metadata in which an HA follower names the leader (see coordinator/_leader.py).
_LEADER_KEY = "xpipe-leader"


def parse_addresses(coordinator: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` -> a list of ``host:port`` strings."""
    items = coordinator.split(",") if isinstance(coordinator, str) else list(coordinator)
    out = [a.strip() for a in items if a and a.strip()]
    if not out:
        raise ValueError("no coordinator address given")
    for address in out:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bad coordinator address {address!r}: expected HOST:PORT")
    return out


def leader_hint(exc: grpc.RpcError) -> str:
    """The leader a follower named in its UNAVAILABLE answer, or "" (none, or malformed)."""
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - an error without call metadata carries no hint
        return ""
    for key, value in metadata:
        if key == _LEADER_KEY:
            hint = value.decode() if isinstance(value, bytes) else str(value)
            try:
                return parse_addresses(hint)[0] if "," not in hint else ""
            except ValueError:
                return ""
    return ""


class Client:
    """Talks to one cluster (a list of coordinators).

    Args:
        coordinator: ``"host:port[,host:port...]"`` or a list of them.
        connect_timeout_s: how long a call keeps trying unavailable coordinators.
        call_timeout_s: deadline of each unary call.
    """

    def __init__(self, coordinator: str | Sequence[str], *, connect_timeout_s: float = 30.0, call_timeout_s: float = 30.0):
        self.addresses = parse_addresses(coordinator)
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._index = 0
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def _stubs(self) -> tuple[pipeline_pb2_grpc.PipelineServiceStub, admin_pb2_grpc.AdminServiceStub]:
        with self._lock:
            if self._closed:
                raise RuntimeError("client is closed")
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.addresses[self._index], options=_OPTIONS)
            channel = self._channel
        return pipeline_pb2_grpc.PipelineServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)

    def _next_address(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            self._index = (self._index + 1) % len(self.addresses)

    def _use_address(self, address: str) -> None:
        """Switch to ``address`` (a leader named by a follower), adding it to the list if new."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if address not in self.addresses:
                self.addresses.append(address)
            self._index = self.addresses.index(address)

    def _follow_hint(self, exc: grpc.RpcError) -> None:
        """After a broken stream: go to the leader a follower named, else the next address."""
        hint = leader_hint(exc)
        if hint and hint != self.address:
            self._use_address(hint)
        else:
            self._next_address()

    @property
    def address(self) -> str:
        """The coordinator currently in use."""
        return self.addresses[self._index]

    def _call(self, fn: Callable[[pipeline_pb2_grpc.PipelineServiceStub, admin_pb2_grpc.AdminServiceStub], T]) -> T:
        deadline = time.monotonic() + self.connect_timeout_s
        backoff = 0.05
        jumps = 0
        while True:
            try:
                return fn(*self._stubs())
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE or time.monotonic() >= deadline:
                    if exc.code() in _RETRYABLE:
                        raise CoordinatorUnavailableError(
                            f"no coordinator answered at {','.join(self.addresses)} within "
                            f"{self.connect_timeout_s:.0f}s: {exc.details()}"
                        ) from exc
                    raise from_grpc_error(exc) from exc
                log.debug("coordinator %s unavailable (%s); trying again", self.address, exc.details())
                hint = leader_hint(exc)
            # A follower named the leader: go straight there (a few times in a row at most, in
            # case members disagree for a moment during an election).
            if hint and hint != self.address and jumps < 3:
                jumps += 1
                self._use_address(hint)
                continue
            jumps = 0
            self._next_address()
            time.sleep(min(backoff * (0.5 + random.random()), max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 1.0)

    # ------------------------------------------------------------------ API

    def submit(self, spec: common_pb2.PipelineSpec) -> str:
        """Submit a pipeline spec; returns the run id once the run is durable."""
        request = pipeline_pb2.SubmitPipelineRequest(pipeline=spec, idempotency_key=uuid.uuid4().hex)
        return self._call(lambda p, a: p.SubmitPipeline(request, timeout=self.call_timeout_s)).run_id

    def get_run(self, run_id: str, *, include_results: bool = False) -> pipeline_pb2.RunInfo:
        request = pipeline_pb2.GetRunRequest(run_id=run_id, include_results=include_results)
        return self._call(lambda p, a: p.GetRun(request, timeout=self.call_timeout_s))

    def list_runs(self, limit: int = 50) -> list[pipeline_pb2.RunSummary]:
        request = pipeline_pb2.ListRunsRequest(limit=limit)
        return list(self._call(lambda p, a: p.ListRuns(request, timeout=self.call_timeout_s)).runs)

    def cancel(self, run_id: str) -> bool:
        """Ask the coordinator to cancel a run; False if it had already ended."""
        request = pipeline_pb2.CancelRunRequest(run_id=run_id)
        return self._call(lambda p, a: p.CancelRun(request, timeout=self.call_timeout_s)).cancelled

    def task_result(self, run_id: str, task: str) -> pipeline_pb2.TaskResult:
        request = pipeline_pb2.GetTaskResultRequest(run_id=run_id, task=task)
        return self._call(lambda p, a: p.GetTaskResult(request, timeout=self.call_timeout_s))

    def task_stats(self, names: Sequence[str]) -> dict[str, tuple[float, int]]:
        """Duration history of task names: ``{name: (mean seconds, samples)}`` (known names only)."""
        request = pipeline_pb2.GetTaskStatsRequest(names=list(names))
        reply = self._call(lambda p, a: p.GetTaskStats(request, timeout=self.call_timeout_s))
        return {name: (s.mean_duration_s, s.samples) for name, s in reply.stats.items()}

    def watch(
        self, run_id: str, *, summary_only: bool = False, results_on_end: bool = False
    ) -> Iterator[pipeline_pb2.RunEvent]:
        """Yield the run's state, then its changes, until it ends; reconnects on failover.

        After a reconnect the first event again carries every task, so a consumer that
        keeps a name -> state map stays right. ``summary_only`` leaves out task changes;
        ``results_on_end`` makes the final event carry every task with its result.
        """
        request = pipeline_pb2.WatchRunRequest(run_id=run_id, summary_only=summary_only, results_on_end=results_on_end)
        while True:
            stream = self._call(lambda p, a: p.WatchRun(request))
            try:
                for event in stream:
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise from_grpc_error(exc) from exc
                log.info("watch of run %s interrupted (%s); reconnecting", run_id, exc.code().name)
                self._follow_hint(exc)
            finally:
                stream.cancel()

    def submit_and_watch(
        self, spec: common_pb2.PipelineSpec, *, summary_only: bool = False, results_on_end: bool = False
    ) -> Iterator[pipeline_pb2.RunEvent]:
        """Submit a pipeline and follow its run in one call (one round trip fewer).

        The first event's ``summary.run_id`` names the run. A retry after a lost answer
        carries the same idempotency key, so the run is never started twice; once the run
        id is known, a broken stream continues as :meth:`watch`.
        """
        request = pipeline_pb2.WatchRunRequest(
            submit=pipeline_pb2.SubmitPipelineRequest(pipeline=spec, idempotency_key=uuid.uuid4().hex),
            summary_only=summary_only,
            results_on_end=results_on_end,
        )
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            stream = self._call(lambda p, a: p.WatchRun(request))
            run_id = ""
            try:
                for event in stream:
                    run_id = event.summary.run_id
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise from_grpc_error(exc) from exc
                if run_id:
                    break  # submitted: follow it like any other run
                if time.monotonic() > deadline:
                    raise CoordinatorUnavailableError(f"could not submit to {','.join(self.addresses)}") from exc
                self._follow_hint(exc)
            finally:
                stream.cancel()
        yield from self.watch(run_id, summary_only=summary_only, results_on_end=results_on_end)

    def list_workers(self) -> list[admin_pb2.WorkerInfo]:
        return list(self._call(lambda p, a: a.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=self.call_timeout_s)).workers)

    def cluster_status(self) -> admin_pb2.ClusterStatus:
        return self._call(lambda p, a: a.GetClusterStatus(admin_pb2.GetClusterStatusRequest(), timeout=self.call_timeout_s))

    def drain(self, worker_name: str) -> bool:
        request = admin_pb2.DrainWorkerRequest(name=worker_name)
        return self._call(lambda p, a: a.DrainWorker(request, timeout=self.call_timeout_s)).found

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
