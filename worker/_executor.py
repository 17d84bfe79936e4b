"""Task executors: where a worker actually runs the tasks it is assigned.

Two kinds share one interface, :class:`TaskExecutor`:

- :class:`ProcessExecutor` (the default) keeps ``slots`` long-lived child processes,
  each a fresh interpreter (spawned, never forked: gRPC and ``fork`` do not mix). A task that hangs, crashes the
  interpreter or must be cancelled costs only its child, which is killed with everything
  it started and replaced. Children stay warm between tasks, so a task costs one pipe
  round trip, not a process start.
- :class:`~xpipe.worker._thread_executor.ThreadExecutor` (its own module) runs tasks in a
  thread pool in the worker process itself: no isolation, lowest overhead. A thread cannot be killed, so a timeout only stops
  *waiting* for the task (see its docstring).

Both return a ``TaskEvent`` for every run, never raise for what a task does; see
:func:`xpipe.worker._runtask.run_assignment` for the error types.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import importlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from typing import Any, Callable, Sequence, Union

import psutil
from xpipe._backoff import Backoff
from xpipe._proto import common_pb2, worker_pb2
from xpipe.telemetry._logformat import log_ids
from xpipe.telemetry._tracing import TracingConfig

from . import _runtask
from ._runtask import failed_event, pickled_code_refusal
from ._task_limits import TailBuffer, format_bytes, memory_enforcement
from ._tasklogs import LogSink

__all__ = ["TaskExecutor", "ProcessExecutor", "ExecutorStartError", "make_executor"]

logger = logging.getLogger(__name__)

AttemptKey = tuple[str, str, int]
#: Takes an attempt's checkpoint save (see :meth:`TaskExecutor.set_checkpoint_sink`).
CheckpointSink = Callable[[AttemptKey, bytes], None]

#: Extra time a child gets to time out a command by itself (and survive) before it is killed.
_COMMAND_TIMEOUT_SLACK_S = 1.0
#: First and largest delay between attempts to replace a child that failed to start.
_RESPAWN_DELAY_S = (0.1, 30.0)
#: How long stop() waits for a killed child to exit before giving up on it (and logging).
_EXIT_WAIT_S = 10.0

_SIZE = struct.Struct("!i")
_SIZE64 = struct.Struct("!Q")


#: An Assignment, or its AssignmentHead (same field names for what the parent reads).
Assignmentish = Union[worker_pb2.Assignment, worker_pb2.AssignmentHead]


class ExecutorStartError(RuntimeError):
    """An executor could not start: a module in ``imports`` failed, or a child died early."""


def _attempt_key(assignment: worker_pb2.Assignment) -> AttemptKey:
    ref = assignment.attempt
    return (ref.run_id, ref.task, ref.attempt)


def _describe(key: AttemptKey) -> str:
    return f"task {key[1]!r} (run {key[0]}, attempt {key[2]})"


def _needs_code(assignment: worker_pb2.Assignment) -> str:
    """The code hash the task runs by, or "" when it needs no pickled code."""
    task = assignment.task
    if task.WhichOneof("kind") == "python" and not task.python.import_path:
        return task.python.code_hash
    return ""


def _code_missing(assignment: worker_pb2.Assignment, code_hash: str) -> worker_pb2.TaskEvent:
    return failed_event(
        assignment.attempt,
        "CODE_MISSING",
        f"task {assignment.task.name!r} needs pickled code {code_hash[:12]}... which this worker was never sent",
    )


class TaskExecutor(abc.ABC):
    """Runs assignments and reports their outcome; use as ``async with``."""

    allow_pickled: bool
    _code: dict[str, bytes]
    #: How tasks' memory limits are enforced here: "rlimit" or "none" (see ``_limits``).
    memory_enforcement: str
    _artifact_root: str = ""
    _log_sink: LogSink | None = None
    _checkpoint_sink: CheckpointSink | None = None

    def set_log_sink(self, sink: LogSink | None) -> None:
        """Send what tasks write to ``sink(attempt, stream, data)`` (call before :meth:`start`).

        Called on the event loop's thread, with the bytes as they are read: the sink must
        be cheap and must not block (the daemon's is a :class:`~._tasklogs.TaskLogBuffer`).
        """
        self._log_sink = sink

    def set_checkpoint_sink(self, sink: CheckpointSink | None) -> None:
        """Send tasks' ``xpipe.checkpoint()`` saves to ``sink(attempt, serialized CheckpointSave)``.

        Called on the event loop's thread, in the order the task saved; it must not block.
        """
        self._checkpoint_sink = sink

    def set_artifact_root(self, path: str) -> None:
        """Read artifact references in tasks' arguments from inside ``path`` only ("" refuses all)."""
        self._artifact_root = path

    def _admit_code(self, assignment: worker_pb2.Assignment, code_hash: str, code: bytes | None) -> worker_pb2.TaskEvent | None:
        """Keep ``code`` under its hash; return a failure event if the task cannot run."""
        if not self.allow_pickled:
            return pickled_code_refusal(assignment)
        if code is not None:
            self._code[code_hash] = code
        elif code_hash not in self._code:
            return _code_missing(assignment, code_hash)
        return None

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready to run tasks (start processes, import modules).

        Raises:
            ExecutorStartError: a module in ``imports`` cannot be imported.
        """

    @abc.abstractmethod
    async def run(
        self, assignment: Assignmentish, code: bytes | None, *, encoded: bytes | None = None
    ) -> worker_pb2.TaskEvent:
        """Run one assignment; return its ``succeeded`` or ``failed`` TaskEvent.

        Args:
            assignment: the assignment, or only its head when ``encoded`` carries the rest.
            code: the cloudpickled callable when the task refers to one by hash. Give it
                once; the executor keeps it for later tasks with the same hash.
            encoded: the serialized Assignment as the coordinator sent it: the process
                executor hands these bytes to its child as they are (the parent never
                parses nor re-serializes arguments and upstream results).

        Raises:
            RuntimeError: the executor is not started, or is stopping.
            ValueError: this attempt is already running here.
        """

    @abc.abstractmethod
    async def cancel(self, attempt: AttemptKey) -> bool:
        """Cancel ``(run_id, task, attempt)``; its ``run`` returns failed CANCELLED.

        Returns:
            True if the attempt was running or queued here and is now cancelled.
        """

    @abc.abstractmethod
    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let running tasks finish for ``grace_s``, then end them.

        Tasks ended this way, or queued and never started, return failed WORKER_LOST so
        the coordinator runs them elsewhere. Idempotent.
        """

    def refresh_imports(self) -> None:
        """Make tasks that start from now on see packages installed meanwhile (``--allow-install``).

        In-process tasks only need the import system's directory caches dropped; the process
        executor overrides this and replaces its children instead.
        """
        importlib.invalidate_caches()

    async def __aenter__(self) -> "TaskExecutor":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()


# ---- process executor ------------------------------------------------------------


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and the groups of all its descendants.

    A child is its own session and group leader, and runs each command in a group of its
    own, so the groups cover everything a task started. Our own group is never touched.
    """
    groups: set[int] = set()
    try:
        groups.add(os.getpgid(pid))
        for proc in psutil.Process(pid).children(recursive=True):
            try:
                groups.add(os.getpgid(proc.pid))
            except ProcessLookupError:
                pass
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    groups.discard(os.getpgrp())
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_description(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


class _Child:
    """One long-lived executor process and the parent's end of its socket pair."""

    __slots__ = (
        "proc", "sock", "fd", "exit_fd", "pid", "state", "buffer", "out", "key",
        "task_name", "future", "timer", "ready", "exited", "known_code", "output_fds", "tails", "root",
        "memory_limit_bytes", "generation", "log_key",
    )

    def __init__(
        self, proc: subprocess.Popen, sock: socket.socket, loop: asyncio.AbstractEventLoop, output_fds: tuple[int, int]
    ):
        self.proc = proc
        self.pid: int = proc.pid
        self.sock = sock
        self.fd: int = sock.fileno()
        self.state = "starting"  # starting | idle | busy | killed | dead
        self.buffer = bytearray()
        self.out: memoryview | None = None  # unsent part of a request
        self.key: AttemptKey | None = None
        self.task_name = ""
        self.future: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Future = loop.create_future()
        self.exited: asyncio.Future = loop.create_future()
        self.known_code: set[str] = set()
        # The read ends of its stdout and stderr pipes, and what the current attempt wrote.
        self.output_fds = output_fds
        self.tails = (TailBuffer(), TailBuffer())
        self.root: str | None = None  # the artifact directory this child was last told
        self.memory_limit_bytes = 0  # the limit of the task it runs (0: none)
        self.generation = 0  # the executor's generation when it was launched (see refresh_imports)
        # The attempt its output belongs to: the one running, else the one that ran last
        # (bytes read after an answer are what that attempt's leftovers wrote).
        self.log_key: AttemptKey | None = None
        # A pidfd turns readable when the process exits, whoever else holds its pipes.
        try:
            self.exit_fd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits instead
            self.exit_fd = None


class ProcessExecutor(TaskExecutor):
    """Runs each task in one of ``slots`` long-lived child processes.

    Children are fresh interpreters started with ``subprocess`` (like multiprocessing's
    ``spawn``, minus its re-import of the parent's ``__main__``, which would re-run a user
    script that lacks an ``if __name__ == "__main__"`` guard). They get the parent's
    ``sys.path`` and are their own session leaders.

    Each child imports ``imports`` once (so their ``@handler``s register) and keeps its own
    cache of loaded callables. A task with ``timeout_s`` that overruns, a cancelled task
    and a task that kills its interpreter each cost their child, which is killed with its
    process group and replaced in the background.

    Args:
        slots: number of child processes, i.e. tasks running at once.
        imports: modules every child imports at start (``xpipe-worker --import``).
        allow_pickled: run cloudpickled callables; False fails them PICKLED_CODE_REFUSED.
        start_timeout_s: how long a child may take to start and import ``imports``.
        memory_limit_bytes: memory limit of tasks that declare none (0: no limit); a
            task's declared ``resources.memory_bytes`` is its limit. See ``_limits``.
        tracing: where traced attempts' spans go (None: tracing off). Each child exports
            its own spans, since a task's code runs there and opens its spans there.
        worker_name: the ``xpipe.worker`` attribute of task spans.

    A child's stdout and stderr are pipes this executor reads: the last
    ``TASK_OUTPUT_TAIL_BYTES`` of each are kept per attempt and attached to a failed
    attempt's error; none of it reaches the worker's own log.
    """

    def __init__(
        self,
        slots: int,
        *,
        imports: Sequence[str] = (),
        allow_pickled: bool = True,
        start_timeout_s: float = 120.0,
        memory_limit_bytes: int = 0,
        tracing: TracingConfig | None = None,
        worker_name: str = "",
    ):
        if slots < 1:
            raise ValueError(f"an executor needs at least 1 slot, got {slots}")
        self.slots = slots
        self._tracing_argument = _runtask.child_tracing_argument(tracing, worker_name)
        self.imports = tuple(imports)
        self.allow_pickled = allow_pickled
        self.start_timeout_s = start_timeout_s
        if memory_limit_bytes < 0:
            raise ValueError(f"memory_limit_bytes must not be negative, got {memory_limit_bytes}")
        self.memory_limit_bytes = memory_limit_bytes
        self.memory_enforcement = memory_enforcement("process")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._children: set[_Child] = set()
        self._idle: list[_Child] = []
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._queued: dict[AttemptKey, asyncio.Future] = {}
        self._running: dict[AttemptKey, _Child] = {}
        self._cancel_before_start: set[AttemptKey] = set()
        self._code: dict[str, bytes] = {}
        self._respawns: set[asyncio.Task] = set()
        # Bumped by refresh_imports: a child launched before is replaced once it is idle.
        self._generation = 0
        self._started = False
        self._accepting = False
        self._stopping: asyncio.Future | None = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children (for tests and metrics)."""
        return [child.pid for child in self._children if child.state != "dead"]

    # -- lifecycle --

    async def start(self) -> None:
        if self._stopping is not None:
            raise RuntimeError("executor was stopped; make a new one")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        children: list[_Child] = []
        try:
            for _ in range(self.slots):
                children.append(self._launch())
            results = await asyncio.gather(*(self._await_ready(c) for c in children), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            for child in children:
                self._kill(child)
            if children:
                await asyncio.wait([c.exited for c in children], timeout=_EXIT_WAIT_S)
            self._stopping = self._loop.create_future()
            self._stopping.set_result(None)
            raise
        self._accepting = True
        for child in children:
            self._release(child)

    async def stop(self, grace_s: float = 0.0) -> None:
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
            return
        loop = self._loop or asyncio.get_running_loop()
        self._stopping = loop.create_future()
        self._accepting = False
        try:
            await self._shutdown(grace_s)
        finally:
            self._stopping.set_result(None)

    async def _shutdown(self, grace_s: float) -> None:
        for key, waiter in list(self._queued.items()):
            if not waiter.done():
                waiter.set_result(self._lost(key, "executor stopped before task {name!r} started"))
        for task in list(self._respawns):
            task.cancel()
        if self._respawns:
            await asyncio.gather(*self._respawns, return_exceptions=True)
        busy = [c.future for c in self._children if c.state == "busy" and c.future is not None]
        if busy and grace_s > 0:
            await asyncio.wait(busy, timeout=grace_s)
        for child in list(self._children):
            if child.state == "busy" and child.key is not None:
                self._finish(child, self._lost(child.key, f"executor stopped before task {{name!r}} finished "
                                                          f"(grace period {grace_s:g} s)"))
            self._kill(child)
        children = list(self._children)
        if children:
            done, pending = await asyncio.wait([c.exited for c in children], timeout=_EXIT_WAIT_S)
            for child in children:
                if child.exited in pending:
                    logger.error("executor process %d did not exit within %g s of SIGKILL", child.pid, _EXIT_WAIT_S)
        self._idle.clear()

    def _lost(self, key: AttemptKey, template: str) -> worker_pb2.TaskEvent:
        return self._ended(key, "WORKER_LOST", template)

    # -- children --

    def _launch(self) -> _Child:
        assert self._loop is not None
        ours, theirs = socket.socketpair()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            argv = [
                sys.executable,
                *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                "-c",
                _runtask.CHILD_BOOTSTRAP,
                json.dumps(sys.path),
                str(theirs.fileno()),
                str(os.getpid()),
                json.dumps(self.imports),
                str(self.memory_limit_bytes),
                self._tracing_argument,
            ]
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=out_write, stderr=err_write, start_new_session=True)
        except BaseException:
            ours.close()
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            theirs.close()
            os.close(out_write)
            os.close(err_write)
        child = _Child(proc, ours, self._loop, (out_read, err_read))
        child.generation = self._generation
        ours.setblocking(False)
        self._children.add(child)
        self._loop.add_reader(child.fd, self._on_readable, child)
        for stream, fd in enumerate(child.output_fds):
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._drain, child, stream)
        if child.exit_fd is not None:
            self._loop.add_reader(child.exit_fd, self._on_exit, child)
        else:
            self._watch_exit(child)
        logger.debug("started executor process %d", child.pid)
        return child

    def _watch_exit(self, child: _Child) -> None:
        assert self._loop is not None
        loop = self._loop

        def wait() -> None:
            child.proc.wait()
            try:
                loop.call_soon_threadsafe(self._on_exit, child)
            except RuntimeError:  # loop closed: stop() already gave up on this child
                pass

        loop.run_in_executor(None, wait)

    async def _await_ready(self, child: _Child) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), self.start_timeout_s)
        except asyncio.TimeoutError:
            raise ExecutorStartError(
                f"executor process {child.pid} did not start within {self.start_timeout_s:g} s "
                f"(importing {list(self.imports)})"
            ) from None

    async def _respawn(self) -> None:
        """Replace a lost child, retrying with backoff while the executor runs."""
        backoff = Backoff(initial_s=_RESPAWN_DELAY_S[0], max_s=_RESPAWN_DELAY_S[1])
        while self._accepting:
            try:
                child = self._launch()
            except OSError as exc:  # e.g. EAGAIN from fork under memory pressure
                delay = backoff.next_delay()
                logger.error("cannot start an executor process (retrying in %.2g s): %s", delay, exc)
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                continue
            try:
                await self._await_ready(child)
            except ExecutorStartError as exc:
                self._kill(child)
                delay = backoff.next_delay()
                logger.error("cannot replace an executor process (retrying in %.2g s): %s", delay, exc)
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                continue
            except asyncio.CancelledError:
                self._kill(child)
                raise
            self._release(child)
            return

    def _schedule_respawn(self) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._respawn())
        self._respawns.add(task)
        task.add_done_callback(self._respawn_done)

    def _respawn_done(self, task: asyncio.Task) -> None:
        self._respawns.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("replacing an executor process failed", exc_info=task.exception())

    def refresh_imports(self) -> None:
        """Replace every child: idle ones now, busy ones when their task ends.

        A fresh interpreter sees a newly installed package for sure; asking each child to
        drop its import caches before every task would cost the hot path instead. The
        replacements start in the background (a few hundred ms); tasks wait for them.
        """
        importlib.invalidate_caches()
        self._generation += 1
        for child in list(self._idle):
            self._kill(child)  # its exit schedules a fresh child

    def _release(self, child: _Child) -> None:
        """Hand an idle child to the oldest waiting run, or park it (or replace a stale one)."""
        if child.generation != self._generation:  # launched before refresh_imports
            child.state = "idle"  # so that its exit counts as a lost child and a fresh one starts
            self._kill(child)
            return
        child.state = "idle"
        child.key = None
        child.future = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    def _kill(self, child: _Child) -> None:
        if child.state == "dead":
            return
        if child.state != "starting":
            child.state = "killed"
        try:
            self._idle.remove(child)
        except ValueError:
            pass
        _kill_tree(child.pid)

    def _finish(self, child: _Child, event: worker_pb2.TaskEvent) -> None:
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        if child.future is not None and not child.future.done():
            self._attach_output(child, event)
            child.future.set_result(event)

    # -- task output --

    def _drain(self, child: _Child, stream: int) -> None:
        """Read what is waiting in one output pipe into the child's tail for that stream.

        The bytes also go to the log sink, as the output of the attempt the child runs (or
        ran last); none reach the worker's own stdout.
        """
        fd = child.output_fds[stream]
        if fd < 0:
            return
        tail = child.tails[stream]
        sink = self._log_sink
        for _ in range(16):  # at most 1 MiB per call, so one chatty task cannot hog the loop
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the child and everything it started closed the pipe
                assert self._loop is not None
                self._loop.remove_reader(fd)
                os.close(fd)
                fds = list(child.output_fds)
                fds[stream] = -1
                child.output_fds = (fds[0], fds[1])
                return
            tail.append(chunk)
            if sink is not None and child.log_key is not None:
                sink(child.log_key, stream + 1, chunk)

    def _attach_output(self, child: _Child, event: worker_pb2.TaskEvent) -> None:
        """Give a failed attempt what its child wrote; start the next attempt afresh.

        The child flushes its streams before it answers, so what the task wrote is in
        the pipes by the time the answer is read; draining them here catches all of it.
        """
        self._drain(child, 0)
        self._drain(child, 1)
        out, err = child.tails
        if (out.total_bytes or err.total_bytes) and event.WhichOneof("kind") == "failed":
            error = event.failed.error
            if not error.HasField("output"):
                error.output.CopyFrom(common_pb2.TaskOutput(
                    stdout_tail=out.tail(), stderr_tail=err.tail(),
                    stdout_bytes=out.total_bytes, stderr_bytes=err.total_bytes,
                ))  # fmt: skip
        out.clear()
        err.clear()

    def _close_output(self, child: _Child) -> None:
        assert self._loop is not None
        for fd in child.output_fds:
            if fd >= 0:
                self._loop.remove_reader(fd)
                os.close(fd)
        child.output_fds = (-1, -1)

    # -- I/O callbacks --

    def _on_readable(self, child: _Child) -> None:
        while True:
            try:
                data = os.read(child.fd, 1 << 18)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:  # EOF: the child is exiting; _on_exit reports it
                assert self._loop is not None
                self._loop.remove_reader(child.fd)
                break
            child.buffer += data
            if len(data) < 1 << 18:
                break
        buffer = child.buffer
        while len(buffer) >= 4:
            (size,) = _SIZE.unpack_from(buffer)
            kind = size
            start = 4
            if size < 0:  # -1: a big answer; CHECKPOINT_FRAME: a save (both with a 64-bit size)
                if len(buffer) < 12:
                    break
                (size,) = _SIZE64.unpack_from(buffer, 4)
                start = 12
            if len(buffer) < start + size:
                break
            message = bytes(buffer[start : start + size])
            del buffer[: start + size]
            if kind == _runtask.CHECKPOINT_FRAME:
                self._on_checkpoint(child, message)
            else:
                self._on_message(child, message)

    def _on_message(self, child: _Child, message: bytes) -> None:
        if child.state == "starting":
            if message[:1] == _runtask.CHILD_READY:
                child.ready.set_result(None)
            elif not child.ready.done():
                text = message[1:].decode("utf-8", errors="replace")
                child.ready.set_exception(ExecutorStartError(f"executor process {child.pid}: {text}"))
                child.ready.exception()
            return
        if child.state != "busy" or child.key is None:  # a late answer from a child being killed
            return
        try:
            event = worker_pb2.TaskEvent.FromString(message)
        except Exception as exc:  # a task scribbled on the pipe (e.g. os.write to its fd)
            logger.error("executor process %d sent a malformed answer for %s: %s", child.pid, _describe(child.key), exc,
                         extra=log_ids(child.key))
            self._finish(child, self._ended(
                child.key, "TASK_FAILURE", "executor process sent a malformed answer for task {name!r}"))
            self._kill(child)
            return
        self._finish(child, event)
        self._release(child)

    def _on_checkpoint(self, child: _Child, message: bytes) -> None:
        """A save of the attempt the child runs: to the sink (dropped once the attempt ended)."""
        sink = self._checkpoint_sink
        if sink is not None and child.state == "busy" and child.key is not None:
            sink(child.key, message)

    def _on_exit(self, child: _Child) -> None:
        assert self._loop is not None
        loop = self._loop
        if child.state == "dead":
            return
        self._on_readable(child)  # what it said before dying (e.g. which import failed)
        self._drain(child, 0)
        self._drain(child, 1)
        loop.remove_reader(child.fd)
        loop.remove_writer(child.fd)
        if child.exit_fd is not None:
            loop.remove_reader(child.exit_fd)
        # Until we reap it, the child's pid (= its group id) cannot be reused, so this
        # cannot hit a stranger; it ends whatever the child left running in its group.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code: int | None = child.proc.wait(timeout=_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:  # cannot happen once the pidfd fired; be safe
            code = None
        was = child.state
        child.state = "dead"
        self._children.discard(child)
        try:
            self._idle.remove(child)
        except ValueError:
            pass
        if not child.ready.done():
            stderr = child.tails[1].tail()[-2000:].decode("utf-8", errors="replace").strip()
            child.ready.set_exception(ExecutorStartError(
                f"executor process {child.pid} exited during start-up ({_exit_description(code)})"
                + (f"; its stderr ends: {stderr}" if stderr else "")
            ))  # fmt: skip
            child.ready.exception()  # whoever still waits gets it; nobody waiting is fine too
        if was == "busy" and child.key is not None:
            logger.warning("executor process %d died (%s) while running %s",
                           child.pid, _exit_description(code), _describe(child.key), extra=log_ids(child.key))
            ref = worker_pb2.AttemptRef(run_id=child.key[0], task=child.key[1], attempt=child.key[2])
            limit = child.memory_limit_bytes
            self._finish(child, failed_event(
                ref, "TASK_FAILURE",
                f"executor process died with {_exit_description(code)} while running task {child.task_name!r}"
                + (f" (under a memory limit of {format_bytes(limit)}: an allocation it could not handle may have "
                   "been refused)" if limit else ""),
            ))
        elif was == "idle":
            logger.warning("idle executor process %d died (%s)", child.pid, _exit_description(code))
        try:
            self._close_output(child)
            child.sock.close()
            if child.exit_fd is not None:
                os.close(child.exit_fd)
        except Exception:
            logger.exception("closing executor process %d failed", child.pid)
        if not child.exited.done():
            child.exited.set_result(code)
        if self._accepting and was != "starting":
            self._schedule_respawn()

    def _write(self, child: _Child) -> None:
        assert self._loop is not None and child.out is not None
        try:
            while child.out:
                sent = os.write(child.fd, child.out)
                child.out = child.out[sent:]
        except BlockingIOError:
            self._loop.add_writer(child.fd, self._write_more, child)
            return
        except OSError as exc:  # the child is gone; _on_exit reports the task
            logger.warning("cannot send a task to executor process %d: %s", child.pid, exc)
            child.out = None
            self._kill(child)
            child.state = "busy"  # so _on_exit reports the death to the run
            return
        child.out = None

    def _write_more(self, child: _Child) -> None:
        assert self._loop is not None
        self._loop.remove_writer(child.fd)
        if child.out is not None and child.state == "busy":
            self._write(child)

    # -- running --

    async def run(
        self, assignment: Assignmentish, code: bytes | None, *, encoded: bytes | None = None
    ) -> worker_pb2.TaskEvent:
        if not self._accepting:
            raise RuntimeError("executor is not running (not started, or stopping)")
        key = _attempt_key(assignment)
        if key in self._running or key in self._queued:
            raise ValueError(f"{_describe(key)} is already running in this executor")
        code_hash = _needs_code(assignment)
        if code_hash:
            refused = self._admit_code(assignment, code_hash, code)
            if refused is not None:
                return refused
        while True:
            if not self._accepting:
                return self._lost(key, "executor stopped before task {name!r} started")
            if self._idle:
                child = self._idle.pop()
            else:
                got = await self._wait_for_child(key)
                if isinstance(got, worker_pb2.TaskEvent):
                    return got
                child = got
            if child.state != "idle":  # it died between being handed over and now
                continue
            if key in self._cancel_before_start:  # cancelled while the child was handed over
                self._cancel_before_start.discard(key)
                self._release(child)
                return self._ended(key, "CANCELLED", "task {name!r} was cancelled before it started")
            return await self._run_on(child, key, assignment, code_hash, encoded)

    async def _wait_for_child(self, key: AttemptKey) -> _Child | worker_pb2.TaskEvent:
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        self._queued[key] = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and isinstance(waiter.result(), _Child):
                self._release(waiter.result())
            raise
        finally:
            del self._queued[key]

    async def _run_on(
        self, child: _Child, key: AttemptKey, assignment: Assignmentish, code_hash: str, encoded: bytes | None
    ) -> worker_pb2.TaskEvent:
        assert self._loop is not None
        task = assignment.task
        child.state = "busy"
        child.key = key
        child.log_key = key
        child.task_name = task.name
        child.memory_limit_bytes = task.resources.memory_bytes or self.memory_limit_bytes
        future = child.future = self._loop.create_future()
        self._running[key] = child
        try:
            code = b""
            flags = 0
            if code_hash and code_hash not in child.known_code:
                code = self._code[code_hash]
                child.known_code.add(code_hash)
                flags |= _runtask.REQUEST_HAS_CODE
            root = b""
            if child.root != self._artifact_root:  # told once per change, not per task
                child.root = self._artifact_root
                root = child.root.encode()
                flags |= _runtask.REQUEST_HAS_ROOT
            body = encoded if encoded is not None else assignment.SerializeToString()
            request = _runtask.REQUEST_HEADER.pack(flags, len(body), len(root)) + body + root + code
            size = len(request)
            header = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _SIZE64.pack(size)
            child.out = memoryview(header + request)
            self._write(child)
            if task.timeout_s > 0:
                slack = _COMMAND_TIMEOUT_SLACK_S if task.WhichOneof("kind") == "command" else 0.0
                child.timer = self._loop.call_later(task.timeout_s + slack, self._on_timeout, child, key,
                                                    task.timeout_s)
            return await future
        except asyncio.CancelledError:
            if child.key == key and child.state == "busy":
                logger.info("run of %s was cancelled by its caller; killing its executor process", _describe(key),
                            extra=log_ids(key))
                self._finish(child, self._ended(key, "CANCELLED", "task {name!r} was cancelled"))
                self._kill(child)
            raise
        finally:
            del self._running[key]

    def _ended(self, key: AttemptKey, error_type: str, template: str) -> worker_pb2.TaskEvent:
        ref = worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])
        return failed_event(ref, error_type, template.format(name=key[1]))

    def _on_timeout(self, child: _Child, key: AttemptKey, timeout_s: float) -> None:
        child.timer = None
        if child.key != key or child.state != "busy":
            return
        logger.warning("%s timed out after %g s; killing executor process %d", _describe(key), timeout_s, child.pid,
                       extra=log_ids(key))
        self._finish(child, self._ended(key, "TIMEOUT", f"task {{name!r}} timed out after {timeout_s:g} s"))
        self._kill(child)

    async def cancel(self, attempt: AttemptKey) -> bool:
        key = (attempt[0], attempt[1], int(attempt[2]))
        waiter = self._queued.get(key)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(self._ended(key, "CANCELLED", "task {name!r} was cancelled before it started"))
                return True
            if not waiter.cancelled() and isinstance(waiter.result(), _Child):
                self._cancel_before_start.add(key)
                return True
        child = self._running.get(key)
        if child is None or child.state != "busy":
            return False
        logger.info("cancelling %s: killing executor process %d", _describe(key), child.pid)
        self._finish(child, self._ended(key, "CANCELLED", "task {name!r} was cancelled"))
        self._kill(child)
        return True


# ---- thread executor -------------------------------------------------------------


def make_executor(kind: str, slots: int, **kw: Any) -> TaskExecutor:
    """Build the executor ``kind`` names: "process" (isolated, the default) or "thread".

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "process":
        return ProcessExecutor(slots, **kw)
    if kind == "thread":
        from ._thread_executor import ThreadExecutor  # imports this module: not at the top

        return ThreadExecutor(slots, **kw)
    raise ValueError(f"unknown executor kind {kind!r}; expected 'process' or 'thread'")
