"""What a finished run looks like to a Python caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._codec import decode
from ._proto import common_pb2 as pb
from ._proto import pipeline_pb2

__all__ = ["PipelineResult", "TaskRunInfo", "RUN_STATUS", "TASK_STATUS"]

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
    status: str  # pending, ready, assigned, running, succeeded, failed, retry_wait, recovering, skipped, cancelled, upstream_failed
    attempts: int
    worker: str
    started_at: float | None  # unix seconds
    finished_at: float | None
    error: str | None = None
    error_type: str | None = None
    exception_type: str | None = None
    traceback: str | None = None
    #: The task's ``@handle_errors`` fallback produced its result; ``error`` is what the task raised.
    fallback_used: bool = False

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, self.finished_at - self.started_at)
        return None

    @classmethod
    def from_proto(cls, info: pipeline_pb2.TaskInfo) -> TaskRunInfo:
        err = info.error if info.HasField("error") else None
        return cls(
            name=info.name,
            status=TASK_STATUS.get(info.state, "unknown"),
            attempts=info.attempts,
            worker=info.worker,
            started_at=info.started_at or None,
            finished_at=info.finished_at or None,
            error=err.message if err else None,
            error_type=err.error_type if err else None,
            exception_type=(err.exception_type or None) if err else None,
            traceback=(err.traceback or None) if err else None,
            fallback_used=info.state == pb.SUCCEEDED and err is not None and err.error_type == "FALLBACK_USED",
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
