"""Task logs on the coordinator: kept per (run, task, attempt), capped, on disk, served.

Apart from the state machine on purpose: logs are not scheduling state, are never
replayed and never wait for a store commit. Workers' batches are taken on the stream
reader (:meth:`TaskLogStore.append`, no I/O there) and written by one background task
to a SQLite database file of their own (``DATA_DIR/task-logs.db``), so they survive a
restart whatever the run store is (with the etcd store each coordinator keeps the logs
its workers sent it). ``GetTaskLogs`` reads from that file.

Bounds: each attempt keeps at most ``max_bytes_per_attempt`` (the workers cap first; this
holds a worker that does not); output waiting for the writer is held up to
``max_pending_bytes`` and shed past it with a counted marker. Nothing else is kept in
memory but small per-attempt counters (bounded too).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from xpipe._domain import TERMINAL_TASK_STATES
from xpipe._limits import MAX_NAME_CHARS
from xpipe._proto import worker_pb2
from xpipe.security._atrest import AtRest, open_value
from xpipe.telemetry._tasklogs import STDERR, STDOUT, TASK_LOG_LAG_S, TASK_LOG_MAX_BYTES, TASK_LOG_SETTLE_S

__all__ = [
    "READ_ROWS", "TASK_LOG_DB", "LogFollower", "LogRow", "TaskLogStore", "check_log_batch", "logs_awaited", "logs_lag_s",
]  # fmt: skip

log = logging.getLogger(__name__)

#: The file under the coordinator's data directory.
TASK_LOG_DB = "task-logs.db"
#: Output from workers held for the writer at most; more is shed with a marker.
_PENDING_MAX_BYTES = 32 << 20
#: Attempts whose counters (bytes kept, final seen) stay in memory; older ones are read back.
_COUNTERS_KEPT = 100_000
#: Rows one read returns at most (a follower asks again for more).
READ_ROWS = 512
#: A run's id is at most this long (uuid4 hex today; room to spare).
_MAX_RUN_ID_CHARS = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    data BLOB NOT NULL,
    dropped INTEGER NOT NULL,
    final INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_by_run ON task_logs (run_id, seq);
"""

AttemptKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class LogRow:
    """One stored piece of an attempt's log (``final`` rows carry no data)."""

    seq: int
    task: str
    attempt: int
    stream: int
    data: bytes
    dropped_bytes: int
    final: bool
    at: float


def _log_aad(run_id: str, task: str, attempt: int) -> bytes:
    """A sealed log chunk's place (AES-GCM associated data)."""
    return f"log:{run_id}/{task}.{attempt}".encode()


def check_log_batch(batch: worker_pb2.TaskLogBatch) -> str:
    """Why a worker's log batch cannot be taken ("" if it can)."""
    for i, entry in enumerate(batch.entries):
        ref = entry.attempt
        if not ref.run_id or len(ref.run_id) > _MAX_RUN_ID_CHARS:
            return f"TaskLogBatch.entries[{i}].attempt.run_id must have 1 to {_MAX_RUN_ID_CHARS} chars"
        if not ref.task or len(ref.task) > MAX_NAME_CHARS:
            return f"TaskLogBatch.entries[{i}].attempt.task must have 1 to {MAX_NAME_CHARS} chars"
        if entry.stream not in (STDOUT, STDERR) and (entry.data or entry.dropped_bytes):
            return (f"TaskLogBatch.entries[{i}].stream is {entry.stream}; "
                    "output must be stdout (1) or stderr (2)")  # fmt: skip
    return ""


