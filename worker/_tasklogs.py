"""Captured task output on its way to the coordinator: capped, bounded, batched.

The executors hand every chunk a task writes to :meth:`TaskLogBuffer.add` with the attempt
it belongs to; the daemon's stream takes :meth:`TaskLogBuffer.take` batches after the
outcomes it has to send, so logs never hold up an outcome. The buffer is pure (the clock
is passed in) and single-threaded: the thread executor's routed streams hand their
chunks over through the event loop.

Two limits, both counted rather than silent: each attempt keeps at most
``max_bytes_per_attempt`` (past it, a ``dropped_bytes`` entry says how much went), and
the worker holds at most ``max_pending_bytes`` unsent (a coordinator that is slow or gone
costs dropped output, never unbounded memory).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import io
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xpipe._proto import worker_pb2
from xpipe.telemetry._tasklogs import (
    STDERR,
    STDOUT,
    TASK_LOG_BATCH_MAX_BYTES,
    TASK_LOG_FLUSH_INTERVAL_S,
    TASK_LOG_FORMAT,
    TASK_LOG_MAX_BYTES,
    TASK_LOG_PENDING_MAX_BYTES,
)

__all__ = ["LogSink", "TaskLogBuffer", "current_attempt", "pii_values_of", "route_thread_output", "run_in_attempt"]

AttemptKey = tuple[str, str, int]
#: Where executors send what a task wrote: ``sink(attempt, stream, data)``.
LogSink = Callable[[AttemptKey, int, bytes], None]

#: Ended attempts whose byte counts are remembered, so stray output of processes an
#: attempt left behind still counts against its cap.
_ENDED_REMEMBERED = 4096
#: Adjacent output of one stream is merged into entries up to this size.
_ENTRY_MAX_BYTES = 64 << 10


@dataclass(slots=True)
class _Attempt:
    kept_bytes: int = 0
    dropped: list[int] = field(default_factory=lambda: [0, 0, 0])  # by stream number, not yet reported
    queued: int = 0  # entries of it still in the buffer
    ended: bool = False
    #: A privacy-marked task's PII field names and the values of them it was seen with.
    pii: tuple[tuple[str, ...], frozenset[str]] | None = None


@dataclass(slots=True)
class _Entry:
    key: AttemptKey
    stream: int
    data: bytearray
    dropped: int = 0  # a marker: bytes of the stream dropped here


class TaskLogBuffer:
    """Output of attempts waiting to be shipped; see the module docs.

    Args:
        max_bytes_per_attempt: output kept per attempt, stdout and stderr together.
        max_pending_bytes: unsent output held at most; more is dropped and counted.
        flush_interval_s: output waits at most this long for a batch (an ended attempt's
            does not wait).
    """

    def __init__(
        self,
        max_bytes_per_attempt: int = TASK_LOG_MAX_BYTES,
        *,
        max_pending_bytes: int = TASK_LOG_PENDING_MAX_BYTES,
        flush_interval_s: float = TASK_LOG_FLUSH_INTERVAL_S,
    ):
        if max_bytes_per_attempt < 0:
            raise ValueError(f"max_bytes_per_attempt must not be negative, got {max_bytes_per_attempt}")
        self.max_bytes_per_attempt = max_bytes_per_attempt
        self.max_pending_bytes = max_pending_bytes
        self.flush_interval_s = flush_interval_s
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._ended: collections.OrderedDict[AttemptKey, _Attempt] = collections.OrderedDict()
        self._entries: collections.deque[_Entry] = collections.deque()
        self._to_finish: list[AttemptKey] = []
        self._dropping: set[AttemptKey] = set()  # attempts with drops not yet reported
        self.pending_bytes = 0
        self._oldest_at: float | None = None
        #: Bytes dropped since start: over an attempt's cap, and for want of room to hold them.
        self.dropped_cap_bytes = 0
        self.dropped_pending_bytes = 0

    def add(self, key: AttemptKey, stream: int, data: bytes, now: float) -> None:
        """Take ``data`` that attempt ``key`` wrote on ``stream`` (1 stdout, 2 stderr)."""
        att = self._attempts.get(key)
        if att is None:
            att = self._ended.get(key)
            if att is None:
                att = self._attempts[key] = _Attempt()
            else:  # stray output after the end: counted against the same cap
                self._ended.move_to_end(key)
        size = len(data)
        room = self.max_bytes_per_attempt - att.kept_bytes
        if room < size or self.pending_bytes + min(room, size) > self.max_pending_bytes:
            if room > 0 and self.pending_bytes + min(room, size) <= self.max_pending_bytes:
                self._keep(key, att, stream, data[:room], now)  # the part under the cap
                self.dropped_cap_bytes += size - room
                dropped = size - room
            else:
                if room <= 0:
                    self.dropped_cap_bytes += size
                else:
                    self.dropped_pending_bytes += size
                dropped = size
            att.dropped[stream] += dropped
            self._dropping.add(key)
            if self._oldest_at is None:  # a drop is news too: its marker leaves with the next batch
                self._oldest_at = now
            return
        self._keep(key, att, stream, data, now)

    def protect(self, key: AttemptKey, fields: tuple[str, ...], values: frozenset[str] = frozenset()) -> None:
        """Scrub attempt ``key``'s output of ``fields``' pairs and of ``values`` before it leaves.

        For tasks marked with ``@comply_with_gdpr`` / ``@ensure_privacy_compliance``; called
        again with more values (those of its result) they are added. Scrubbing happens in
        :meth:`take`, on whole entries (adjacent writes merged), so only marked tasks pay.
        """
        att = self._attempts.get(key) or self._ended.get(key)
        if att is None:
            att = self._attempts[key] = _Attempt()
        known = att.pii[1] if att.pii is not None else frozenset()
        att.pii = (fields, known | values)

    def scrub_error(self, key: AttemptKey, error: Any) -> None:
        """Scrub a marked attempt's ``TaskError`` (message, traceback, output tails) like its logs."""
        att = self._attempts.get(key) or self._ended.get(key)
        if att is None or att.pii is None:
            return
        from xpipe.security._privacy import redact_text

        fields, values = att.pii
        error.message = redact_text(error.message, fields, values)
        error.traceback = redact_text(error.traceback, fields, values)
        if error.HasField("output"):
            error.output.stdout_tail = _scrub(error.output.stdout_tail, fields, values)
            error.output.stderr_tail = _scrub(error.output.stderr_tail, fields, values)

    def end(self, key: AttemptKey) -> None:
        """Attempt ``key`` ended: ship what it wrote now, with a final entry.

        An attempt that wrote nothing costs a dict lookup here and nothing on the wire.
        """
        att = self._attempts.get(key)
        if att is not None and not att.ended:
            att.ended = True
            self._to_finish.append(key)

    def due(self, now: float) -> bool:
        """Whether a batch should leave now: an attempt ended, or output waited long enough."""
        if self._to_finish:
            return True
        return self._oldest_at is not None and now - self._oldest_at >= self.flush_interval_s

    def wait_s(self, now: float) -> float | None:
        """How long until :meth:`due` turns true by itself (None: nothing waits)."""
        if self._to_finish:
            return 0.0
        if self._oldest_at is None:
            return None
        return max(0.0, self._oldest_at + self.flush_interval_s - now)

    def take(self, max_bytes: int = TASK_LOG_BATCH_MAX_BYTES) -> worker_pb2.TaskLogBatch | None:
        """The next batch (at most about ``max_bytes`` of output), or None if nothing waits."""
        out: list[worker_pb2.TaskLogEntry] = []
        size = 0
        entries = self._entries
        while entries and (size == 0 or size + len(entries[0].data) <= max_bytes):
            entry = entries.popleft()
            size += len(entry.data)
            att = self._attempts.get(entry.key) or self._ended.get(entry.key)
            data = bytes(entry.data)
            if att is not None:
                att.queued -= 1
                if att.pii is not None and data:
                    data = _scrub(data, *att.pii)
            out.append(worker_pb2.TaskLogEntry(
                attempt=_ref(entry.key), stream=entry.stream, data=data, dropped_bytes=entry.dropped))
        self.pending_bytes -= size
        for key in list(self._dropping):
            att = self._attempts.get(key) or self._ended.get(key)
            if att is None:  # forgotten meanwhile: nothing left to report
                self._dropping.discard(key)
                continue
            if att.queued:
                continue  # its marker goes after the output still queued
            self._dropping.discard(key)
            self._report_drops(key, att, out)
        still: list[AttemptKey] = []
        for key in self._to_finish:
            att = self._attempts[key]
            if att.queued:
                still.append(key)
                continue
            self._report_drops(key, att, out)
            out.append(worker_pb2.TaskLogEntry(attempt=_ref(key), final=True))
            del self._attempts[key]
            self._ended[key] = att
            if len(self._ended) > _ENDED_REMEMBERED:
                self._ended.popitem(last=False)
        self._to_finish = still
        self._oldest_at = None if not entries and not self._dropping else self._oldest_at
        return worker_pb2.TaskLogBatch(entries=out) if out else None

    # -- internals --

    def _keep(self, key: AttemptKey, att: _Attempt, stream: int, data: bytes, now: float) -> None:
        if att.dropped[stream]:  # what was shed before this part: its marker goes first
            self._entries.append(_Entry(key, stream, bytearray(), att.dropped[stream]))
            att.queued += 1
            att.dropped[stream] = 0
        last = self._entries[-1] if self._entries else None
        if (last is not None and last.key == key and last.stream == stream and not last.dropped
                and len(last.data) < _ENTRY_MAX_BYTES):
            last.data += data
        else:
            self._entries.append(_Entry(key, stream, bytearray(data)))
            att.queued += 1
        att.kept_bytes += len(data)
        self.pending_bytes += len(data)
        if self._oldest_at is None:
            self._oldest_at = now

    @staticmethod
    def _report_drops(key: AttemptKey, att: _Attempt, out: list[worker_pb2.TaskLogEntry]) -> None:
        for stream in (STDOUT, STDERR):
            if att.dropped[stream]:
                out.append(worker_pb2.TaskLogEntry(attempt=_ref(key), stream=stream, dropped_bytes=att.dropped[stream]))
                att.dropped[stream] = 0


