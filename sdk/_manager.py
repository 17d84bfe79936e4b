"""``PipelineManager``: the seed's front door for submitting and following pipelines."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from . import _hotreload
from ._backoff import connect_timeout_setting
from ._client import Client, check_seconds
from ._codec import decode, encode
from ._dag import Pipeline, check_strategy, wait_option
from ._debug import DebugSession
from ._dag import pipeline as _pipeline_decorator
from ._domain import DEPARTED_WORKER_STATES, TERMINAL_RUN_STATES
from ._enterprise import ENTERPRISE_SECTIONS, enterprise_settings, prepare_keyring
from ._governance import ForgetReport, GarbageReport, collect_garbage, forget_subject
from ._install import distributions_for
from ._limits import DEFAULT_INSTALL_TIMEOUT_S
from ._local import LocalCluster
from ._plan import ExecutionPlan, PlanWorker, build_plan
from ._proto import common_pb2, pipeline_pb2
from ._result import RUN_STATUS, DataQualityReport, PipelineResult
from ._types import ClusterStatus, InstallReport, NodeRecovery, RunSummary, format_logs
from .cache._config import CacheConfig
from .cache._manage import CacheManager
from .telemetry._task import TaskMetrics
from .errors import (
    DistributedExecutionError,
    HandlerNotFoundError,
    PipelineExecutionError,
    PipelineValidationError,
    RequestRejectedError,
)
from .security._marks import mark
from .telemetry._tracing import tracing_arguments

if TYPE_CHECKING:
    from pathlib import Path

    from ._lineage import LineageGraph
    from ._resources import AddedWorker, ResourceManager
    from .security._audit import AuditEntry
    from .security._tls import TLSConfig

__all__ = ["PipelineManager"]

log = logging.getLogger(__name__)

# Keys of the seed's config dicts that we accept; the ones we do not act on yet are named
# in a warning rather than silently dropped. The enterprise sections are acted on or
# refused key by key (_enterprise).
_CONFIG_KEYS = {"coordinator", "workers", "worker_nodes", "slots_per_worker", "data_dir", "imports", "connect_timeout_s",
                "cache", *ENTERPRISE_SECTIONS}  # fmt: skip
_SEED_KEYS_NOT_ACTED_ON = {"cluster_mode", "resource_allocation", "fault_tolerance"}
#: Runs whose Pipeline object the manager keeps, newest last, so apply_data_fixes can rerun one.
_KEPT_RUNS = 256
#: The keyword by which apply_data_fixes hands the fixes to the failed task's function.
FIXES_KEYWORD = "fixes"


class PipelineManager:
    """Submits pipelines to a cluster and follows their runs.

    Args:
        config: an optional dict, as in the seed (``PipelineManager(distributed_config)``).
            Keys: ``coordinator``, ``workers`` (or ``worker_nodes``), ``slots_per_worker``,
            ``data_dir``, ``imports``, ``connect_timeout_s``; and the seed's
            ``enterprise_config`` sections ``security``, ``compliance``, ``integration``, each
            key acted on or refused with a ValueError saying what to run instead
            (docs/security.md, "enterprise_config").
        coordinator: ``"host:port[,host:port...]"`` of a running cluster. None (and no
            ``XPIPE_COORDINATOR``) starts the embedded default: a coordinator and local
            worker processes on this machine.
        workers, slots_per_worker, data_dir, imports: shape of the embedded default.
        connect_timeout_s: how long a call, ``wait`` or ``execute_pipeline`` keeps trying to
            reach a coordinator before it raises :class:`CoordinatorUnavailableError`
            (not given: ``XPIPE_CONNECT_TIMEOUT``, else 30 s); a run that was being followed
            gets this again after each break.
            None keeps trying for ever.
        otlp_endpoint: ``HOST:PORT`` of an OTLP/gRPC collector: each run is one trace, from
            this process through the coordinator to the workers (docs/tracing.md). The
            embedded default's processes export there too. None:
            ``OTEL_EXPORTER_OTLP_ENDPOINT``, else tracing is off.
        trace_sample_ratio: share of runs traced, 0 to 1 (None: ``OTEL_TRACES_SAMPLER``,
            default 1.0).
        tls: :class:`~xpipe.security.TLSConfig` to reach ``coordinator`` over TLS (None:
            ``XPIPE_TLS_*`` if set, else plaintext). The embedded default is plaintext on loopback.
        token: the credential sent on every call (None: ``XPIPE_TOKEN``); see docs/security.md.
        namespace: the namespace of the runs it submits whose Pipeline names none (default
            ``default``).

    Example:
        >>> with PipelineManager() as pm:                      # doctest: +SKIP
        ...     result = pm.execute_pipeline(pipeline)
        ...     print(result.outputs["load"])
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        coordinator: str | None = None,
        workers: int | None = None,
        slots_per_worker: int | None = None,
        data_dir: str | os.PathLike | None = None,
        imports: tuple[str, ...] = (),
        connect_timeout_s: float | None | EllipsisType = ...,
        otlp_endpoint: str | None = None,
        trace_sample_ratio: float | None = None,
        tls: TLSConfig | None = None,
        token: str | None = None,
        namespace: str | None = None,
    ):
        cfg = dict(config or {})
        unknown = set(cfg) - _CONFIG_KEYS - _SEED_KEYS_NOT_ACTED_ON
        if unknown:
            raise ValueError(f"unknown PipelineManager config keys: {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        ignored = sorted(set(cfg) & _SEED_KEYS_NOT_ACTED_ON)
        if ignored:
            warnings.warn(f"PipelineManager config keys {ignored} are accepted but not acted on yet", stacklevel=2)
        self.config = cfg
        # Checked before the embedded processes start, so a bad value leaves none behind.
        connect_timeout_s = check_seconds(
            "connect_timeout_s", connect_timeout_setting(cfg.get("connect_timeout_s", connect_timeout_s)),
            allow_none=True,
        )
        tracing_args = tracing_arguments(otlp_endpoint, trace_sample_ratio)
        coordinator = coordinator or cfg.get("coordinator") or os.environ.get("XPIPE_COORDINATOR") or None
        #: What the enterprise sections ask for (checked before any process starts).
        self.enterprise = enterprise_settings(cfg, embedded=coordinator is None)
        #: The result cache's levels, strategies and invalidation (docs/cache.md).
        self._cache = CacheManager(self, cfg.get("cache"))
        self.pipelines: dict[str, Pipeline] = {}
        self._ran: OrderedDict[str, Pipeline] = OrderedDict()  # run id -> the Pipeline it ran
        #: The report of the last DATA_QUALITY_FAILURE this manager raised (apply_data_fixes' default).
        self.last_quality_report: DataQualityReport | None = None
        self._local: LocalCluster | None = None
        self._on_close: list[Callable[[], None]] = []  # e.g. real-time views' stop, run by close()
        if coordinator is None:
            self._local = LocalCluster(
                workers=workers or cfg.get("workers") or cfg.get("worker_nodes") or 2,
                slots_per_worker=slots_per_worker or cfg.get("slots_per_worker") or max(1, (os.cpu_count() or 2) // 2),
                data_dir=data_dir or cfg.get("data_dir"),
                imports=tuple(imports or cfg.get("imports") or ()),
                extra_args=tracing_args,
                coordinator_args=self.enterprise.coordinator_args(),
            )
            if self.enterprise.encryption_at_rest:
                key_file = prepare_keyring(self._local.data_dir)
                self._local.extra_args += ("--encryption-key-file", str(key_file))
            coordinator = self._local.start()
        self.client = Client(
            coordinator, connect_timeout_s=connect_timeout_s, otlp_endpoint=otlp_endpoint,
            trace_sample_ratio=trace_sample_ratio, tls=False if self._local is not None else tls, token=token,
            namespace=namespace,
        )  # fmt: skip
        if self._local is not None:
            try:
                self._local.wait_for_workers(self.client)
            except BaseException:
                self.close()
                raise

    @property
    def address(self) -> str:
        """The coordinator in use."""
        return self.client.address

    # ------------------------------------------------------------------ pipelines

    def pipeline(self, name: str) -> Callable[[Callable[[], Any]], Pipeline]:
        """Decorator: build a pipeline from a function returning its tasks, and register it.

        The decorated name becomes the :class:`Pipeline` itself, so it can be passed to
        :meth:`execute_pipeline`, or its name can be.
        """
        build = _pipeline_decorator(name)

        def decorate(fn: Callable[[], Any]) -> Pipeline:
            built = self._governed(build(fn))
            self.pipelines[name] = built
            return built

        return decorate

    def _governed(self, pipeline: Pipeline) -> Pipeline:
        """Mark ``pipeline`` as the enterprise config asks (lineage, PII fields): every run of this manager."""
        fields: dict[str, Any] = {}
        if self.enterprise.lineage:
            fields["track_lineage"] = True
        if self.enterprise.pii_fields:
            fields["pii_fields"] = self.enterprise.pii_fields
        return mark(pipeline, **fields) if fields else pipeline

    def _resolve(self, pipeline: Pipeline | str) -> Pipeline:
        if isinstance(pipeline, Pipeline):
            return self._governed(pipeline)
        if isinstance(pipeline, str):
            try:
                return self.pipelines[pipeline]
            except KeyError:
                raise PipelineValidationError(
                    f"no pipeline named {pipeline!r} is registered; known: {sorted(self.pipelines)}"
                ) from None
        raise TypeError(f"expected a Pipeline or a registered pipeline name, got {type(pipeline).__name__}")

    # ------------------------------------------------------------------ runs

    def _to_proto(self, pipeline: Pipeline, retry_on_failure: bool) -> common_pb2.PipelineSpec:
        """The spec to submit: the result cache's levels set, its warming strategies run first."""
        spec = pipeline.to_proto(retry_on_failure=retry_on_failure)
        self._cache.prepare(pipeline, spec)
        return spec

    def submit(self, pipeline: Pipeline | str, *, retry_on_failure: bool = True) -> str:
        """Validate and submit a pipeline; returns its run id as soon as the run is durable."""
        resolved = self._resolve(pipeline)
        run_id = self.client._submit_spec(self._to_proto(resolved, retry_on_failure))
        self._remember(run_id, resolved)
        return run_id

    def execute_pipeline(
        self,
        pipeline: Pipeline | str,
        *,
        parallel: bool = True,
        monitor: bool = True,
        retry_on_failure: bool = True,
        raise_on_failure: bool = True,
        timeout_s: float | None = None,
        placement_strategy: str | None = None,
        wait_for_resources_s: float | None = None,
        wait_for_resources: str | float | None = None,
    ) -> PipelineResult:
        """Run a pipeline on the cluster and wait for it.

        Args:
            parallel: run independent tasks at the same time (False runs one task at a time).
            monitor: show a progress bar when stdout is a terminal.
            retry_on_failure: honour each task's ``max_retries``; False turns retries off.
            raise_on_failure: raise :class:`PipelineExecutionError` when the run fails.
            timeout_s: give up waiting after this long (the run goes on; cancel it if needed).
            placement_strategy: for this run, instead of the pipeline's (see
                :meth:`optimize_task_placement`): ``resource_balanced``, ``pack`` or ``spread``.
            wait_for_resources_s: for this run, instead of the pipeline's: how long a task
                that no registered worker could fit waits for one to join.
            wait_for_resources: the same as a duration that may be a string ("5min").

        Raises:
            PipelineValidationError: the pipeline is malformed (nothing was submitted).
            PipelineExecutionError: the run failed or was cancelled; a task no worker could
                hold gives ``error_type == "RESOURCE_EXHAUSTION"`` and ``required_resources``.
            TimeoutError: ``timeout_s`` passed first.
            CoordinatorUnavailableError: no coordinator answered for ``connect_timeout_s``.
        """
        resolved = self._resolve(pipeline)
        spec = self._to_proto(resolved, retry_on_failure)
        if not parallel:
            spec.max_parallel = 1
        if placement_strategy is not None:
            spec.placement_strategy = check_strategy(placement_strategy, where=f"pipeline {resolved.name!r}")
        wait_s = wait_option(wait_for_resources_s, wait_for_resources, where=f"pipeline {resolved.name!r}")
        if wait_s is not None:
            spec.wait_for_resources_s = wait_s
        events = self.client._submit_and_watch_pb(spec, summary_only=True, results_on_end=True, timeout_s=timeout_s)
        return self._follow(events, monitor=monitor, raise_on_failure=raise_on_failure, pipeline=resolved)

    # ------------------------------------------------------------------ placement and plans

    def optimize_task_placement(self, pipeline: Pipeline | str, strategy: str = "resource_balanced") -> Pipeline:
        """Choose how the coordinator places this pipeline's tasks from now on; returns it.

        ``resource_balanced`` (the default) evens utilisation across workers and weighs their
        live cpu load; ``pack`` fills workers first; ``spread`` spreads tasks out. Whatever
        the strategy, a task goes only to a worker whose free resources and labels fit it.

        Raises:
            PipelineValidationError: an unknown strategy.
        """
        resolved = self._resolve(pipeline)
        resolved.configure_placement(strategy=strategy)
        return resolved

    def create_execution_plan(
        self,
        pipeline: Pipeline | str,
        optimization_strategy: str = "time_optimal",
        resource_constraints: Mapping[str, Any] | None = None,
        cost_optimization: bool = False,
    ) -> ExecutionPlan:
        """Plan a run: stages, critical path, estimated duration and cost (see ``xpipe._plan``).

        Durations come from the coordinator's history of earlier runs of the same task
        names (1 s for names never seen); prices from the registered workers'
        ``cost_per_hour`` labels.

        Args:
            optimization_strategy: ``time_optimal``, ``resource_optimal`` or ``cost_optimal``.
            resource_constraints: e.g. ``{"cpu_cores": 8, "memory_gb": 32}``: no stage (and,
                in :meth:`execute_with_plan`, no moment of the run) holds more than this.
            cost_optimization: price each task on the cheapest worker it fits.

        Raises:
            PipelineValidationError: a bad argument, or a task bigger than the constraints.
        """
        resolved = self._resolve(pipeline)
        names = resolved.validate()
        return build_plan(
            resolved,
            optimization_strategy=optimization_strategy,
            resource_constraints=resource_constraints,
            cost_optimization=cost_optimization,
            durations=self.client.task_stats(names),
            workers=[PlanWorker.from_info(w) for w in self.client.list_workers()
                     if w.state not in DEPARTED_WORKER_STATES],
        )

    def execute_with_plan(
        self,
        plan: ExecutionPlan,
        *,
        monitor: bool = True,
        retry_on_failure: bool = True,
        raise_on_failure: bool = True,
        timeout_s: float | None = None,
    ) -> PipelineResult:
        """Run a plan's pipeline so that its tasks never hold more than the plan's constraints.

        The coordinator enforces the constraints as a run-wide cap on the resources of the
        tasks in flight, and places them with the plan's ``placement_strategy``.

        Raises:
            PipelineExecutionError: the run failed (see :meth:`execute_pipeline`).
        """
        if not isinstance(plan, ExecutionPlan) or plan.pipeline is None:
            raise TypeError(f"execute_with_plan needs a plan from create_execution_plan, got {type(plan).__name__}")
        spec = self._to_proto(plan.pipeline, retry_on_failure)
        spec.placement_strategy = plan.placement_strategy
        limits = plan.resource_limits()
        if limits is not None:
            spec.resource_limits.CopyFrom(limits)
        events = self.client._submit_and_watch_pb(spec, summary_only=True, results_on_end=True, timeout_s=timeout_s)
        return self._follow(events, monitor=monitor, raise_on_failure=raise_on_failure, pipeline=plan.pipeline)

    def execute_distributed(
        self,
        pipeline: Pipeline | str,
        *,
        cost_budget: float | None = None,
        optimization_strategy: str = "time_optimal",
        resource_constraints: Mapping[str, Any] | None = None,
        monitor: bool = True,
        raise_on_failure: bool = True,
        timeout_s: float | None = None,
        **seed_options: Any,
    ) -> PipelineResult:
        """Plan with cost optimization, refuse if over ``cost_budget``, else run the plan.

        The seed's other keywords (``data_size``, ``estimated_duration``) are accepted with a
        warning and not acted on.

        Raises:
            PipelineExecutionError: ``error_type == "RESOURCE_EXHAUSTION"`` before anything
                runs, when the plan's estimated cost exceeds ``cost_budget`` (the message
                says by how much; ``exc.plan`` is the plan), or when the run fails.
        """
        if seed_options:
            warnings.warn(f"execute_distributed options {sorted(seed_options)} are accepted but not acted on",
                          stacklevel=2)  # fmt: skip
        if cost_budget is not None and (
            isinstance(cost_budget, bool) or not isinstance(cost_budget, (int, float)) or not cost_budget >= 0
        ):
            raise PipelineValidationError(f"cost_budget must be a number >= 0, got {cost_budget!r}")
        plan = self.create_execution_plan(
            pipeline, optimization_strategy=optimization_strategy, resource_constraints=resource_constraints,
            cost_optimization=True,
        )  # fmt: skip
        if cost_budget is not None:
            if not plan.cost_known:
                warnings.warn("cost_budget cannot be checked: no worker has a cost_per_hour label", stacklevel=2)
            elif plan.estimated_cost > cost_budget:
                over = plan.estimated_cost - cost_budget
                exc = PipelineExecutionError(
                    f"pipeline {plan.pipeline_name!r} not started: its estimated cost {plan.estimated_cost:.4g} "
                    f"exceeds cost_budget {cost_budget:.4g} by {over:.4g} ({over / max(cost_budget, 1e-12):.0%})",
                    error_type="RESOURCE_EXHAUSTION",
                )
                exc.plan = plan  # type: ignore[attr-defined]
                raise exc
        return self.execute_with_plan(plan, monitor=monitor, raise_on_failure=raise_on_failure, timeout_s=timeout_s)

    def wait(
        self,
        run_id: str,
        timeout_s: float | None = None,
        *,
        monitor: bool = False,
        raise_on_failure: bool = True,
    ) -> PipelineResult:
        """Block until the run ends; returns its :class:`PipelineResult`.

        Raises:
            TimeoutError: ``timeout_s`` passed first (the run goes on).
            PipelineExecutionError: the run failed or was cancelled (unless ``raise_on_failure=False``).
            CoordinatorUnavailableError: no coordinator answered for ``connect_timeout_s``.
        """
        events = self.client._watch_pb(run_id, summary_only=True, results_on_end=True, timeout_s=timeout_s)
        return self._follow(events, monitor=monitor, raise_on_failure=raise_on_failure)

    # ------------------------------------------------------------------ the seed's error handling

    def apply_data_fixes(
        self,
        fixes: Sequence[Any],
        report: DataQualityReport | None = None,
        *,
        monitor: bool = False,
        raise_on_failure: bool = True,
        timeout_s: float | None = None,
    ) -> PipelineResult:
        """Rerun the pipeline of a ``DATA_QUALITY_FAILURE``, handing ``fixes`` to the failed task.

        The whole pipeline runs again as a new run, and the task that reported the failure
        gets ``fixes`` (a list) as its ``fixes`` keyword argument; its function must accept
        it (``def clean(rows, fixes=None)``), which is checked before anything is submitted.

        Args:
            fixes: typically ``report.suggested_fixes``, or a subset of them.
            report: which failure to fix; default :attr:`last_quality_report`, the last
                ``DATA_QUALITY_FAILURE`` this manager raised. The manager must have run its
                pipeline (it keeps the last 256 runs' Pipeline objects) or have it registered.
            monitor, raise_on_failure, timeout_s: as in :meth:`execute_pipeline`.

        Raises:
            ValueError: no report, or the report's pipeline or task is unknown here.
            TypeError: the task is not a Python function taking a ``fixes`` keyword.
            PipelineExecutionError: the rerun failed.
        """
        report = report if report is not None else self.last_quality_report
        if report is None:
            raise ValueError("apply_data_fixes: no DATA_QUALITY_FAILURE to fix; pass report= (e.quality_report)")
        if not isinstance(fixes, (list, tuple)):
            raise TypeError(f"apply_data_fixes: fixes must be a list, got {type(fixes).__name__}")
        pipeline = self._ran.get(report.run_id) or self.pipelines.get(report.pipeline)
        if pipeline is None:
            raise ValueError(
                f"apply_data_fixes: run {report.run_id} (pipeline {report.pipeline!r}) was not run by this "
                "manager (or is older than its last 256 runs) and no pipeline of that name is registered"
            )
        task = pipeline.tasks.get(report.task)
        if task is None:
            raise ValueError(f"apply_data_fixes: pipeline {pipeline.name!r} has no task {report.task!r}")
        _check_takes_fixes(task)
        spec = self._to_proto(pipeline, True)
        (task_spec,) = [t for t in spec.tasks if t.name == task.name]
        args, kwargs = ((), {})
        if task_spec.HasField("args"):
            args, kwargs = decode(task_spec.args, what=f"arguments of task {task.name!r}")
        kwargs = {**kwargs, FIXES_KEYWORD: list(fixes)}
        task_spec.args.CopyFrom(encode((tuple(args), kwargs), "pickle", what=f"arguments of task {task.name!r}"))
        log.info("rerunning pipeline %r (after run %s) with %d fix(es) for task %r",
                 pipeline.name, report.run_id, len(fixes), task.name)  # fmt: skip
        events = self.client._submit_and_watch_pb(spec, summary_only=True, results_on_end=True, timeout_s=timeout_s)
        return self._follow(events, monitor=monitor, raise_on_failure=raise_on_failure, pipeline=pipeline)

    def scale_up_resources(self, required_resources: Mapping[str, Any]) -> AddedWorker:
        """Ask the coordinator's autoscale provider for a worker that fits ``required_resources``.

        For the seed's ``RESOURCE_EXHAUSTION`` handler: ``pm.scale_up_resources(e.required_resources)``.
        The local and command providers start ``xpipe-worker --resources ...`` with at least
        these amounts (docs/autoscaling.md); the task that waited runs once it registers,
        if its run still waits for resources (``configure_placement(wait_for_resources=...)``).

        Raises:
            ValueError: an unknown or bad resource (names it).
            RequestRejectedError: no provider (FAILED_PRECONDITION), the cluster is at
                ``max_workers`` (RESOURCE_EXHAUSTED), or the provider failed (ABORTED).
        """
        from ._resources import add_worker

        return add_worker(self, required_resources)

    def get_resource_manager(self) -> ResourceManager:
        """The cluster's usage, scaling through the autoscaler, and ``@optimize_continuously`` policies."""
        from ._resources import ResourceManager

        if "_resource_manager" not in self.__dict__:
            self._resource_manager = ResourceManager(self)
        return self._resource_manager

    def optimize_pipeline_performance(self, pipeline: Pipeline | str) -> Any:
        """Apply the safe suggestions from ``pipeline``'s history to it; say what changed.

        Safe means what cannot change a result: task priorities (the critical path first) and
        resource requests (down to what was used, with headroom). The pipeline object is
        changed in place, for its next run; the returned report lists each change and why.
        """
        from .insights._optimize import optimize_pipeline

        return optimize_pipeline(self, self._resolve(pipeline))

    def get_monitoring_dashboard(self) -> Any:
        """Insights over this cluster's history, and the web dashboard's ``.url``.

        Returns a :class:`~xpipe.insights.MonitoringDashboard`: ``start_real_time_view``,
        ``generate_performance_report``, ``detect_anomalies``, ``get_optimization_suggestions``,
        ``predict_failures``, ``forecast_duration`` (docs/observability.md).
        """
        from .insights import MonitoringDashboard

        return MonitoringDashboard(self)

    def get_stream_health(self, names: Sequence[str] | None = None) -> Any:
        """Health of the stream pipelines (all, or ``names``): a ``StreamHealth``.

        ``.streams`` maps each name to its ``StreamStatus``; ``.failed_streams`` names the
        unhealthy ones, which :meth:`restart_unhealthy_streams` takes.
        """
        from .streams._handle import StreamHealth, get_streams

        return StreamHealth(get_streams(self.client, names or ()))

    def restart_unhealthy_streams(self, names: Sequence[str] | None = None) -> dict[str, str]:
        """Restart stream pipelines as new runs (offsets and checkpoints carry over).

        Args:
            names: the streams to restart (e.g. ``health.failed_streams``); None or empty:
                every unhealthy one.

        Returns:
            stream name -> its new run id.
        """
        from .streams._handle import restart_streams

        return restart_streams(self.client, names or ())

    # ------------------------------------------------------------------ result cache (docs/cache.md)

    def configure_cache(self, cache_config: Mapping[str, Any]) -> CacheConfig:
        """Use these cache levels (the seed's dict) from the next run on; checked first.

        Raises:
            ValueError: an unknown key, a bad type, size or TTL, a redis level with no URL.
        """
        return self._cache.configure(cache_config)

    def cache_strategy(self, name: str, *, pipelines: Sequence[str] | None = None) -> Callable[[Callable], Callable]:
        """Decorator: ``fn(pipeline, historical_data)`` runs before each run of a pipeline with
        cached tasks (or of ``pipelines``), with the pipeline's past runs; it may call
        :meth:`warm_cache`. A strategy that raises is logged and the run goes on."""
        return self._cache.strategy(name, pipelines)

    def warm_cache(self, pipeline: Any = None, task: str | None = None, inputs: Any = None) -> PipelineResult:
        """Precompute cache entries: run ``task`` of ``pipeline`` (or all of it) on ``inputs``.

        ``inputs`` for one task: its upstream values (a list in ``depends_on`` order, or a
        dict by task name); for the whole pipeline: ``{task name: value it returns}``.
        Inside a :meth:`cache_strategy` function, ``warm_cache(inputs)`` warms that pipeline.
        """
        return self._cache.warm(pipeline, task, inputs)

    def invalidate_cache(self, pipeline: Pipeline | str | None = None, task: str | None = None) -> dict[str, Any]:
        """Remove cached results of ``task`` of ``pipeline``, of the pipeline, or all of them.

        Shared levels lose the entries at once; per-worker levels (memory, disk without a
        path) have them retired by a generation bump (docs/cache.md).
        """
        return self._cache.invalidate(pipeline, task)

    # Hot reload (sdk/_hotreload.py, docs/dev-loop.md); close() stops it too.
    enable_hot_reload = _hotreload.enable_hot_reload
    disable_hot_reload = _hotreload.disable_hot_reload
    hot_reload_status = _hotreload.hot_reload_status

    def _remember(self, run_id: str, pipeline: Pipeline) -> None:
        self._ran[run_id] = pipeline
        self._ran.move_to_end(run_id)
        while len(self._ran) > _KEPT_RUNS:
            self._ran.popitem(last=False)

    def _follow(
        self,
        events: Iterator[pipeline_pb2.RunEvent],
        *,
        monitor: bool,
        raise_on_failure: bool,
        pipeline: Pipeline | None = None,
    ) -> PipelineResult:
        progress = _Progress.maybe(monitor)
        final = None
        run_id = ""
        try:
            for event in events:
                if not run_id and pipeline is not None:
                    self._remember(event.summary.run_id, pipeline)
                run_id = event.summary.run_id
                if progress is not None:
                    progress.update(event.summary)
                if event.summary.state in TERMINAL_RUN_STATES:
                    final = event
                    break
        finally:
            if progress is not None:
                progress.close()
            close = getattr(events, "close", None)
            if close is not None:
                close()
        if final is not None and len(final.changed) == final.summary.total_tasks:
            # The final event carries every task with its result: no extra GetRun.
            info = pipeline_pb2.RunInfo(summary=final.summary, tasks=final.changed)
        else:
            info = self.client._get_run_pb(run_id, include_results=True)
        result = PipelineResult.from_proto(info)
        if result.status != "succeeded" and raise_on_failure:
            exc = _execution_error(result, info)
            if exc.quality_report is not None:
                self.last_quality_report = exc.quality_report
            raise exc
        return result

    def get_run(self, run_id: str) -> PipelineResult:
        """The run's current state (outputs of the tasks that finished so far)."""
        return PipelineResult.from_proto(self.client._get_run_pb(run_id, include_results=True))

    def create_debug_session(self, pipeline: Pipeline | str) -> DebugSession:
        """A debug session of ``pipeline`` (a registered name or a Pipeline): see docs/debugging.md.

        Its run starts at the first ``step_through_task`` or ``continue_``; :meth:`close`
        aborts a session's run that is still going.

        Raises:
            PipelineValidationError: no such pipeline, or a malformed one.
        """
        session = DebugSession(self, self._resolve(pipeline))
        self._on_close.append(session.close)
        return session

    def get_metrics(self, run_id: str) -> dict[str, TaskMetrics]:
        """What each task of a run recorded, read back from the coordinator (a past run too).

        Returns:
            task name -> :class:`~xpipe.telemetry._task.TaskMetrics` (``metrics``,
            ``performance``, ``warnings``) of its last finished attempt; empty for a task
            that recorded nothing. See docs/task-metrics.md.

        Raises:
            RunNotFoundError: no run has this id.
        """
        info = self.client._get_run_pb(run_id, include_results=False)
        return {
            t.name: TaskMetrics.from_proto(t.telemetry if t.HasField("telemetry") else None) for t in info.tasks
        }

    def get_logs(self, run_id: str, task: str | None = None, *, attempt: int = 0) -> str:
        """What the run's tasks (or ``task``) printed and logged, as text, oldest first.

        Each attempt's output starts with a ``==> task 'name' attempt N <==`` line; output
        dropped over the per-attempt cap shows as an ``[xpipe: N bytes ... dropped ...]``
        line. For the pieces themselves, or to follow a running task, use
        ``pm.client.get_logs`` / ``pm.client.follow_logs``.

        Raises:
            RunNotFoundError: no such run, or the run has no such task.
        """
        return "".join(format_logs(self.client.get_logs(run_id, task or "", attempt=attempt)))

    def cancel(self, run_id: str) -> bool:
        """Cancel a run: running attempts are killed, the rest end CANCELLED."""
        return self.client.cancel(run_id)

    def list_runs(self, limit: int = 50) -> list[RunSummary]:
        """The newest ``limit`` runs, newest first, as :class:`~xpipe._types.RunSummary`.

        Raises:
            ValueError: ``limit`` is not an int >= 1.
        """
        return self.client.list_runs(limit)

    def get_cluster_status(self) -> ClusterStatus:
        """The cluster: ``.leader``, ``.term``, ``.members``, ``.workers`` (connected),
        ``.unhealthy_nodes`` (lost or disconnected workers), ``.active_runs``, ``.circuits``.

        ``status["workers"]`` (the dict of before) still works for the old keys, with a
        DeprecationWarning.
        """
        return self.client.cluster_status()

    def recover_unhealthy_nodes(self, names: Sequence[str] | None = None) -> NodeRecovery:
        """Forget workers that are lost or disconnected, so status and placement stop counting them.

        A lost worker that comes back re-registers by itself; this is for one gone for good
        (its machine retired). A forgotten worker that is in fact still alive is told to
        register again. Attempts a disconnected worker held are requeued.

        Args:
            names: worker names; None takes every name in ``get_cluster_status().unhealthy_nodes``.

        Returns:
            Which names were ``forgotten``, which were ``healthy`` (left alone) and which
            ``unknown`` to the coordinator.

        Raises:
            TypeError: ``names`` is a string rather than a list of names.
        """
        if names is None:
            names = self.client.cluster_status().unhealthy_nodes
        result = self.client.forget_workers(names)
        if result.unknown:
            log.warning("recover_unhealthy_nodes: no worker named %s is known", ", ".join(result.unknown))
        return result

    def install_missing_dependencies(
        self,
        names: Sequence[str],
        *,
        timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S,
        aliases: Mapping[str, str] | None = None,
    ) -> InstallReport:
        """pip-install what a DEPENDENCY_FAILURE named, on every connected worker that allows it.

        Workers install only with ``xpipe-worker --allow-install`` (the embedded default's
        workers allow it), into their own ``--install-dir``, never into their Python
        environment; tasks that start afterwards can import the packages. Where packages
        come from is the workers' pip configuration (``PIP_INDEX_URL``, ...), not the caller's.

        Example:
            >>> try:                                                  # doctest: +SKIP
            ...     pm.execute_pipeline(p)
            ... except PipelineExecutionError as e:
            ...     if e.error_type == "DEPENDENCY_FAILURE":
            ...         pm.install_missing_dependencies(e.missing_dependencies)
            ...         pm.execute_pipeline(p)

        Args:
            names: module names (``e.missing_dependencies``) or requirements (``"pandas>=2"``).
                A module whose distribution is named otherwise is mapped through ``aliases``,
                then a small built-in table (``yaml`` -> ``PyYAML``, ``PIL`` -> ``Pillow``, ...:
                :data:`xpipe._install.MODULE_DISTRIBUTIONS`).
            timeout_s: how long pip may run on each worker.
            aliases: module name -> distribution requirement, e.g. ``{"yaml": "PyYAML>=6"}``.

        Returns:
            Each connected worker's answer (``.installed``, ``.refused``, ``.failed``, ``.ok``).
            Some workers refusing or failing while others installed is returned, and logged.

        Raises:
            RequestRejectedError: a name that is not a plain requirement (a URL, a path, a pip
                option; the message names it), no worker connected, or every worker refused
                (the message names them and says they need ``--allow-install``).
            DistributedExecutionError: no worker installed them and pip failed on some (the
                message carries each worker's reason and pip's last lines).
            Both carry the :class:`InstallReport` as ``.report`` when workers answered.
        """
        if isinstance(names, str):
            raise TypeError(f"names must be a list of module or package names, got the string {names!r}")
        packages = distributions_for(list(names), aliases)
        report = self.client.install_dependencies(packages, timeout_s=timeout_s)
        if report.installed:
            if not report.ok:
                log.warning("install_missing_dependencies: %s not installed on %s", ", ".join(packages),
                            "; ".join(f"{w.worker} ({w.status}: {w.message})" for w in report.workers
                                      if w.worker not in report.installed))  # fmt: skip
            return report
        error: Exception
        if not report.failed:
            error = RequestRejectedError(
                f"no worker installed {', '.join(packages)}: every worker refused ("
                + "; ".join(f"{w.worker}: {w.message}" for w in report.workers)
                + "). Workers install packages only when started with xpipe-worker --allow-install."
            )
        else:
            lines = [f"{w.worker} {w.status}: {w.message}" for w in report.workers]
            lines += [f"pip on {w.worker} ended with: ...{w.output_tail[-600:]}" for w in report.workers if w.output_tail]
            error = DistributedExecutionError(f"no worker installed {', '.join(packages)}:\n" + "\n".join(lines))
        error.report = report  # type: ignore[attr-defined]
        raise error

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ governance

    def forget_subject(self, field: str, value: str) -> ForgetReport:
        """Erase what the cluster stored about one data subject, and say what was erased.

        Results of finished runs holding a record whose ``field`` (any case) equals
        ``value`` are rewritten without it (deleted when the result is that record), in the
        store and in artifact files; task log lines containing ``value`` are deleted. Results
        the coordinator cannot read without running code (pickled class instances) and
        unfinished runs are listed in ``not_inspected``. Needs permission ``data:forget``.

        Example:
            >>> print(pm.forget_subject("email", "dana@example.org"))   # doctest: +SKIP
            erased 2 records from 2 results and 3 log lines (2 runs, 3 tasks)
        """
        return forget_subject(self.client, field, value)

    def collect_garbage(self, *, dry_run: bool = False) -> GarbageReport:
        """Run the coordinator's retention sweep now (``dry_run``: only list what it would delete).

        Needs a coordinator started with ``--retention-days`` or ``--retention`` (or
        ``compliance.retention_days`` for the embedded default) and permission ``data:gc``.
        """
        return collect_garbage(self.client, dry_run=dry_run)

    def on_close(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` when this manager closes (before its connection does)."""
        self._on_close.append(stop)

    def close(self) -> None:
        """Close the connection and stop the embedded processes, if any (idempotent)."""
        for stop in self.__dict__.get("_on_close", ())[:]:
            stop()
        self.__dict__.get("_on_close", []).clear()
        if "_cache" in self.__dict__:
            self._cache.close()
        self.client.close() if hasattr(self, "client") else None
        if self._local is not None:
            self._local.stop()
            self._local = None

    def __enter__(self) -> PipelineManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_local", None) is not None:
            self._local.stop()

    # ------------------------------------------------------------------ audit and lineage

    def get_lineage(self, run_id: str) -> LineageGraph:
        """The lineage of a run's tracked tasks (``@track_data_lineage``, ``enable_lineage()``).

        Nodes hold content hashes, sizes and artifact references of each task's inputs and
        output, never the values. Raises :class:`RunNotFoundError` for an unknown run.
        """
        return self.client.get_lineage(run_id)

    def export_lineage(self, run_id: str, *, path: str | Path | None = None, url: str = "",
                       namespace: str = "xpipe") -> int:  # fmt: skip
        """Write a run's lineage as OpenLineage run events; returns how many events.

        Args:
            run_id: The run.
            path: Append the events as JSON lines to this file, or
            url: POST each event (JSON) to this HTTP endpoint, such as Marquez's
                ``http://HOST:5000/api/v1/lineage``. Nothing is sent elsewhere.
            namespace: The OpenLineage namespace of the jobs and datasets.
        """
        from ._lineage import write_openlineage

        events = self.get_lineage(run_id).openlineage_events(namespace=namespace)
        return write_openlineage(events, path=path, url=url)

    def get_audit(self, *, since: float = 0.0, principal: str = "") -> list[AuditEntry]:
        """Audit log entries (every page), oldest first; ``since`` in unix seconds.

        Check them with ``xpipe.security._audit.verify`` or ``xpipe audit --verify``.
        """
        from ._lineage import iter_pages

        pages = iter_pages(self.client.get_audit, since=since, principal=principal)
        return [entry for page in pages for entry in page.entries]


def _required_resources(info: pipeline_pb2.RunInfo | None, task: str) -> dict[str, Any]:
    """What a RESOURCE_EXHAUSTION task asked for, in the SDK's keys (cpu_cores, memory_mb, gpu, custom)."""
    for t in info.tasks if info is not None else ():
        if t.name == task and t.error.HasField("required_resources"):
            res = t.error.required_resources
            out: dict[str, Any] = {"cpu_cores": res.cpu_cores}
            if res.memory_bytes:
                out["memory_mb"] = res.memory_bytes / 2**20
            if res.gpu:
                out["gpu"] = res.gpu
            out.update(res.custom)
            return out
    return {}


def _execution_error(result: PipelineResult, info: pipeline_pb2.RunInfo | None = None) -> PipelineExecutionError:
    if result.status == "cancelled":
        return PipelineExecutionError(f"run {result.run_id} was cancelled", error_type="CANCELLED", result=result)
    failed = [t for t in result.tasks.values() if t.status == "failed"]
    first = min(failed, key=lambda t: t.finished_at or 0.0) if failed else None
    upstream = [n for n, t in result.tasks.items() if t.status == "upstream_failed"]
    if first is None:
        return PipelineExecutionError(
            f"run {result.run_id} failed" + (f": {len(upstream)} task(s) did not run" if upstream else ""),
            error_type="UPSTREAM_FAILED" if upstream else "TASK_FAILURE", result=result, upstream_failed=upstream,
        )  # fmt: skip
    # The task's own type, as the worker or coordinator recorded it (one of ERROR_TYPES).
    error_type = first.error_type or "TASK_FAILURE"
    message = f"task {first.name!r} failed"
    if first.exception_type:
        message += f" with {first.exception_type}"
    message += f": {first.error}"
    if upstream:
        message += f" ({len(upstream)} downstream task(s) did not run)"
    cls = HandlerNotFoundError if error_type == "HANDLER_NOT_FOUND" else PipelineExecutionError
    return cls(
        message,
        error_type=error_type,
        result=result,
        task=first.name,
        task_error=first.error or "",
        traceback=first.traceback or "",
        missing_dependencies=list(first.missing_dependencies),
        upstream_failed=upstream,
        required_resources=_required_resources(info, first.name) if error_type == "RESOURCE_EXHAUSTION" else None,
        quality_report=_quality_report(info, result, first.name),
    )


def _quality_report(info: pipeline_pb2.RunInfo | None, result: PipelineResult, task: str) -> DataQualityReport | None:
    """The failing task's ``quality_report`` (from its exception), decoded; None if it had none."""
    for t in info.tasks if info is not None else ():
        if t.name == task and t.error.HasField("quality_report"):
            raw = decode(t.error.quality_report, what=f"quality report of task {task!r}")
            return DataQualityReport(raw, run_id=result.run_id, pipeline=result.pipeline, task=task)
    return None


def _check_takes_fixes(task: Any) -> None:
    """Refuse, before submitting, a task that could not receive ``fixes``."""
    if task.kind != "python":
        raise TypeError(f"apply_data_fixes: task {task.name!r} is a {task.kind} task; only Python functions take fixes")
    func = task.func if task.func is not None else getattr(task, "run", None)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: let the worker report what happens
    if not any(p.name == FIXES_KEYWORD or p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(
            f"apply_data_fixes: the function of task {task.name!r} takes no {FIXES_KEYWORD!r} keyword; "
            f"add a parameter `{FIXES_KEYWORD}=None` to receive the fixes"
        )


class _Progress:
    """A rich progress bar on a terminal; nothing elsewhere."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bar.start()
        self._task = None

    @classmethod
    def maybe(cls, monitor: bool) -> _Progress | None:
        if monitor and sys.stdout.isatty():
            return cls()
        return None

    def update(self, summary: pipeline_pb2.RunSummary) -> None:
        done = summary.succeeded_tasks + summary.failed_tasks
        if self._task is None:
            self._task = self._bar.add_task(summary.pipeline, total=summary.total_tasks)
        self._bar.update(self._task, completed=done, description=f"{summary.pipeline} [{RUN_STATUS[summary.state]}]")

    def close(self) -> None:
        self._bar.stop()
