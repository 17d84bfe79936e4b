"""``StreamPipeline.start()``: check the brokers, create the internal streams, submit the run.

A stream pipeline runs as one ordinary run of the scheduler: one long-lived task per stage
instance (``<stage>[<i>]``, code :func:`~xpipe.streams._instance.run_instance`), labelled so
the coordinator's stream registry knows it. The scheduler places the instances like any task,
restarts one elsewhere when its worker is lost, and retries one that fails.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import threading
from typing import Any

from ..errors import DataStreamError
from ._connectors import connector_for, internal_uri
from ._instance import InstanceOptions, readers_of, run_instance, stage_topology
from ._labels import AUTO_SCALING_LABEL, STAGES_LABEL, STREAM_LABEL, instance_task_name, stages_label
from ._plan import StreamPlan
from ._uri import StreamURI

__all__ = ["close_default_manager", "default_manager", "start_stream"]

log = logging.getLogger(__name__)

#: A broker that does not answer within this is reported unreachable by start().
CHECK_TIMEOUT_S = 5.0
#: An instance that fails is tried again this many times, with backoff up to a minute: a
#: broker outage stalls a stream (reported unhealthy), it does not end it.
INSTANCE_RETRIES = 10_000
INSTANCE_RETRY_DELAY_S = 1.0
INSTANCE_MAX_RETRY_DELAY_S = 60.0
#: Cores each instance asks of its worker's ledger. An instance mostly waits on its broker,
#: and the default request of a task (one core) would let a 2-core worker run two.
INSTANCE_CPU_CORES = 0.25

#: Worker slots of the embedded default's workers when a stream starts it: every stage
#: instance holds a slot for as long as it runs, and the seed's sample has six instances.
DEFAULT_SLOTS_PER_WORKER = 4

_default: Any = None
_default_lock = threading.Lock()


def default_manager() -> Any:
    """The embedded default PipelineManager that stream pipelines started without one share."""
    global _default
    with _default_lock:
        if _default is None:
            from .._manager import PipelineManager

            _default = PipelineManager(slots_per_worker=DEFAULT_SLOTS_PER_WORKER)
            atexit.register(close_default_manager)
        return _default


def close_default_manager() -> None:
    """Close the embedded default (and its processes), if one was started; idempotent."""
    global _default
    with _default_lock:
        manager, _default = _default, None
    if manager is not None:
        manager.close()


def _configure_memory(manager: Any) -> None:
    """Point this process's memory:// connector at the manager's coordinator."""
    from ._connectors import _memory

    client = manager.client
    _memory.configure(",".join(client.addresses), tls=client.tls, token=client._token)


def _uris(plan: StreamPlan) -> list[StreamURI]:
    first = plan.sources[0].uri
    uris = [s.uri for s in plan.sources] + [s.uri for s in plan.sinks]
    for stage in plan.stages:
        uris.append(internal_uri(first, plan.name, stage.late_stream))
    return uris


async def _reach(plan: StreamPlan) -> None:
    """Reach every broker the pipeline uses, or say which cannot be reached."""
    seen: set[tuple[str, str | None, int | None]] = set()
    for uri in _uris(plan):
        where = (uri.scheme, uri.host, uri.port)
        if where in seen:
            continue
        seen.add(where)
        await connector_for(uri).check(uri, timeout_s=CHECK_TIMEOUT_S)


async def _prepare(plan: StreamPlan) -> None:
    """Create the internal streams with their partitions.

    They are made here, before any instance starts, so a downstream instance never sees a
    stream that its upstream has not created yet (it would take it for one partition). A
    NATS source or sink gets its JetStream stream here too (unless one of the user's
    captures the subject), so records published after start() are kept.
    """
    first = plan.sources[0].uri
    for uri in [s.uri for s in plan.sources] + [s.uri for s in plan.sinks]:
        if uri.scheme == "nats":  # a subject keeps records only once a JetStream stream captures it
            await connector_for(uri).ensure(uri, partitions=1)
    for stage in plan.stages:
        readers = readers_of(plan, stage.name)
        if readers:
            uri = internal_uri(first, plan.name, stage.name)
            wanted = max(r.parallelism for r in readers)
            have = await connector_for(uri).ensure(uri, partitions=wanted)
            if have < wanted:
                raise DataStreamError(
                    f"stage {stage.name!r}: its internal stream {uri} has {have} partitions, fewer than the "
                    f"{wanted} instances that read it; delete it or lower their parallelism"
                )
        for side in (stage.late_stream, stage.dlq_stream):
            uri = internal_uri(first, plan.name, side)
            await connector_for(uri).ensure(uri, partitions=1)


def _run_sync(coro: Any) -> Any:
    """Run ``coro`` to the end from synchronous code, also under a running loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _check_topology(plan: StreamPlan) -> None:
    sources = {s.stream for s in plan.sources}
    for sink in plan.sinks:
        if sink.stream in sources:
            raise DataStreamError(
                f"output({sink.stream!r}, {str(sink.uri)!r}): {sink.stream!r} is a source; pass it through a "
                "transform() stage to write it elsewhere"
            )
    for stage in plan.stages:
        stage_topology(plan, stage)  # every input resolves
        stage.load_task()  # the task loads here as it will on workers


