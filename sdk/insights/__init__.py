"""Insights over the cluster's run history (docs/observability.md): ``pm.get_monitoring_dashboard()``."""

from ._anomalies import Anomaly
from ._dashboard import MonitoringDashboard
from ._forecast import Forecast
from ._history import History, RunRecord, TaskRecord
from ._optimize import Change, OptimizationReport
from ._realtime import RealTimeView
from ._report import PerformanceReport
from ._suggestions import Suggestion

__all__ = [
    "Anomaly", "Change", "Forecast", "History", "MonitoringDashboard", "OptimizationReport", "PerformanceReport",
    "RealTimeView", "RunRecord", "Suggestion", "TaskRecord",
]  # fmt: skip
