"""The fleet bench's wide run replayed on the state machine alone: its CPU per task at N workers.

A script: ``python -m bench.fleet_state [--workers 2 1000] [--tasks 20000]``.

:mod:`bench.fleet` measures the whole coordinator, whose figures on a shared 2-core machine
swing by a third from run to run. This replays the same pattern on
:class:`~xpipe.coordinator._state.SchedulerState` in one process, timed in CPU seconds: N
workers of one slot and 4 cores (as the simulators register), a wide run of no-op tasks,
and turns in which ``--answers-per-turn`` workers answer everything they were sent (as a
simulated worker answers each ``AssignmentBatch`` with one ``TaskEventBatch``), followed by
a scheduling pass. It counts the assignment messages a turn's actions make (one per worker
per turn, as the engine batches them) to compare with the fleet bench's "asg/msg".
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded, WorkerConnected
from xpipe.coordinator._state import SchedulerState

#: As the fleet simulators register (bench/_fleetsim.py).
_RESOURCES = pb.Resources(cpu_cores=4, memory_bytes=8 * 2**30)
_NONE_RESULT = pb.Payload(codec=pb.CODEC_PICKLE, data=b"\x80\x05N.", size_bytes=4)
#: How long a no-op task takes on a worker, as reported (so prefetch adapts as in the bench).
_TASK_S = 0.0001


def replay(workers: int, tasks: int, answers_per_turn: int) -> dict:
    """One wide run of ``tasks`` at ``workers``; CPU seconds of handling and scheduling, per task."""
    state = SchedulerState(prefetch=64, heartbeat_timeout_s=5.0)
    for i in range(workers):
        state.handle(WorkerConnected(0.0, f"w{i}", f"w{i}", "fleet", 1, resources=_RESOURCES))
    spec = pb.PipelineSpec(name="fleet-wide")
    for i in range(tasks):
        spec.tasks.add(name=f"t{i}").python.import_path = "bench.tasks:noop"
    state.handle(RunSubmitted(0.0, "r", spec, tuple(t.name for t in spec.tasks)))
    outstanding: dict[str, list] = defaultdict(list)
    now, turns, messages = 0.0, 0, 0
    started = time.process_time()
    actions = state.schedule(now)
    while True:
        to = set()
        for action in actions:
            if isinstance(action, Assign):
                outstanding[action.worker_id].append(action.attempt)
                to.add(action.worker_id)
        messages += len(to)
        if not outstanding:
            break
        now += 0.001
        turns += 1
        for worker_id in list(outstanding)[:answers_per_turn]:  # the oldest senders answer first
            for key in outstanding.pop(worker_id):
                state.handle(TaskSucceeded(now, worker_id, key, now, _NONE_RESULT, now - _TASK_S))
        actions = state.schedule(now)
    cpu_s = time.process_time() - started
    done = state.runs["r"].succeeded
    if done != tasks:
        raise RuntimeError(f"the replay ended with {done} of {tasks} tasks succeeded")
    return {"workers": workers, "tasks": tasks, "turns": turns, "cpu_us_per_task": 1e6 * cpu_s / tasks,
            "assignments_per_message": tasks / max(1, messages)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[2, 1000])
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--answers-per-turn", type=int, default=0,
                   help="workers answering per turn (default 0: all of them up to 2, else 50)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="the best of this many is shown")
    opts = p.parse_args(argv)
    if min(opts.workers) < 1 or opts.tasks < 1 or opts.repeats < 1 or opts.answers_per_turn < 0:
        p.error("--workers, --tasks and --repeats must be at least 1, --answers-per-turn at least 0")
    print(f"{'workers':>7} {'answers/turn':>12} {'turns':>6} {'us/task':>8} {'asg/msg':>8}")
    for n in opts.workers:
        per_turn = opts.answers_per_turn or (n if n <= 2 else 50)
        best = min((replay(n, opts.tasks, per_turn) for _ in range(opts.repeats)), key=lambda r: r["cpu_us_per_task"])
        print(f"{n:>7} {per_turn:>12} {best['turns']:>6} {best['cpu_us_per_task']:>8.1f} {best['assignments_per_message']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
