"""Insights over the cluster's run history (docs/observability.md): ``pm.get_monitoring_dashboard()``."""

from ._dashboard import MonitoringDashboard
from ._history import History, RunRecord, TaskRecord

__all__ = ["History", "MonitoringDashboard", "RunRecord", "TaskRecord"]
