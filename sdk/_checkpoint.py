"""Task checkpoints: a long task saves its progress, and a later attempt resumes from it.

Inside a task, :func:`checkpoint` saves a state and :func:`last_checkpoint` reads the newest
one of this task in this run: saved by this attempt, else the one an earlier attempt saved
(a retry, or the attempt that replaced one whose worker died), which arrives with the
assignment itself, so reading it costs no round trip.

Path of a save: the task's process encodes the state here (so a state that cannot be
encoded, or is over :data:`~xpipe._limits.MAX_TASK_CHECKPOINT_BYTES`, fails at the call)
and hands it to its worker daemon, which sends it on its stream to the coordinator, which
stores it with the task and puts it in the task's next assignment. The save is
asynchronous: :func:`checkpoint` returns once the worker daemon has it (a pipe write),
not once the coordinator stored it; a worker killed at that moment loses the saves still on
their way (at a normal pace only the last), and the next attempt resumes from the newest
one the coordinator stored. Acknowledged saves would cost a
round trip to the coordinator and a store commit per call; a task that checkpoints to skip
work can afford to redo one step.

With ``configure_fault_tolerance(checkpoint_interval=...)`` saves of one attempt are at
least that far apart: a :func:`checkpoint` within the interval after the last sent one is
held here (a newer one replaces it) and sent when the interval has passed, by a timer, or
when the attempt fails; after a success it is dropped, as no attempt will need it.

The worker's task runner makes one :class:`TaskCheckpoints` per attempt of a Python or
handler task, and gives it how to send (``send``) and how to write a big state to the
artifact directory (``store_big``): the SDK imports no worker code.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any, Callable

from . import _codec
from ._limits import MAX_TASK_CHECKPOINT_BYTES
from ._proto import common_pb2, worker_pb2
from .errors import SerializationError, XpipeError

__all__ = ["checkpoint", "last_checkpoint", "TaskCheckpoints", "AttemptCheckpoints", "CheckpointOutsideTaskError"]

#: The checkpoints of the attempt running in this thread (the thread executor runs several).
_CURRENT: contextvars.ContextVar[AttemptCheckpoints | None] = contextvars.ContextVar("xpipe_checkpoints", default=None)
#: The attempt running in this process's main thread: an executor child runs one task at a
#: time there, so threads the task starts may checkpoint too.
_MAIN_THREAD: AttemptCheckpoints | None = None
_MAIN_THREAD_ID = threading.main_thread().ident


class CheckpointOutsideTaskError(XpipeError, RuntimeError):
    """:func:`checkpoint` or :func:`last_checkpoint` was called outside a running task."""


def _current(call: str) -> TaskCheckpoints:
    found = _CURRENT.get() or _MAIN_THREAD
    if found is None:
        raise CheckpointOutsideTaskError(
            f"xpipe.{call}() works only inside a Python or handler task run by an xpipe worker "
            "(a command task, or code outside a task, has no attempt to save for)"
        )
    return found.book(call)


def checkpoint(state: Any) -> None:
    """Save ``state`` as this task's progress, for a later attempt to resume from.

    The state is encoded now (later changes to the object are not saved) with the task's
    codec (pickle). Big states go to the artifact directory, like big results.

    Raises:
        CheckpointOutsideTaskError: not called inside a running Python or handler task.
        SerializationError: ``state`` cannot be encoded (the error names its type), or it
            is over :data:`~xpipe._limits.MAX_TASK_CHECKPOINT_BYTES` encoded.
    """
    _current("checkpoint").save(state)


def last_checkpoint() -> Any:
    """The newest state saved by :func:`checkpoint` for this task in this run, or None.

    Raises:
        CheckpointOutsideTaskError: not called inside a running Python or handler task.
        SerializationError: the saved state cannot be decoded here (for example its
            artifact is not readable on this worker).
    """
    return _current("last_checkpoint").last()


class TaskCheckpoints:
    """The checkpoints of one running attempt: the one it started with, and its own saves.

    Args:
        attempt: the running attempt.
        task: its spec (name, ``checkpoint_interval_s``).
        saved: the state an earlier attempt saved (``Assignment.checkpoint``), or None.
        send: hands a serialized ``CheckpointSave`` to the worker daemon; called from the
            task's thread or the interval timer's, never from two at once.
        store_big: given an encoded state, writes it to the artifact directory when it is
            big and returns its reference ("" when small or not written: it then travels inline).
        artifact_root: where ``saved`` may be read from when it is a reference.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        attempt: worker_pb2.AttemptRef,
        task: common_pb2.TaskSpec,
        saved: common_pb2.Payload | None,
        send: Callable[[bytes], None],
        *,
        store_big: Callable[[bytes], str] | None = None,
        artifact_root: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.attempt = attempt
        self.task_name = task.name
        self.interval_s = max(0.0, task.checkpoint_interval_s)
        self._latest = saved  # newest state known here: given at start, or saved since
        self._send = send
        self._store_big = store_big
        self._artifact_root = artifact_root
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._sent_at: float | None = None
        self._pending: common_pb2.Payload | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        #: How many saves were sent and how many were held and replaced (for tests and logs).
        self.sent = 0
        self.coalesced = 0

    # -- task side --

    def save(self, state: Any) -> None:
        what = f"checkpoint state of task {self.task_name!r}"
        try:
            payload = _codec.encode(state, "pickle", what=what)
        except SerializationError as exc:
            raise SerializationError(f"xpipe.checkpoint(): {exc}") from exc
        if len(payload.data) > MAX_TASK_CHECKPOINT_BYTES:
            raise SerializationError(
                f"xpipe.checkpoint(): the {what} is {len(payload.data)} bytes encoded, over the limit of "
                f"{MAX_TASK_CHECKPOINT_BYTES} bytes (MAX_TASK_CHECKPOINT_BYTES); save less (a position, a "
                "file path) and keep bulk data in files of your own"
            )
        with self._lock:
            if self._closed:
                raise CheckpointOutsideTaskError(f"xpipe.checkpoint(): the attempt of task {self.task_name!r} has ended")
            self._latest = payload
            now = self._clock()
            if self._sent_at is None or now - self._sent_at >= self.interval_s:
                if self._pending is not None:
                    self.coalesced += 1
                self._pending = None
                self._send_locked(payload, now)
                return
            if self._pending is not None:
                self.coalesced += 1
            self._pending = payload
            if self._timer is None:
                self._timer = threading.Timer(self._sent_at + self.interval_s - now, self._due)
                self._timer.daemon = True
                self._timer.start()

    def last(self) -> Any:
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        return _codec.decode(latest, what=f"last checkpoint of task {self.task_name!r}",
                             artifact_root=self._artifact_root)  # fmt: skip

    # -- runner side --

    def close(self, *, flush: bool) -> None:
        """End the attempt: send a held state when ``flush`` (it failed), else drop it.

        Later :func:`checkpoint` calls (from threads it left behind) raise.
        """
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
            pending, self._pending = self._pending, None
            if flush and pending is not None:
                self._send_locked(pending, self._clock())
            elif pending is not None:
                self.coalesced += 1
        if timer is not None:
            timer.cancel()
            timer.join()  # a timer already sending finishes before the attempt's answer goes

    def _due(self) -> None:
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None and not self._closed:
                self._send_locked(pending, self._clock())

    def _send_locked(self, payload: common_pb2.Payload, now: float) -> None:
        if self._store_big is not None and payload.data:
            ref = self._store_big(payload.data)
            if ref:
                payload = common_pb2.Payload(codec=payload.codec, zstd=payload.zstd, artifact_ref=ref,
                                             size_bytes=payload.size_bytes)  # fmt: skip
                self._latest = payload
        self._seq += 1
        self._sent_at = now
        self.sent += 1
        self._send(worker_pb2.CheckpointSave(attempt=self.attempt, seq=self._seq, state=payload).SerializeToString())


