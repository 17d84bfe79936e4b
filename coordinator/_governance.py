"""``GovernanceService``: retention and forgetting over gRPC (filled in by the governance work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._proto import governance_pb2_grpc

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["GovernanceServicer"]


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    """Every method answers UNIMPLEMENTED until it is built."""

    def __init__(self, coordinator: Coordinator):
        self.c = coordinator
