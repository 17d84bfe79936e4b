"""The resource manager (``pm.get_resource_manager()``): usage, scaling, and user policies.

It is a client of the coordinator's autoscaler (``AutoscaleService``): ``increase_resources``
and ``reduce_resources`` change the desired worker count within the bounds in force, and
the autoscaler's rule (docs/autoscaling.md) takes it from there, so a policy here and the
autoscaler never fight over the count. ``@optimize_continuously`` runs a user's policy in a
daemon thread of this process; ``pm.close()`` stops it.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._limits import normalize_resources
from ._proto import autoscale_pb2, autoscale_pb2_grpc

if TYPE_CHECKING:
    from ._manager import PipelineManager

__all__ = ["AddedWorker", "PolicyLoop", "ResourceManager", "ResourceUsage", "ScaleResult", "add_worker"]

log = logging.getLogger(__name__)

#: How often ``@optimize_continuously`` runs a policy when no ``interval_s`` is given.
DEFAULT_POLICY_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """The cluster now, as the leader coordinator sees it.

    Attributes:
        cpu_utilization: mean CPU use of connected workers' hosts, 0..1 (from heartbeats).
        memory_utilization: mean memory use of their hosts, 0..1.
        queue_backlog: ready tasks waiting for a slot.
        workers: connected workers (draining ones not counted).
        slots: their slots; ``busy_slots`` of them run tasks.
        desired_workers: what the autoscaler asks for (0 before its first decision or without one).
        min_workers, max_workers: the bounds in force (pipelines' settings applied).
        provider: the coordinator's ``--autoscale-provider``.
    """

    cpu_utilization: float
    memory_utilization: float
    queue_backlog: int
    workers: int
    slots: int
    busy_slots: int
    desired_workers: int
    min_workers: int
    max_workers: int
    provider: str
    last_decision: str


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """What ``increase_resources`` / ``reduce_resources`` asked for: ``workers`` -> ``desired``."""

    workers: int
    desired: int
    min_workers: int
    max_workers: int


@dataclass(frozen=True, slots=True)
class AddedWorker:
    """A worker the provider was asked for: its id (or what the script printed) and its ``--resources``."""

    worker: str
    resources: str


def _factor(name: str, factor: Any, *, above_one: bool) -> float:
    if not isinstance(factor, numbers.Real) or isinstance(factor, bool) or not math.isfinite(factor):
        raise ValueError(f"{name}: factor={factor!r:.80} must be a number")
    if above_one and factor < 1:
        raise ValueError(f"increase_resources: factor={factor} must be at least 1 (use reduce_resources to shrink)")
    if not above_one and not 0 < factor <= 1:
        raise ValueError(f"reduce_resources: factor={factor} must be above 0 and at most 1 (0.8 keeps 80%)")
    return float(factor)


def add_worker(pm: PipelineManager, required_resources: Mapping[str, Any]) -> AddedWorker:
    """Ask the coordinator's provider for one worker with at least ``required_resources``.

    Raises:
        ValueError: an unknown or bad resource (names it).
    """
    amounts = normalize_resources(dict(required_resources))
    request = autoscale_pb2.AddWorkerRequest(
        cpu_cores=amounts.cpu_cores or 0.0, memory_bytes=amounts.memory_bytes or 0, gpu=amounts.gpu or 0,
        custom=amounts.custom,
    )  # fmt: skip
    client = pm.client
    reply = client._call_on(autoscale_pb2_grpc.AutoscaleServiceStub,
                            lambda s: s.AddWorker(request, timeout=client.call_timeout_s))  # fmt: skip
    return AddedWorker(reply.worker, reply.resources)


class PolicyLoop:
    """One ``@optimize_continuously`` policy running every ``interval_s`` in a daemon thread.

    A policy that raises is logged with its traceback and called again next time; ``calls``
    and ``errors`` count what happened.
    """

    def __init__(self, policy: Callable[[], Any], interval_s: float):
        self.policy = policy
        self.interval_s = interval_s
        self.calls = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xpipe-policy-{policy.__name__}", daemon=True)

    def start(self) -> PolicyLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.policy()
            except Exception as exc:
                self.errors += 1
                self.last_error = exc
                log.exception("resource policy %s failed (call %d); it runs again in %gs",
                              self.policy.__name__, self.calls + 1, self.interval_s)  # fmt: skip
            self.calls += 1
            self._stop.wait(self.interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the running call (idempotent); waits up to ``timeout_s`` for it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


class ResourceManager:
    """``pm.get_resource_manager()``: see the module docs and docs/autoscaling.md."""

    def __init__(self, pm: PipelineManager):
        self._pm = pm
        self.policies: list[PolicyLoop] = []

    def _stub_call(self, name: str, request: Any) -> Any:
        client = self._pm.client
        return client._call_on(autoscale_pb2_grpc.AutoscaleServiceStub,
                               lambda s: getattr(s, name)(request, timeout=client.call_timeout_s))  # fmt: skip

    def get_current_usage(self) -> ResourceUsage:
        u = self._stub_call("GetUsage", autoscale_pb2.GetUsageRequest())
        return ResourceUsage(
            cpu_utilization=u.cpu_utilization, memory_utilization=u.memory_utilization, queue_backlog=u.queue_backlog,
            workers=u.workers, slots=u.slots, busy_slots=u.busy_slots, desired_workers=u.desired_workers,
            min_workers=u.min_workers, max_workers=u.max_workers, provider=u.provider, last_decision=u.last_decision,
        )  # fmt: skip

    def _scale(self, factor: float) -> ScaleResult:
        r = self._stub_call("ScaleWorkers", autoscale_pb2.ScaleWorkersRequest(factor=factor))
        return ScaleResult(r.workers, r.desired, r.min_workers, r.max_workers)

    def increase_resources(self, factor: float = 1.5) -> ScaleResult:
        """Ask for ``ceil(workers * factor)`` workers, at most the bounds' max.

        Raises:
            ValueError: ``factor`` below 1 or not a number.
            RequestRejectedError: the coordinator runs no autoscale provider.
        """
        return self._scale(_factor("increase_resources", factor, above_one=True))

    def reduce_resources(self, factor: float = 0.8) -> ScaleResult:
        """Ask for ``floor(workers * factor)`` workers, at least the bounds' min; the
        autoscaler drains the idle ones first.

        Raises:
            ValueError: ``factor`` not in (0, 1].
        """
        return self._scale(_factor("reduce_resources", factor, above_one=False))

    def optimize_continuously(
        self, policy: Callable[[], Any] | None = None, *, interval_s: float = DEFAULT_POLICY_INTERVAL_S
    ) -> Any:
        """Decorator: run ``policy()`` now and then every ``interval_s`` until ``pm.close()``.

        Works bare (``@rm.optimize_continuously``) and with ``(interval_s=30)``. Returns the
        function unchanged (its loop is in :attr:`policies`).

        Raises:
            ValueError: ``interval_s`` not a positive number.
        """
        if not isinstance(interval_s, numbers.Real) or isinstance(interval_s, bool) or not interval_s > 0:
            raise ValueError(
                f"optimize_continuously: interval_s={interval_s!r:.80} must be a positive number of seconds"
            )

        def decorate(func: Callable[[], Any]) -> Callable[[], Any]:
            if not callable(func):
                raise TypeError(f"optimize_continuously decorates a function, got {type(func).__name__}")
            loop = PolicyLoop(func, float(interval_s))
            self.policies.append(loop)
            self._pm._on_close.append(loop.stop)
            loop.start()
            return func

        return decorate(policy) if policy is not None else decorate

    def stop(self) -> None:
        """Stop every policy loop (``pm.close()`` does this too)."""
        for loop in self.policies:
            loop.stop()
