"""Latency of the result cache (issue 16): a hit at each level, and a cached run end to end.

Not the full bench (``python -m bench``): a micro-benchmark on one machine.

- ``lookup``: :meth:`MultiLevelCache.lookup` of a stored entry (the worker's call on a
  hit, with the key already made) for a 1 KiB and a 1 MiB result, with the entry in one
  level only: ``memory`` (L1, in-process), ``redis`` (L2, a real ``redis-server`` on
  loopback, started here) and ``disk`` (L3, a directory in /tmp). Median and p95 of
  ``--lookups`` lookups each.
- ``run``: the wall time of a 3-task pipeline (extract -> transform -> load) on the
  embedded default (1 worker), uncached and then with every task a cache hit (L1), the
  median of ``--runs`` runs each, measured from the SDK (submit to result).

Run: ``python -m bench.cache [--lookups 2000] [--runs 30]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from xpipe._proto import common_pb2
from xpipe.cache import CacheLevelConfig, MultiLevelCache

from bench._local import free_port

SIZES = {"1KiB": 1024, "1MiB": 1024 * 1024}


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _lookups(level: CacheLevelConfig, size: int, n: int) -> tuple[float, float]:
    spec = common_pb2.CacheSpec(code_id="bench", pipeline="bench", levels=[level.to_proto()])
    payload = common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=os.urandom(size)).SerializeToString()
    cache = MultiLevelCache(tempfile.mkdtemp(prefix="xpipe-bench-cache-"))
    cache.store(spec, "t", "key", payload)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        found = cache.lookup(spec, "t", "key")
        samples.append(time.perf_counter() - start)
        assert found.payload == payload
    cache.close()
    return _quantiles(samples)


def bench_lookups(n: int) -> None:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="xpipe-bench-redis-")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        disk = tempfile.mkdtemp(prefix="xpipe-bench-disk-")
        levels = {
            "memory": CacheLevelConfig("l1", "memory"),
            "redis": CacheLevelConfig("l2", "redis", url=f"redis://127.0.0.1:{port}/0", prefix="bench"),
            "disk": CacheLevelConfig("l3", "disk", path=disk),
        }
        print(f"{'level':8} {'size':6} {'median':>10} {'p95':>10}   (lookup of a hit, {n} lookups)")
        for name, level in levels.items():
            for label, size in SIZES.items():
                median, p95 = _lookups(level, size, n)
                print(f"{name:8} {label:6} {median * 1e6:8.1f}µs {p95 * 1e6:8.1f}µs")
        shutil.rmtree(disk, ignore_errors=True)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def bench_runs(n: int) -> None:
    from xpipe import Pipeline, PipelineManager, Task

    from bench import _cache_tasks as t

    def pipeline(cache: bool) -> Pipeline:
        p = Pipeline("bench-cache")
        p.add_task(Task("extract", t.extract, args=(1000,), cache=cache))
        p.add_task(Task("transform", t.transform, depends_on=["extract"], cache=cache))
        p.add_task(Task("load", t.load, depends_on=["transform"], cache=cache))
        return p

    data_dir = tempfile.mkdtemp(prefix="xpipe-bench-run-")
    with PipelineManager(workers=1, slots_per_worker=2, data_dir=data_dir) as pm:
        for _ in range(3):  # warm up: imports, connections, and the cache's first entries
            pm.execute_pipeline(pipeline(False), monitor=False)
            pm.execute_pipeline(pipeline(True), monitor=False)
        results = {}
        for label, cache in (("uncached", False), ("cached (3 hits)", True)):
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                result = pm.execute_pipeline(pipeline(cache), monitor=False)
                samples.append(time.perf_counter() - start)
                assert all(task.cache_hit == cache for task in result.tasks.values())
            results[label] = _quantiles(samples)
        print(f"\n{'3-task run':16} {'median':>10} {'p95':>10}   (submit to result, {n} runs, embedded, 1 worker)")
        for label, (median, p95) in results.items():
            print(f"{label:16} {median * 1e3:8.1f}ms {p95 * 1e3:8.1f}ms")
    shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=30)
    opts = parser.parse_args()
    bench_lookups(opts.lookups)
    bench_runs(opts.runs)


if __name__ == "__main__":
    main()