def _check_capacity(plan: StreamPlan, manager: Any) -> None:
    """Refuse a pipeline whose instances could never all run: each holds a worker slot.

    A stage left without a slot would starve: its input piles up in the broker for good.
    Fewer free slots than instances is only logged: running batch tasks give theirs back.
    """
    needed = sum(stage.parallelism for stage in plan.stages)
    workers = [w for w in manager.client.list_workers() if w.state in ("ready", "busy")]
    total = sum(w.slots for w in workers)
    if needed > total:
        per_stage = ", ".join(f"{s.name}: {s.parallelism}" for s in plan.stages)
        raise DataStreamError(
            f"stream pipeline {plan.name!r} needs {needed} worker slots, one per stage instance ({per_stage}); "
            f"the cluster's {len(workers)} connected worker(s) have {total}. Add workers or slots, or lower parallelism"
        )
    free = sum(max(0, w.slots - w.running) for w in workers)
    if needed > free:
        log.warning(
            "stream pipeline %r needs %d slots and %d are free now: some instances wait for running tasks to end",
            plan.name, needed, free,
        )


def _pipeline(plan: StreamPlan, options: InstanceOptions, namespace: str | None) -> Any:
    from .. import Pipeline, Task

    pickled = any(
        ref is not None and ref.pickled
        for stage in plan.stages
        for ref in (stage.task_class, stage.key_fn)
    ) or any(s.key_fn is not None and s.key_fn.pickled for s in plan.sources)
    # Code that travels pickled inside the plan travels as what it is: a pickled task, so the
    # code-trust checks (code:pickle at submit, --allow-code pickle on workers) apply to it.
    entry = functools.partial(run_instance) if pickled else run_instance
    data = plan.to_dict()
    pipeline = Pipeline(plan.name, namespace=namespace)
    for stage in plan.stages:
        for i in range(stage.parallelism):
            pipeline.add_task(
                Task(
                    instance_task_name(stage.name, i), entry, args=(data, stage.name, i, options.to_dict()),
                    max_retries=INSTANCE_RETRIES, retry_delay_s=INSTANCE_RETRY_DELAY_S, retry_backoff="exponential",
                    max_retry_delay_s=INSTANCE_MAX_RETRY_DELAY_S,
                    resource_requirements={"cpu_cores": INSTANCE_CPU_CORES},
                )
            )  # fmt: skip
    return pipeline


def start_stream(plan: StreamPlan, options: InstanceOptions, manager: Any = None, *, namespace: str | None = None) -> Any:
    """Start ``plan`` on ``manager``'s cluster (None: the embedded default); return its handle.

    Raises:
        DataStreamError: a broker cannot be reached, an internal stream has too few
            partitions, a sink reads a source directly, or the task cannot be loaded.
    """
    from ._handle import StreamHandle

    _check_topology(plan)
    manager = manager if manager is not None else default_manager()
    if any(uri.scheme == "memory" for uri in _uris(plan)) or plan.sources[0].uri.scheme == "file":
        _configure_memory(manager)
    _run_sync(_reach(plan))
    _check_capacity(plan, manager)
    _run_sync(_prepare(plan))
    spec = _pipeline(plan, options, namespace).to_proto(retry_on_failure=True)
    for task in spec.tasks:
        task.long_running = True  # a slot of its own, free now: never queued behind other work
    spec.labels[STREAM_LABEL] = plan.name
    spec.labels[STAGES_LABEL] = stages_label(
        [{"name": s.name, "input": s.input, "parallelism": s.parallelism} for s in plan.stages]
    )
    spec.labels[AUTO_SCALING_LABEL] = "1" if options.auto_scaling else "0"
    run_id = manager.client._submit_spec(spec)
    return StreamHandle(manager.client, plan.name, run_id)
