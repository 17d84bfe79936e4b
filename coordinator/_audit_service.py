"""``AuditService``: the audit log and lineage over gRPC (filled in by the audit work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._proto import audit_pb2_grpc

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["AuditServicer"]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Every method answers UNIMPLEMENTED until it is built."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
