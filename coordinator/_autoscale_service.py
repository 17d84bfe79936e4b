"""AutoscaleService: usage, scaling by a factor and adding a worker (the resource manager's RPCs)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import grpc

from xpipe._limits import normalize_resources
from xpipe._proto import autoscale_pb2, autoscale_pb2_grpc

from ._autoscale_loop import observe, usage_of
from ._providers import AtMaxWorkers, ProviderError, resources_spec

if TYPE_CHECKING:
    from ._server import Coordinator

__all__ = ["AutoscaleServicer"]

log = logging.getLogger(__name__)

#: Largest factor increase/reduce_resources may pass (a typo like 150 for 1.5 is refused).
MAX_SCALE_FACTOR = 100.0

_NO_PROVIDER = (
    "this coordinator runs no autoscale provider; start it with --autoscale-provider local, command or kubernetes "
    "(docs/autoscaling.md)"
)


class AutoscaleServicer(autoscale_pb2_grpc.AutoscaleServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    async def GetUsage(self, request, context):
        return autoscale_pb2.Usage(**usage_of(observe(self.c.engine.state), self.c.autoscaler))

    async def ScaleWorkers(self, request, context):
        factor = request.factor
        if not (math.isfinite(factor) and 0 < factor <= MAX_SCALE_FACTOR):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"factor={factor!r}: must be above 0 and at most {MAX_SCALE_FACTOR:g}")  # fmt: skip
        loop = self.c.autoscaler
        if loop is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _NO_PROVIDER)
        workers, desired, bounds = await loop.scale_by(factor)
        log.info("resource manager: factor %g, %d workers -> %d (bounds %d..%d)", factor, workers, desired,
                 bounds.min_workers, bounds.max_workers)  # fmt: skip
        return autoscale_pb2.ScaleWorkersResponse(workers=workers, desired=desired, min_workers=bounds.min_workers,
                                                  max_workers=bounds.max_workers)  # fmt: skip

    async def AddWorker(self, request, context):
        resources: dict[str, float] = {}
        if request.cpu_cores:
            resources["cpu_cores"] = request.cpu_cores
        if request.memory_bytes:
            resources["memory_bytes"] = request.memory_bytes
        if request.gpu:
            resources["gpu"] = request.gpu
        resources.update(request.custom)
        try:
            normalize_resources(resources)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"AddWorkerRequest: {exc}")
        loop = self.c.autoscaler
        if loop is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _NO_PROVIDER)
        try:
            name = await loop.add_worker(resources)
        except AtMaxWorkers as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ProviderError as exc:
            # ABORTED, not UNAVAILABLE: clients retry UNAVAILABLE, and a failing script is not a lost connection.
            await context.abort(grpc.StatusCode.ABORTED, f"provider {loop.provider.name}: {exc}")
        return autoscale_pb2.AddWorkerResponse(worker=name or "", resources=resources_spec(resources))
