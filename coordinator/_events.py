"""Events into and actions out of the coordinator's state machine.

Events and actions are slotted dataclasses so they can be logged and compared in tests.
They are immutable by convention: nothing sets a field after construction (neither the
shell after the fact nor the state machine). They are not ``frozen=True`` because a frozen
dataclass's ``__init__`` sets each field through ``object.__setattr__``: ~1.7 µs for a
``TaskSucceeded`` against ~0.4 µs, and several are built per task on the hot path
(``unsafe_hash=True`` keeps the hash a frozen one had). Every event carries ``now`` (unix
seconds): the state machine reads no clock.

Every event also carries a ``stimulus_id``: what caused it (a worker message, a client
RPC, a timer, a recovery), as a cheap string such as ``"rpc-submit-<run>"`` or
``"tick-<n>"``. The state machine stamps it on the records and the transition-log entries
the event causes, so ``xpipe story`` can tell why each task moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xpipe._graph import sub_task_of
from xpipe._proto import common_pb2, pipeline_pb2

__all__ = [
    "AttemptKey",
    "Event",
    "RunSubmitted",
    "RunRestored",
    "WorkerConnected",
    "WorkerDisconnected",
    "HeartbeatReceived",
    "HeartbeatPaceChanged",
    "TaskStarted",
    "TaskSucceeded",
    "TaskFailed",
    "TaskReleased",
    "CancelRequested",
    "DebugReleaseRequested",
    "DrainRequested",
    "Tick",
    "RunEvicted",
    "Action",
    "RunRecord",
    "TaskRecord",
    "Assign",
    "CancelAttempts",
    "DrainWorker",
    "ResetWorker",
    "WorkerLost",
    "CircuitOpened",
    "task_info",
    "StoryEntry",
]

#: (run_id, task name, attempt number) names one attempt of one task.
AttemptKey = tuple[str, str, int]


#: One transition-log entry: (time, stimulus_id, run_id, task, attempt, from_state, to_state, reason).
#: A plain tuple, since one is made per task transition on the hot path.
StoryEntry = tuple[float, str, str, str, int, int, int, str]

#: How every event and action class is declared (see the module docstring: never mutate one).
_message = dataclass(slots=True, unsafe_hash=True)


@_message
class Event:
    now: float
    #: What caused this event; keyword-only with a default so every constructor stays valid.
    stimulus_id: str = field(default="", kw_only=True)


@_message
class RunSubmitted(Event):
    run_id: str
    spec: common_pb2.PipelineSpec
    order: tuple[str, ...]  # a topological order, from validate_graph


@_message
class RunRestored(Event):
    """A run read back from the store after a restart (``tasks`` maps name -> TaskRecord)."""

    run_id: str
    spec: common_pb2.PipelineSpec
    order: tuple[str, ...]
    created_at: float
    tasks: dict[str, TaskRecord]


@_message
class WorkerConnected(Event):
    worker_id: str
    name: str
    host: str
    slots: int
    handlers: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)
    resources: common_pb2.Resources | None = None
    running: tuple[AttemptKey, ...] = ()
    accepts_pickled: bool = True
    memory_enforcement: str = ""  # how the worker holds tasks to their memory (shown by ListWorkers)
    allowed_code: frozenset[str] = frozenset()  # --allow-code; empty: every kind (pickle if accepts_pickled)


@_message
class WorkerDisconnected(Event):
    worker_id: str


@_message
class HeartbeatReceived(Event):
    worker_id: str
    running: tuple[AttemptKey, ...] = ()
    metrics: Any = None
    draining: bool = False
    #: Attempts sent to the worker that it had not received when it sent this heartbeat.
    on_their_way: frozenset = frozenset()


@_message
class HeartbeatPaceChanged(Event):
    """The shell's heartbeat pacing (``_heartbeats.HeartbeatPacer``) changed what workers are told or the timeout in effect."""

    #: The interval workers are told now (shown by metrics).
    interval_s: float
    #: Silence after which a worker is lost, from now on.
    timeout_s: float


@_message
class TaskStarted(Event):
    worker_id: str
    attempt: AttemptKey
    at: float


@_message
class TaskSucceeded(Event):
    worker_id: str
    attempt: AttemptKey
    at: float
    result: common_pb2.Payload
    started_at: float = 0.0
    skipped: bool = False  # the task's error policy skipped it: SKIPPED, dependents get None
    fallback_used: bool = False  # result came from the task's fallback
    cause: common_pb2.TaskError | None = None  # the exception behind a skip or a fallback
    telemetry: common_pb2.TaskTelemetry | None = None  # what the attempt recorded; None: nothing
    cache_hit: bool = False  # the result came from the result cache: the code did not run