class TaskLogStore:
    """See the module docs. ``path`` None keeps the logs in memory (tests, throwaway runs).

    With ``crypt`` (``--encryption-key-file``) each row's output is sealed on the writer
    thread, bound to its run, task and attempt; rows written before stay readable.

    Use ``async with``, or :meth:`open` and :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        max_bytes_per_attempt: int = TASK_LOG_MAX_BYTES,
        max_pending_bytes: int = _PENDING_MAX_BYTES,
        crypt: AtRest | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.max_bytes_per_attempt = max_bytes_per_attempt
        self.max_pending_bytes = max_pending_bytes
        self.crypt = crypt
        self._db: sqlite3.Connection | None = None
        # One thread owns the connection: writes and reads queue behind each other there,
        # never on the event loop.
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xpipe-task-logs")
        self._pending: list[tuple] = []
        self._pending_bytes = 0
        self._kept: collections.OrderedDict[AttemptKey, int] = collections.OrderedDict()
        self._shed: dict[tuple[str, str, int, int], int] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        # run id -> (event set on new rows, followers sharing it)
        self._changed: dict[str, list] = {}
        self._closed = False
        #: Bytes dropped here: over the cap (a worker that does not cap) or shed for want of room.
        self.dropped_bytes = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="xpipe-task-logs")
        self._writer.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task) -> None:
        # Said at once, not at close: logs waiting from now on are held up to the bound, then shed.
        if not task.cancelled() and task.exception() is not None:
            log.error("the task log writer stopped; new task logs are no longer written to %s", self.path,
                      exc_info=task.exception())  # fmt: skip

    def _open_sync(self) -> None:
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Task output may hold secrets: readable by the coordinator's user only, like the store.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # Logs are diagnostics: a power cut may lose the last moments of them, never the runs.
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        """Write what is pending, then close (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._wake.set()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, self._flush_sync, self._take_pending())
        finally:
            await loop.run_in_executor(self._io, self._close_sync)
            self._io.shutdown(wait=True)
            for event, _ in self._changed.values():
                event.set()

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writing

    def append(self, batch: worker_pb2.TaskLogBatch, now: float) -> None:
        """Take a worker's batch (checked with :func:`check_log_batch`); written soon after."""
        if self._closed:
            return
        for entry in batch.entries:
            ref = entry.attempt
            key = (ref.run_id, ref.task, ref.attempt)
            data = entry.data
            dropped = entry.dropped_bytes
            if data:
                kept = self._kept.get(key, 0)
                room = self.max_bytes_per_attempt - kept
                if room < len(data):
                    cut = len(data) - max(room, 0)
                    dropped += cut
                    self.dropped_bytes += cut
                    data = data[: max(room, 0)]
                if data and self._pending_bytes + len(data) > self.max_pending_bytes:
                    shed = (ref.run_id, ref.task, ref.attempt, entry.stream)
                    self._shed[shed] = self._shed.get(shed, 0) + len(data)
                    self.dropped_bytes += len(data)
                    data = b""
                if data:
                    self._kept[key] = kept + len(data)
                    self._kept.move_to_end(key)
                    if len(self._kept) > _COUNTERS_KEPT:
                        self._kept.popitem(last=False)
            if not data and not dropped and not entry.final:
                continue
            row = (ref.run_id, ref.task, ref.attempt, entry.stream, data, dropped, int(entry.final), now)
            self._pending.append(row)
            self._pending_bytes += len(data)
        if self._pending:
            self._wake.set()

    def _take_pending(self) -> list[tuple]:
        rows, self._pending, self._pending_bytes = self._pending, [], 0
        if self._shed:  # markers for what was shed, so readers see a gap was there
            now = time.time()
            rows.extend((run, task, attempt, stream, b"", n, 0, now)
                        for (run, task, attempt, stream), n in self._shed.items())  # fmt: skip
            self._shed.clear()
        return rows

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write(self._take_pending())

    async def _write(self, rows: list[tuple]) -> None:
        """Write ``rows`` on the store's thread, then wake the followers of their runs."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._io, self._flush_sync, rows)
        except sqlite3.Error:
            # Logs are diagnostics: a full disk loses these rows, never a run; say so and go on.
            log.exception("cannot write %d task log rows to %s; they are lost", len(rows), self.path)
            return
        for run_id in {row[0] for row in rows}:
            watched = self._changed.get(run_id)
            if watched is not None:
                watched[0].set()

    def _flush_sync(self, rows: list[tuple]) -> None:
        if not rows or self._db is None:
            return
        crypt = self.crypt
        if crypt is not None:  # here, off the event loop
            rows = [(r[0], r[1], r[2], r[3], crypt.seal(r[4], _log_aad(r[0], r[1], r[2])) if r[4] else r[4], *r[5:])
                    for r in rows]  # fmt: skip
        with self._db:  # one transaction per turn, however many rows
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO task_logs (run_id, task, attempt, stream, data, dropped, final, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    # ------------------------------------------------------------------ reading

    async def read(
        self, run_id: str, task: str = "", attempt: int = 0, *, after_seq: int = 0
    ) -> list[LogRow]:
        """Rows of the run (of ``task``, of ``attempt`` when not 0) after ``after_seq``, oldest first."""
        if self._closed:
            return []
        # What was appended before this read is written first (the same thread runs both, in
        # order), so a reader right after a task ended sees the batch that came after its outcome.
        await self._write(self._take_pending())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._read_sync, run_id, task, attempt, after_seq)

    def _read_sync(self, run_id: str, task: str, attempt: int, after_seq: int) -> list[LogRow]:
        if self._db is None:
            return []
        sql = ("SELECT seq, task, attempt, stream, data, dropped, final, at FROM task_logs "
               "WHERE run_id = ? AND seq > ?")  # fmt: skip
        args: list = [run_id, after_seq]
        if task:
            sql += " AND task = ?"
            args.append(task)
        if attempt:
            sql += " AND attempt = ?"
            args.append(attempt)
        sql += f" ORDER BY seq LIMIT {READ_ROWS}"
        crypt = self.crypt
        return [
            LogRow(seq, t, a, stream,
                   open_value(crypt, data, _log_aad(run_id, t, a), f"task log of {run_id}/{t} attempt {a}"),
                   dropped, bool(final), at)
            for seq, t, a, stream, data, dropped, final, at in self._db.execute(sql, args)
        ]  # fmt: skip

    def watch(self, run_id: str) -> asyncio.Event:
        """An event set whenever rows of ``run_id`` were written (clear it before reading)."""
        watched = self._changed.get(run_id)
        if watched is None:
            watched = self._changed[run_id] = [asyncio.Event(), 0]
        watched[1] += 1
        return watched[0]

    def unwatch(self, run_id: str, event: asyncio.Event) -> None:
        """One follower of the run is gone; the run's event goes with the last."""
        watched = self._changed.get(run_id)
        if watched is not None and watched[0] is event:
            watched[1] -= 1
            if watched[1] <= 0:
                del self._changed[run_id]

    # ------------------------------------------------------------------ governance (retention, forgetting)

    async def usage(self, run_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``{run_id: (rows, bytes)}`` of the logs kept for these runs (runs with none left out)."""
        return await self._governed(self._usage_sync, run_ids)

    def _usage_sync(self, run_ids: list[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT run_id, COUNT(*), SUM(LENGTH(data)) FROM task_logs WHERE run_id IN ({marks}) GROUP BY run_id",
                chunk,
            )
            out.update({run: (count, size or 0) for run, count, size in rows})
        return out

    async def run_ids(self) -> set[str]:
        """Every run with log rows here."""
        return await self._governed(lambda: {r for (r,) in self._db.execute("SELECT DISTINCT run_id FROM task_logs")})

    async def delete_runs(self, run_ids: list[str]) -> int:
        """Delete every log row of these runs; returns the rows deleted."""
        return await self._governed(self._delete_runs_sync, run_ids)

    def _delete_runs_sync(self, run_ids: list[str]) -> int:
        deleted = 0
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            with self._db:
                deleted += self._db.execute(
                    f"DELETE FROM task_logs WHERE run_id IN ({','.join('?' * len(chunk))})", chunk
                ).rowcount
        return deleted

    async def forget(self, value: str) -> tuple[int, set[tuple[str, str]]]:
        """Delete every log line holding ``value``; returns (lines removed, (run, task) touched)."""
        return await self._governed(self._forget_sync, value.encode())

    def _forget_sync(self, needle: bytes) -> tuple[int, set[tuple[str, str]]]:
        removed = 0
        touched: set[tuple[str, str]] = set()
        crypt = self.crypt
        if crypt is None:  # plain rows: SQLite finds the ones holding the value
            rows = self._db.execute(
                "SELECT seq, run_id, task, attempt, data FROM task_logs WHERE instr(data, ?) > 0", (needle,)
            ).fetchall()
        else:  # sealed rows: every one is opened (and the changed ones sealed again)
            rows = []
            for seq, run_id, task, attempt, data in self._db.execute(
                "SELECT seq, run_id, task, attempt, data FROM task_logs WHERE data IS NOT NULL AND length(data) > 0"
            ):
                clear = open_value(crypt, data, _log_aad(run_id, task, attempt), f"task log of {run_id}/{task}")
                if needle in clear:
                    rows.append((seq, run_id, task, attempt, clear))
        with self._db:
            self._db.execute("BEGIN")
            for seq, run_id, task, attempt, data in rows:
                lines = bytes(data).splitlines(keepends=True)
                kept_lines = [line for line in lines if needle not in line]
                removed += len(lines) - len(kept_lines)
                kept = b"".join(kept_lines)
                touched.add((run_id, task))
                if crypt is not None and kept:
                    kept = crypt.seal(kept, _log_aad(run_id, task, attempt))
                self._db.execute("UPDATE task_logs SET data = ? WHERE seq = ?", (kept, seq))
        return removed, touched

    async def _governed(self, fn, *args):
        if self._closed or self._db is None:
            raise RuntimeError("the task log store is closed")
        await self._write(self._take_pending())  # what was sent before is judged too
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


# ---- when a reader has it all (pure: the run's entries and the clock are passed in) ----

Finals = set[tuple[str, int]]


def logs_awaited(run: Any, task: str, attempt: int, finals: Finals) -> bool | None:
    """For a follower: True while tasks run, False when they finished but logs may lag, None when done.

    Args:
        run: the run's entry in the state machine (None: not in memory, long finished).
        task: the task followed ("": every task of the run); attempt: the one followed (0: all).
        finals: (task, attempt) of the final log entries seen so far.
    """
    if run is None:
        return None
    missing = False
    for entry in [run.tasks[task]] if task else run.tasks.values():
        if attempt and entry.attempt > attempt:  # the attempt followed is over
            missing = missing or (entry.name, attempt) not in finals
            continue
        if entry.state not in TERMINAL_TASK_STATES:
            return True
        if entry.attempt and (entry.name, attempt or entry.attempt) not in finals:
            missing = True
    return False if missing else None


def logs_lag_s(run: Any, task: str, attempt: int, finals: Finals, now: float) -> float:
    """How long a plain read should wait for the final entries of tasks that just finished (0: none).

    A task's last log batch travels right behind its outcome; one that finished less than
    :data:`TASK_LOG_LAG_S` ago (``now`` and ``finished_at`` are unix seconds) without its
    final entry is waited for until then. One that wrote nothing costs that whole wait.
    """
    if run is None:
        return 0.0
    wait_s = 0.0
    for entry in [run.tasks[task]] if task else run.tasks.values():
        recent = entry.finished_at > now - TASK_LOG_LAG_S
        if recent and entry.state in TERMINAL_TASK_STATES and entry.attempt and (
            entry.name, attempt or entry.attempt) not in finals:  # fmt: skip
            wait_s = max(wait_s, entry.finished_at + TASK_LOG_LAG_S - now)
    return min(wait_s, TASK_LOG_LAG_S)


class LogFollower:
    """Reads a task's (or a run's) stored log rows, and with ``follow`` waits for more.

    The one loop behind ``GetTaskLogs`` and the dashboard's log stream. :meth:`rows` yields
    each row but the final markers, and ``None`` after every wait that brought nothing, so
    a caller can send a heartbeat or notice a shutdown. It ends when everything asked about
    is done: every task finished and its worker's final entry for the attempt arrived, or
    :data:`TASK_LOG_SETTLE_S` passed since it finished (it printed nothing, or its worker
    died before sending the rest). Without ``follow`` it ends once the stored rows are read,
    after giving a task that just finished a moment for its final entry (:func:`logs_lag_s`).

    Args:
        logs: the store; runs: the state machine's runs by id (a run not there is long finished).
        task: "" for every task of the run; attempt: 0 for every attempt.
        after_seq: resume after this row; :attr:`seq` is the last row read (a resumer's next ``after_seq``).
    """

    def __init__(self, logs: TaskLogStore, runs: Any, run_id: str, task: str, attempt: int, *, after_seq: int,
                 follow: bool):  # fmt: skip
        self.logs, self.runs = logs, runs
        self.run_id, self.task, self.attempt, self.follow = run_id, task, attempt, follow
        self.seq = after_seq

    async def rows(self):
        logs, run_id, task, attempt = self.logs, self.run_id, self.task, self.attempt
        changed = logs.watch(run_id)
        loop = asyncio.get_running_loop()
        finals: Finals = set()
        settle_until: float | None = None
        try:
            while True:
                changed.clear()
                rows = await logs.read(run_id, task, attempt, after_seq=self.seq)
                for row in rows:
                    self.seq = row.seq
                    if row.final:
                        finals.add((row.task, row.attempt))
                    else:
                        yield row
                if len(rows) >= READ_ROWS:
                    continue  # more is stored: read on before waiting
                run = self.runs.get(run_id)
                if not self.follow:
                    wait_s = logs_lag_s(run, task, attempt, finals, time.time())
                    if wait_s <= 0:
                        return
                else:
                    waiting = logs_awaited(run, task, attempt, finals)
                    if waiting is None:
                        return
                    wait_s = 1.0  # a task that ends without writing sets no event: look at its state again
                    if not waiting:  # finished, but a final entry is missing: wait a little for stragglers
                        now = loop.time()
                        settle_until = settle_until or now + TASK_LOG_SETTLE_S
                        if now >= settle_until:
                            return
                        wait_s = min(0.25, settle_until - now)
                try:
                    await asyncio.wait_for(changed.wait(), wait_s)
                except TimeoutError:
                    pass
                yield None
        finally:
            logs.unwatch(run_id, changed)
