"""Dynamic fan-out against a plain wide DAG: tasks/s of the same no-op work both ways.

Not the full bench (``python -m bench``): two micro-benchmarks, each run on the two shapes
in the same process, so the ratio is the figure (a fan-out must not slow the scheduler per
task):

- ``engine``: the coordinator's state machine and dispatch in-process (as
  ``bench._enginewide``: no store, no network, fake workers answering at once). The wide
  shape is ``--tasks`` no-op tasks; the mapped shape is one source task and one task
  fanned out into ``--tasks`` no-op sub-tasks (the split answered with that many parts).
  Best of ``--repeat``, CPU seconds.
- ``cluster``: the embedded default (a real coordinator and ``--workers`` worker processes
  on loopback), wall seconds from submit to the run's end, the same two shapes.

Run: ``python -m bench.fanout [--tasks 10000] [--mode engine|cluster|both] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time

from xpipe._mapping import Partitions
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import EngineConfig

from bench._enginewide import drive, wide_engine, wide_spec

__all__ = ["mapped_spec", "engine_seconds", "cluster_seconds", "main"]


def noop(*_args) -> None:
    """The sub-tasks' and wide tasks' work: nothing."""


def source(n: int) -> list[int]:
    """The mapped shape's upstream: ``n`` partitions."""
    return list(range(n))


def mapped_spec(tasks: int) -> pb.PipelineSpec:
    """One source task and one no-op task fanned out over its result."""
    from xpipe import Pipeline, Task

    p = Pipeline("fanout")
    src = Task("src", source, args=(tasks,))
    p.add_tasks([src, Task.map("m", noop, over=src)])
    return p.to_proto()


def _drive(spec: pb.PipelineSpec, answers: dict[str, pb.Payload] | None = None) -> float:
    """CPU seconds to drive ``spec`` to its end in-process (``answers`` by task name, else empty)."""
    engine = wide_engine(EngineConfig())
    started = time.process_time()
    drive(engine, spec, answers)
    seconds = time.process_time() - started
    run = engine.state.runs["r1"]
    if run.state != pb.RUN_SUCCEEDED:
        raise RuntimeError(f"the run ended {pb.RunState.Name(run.state)}")
    return seconds


def engine_seconds(tasks: int, repeat: int) -> dict[str, float]:
    """Best CPU seconds of the wide and the mapped shape through the coordinator's core."""
    wide = wide_spec(tasks)
    parts = Partitions(list(range(tasks)), None).to_payload("src")
    mapped = mapped_spec(tasks)
    best_wide = min(_drive(wide) for _ in range(repeat))
    best_mapped = min(_drive(mapped, {"m": parts}) for _ in range(repeat))
    return {"wide_s": best_wide, "mapped_s": best_mapped}


def cluster_seconds(tasks: int, workers: int, slots: int) -> dict[str, float]:
    """Wall seconds of both shapes on the embedded default (real processes on loopback)."""
    from xpipe import Pipeline, PipelineManager, Task

    wide = Pipeline("wide")
    wide.add_tasks([Task(f"t{i}", noop) for i in range(tasks)])
    src = Task("src", source, args=(tasks,))
    mapped = Pipeline("fanout")
    mapped.add_tasks([src, Task.map("m", noop, over=src)])
    out = {}
    with PipelineManager(workers=workers, slots_per_worker=slots) as pm:
        warm = Pipeline("warm")  # workers start and import before anything is timed
        warm.add_task(Task("w", noop))
        pm.execute_pipeline(warm, monitor=False)
        for key, pipeline in (("wide_s", wide), ("mapped_s", mapped)):
            started = time.perf_counter()
            result = pm.execute_pipeline(pipeline, monitor=False)
            out[key] = time.perf_counter() - started
            if not result.succeeded:
                raise RuntimeError(f"the {key[:-2]} run did not succeed: {result.status}")
    return out


def _figures(tasks: int, seconds: dict[str, float]) -> dict[str, float]:
    wide, mapped = tasks / seconds["wide_s"], tasks / seconds["mapped_s"]
    return {**seconds, "wide_tasks_per_s": wide, "mapped_tasks_per_s": mapped, "ratio": mapped / wide}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="partitions (and wide tasks) (default: 10000)")
    parser.add_argument("--mode", choices=("engine", "cluster", "both"), default="both", help="(default: both)")
    parser.add_argument("--repeat", type=int, default=3, help="engine runs per shape, best kept (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="cluster mode's worker processes (default: 2)")
    parser.add_argument("--slots", type=int, default=4, help="cluster mode's slots per worker (default: 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    opts = parser.parse_args(argv)
    if opts.tasks < 1 or opts.repeat < 1:
        parser.error("--tasks and --repeat must be at least 1")
    doc: dict = {"tasks": opts.tasks}
    if opts.mode in ("engine", "both"):
        doc["engine"] = _figures(opts.tasks, engine_seconds(opts.tasks, opts.repeat))
    if opts.mode in ("cluster", "both"):
        doc["cluster"] = _figures(opts.tasks, cluster_seconds(opts.tasks, opts.workers, opts.slots))
    if opts.json:
        print(json.dumps(doc))
        return doc
    for mode in ("engine", "cluster"):
        if mode in doc:
            f = doc[mode]
            print(f"{mode}: wide {f['wide_tasks_per_s']:,.0f} tasks/s, fan-out {f['mapped_tasks_per_s']:,.0f} tasks/s "
                  f"(ratio {f['ratio']:.2f}) over {opts.tasks} tasks")  # fmt: skip
    return doc


if __name__ == "__main__":
    main()
