"""Where the coordinator reports what the audit log must record (see docs/security.md).

The call path (``_guard``, the servicers) reports through :class:`AuditSink` and never
waits for storage: an implementation queues the entry and writes it in batches, off the
hot path. :class:`NullAudit` records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["AuditSink", "NullAudit"]


class AuditSink(Protocol):
    """Receives one audit entry per audited event; must not block."""

    def record(
        self,
        *,
        principal: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        stimulus_id: str = "",
        detail: Mapping[str, str] | None = None,
    ) -> None:
        """Record one event.

        Args:
            principal: Who (a principal name; ``local`` when auth is off).
            action: What: a full RPC method name (``/xpipe.v1.PipelineService/CancelRun``)
                or a data-access name (``task.data_access``).
            target: What it was done to: a run id, ``run_id/task``, a worker name.
            outcome: ``ok``, or the refusal's status code name and message
                (``PERMISSION_DENIED: principal 'v' lacks permission run:submit``).
            stimulus_id: The stimulus id the call led to, when there is one.
            detail: More facts (content hashes, sizes), as strings.
        """


class NullAudit:
    """An :class:`AuditSink` that records nothing."""

    def record(self, **entry) -> None:
        return None
