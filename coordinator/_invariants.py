"""The state machine's invariants, checked after every step in tests (``validate=True``).

Kept apart from ``_state`` so the machine reads as what it does; these are what must hold
whatever it did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._domain import TERMINAL_TASK_STATES
from xpipe._proto import common_pb2 as pb

from ._placement import UNBOUNDED

if TYPE_CHECKING:
    from ._state import SchedulerState

__all__ = ["check_invariants", "ACTIVE", "SATISFIED"]

#: Task states in which an attempt is out on a worker.
ACTIVE = frozenset({pb.ASSIGNED, pb.RUNNING})
#: A dependency in one of these states lets its dependents run (a skipped one passes None).
SATISFIED = frozenset({pb.SUCCEEDED, pb.SKIPPED})


def check_invariants(state: SchedulerState) -> None:
    """Raise AssertionError naming the first invariant of ``state`` that is broken."""
    for run in state.runs.values():
        terminal = 0
        for task in run.tasks.values():
            if task.state in TERMINAL_TASK_STATES:
                terminal += 1
            if task.state in (pb.READY, pb.HELD, pb.ASSIGNED, pb.RUNNING):
                for dep in task.deps:
                    assert run.tasks[dep].state in SATISFIED, f"{task.name} active before {dep} succeeded"
            if task.state == pb.RECOVERING:
                assert task.name in run.recovering, f"{task.name} RECOVERING with no handler call"
            if task.state == pb.PENDING:
                unmet = sum(1 for d in task.deps if run.tasks[d].state not in SATISFIED)
                assert unmet == task.waiting, f"{task.name}: waiting={task.waiting}, unmet deps={unmet}"
        assert terminal == run.terminal, f"run {run.run_id}: terminal count {run.terminal} != {terminal}"
        state.check_fanouts(run)
    for worker in state.workers.values():
        if worker.state == "lost":
            assert not worker.assigned, f"lost worker {worker.name} still holds attempts"
        node = state.placement.nodes.get(worker.worker_id)
        if node is not None:
            assert set(node.held) <= set(worker.assigned), f"{worker.name}: ledger holds attempts it was not sent"
            # Adaptive prefetch may shrink credit below what a worker already holds; the
            # bound that must never break is the largest credit it could have had.
            most = max(1, node.slots) + state.prefetch
            scale = max(1.0, most / max(1, node.slots))

            def cap(total: int) -> int:
                return total if total == UNBOUNDED else int(total * scale)

            cap_cpu, cap_mem, cap_gpu = cap(node.cpu), cap(node.memory), cap(node.gpu)
            assert node.used_cpu <= cap_cpu and node.used_memory <= cap_mem and node.used_gpu <= cap_gpu, (
                f"{worker.name} over-committed: cpu {node.used_cpu}/{cap_cpu}, memory {node.used_memory}/"
                f"{cap_mem}, gpu {node.used_gpu}/{cap_gpu}"
            )
            assert len(node.held) <= most, f"{worker.name} holds {len(node.held)} > most credit {most}"
        for key in worker.assigned:
            task = state._current(key)
            if task is not None and task.state in ACTIVE:
                assert task.worker == worker.worker_id, f"{key} held by {worker.name} but assigned to {task.worker}"
