"""What ``--metrics-listen`` costs the scheduler per task (docs/performance.md, "Cost of metrics").

A script, not a test: ``python -m bench.metrics_cost [--tasks 10000] [--repeats 5]``.

Pure, no processes: the real :class:`SchedulerState` drives one wide run (10,000
independent no-op tasks) over 2 workers of 4 slots, turn by turn as the engine does
(each turn: the previous turn's assignments come back succeeded, their start in the
result as the worker sends it for quick tasks, then ``schedule``). With metrics, each turn also goes through
:meth:`CoordinatorMetrics.turn`, exactly the engine's one call. Best of ``--repeats``
each; the two variants alternate so both see the same machine.

The garbage collector is paused while a run is timed (see ``main``). Also timed: one scrape of the endpoint after the run, and
:meth:`CoordinatorMetrics.task_telemetry` per point (paid only by tasks that record
metrics, on the servicer's side).
"""

from __future__ import annotations

import argparse
import gc
import time
import urllib.request

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._metrics import CoordinatorMetrics
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec
from xpipe.telemetry._export import start_metrics

from bench._enginewide import wide_spec


def drive(tasks: int, metrics: CoordinatorMetrics | None, box: list) -> tuple[float, float]:
    """(seconds for the whole run, seconds of it inside CoordinatorMetrics.turn)."""
    state = SchedulerState(prefetch=64)
    box[:] = [state]
    spec = wide_spec(tasks)
    order = tuple(validate_spec(spec))
    payload = pb.Payload(codec=pb.CODEC_PICKLE, data=b"N.")
    in_metrics = 0.0
    began = time.perf_counter()
    now = 1000.0
    events: list = [WorkerConnected(now, f"w{i}", f"w{i}", "h", 4) for i in range(2)]
    events.append(RunSubmitted(now, "r1", spec, order))
    done = 0
    while done < tasks:
        actions: list = []
        for ev in events:
            state.handle(ev, actions)
        now += 0.001
        state.schedule(now, actions)
        if metrics is not None:
            t0 = time.perf_counter()
            metrics.turn(actions, state.runs, now, 0.001)
            in_metrics += time.perf_counter() - t0
        events = []
        for a in actions:
            if type(a) is Assign:
                # As the worker does for attempts under STARTED_REPORT_DELAY_S: the start
                # rides on the result, no Started event of its own.
                events.append(TaskSucceeded(now, a.worker_id, a.attempt, now + 0.0005, payload, started_at=now))
                done += 1
    actions = []
    for ev in events:
        state.handle(ev, actions)
    if metrics is not None:
        metrics.turn(actions, state.runs, now, 0.001)
    return time.perf_counter() - began, in_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    opts = ap.parse_args()
    off: list[float] = []
    on: list[tuple[float, float]] = []
    scrape_s: list[float] = []
    endpoint = start_metrics("127.0.0.1:0", service="bench")
    box: list = []
    metrics = CoordinatorMetrics(endpoint, lambda: box[0])
    # The garbage collector is paused during each timed run: on the shared 2 cores its
    # pauses varied runs by 3x and swamped a difference of a few µs per task.
    for _ in range(opts.repeats + 1):  # the first run with metrics is cold: every series is new
        off.append(_paused_gc(drive, opts.tasks, None, []))
        on.append(_paused_gc(drive, opts.tasks, metrics, box))
        t0 = time.perf_counter()
        urllib.request.urlopen(endpoint.url, timeout=10).read()
        scrape_s.append(time.perf_counter() - t0)
    series = len(metrics.duration.series)
    endpoint.stop()
    endpoint = start_metrics("127.0.0.1:0", service="bench")
    metrics = CoordinatorMetrics(endpoint, lambda: SchedulerState())
    telemetry = pb.TaskTelemetry(metrics=[
        pb.MetricPoint(name="rows", value=1.0, labels={"table": "users"}, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="revenue", value=2.0, kind=pb.METRIC_KIND_BUSINESS),
    ])  # fmt: skip
    best_points = min(_time_points(metrics, telemetry) for _ in range(opts.repeats))
    endpoint.stop()
    n = opts.tasks
    cold, warm = on[0], on[1:]
    best_off = min(t for t, _ in off)
    print(f"{n} tasks, best of {opts.repeats} (metrics on: warm runs; the first, cold one apart)")
    print(f"state machine, metrics off: {best_off / n * 1e6:.1f} µs per task")
    print(f"state machine + CoordinatorMetrics.turn: {min(t for t, _ in warm) / n * 1e6:.1f} µs per task")
    print(f"inside CoordinatorMetrics.turn: {min(m for _, m in warm) / n * 1e6:.2f} µs per task warm, "
          f"{cold[1] / n * 1e6:.2f} cold")  # fmt: skip
    print(f"one scrape with {series} duration series: {min(scrape_s) * 1e3:.0f} ms")
    print(f"task_telemetry: {best_points * 1e6:.2f} µs per point")


def _paused_gc(fn, *args):
    gc.collect()
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def _time_points(metrics: CoordinatorMetrics, telemetry: pb.TaskTelemetry, rounds: int = 10_000) -> float:
    t0 = time.perf_counter()
    for i in range(rounds):
        metrics.task_telemetry("p", "t", telemetry)
    return (time.perf_counter() - t0) / (rounds * len(telemetry.metrics))


if __name__ == "__main__":
    main()
