"""RSS of an engine after four 20,000-task no-op runs: what finished runs cost in memory.

Runs the real engine and SQLite store in this process, with one pretend worker that
succeeds every assignment at once (no task processes: only the coordinator's side is
measured). Usage::

    python -m bench.finished_runs_rss [--budget-mib 64] [--runs 4] [--tasks 20000]

A huge ``--budget-mib`` keeps every finished run, as the old count-based bound of 64 runs did.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

import psutil

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import Engine, EngineConfig, estimate_run_bytes
from xpipe.coordinator._events import TaskSucceeded, WorkerConnected
from xpipe.coordinator._store import SQLiteStore


def _spec(i: int, tasks: int) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name=f"wide-{i}")
    for t in range(tasks):
        task = spec.tasks.add(name=f"t{t}")
        task.python.import_path = "tests.helpers_tasks:noop"
    return spec


async def main(budget_mib: float, runs: int, tasks: int) -> None:
    rss = psutil.Process().memory_info
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "xpipe.db")
        await store.open()
        engine = Engine(store, EngineConfig(finished_runs_memory_bytes=int(budget_mib * 2**20), prefetch=64))
        await engine.start()
        session = engine.connect_worker("w")
        engine.post(WorkerConnected(time.time(), "w", "w", "localhost", 64))
        gc.collect()
        base = rss().rss
        estimates = []
        for i in range(runs):
            run_id = await engine.submit(_spec(i, tasks))
            while engine.state.runs[run_id].state not in (pb.RUN_SUCCEEDED, pb.RUN_FAILED):
                message = await session.outbox.get()
                for a in message.assignments.assignments:
                    key = (a.attempt.run_id, a.attempt.task, a.attempt.attempt)
                    now = time.time()
                    engine.post(TaskSucceeded(now, "w", key, now, pb.Payload(data=b"\x80\x05N."), now))
                await asyncio.sleep(0)
            estimates.append(estimate_run_bytes(engine.state.runs[run_id]))
        engine.state.recent.clear()  # the debug log of recent events holds the last spec too
        gc.collect()
        kept = len(engine.state.runs)
        print(f"budget {budget_mib:g} MiB: {runs} runs x {tasks} tasks; runs kept in memory: {kept}; "
              f"RSS before {base / 2**20:.0f} MiB, after {rss().rss / 2**20:.0f} MiB "
              f"(+{(rss().rss - base) / 2**20:.0f} MiB); estimate per run {estimates[0] / 2**20:.1f} MiB")  # fmt: skip
        await engine.stop()
        await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--budget-mib", type=float, default=64)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--tasks", type=int, default=20000)
    opts = p.parse_args()
    asyncio.run(main(opts.budget_mib, opts.runs, opts.tasks))
