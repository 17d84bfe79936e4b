"""What a finished run looks like to a Python caller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._codec import decode
from ._domain import error_fallback_used, error_skipped, error_type_name
from ._proto import common_pb2 as pb
from ._proto import pipeline_pb2
from .telemetry._task import TaskMetrics, TaskPerformance

__all__ = ["DataQualityReport", "PipelineResult", "TaskRunInfo", "RUN_STATUS", "TASK_STATUS"]

#: RunState -> the ``status`` strings users see.
RUN_STATUS = {
    pb.RUN_PENDING: "pending",
    pb.RUN_RUNNING: "running",
    pb.RUN_SUCCEEDED: "succeeded",
    pb.RUN_FAILED: "failed",
    pb.RUN_CANCELLED: "cancelled",
}
#: TaskState -> lower-case names.
TASK_STATUS = {value: name.lower() for name, value in pb.TaskState.items() if value}


@dataclass(frozen=True, slots=True)
class TaskRunInfo:
    """How one task of a run went."""

    name: str
    status: str  # pending, ready, assigned, running, succeeded, failed, retry_wait, recovering, skipped, cancelled, upstream_failed, held
    attempts: int
    worker: str
    started_at: float | None  # unix seconds
    finished_at: float | None
    error: str | None = None
    #: One of ``ERROR_TYPES``; on a fallback or a skip, the type of what the task raised.
    error_type: str | None = None
    exception_type: str | None = None
    traceback: str | None = None
    #: The task's ``@handle_errors`` fallback produced its result; ``error`` is what the task raised.
    fallback_used: bool = False
    #: The task was skipped by its error policy (``skip_on``) or its recovery handler.
    skipped_by_policy: bool = False
    #: For ``DEPENDENCY_FAILURE``: the modules the task could not import.
    missing_dependencies: tuple[str, ...] = ()
    #: What its last finished attempt recorded: metric key -> last value (``record_metric``,
    #: ``track_metric``, ``track_business_metric``; labelled points as ``name{k="v"}``).
    metrics: dict[str, float] = field(default_factory=dict)
    #: ``track_performance`` tasks: wall_s, cpu_s, peak_rss_bytes of that attempt; else None.
    performance: TaskPerformance | None = None
    #: What could not be recorded (a tracked value not found in the return, points dropped).
    metric_warnings: tuple[str, ...] = ()
    #: Its result came from the result cache: its code did not run (docs/cache.md).
    cache_hit: bool = False

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, self.finished_at - self.started_at)
        return None

    @classmethod
    def from_proto(cls, info: pipeline_pb2.TaskInfo) -> TaskRunInfo:
        err = info.error if info.HasField("error") else None
        measured = TaskMetrics.from_proto(info.telemetry if info.HasField("telemetry") else None)
        return cls(
            name=info.name,
            status=TASK_STATUS.get(info.state, "unknown"),
            attempts=info.attempts,
            worker=info.worker,
            started_at=info.started_at or None,
            finished_at=info.finished_at or None,
            error=err.message if err else None,
            error_type=error_type_name(err) if err else None,
            exception_type=(err.exception_type or None) if err else None,
            traceback=(err.traceback or None) if err else None,
            fallback_used=info.state == pb.SUCCEEDED and err is not None and error_fallback_used(err),
            skipped_by_policy=info.state == pb.SKIPPED and err is not None and error_skipped(err),
            missing_dependencies=tuple(err.missing_dependencies) if err else (),
            metrics=measured.metrics,
            performance=measured.performance,
            metric_warnings=measured.warnings,
            cache_hit=info.cache_hit,
        )


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """The outcome of one run.

    Attributes:
        outputs: task name -> the value it returned, for every task that succeeded.
        tasks: task name -> :class:`TaskRunInfo`.
    """

    run_id: str
    pipeline: str
    status: str  # succeeded, failed, cancelled (or running/pending for a partial view)
    outputs: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, TaskRunInfo] = field(default_factory=dict)
    created_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def duration_s(self) -> float | None:
        if self.created_at and self.finished_at:
            return self.finished_at - self.created_at
        return None

    @property
    def failed_tasks(self) -> list[str]:
        return [n for n, t in self.tasks.items() if t.status == "failed"]

    def __getitem__(self, task: str) -> Any:
        """``result["load"]`` is ``result.outputs["load"]``."""
        return self.outputs[task]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for t in self.tasks.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        return f"PipelineResult(run_id={self.run_id!r}, pipeline={self.pipeline!r}, status={self.status!r}, tasks={counts})"

    @classmethod
    def from_proto(cls, info: pipeline_pb2.RunInfo) -> PipelineResult:
        outputs: dict[str, Any] = {}
        tasks: dict[str, TaskRunInfo] = {}
        for t in info.tasks:
            tasks[t.name] = TaskRunInfo.from_proto(t)
            if t.state == pb.SUCCEEDED and t.HasField("result"):
                outputs[t.name] = decode(t.result, what=f"result of task {t.name!r}")
        s = info.summary
        return cls(
            run_id=s.run_id,
            pipeline=s.pipeline,
            status=RUN_STATUS.get(s.state, "unknown"),
            outputs=outputs,
            tasks=tasks,
            created_at=s.created_at or None,
            finished_at=s.finished_at or None,
        )


class DataQualityReport:
    """What a task that failed ``DATA_QUALITY_FAILURE`` reported, and where to rerun it.

    A task reports by raising an exception with a ``quality_report`` attribute (a dict,
    JSON-encodable for polyglot readers). Its ``"suggested_fixes"`` key, if any, becomes
    :attr:`suggested_fixes`; its ``"details"`` key (else every other key) :attr:`details`.
    :meth:`xpipe.PipelineManager.apply_data_fixes` reruns the task with fixes.

    Attributes:
        details: what was wrong, as the task said.
        suggested_fixes: fixes the task proposes (any values; passed back as they are).
        run_id, pipeline, task: the run and task that failed.
        raw: the report exactly as the task gave it.
    """

    __slots__ = ("details", "suggested_fixes", "run_id", "pipeline", "task", "raw")

    def __init__(self, raw: Any, *, run_id: str = "", pipeline: str = "", task: str = ""):
        self.raw = raw
        self.run_id, self.pipeline, self.task = run_id, pipeline, task
        fixes: Any = []
        details: Any = raw
        if isinstance(raw, Mapping):
            fixes = raw.get("suggested_fixes", [])
            details = raw["details"] if "details" in raw else {k: v for k, v in raw.items() if k != "suggested_fixes"}
        self.suggested_fixes: list[Any] = list(fixes) if isinstance(fixes, (list, tuple)) else [fixes]
        self.details: dict[str, Any] = dict(details) if isinstance(details, Mapping) else {"report": details}

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-friendly when the report was): details, fixes and where."""
        return {"run_id": self.run_id, "pipeline": self.pipeline, "task": self.task,
                "details": dict(self.details), "suggested_fixes": list(self.suggested_fixes)}  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DataQualityReport):
            return self.to_dict() == other.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable, compared by value

    def __repr__(self) -> str:
        return (f"DataQualityReport(task={self.task!r}, run_id={self.run_id!r}, details={self.details!r}, "
                f"suggested_fixes={self.suggested_fixes!r})")  # fmt: skip
