"""Placement cost per decision at 1,000 workers (and 100 / 10,000 to show the growth).

A script, not a test: ``python -m bench.placement [--workers 1000] [--json PATH]``.

Two measurements, both pure (no processes, no network), on a seeded random cluster:
10% GPU workers, three zones, cpu 4..64, memory 8..256 GiB, 4..32 slots.

* **index**: :class:`PlacementIndex` alone. The cluster is first filled to about 70%
  of its cpu, then each decision is one ``pick`` for a random request (70% plain
  1-4 cores, 20% memory-heavy, 5% GPU, 5% zone-labelled) followed, when placed, by the
  ``hold`` and the ``release`` of a random earlier attempt, so the cluster stays warm. The
  cost per decision is the time of pick+hold+release; "examined" is how many heap
  entries a pick looked at. A brute-force scan over every worker is timed alongside.
* **scheduler**: :meth:`SchedulerState.schedule` end to end: 20,000 ready tasks of one
  run, placed until the cluster is full, then finished and replaced one by one; cost per
  assignment includes the state machine's own bookkeeping (records, Assign actions).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._placement import STRATEGIES, PlacementIndex, Request
from xpipe.coordinator._state import SchedulerState

GiB = 2**30


def _cluster(rng: random.Random, n: int) -> list[tuple[str, int, pb.Resources, dict[str, str]]]:
    out = []
    for i in range(n):
        cpu = rng.choice([4, 8, 16, 32, 64])
        res = pb.Resources(cpu_cores=cpu, memory_bytes=rng.choice([8, 32, 64, 256]) * GiB,
                           gpu=rng.choice([1, 2, 4]) if rng.random() < 0.1 else 0)  # fmt: skip
        out.append((f"w{i}", rng.choice([4, 8, 16, 32]), res, {"zone": f"z{i % 3}", "host": f"h{i}"}))
    return out


def _request(rng: random.Random) -> Request:
    x = rng.random()
    if x < 0.70:
        return Request.of(pb.Resources(cpu_cores=rng.choice([0, 1, 2, 4])))
    if x < 0.90:
        return Request.of(pb.Resources(cpu_cores=1, memory_bytes=rng.choice([4, 16, 48]) * GiB))
    if x < 0.95:
        return Request.of(pb.Resources(cpu_cores=2, gpu=1))
    return Request.of(None, {"zone": f"z{rng.randrange(3)}"})


def _brute_force(idx: PlacementIndex, r: Request) -> str | None:
    best, best_key = None, None
    for node in idx.nodes.values():
        if node.eligible and node.fits_now(r):
            key = node.keys()[0]
            if best_key is None or key < best_key:
                best, best_key = node.worker_id, key
    return best


def bench_index(workers: int, decisions: int, strategy: str, seed: int = 7) -> dict:
    rng = random.Random(seed)
    idx = PlacementIndex()
    for wid, slots, res, labels in _cluster(rng, workers):
        idx.upsert(wid, slots=slots, credit=slots + 8, resources=res, labels=labels)
    total_cpu = sum(n.cpu for n in idx.nodes.values())
    held: list[tuple[str, int]] = []
    key = used_cpu = 0
    while used_cpu < 0.7 * total_cpu and key < 50 * workers:
        r = _request(rng)
        w = idx.pick(r, strategy=strategy)
        key += 1
        if w is not None:
            idx.hold(w, key, r)
            held.append((w, key))
            used_cpu += r.cpu_milli
    requests = [_request(rng) for _ in range(decisions)]
    victims = [rng.random() for _ in range(decisions)]
    idx.examined = 0
    placed = 0
    start = time.perf_counter()
    for r, v in zip(requests, victims):
        key += 1
        w = idx.pick(r, strategy=strategy)
        if w is not None:
            idx.hold(w, key, r)
            held.append((w, key))
            placed += 1
        if held:
            i = int(v * len(held))
            held[i], held[-1] = held[-1], held[i]
            idx.release(*held.pop())
    elapsed = time.perf_counter() - start
    brute_n = min(decisions, 2000)
    t0 = time.perf_counter()
    for r in requests[:brute_n]:
        _brute_force(idx, r)
    brute = (time.perf_counter() - t0) / brute_n
    return {
        "workers": workers, "strategy": strategy, "decisions": decisions, "placed": placed,
        "us_per_decision": elapsed / decisions * 1e6, "examined_per_pick": idx.examined / decisions,
        "brute_force_us_per_pick": brute * 1e6,
    }  # fmt: skip


def bench_scheduler(workers: int, tasks: int = 20_000, seed: int = 7) -> dict:
    rng = random.Random(seed)
    s = SchedulerState(prefetch=0)
    for wid, slots, res, labels in _cluster(rng, workers):
        s.handle(WorkerConnected(0.0, wid, wid, "h", slots, labels=labels, resources=res))
    spec = pb.PipelineSpec(name="bench")
    for i in range(tasks):
        t = spec.tasks.add(name=f"t{i}")
        t.python.import_path = "m:f"
        r = _request(rng).to_proto()
        if rng.random() < 0.3:
            t.resources.CopyFrom(r)
    s.handle(RunSubmitted(0.0, "r", spec, tuple(t.name for t in spec.tasks)))
    t0 = time.perf_counter()
    first = [a for a in s.schedule(0.0) if isinstance(a, Assign)]
    fill_s = time.perf_counter() - t0
    running = list(first)
    assigned = 0
    steady_s = 0.0
    now = 1.0
    for _ in range(min(5000, tasks - len(first))):
        if not running:
            break
        a = running.pop(rng.randrange(len(running)))
        s.handle(TaskSucceeded(now, a.worker_id, a.attempt, now, pb.Payload()))
        t0 = time.perf_counter()
        new = [x for x in s.schedule(now) if isinstance(x, Assign)]
        steady_s += time.perf_counter() - t0
        assigned += len(new)
        running.extend(new)
        now += 0.001
    return {
        "workers": workers, "initial_assignments": len(first), "fill_us_per_assignment": fill_s / max(1, len(first)) * 1e6,
        "steady_assignments": assigned, "steady_us_per_assignment": steady_s / max(1, assigned) * 1e6,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    opts = parser.parse_args(argv)
    results: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform()},
                     "index": [], "scheduler": []}  # fmt: skip
    print(f"{'workers':>8} {'strategy':18} {'us/decision':>12} {'examined/pick':>14} {'brute us/pick':>14} {'placed':>7}")
    for n in opts.workers:
        for strategy in STRATEGIES:
            samples = [bench_index(n, opts.decisions, strategy, seed) for seed in (7, 8, 9)]
            row = dict(samples[0])
            for k in ("us_per_decision", "examined_per_pick", "brute_force_us_per_pick"):
                row[k] = statistics.median(x[k] for x in samples)
            results["index"].append(row)
            print(f"{n:>8} {strategy:18} {row['us_per_decision']:>12.2f} {row['examined_per_pick']:>14.2f} "
                  f"{row['brute_force_us_per_pick']:>14.1f} {row['placed']:>7}")  # fmt: skip
    print(f"\n{'workers':>8} {'fill us/assign':>15} {'steady us/assign':>17} {'assignments':>12}")
    for n in opts.workers:
        row = bench_scheduler(n)
        results["scheduler"].append(row)
        print(f"{n:>8} {row['fill_us_per_assignment']:>15.2f} {row['steady_us_per_assignment']:>17.2f} "
              f"{row['initial_assignments'] + row['steady_assignments']:>12}")  # fmt: skip
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
