"""What the state machine keeps per run, task and worker: plain mutable records.

They hold state and small derived helpers only; every rule that moves them lives in
:mod:`._state`, which owns them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, worker_pb2

from xpipe.security._codetrust import CODE_KINDS, code_kind

from ._events import AttemptKey
from ._placement import Request, normalize_strategy

__all__ = ["TaskEntry", "RunEntry", "WorkerEntry"]

log = logging.getLogger("xpipe.coordinator._state")


class TaskEntry:
    __slots__ = (
        "name", "spec", "state", "attempt", "worker", "started_at", "finished_at", "error", "result",
        "deps", "waiting", "dependents", "failures", "retry_at", "request", "cp", "wait_until", "circuit",
        "recovered", "assigned_entry", "started_entry", "history", "telemetry", "code", "cache_hit",
        "fan", "parent", "part",
    )  # fmt: skip

    def __init__(self, spec: pb.TaskSpec):
        self.name = spec.name
        self.spec = spec
        self.state = pb.PENDING
        self.attempt = 0
        self.worker = ""
        self.started_at = 0.0
        self.finished_at = 0.0
        self.error: pb.TaskError | None = None
        self.result: pb.Payload | None = None
        # Unique upstream names: depends_on (positional) plus DataFlow sources.
        self.deps: tuple[str, ...] = tuple(dict.fromkeys([*spec.depends_on, *(f.source_task for f in spec.flows)]))
        self.waiting = 0
        self.dependents: list[str] = []
        self.failures = 0
        self.retry_at = 0.0
        self.request = Request.of(
            spec.resources if spec.HasField("resources") else None, spec.labels, pinned=spec.long_running
        )
        self.code = code_kind(spec)  # its kind of code: placement sends it only to workers that run it
        self.cp = 1  # tasks on the longest path from here to a sink, this one included
        self.wait_until = 0.0  # waiting for a worker that fits to join, until then
        self.circuit = ""  # the circuit its attempts go through; "" when breakers are off
        self.recovered = False  # the recovery handler was consulted: it is not asked twice
        # Story entries (see SchedulerState.story) of the attempt out now: its ASSIGNED and
        # RUNNING moves, kept to persist with the row should the attempt fail.
        self.assigned_entry: tuple | None = None
        self.started_entry: tuple | None = None
        # Story entries of earlier attempts that failed or were requeued: persisted with the row.
        self.history: tuple = ()
        # What the last finished attempt recorded (TaskTelemetry); None for most tasks.
        self.telemetry: pb.TaskTelemetry | None = None
        self.cache_hit = False  # its result came from the result cache (docs/cache.md)
        # Dynamic fan-out (``_mapping_flow``): a fanned-out task's FanOut; a sub-task's parent
        # task name and its part (given in place of the first upstream result).
        self.fan = None
        self.parent: str | None = None
        self.part: pb.Payload | None = None


class RunEntry:
    __slots__ = (
        "run_id", "name", "spec", "created_at", "finished_at", "state", "tasks", "terminal", "succeeded",
        "failed", "code", "retry_on_failure", "max_parallel", "inflight", "fail_fast", "strategy", "limits",
        "used", "wait_for_resources_s", "handler", "recovering", "recovery_seq", "halted", "big_results",
        "traceparent", "principal", "cache_hits", "debug",
    )  # fmt: skip

    def __init__(self, run_id: str, spec: pb.PipelineSpec, created_at: float):
        self.run_id = run_id
        self.name = spec.name
        self.spec = spec
        self.created_at = created_at
        self.finished_at = 0.0
        self.state = pb.RUN_RUNNING
        self.tasks: dict[str, TaskEntry] = {t.name: TaskEntry(t) for t in spec.tasks}
        self.terminal = 0
        self.succeeded = 0
        self.failed = 0
        self.cache_hits = 0  # tasks whose result came from the result cache
        self.code = {blob.code_hash: blob for blob in spec.code}
        self.retry_on_failure = spec.retry_on_failure
        self.max_parallel = spec.max_parallel
        self.inflight = 0  # tasks ASSIGNED or RUNNING
        # failure_isolation=False: the first task failure cancels the rest of the run.
        self.fail_fast = spec.fault_tolerance.fail_fast
        try:
            self.strategy = normalize_strategy(spec.placement_strategy)
        except ValueError as exc:
            log.warning("run %s: %s; using the default", run_id, exc)
            self.strategy = normalize_strategy("")
        self.wait_for_resources_s = max(0.0, spec.wait_for_resources_s)
        # A run-level cap on resources in flight (execution plans); None: no cap.
        self.limits = Request.limits(spec.resource_limits) if spec.HasField("resource_limits") else None
        self.used: dict[str, int] = {}  # resources in flight, counted only when limits is set
        # @pipeline.recovery_handler: the call that runs it; None: no handler.
        self.handler = spec.recovery_handler if spec.HasField("recovery_handler") else None
        # task name -> (synthetic attempt number, worker) of its handler call; (0, "") while queued.
        self.recovering: dict[str, tuple[int, str]] = {}
        self.recovery_seq = 0
        self.halted = False  # a recovery handler answered halt_pipeline
        # Some task's result travels by reference: placement then looks for locality.
        self.big_results = False
        # A debug session's run: tasks wait in HELD for the debugger (_debug_flow).
        self.debug = spec.debug
        # The run's W3C traceparent (PipelineSpec.trace_context, set at submit); "": not traced.
        self.traceparent = spec.trace_context.partition("\n")[0]
        # The signed RunPrincipal as field ``Assignment.principal``, encoded once per run:
        # every assignment of the run appends these bytes as they are. b"": unsigned.
        self.principal = (
            worker_pb2.Assignment(principal=spec.principal).SerializeToString() if spec.principal.signature else b""
        )
        if spec.fault_tolerance.circuit_breaker_enabled:
            for task in self.tasks.values():
                task.circuit = task.spec.circuit or f"{spec.name}/{task.name}"
        for task in self.tasks.values():
            for dep in task.deps:
                self.tasks[dep].dependents.append(task.name)

    def set_critical_paths(self, order: Iterable[str]) -> None:
        """Longest path (in tasks) from each task to a sink: O(V+E), once per run."""
        tasks = self.tasks
        for name in reversed(tuple(order)):
            task = tasks[name]
            task.cp = 1 + max((tasks[d].cp for d in task.dependents), default=0)

    def charge(self, task: TaskEntry, sign: int) -> None:
        """Add (+1) or remove (-1) a task's request from the run's in-flight resources."""
        if self.limits is None:
            return
        used, r = self.used, task.request
        for key, amount in (("cpu", r.cpu_milli), ("memory", r.memory_bytes), ("gpu", r.gpu), *r.custom):
            used[key] = used.get(key, 0) + sign * amount

    def within_limits(self, task: TaskEntry) -> bool:
        limits = self.limits
        if limits is None:
            return True
        used, r = self.used, task.request
        if used.get("cpu", 0) + r.cpu_milli > limits.cpu_milli:
            return False
        if used.get("memory", 0) + r.memory_bytes > limits.memory_bytes or used.get("gpu", 0) + r.gpu > limits.gpu:
            return False
        capped = dict(limits.custom)
        return all(used.get(k, 0) + v <= capped[k] for k, v in r.custom if k in capped)

    def beyond_limits(self, task: TaskEntry) -> str:
        """Why this task alone exceeds the run's resource_limits ("" if it does not)."""
        limits, r = self.limits, task.request
        if limits is None:
            return ""
        over = []
        if r.cpu_milli > limits.cpu_milli:
            over.append(f"cpu_cores {r.cpu_milli / 1000:g} > {limits.cpu_milli / 1000:g}")
        if r.memory_bytes > limits.memory_bytes:
            over.append(f"memory_bytes {r.memory_bytes} > {limits.memory_bytes}")
        if r.gpu > limits.gpu:
            over.append(f"gpu {r.gpu} > {limits.gpu}")
        capped = dict(limits.custom)
        over += [f"{k} {v / 1000:g} > {capped[k] / 1000:g}" for k, v in r.custom if k in capped and v > capped[k]]
        return f"the run's resource_limits are smaller than the task's request ({'; '.join(over)})" if over else ""

    def summary(self) -> pipeline_pb2.RunSummary:
        return pipeline_pb2.RunSummary(
            run_id=self.run_id, pipeline=self.name, state=self.state, created_at=self.created_at,
            finished_at=self.finished_at, total_tasks=len(self.tasks), succeeded_tasks=self.succeeded,
            failed_tasks=self.failed, cache_hits=self.cache_hits,
        )  # fmt: skip


class WorkerEntry:
    __slots__ = (
        "worker_id", "name", "host", "slots", "handlers", "labels", "resources", "code_kinds", "assigned",
        "state", "connected", "last_seen", "sent_code", "metrics", "avg_task_s", "credit", "reset_sent",
        "memory_enforcement",
    )  # fmt: skip

    def __init__(self, worker_id: str, now: float):
        self.worker_id = worker_id
        self.name = worker_id
        self.host = ""
        self.slots = 0
        self.handlers: frozenset[str] = frozenset()
        self.labels: dict[str, str] = {}
        self.resources: pb.Resources | None = None
        self.code_kinds: frozenset[str] = frozenset(CODE_KINDS)  # --allow-code, --no-pickled-code applied
        self.assigned: dict[AttemptKey, float] = {}  # attempt -> when it was sent
        self.state = "ready"  # ready | draining | lost
        self.connected = False
        self.last_seen = now
        self.sent_code: set[str] = set()
        self.metrics = None
        self.avg_task_s: float | None = None  # moving average of its tasks' run time
        self.credit = 0  # slots plus the prefetch it gets now
        self.reset_sent = False  # lost, then heard from: told to register again (once)
        self.memory_enforcement = ""