def pii_values_of(fields: tuple[str, ...], *encoded_payloads: bytes) -> frozenset[str]:
    """The values ``fields`` hold in a task's inputs or output (serialized ``Payload``s).

    Read without running code (plain JSON and pickled builtin values only; see
    ``xpipe.security._privacy.plain_payload_value``); a payload that cannot be read so adds
    nothing, and the ``field=value`` patterns still apply.
    """
    from google.protobuf.message import DecodeError
    from xpipe._proto import common_pb2
    from xpipe.security._privacy import NotInspectable, pii_values, plain_payload_value

    found: set[str] = set()
    for encoded in encoded_payloads:
        if not encoded:
            continue
        try:
            found |= pii_values(plain_payload_value(common_pb2.Payload.FromString(encoded)), fields)
        except (NotInspectable, DecodeError):
            continue
    return frozenset(found)


def _scrub(data: bytes, fields: tuple[str, ...], values: frozenset[str]) -> bytes:
    from xpipe.security._privacy import redact_text  # only marked tasks load it

    return redact_text(data.decode("utf-8", "replace"), fields, values).encode()


def _ref(key: AttemptKey) -> worker_pb2.AttemptRef:
    return worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2])


# ---- the thread executor: output routed by context ------------------------------

#: The attempt the current thread runs (the thread executor sets it around each task).
current_attempt: contextvars.ContextVar[AttemptKey | None] = contextvars.ContextVar("xpipe_attempt", default=None)


