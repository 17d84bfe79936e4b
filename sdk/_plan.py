"""Execution plans: what a pipeline will need, how long it should take, what it may cost.

An :class:`ExecutionPlan` is built before a run (``PipelineManager.create_execution_plan``)
from three things: the pipeline's graph and resource requests, the duration history the
coordinator keeps for task names (mean of earlier successful runs; tasks never seen count
:data:`DEFAULT_DURATION_S`), and the workers registered now (their resources, and their
``cost_per_hour`` label for prices). Building it is pure: :func:`build_plan` takes those
as plain values, so tests and ``xpipe plan`` without a coordinator can call it directly.

The plan groups tasks into **stages**: the tasks of one stage can run together, every
dependency of a task is in an earlier stage, and the summed requests of a stage never
exceed ``resource_constraints``. How tasks are given to stages depends on the strategy:

* ``time_optimal``: each task goes to the earliest stage it fits, higher priority and
  longer critical path first (as the coordinator orders ready tasks);
* ``resource_optimal``: each task goes, within its slack (the stages it can move through
  without lengthening the critical path), to the least loaded stage, flattening the peak;
* ``cost_optimal``: stages as ``resource_optimal``, prices as the cheapest fitting worker.

``PipelineManager.execute_with_plan`` runs the plan's pipeline with the constraints as a
run-wide in-flight cap (``PipelineSpec.resource_limits``, enforced by the coordinator) and
the placement strategy that suits the plan's goal.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._limits import normalize_resources
from ._proto import common_pb2

if TYPE_CHECKING:
    from ._dag import Pipeline

__all__ = [
    "ExecutionPlan",
    "PlanStage",
    "PlannedTask",
    "PlanWorker",
    "build_plan",
    "OPTIMIZATION_STRATEGIES",
    "DEFAULT_DURATION_S",
]

OPTIMIZATION_STRATEGIES = ("time_optimal", "resource_optimal", "cost_optimal")
#: Estimated duration of a task name with no history.
DEFAULT_DURATION_S = 1.0
#: The placement strategy a plan's run uses, by optimization strategy.
_PLACEMENT_FOR = {"time_optimal": "spread", "resource_optimal": "resource_balanced", "cost_optimal": "pack"}
_BASE = ("cpu_cores", "memory_bytes", "gpu")


def _plan_error(message: str) -> Exception:
    from .errors import PipelineValidationError

    return PipelineValidationError(message)


def resources_dict(resources: common_pb2.Resources | None, *, default_cpu: bool = True) -> dict[str, float]:
    """A Resources message as ``{"cpu_cores", "memory_bytes", "gpu", <custom>...}``.

    A request with no cpu asks for 1 core, as the coordinator counts it.
    """
    res = resources if resources is not None else common_pb2.Resources()
    out: dict[str, float] = {"cpu_cores": res.cpu_cores or (1.0 if default_cpu else 0.0)}
    out["memory_bytes"] = float(res.memory_bytes)
    out["gpu"] = float(res.gpu)
    out.update({k: float(v) for k, v in sorted(res.custom.items())})
    return out


def parse_constraints(constraints: Mapping[str, Any] | None) -> dict[str, float]:
    """``{"cpu_cores": 8, "memory_gb": 32, "gpu": 1, <custom>: N}`` -> normalized keys.

    Raises:
        PipelineValidationError: a bad key or value, naming it.
    """
    out: dict[str, float] = {}
    if constraints is None:
        return out
    if not isinstance(constraints, Mapping):
        raise _plan_error(f"resource_constraints must be a dict, got {type(constraints).__name__}")
    for key, value in constraints.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 < value < math.inf:
            raise _plan_error(f"resource_constraints[{key!r}] must be a finite number > 0, got {value!r}")
    try:
        amounts = normalize_resources(constraints)  # the same names as resource_requirements
    except ValueError as exc:
        problem = str(exc)
        raise _plan_error(f"resource_constraints{'' if problem.startswith('[') else ' '}{problem}") from None
    for key, value in (("cpu_cores", amounts.cpu_cores), ("memory_bytes", amounts.memory_bytes),
                       ("gpu", amounts.gpu), *amounts.custom.items()):  # fmt: skip
        if value is None:
            continue
        if value <= 0:
            raise _plan_error(f"resource_constraints[{key!r}] must be a finite number > 0, got {value!r}")
        out[key] = float(value)
    return out


def to_proto_limits(constraints: Mapping[str, float]) -> common_pb2.Resources:
    """Normalized constraints as ``PipelineSpec.resource_limits`` (absent keys: no limit)."""
    limits = common_pb2.Resources(
        cpu_cores=constraints.get("cpu_cores", 0.0),
        memory_bytes=int(constraints.get("memory_bytes", 0)),
        gpu=int(constraints.get("gpu", 0)),
    )
    for key, value in constraints.items():
        if key not in _BASE:
            limits.custom[key] = value
    return limits


@dataclass(frozen=True, slots=True)
class PlanWorker:
    """A worker as plans see it: what it offers and what it costs per hour (0: unknown)."""

    name: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)
    cost_per_hour: float = 0.0

    @classmethod
    def from_info(cls, info: Any) -> PlanWorker:
        """From a ``WorkerInfo`` (``Client.list_workers``); the price is its ``cost_per_hour`` label."""
        labels = dict(info.labels)
        try:
            price = float(labels.get("cost_per_hour", 0.0))
        except ValueError:
            price = 0.0
        price = price if math.isfinite(price) and price > 0 else 0.0
        res = info.resources  # a dict (xpipe.WorkerInfo) or a Resources message
        resources = dict(res) if isinstance(res, Mapping) else resources_dict(res, default_cpu=False)
        return cls(info.name, resources, labels, price)

    def fits(self, request: Mapping[str, float], labels: Mapping[str, str]) -> bool:
        if any(self.labels.get(k) != v for k, v in labels.items()):
            return False
        return all(amount <= self.resources.get(key, 0.0) for key, amount in request.items() if amount > 0)

    def share(self, request: Mapping[str, float]) -> float:
        """The fraction of this worker a request takes (its most demanding resource)."""
        return max(
            (amount / self.resources[key] for key, amount in request.items() if amount > 0 and self.resources.get(key)),
            default=0.0,
        )


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """One task in a plan."""

    name: str
    stage: int
    #: Mean duration of earlier successful runs of this task name, else the default.
    estimated_duration_s: float
    #: How many earlier runs that mean is over (0: the default was used).
    duration_samples: int
    #: What the task asks for (cpu_cores, memory_bytes, gpu, custom resources).
    resources: dict[str, float]
    #: The worker its cost is priced on (cost plans), else None.
    worker: str | None
    estimated_cost: float


@dataclass(frozen=True, slots=True)
class PlanStage:
    """Tasks that can run together: every dependency is in an earlier stage."""

    index: int
    tasks: tuple[str, ...]
    #: The longest task of the stage.
    estimated_duration_s: float
    #: Summed requests of the stage's tasks: the most it holds at once.
    peak_resources: dict[str, float]


@dataclass(frozen=True)
class ExecutionPlan:
    """A pipeline's stages, critical path, estimated duration and cost; see the module docs.

    Print it for a table, or use :meth:`to_dict` / :meth:`to_json`.
    """

    pipeline_name: str
    optimization_strategy: str
    #: Normalized constraints (cpu_cores, memory_bytes, gpu, custom); empty: none given.
    resource_constraints: dict[str, float]
    cost_optimization: bool
    stages: tuple[PlanStage, ...]
    tasks: dict[str, PlannedTask]
    #: The chain of tasks with the longest summed duration.
    critical_path: tuple[str, ...]
    critical_path_s: float
    #: Stage by stage (each stage as long as its longest task): an upper bound.
    estimated_duration_s: float
    #: Sum over tasks of duration x worker price x the share of the worker it takes.
    estimated_cost: float
    #: False when no worker carries a ``cost_per_hour`` label (the cost is then 0).
    cost_known: bool
    #: The coordinator placement strategy a run of this plan uses.
    placement_strategy: str
    warnings: tuple[str, ...] = ()
    pipeline: Pipeline | None = field(default=None, repr=False, compare=False)

    @property
    def peak_resources(self) -> dict[str, float]:
        """The largest per-stage sum of each resource."""
        peak: dict[str, float] = {}
        for stage in self.stages:
            for key, value in stage.peak_resources.items():
                peak[key] = max(peak.get(key, 0.0), value)
        return peak

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline_name,
            "optimization_strategy": self.optimization_strategy,
            "resource_constraints": dict(self.resource_constraints),
            "cost_optimization": self.cost_optimization,
            "placement_strategy": self.placement_strategy,
            "stages": [
                {"index": s.index, "tasks": list(s.tasks), "estimated_duration_s": s.estimated_duration_s,
                 "peak_resources": dict(s.peak_resources)}
                for s in self.stages
            ],  # fmt: skip
            "tasks": {
                t.name: {"stage": t.stage, "estimated_duration_s": t.estimated_duration_s,
                         "duration_samples": t.duration_samples, "resources": dict(t.resources),
                         "worker": t.worker, "estimated_cost": t.estimated_cost}
                for t in self.tasks.values()
            },  # fmt: skip
            "critical_path": list(self.critical_path),
            "critical_path_s": self.critical_path_s,
            "estimated_duration_s": self.estimated_duration_s,
            "estimated_cost": self.estimated_cost,
            "cost_known": self.cost_known,
            "peak_resources": self.peak_resources,
            "warnings": list(self.warnings),
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        cost_note = "" if self.cost_known else " (no worker has a cost_per_hour label)"
        lines = [
            f"Execution plan for {self.pipeline_name!r}: {self.optimization_strategy}"
            f"{', cost optimization' if self.cost_optimization else ''}, placement {self.placement_strategy}",
            f"  constraints: {_fmt_resources(self.resource_constraints) if self.resource_constraints else 'none'}",
            f"  estimated duration: {_fmt_s(self.estimated_duration_s)} over {len(self.stages)} stage(s); "
            f"critical path {_fmt_s(self.critical_path_s)}",
            f"  estimated cost: {self.estimated_cost:.4g}{cost_note}",
            f"  critical path: {' -> '.join(self.critical_path)}",
        ]
        for stage in self.stages:
            lines.append(
                f"  stage {stage.index}  ~{_fmt_s(stage.estimated_duration_s):>8}  peak {_fmt_resources(stage.peak_resources)}"
            )
            for name in stage.tasks:
                t = self.tasks[name]
                source = f"{t.duration_samples} run(s)" if t.duration_samples else "default"
                where = f"  on {t.worker}" if t.worker else ""
                cost = f"  cost {t.estimated_cost:.3g}" if self.cost_known else ""
                lines.append(f"    {name:28} ~{_fmt_s(t.estimated_duration_s):>8} ({source})  {_fmt_resources(t.resources)}{where}{cost}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def resource_limits(self) -> common_pb2.Resources | None:
        """The run-wide in-flight cap a run of this plan carries (None: no constraints)."""
        return to_proto_limits(self.resource_constraints) if self.resource_constraints else None


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    return f"{seconds:.2f}s"


def _fmt_resources(res: Mapping[str, float]) -> str:
    parts = []
    for key, value in res.items():
        if key == "memory_bytes":
            if value:
                parts.append(f"memory={value / 2**30:.3g}GiB")
        elif value or key == "cpu_cores":
            parts.append(f"{'cpu' if key == 'cpu_cores' else key}={value:g}")
    return " ".join(parts)


def _fits(load: Mapping[str, float], request: Mapping[str, float], limits: Mapping[str, float]) -> bool:
    return all(load.get(key, 0.0) + request.get(key, 0.0) <= cap + 1e-9 for key, cap in limits.items())


def _share(load: Mapping[str, float], request: Mapping[str, float], scale: Mapping[str, float]) -> float:
    return max(((load.get(k, 0.0) + v) / scale[k] for k, v in request.items() if v and scale.get(k)), default=0.0)


def build_plan(
    pipeline: Pipeline,
    *,
    optimization_strategy: str = "time_optimal",
    resource_constraints: Mapping[str, Any] | None = None,
    cost_optimization: bool = False,
    durations: Mapping[str, tuple[float, int]] | None = None,
    workers: Sequence[PlanWorker] = (),
    default_duration_s: float = DEFAULT_DURATION_S,
) -> ExecutionPlan:
    """Plan a pipeline; pure (see the module docs for the strategies).

    Args:
        durations: ``{task name: (mean seconds, samples)}`` from earlier runs.
        workers: the registered workers, for prices and for "fits nowhere" warnings.

    Raises:
        PipelineValidationError: a bad strategy or constraint, an invalid graph, or a task
            whose request alone exceeds the constraints (no plan could run it).
    """
    if optimization_strategy not in OPTIMIZATION_STRATEGIES:
        raise _plan_error(
            f"unknown optimization_strategy {optimization_strategy!r}; known: {', '.join(OPTIMIZATION_STRATEGIES)}"
        )
    limits = parse_constraints(resource_constraints)
    order = pipeline.validate()
    tasks = pipeline.tasks
    durations = durations or {}
    deps = {name: tasks[name].upstream for name in order}
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for dep in deps[name]:
            dependents[dep].append(name)
    from ._dag import _resources_proto

    request: dict[str, dict[str, float]] = {}
    for name in order:
        request[name] = resources_dict(_resources_proto(name, tasks[name].resource_requirements))
        over = [f"{k}={request[name].get(k, 0.0):g} > {cap:g}" for k, cap in limits.items()
                if request[name].get(k, 0.0) > cap + 1e-9]  # fmt: skip
        if over:
            raise _plan_error(f"task {name!r} alone exceeds resource_constraints ({'; '.join(over)}); no plan can run it")
    duration = {n: durations[n][0] if n in durations else default_duration_s for n in order}
    samples = {n: int(durations[n][1]) if n in durations else 0 for n in order}

    # Longest path (by duration) from each task to a sink, and stages to a sink.
    tail_s: dict[str, float] = {}
    tail_n: dict[str, int] = {}
    for name in reversed(order):
        after = dependents[name]
        tail_s[name] = duration[name] + max((tail_s[d] for d in after), default=0.0)
        tail_n[name] = 1 + max((tail_n[d] for d in after), default=0)
    depth = max(tail_n.values())

    # Visit tasks in a topological order that prefers priority, then critical path.
    indegree = {n: len(deps[n]) for n in order}
    position = {n: i for i, n in enumerate(order)}
    heap = [(-tasks[n].priority, -tail_s[n], position[n], n) for n in order if not indegree[n]]
    heapq.heapify(heap)
    stage_of: dict[str, int] = {}
    loads: list[dict[str, float]] = []
    # Scale for "least loaded": the constraints, else the largest request of each resource.
    scale = dict(limits) or {k: max(r.get(k, 0.0) for r in request.values()) or 1.0 for k in _BASE}
    level = optimization_strategy != "time_optimal"
    while heap:
        *_, name = heapq.heappop(heap)
        lo = max((stage_of[d] + 1 for d in deps[name]), default=0)
        hi = max(lo, depth - tail_n[name])  # the latest stage that keeps the critical path
        chosen = None
        if level:
            best = None
            for s in range(lo, hi + 1):
                load = loads[s] if s < len(loads) else {}
                if _fits(load, request[name], limits):
                    key = _share(load, request[name], scale)
                    if best is None or key < best - 1e-12:
                        best, chosen = key, s
        s = lo if chosen is None else chosen
        while chosen is None:
            load = loads[s] if s < len(loads) else {}
            if _fits(load, request[name], limits):
                chosen = s
            s += 1
        while len(loads) <= chosen:
            loads.append({})
        for key, value in request[name].items():
            loads[chosen][key] = loads[chosen].get(key, 0.0) + value
        stage_of[name] = chosen
        for child in dependents[name]:
            indegree[child] -= 1
            if not indegree[child]:
                heapq.heappush(heap, (-tasks[child].priority, -tail_s[child], position[child], child))

    # Drop empty stages (levelling may leave gaps) and renumber.
    used = sorted(set(stage_of.values()))
    renumber = {old: new for new, old in enumerate(used)}
    members: list[list[str]] = [[] for _ in used]
    for name in order:
        stage_of[name] = renumber[stage_of[name]]
        members[stage_of[name]].append(name)
    stages = tuple(
        PlanStage(
            index=i, tasks=tuple(names), estimated_duration_s=max(duration[n] for n in names),
            peak_resources={k: v for k, v in loads[old].items() if v or k == "cpu_cores"},
        )
        for i, (old, names) in enumerate(zip(used, members))
    )  # fmt: skip

    # Critical path: follow the longest tail from the longest head.
    start = max(order, key=lambda n: (tail_s[n] if not deps[n] else -1.0, -position[n]))
    path = [start]
    while dependents[path[-1]]:
        path.append(max(dependents[path[-1]], key=lambda n: (tail_s[n], -position[n])))

    # Prices.
    priced = [w for w in workers if w.cost_per_hour > 0]
    cheapest = cost_optimization or optimization_strategy == "cost_optimal"
    warnings: list[str] = []
    planned: dict[str, PlannedTask] = {}
    total_cost = 0.0
    for name in order:
        req, labels = request[name], tasks[name].labels
        worker_name, cost = None, 0.0
        if workers and not any(w.fits(req, labels) for w in workers):
            warnings.append(f"task {name!r} ({_fmt_resources(req)}) fits no registered worker")
        fitting = [w for w in priced if w.fits(req, labels)]
        if fitting:
            costs = [(duration[name] / 3600.0 * w.cost_per_hour * w.share(req), w.name) for w in fitting]
            if cheapest:
                cost, worker_name = min(costs)
            else:
                cost = sum(c for c, _ in costs) / len(costs)
        total_cost += cost
        planned[name] = PlannedTask(name, stage_of[name], duration[name], samples[name], req, worker_name, cost)
    return ExecutionPlan(
        pipeline_name=pipeline.name,
        optimization_strategy=optimization_strategy,
        resource_constraints=limits,
        cost_optimization=bool(cost_optimization),
        stages=stages,
        tasks=planned,
        critical_path=tuple(path),
        critical_path_s=tail_s[start],
        estimated_duration_s=sum(s.estimated_duration_s for s in stages),
        estimated_cost=total_cost,
        cost_known=bool(priced),
        placement_strategy=_PLACEMENT_FOR[optimization_strategy],
        warnings=tuple(warnings),
        pipeline=pipeline,
    )
