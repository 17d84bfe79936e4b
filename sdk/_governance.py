"""Client side of ``GovernanceService``: forgetting a subject and collecting garbage, as plain reports.

``PipelineManager.forget_subject`` and ``collect_garbage`` and ``xpipe gc`` call these; the
reports are frozen dataclasses (no protobuf type in the public signatures) that print as a
short summary and turn into JSON with :meth:`as_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._proto import governance_pb2, governance_pb2_grpc

__all__ = ["GOVERNANCE_CALL_TIMEOUT_S", "ForgetReport", "GarbageReport", "collect_garbage", "forget_subject"]

#: Deadline of one governance call: they scan the whole store (both are safe to repeat).
GOVERNANCE_CALL_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What ``forget_subject`` erased.

    Attributes:
        results: ``(run_id, task, records_removed, result_deleted)`` per rewritten result.
        runs_touched, tasks_touched: runs and tasks whose results or logs changed.
        records_removed: records taken out of results.
        log_lines_removed: task log lines deleted.
        not_inspected: ``(run_id, task, reason)`` of stored values that may hold the subject
            but could not be read safely (a pickled class instance, raw bytes), and of
            unfinished runs: look at these by hand, or forget again later.
    """

    results: tuple[tuple[str, str, int, bool], ...]
    runs_touched: int
    tasks_touched: int
    records_removed: int
    log_lines_removed: int
    not_inspected: tuple[tuple[str, str, str], ...]

    @classmethod
    def from_proto(cls, msg: governance_pb2.ForgetSubjectResponse) -> ForgetReport:
        return cls(
            results=tuple((r.run_id, r.task, r.records_removed, r.result_deleted) for r in msg.results),
            runs_touched=msg.runs_touched, tasks_touched=msg.tasks_touched, records_removed=msg.records_removed,
            log_lines_removed=msg.log_lines_removed,
            not_inspected=tuple((n.run_id, n.task, n.reason) for n in msg.not_inspected),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [
            (
                f"erased {self.records_removed} records from {len(self.results)} results and "
                f"{self.log_lines_removed} log lines ({self.runs_touched} runs, {self.tasks_touched} tasks)"
            )
        ]
        lines += [f"  {run}/{task}: {n} records{' (the whole result)' if whole else ''}"
                  for run, task, n, whole in self.results]  # fmt: skip
        if self.not_inspected:
            lines.append(f"not inspected ({len(self.not_inspected)}):")
            lines += [f"  {run}{'/' + task if task else ''}: {why}" for run, task, why in self.not_inspected]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class GarbageReport:
    """What a retention sweep deleted, or (``dry_run``) would delete.

    Attributes:
        runs: ``{run_id, pipeline, namespace, finished_at, log_rows, log_bytes,
            artifact_files, artifact_bytes}`` per expired run.
        orphaned_artifacts: artifact directories no stored run refers to.
        orphaned_log_rows: task log rows of runs the store no longer has.
        files, bytes: totals (artifact files; bytes include task logs).
        retention_days: the coordinator's limits by namespace ("" is every other one).
    """

    dry_run: bool
    runs: tuple[dict[str, Any], ...]
    orphaned_artifacts: tuple[str, ...]
    files: int
    bytes: int
    retention_days: dict[str, float]
    orphaned_log_rows: int = 0

    @classmethod
    def from_proto(cls, msg: governance_pb2.CollectGarbageResponse) -> GarbageReport:
        runs = tuple(
            {"run_id": r.run_id, "pipeline": r.pipeline, "namespace": r.namespace, "finished_at": r.finished_at,
             "log_rows": r.log_rows, "log_bytes": r.log_bytes, "artifact_files": r.artifact_files,
             "artifact_bytes": r.artifact_bytes}
            for r in msg.runs
        )  # fmt: skip
        return cls(
            msg.dry_run, runs, tuple(msg.orphaned_artifacts), msg.files, msg.bytes, dict(msg.retention_days),
            msg.orphaned_log_rows,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [
            (
                f"{verb} {len(self.runs)} runs and {len(self.orphaned_artifacts)} orphaned artifact dirs "
                f"({self.files} files, {self.bytes} bytes)"
            )
        ]
        lines += [f"  {r['run_id']}  {r['pipeline']}  namespace={r['namespace']}  "
                  f"logs={r['log_rows']} rows  artifacts={r['artifact_files']} files" for r in self.runs]  # fmt: skip
        lines += [f"  orphan {path}" for path in self.orphaned_artifacts]
        if self.orphaned_log_rows:
            lines.append(f"  {self.orphaned_log_rows} task log rows of runs no longer stored")
        return "\n".join(lines)


def forget_subject(client: Any, field: str, value: str) -> ForgetReport:
    """``GovernanceService.ForgetSubject`` through ``client`` (retried, errors translated)."""
    if not isinstance(field, str) or not field.strip():
        raise ValueError(f"forget_subject: field must be a non-empty string, got {field!r}")
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"forget_subject: value must be a non-empty string, got {value!r} (pass numbers as text)"
        )
    request = governance_pb2.ForgetSubjectRequest(field=field, value=value)
    reply = client._call_on(
        governance_pb2_grpc.GovernanceServiceStub,
        lambda stub: stub.ForgetSubject(request, timeout=GOVERNANCE_CALL_TIMEOUT_S),
    )
    return ForgetReport.from_proto(reply)


def collect_garbage(client: Any, *, dry_run: bool = False) -> GarbageReport:
    """``GovernanceService.CollectGarbage`` through ``client``."""
    request = governance_pb2.CollectGarbageRequest(dry_run=dry_run)
    reply = client._call_on(
        governance_pb2_grpc.GovernanceServiceStub,
        lambda stub: stub.CollectGarbage(request, timeout=GOVERNANCE_CALL_TIMEOUT_S),
    )
    return GarbageReport.from_proto(reply)
