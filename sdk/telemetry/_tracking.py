"""The seed's tracking decorators on a Pipeline, and how they reach the TaskSpec.

``@pipeline.track_metric(name)``, ``@pipeline.track_business_metric(name)`` and
``@pipeline.track_performance`` each register the function as a task of the pipeline, like
``@pipeline.task``, and mark what its attempts record. Decorators stack: one applied to a
task already in the pipeline adds to its tracking. :class:`Monitored` holds them, with
``enable_monitoring``, as a base of :class:`~xpipe.Pipeline`, so the DAG module stays about
the DAG. The worker acts on the marks (see :mod:`xpipe.telemetry._task`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._proto import common_pb2 as pb
from ..errors import PipelineValidationError
from ._monitoring import MonitoringConfig, parse_monitoring_config
from ._task import metric_name_problem

__all__ = ["Tracking", "Monitored"]


@dataclass(frozen=True, slots=True)
class Tracking:
    """What a task's attempts record besides ``record_metric`` calls.

    Attributes:
        metrics: ``(name, kind, key)`` per tracked metric; ``kind`` is ``METRIC_KIND_TRACKED``
            or ``METRIC_KIND_BUSINESS``, ``key`` None to find the value by the rule of
            :func:`~xpipe.telemetry._task.tracked_value`.
        performance: measure wall time, CPU time and peak RSS of each attempt.
    """

    metrics: tuple[tuple[str, int, str | None], ...] = ()
    performance: bool = False

    def apply(self, spec: pb.TaskSpec) -> None:
        for name, kind, key in self.metrics:
            spec.track.add(name=name, kind=kind, key=key or "")  # type: ignore[arg-type]
        if self.performance:
            spec.track_performance = True


class Monitored:
    """The monitoring half of a Pipeline (mixed into :class:`~xpipe.Pipeline`)."""

    name: str
    #: Set by :meth:`enable_monitoring`; None: defaults (everything recorded, no system metrics).
    monitoring: MonitoringConfig | None = None

    # Provided by Pipeline.
    task: Callable[..., Any]
    _tasks: dict[str, Any]

    def enable_monitoring(self, monitoring_config: Any = None) -> MonitoringConfig:
        """Configure what this pipeline's tasks record, from the seed's ``monitoring_config`` dict.

        ``metrics_collection`` is acted on: ``custom_metrics=False`` drops ``record_metric``
        points and ``track_metric`` values, ``business_metrics=False`` drops
        ``track_business_metric`` values, ``system_metrics=True`` measures every Python task
        as ``track_performance`` does, and ``collection_interval`` must be a duration.
        ``alerting``, ``anomaly_detection`` and ``predictive_analytics`` are checked for
        shape and kept with each run for issue 15 (alerts are not delivered yet). Calling
        it again replaces the config; ``None`` restores the defaults.

        Raises:
            PipelineValidationError: an unknown section or key, or a value of the wrong
                shape; the message names the key path and the keys known there.
        """
        self.monitoring = None if monitoring_config is None else parse_monitoring_config(monitoring_config)
        return self.monitoring or MonitoringConfig()

    def track_metric(self, metric: str, key: str | None = None, **task_opts: Any) -> Callable[[Any], Any]:
        """Decorator: a task whose return value gives the metric ``metric`` (Prometheus name).

        On the worker the value is ``return[key]`` when ``key`` is given; else the key equal
        to the name; else the one numeric key whose name appears inside the metric name
        (``quality_score`` serves ``data_quality_score``); else the return itself if it is
        a number. When nothing fits, or two keys do, the attempt still succeeds and a
        warning naming the metric and the keys seen is kept with the run
        (``result.tasks[name].metric_warnings``). ``task_opts`` go to ``@pipeline.task``.

        Raises:
            PipelineValidationError: the name is not a valid Prometheus metric name, the key
                is not a string, or the task tracks this metric already.
        """
        return self._tracker("track_metric", metric, pb.METRIC_KIND_TRACKED, key, task_opts)

    def track_business_metric(self, metric: str, key: str | None = None, **task_opts: Any) -> Callable[[Any], Any]:
        """Decorator: as :meth:`track_metric`, for a business metric (``revenue`` serves
        ``revenue_impact``); exported apart from the technical ones and switched off by
        ``enable_monitoring({"metrics_collection": {"business_metrics": False}})``."""
        return self._tracker("track_business_metric", metric, pb.METRIC_KIND_BUSINESS, key, task_opts)

    def track_performance(self, func: Any = None, **task_opts: Any) -> Any:
        """Decorator: a task whose every attempt records ``wall_s``, ``cpu_s`` and ``peak_rss_bytes``.

        Works as ``@pipeline.track_performance`` and ``@pipeline.track_performance(...)``
        (``task_opts`` go to ``@pipeline.task``). The figures show as
        ``result.tasks[name].performance``; see :class:`~xpipe.telemetry._task.TaskPerformance`
        for what each one measures.
        """
        if func is not None and callable(func):
            return self._track(func, task_opts, lambda t: dataclasses.replace(t, performance=True))
        if func is not None:
            raise PipelineValidationError(f"pipeline {self.name!r}: track_performance takes a function, got {func!r:.80}")
        return lambda f: self._track(f, task_opts, lambda t: dataclasses.replace(t, performance=True))

    def _tracker(self, call: str, metric: Any, kind: int, key: Any, task_opts: dict[str, Any]) -> Callable[[Any], Any]:
        where = f"pipeline {self.name!r}: {call}"
        if callable(metric) and not isinstance(metric, str):
            raise PipelineValidationError(f'{where} needs the metric\'s name: @pipeline.{call}("data_quality_score")')
        problem = metric_name_problem(metric)
        if problem:
            raise PipelineValidationError(f"{where}: {problem}")
        if key is not None and (not isinstance(key, str) or not key):
            raise PipelineValidationError(f"{where}({metric!r}): key must be a non-empty str or None, got {key!r:.80}")

        def add(tracking: Tracking) -> Tracking:
            if any(name == metric for name, _, _ in tracking.metrics):
                raise PipelineValidationError(f"{where}: the task tracks metric {metric!r} already")
            return dataclasses.replace(tracking, metrics=(*tracking.metrics, (metric, kind, key)))

        return lambda func: self._track(func, task_opts, add)

    def _track(self, func: Any, task_opts: dict[str, Any], change: Callable[[Tracking], Tracking]) -> Any:
        from .._dag import Task  # the DAG module imports this one

        if isinstance(func, Task) and self._tasks.get(func.name) is func:
            if task_opts:  # a stacked decorator: the task exists already
                raise PipelineValidationError(
                    f"pipeline {self.name!r}: task {func.name!r} is registered already; give task options "
                    f"({', '.join(sorted(task_opts))}) to the innermost decorator"
                )
            made = func
        else:
            made = self.task(**task_opts)(func)
        if made.kind == "command":
            raise PipelineValidationError(f"pipeline {self.name!r}: command task {made.name!r} cannot be tracked")
        made.tracking = change(made.tracking or Tracking())
        return made

    def _monitor_spec(self, spec: pb.PipelineSpec) -> None:
        """Apply :attr:`monitoring` to a built spec and keep the config with it."""
        config = self.monitoring
        if config is None:
            return
        spec.monitoring_json = config.to_json()
        drop = set()
        if not config.custom_metrics:
            drop.add(pb.METRIC_KIND_TRACKED)
        if not config.business_metrics:
            drop.add(pb.METRIC_KIND_BUSINESS)
        for task in spec.tasks:
            if task.WhichOneof("kind") == "command":
                continue
            if drop and task.track:
                kept = [t for t in task.track if t.kind not in drop]
                del task.track[:]
                task.track.extend(kept)
            if not config.custom_metrics:
                task.custom_metrics_off = True
            if config.system_metrics:
                task.track_performance = True
