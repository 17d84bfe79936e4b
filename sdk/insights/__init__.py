"""Insights over the cluster's run history (docs/observability.md): ``pm.get_monitoring_dashboard()``."""

from ._anomalies import Anomaly
from ._dashboard import MonitoringDashboard
from ._history import History, RunRecord, TaskRecord
from ._optimize import Change, OptimizationReport
from ._suggestions import Suggestion

__all__ = [
    "Anomaly", "Change", "History", "MonitoringDashboard", "OptimizationReport", "RunRecord", "Suggestion",
    "TaskRecord",
]  # fmt: skip
