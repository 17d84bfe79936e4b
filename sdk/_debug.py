"""Debug sessions: run a pipeline under a controller that pauses it at breakpoints and steps.

``pm.create_debug_session(pipeline)`` returns a :class:`DebugSession`. Its run is submitted
with ``PipelineSpec.debug``: the coordinator then keeps each task whose upstreams are done
in HELD (no worker slot, see ``coordinator/_debug_flow``) until this controller releases it
(``DebugService.ReleaseTasks``). The controller watches the run (``WatchRun``); for a held
task with a breakpoint it fetches the task's inputs (``GetTaskResult`` of its upstreams:
this process unpickles its own data, the coordinator never does), evaluates the condition
in :mod:`simpleeval` (never ``eval``), and either releases the task or pauses there.

The controller works only inside a call (``step_through_task``, ``continue_``): between
calls nothing is released, so the run stays paused however long the user looks around.
See docs/debugging.md.

Example:
    >>> debug = pm.create_debug_session("user_analytics")          # doctest: +SKIP
    >>> debug.set_breakpoint("analyze_behavior", condition="len(data) > 1000")
    >>> debug.step_through_task("extract_users")                    # runs extract_users, pauses
    >>> debug.inspect_data("user_data")                             # analyze_behavior's input
    >>> debug.continue_()                                           # to the breakpoint or the end
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simpleeval import SimpleEval

from ._domain import TERMINAL_TASK_STATES
from ._proto import common_pb2 as pb
from ._proto import debug_pb2, debug_pb2_grpc
from .errors import SerializationError

if TYPE_CHECKING:
    from ._client import Client
    from ._dag import Pipeline, Task
    from ._manager import PipelineManager
    from ._result import PipelineResult

__all__ = ["DebugSession", "DebugPause", "CONDITION_FUNCTIONS", "DEFAULT_STEP_TIMEOUT_S"]

log = logging.getLogger(__name__)

#: The only functions a breakpoint condition may call.
CONDITION_FUNCTIONS: dict[str, Any] = {
    f.__name__: f for f in (len, min, max, sum, abs, any, all, sorted, str, int, float)
}
#: How long ``step_through_task`` / ``continue_`` wait for the run to pause or end by default.
DEFAULT_STEP_TIMEOUT_S = 300.0
#: The name a condition sees the task's first upstream input by.
DATA_NAME = "data"

_SATISFIED = frozenset({pb.SUCCEEDED, pb.SKIPPED})
_NOT_STARTED = frozenset({pb.PENDING, pb.HELD})
#: A debug session's state once its run ended, by the run's state.
_ENDED = {pb.RUN_SUCCEEDED: "finished", pb.RUN_FAILED: "failed", pb.RUN_CANCELLED: "aborted"}
_END = object()  # the watch thread's last item


@dataclass(frozen=True, slots=True)
class DebugPause:
    """Where a debug run stopped: what ``step_through_task`` and ``continue_`` return.

    Attributes:
        task: the task paused at (also ``DebugSession.paused_at``).
        before: True when paused before the task ran (a breakpoint); False after it
            succeeded (the end of a step).
        reason: why, in words: ``"step through 'extract'"``, ``"breakpoint: len(data) > 3"``,
            or a condition that could not be evaluated and why.
    """

    task: str
    before: bool
    reason: str


@dataclass(slots=True)
class _Breakpoint:
    condition: str | None
    parsed: ast.AST | None


class DebugSession:
    """One run of a pipeline under a debug controller (see the module docstring).

    Made by :meth:`PipelineManager.create_debug_session`; no separate start call: the run
    starts at the first :meth:`step_through_task` or :meth:`continue_`, and breakpoints set
    before then apply to it.

    Attributes:
        state: ``not_started``, ``running``, ``paused``, ``finished``, ``aborted`` or ``failed``.
        paused_at: the task paused at, or None.
        pause: the last :class:`DebugPause`, or None when not paused.
        run_id: the run's id once started, else None.
        result: the run's :class:`PipelineResult` once it ended, else None.
    """

    def __init__(self, pm: PipelineManager, pipeline: Pipeline):
        self._pm = pm
        self.pipeline = pipeline
        self._order = pipeline.validate()  # topological; raises PipelineValidationError first
        self._tasks: dict[str, Task] = pipeline.tasks
        self._breakpoints: dict[str, _Breakpoint] = {}
        self.state = "not_started"
        self.pause: DebugPause | None = None
        self.run_id: str | None = None
        self.result: PipelineResult | None = None
        self._states: dict[str, int] = {}
        self._released: set[str] = set()
        self._outputs: dict[str, Any] = {}  # task -> decoded output, fetched once
        # (watch generation, RunEvent | _END | the exception that ended that watch)
        self._events: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._watcher: threading.Thread | None = None
        self._generation = 0  # of the current watch thread; an older one's error is stale
        self._watch_failed = False
        self._run_ended = False  # the watch stream ended: the run did
        self._run_state = pb.RUN_PENDING  # as the last watch event said

    @property
    def paused_at(self) -> str | None:
        """The task the run is paused at (before or after it), or None."""
        return self.pause.task if self.pause is not None else None

    # ------------------------------------------------------------------ breakpoints

    def set_breakpoint(self, task: str, condition: str | None = None) -> None:
        """Pause the run before ``task`` runs, when ``condition`` holds (always when None).

        The condition is an expression over the task's inputs: ``data`` is its first
        upstream input, and each parameter of its function is bound by name (upstream
        results, ``args``, ``kwargs`` and defaults, as the worker would call it). It may
        call only :data:`CONDITION_FUNCTIONS`. A breakpoint set while the run is going
        applies to tasks that have not been released yet.

        Raises:
            ValueError: an unknown task (the known ones are named), a condition that does
                not parse, or one that uses a name the task's inputs do not have.
        """
        self._check_task(task, "set_breakpoint")
        if condition is None:
            self._breakpoints[task] = _Breakpoint(None, None)
            return
        if not isinstance(condition, str) or not condition.strip():
            raise ValueError(
                f"set_breakpoint({task!r}): condition must be a non-empty string or None, got {condition!r}"
            )
        try:
            parsed = SimpleEval().parse(condition)
        except SyntaxError as exc:
            message = f"set_breakpoint({task!r}): condition {condition!r} does not parse: {exc.msg}"
            raise ValueError(message) from None
        known = self._names_of(task)
        if known is not None:
            used = {node.id for node in ast.walk(parsed) if isinstance(node, ast.Name)}
            unknown = sorted(used - known - set(CONDITION_FUNCTIONS))
            if unknown:
                raise ValueError(
                    f"set_breakpoint({task!r}): condition {condition!r} uses unknown name {unknown[0]!r}; "
                    f"task {task!r} has {sorted(known)}, and may call {sorted(CONDITION_FUNCTIONS)}"
                )
        self._breakpoints[task] = _Breakpoint(condition, parsed)

    def clear_breakpoint(self, task: str) -> None:
        """Remove ``task``'s breakpoint, if any."""
        self._check_task(task, "clear_breakpoint")
        self._breakpoints.pop(task, None)

    # ------------------------------------------------------------------ moving on

    def step_through_task(
        self, task: str, *, timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S
    ) -> DebugPause | None:
        """Run up to and including ``task`` (only it and what it needs), then pause after it.

        A breakpoint on the way pauses there first (call again to go on). Returns the
        pause, or None if the run ended first (see :attr:`result`).

        Raises:
            ValueError: an unknown task, or ``task`` already ended.
            TimeoutError: the run neither paused nor ended within ``timeout_s`` (it stays
                as it is; call again to go on).
            RuntimeError: the session is over (finished, failed or aborted).
        """
        self._check_task(task, "step_through_task")
        if self._states.get(task) in TERMINAL_TASK_STATES:
            state = _state_name(self._states[task])
            raise ValueError(f"step_through_task({task!r}): task {task!r} is already {state}")
        return self._drive(target=task, timeout_s=timeout_s)

    def continue_(self, *, timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S) -> DebugPause | None:
        """Run to the next breakpoint that holds, or to the end.

        Returns the pause, or None once the run ended (see :attr:`result`).

        Raises:
            TimeoutError: neither within ``timeout_s`` (call again to go on).
            RuntimeError: the session is over.
        """
        return self._drive(target=None, timeout_s=timeout_s)

    def abort(self, *, timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S) -> None:
        """Cancel the run (held tasks are cancelled, running ones killed); waits until it ended."""
        if self.state in ("finished", "failed", "aborted"):
            return
        if self.run_id is None:
            self.state = "aborted"
            return
        self._pm.client.cancel(self.run_id)
        self._ensure_watch()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._pump(deadline, what="the run to be cancelled"):
            pass
        self._finish()

    def close(self) -> None:
        """Abort the run if it is still going: a forgotten session must not hold tasks for ever."""
        if self.run_id is not None and self.state in ("running", "paused"):
            try:
                self.abort(timeout_s=10.0)
            except Exception as exc:  # closing goes on; the run is named so it can be cancelled by hand
                log.warning("debug session of run %s: could not abort it on close: %s", self.run_id, exc)

    # ------------------------------------------------------------------ looking

    def inspect_data(self, name: str) -> Any:
        """A value by name: a task's output by task name, or an input by parameter name.

        Parameter names are looked up on the task paused before, else on the tasks whose
        upstreams are all done and that have not started (the ones a step would run next).

        Raises:
            LookupError: no such value (the names that exist now are listed), or the
                task named has not succeeded.
        """
        if name in self._tasks:
            state = self._states.get(name, pb.PENDING)
            if state not in _SATISFIED:
                raise LookupError(
                    f"inspect_data({name!r}): task {name!r} has no output: it is {_state_name(state)}"
                )
            return self._output(name)
        known: list[str] = []
        for task in self._next_tasks():
            inputs = self._inputs(task)
            if name in inputs:
                return inputs[name]
            known += [n for n in inputs if n not in known]
        raise LookupError(
            f"inspect_data({name!r}): no task and no input of a waiting task has that name; "
            f"tasks: {self._order}; inputs now: {known}"
        )

    # ------------------------------------------------------------------ the controller

    def _drive(self, *, target: str | None, timeout_s: float | None) -> DebugPause | None:
        if self.state in ("finished", "failed", "aborted"):
            raise RuntimeError(f"the debug session of run {self.run_id} is {self.state}; create a new one")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        allowed = set(self._order) if target is None else self._ancestors(target) | {target}
        passing = None
        if self.pause is not None and self.pause.before and self.pause.task in allowed:
            passing = self.pause.task  # go on past the breakpoint we stopped at
        if self.run_id is None:
            self._start()
        self._ensure_watch()
        self.state, self.pause = "running", None
        if passing is not None:
            self._release([passing])
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        what = "the run to pause or end" if target is None else f"task {target!r} to finish"
        while True:
            if self._run_ended:
                self._finish()
                return None
            reached = self._states.get(target) if target is not None else None
            if reached in _SATISFIED:
                return self._pause_at(DebugPause(target, False, f"step through {target!r}"))
            if reached in TERMINAL_TASK_STATES:  # failed, cancelled: the step can go no further
                ended = f"task {target!r} ended {_state_name(reached)}"
                return self._pause_at(DebugPause(target, False, ended))
            pause = self._decide(allowed)
            if pause is not None:
                return self._pause_at(pause)
            self._pump(deadline, what=what)

    def _decide(self, allowed: set[str]) -> DebugPause | None:
        """Release the held tasks we may; return a pause if a breakpoint holds on one."""
        free = []
        for name in self._order:
            if name not in allowed or name in self._released or self._states.get(name) != pb.HELD:
                continue
            bp = self._breakpoints.get(name)
            if bp is not None:
                pause = self._evaluate(name, bp)
                if pause is not None:
                    self._release(free)
                    return pause
            free.append(name)
        self._release(free)
        return None

    def _evaluate(self, name: str, bp: _Breakpoint) -> DebugPause | None:
        if bp.parsed is None:
            return DebugPause(name, True, "breakpoint")
        try:
            names = self._inputs(self._tasks[name])
        except SerializationError as exc:  # e.g. a class this process cannot import: the user decides
            return DebugPause(name, True, f"breakpoint: the inputs of {name!r} cannot be decoded here: {exc}")
        try:
            evaluator = SimpleEval(functions=CONDITION_FUNCTIONS, names=names)
            holds = evaluator.eval(bp.condition, previously_parsed=bp.parsed)
        except Exception as exc:  # a condition must never crash the session: pause and say why
            why = f"breakpoint condition {bp.condition!r} failed: {type(exc).__name__}: {exc}"
            return DebugPause(name, True, why)
        return DebugPause(name, True, f"breakpoint: {bp.condition}") if holds else None

    def _pause_at(self, pause: DebugPause) -> DebugPause:
        self.state, self.pause = "paused", pause
        where = "before" if pause.before else "after"
        log.info("debug run %s paused %s %s: %s", self.run_id, where, pause.task, pause.reason)
        return pause

    def _release(self, names: list[str]) -> None:
        if not names:
            return
        request = debug_pb2.ReleaseTasksRequest(run_id=self.run_id, tasks=names)
        client = self._pm.client
        client._call_on(
            debug_pb2_grpc.DebugServiceStub, lambda s: s.ReleaseTasks(request, timeout=client.call_timeout_s)
        )
        self._released.update(names)

    def _start(self) -> None:
        spec = self.pipeline.to_proto()
        spec.debug = True
        self.run_id = self._pm.client._submit_spec(spec)
        self._pm._remember(self.run_id, self.pipeline)
        self._run_ended = False

    def _ensure_watch(self) -> None:
        """Follow the run's events in a thread, unless one does: again after one failed."""
        if self._run_ended or (self._watcher is not None and not self._watch_failed):
            return
        self._generation += 1
        self._watch_failed = False
        name = f"xpipe-debug-{self.run_id}-{self._generation}"
        self._watcher = threading.Thread(target=self._watch, args=(self._generation,), name=name, daemon=True)
        self._watcher.start()

    def _watch(self, generation: int) -> None:
        """Thread: carry the run's events to the controller's queue, then _END (or the error).

        On a client of its own: a Client's reconnect closes its channel, which must not
        pull the channel from under the user's calls (releases, fetches) in the other thread.
        """
        try:
            with _twin(self._pm.client) as client:
                for event in client._watch_pb(self.run_id):
                    self._events.put((generation, event))
        except BaseException as exc:  # raised in the user's call (once); the next call watches again
            self._watch_failed = True
            self._events.put((generation, exc))
            return
        self._events.put((generation, _END))

    def _pump(self, deadline: float | None, *, what: str) -> bool:
        """Apply the next watch event (waiting until ``deadline``); False once the run ended."""
        left_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            generation, item = self._events.get(timeout=left_s)
        except queue.Empty:
            raise TimeoutError(f"debug run {self.run_id}: waited {what} past the timeout; it goes on "
                               "when you call step_through_task or continue_ again") from None  # fmt: skip
        if item is _END:
            self._run_ended = True
            return False
        if isinstance(item, BaseException):
            if generation != self._generation:
                return True  # a watch given up before the current one started: nothing new
            raise item
        self._run_state = item.summary.state
        for info in item.changed:
            self._states[info.name] = info.state
        if len(item.changed) == item.summary.total_tasks:
            # A whole snapshot: the first event, or one after a reconnect (a coordinator
            # restart or failover). A release the old coordinator never stored shows as
            # HELD again: forget it, so it is decided and released once more (harmless
            # for a task already released: the coordinator leaves a task not HELD alone).
            self._released.difference_update(i.name for i in item.changed if i.state == pb.HELD)
        return True

    def _finish(self) -> None:
        """The run ended: set the state from its last event, then fetch the result.

        Raises:
            SerializationError: an output cannot be decoded in this process (the state is
                set all the same; ``result`` stays None).
        """
        self.pause = None
        self.state = _ENDED.get(self._run_state, "failed")
        with contextlib.suppress(ValueError):  # nothing left to abort on the manager's close
            self._pm._on_close.remove(self.close)
        self.result = self._pm.get_run(self.run_id)

    # ------------------------------------------------------------------ inputs

    def _output(self, name: str) -> Any:
        if name not in self._outputs:
            self._outputs[name] = self._pm.client.task_result(self.run_id, name).value
        return self._outputs[name]

    def _next_tasks(self) -> list[Task]:
        """The task paused before, then every not-started task whose upstreams are all done."""
        first = [self.pause.task] if self.pause is not None and self.pause.before else []
        ready = [
            name for name in self._order
            if name not in first and self._states.get(name, pb.PENDING) in _NOT_STARTED
            and all(self._states.get(up) in _SATISFIED for up in self._tasks[name].upstream)
        ]  # fmt: skip
        return [self._tasks[name] for name in first + ready]

    def _inputs(self, task: Task) -> dict[str, Any]:
        """The task's inputs by name, as the worker would call it: parameters, and ``data``."""
        upstream = [self._output(name) for name in task.depends_on]
        flows = {}
        for param, flow in task.flows.items():
            value = self._output(flow.source)
            flows[param] = value[flow.key] if flow.key is not None and value is not None else value
        plain = {k: v for k, v in task.kwargs.items() if k not in flows}
        names: dict[str, Any] = {DATA_NAME: upstream[0] if upstream else next(iter(flows.values()), None)}
        fn = _callable_of(task)
        bound = None
        if fn is not None:
            try:
                bound = inspect.signature(fn).bind(*upstream, *task.args, **plain, **flows)
                bound.apply_defaults()
            except (TypeError, ValueError):
                bound = None  # the worker will say what is wrong with the call; bind what we can
        if bound is not None:
            names.update(bound.arguments)
        else:
            names.update(plain)
            names.update(flows)
        return names

    def _names_of(self, task: str) -> set[str] | None:
        """Names a condition on ``task`` may use, or None when its function takes ``**kwargs``."""
        t = self._tasks[task]
        names = {DATA_NAME, *t.kwargs}
        fn = _callable_of(t)
        if fn is not None:
            try:
                params = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                return None
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                return None
            names.update(p.name for p in params)
        return names

    def _ancestors(self, task: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self._tasks[task].upstream)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self._tasks[name].upstream)
        return seen

    def _check_task(self, task: Any, call: str) -> None:
        if task not in self._tasks:
            raise ValueError(f"{call}({task!r}): pipeline {self.pipeline.name!r} has no task {task!r}; "
                             f"its tasks: {self._order}")  # fmt: skip

    def __repr__(self) -> str:
        where = f" at {self.paused_at!r}" if self.paused_at else ""
        return f"<DebugSession {self.pipeline.name!r} run={self.run_id} {self.state}{where}>"


def _twin(client: Client) -> Client:
    """A new Client to the same coordinators, with the same credentials and timeouts."""
    from ._client import Client

    return Client(
        list(client.addresses), connect_timeout_s=client.connect_timeout_s, call_timeout_s=client.call_timeout_s,
        tls=client.tls if client.tls is not None else False, token=client._token, namespace=client.namespace,
    )  # fmt: skip


def _callable_of(task: Task) -> Any:
    """The function the worker will call for ``task``, if this process can see it."""
    if task.kind == "python":
        return task.func
    return None


def _state_name(state: int) -> str:
    return pb.TaskState.Name(state).lower()
