"""What :class:`xpipe.Client` returns: small frozen dataclasses, not protobuf messages.

Users of the Python client should not need ``xpipe._proto`` (it stays there for those who
want the wire types). Each type owns a ``from_proto()``; states are the enum names as
strings (``"RUNNING"``, ``"SUCCEEDED"``), times are unix seconds as floats, or None where
the message has 0 (not started, not finished). The manager's own hot path (submit and
watch a run) stays on the messages, so it pays for none of these conversions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ._codec import decode
from ._domain import error_type_name
from ._install import FAILED, INSTALLED, REFUSED
from ._plan import resources_dict
from ._proto import admin_pb2, pipeline_pb2
from ._proto import common_pb2 as pb
from .telemetry._task import TaskMetrics, TaskPerformance
from .telemetry._tasklogs import STREAM_NAMES, truncation_marker

__all__ = [
    "CircuitInfo",
    "InstallReport",
    "LogChunk",
    "format_logs",
    "WorkerInstall",
    "ClusterStatus",
    "NodeRecovery",
    "RunEvent",
    "RunInfo",
    "RunSummary",
    "TaskInfo",
    "TaskResult",
    "WorkerInfo",
    "RUN_STATES",
    "TASK_STATES",
]

#: RunState value -> its name without the ``RUN_`` prefix: ``"PENDING"``, ``"RUNNING"``, ...
RUN_STATES = {value: name.removeprefix("RUN_") for name, value in pb.RunState.items() if value}
#: TaskState value -> its name: ``"PENDING"``, ``"READY"``, ..., ``"UPSTREAM_FAILED"``.
TASK_STATES = {value: name for name, value in pb.TaskState.items() if value}
_UNSPECIFIED = "UNSPECIFIED"


def _seconds(value: float) -> float | None:
    return value or None


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task of a run, as the coordinator last knew it.

    Attributes:
        state: ``"PENDING"`` ... ``"SUCCEEDED"``, ``"FAILED"``, ``"UPSTREAM_FAILED"``.
        result: the decoded value it returned, when the call asked for results and it has one
            (``has_result`` tells a returned None from no result).
        error, error_type, exception_type, traceback: what its last failed attempt reported.
        metrics, performance, metric_warnings: what its last finished attempt recorded
            (see docs/task-metrics.md).
        map_parent, map_index: for a fan-out's sub-task ``name[i]``, its task and ``i``;
            None otherwise.
    """

    name: str
    state: str
    attempts: int
    worker: str
    started_at: float | None
    finished_at: float | None
    error: str | None = None
    error_type: str | None = None
    exception_type: str | None = None
    traceback: str | None = None
    has_result: bool = False
    result: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    performance: TaskPerformance | None = None
    metric_warnings: tuple[str, ...] = ()
    #: Its result came from the result cache: its code did not run (docs/cache.md).
    cache_hit: bool = False
    map_parent: str | None = None
    map_index: int | None = None

    @classmethod
    def from_proto(cls, info: pipeline_pb2.TaskInfo) -> TaskInfo:
        err = info.error if info.HasField("error") else None
        has_result = info.HasField("result")
        measured = TaskMetrics.from_proto(info.telemetry if info.HasField("telemetry") else None)
        return cls(
            name=info.name,
            state=TASK_STATES.get(info.state, _UNSPECIFIED),
            attempts=info.attempts,
            worker=info.worker,
            started_at=_seconds(info.started_at),
            finished_at=_seconds(info.finished_at),
            error=err.message if err else None,
            error_type=error_type_name(err) if err else None,
            exception_type=(err.exception_type or None) if err else None,
            traceback=(err.traceback or None) if err else None,
            has_result=has_result,
            result=decode(info.result, what=f"result of task {info.name!r}") if has_result else None,
            metrics=measured.metrics,
            performance=measured.performance,
            metric_warnings=measured.warnings,
            cache_hit=info.cache_hit,
            map_parent=info.map_parent or None,
            map_index=info.map_index if info.map_parent else None,
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run without its tasks: what ``list_runs`` returns and every watch event carries."""

    run_id: str
    pipeline: str
    state: str  # PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED
    created_at: float | None
    finished_at: float | None
    total_tasks: int
    succeeded_tasks: int
    failed_tasks: int
    #: Tasks whose result came from the result cache (docs/cache.md).
    cache_hits: int = 0

    @property
    def finished(self) -> bool:
        return self.state in ("SUCCEEDED", "FAILED", "CANCELLED")

    @classmethod
    def from_proto(cls, s: pipeline_pb2.RunSummary) -> RunSummary:
        return cls(
            run_id=s.run_id,
            pipeline=s.pipeline,
            state=RUN_STATES.get(s.state, _UNSPECIFIED),
            created_at=_seconds(s.created_at),
            finished_at=_seconds(s.finished_at),
            total_tasks=s.total_tasks,
            succeeded_tasks=s.succeeded_tasks,
            failed_tasks=s.failed_tasks,
            cache_hits=s.cache_hits,
        )


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run and every task of it (``Client.get_run``)."""

    summary: RunSummary
    tasks: tuple[TaskInfo, ...]

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    @property
    def state(self) -> str:
        return self.summary.state

    def task(self, name: str) -> TaskInfo:
        """The task called ``name``.

        Raises:
            KeyError: no task of that name in this run (the message lists the names).
        """
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"run {self.run_id} has no task {name!r}; it has {[t.name for t in self.tasks]}")

    @classmethod
    def from_proto(cls, info: pipeline_pb2.RunInfo) -> RunInfo:
        return cls(RunSummary.from_proto(info.summary), tuple(TaskInfo.from_proto(t) for t in info.tasks))


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One step of a watched run: its summary, and the tasks that changed (all of them first)."""

    summary: RunSummary
    changed: tuple[TaskInfo, ...]

    @classmethod
    def from_proto(cls, event: pipeline_pb2.RunEvent) -> RunEvent:
        return cls(RunSummary.from_proto(event.summary), tuple(TaskInfo.from_proto(t) for t in event.changed))


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One task's state and, once it succeeded, its decoded value (``Client.task_result``)."""

    state: str
    has_value: bool
    value: Any
    error: str | None = None
    error_type: str | None = None

    @classmethod
    def from_proto(cls, reply: pipeline_pb2.TaskResult, *, task: str) -> TaskResult:
        err = reply.error if reply.HasField("error") else None
        has_value = reply.HasField("result")
        return cls(
            state=TASK_STATES.get(reply.state, _UNSPECIFIED),
            has_value=has_value,
            value=decode(reply.result, what=f"result of task {task!r}") if has_value else None,
            error=err.message if err else None,
            error_type=error_type_name(err) if err else None,
        )


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A piece of what a task attempt wrote (``Client.get_logs``, ``Client.follow_logs``).

    Attributes:
        stream: ``"stdout"`` or ``"stderr"`` (a task's ``logging`` records are in stderr).
        data: the bytes as written (a line may span chunks).
        truncated_bytes: when not 0, this chunk is a marker: that many bytes of the stream
            were dropped here (over the per-attempt cap, or shed under load).
        received_at: when the coordinator got it (unix seconds).
    """

    task: str
    attempt: int
    stream: str
    data: bytes
    truncated_bytes: int = 0
    received_at: float | None = None

    @property
    def text(self) -> str:
        """The data as text (undecodable bytes replaced), or the marker line."""
        if self.truncated_bytes and not self.data:
            return truncation_marker(_STREAM_NUMBERS.get(self.stream, 0), self.truncated_bytes)
        return self.data.decode("utf-8", errors="replace")

    @classmethod
    def from_proto(cls, chunk: pipeline_pb2.TaskLogChunk) -> LogChunk:
        return cls(
            task=chunk.task, attempt=chunk.attempt, stream=STREAM_NAMES.get(chunk.stream, "output"), data=chunk.data,
            truncated_bytes=chunk.truncated_bytes, received_at=_seconds(chunk.received_at),
        )  # fmt: skip


_STREAM_NUMBERS = {name: number for number, name in STREAM_NAMES.items()}


def format_logs(chunks: Any, *, headers: bool = True) -> Any:
    """Yield the text of ``chunks``, with a ``==> task 'x' attempt N <==`` line where the attempt changes.

    Used by ``pm.get_logs`` and ``xpipe logs`` alike; lazy, so it can render a followed stream.
    """
    current: tuple[str, int] | None = None
    ends_with_newline = True
    for chunk in chunks:
        if headers and (chunk.task, chunk.attempt) != current:
            current = (chunk.task, chunk.attempt)
            yield ("" if ends_with_newline else "\n") + f"==> task {chunk.task!r} attempt {chunk.attempt} <==\n"
        text = chunk.text
        if text:
            ends_with_newline = text.endswith("\n")
            yield text


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker the coordinator knows (``Client.list_workers``).

    Attributes:
        state: ``ready``, ``busy`` (every slot taken), ``draining``, ``disconnected``, ``drained`` or ``lost``.
        resources: ``{"cpu_cores", "memory_bytes", "gpu", <custom>...}`` as it registered them.
        last_heartbeat: unix seconds of the last word from it.
        metrics: its last psutil figures (``cpu_percent``, ``memory_percent``,
            ``memory_used_bytes``, ``load_1m``); empty before its first heartbeat.
    """

    worker_id: str
    name: str
    host: str
    state: str
    slots: int
    running: int
    resources: dict[str, float]
    labels: dict[str, str]
    handlers: tuple[str, ...]
    last_heartbeat: float | None
    metrics: dict[str, float]
    memory_enforcement: str

    @classmethod
    def from_proto(cls, w: admin_pb2.WorkerInfo) -> WorkerInfo:
        m = w.metrics
        metrics = (
            {"cpu_percent": m.cpu_percent, "memory_percent": m.memory_percent,
             "memory_used_bytes": float(m.memory_used_bytes), "load_1m": m.load_1m}
            if w.HasField("metrics") else {}
        )  # fmt: skip
        return cls(
            worker_id=w.worker_id,
            name=w.name,
            host=w.host,
            state=w.state,
            slots=w.slots,
            running=w.running,
            resources=resources_dict(w.resources, default_cpu=False),
            labels=dict(w.labels),
            handlers=tuple(w.handlers),
            last_heartbeat=_seconds(w.last_heartbeat),
            metrics=metrics,
            memory_enforcement=w.memory_enforcement,
        )


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """A circuit breaker that is not closed (``Pipeline.configure_fault_tolerance``)."""

    name: str  # "<pipeline>/<task>" or a Task's circuit= name
    state: str  # open, half_open
    failures: int
    opened_at: float | None

    @classmethod
    def from_proto(cls, c: admin_pb2.CircuitInfo) -> CircuitInfo:
        return cls(c.name, c.state, c.failures, _seconds(c.opened_at))


#: The keys of the dict ``PipelineManager.get_cluster_status()`` returned before 0.2.
_OLD_STATUS_KEYS = ("leader", "members", "term", "workers", "active_runs", "circuits")


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster as the coordinator that answered sees it.

    Attributes:
        leader: address of the leading coordinator.
        term: the leader's election term (0 with a single coordinator).
        members: addresses of the coordinators.
        workers: how many workers are registered and connected.
        unhealthy_nodes: names of workers lost (past their heartbeat deadline) or
            disconnected; :meth:`PipelineManager.recover_unhealthy_nodes` forgets them.
        active_runs: runs not yet ended.
        circuits: circuit breakers not closed.
        dashboard_url: the web dashboard (``--http-listen``), or "" when it is off.
        heartbeat_interval_s: seconds between heartbeats the workers are told now (stretched
            past ``--max-heartbeats-per-s``); 0 from a coordinator that does not say.
        heartbeat_timeout_s: seconds of silence after which a worker is lost now.
    """

    leader: str
    term: int
    members: tuple[str, ...]
    workers: int
    unhealthy_nodes: tuple[str, ...]
    active_runs: int
    circuits: tuple[CircuitInfo, ...]
    coordinator_id: str = ""
    version: str = ""
    dashboard_url: str = ""
    heartbeat_interval_s: float = 0.0
    heartbeat_timeout_s: float = 0.0

    def __getitem__(self, key: str) -> Any:
        """``status["workers"]``: the dict access of before, kept for a while.

        .. deprecated:: 0.2 use the attributes (``status.workers``).
        """
        if key not in _OLD_STATUS_KEYS:
            raise KeyError(f"{key!r}: ClusterStatus has attributes, not keys (the old keys were {_OLD_STATUS_KEYS})")
        warnings.warn(
            f'status["{key}"] is deprecated: get_cluster_status() returns a ClusterStatus; use status.{key}',
            DeprecationWarning,
            stacklevel=2,
        )
        if key == "members":
            return list(self.members)
        if key == "circuits":  # dicts, as before
            return [{"name": c.name, "state": c.state, "failures": c.failures, "opened_at": c.opened_at or 0.0}
                    for c in self.circuits]  # fmt: skip
        return getattr(self, key)

    @classmethod
    def from_proto(cls, s: admin_pb2.ClusterStatus) -> ClusterStatus:
        return cls(
            leader=s.leader_address,
            term=s.term,
            members=tuple(s.members),
            workers=s.workers,
            unhealthy_nodes=tuple(s.unhealthy_workers),
            active_runs=s.active_runs,
            circuits=tuple(CircuitInfo.from_proto(c) for c in s.circuits),
            coordinator_id=s.coordinator_id,
            version=s.version,
            dashboard_url=s.dashboard_url,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class NodeRecovery:
    """What :meth:`PipelineManager.recover_unhealthy_nodes` did with each name it was given.

    Attributes:
        forgotten: were lost or disconnected; the coordinator dropped them (a worker of that
            name that comes back registers afresh).
        healthy: connected workers, left alone.
        unknown: no worker of that name is known to the coordinator.
    """

    forgotten: tuple[str, ...]
    healthy: tuple[str, ...]
    unknown: tuple[str, ...]

    @classmethod
    def from_proto(cls, reply: admin_pb2.ForgetWorkersResponse) -> NodeRecovery:
        return cls(tuple(reply.forgotten), tuple(reply.healthy), tuple(reply.unknown))


@dataclass(frozen=True, slots=True)
class WorkerInstall:
    """One worker's answer to :meth:`PipelineManager.install_missing_dependencies`.

    Attributes:
        worker: the worker's name.
        status: ``"INSTALLED"``, ``"REFUSED"`` (no ``--allow-install``, or a name it refused)
            or ``"FAILED"`` (pip failed or overran, or the worker did not answer).
        message: why, for REFUSED and FAILED; what was installed where, for INSTALLED.
        output_tail: the end of pip's output, when pip ran.
    """

    worker: str
    status: str
    message: str
    output_tail: str = ""


@dataclass(frozen=True, slots=True)
class InstallReport:
    """What each connected worker did with an install request, sorted by worker name."""

    packages: tuple[str, ...]
    workers: tuple[WorkerInstall, ...]

    @property
    def installed(self) -> tuple[str, ...]:
        """Names of the workers that installed every package."""
        return tuple(w.worker for w in self.workers if w.status == INSTALLED)

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(w.worker for w in self.workers if w.status == REFUSED)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(w.worker for w in self.workers if w.status == FAILED)

    @property
    def ok(self) -> bool:
        """Every connected worker installed them."""
        return bool(self.workers) and len(self.installed) == len(self.workers)

    @classmethod
    def from_proto(cls, packages: tuple[str, ...], reply: admin_pb2.InstallDependenciesResponse) -> InstallReport:
        return cls(packages, tuple(WorkerInstall(r.worker, r.status, r.message, r.output_tail) for r in reply.results))