class _RoutedBuffer(io.RawIOBase):
    """``sys.stdout.buffer`` of a routed stream: bytes go where the text goes."""

    def __init__(self, owner: _RoutedStream):
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        key = current_attempt.get()
        if key is None:
            original = self._owner.original
            original.flush()
            return original.buffer.write(data)
        self._owner.sink(key, self._owner.stream, data)
        return len(data)


class _RoutedStream(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: a task thread's writes go to its attempt."""

    def __init__(self, original: Any, stream: int, sink: LogSink):
        self.original = original
        self.stream = stream
        self.sink = sink
        self._buffer = _RoutedBuffer(self)

    @property
    def buffer(self) -> _RoutedBuffer:  # type: ignore[override]
        return self._buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        key = current_attempt.get()
        if key is None:
            return self.original.write(text)
        self.sink(key, self.stream, text.encode("utf-8", errors="replace"))
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return False


class _RoutedLogHandler(logging.Handler):
    """Formats records logged inside a task thread into that attempt's stderr."""

    def __init__(self, sink: LogSink):
        super().__init__()
        self.sink = sink
        self.setFormatter(logging.Formatter(TASK_LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        key = current_attempt.get()
        if key is None:
            return
        try:
            self.sink(key, STDERR, (self.format(record) + "\n").encode("utf-8", errors="replace"))
        except Exception:  # noqa: BLE001 - logging must never raise into the task
            self.handleError(record)


def _outside_tasks(record: logging.LogRecord) -> bool:
    return current_attempt.get() is None


def run_in_attempt(key: AttemptKey, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a task thread with its output routed to attempt ``key``."""
    token = current_attempt.set(key)
    try:
        return fn(*args)
    finally:
        current_attempt.reset(token)


def route_thread_output(sink: LogSink, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Send what task threads print and log to ``sink`` on ``loop``; return the undo.

    Only what goes through ``sys.stdout``/``sys.stderr`` and ``logging`` in the thread that
    runs the task (and threads started with its context copied) is caught: output of C
    code and of subprocesses writing to the file descriptors directly reaches the worker's
    own stdout. ``sink`` is called on the loop's thread, like the process executor's.
    """

    def from_thread(key: AttemptKey, stream: int, data: bytes) -> None:
        try:
            loop.call_soon_threadsafe(sink, key, stream, data)
        except RuntimeError:  # the loop is closed: the worker is gone
            pass

    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = _RoutedStream(old_out, STDOUT, from_thread)
    sys.stderr = _RoutedStream(old_err, STDERR, from_thread)
    handler = _RoutedLogHandler(from_thread)
    root = logging.getLogger()
    others = list(root.handlers)
    for other in others:
        other.addFilter(_outside_tasks)
    root.addHandler(handler)

    def undo() -> None:
        root.removeHandler(handler)
        for other in others:
            other.removeFilter(_outside_tasks)
        if isinstance(sys.stdout, _RoutedStream):
            sys.stdout = old_out
        if isinstance(sys.stderr, _RoutedStream):
            sys.stderr = old_err

    return undo
