"""``@audit_data_access``, ``@log_data_access`` and ``@track_data_lineage``: marks the coordinator acts on.

Each adds a :class:`~xpipe.security._marks.Governance` mark (see ``_marks``), so they stack
with the other governance decorators in any order, above or below ``@task``:

    @audit_data_access
    @task
    def load(rows): ...

When a marked task finishes, the coordinator records its data access in the audit log
(``task.data_access``: the submitter, the run and task, the content hashes and sizes of
its inputs and output) and/or its lineage (see ``PipelineManager.get_lineage``). Hashes
and sizes only: no value reaches the audit log or the lineage.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._marks import mark

__all__ = ["audit_data_access", "log_data_access", "track_data_lineage"]

T = TypeVar("T")


def _decorator(name: str, fields: dict[str, Any], target: Any):
    if target is None:  # used with parentheses: @audit_data_access()
        return lambda real: _decorator(name, fields, real)
    if not callable(target) and not hasattr(target, "to_proto"):
        raise TypeError(f"@{name} goes on a function, a Task or a Pipeline, not {type(target).__name__}")
    return mark(target, **fields)


def audit_data_access(target: T | None = None) -> T:
    """Audit what a task (or every task of a pipeline) reads and writes, by content hash and size."""
    return _decorator("audit_data_access", {"audit_data_access": True}, target)


def log_data_access(target: T | None = None) -> T:
    """The same as :func:`audit_data_access`, under the seed's name for tasks."""
    return _decorator("log_data_access", {"audit_data_access": True}, target)


def track_data_lineage(target: T | None = None) -> T:
    """Record a task's lineage: its inputs' and output's content hashes, upstream tasks, artifact refs."""
    return _decorator("track_data_lineage", {"track_lineage": True}, target)
