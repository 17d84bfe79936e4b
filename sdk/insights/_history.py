"""Run history as the insights read it: frozen records made from ``GetHistory``'s answer.

Every insight (report, anomalies, suggestions, forecasts) is a pure function of a
:class:`History`, so each can be tested on a History built by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "RunRecord", "TaskRecord", "load_history"]


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task of one run, as its last attempt left it (see ``TaskHistory`` in insights.proto)."""

    name: str
    state: str
    attempts: int = 1
    retries: int = 0
    ready_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    duration_s: float = 0.0
    queue_wait_s: float = 0.0
    worker: str = ""
    error_type: str = ""
    error: str = ""
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    requested_cpu: float = 1.0
    requested_memory_bytes: int = 0
    depends_on: tuple[str, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    priority: int = 0

    @classmethod
    def from_proto(cls, m: Any) -> TaskRecord:
        return cls(
            m.name, m.state, m.attempts, m.retries, m.ready_at, m.started_at, m.finished_at, m.duration_s,
            m.queue_wait_s, m.worker, m.error_type, m.error, m.cpu_s, m.peak_rss_bytes, m.requested_cpu or 1.0,
            m.requested_memory_bytes, tuple(m.depends_on), dict(m.metrics), m.priority,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: its pipeline, state, times and tasks."""

    run_id: str
    pipeline: str
    state: str
    created_at: float
    finished_at: float = 0.0
    namespace: str = ""
    tasks: tuple[TaskRecord, ...] = ()

    @property
    def duration_s(self) -> float:
        """Wall time from submission to the end; 0 while it runs."""
        return max(0.0, self.finished_at - self.created_at) if self.finished_at else 0.0

    @classmethod
    def from_proto(cls, m: Any) -> RunRecord:
        return cls(
            m.run_id, m.pipeline, m.state, m.created_at, m.finished_at, m.namespace,
            tuple(TaskRecord.from_proto(t) for t in m.tasks),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class History:
    """Runs, newest first; ``note`` says why the coordinator cut the answer short ("" if it did not)."""

    runs: tuple[RunRecord, ...] = ()
    note: str = ""

    def of(self, pipeline: str) -> History:
        """Only the runs of ``pipeline``."""
        return History(tuple(r for r in self.runs if r.pipeline == pipeline), self.note)

    def since(self, t: float) -> History:
        """Only the runs created at or after ``t`` (Unix seconds)."""
        return History(tuple(r for r in self.runs if r.created_at >= t), self.note)


def load_history(client: Any, pipeline: str | None = None, since: float | None = None, max_runs: int = 0) -> History:
    """The history the coordinator keeps, through ``InsightsService.GetHistory``."""
    from .._proto import insights_pb2, insights_pb2_grpc

    request = insights_pb2.GetHistoryRequest(pipeline=pipeline or "", since=since or 0.0, max_runs=max_runs)
    answer = client._call_on(
        insights_pb2_grpc.InsightsServiceStub, lambda stub: stub.GetHistory(request, timeout=client.call_timeout_s)
    )
    return History(tuple(RunRecord.from_proto(r) for r in answer.runs), answer.note)
