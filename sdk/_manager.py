"""``PipelineManager``: the seed's front door for submitting and following pipelines."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ._client import Client
from ._dag import Pipeline
from ._dag import pipeline as _pipeline_decorator
from ._local import LocalCluster
from ._proto import common_pb2 as pb
from ._proto import pipeline_pb2
from ._result import RUN_STATUS, PipelineResult
from .errors import PipelineExecutionError, PipelineValidationError

__all__ = ["PipelineManager"]

log = logging.getLogger(__name__)

_TERMINAL = {pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED}
# Keys of the seed's config dicts that we accept; the ones we do not act on yet are named
# in a warning rather than silently dropped.
_CONFIG_KEYS = {"coordinator", "workers", "worker_nodes", "slots_per_worker", "data_dir", "imports", "connect_timeout_s"}
_SEED_KEYS_NOT_ACTED_ON = {"cluster_mode", "resource_allocation", "fault_tolerance", "security", "compliance", "integration"}


class PipelineManager:
    """Submits pipelines to a cluster and follows their runs.

    Args:
        config: an optional dict, as in the seed (``PipelineManager(distributed_config)``).
            Keys: ``coordinator``, ``workers`` (or ``worker_nodes``), ``slots_per_worker``,
            ``data_dir``, ``imports``, ``connect_timeout_s``.
        coordinator: ``"host:port[,host:port...]"`` of a running cluster. None (and no
            ``XPIPE_COORDINATOR``) starts the embedded default: a coordinator and local
            worker processes on this machine.
        workers, slots_per_worker, data_dir, imports: shape of the embedded default.

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
        connect_timeout_s: float = 30.0,
    ):
        cfg = dict(config or {})
        unknown = set(cfg) - _CONFIG_KEYS - _SEED_KEYS_NOT_ACTED_ON
        if unknown:
            raise ValueError(f"unknown PipelineManager config keys: {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        ignored = sorted(set(cfg) & _SEED_KEYS_NOT_ACTED_ON)
        if ignored:
            warnings.warn(f"PipelineManager config keys {ignored} are accepted but not acted on yet", stacklevel=2)
        self.config = cfg
        coordinator = coordinator or cfg.get("coordinator") or os.environ.get("XPIPE_COORDINATOR") or None
        self.pipelines: dict[str, Pipeline] = {}
        self._local: LocalCluster | None = None
        if coordinator is None:
            self._local = LocalCluster(
                workers=workers or cfg.get("workers") or cfg.get("worker_nodes") or 2,
                slots_per_worker=slots_per_worker or cfg.get("slots_per_worker") or max(1, (os.cpu_count() or 2) // 2),
                data_dir=data_dir or cfg.get("data_dir"),
                imports=tuple(imports or cfg.get("imports") or ()),
            )
            coordinator = self._local.start()
        self.client = Client(coordinator, connect_timeout_s=cfg.get("connect_timeout_s", connect_timeout_s))
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
            built = build(fn)
            self.pipelines[name] = built
            return built

        return decorate

    def _resolve(self, pipeline: Pipeline | str) -> Pipeline:
        if isinstance(pipeline, Pipeline):
            return pipeline
        if isinstance(pipeline, str):
            try:
                return self.pipelines[pipeline]
            except KeyError:
                raise PipelineValidationError(
                    f"no pipeline named {pipeline!r} is registered; known: {sorted(self.pipelines)}"
                ) from None
        raise TypeError(f"expected a Pipeline or a registered pipeline name, got {type(pipeline).__name__}")

    # ------------------------------------------------------------------ runs

    def submit(self, pipeline: Pipeline | str, *, retry_on_failure: bool = True) -> str:
        """Validate and submit a pipeline; returns its run id as soon as the run is durable."""
        spec = self._resolve(pipeline).to_proto(retry_on_failure=retry_on_failure)
        return self.client.submit(spec)

    def execute_pipeline(
        self,
        pipeline: Pipeline | str,
        *,
        parallel: bool = True,
        monitor: bool = True,
        retry_on_failure: bool = True,
        raise_on_failure: bool = True,
        timeout_s: float | None = None,
    ) -> PipelineResult:
        """Run a pipeline on the cluster and wait for it.

        Args:
            parallel: run independent tasks at the same time (False runs one task at a time).
            monitor: show a progress bar when stdout is a terminal.
            retry_on_failure: honour each task's ``max_retries``; False turns retries off.
            raise_on_failure: raise :class:`PipelineExecutionError` when the run fails.
            timeout_s: give up waiting after this long (the run goes on; cancel it if needed).

        Raises:
            PipelineValidationError: the pipeline is malformed (nothing was submitted).
            PipelineExecutionError: the run failed or was cancelled.
        """
        spec = self._resolve(pipeline).to_proto(retry_on_failure=retry_on_failure)
        if not parallel:
            spec.max_parallel = 1
        run_id = self.client.submit(spec)
        return self.wait(run_id, timeout_s=timeout_s, monitor=monitor, raise_on_failure=raise_on_failure)

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
            TimeoutError: ``timeout_s`` passed first.
            PipelineExecutionError: the run failed or was cancelled (unless ``raise_on_failure=False``).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        progress = _Progress.maybe(monitor)
        try:
            for event in self.client.watch(run_id):
                if progress is not None:
                    progress.update(event.summary)
                if event.summary.state in _TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id} did not finish within {timeout_s}s")
        finally:
            if progress is not None:
                progress.close()
        result = PipelineResult.from_proto(self.client.get_run(run_id, include_results=True))
        if result.status != "succeeded" and raise_on_failure:
            raise _execution_error(result)
        return result

    def get_run(self, run_id: str) -> PipelineResult:
        """The run's current state (outputs of the tasks that finished so far)."""
        return PipelineResult.from_proto(self.client.get_run(run_id, include_results=True))

    def cancel(self, run_id: str) -> bool:
        """Cancel a run: running attempts are killed, the rest end CANCELLED."""
        return self.client.cancel(run_id)

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return [
            {"run_id": r.run_id, "pipeline": r.pipeline, "status": RUN_STATUS.get(r.state, "unknown"),
             "created_at": r.created_at, "finished_at": r.finished_at or None, "tasks": r.total_tasks}
            for r in self.client.list_runs(limit)
        ]  # fmt: skip

    def get_cluster_status(self) -> dict[str, Any]:
        status = self.client.cluster_status()
        return {"leader": status.leader_address, "members": list(status.members), "term": status.term,
                "workers": status.workers, "active_runs": status.active_runs}  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connection and stop the embedded processes, if any (idempotent)."""
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


def _execution_error(result: PipelineResult) -> PipelineExecutionError:
    if result.status == "cancelled":
        return PipelineExecutionError(f"run {result.run_id} was cancelled", error_type="CANCELLED", result=result)
    failed = [t for t in result.tasks.values() if t.status == "failed"]
    first = min(failed, key=lambda t: t.finished_at or 0.0) if failed else None
    skipped = [n for n, t in result.tasks.items() if t.status == "upstream_failed"]
    if first is None:
        return PipelineExecutionError(
            f"run {result.run_id} failed", error_type="DEPENDENCY_FAILURE", result=result, missing_dependencies=skipped
        )
    error_type = first.error_type or "TASK_FAILURE"
    if error_type not in ("TIMEOUT", "RESOURCE_EXHAUSTION", "DATA_QUALITY_FAILURE", "CIRCUIT_OPEN", "CANCELLED"):
        error_type = "TASK_FAILURE"
    message = f"task {first.name!r} failed"
    if first.exception_type:
        message += f" with {first.exception_type}"
    message += f": {first.error}"
    if skipped:
        message += f" ({len(skipped)} downstream task(s) did not run)"
    return PipelineExecutionError(
        message,
        error_type=error_type,
        result=result,
        task=first.name,
        task_error=first.error or "",
        traceback=first.traceback or "",
        missing_dependencies=[first.name] if skipped else [],
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
