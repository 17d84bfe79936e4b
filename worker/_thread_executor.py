"""The thread executor: tasks on a pool of threads inside the worker process (``--executor thread``).

Cheapest per task, without isolation; see :class:`ThreadExecutor`. The process executor,
the default, is in :mod:`xpipe.worker._executor`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import logging
from typing import Any, Sequence

from xpipe._proto import worker_pb2
from xpipe.telemetry._tracing import Tracing, TracingConfig

from ._executor import Assignmentish, AttemptKey, ExecutorStartError, TaskExecutor, _attempt_key, _describe, _needs_code
from ._runtask import failed_event, run_assignment
from ._task_limits import ENFORCEMENT_NONE, format_bytes
from ._tasklogs import route_thread_output, run_in_attempt

__all__ = ["ThreadExecutor"]

logger = logging.getLogger(__name__)


class ThreadExecutor(TaskExecutor):
    """Runs tasks on a pool of ``slots`` threads inside the worker process.

    Cheapest per task, but without isolation: a task shares the worker's memory, the GIL
    and its fate (a segfault takes the worker down). Python threads cannot be killed, so
    on timeout the caller gets failed TIMEOUT at once while the thread runs on and holds
    its slot until the function returns; ``cancel`` only stops tasks that have not
    started, and ``stop`` leaves still-running threads behind (it logs them). Commands
    are the exception: their timeout kills the command's process group.

    Per-task limits cannot be enforced here: threads share one process, so neither a
    task's declared memory nor ``memory_limit_bytes`` is applied (``memory_enforcement``
    is "none", and start-up logs it). Task output is captured only in part: what the
    task's thread writes through ``sys.stdout``/``sys.stderr`` and ``logging`` (routed
    by a context variable, see :func:`~._tasklogs.route_thread_output`) and a command's
    output; C code, threads the task starts and subprocesses that inherit the file
    descriptors write to the worker's own stdout and stderr.

    Args:
        slots: number of threads, i.e. tasks running at once; more runs queue.
        imports: modules imported at start (so their ``@handler``s register).
        allow_pickled: run cloudpickled callables; False fails them PICKLED_CODE_REFUSED.
        memory_limit_bytes: accepted for the same signature as ProcessExecutor; not enforced.
        tracing: where traced attempts' spans go (None: off). Tasks run in this process, so
            its tracer provider becomes the process's global one from :meth:`start` on.
        worker_name: the ``xpipe.worker`` attribute of task spans.
    """

    memory_enforcement = ENFORCEMENT_NONE

    def __init__(
        self, slots: int, *, imports: Sequence[str] = (), allow_pickled: bool = True, memory_limit_bytes: int = 0,
        tracing: TracingConfig | None = None, worker_name: str = "",
    ):  # fmt: skip
        if slots < 1:
            raise ValueError(f"an executor needs at least 1 slot, got {slots}")
        self._tracing_config = tracing
        self._tracing: Tracing | None = None
        self._worker_name = worker_name
        self.memory_limit_bytes = memory_limit_bytes
        self.slots = slots
        self.imports = tuple(imports)
        self.allow_pickled = allow_pickled
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._cache: dict = {}
        self._code: dict[str, bytes] = {}
        self._running: dict[AttemptKey, tuple[concurrent.futures.Future, asyncio.Future]] = {}
        self._accepting = False
        self._stopped = False
        self._unroute: Any = None

    async def start(self) -> None:
        if self._stopped:
            raise RuntimeError("executor was stopped; make a new one")
        if self._pool is not None:
            return
        if self._log_sink is not None:
            self._unroute = route_thread_output(self._log_sink, asyncio.get_running_loop())
        for module in self.imports:
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise ExecutorStartError(f"cannot import module {module!r}: {type(exc).__name__}: {exc}") from exc
        self._pool = concurrent.futures.ThreadPoolExecutor(self.slots, thread_name_prefix="xpipe-task")
        if self._tracing_config is not None:
            self._tracing = Tracing(self._tracing_config, install_global=True)
        self._accepting = True
        logger.warning(
            "thread executor: tasks' memory limits are NOT enforced%s and only output written through "
            "sys.stdout/sys.stderr/logging in a task's own thread is captured; use the process executor for both",
            f" (--task-memory-limit {format_bytes(self.memory_limit_bytes)} ignored)" if self.memory_limit_bytes else "",
        )

    async def run(
        self, assignment: Assignmentish, code: bytes | None, *, encoded: bytes | None = None
    ) -> worker_pb2.TaskEvent:
        if not self._accepting or self._pool is None:
            raise RuntimeError("executor is not running (not started, or stopping)")
        if encoded is not None:  # tasks run in this process: they need the whole assignment
            assignment = worker_pb2.Assignment.FromString(encoded)
        key = _attempt_key(assignment)
        if key in self._running:
            raise ValueError(f"{_describe(key)} is already running in this executor")
        code_hash = _needs_code(assignment)
        if code_hash:
            refused = self._admit_code(assignment, code_hash, code)
            if refused is not None:
                return refused
            code = self._code[code_hash] if code_hash not in self._cache else None
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future = loop.create_future()
        work = self._pool.submit(
            run_in_attempt, key,
            functools.partial(run_assignment, artifact_root=self._artifact_root or None, tracing=self._tracing,
                              worker_name=self._worker_name, checkpoint_send=self._checkpoint_sender(key, loop)),
            assignment, code, self._cache,
        )  # fmt: skip
        self._running[key] = (work, outcome)

        def deliver(done: concurrent.futures.Future) -> None:
            if done.cancelled():
                return
            try:
                loop.call_soon_threadsafe(self._settle, outcome, done)
            except RuntimeError:  # the loop is closed: nobody waits for this result
                pass

        work.add_done_callback(deliver)
        timer = None
        if assignment.task.timeout_s > 0 and assignment.task.WhichOneof("kind") != "command":
            timeout_s = assignment.task.timeout_s
            timer = loop.call_later(timeout_s, self._time_out, outcome, key, timeout_s)
        try:
            return await outcome
        finally:
            if timer is not None:
                timer.cancel()
            del self._running[key]

    @staticmethod
    def _settle(outcome: asyncio.Future, done: concurrent.futures.Future) -> None:
        if outcome.done():
            return
        exc = done.exception()
        if exc is not None:  # run_assignment reports everything; this is a bug
            outcome.set_exception(exc)
        else:
            outcome.set_result(done.result())

    def _checkpoint_sender(self, key: AttemptKey, loop: asyncio.AbstractEventLoop):
        """Hands a pool thread's saves to the sink, on the event loop's thread (None: no sink)."""
        sink = self._checkpoint_sink
        if sink is None:
            return None
        return lambda data: loop.call_soon_threadsafe(sink, key, data)

    def _time_out(self, outcome: asyncio.Future, key: AttemptKey, timeout_s: float) -> None:
        if outcome.done():
            return
        logger.warning("%s timed out after %g s; its thread cannot be killed and runs on", _describe(key), timeout_s)
        ref = worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])
        outcome.set_result(failed_event(ref, "TIMEOUT", f"task {key[1]!r} timed out after {timeout_s:g} s"))

    async def cancel(self, attempt: AttemptKey) -> bool:
        key = (attempt[0], attempt[1], int(attempt[2]))
        entry = self._running.get(key)
        if entry is None:
            return False
        work, outcome = entry
        if outcome.done() or not work.cancel():
            return False  # already running: a thread cannot be stopped
        ref = worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])
        outcome.set_result(failed_event(ref, "CANCELLED", f"task {key[1]!r} was cancelled before it started"))
        return True

    async def stop(self, grace_s: float = 0.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        pending = [outcome for _, outcome in self._running.values() if not outcome.done()]
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        left = 0
        for key, (work, outcome) in list(self._running.items()):
            if outcome.done():
                continue
            started = not work.cancel()
            left += started
            ref = worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])
            what = "finished" if started else "started"
            outcome.set_result(failed_event(ref, "WORKER_LOST", f"executor stopped before task {key[1]!r} {what}"))
        if left:
            logger.warning("thread executor stopped with %d task thread(s) still running; they cannot be killed", left)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._unroute is not None:
            self._unroute()
            self._unroute = None
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # the last spans go out (bounded)
