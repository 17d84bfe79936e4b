"""``InsightsService``: run history for the SDK's insights, and the alert history.

Thin: history queries live in :mod:`._history`, alerts in :mod:`._alerting`.
See proto/xpipe/v1/insights.proto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from xpipe._proto import insights_pb2, insights_pb2_grpc

from ._history import get_history

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["InsightsServicer"]


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

    async def GetHistory(self, request: insights_pb2.GetHistoryRequest, context) -> insights_pb2.GetHistoryResponse:
        return await get_history(self.coordinator, request)

    async def ListAlerts(self, request: insights_pb2.ListAlertsRequest, context) -> insights_pb2.ListAlertsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "alerts are not built yet")
