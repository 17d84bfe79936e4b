"""Debug runs inside the state machine: hold tasks for the debugger, release them on request.

A run submitted with ``PipelineSpec.debug`` (a debug session, ``xpipe._debug``) moves each
task whose upstreams are done to HELD instead of READY. A HELD task is in no ready queue
and holds no worker slot or resources, so a paused run costs only its rows in memory and in
the store, and other runs go on. The debugger (client side) watches the run, decides on
its breakpoints, and releases tasks with ``DebugService.ReleaseTasks``
(:class:`~._events.DebugReleaseRequested`): HELD -> READY. Only the first move to READY is
held; a retry or a requeue of a released task is not held again. HELD is persisted with the
task row like any state, so held tasks stay held across a coordinator restart or failover.

A mixin of :class:`~._state.SchedulerState`, like ``_recovery_flow``: pure, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xpipe._proto import common_pb2 as pb

if TYPE_CHECKING:
    from ._entries import RunEntry, TaskEntry
    from ._events import Action, DebugReleaseRequested

__all__ = ["DebugFlow", "HELD_REASON"]

#: The transition log's reason for PENDING -> HELD (``xpipe story`` shows it).
HELD_REASON = "held for the debugger"


class DebugFlow:
    """The debug-run part of :class:`~._state.SchedulerState` (a mixin)."""

    __slots__ = ()

    def _make_ready(self, run: RunEntry, task: TaskEntry, out: list[Action]) -> None:
        """``task``'s upstreams are done: READY, or HELD in a debug run."""
        if run.debug:
            self._move(run, task, pb.HELD, out, HELD_REASON)
        else:
            self._move(run, task, pb.READY, out)

    def _on_debug_release(self, ev: DebugReleaseRequested, out: list[Action]) -> None:
        run = self.runs.get(ev.run_id)
        if run is None:
            return
        for name in ev.tasks:
            task = run.tasks.get(name)
            if task is not None and task.state == pb.HELD:
                self._move(run, task, pb.READY, out, "released by the debugger")

    def held_tasks(self, run_id: str) -> list[str]:
        """Names of the run's HELD tasks (empty for an unknown run)."""
        run = self.runs.get(run_id)
        if run is None:
            return []
        return [name for name, task in run.tasks.items() if task.state == pb.HELD]
