"""``pm.get_monitoring_dashboard()``: the seed's MonitoringDashboard.

Each insight is a pure function in a module of its own, fed the coordinator's history
(:mod:`._history`): the performance report (:mod:`._report`), anomalies (:mod:`._anomalies`),
optimization suggestions (:mod:`._suggestions`), failure probabilities (:mod:`._failures`),
duration forecasts (:mod:`._forecast`) and the real-time view (:mod:`._realtime`).
"""

from __future__ import annotations

from typing import Any

from ._history import History, load_history

__all__ = ["MonitoringDashboard"]


def _pipeline_name(pipeline: Any) -> str | None:
    if pipeline is None or isinstance(pipeline, str):
        return pipeline
    return pipeline.name


class MonitoringDashboard:
    """Insights over the cluster's history, and the address of its web dashboard.

    Attributes:
        url: the web dashboard (``--http-listen``; the embedded default serves one on a
            loopback port), or "" when the coordinator serves none.
    """

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self.url: str = manager.client.cluster_status().dashboard_url

    def history(self, pipeline: Any = None, since: float | None = None) -> History:
        """The runs the coordinator keeps (of ``pipeline``, since ``since``), newest first."""
        return load_history(self._manager.client, _pipeline_name(pipeline), since)

    def start_real_time_view(self, pipeline: Any, **options: Any) -> Any:
        """A live view of ``pipeline``'s current and next runs (see :mod:`._realtime`)."""
        from ._realtime import start_real_time_view

        return start_real_time_view(self, pipeline, **options)

    def generate_performance_report(self, pipeline: Any = None, since: float | None = None) -> Any:
        """Per task and per pipeline figures from the history (see :mod:`._report`)."""
        from ._report import performance_report

        return performance_report(self.history(pipeline, since), pipeline=_pipeline_name(pipeline))

    def detect_anomalies(
        self, time_window: str | float = "last_24h", sensitivity: str | None = None, ml_model: str | None = None,
        pipeline: Any = None,
    ) -> list[Any]:  # fmt: skip
        """Tasks whose duration, CPU, memory or queue wait left their history (see :mod:`._anomalies`)."""
        from ._anomalies import detect_anomalies

        return detect_anomalies(
            self.history(pipeline), time_window=time_window, sensitivity=sensitivity, ml_model=ml_model,
            monitoring=getattr(pipeline, "monitoring", None),
        )

    def get_optimization_suggestions(self, pipeline: Any = None) -> list[Any]:
        """Concrete suggestions from rules on the history and the workers (see :mod:`._suggestions`)."""
        from ._suggestions import optimization_suggestions

        return optimization_suggestions(self.history(pipeline), workers=self._manager.client.list_workers())

    def predict_failures(self, pipeline: Any = None) -> dict[str, float]:
        """The probability that each task fails, from its history (see :mod:`._failures`)."""
        from ._failures import failure_probabilities

        return failure_probabilities(self.history(pipeline))

    def forecast_duration(self, pipeline: Any) -> Any:
        """A forecast of a run's duration with an interval, from the plan plus history (see :mod:`._forecast`)."""
        from ._forecast import forecast_duration

        return forecast_duration(pipeline, self.history(pipeline))

    def __repr__(self) -> str:
        return f"MonitoringDashboard(url={self.url!r})"
