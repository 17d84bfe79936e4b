"""``AuditService``: the audit log and lineage over gRPC (see docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

import grpc

from xpipe._limits import shown as quoted
from xpipe._proto import audit_pb2, audit_pb2_grpc

from ._lineage import lineage_response

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["AuditServicer", "DEFAULT_AUDIT_PAGE", "MAX_AUDIT_PAGE"]

log = logging.getLogger(__name__)

#: Entries in one GetAudit answer when the request sets no limit, and the most it may ask.
DEFAULT_AUDIT_PAGE = 1000
MAX_AUDIT_PAGE = 10_000
#: How long a read waits for queued entries (or lineage) to be stored first, so it sees them.
_FRESH_WAIT_S = 2.0


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """GetAudit pages through the stored chain; GetLineage returns a run's graph."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    async def GetAudit(self, request, context):
        if not math.isfinite(request.since) or request.since < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"since must be unix seconds >= 0, got {request.since}")
        if request.limit > MAX_AUDIT_PAGE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"limit {request.limit} is over the most entries of one page ({MAX_AUDIT_PAGE})")  # fmt: skip
        audit = self.c.audit
        try:  # what was recorded before this call is stored first, so it is seen
            await asyncio.wait_for(audit.flush(), timeout=_FRESH_WAIT_S)
        except Exception as exc:
            log.warning("GetAudit: queued entries not stored yet (%s); answering with what is stored", exc)
        page = await self.c.store.read_audit(
            after_seq=request.after_seq, since=request.since, principal=request.principal,
            limit=request.limit or DEFAULT_AUDIT_PAGE,
        )  # fmt: skip
        out = audit_pb2.GetAuditResponse(
            head_hash=page.head_hash, head_seq=page.head_seq, next_after_seq=page.next_after_seq, more=page.more,
            dropped=audit.dropped, queued=audit.queued,
        )  # fmt: skip
        for e in page.entries:
            out.entries.add(seq=e.seq, at=e.at, principal=e.principal, action=e.action, target=e.target,
                            outcome=e.outcome, stimulus_id=e.stimulus_id, detail=dict(e.detail),
                            prev_hash=e.prev_hash, hash=e.hash)  # fmt: skip
        return out

    async def GetLineage(self, request, context):
        if not request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        info = await self.c.engine.run_info(request.run_id, include_results=False)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {quoted(request.run_id)}")
        try:  # tasks that finished before this call are recorded first
            await asyncio.wait_for(self.c.data_tap.drain(), timeout=_FRESH_WAIT_S)
        except TimeoutError:
            log.warning("GetLineage %s: lineage still being recorded; answering with what is stored", request.run_id)
        nodes = await self.c.store.get_lineage(request.run_id)
        return lineage_response(request.run_id, info.summary.pipeline, nodes)
