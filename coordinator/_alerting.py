"""Alerting: rules that watch the scheduler's events, and delivery to Slack, webhooks, email, PagerDuty.

Contract stub (issue 15): the alerting work replaces this with the real engine. The web
dashboard and ``InsightsService.ListAlerts`` read :meth:`Alerting.history`.
"""

from __future__ import annotations

from xpipe._proto import insights_pb2

__all__ = ["Alerting"]


class Alerting:
    """The coordinator's alert engine (a stub that raises nothing yet)."""

    def history(self, *, since: float = 0.0, limit: int = 100, rule: str = "") -> list[insights_pb2.Alert]:
        """Alerts raised, newest first (at most ``limit``, since ``since``, of ``rule`` if given)."""
        return []
