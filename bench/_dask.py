"""The Dask distributed side of the benchmark: the same scenarios on a LocalCluster.

The cluster matches xpipe's: two worker processes with one thread each, on loopback, a
fresh one per measured sample. Dask runs its scheduler inside the calling process (that is
what ``LocalCluster`` does), so the "scheduler RSS" of the big DAG is this process's RSS,
client included; the report says so. Each scenario uses the idiomatic Dask API for the
shape (``map`` + ``gather``, chained ``submit``, a graph dict for the layered DAG) and
checks its answer as the xpipe side does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import tasks
from bench._report import BenchError, Sizes, dag_timings, latency_sample, payload_sample, peer_bigdag
from bench._report import check_answer as _check

__all__ = ["SCENARIOS", "open_session", "available"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


def available() -> str | None:
    """None when Dask distributed can be imported, else why not (shown in the report)."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        return f"dask distributed is not installed ({exc}); `pip install -e '.[bench]'`"
    return None


@contextlib.contextmanager
def open_session(workdir: Path | None = None) -> Iterator[Any]:
    """A LocalCluster (2 worker processes x 1 thread) and a Client, warmed up, closed after."""
    from distributed import Client, LocalCluster

    # Worker processes must import bench.tasks by name, as xpipe workers do.
    path = os.environ.get("PYTHONPATH", "")
    if str(_REPO_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), path]))
    options: dict[str, Any] = {}
    if workdir is not None:
        options["local_directory"] = str(workdir)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.CRITICAL, **options,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        _check(client.gather(client.map(tasks.noop, range(8), pure=False)), [None] * 8, "warm-up results")
        yield client



def wide(client: Any, sizes: Sizes) -> dict[str, Any]:
    n = sizes.wide
    start = time.perf_counter()
    futures = client.map(tasks.noop, range(n), pure=False)
    results = client.gather(futures)
    seconds = time.perf_counter() - start
    _check(len(results), n, "number of wide results")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def chain(client: Any, sizes: Sizes) -> dict[str, Any]:
    n = sizes.chain
    start = time.perf_counter()
    future = client.submit(tasks.add, 0, pure=False)
    for _ in range(1, n):
        future = client.submit(tasks.add, future, 1, pure=False)
    value = future.result(timeout=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(value, n - 1, "end of the chain")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def fanin(client: Any, sizes: Sizes) -> dict[str, Any]:
    n = sizes.fanin
    start = time.perf_counter()
    leaves = client.map(tasks.add, range(n), pure=False)
    value = client.submit(tasks.reduce_all, *leaves, pure=False).result(timeout=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(value, n, "reducer's count of inputs")
    return {"tasks": n + 1, "seconds": seconds, "tasks_per_s": (n + 1) / seconds}


def roundtrip(client: Any, sizes: Sizes) -> dict[str, Any]:
    latencies_ms = []
    for i in range(sizes.roundtrip):
        start = time.perf_counter()
        value = client.submit(tasks.add, i, pure=False).result(timeout=sizes.timeout_s)
        latencies_ms.append((time.perf_counter() - start) * 1000)
        _check(value, i, "round-trip result")
    return latency_sample(latencies_ms)


def layered_graph(n: int, width: int) -> tuple[dict[str, tuple], list[str]]:
    """The same layered DAG as the xpipe side, as a Dask graph dict; returns (graph, last layer keys)."""
    graph: dict[str, tuple] = {}
    prev: list[str] = []
    for start in range(0, n, width):
        layer_no = start // width
        layer = []
        for j in range(min(width, n - start)):
            key = f"l{layer_no}_{j}"
            deps = list(dict.fromkeys([prev[j % len(prev)], prev[(j + 1) % len(prev)]])) if prev else []
            graph[key] = (tasks.noop, *deps)
            layer.append(key)
        prev = layer
    return graph, prev


def _bigdag_once(client: Any, sampler: Any, n: int, sizes: Sizes) -> dict[str, Any]:
    from distributed import wait

    sampler.reset()
    start = time.perf_counter()
    graph, outputs = layered_graph(n, sizes.bigdag_width)
    built = time.perf_counter()
    futures = client.get(graph, outputs, sync=False)
    submitted = time.perf_counter()
    done_set = wait(futures, timeout=sizes.timeout_s)
    done = time.perf_counter()
    if done_set.not_done or any(f.status != "finished" for f in futures):
        raise BenchError(f"layered DAG of {n} tasks did not finish: {len(done_set.not_done)} outputs pending")
    del futures
    return dag_timings(n, start, built, submitted, done, sampler.peak_bytes)


def bigdag(client: Any, sizes: Sizes) -> dict[str, Any]:
    """The small layered DAG (and the big one with ``dask_bigdag_full``)."""
    return peer_bigdag(lambda sampler, n: _bigdag_once(client, sampler, n, sizes), sizes)


def _payload_once(client: Any, sizes: Sizes, compressible: bool) -> float:
    pairs, size = sizes.payload_pairs, sizes.payload_bytes
    start = time.perf_counter()
    producers = [client.submit(tasks.make_payload, size, compressible, i, pure=False) for i in range(pairs)]
    consumers = [client.submit(tasks.consume, p, pure=False) for p in producers]
    total = client.submit(tasks.add, *consumers, pure=False).result(timeout=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(total, pairs * size, "bytes received by the consumers")
    return pairs * size / seconds / 1e6


def payload(client: Any, sizes: Sizes) -> dict[str, Any]:
    return payload_sample(lambda compressible: _payload_once(client, sizes, compressible), sizes)


SCENARIOS: dict[str, Callable[[Any, Sizes], dict[str, Any]]] = {
    "wide": wide,
    "chain": chain,
    "fanin": fanin,
    "roundtrip": roundtrip,
    "bigdag": bigdag,
    "payload": payload,
}
