"""What alerting costs the scheduler per task (issue 15).

A script, not a test: ``python -m bench.alerting_cost [--tasks 10000] [--repeats 5]``.

Pure, no processes, like ``bench.metrics_cost``: the real :class:`SchedulerState` drives one
wide run of no-op tasks over 2 workers of 4 slots, turn by turn as the engine does. Three
variants: no :class:`Alerting` (``off``); an ``Alerting`` with no config anywhere, behind
the engine's check of ``alerting.active`` (``idle``); and a cluster config with every rule
on (``on``: each turn goes through :meth:`Alerting.observe`, the engine's one call). The
``on`` variant runs the same pipeline twice per repeat, so the second run's tasks have a
duration history and go through the anomaly check. Best of ``--repeats``; GC paused.
"""

from __future__ import annotations

import argparse
import gc
import time

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._alerting import Alerting
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec

from bench._enginewide import wide_spec

RULES = {"rules": {"anomaly": {"min_samples": 1}, "metric_threshold": [{"metric": "rows", "above": 1e9}]}}


def drive(tasks: int, alerting: Alerting | None, run_id: str) -> tuple[float, float]:
    """(seconds for the whole run, seconds of it inside Alerting.observe)."""
    state = SchedulerState(prefetch=64)
    spec = wide_spec(tasks)
    order = tuple(validate_spec(spec))
    payload = pb.Payload(codec=pb.CODEC_PICKLE, data=b"N.")
    if alerting is not None:
        alerting.watch_run(run_id, spec)
    inside = 0.0
    began = time.perf_counter()
    now = 1000.0
    events: list = [WorkerConnected(now, f"w{i}", f"w{i}", "h", 4) for i in range(2)]
    events.append(RunSubmitted(now, run_id, spec, order))
    done = 0
    while True:
        actions: list = []
        for ev in events:
            state.handle(ev, actions)
        now += 0.001
        state.schedule(now, actions)
        if alerting is not None and alerting.active:
            t0 = time.perf_counter()
            alerting.observe(actions, state, now)
            inside += time.perf_counter() - t0
        if done >= tasks:
            break
        events = []
        for a in actions:
            if type(a) is Assign:
                events.append(TaskSucceeded(now, a.worker_id, a.attempt, now + 0.0005, payload, started_at=now))
                done += 1
    return time.perf_counter() - began, inside


def _paused_gc(fn, *args):
    gc.collect()
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    opts = ap.parse_args()
    off, idle, first, second = [], [], [], []
    for i in range(opts.repeats):
        off.append(_paused_gc(drive, opts.tasks, None, f"off{i}"))
        idle.append(_paused_gc(drive, opts.tasks, Alerting(), f"idle{i}"))
        alerting = Alerting(RULES)
        first.append(_paused_gc(drive, opts.tasks, alerting, f"a{i}"))
        second.append(_paused_gc(drive, opts.tasks, alerting, f"b{i}"))
        assert alerting.history() == [], "no-op tasks raise no alert"
    n = opts.tasks
    us = lambda s: s / n * 1e6  # noqa: E731
    print(f"{n} no-op tasks, best of {opts.repeats}")
    print(f"state machine, no alerting:          {us(min(t for t, _ in off)):.1f} µs per task")
    print(f"state machine, alerting unconfigured: {us(min(t for t, _ in idle)):.1f} µs per task")
    print(f"state machine, every rule on:         {us(min(t for t, _ in second)):.1f} µs per task")
    print(f"inside Alerting.observe: {us(min(m for _, m in first)):.2f} µs per task (new task names), "
          f"{us(min(m for _, m in second)):.2f} µs (names with a history: the anomaly check runs)")  # fmt: skip


if __name__ == "__main__":
    main()
