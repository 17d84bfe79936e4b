"""``InsightsService``: run history for the SDK's insights, and the alert history.

Thin: history queries live in :mod:`._history`, alerts in :mod:`._alerting`.
See proto/xpipe/v1/insights.proto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from xpipe._proto import insights_pb2, insights_pb2_grpc
from xpipe.telemetry._alertconfig import RULES

from ._alerting import HISTORY_CAP

from ._history import get_history

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["InsightsServicer"]

#: Alerts ListAlerts returns when the request names no limit (insights.proto).
DEFAULT_ALERTS_LIMIT = 100


class InsightsServicer(insights_pb2_grpc.InsightsServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator

    async def GetHistory(self, request: insights_pb2.GetHistoryRequest, context) -> insights_pb2.GetHistoryResponse:
        return await get_history(self.coordinator, request)

    async def ListAlerts(self, request: insights_pb2.ListAlertsRequest, context) -> insights_pb2.ListAlertsResponse:
        if request.rule and request.rule not in RULES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"rule {request.rule!r:.80} is unknown; known: {', '.join(RULES)}")  # fmt: skip
        if not request.since >= 0:  # also NaN
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"since must be >= 0 Unix seconds, got {request.since}")
        limit = min(request.limit or DEFAULT_ALERTS_LIMIT, HISTORY_CAP)
        alerts = await readable_alerts(self.coordinator, since=request.since, limit=limit, rule=request.rule)
        return insights_pb2.ListAlertsResponse(alerts=alerts)


async def readable_alerts(coordinator: Coordinator, *, since: float, limit: int, rule: str) -> list:
    """The newest alerts the caller may read: a run's alert only if its run is readable (its
    namespace, as ListRuns filters); cluster alerts (a lost worker, a circuit) to every holder
    of ``alert:read``. ``xpipe alerts`` and the dashboard's alerts page both answer from here.
    """
    alerts = coordinator.alerting.history(since=since, limit=limit, rule=rule)
    auth = coordinator.guard.auth
    run_ids = list({a.run_id for a in alerts if a.run_id})
    visible = None if auth is None or not run_ids else await auth.readable(run_ids)
    if visible is None:
        return alerts
    return [a for a in alerts if not a.run_id or a.run_id in visible]