class AttemptCheckpoints:
    """What every Python or handler attempt gets: its :class:`TaskCheckpoints`, made on first use.

    Most tasks never checkpoint, so the runner pays for a contextvar and this small object
    per attempt, not for the book (measured on a loaded machine: ~1 µs against ~3 µs).

    Args:
        make: builds the attempt's book (called at most once, by the first call in the task).
    """

    __slots__ = ("_make", "_book", "_token", "_main", "_ended")

    def __init__(self, make: Callable[[], TaskCheckpoints]):
        self._make = make
        self._book: TaskCheckpoints | None = None
        self._token: contextvars.Token | None = None
        self._main = False
        self._ended = False

    def book(self, call: str) -> TaskCheckpoints:
        if self._book is None:
            if self._ended:
                raise CheckpointOutsideTaskError(f"xpipe.{call}(): the attempt that called it has ended")
            self._book = self._make()
        return self._book

    def start(self) -> None:
        """Make this attempt the current one of this thread (and of the process, in its main thread)."""
        global _MAIN_THREAD
        self._token = _CURRENT.set(self)
        if threading.get_ident() == _MAIN_THREAD_ID:
            self._main = True
            _MAIN_THREAD = self

    def close(self, *, flush: bool) -> None:
        """End the attempt (see :meth:`TaskCheckpoints.close`); it is current nowhere after."""
        global _MAIN_THREAD
        self._ended = True
        if self._book is not None:
            self._book.close(flush=flush)
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if self._main and _MAIN_THREAD is self:
            _MAIN_THREAD = None