@_message
class TaskFailed(Event):
    worker_id: str
    attempt: AttemptKey
    at: float
    error: common_pb2.TaskError
    started_at: float = 0.0
    telemetry: common_pb2.TaskTelemetry | None = None  # what the attempt recorded; None: nothing
    result: common_pb2.Payload | None = None  # a failed command's result, kept beside the error


@_message
class TaskReleased(Event):
    """The worker gives an attempt back unstarted (it is draining or stopping)."""

    worker_id: str
    attempt: AttemptKey


@_message
class CancelRequested(Event):
    run_id: str


@_message
class DebugReleaseRequested(Event):
    """A debugger releases HELD tasks of a debug run (DebugService.ReleaseTasks)."""

    run_id: str
    tasks: tuple[str, ...]


@_message
class DrainRequested(Event):
    worker_id: str


@_message
class Tick(Event):
    """Time passed: retry timers and heartbeat deadlines are checked."""


@_message
class RunEvicted(Event):
    """The shell's memory budget is spent: drop this finished run from memory (the store keeps it)."""

    run_id: str


# ---- actions ----


@_message
class Action:
    pass


@_message
class RunRecord(Action):
    """Persist a run's header; ``spec`` is set only when the run is new."""

    run_id: str
    name: str
    state: int  # common_pb2.RunState
    created_at: float
    finished_at: float
    total: int
    spec: common_pb2.PipelineSpec | None = None
    stimulus_id: str = field(default="", kw_only=True)


@_message
class TaskRecord(Action):
    """Persist one task's latest state (the store keeps one row per task)."""

    run_id: str
    name: str
    state: int  # common_pb2.TaskState
    attempt: int
    worker: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    error: common_pb2.TaskError | None = None
    result: common_pb2.Payload | None = None
    stimulus_id: str = ""
    #: Story entries of the task's earlier, failed or requeued attempts (persisted with
    #: the row so a restarted coordinator can still tell them); empty for most tasks.
    history: tuple[StoryEntry, ...] = ()
    #: What the task's last finished attempt recorded (metrics, performance); None for most
    #: tasks. An empty message replaces one a retried attempt recorded before.
    telemetry: common_pb2.TaskTelemetry | None = None
    #: Its result came from the result cache (docs/cache.md).
    cache_hit: bool = False


@_message
class Assign(Action):
    worker_id: str
    attempt: AttemptKey
    task: common_pb2.TaskSpec
    upstream: tuple[common_pb2.Payload, ...]
    code: tuple[common_pb2.CodeBlob, ...] = ()
    last_try: bool = False  # no retry follows a failure of this attempt
    traceparent: str = ""  # the run's W3C trace context; "" when the run is not traced
    principal: bytes = b""  # the run's signed principal, as encoded field Assignment.principal


@_message
class CancelAttempts(Action):
    worker_id: str
    attempts: tuple[AttemptKey, ...]


@_message
class DrainWorker(Action):
    worker_id: str


@_message
class ResetWorker(Action):
    """End the worker's stream so it registers again, reporting what it holds.

    Sent when a worker presumed lost turns out to be alive (it was paused, or its network
    stalled past the heartbeat deadline): its attempts were already requeued, so it must
    come back as a new registration, with its stale attempts fenced.
    """

    worker_id: str
    reason: str


@_message
class WorkerLost(Action):
    """A worker went unheard past its deadline (for alerting; nothing to carry out)."""

    worker_id: str
    name: str
    silent_s: float
    attempts: int  # attempts it held, requeued


@_message
class CircuitOpened(Action):
    """A circuit breaker opened on this failure (for alerting; nothing to carry out)."""

    circuit: str
    run_id: str
    task: str
    failures: int


def task_info(rec: TaskRecord, include_result: bool = False) -> pipeline_pb2.TaskInfo:
    """A task record as the API shows it (with its result only when asked)."""
    info = pipeline_pb2.TaskInfo(
        name=rec.name, state=rec.state, attempts=rec.attempt, worker=rec.worker,
        started_at=rec.started_at, finished_at=rec.finished_at,
    )  # fmt: skip
    if rec.error is not None:
        info.error.CopyFrom(rec.error)
    if include_result and rec.result is not None:
        info.result.CopyFrom(rec.result)
    if rec.telemetry is not None:
        info.telemetry.CopyFrom(rec.telemetry)
    if rec.cache_hit:
        info.cache_hit = True
    if rec.name[-1:] == "]":  # maybe a fan-out's sub-task, "parent[i]"
        sub = sub_task_of(rec.name)
        if sub is not None:
            info.map_parent, info.map_index = sub
    return info


# ---- forgetting unhealthy workers (AdminService.ForgetWorkers) ----


@_message
class WorkersForgotten(Event):
    """An operator gave up on these workers: drop them from the worker table.

    Only workers still lost or disconnected when the event is handled are dropped (one
    that came back in between is kept). Attempts a disconnected one held are requeued.
    """

    worker_ids: tuple[str, ...]
