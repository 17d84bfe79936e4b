"""The worker's metrics: slots, busy slots, CPU and memory, read at scrape time.

Nothing is counted on the task path: the gauges read what the daemon already keeps
(its slots, the attempts running) and the psutil sample its heartbeat took last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.metrics import Observation

if TYPE_CHECKING:
    from xpipe.telemetry._export import MetricsEndpoint

    from ._daemon import WorkerDaemon

__all__ = ["register_worker_metrics"]


def register_worker_metrics(endpoint: MetricsEndpoint, daemon: WorkerDaemon) -> None:
    """Export ``daemon``'s gauges on ``endpoint`` (see docs/metrics.md)."""
    m = endpoint.meter

    def sampled(field: str) -> list[Observation]:
        sample = daemon.last_sample
        return [] if sample is None else [Observation(getattr(sample, field))]

    m.create_observable_gauge(
        "xpipe_worker_slots", [lambda _: [Observation(daemon.config.slots)]], description="Task slots of this worker"
    )
    m.create_observable_gauge(
        "xpipe_worker_slots_busy", [lambda _: [Observation(daemon.slots_busy)]],
        description="Slots running a task attempt now",
    )  # fmt: skip
    m.create_observable_gauge(
        "xpipe_worker_cpu_percent", [lambda _: sampled("cpu_percent")],
        description="CPU use of the machine, percent of all cores (the heartbeat's last psutil sample)",
    )  # fmt: skip
    m.create_observable_gauge(
        "xpipe_worker_memory", [lambda _: sampled("memory_used_bytes")], unit="By",
        description="Memory in use on the machine, total minus available (the heartbeat's last psutil sample)",
    )  # fmt: skip
    # Counts the daemon keeps anyway, read at scrape time: its heartbeats, and the result
    # cache (docs/cache.md).
    counters = (
        ("xpipe_worker_heartbeats_sent", lambda: daemon.heartbeats.sent, "Heartbeats sent to the coordinator"),
        ("xpipe_worker_heartbeats_skipped", lambda: daemon.heartbeats.skipped,
         "Heartbeats skipped: outcomes sent within the interval already showed the worker alive"),
        ("xpipe_task_cache_hits", lambda: daemon.cache.hits,
         "Cached tasks whose result came from the result cache (their code did not run)"),
        ("xpipe_task_cache_misses", lambda: daemon.cache.misses,
         "Cached tasks no cache level had a fresh result for (they ran)"),
    )  # fmt: skip
    for name, read, description in counters:
        m.create_observable_counter(name, [lambda _, read=read: [Observation(read())]], description=description)
