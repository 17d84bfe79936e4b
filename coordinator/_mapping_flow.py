"""Dynamic fan-out inside the state machine: split, one sub-task per part, gather.

A task whose spec has ``map`` (see ``xpipe._mapping``) runs its first attempt as a *split*:
the worker calls the splitter over the first upstream result and answers with a
``CODEC_MAP_PARTS`` payload, a message of ours the coordinator reads without touching user
data. The task then moves to MAPPED, keeping those parts as its result (persisted with its
row, so a restarted coordinator makes the same sub-tasks again), and becomes sub-tasks
``name[i]``: real tasks of the run, placed, retried and timed out like any other, each
given part ``i`` in place of the first upstream result. At most ``parallelism`` of them
are released (READY or later) at once; the rest wait PENDING in the fan-out's queue, so a
10,000-part fan-out costs the ready queue nothing. When every sub-task has succeeded the
task SUCCEEDS with a ``CODEC_MAP_PARTS`` result made of their results in part order
(decoded by the codec as a list, or a dict when the parts had keys); the first sub-task
that fails for good fails the task (its dependents are UPSTREAM_FAILED) and cancels the
other sub-tasks.

A mixin of :class:`~._state.SchedulerState`, kept apart like ``_recovery_flow``; it uses
the machine's own helpers and is as pure.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from xpipe._domain import TERMINAL_TASK_STATES, task_error
from xpipe._graph import sub_task_name, sub_task_of
from xpipe._limits import MAX_PARTITIONS
from xpipe._proto import common_pb2 as pb
from xpipe.security._codetrust import code_kind

from ._entries import TaskEntry
from ._events import Action, TaskRecord

if TYPE_CHECKING:
    from ._entries import RunEntry

__all__ = ["MappingFlow", "FanOut"]

log = logging.getLogger("xpipe.coordinator._state")

_DONE = frozenset({pb.SUCCEEDED, pb.SKIPPED})


class FanOut:
    """What the machine keeps for one fanned-out task (``TaskEntry.fan``)."""

    __slots__ = ("child_spec", "split_spec", "children", "keys", "queue", "open", "done", "cap")

    def __init__(self, spec: pb.TaskSpec):
        #: What each sub-task runs: the task's own spec without ``map``.
        self.child_spec = pb.TaskSpec()
        self.child_spec.CopyFrom(spec)
        self.child_spec.ClearField("map")
        #: What the split attempt runs: the splitter over the first upstream result only.
        split = pb.TaskSpec()
        split.CopyFrom(self.child_spec)
        del split.depends_on[1:]
        split.ClearField("flows")
        split.ClearField("track")
        split.track_performance = False
        split.python.CopyFrom(spec.map.splitter)
        split.args.CopyFrom(spec.map.split_args)
        self.split_spec = split
        self.children: list[str] = []  # sub-task names, in part order; empty until split
        self.keys: pb.Payload | None = None  # the dict's keys, when the parts came from one
        self.queue: deque[str] = deque()  # sub-tasks not yet released, in order
        self.open = 0  # released sub-tasks not yet finished
        self.done = 0  # sub-tasks that succeeded (or were skipped)
        self.cap = spec.map.parallelism  # 0: no cap


class MappingFlow:
    """The fan-out part of :class:`~._state.SchedulerState` (a mixin)."""

    __slots__ = ()

    def _setup_fanouts(self, run: RunEntry) -> None:
        """Give each task whose spec fans out its FanOut; its split attempt runs first."""
        for task in run.tasks.values():
            if task.spec.HasField("map"):
                fan = task.fan = FanOut(task.spec)
                task.spec = fan.split_spec
                task.code = code_kind(fan.split_spec)

    def _on_split(self, run: RunEntry, task: TaskEntry, result: pb.Payload, now: float, out: list[Action]) -> None:
        """The split attempt succeeded: make the sub-tasks (or fail the task, naming why)."""
        problem, parts = "", None
        if result.codec != pb.CODEC_MAP_PARTS:
            problem = "its split attempt returned no partitions (the worker may run an older xpipe)"
        else:
            try:
                parts = pb.MapParts.FromString(result.data)
            except Exception as exc:  # a corrupt message from a worker
                problem = f"its partitions cannot be read: {exc}"
        if parts is not None and len(parts.parts) > MAX_PARTITIONS:
            problem = f"it split into {len(parts.parts)} partitions; the limit is {MAX_PARTITIONS} (MAX_PARTITIONS)"
        # (No task of the run is named like a sub-task: validate_spec refuses such specs.)
        if problem:
            error = task_error("TASK_FAILURE", f"task {task.name!r} cannot fan out: {problem}", non_retryable=True)
            self._fail_attempt(run, task, error, now, out)
            return
        assert parts is not None
        task.result = result
        self._make_children(run, task, parts)
        log.info("run %s: task %r fans out into %d sub-tasks", run.run_id, task.name, len(parts.parts))
        if not parts.parts:  # nothing to map over: an empty list (or dict) at once
            task.result = self._gathered(run, task)
            self._move(run, task, pb.SUCCEEDED, out, "fan-out over no partitions")
            self._release_dependents(run, task, out)
            return
        self._move(run, task, pb.MAPPED, out, f"{len(parts.parts)} sub-tasks")
        self._release_children(run, task, out)

    def _make_children(self, run: RunEntry, task: TaskEntry, parts: pb.MapParts) -> None:
        fan = task.fan
        fan.keys = parts.keys if parts.HasField("keys") else None
        fan.children, fan.queue, fan.open, fan.done = [], deque(), 0, 0
        for i, part in enumerate(parts.parts):
            name = self._add_child(run, task, sub_task_name(task.name, i), part)
            fan.children.append(name)
            fan.queue.append(name)

    @staticmethod
    def _add_child(run: RunEntry, task: TaskEntry, name: str, part: pb.Payload | None) -> str:
        child = TaskEntry(task.fan.child_spec)
        child.name = name
        child.deps = ()  # it waits for nothing: its parent's inputs are all there
        child.parent, child.part = task.name, part
        child.cp, child.circuit, child.request = task.cp, task.circuit, task.request
        run.tasks[name] = child
        return name

    def _release_children(self, run: RunEntry, task: TaskEntry, out: list[Action]) -> None:
        """Make sub-tasks READY while the fan-out's parallelism allows."""
        fan = task.fan
        tasks, queue = run.tasks, fan.queue
        while queue and (not fan.cap or fan.open < fan.cap):
            child = tasks[queue.popleft()]
            if child.state == pb.PENDING:
                fan.open += 1
                self._move(run, child, pb.READY, out)

    def _gathered(self, run: RunEntry, task: TaskEntry) -> pb.Payload:
        """The task's result: its sub-tasks' results in part order (a skipped one as None)."""
        fan, tasks, empty = task.fan, run.tasks, pb.Payload()
        parts = pb.MapParts(parts=[tasks[name].result or empty for name in fan.children])
        if fan.keys is not None:
            parts.keys.CopyFrom(fan.keys)
        data = parts.SerializeToString()
        return pb.Payload(codec=pb.CODEC_MAP_PARTS, data=data, size_bytes=len(data))

    def _child_finished(self, run: RunEntry, child: TaskEntry, out: list[Action]) -> None:
        """A sub-task ended: release the next, or finish its parent (success or failure)."""
        child.part = None  # it will not run again: free its input
        task = run.tasks[child.parent]
        fan = task.fan
        if task.state != pb.MAPPED:
            return  # the parent ended already (it failed, or the run was cancelled)
        fan.open -= 1
        if child.state in _DONE:
            fan.done += 1
            self._go_on(run, task, out)
            return
        self._fail_parent(run, task, child, out)

    def _go_on(self, run: RunEntry, task: TaskEntry, out: list[Action]) -> None:
        """A fan-out with no failed sub-task: it succeeds once all are done, else releases more."""
        if task.fan.done == len(task.fan.children):
            task.result = self._gathered(run, task)
            task.finished_at = self._now
            self._move(run, task, pb.SUCCEEDED, out)
            self._release_dependents(run, task, out)
        else:
            self._release_children(run, task, out)

    def _fail_parent(self, run: RunEntry, task: TaskEntry, child: TaskEntry, out: list[Action]) -> None:
        """A sub-task failed for good (or was cancelled): so does its parent; the rest are cancelled."""
        now = self._now
        error = pb.TaskError()
        if child.error is not None:
            error.CopyFrom(child.error)
        error.message = f"sub-task {child.name!r} {pb.TaskState.Name(child.state).lower()}: {error.message}"
        task.error, task.result, task.finished_at = error, None, now
        self._move(run, task, pb.FAILED, out)
        why = f"cancelled: sub-task {child.name!r} of {task.name!r} did not succeed"
        self._cancel_tasks(run, [run.tasks[name] for name in task.fan.children], now, out, why, set_error=True)
        self._fail_dependents(run, task, out)
        if run.fail_fast:
            self._stop_run_after_failure(run, task, now, out)

    def _restore_children(self, run: RunEntry, records: dict[str, TaskRecord]) -> None:
        """Before a restored run's rows are applied: remake the sub-tasks of MAPPED tasks
        (from their stored parts), and those of finished fan-outs that have rows (so the
        run still shows them)."""
        for name, rec in records.items():
            task = run.tasks.get(name)
            if task is None or task.fan is None or rec.state != pb.MAPPED or rec.result is None:
                continue
            try:
                parts = pb.MapParts.FromString(rec.result.data)
            except Exception:
                log.error("run %s: stored partitions of task %r cannot be read", run.run_id, name)
                continue
            self._make_children(run, task, parts)
        finished = sorted(
            (sub[0], sub[1], name)
            for name in records
            if name not in run.tasks and (sub := sub_task_of(name)) is not None
            and sub[0] in run.tasks and run.tasks[sub[0]].fan is not None
        )  # fmt: skip
        for parent, _, name in finished:
            self._add_child(run, run.tasks[parent], name, None)

    def _resume_fanouts(self, run: RunEntry, out: list[Action]) -> None:
        """After a restored run's rows are applied: recount each MAPPED task's sub-tasks, then
        go on (release more, or finish it if its sub-tasks all ended before the restart)."""
        for task in [t for t in run.tasks.values() if t.fan is not None and t.state == pb.MAPPED]:
            fan, tasks = task.fan, run.tasks
            if not fan.children:  # its parts were unreadable
                task.error = task_error("INTERNAL", f"the stored partitions of task {task.name!r} cannot be read")
                task.result = None  # the parts: a FAILED task keeps only a result its attempt returned
                task.finished_at = self._now
                self._move(run, task, pb.FAILED, out)
                self._fail_dependents(run, task, out)
                continue
            fan.queue = deque(n for n in fan.children if tasks[n].state == pb.PENDING)
            fan.done = sum(1 for n in fan.children if tasks[n].state in _DONE)
            ended = [tasks[n] for n in fan.children if tasks[n].state in TERMINAL_TASK_STATES]
            fan.open = len(fan.children) - len(fan.queue) - len(ended)
            failed = next((c for c in ended if c.state not in _DONE), None)
            if failed is not None:
                self._fail_parent(run, task, failed, out)
            else:
                self._go_on(run, task, out)

    def check_fanouts(self, run: RunEntry) -> None:
        """Invariants of fan-outs (see ``_invariants``): the parallelism cap holds."""
        for task in run.tasks.values():
            fan = task.fan
            if fan is None or task.state != pb.MAPPED:
                continue
            live = sum(1 for n in fan.children if run.tasks[n].state not in TERMINAL_TASK_STATES
                       and run.tasks[n].state != pb.PENDING)  # fmt: skip
            assert live == fan.open, f"{task.name}: {live} sub-tasks out, counted {fan.open}"
            assert not fan.cap or live <= fan.cap, f"{task.name}: {live} sub-tasks out > parallelism {fan.cap}"
