"""Durable stores for run and task state.

The engine hands a store every ``RunRecord``/``TaskRecord`` of one scheduling step in a
single :meth:`Store.commit` call (group commit), and sends nothing to a worker or client
until that call returns. The SQLite store runs in WAL mode with ``synchronous=NORMAL``: a
committed transaction survives a crash or ``kill -9`` of the coordinator (it is in the
WAL file); only a power loss can lose the last few. ``synchronous="FULL"`` makes every
commit fsync as well, at a cost measured in ``bench/``.

A store fails safe. Beside ``xpipe.db`` a manifest (``xpipe.db.manifest``) records that a
store was made there, so a database that later goes missing or is truncated to zero
bytes is refused (:class:`StoreRefused`) rather than silently started empty; a file that
is not a readable database is refused the same way. A commit that fails (a full disk)
raises :class:`StoreFault`, which says whether space ran out, and leaves the connection
usable, so the coordinator can wait for space and go on. The files are private (0600,
directories 0700): they hold every argument of every task.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from xpipe._domain import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from xpipe._proto import common_pb2 as pb
from xpipe.security._tls import TLSConfig
from xpipe.security._atrest import AtRest, open_value

from xpipe.security._audit import GENESIS_HASH, AuditEntry

from ._events import RunRecord, TaskRecord
from ._story import decode_history, encode_history
from ._task_checkpoints import TASK_CHECKPOINT_SCHEMA, SQLiteTaskCheckpoints

__all__ = [
    "Store", "SQLiteStore", "StoredRun", "StoreError", "StoreFault", "StoreRefused", "open_store", "make_private_dir",
    "AuditPage",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Bytes :meth:`SQLiteStore.probe` writes to learn that the disk has room again.
PROBE_BYTES = 256 * 1024
#: Version of the SQLite schema, written to the manifest.
SCHEMA_VERSION = 1

_zc = zstandard.ZstdCompressor(level=3)
_zd = zstandard.ZstdDecompressor()


class StoreError(Exception):
    """Root of the store's own errors."""


class StoreRefused(StoreError):
    """The store cannot be opened safely: its message names the file and the way out."""


class StoreFault(StoreError):
    """A write failed; nothing of it was committed.

    Attributes:
        disk_full: space ran out (the caller may say RESOURCE_EXHAUSTED and wait for it);
            otherwise it was another I/O or database error (UNAVAILABLE).
    """

    def __init__(self, message: str, *, disk_full: bool):
        super().__init__(message)
        self.disk_full = disk_full

    @classmethod
    def wrap(cls, exc: BaseException, where: str = "") -> StoreFault:
        """The fault a failed write ``exc`` means, its real cause in the message."""
        if isinstance(exc, StoreFault):
            return exc
        full = (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
        )
        what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, sqlite3.Error) else str(exc)
        return cls(f"the store refused a write ({what}){f' at {where}' if where else ''}", disk_full=full)


def make_private_dir(path: str | Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700 (umask or not); return it.

    Only directories made here are chmod-ed: an existing one (``/tmp``, a shared mount)
    is the operator's to choose.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by someone else meanwhile: theirs
        os.chmod(directory, PRIVATE_DIR_MODE)
    return path


@contextlib.contextmanager
def _writing(db: sqlite3.Connection, where: str, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """One write transaction on ``db``: committed, or rolled back and raised as a :class:`StoreFault`.

    SQLite has already rolled back after some errors (SQLITE_FULL among them): a second
    ROLLBACK would fail and hide the real cause, so it is tried only while a transaction is
    open, and its own failure is logged. SQLite and OS errors become a ``StoreFault``
    naming ``where``; anything else is raised as it is.
    """
    db.execute(begin)
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback after a failed write to %s failed too", where)
        if isinstance(exc, (sqlite3.Error, OSError)):
            raise StoreFault.wrap(exc, where) from exc
        raise


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


#: A stream instance's checkpoint key: (stream, stage, instance).
CheckpointKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run as read back from a store."""

    header: RunRecord
    spec: pb.PipelineSpec | None
    tasks: dict[str, TaskRecord]


class Store(abc.ABC):
    """Where the coordinator's state goes before it is acted on."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def commit(self, records: Sequence[RunRecord | TaskRecord]) -> None:
        """Write all records in one transaction; later records for the same key win."""

    @abc.abstractmethod
    async def load_unfinished(self) -> list[StoredRun]:
        """Every run not yet finished, with its spec and task records, oldest first."""

    @abc.abstractmethod
    async def get_run(self, run_id: str, *, with_results: bool = False) -> StoredRun | None: ...

    @abc.abstractmethod
    async def list_runs(self, limit: int) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""

    async def probe(self) -> None:
        """Try a small write; raises :class:`StoreFault` while the store still refuses writes.

        The coordinator calls it, with backoff, after a commit failed, to learn when it
        may build a fresh engine from the store. The default trusts the next commit.
        """

    async def task_stats(self, names: Sequence[str]) -> dict[str, tuple[float, int]]:
        """Duration history by task name: ``{name: (mean seconds, samples)}``.

        The mean is of ``finished_at - started_at`` over SUCCEEDED task rows of every run;
        names with no sample are left out. Execution plans estimate with it. A store that
        keeps no such history may keep this default, which knows nothing.
        """
        return {}

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Governance (retention, forgetting; see _retention and _forget). A store without them
    # refuses CollectGarbage and ForgetSubject with this error.

    async def finished_runs_before(self, before: float) -> list[tuple[RunRecord, str]]:
        """Finished runs that finished before ``before`` (unix s), with their namespace."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete runs")

    async def run_ids(self) -> set[str]:
        """The id of every stored run."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its run ids")

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete these finished runs (unfinished ones are left alone); how many went."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete runs")

    async def finished_results(
        self, after: tuple[str, str] = ("", ""), limit: int = 500
    ) -> list[tuple[str, str, pb.Payload]]:
        """A page of ``(run_id, task, result)`` of finished runs, in key order after ``after``."""
        raise NotImplementedError(f"{type(self).__name__} cannot page through results")

    async def replace_results(self, changes: Sequence[tuple[str, str, pb.Payload | None]]) -> None:
        """Rewrite stored results (None deletes one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot rewrite results")

    async def finished_specs(self, after: str = "", limit: int = 100) -> list[tuple[str, pb.PipelineSpec]]:
        """A page of ``(run_id, spec)`` of finished runs, in run id order after ``after``."""
        raise NotImplementedError(f"{type(self).__name__} cannot page through specs")
    # ------------------------------------------------------------------ audit log and lineage
    # Written by ``_auditlog.AuditLog`` and ``_lineage.DataTap``, off the engine's turn. This
    # default keeps them in memory (a store that cannot persist them loses them on restart).

    async def audit_head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest stored audit entry; ``(0, GENESIS_HASH)`` when none."""
        return getattr(self, "_mem_audit_head", (0, GENESIS_HASH))

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Store chained ``entries`` and make the last one the head, in one transaction."""
        if entries:
            self.__dict__.setdefault("_mem_audit", []).extend(entries)
            self._mem_audit_head = (entries[-1].seq, entries[-1].hash)

    async def read_audit(self, *, after_seq: int = 0, since: float = 0.0, principal: str = "", limit: int = 1000) -> AuditPage:
        """Entries with seq > ``after_seq`` (and ``at >= since``, of ``principal``), oldest first."""
        stored = self.__dict__.get("_mem_audit", [])
        head_seq, head_hash = await self.audit_head()
        return _page([e for e in stored if e.seq > after_seq], since, principal, limit, head_seq, head_hash, after_seq)

    async def put_lineage(self, nodes: Sequence[tuple[str, str, bytes]]) -> None:
        """Store lineage nodes ``(run_id, task, serialized LineageNode)``; a task's newest wins."""
        mem = self.__dict__.setdefault("_mem_lineage", {})
        for run_id, task, node in nodes:
            mem[(run_id, task)] = node

    async def get_lineage(self, run_id: str) -> list[bytes]:
        """The run's serialized lineage nodes, by task name."""
        mem = self.__dict__.get("_mem_lineage", {})
        return [node for (r, _task), node in sorted(mem.items()) if r == run_id]

    # ------------------------------------------------------------------ task checkpoints
    # One value per task (``_task_checkpoints``): its newest serialized CheckpointSave.

    async def put_task_checkpoint(self, run_id: str, task: str, attempt: int, seq: int, data: bytes) -> None:
        """Store a task's newest checkpoint (the caller checked it is newer)."""
        self.__dict__.setdefault("_mem_task_checkpoints", {})[(run_id, task)] = data

    async def task_checkpoints(self, run_id: str) -> list[bytes]:
        """The stored checkpoints of the run's tasks, by task name."""
        mem = self.__dict__.get("_mem_task_checkpoints", {})
        return [data for (r, _task), data in sorted(mem.items()) if r == run_id]

    # ------------------------------------------------------------------ stream checkpoints
    # One value per stream instance (``_streams``): the instance's serialized StreamCheckpoint.

    async def put_checkpoint(self, key: CheckpointKey, seq: int, data: bytes) -> bool:
        """Store an instance's checkpoint unless the stored one has a seq >= ``seq``; True if stored."""
        mem = self.__dict__.setdefault("_mem_checkpoints", {})
        if key in mem and mem[key][0] >= seq:
            return False
        mem[key] = (seq, data)
        return True

    async def get_checkpoint(self, key: CheckpointKey) -> bytes | None:
        """The instance's last stored checkpoint, or None."""
        found = self.__dict__.get("_mem_checkpoints", {}).get(key)
        return None if found is None else found[1]


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One answer of :meth:`Store.read_audit`.

    Attributes:
        entries: Oldest first.
        head_seq: The stored head's seq (the newest entry, filters aside).
        head_hash: The stored head's hash.
        more: Entries past this page exist.
        next_after_seq: Where the next page starts (``after_seq``).
    """

    entries: list[AuditEntry]
    head_seq: int
    head_hash: str
    more: bool
    next_after_seq: int


def _page(
    entries, since: float, principal: str, limit: int, head_seq: int, head_hash: str, after_seq: int = 0
) -> AuditPage:
    """Filter ``entries`` (seq order, all past the cursor ``after_seq``) into one page of at most ``limit``."""
    out: list[AuditEntry] = []
    last = after_seq
    for entry in entries:
        if len(out) >= limit:
            return AuditPage(out, head_seq, head_hash, True, last)
        last = entry.seq
        if entry.at >= since and (not principal or entry.principal == principal):
            out.append(entry)
    return AuditPage(out, head_seq, head_hash, False, last)


_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    stimulus_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_checkpoints (
    stream TEXT NOT NULL,
    stage TEXT NOT NULL,
    instance INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream, stage, instance)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    node BLOB NOT NULL,
    PRIMARY KEY (run_id, task)
) WITHOUT ROWID;
"""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    total INTEGER NOT NULL,
    spec BLOB
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    error BLOB,
    result BLOB,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_history (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    history BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_telemetry (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    telemetry BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_cache_hits (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + TASK_CHECKPOINT_SCHEMA
_FINISHED = (pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED)
#: Commits of at most this many records (no spec or result over 64 KiB) run on the event loop.
INLINE_COMMIT_RECORDS = 32
#: Task rows one governance transaction deletes or rewrites at most (whole runs: a bigger run
#: goes alone); the engine's commits wait for one such transaction at most (a few ms).
GOVERNANCE_CHUNK_TASKS = 2000
#: What deleting a run's own rows costs, counted in task rows (measured: ~10 µs vs ~2 µs).
_RUN_ROW_WEIGHT = 5


class SQLiteStore(SQLiteTaskCheckpoints, Store):
    """The embedded default: one SQLite file in the coordinator's data directory.

    Reads and big commits run on one dedicated thread. Commits of a few small rows (the
    steady state) run on the event loop itself: they take tens of microseconds, less
    than the hop to the thread and back.

    Args:
        path: the database file; its manifest is ``<path>.manifest``.
        synchronous: SQLite's ``synchronous`` pragma (``NORMAL`` or ``FULL``; ``OFF`` for tests).
        accept_empty: start although the manifest says a store existed here and the
            database is missing or empty (the operator accepts losing the history); the
            manifest is rewritten. Without it, :meth:`open` raises :class:`StoreRefused`.
        crypt: seal specs, results, errors, stories and telemetry with this keyring
            (``--encryption-key-file``); a store once opened with one is refused without.
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "NORMAL", accept_empty: bool = False, crypt: AtRest | None = None
    ):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
            raise ValueError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        #: Where the store's identity is kept; its presence means "a store was made here".
        self.manifest_path = self.path.with_name(self.path.name + ".manifest")
        self._synchronous = synchronous.upper()
        #: Start on a missing or empty database even though the manifest says one existed.
        self.accept_empty = accept_empty
        self.crypt = crypt
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self.commits = 0
        self.rows_written = 0

    async def _call(self, fn, *args):
        if self._pool is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        if self._pool is not None:
            return
        make_private_dir(self.path.parent)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="xpipe-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._pool.shutdown(wait=True)
            self._pool = None
            raise

    def _refuse_how(self) -> str:
        return (
            f"restore {self.path} from a backup, or, to start with an empty store and lose the history, "
            f"move it aside and start the coordinator with --accept-empty-store"
        )

    def _open_sync(self) -> None:
        path = self.path
        size = path.stat().st_size if path.exists() else -1
        had_manifest = self.manifest_path.exists()
        if size <= 0 and had_manifest:
            what = "is missing" if size < 0 else "is empty (0 bytes)"
            if not self.accept_empty:
                raise StoreRefused(
                    f"store database {path} {what}, but its manifest {self.manifest_path} says a store was made "
                    f"there: refusing to start with no history; {self._refuse_how()}"
                )
            log.warning("store database %s %s; starting an empty store as --accept-empty-store asks", path, what)
            self._set_aside_stale_wal()
        new = size <= 0
        if size < 0:  # create it private: SQLite gives its WAL and SHM files the database's mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
        for name in (path.name, path.name + "-wal", path.name + "-shm", self.manifest_path.name):
            with_suffix = path.with_name(name)
            if with_suffix.exists():
                os.chmod(with_suffix, PRIVATE_FILE_MODE)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_SCHEMA)
            self._check_encryption(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise self._unreadable(exc) from exc
        except StoreRefused:
            db.close()
            raise
        self._db = db
        if new or not had_manifest:
            if not new:
                log.info("store %s has no manifest (made by an older version); writing one", path)
            manifest = {"store_id": uuid.uuid4().hex, "schema_version": SCHEMA_VERSION, "created_at": time.time()}
            _write_private(self.manifest_path, json.dumps(manifest).encode())

    def _check_encryption(self, db: sqlite3.Connection) -> None:
        """Mark a store opened with a keyring; refuse to open a marked one without.

        Without the mark, a coordinator started without ``--encryption-key-file`` would
        write new data in the clear into a store meant to be encrypted, and fail on each
        old row it reads.
        """
        row = db.execute("SELECT value FROM meta WHERE key='encryption_at_rest'").fetchone()
        if self.crypt is not None and row is None:
            db.execute("INSERT INTO meta VALUES ('encryption_at_rest', ?)", (self.crypt.active_key_id,))
        elif self.crypt is None and row is not None:
            raise StoreRefused(
                f"store database {self.path} is encrypted at rest (first key id {row[0]}): start the coordinator "
                "with --encryption-key-file naming the keyring that holds its keys"
            )

    def _set_aside_stale_wal(self) -> None:
        """A WAL of the lost database must not be replayed into the new one: keep it aside."""
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists():
            kept = wal.with_name(f"{wal.name}.orphaned-{int(time.time())}")
            os.replace(wal, kept)
            log.warning("the old write-ahead log was moved to %s", kept)
        shm = self.path.with_name(self.path.name + "-shm")
        if shm.exists():
            shm.unlink()  # only an index of the WAL, rebuilt from it

    def _unreadable(self, exc: sqlite3.DatabaseError) -> StoreError:
        """A database error while opening or loading: corruption is refused with the way out."""
        if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return StoreRefused(f"store database {self.path} is unreadable ({exc}); {self._refuse_how()}")
        return StoreFault.wrap(exc, str(self.path))

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _close_sync(self) -> None:
        self._close_governance()
        self._close_audit_sync()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def commit(self, records: Sequence[RunRecord | TaskRecord]) -> None:
        if not records:
            return
        if len(records) <= INLINE_COMMIT_RECORDS and not any(
            (r.spec is not None and r.spec.ByteSize() > 65536)
            if isinstance(r, RunRecord)
            else (r.result is not None and len(r.result.data) > 65536)
            for r in records
        ):
            # A few small rows commit in tens of microseconds: cheaper on the event loop
            # than a hop to the database thread and back. The engine never overlaps two
            # commits, and reads on the database thread do not open transactions.
            if self._pool is None:
                raise RuntimeError("store is not open")
            self._commit_sync(records)
            return
        await self._call(self._commit_sync, records)

    def _commit_sync(self, records: Sequence[RunRecord | TaskRecord]) -> None:
        new_runs, run_updates, tasks = [], {}, {}
        for rec in records:
            if isinstance(rec, TaskRecord):
                tasks[(rec.run_id, rec.name)] = rec
            elif rec.spec is not None:
                new_runs.append(rec)
            else:
                run_updates[rec.run_id] = rec
        db = self._db
        assert db is not None
        crypt = self.crypt
        with _writing(db, str(self.path), "BEGIN"):
            if new_runs:
                rows = [
                    (r.run_id, r.name, r.state, r.created_at, r.finished_at, r.total,
                     _zc.compress(r.spec.SerializeToString()))
                    for r in new_runs
                ]  # fmt: skip
                if crypt is not None:
                    rows = [(*row[:6], crypt.seal(row[6], _aad("spec", row[0]))) for row in rows]
                db.executemany("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)", rows)
            if run_updates:
                db.executemany(
                    "UPDATE runs SET state=?, finished_at=? WHERE run_id=?",
                    [(r.state, r.finished_at, r.run_id) for r in run_updates.values()],
                )
            if tasks:
                rows = [
                    (t.run_id, t.name, t.state, t.attempt, t.worker, t.started_at, t.finished_at,
                     t.error.SerializeToString() if t.error is not None else None,
                     t.result.SerializeToString() if t.result is not None else None)
                    for t in tasks.values()
                ]  # fmt: skip
                if crypt is not None:  # one test per commit: the plain path does no more than before
                    rows = [_seal_task_row(crypt, row) for row in rows]
                db.executemany("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?,?,?,?)", rows)
                # A table of its own, so the task row (written at every move) stays as small
                # as before: only tasks with a failed or requeued attempt have a story row.
                stories = [(t.run_id, t.name, encode_history(t.history)) for t in tasks.values() if t.history]
                if stories:
                    if crypt is not None:
                        stories = [(r, n, crypt.seal(h, _aad("history", r, n))) for r, n, h in stories]
                    db.executemany("INSERT OR REPLACE INTO task_history VALUES (?,?,?)", stories)
                # Likewise what attempts recorded (metrics, performance): most tasks record nothing.
                measured = [
                    (t.run_id, t.name, t.telemetry.SerializeToString()) for t in tasks.values() if t.telemetry is not None
                ]
                if measured:
                    if crypt is not None:
                        measured = [(r, n, crypt.seal(m, _aad("telemetry", r, n))) for r, n, m in measured]
                    db.executemany("INSERT OR REPLACE INTO task_telemetry VALUES (?,?,?)", measured)
                # Tasks whose result came from the result cache (docs/cache.md): a row each.
                hits = [(t.run_id, t.name) for t in tasks.values() if t.cache_hit]
                if hits:
                    db.executemany("INSERT OR REPLACE INTO task_cache_hits VALUES (?,?)", hits)
        self.commits += 1
        self.rows_written += len(new_runs) + len(run_updates) + len(tasks)

    async def probe(self) -> None:
        await self._call(self._probe_sync)

    def _probe_sync(self) -> None:
        db = self._db
        assert db is not None
        try:
            # Room for a row is not room for a commit: ask for PROBE_BYTES, rewritten each time.
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(?))", (PROBE_BYTES,))
        except sqlite3.Error as exc:
            raise StoreFault.wrap(exc, str(self.path)) from exc

    async def load_unfinished(self) -> list[StoredRun]:
        try:
            return await self._call(self._load_unfinished_sync)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc

    def _load_unfinished_sync(self) -> list[StoredRun]:
        db = self._db
        assert db is not None
        rows = db.execute(
            "SELECT run_id FROM runs WHERE state NOT IN (?,?,?) ORDER BY created_at", _FINISHED
        ).fetchall()
        return [run for (run_id,) in rows if (run := self._get_run_sync(run_id, True)) is not None]

    async def get_run(self, run_id: str, *, with_results: bool = False) -> StoredRun | None:
        return await self._call(self._get_run_sync, run_id, with_results)

    def _get_run_sync(self, run_id: str, with_results: bool) -> StoredRun | None:
        db = self._db
        assert db is not None
        row = db.execute(
            "SELECT run_id, name, state, created_at, finished_at, total, spec FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        crypt = self.crypt

        def clear(kind: str, value: bytes, name: str = "") -> bytes:  # a stored value as it was written
            return open_value(crypt, value, _aad(kind, run_id, name), f"{kind} of {run_id}{'/' + name if name else ''}")

        spec = self._stored_spec(run_id, row[6]) if row[6] else None
        header = RunRecord(*row[:6])
        result_col = "result" if with_results else "NULL"
        tasks = {}
        stories = dict(db.execute("SELECT name, history FROM task_history WHERE run_id=?", (run_id,)))
        measured = dict(db.execute("SELECT name, telemetry FROM task_telemetry WHERE run_id=?", (run_id,)))
        hits = {name for (name,) in db.execute("SELECT name FROM task_cache_hits WHERE run_id=?", (run_id,))}
        for name, state, attempt, worker, started, finished, error, result in db.execute(
            f"SELECT name, state, attempt, worker, started_at, finished_at, error, {result_col} "
            "FROM tasks WHERE run_id=?",
            (run_id,),
        ):
            story = stories.get(name)
            tasks[name] = TaskRecord(
                run_id, name, state, attempt, worker, started, finished,
                pb.TaskError.FromString(clear("error", error, name)) if error is not None else None,
                pb.Payload.FromString(clear("result", result, name)) if result is not None else None,
                history=decode_history(run_id, name, clear("history", story, name) if story else None),
                telemetry=pb.TaskTelemetry.FromString(clear("telemetry", measured[name], name)) if name in measured else None,
                cache_hit=name in hits,
            )  # fmt: skip
        return StoredRun(header, spec, tasks)

    async def list_runs(self, limit: int) -> list[RunRecord]:
        return await self._call(self._list_runs_sync, limit)

    def _list_runs_sync(self, limit: int) -> list[RunRecord]:
        db = self._db
        assert db is not None
        rows = db.execute(
            "SELECT run_id, name, state, created_at, finished_at, total FROM runs ORDER BY created_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [RunRecord(*row) for row in rows]

    async def task_stats(self, names: Sequence[str]) -> dict[str, tuple[float, int]]:
        return await self._call(self._task_stats_sync, list(dict.fromkeys(names)))

    def _task_stats_sync(self, names: list[str]) -> dict[str, tuple[float, int]]:
        db = self._db
        assert db is not None
        out: dict[str, tuple[float, int]] = {}
        for i in range(0, len(names), 500):  # stay under SQLite's bound-parameter limit
            chunk = names[i : i + 500]
            rows = db.execute(
                "SELECT name, AVG(finished_at - started_at), COUNT(*) FROM tasks WHERE state=? AND started_at > 0 "
                f"AND finished_at >= started_at AND name IN ({','.join('?' * len(chunk))}) GROUP BY name",
                (pb.SUCCEEDED, *chunk),
            ).fetchall()
            out.update({name: (float(mean), int(count)) for name, mean, count in rows})
        return out

    # ------------------------------------------------------------------ governance (retention, forgetting)
    # Rare and off the hot path. Their own connection, so a long scan never holds the engine's:
    # SQLite's locking orders their short write transactions with the engine's commits (the
    # engine waits at most the length of one chunk, GOVERNANCE_CHUNK_TASKS task rows).

    _gov_db: sqlite3.Connection | None = None
    _gov_lock: asyncio.Lock | None = None

    def _governance_db(self) -> sqlite3.Connection:
        db = self._gov_db
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._gov_db = db
        return db

    async def _governance(self, fn, *args):
        if self._pool is None:
            raise RuntimeError("store is not open")
        lock = self._gov_lock
        if lock is None:
            lock = self._gov_lock = asyncio.Lock()
        async with lock:  # one connection, one governance operation at a time
            return await asyncio.to_thread(fn, *args)

    async def finished_runs_before(self, before: float) -> list[tuple[RunRecord, str]]:
        """Finished runs that finished before ``before`` (unix s), with their namespace, oldest first."""
        return await self._governance(self._finished_runs_before_sync, before)

    def _finished_runs_before_sync(self, before: float) -> list[tuple[RunRecord, str]]:
        rows = self._governance_db().execute(
            "SELECT run_id, name, state, created_at, finished_at, total, spec FROM runs "
            "WHERE state IN (?,?,?) AND finished_at < ? ORDER BY finished_at",
            (*_FINISHED, before),
        ).fetchall()
        out = []
        for *header, spec in rows:
            namespace = self._stored_spec(header[0], spec).namespace if spec else ""
            out.append((RunRecord(*header), namespace))
        return out

    def _stored_spec(self, run_id: str, value: bytes) -> pb.PipelineSpec:
        """A ``runs.spec`` column value, opened (encryption at rest) and parsed."""
        clear = open_value(self.crypt, value, _aad("spec", run_id), f"spec of {run_id}")
        return pb.PipelineSpec.FromString(_zd.decompress(clear))

    async def run_ids(self) -> set[str]:
        """The id of every stored run (to tell orphaned artifact directories)."""
        return await self._governance(self._run_ids_sync)

    def _run_ids_sync(self) -> set[str]:
        return {run_id for (run_id,) in self._governance_db().execute("SELECT run_id FROM runs")}

    async def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete finished runs with their tasks, results and stories; returns how many went.

        An unfinished run named here is left alone (the engine owns it).
        """
        return await self._governance(self._delete_runs_sync, list(run_ids))

    def _delete_runs_sync(self, run_ids: list[str]) -> int:
        db = self._governance_db()
        finished: list[tuple[str, int]] = []  # (run id, tasks), finished runs only
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            finished += db.execute(
                f"SELECT run_id, total FROM runs WHERE run_id IN ({','.join('?' * len(chunk))}) AND state IN (?,?,?)",
                (*chunk, *_FINISHED),
            ).fetchall()
        deleted = 0
        # Transactions of whole runs, at most GOVERNANCE_CHUNK_TASKS tasks each (one bigger run
        # alone): the engine's commits wait for the write lock that long at most.
        chunk: list[str] = []
        tasks = 0
        for run_id, total in finished:
            weight = total + _RUN_ROW_WEIGHT
            if chunk and tasks + weight > GOVERNANCE_CHUNK_TASKS:
                deleted += self._delete_chunk_sync(db, chunk)
                chunk, tasks = [], 0
            chunk.append(run_id)
            tasks += weight
        if chunk:
            deleted += self._delete_chunk_sync(db, chunk)
        return deleted

    def _delete_chunk_sync(self, db: sqlite3.Connection, run_ids: list[str]) -> int:
        marks = ",".join("?" * len(run_ids))
        with _writing(db, str(self.path)):
            # Checked again inside the transaction: only a finished run is ever deleted.
            gone = [r for (r,) in db.execute(
                f"SELECT run_id FROM runs WHERE run_id IN ({marks}) AND state IN (?,?,?)", (*run_ids, *_FINISHED)
            )]  # fmt: skip
            if gone:
                gmarks = ",".join("?" * len(gone))
                for table in ("tasks", "task_history", "task_telemetry", "task_cache_hits", "task_checkpoints", "runs"):
                    db.execute(f"DELETE FROM {table} WHERE run_id IN ({gmarks})", gone)
        return len(gone)

    async def finished_results(
        self, after: tuple[str, str] = ("", ""), limit: int = 500
    ) -> list[tuple[str, str, pb.Payload]]:
        """A page of ``(run_id, task, result)`` of finished runs, in key order after ``after``."""
        return await self._governance(self._finished_results_sync, after, limit)

    def _finished_results_sync(self, after: tuple[str, str], limit: int) -> list[tuple[str, str, pb.Payload]]:
        rows = self._governance_db().execute(
            "SELECT t.run_id, t.name, t.result FROM tasks t JOIN runs r ON r.run_id = t.run_id "
            "WHERE r.state IN (?,?,?) AND t.result IS NOT NULL AND (t.run_id, t.name) > (?, ?) "
            "ORDER BY t.run_id, t.name LIMIT ?",
            (*_FINISHED, *after, limit),
        ).fetchall()
        crypt = self.crypt
        return [
            (run_id, name, pb.Payload.FromString(
                open_value(crypt, result, _aad("result", run_id, name), f"result of {run_id}/{name}")))
            for run_id, name, result in rows
        ]  # fmt: skip

    async def replace_results(self, changes: Sequence[tuple[str, str, pb.Payload | None]]) -> None:
        """Rewrite stored results (None: delete the result, keep the task) in one transaction."""
        await self._governance(self._replace_results_sync, list(changes))

    def _replace_results_sync(self, changes: list[tuple[str, str, pb.Payload | None]]) -> None:
        db = self._governance_db()
        for i in range(0, len(changes), GOVERNANCE_CHUNK_TASKS):  # short transactions, as for deletes
            rows = [(self._sealed_result(run_id, name, p), run_id, name)
                    for run_id, name, p in changes[i : i + GOVERNANCE_CHUNK_TASKS]]  # fmt: skip
            with _writing(db, str(self.path)):
                db.executemany("UPDATE tasks SET result=? WHERE run_id=? AND name=?", rows)

    async def finished_specs(self, after: str = "", limit: int = 100) -> list[tuple[str, pb.PipelineSpec]]:
        """A page of ``(run_id, spec)`` of finished runs, in run id order after ``after``."""
        return await self._governance(self._finished_specs_sync, after, limit)

    def _finished_specs_sync(self, after: str, limit: int) -> list[tuple[str, pb.PipelineSpec]]:
        rows = self._governance_db().execute(
            "SELECT run_id, spec FROM runs WHERE state IN (?,?,?) AND run_id > ? AND spec IS NOT NULL "
            "ORDER BY run_id LIMIT ?",
            (*_FINISHED, after, limit),
        ).fetchall()
        return [(run_id, self._stored_spec(run_id, spec)) for run_id, spec in rows]

    def _sealed_result(self, run_id: str, name: str, payload: pb.Payload | None) -> bytes | None:
        """A result as the ``tasks.result`` column holds it (sealed with encryption at rest)."""
        if payload is None:
            return None
        data = payload.SerializeToString()
        return self.crypt.seal(data, _aad("result", run_id, name)) if self.crypt is not None else data

    def _close_governance(self) -> None:
        db = self._gov_db
        if db is not None:
            db.close()
            self._gov_db = None

    # ------------------------------------------------------------------ audit log and lineage
    # Their own connection: the engine commits small turns on the event loop with the main
    # one, and a transaction on the database thread must not interleave with those. SQLite
    # serializes the two writers (WAL: one at a time); each holds the lock for a few ms.

    def _audit_conn(self) -> sqlite3.Connection:
        db = getattr(self, "_audit_db", None)
        if db is None:
            if self._db is None:
                raise RuntimeError("store is not open")
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_AUDIT_SCHEMA)
            self._audit_db = db
        return db

    def _close_audit_sync(self) -> None:
        db = getattr(self, "_audit_db", None)
        if db is not None:
            db.close()
            self._audit_db = None

    async def audit_head(self) -> tuple[int, str]:
        return await self._call(self._audit_head_sync)

    def _audit_head_sync(self) -> tuple[int, str]:
        row = self._audit_conn().execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()
        if row is None:
            return 0, GENESIS_HASH
        head = json.loads(row[0])
        return int(head["seq"]), str(head["hash"])

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if entries:
            await self._call(self._append_audit_sync, list(entries))

    def _append_audit_sync(self, entries: list[AuditEntry]) -> None:
        db = self._audit_conn()
        head = json.dumps({"seq": entries[-1].seq, "hash": entries[-1].hash})
        with _writing(db, f"{self.path} (audit log)"):
            db.executemany(
                "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (e.seq, e.at, e.principal, e.action, e.target, e.outcome, e.stimulus_id,
                     json.dumps(dict(e.detail), sort_keys=True), e.prev_hash, e.hash)
                    for e in entries
                ],
            )  # fmt: skip
            db.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)", (head,))

    async def read_audit(self, *, after_seq: int = 0, since: float = 0.0, principal: str = "", limit: int = 1000) -> AuditPage:
        return await self._call(self._read_audit_sync, after_seq, since, principal, limit)

    def _read_audit_sync(self, after_seq: int, since: float, principal: str, limit: int) -> AuditPage:
        db = self._audit_conn()
        db.execute("BEGIN")  # one snapshot: the page and the head agree
        try:
            head_seq, head_hash = self._audit_head_sync()
            rows = db.execute(
                "SELECT seq, at, principal, action, target, outcome, stimulus_id, detail, prev_hash, hash "
                "FROM audit WHERE seq > ? AND at >= ? AND (? = '' OR principal = ?) ORDER BY seq LIMIT ?",
                (after_seq, since, principal, principal, limit + 1),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        entries = [
            AuditEntry(seq, at, who, action, target, outcome, stimulus_id, json.loads(detail), prev_hash, digest)
            for seq, at, who, action, target, outcome, stimulus_id, detail, prev_hash, digest in rows
        ]
        more = len(entries) > limit
        entries = entries[:limit]
        return AuditPage(entries, head_seq, head_hash, more, entries[-1].seq if entries else after_seq)

    async def put_lineage(self, nodes: Sequence[tuple[str, str, bytes]]) -> None:
        if nodes:
            await self._call(self._put_lineage_sync, list(nodes))

    def _put_lineage_sync(self, nodes: list[tuple[str, str, bytes]]) -> None:
        db = self._audit_conn()
        with _writing(db, f"{self.path} (lineage)"):
            db.executemany("INSERT OR REPLACE INTO lineage VALUES (?,?,?)", nodes)

    async def get_lineage(self, run_id: str) -> list[bytes]:
        return await self._call(self._get_lineage_sync, run_id)

    def _get_lineage_sync(self, run_id: str) -> list[bytes]:
        rows = self._audit_conn().execute("SELECT node FROM lineage WHERE run_id=? ORDER BY task", (run_id,))
        return [bytes(node) for (node,) in rows]

    async def put_checkpoint(self, key: CheckpointKey, seq: int, data: bytes) -> bool:
        return await self._call(self._put_checkpoint_sync, key, seq, data)

    def _put_checkpoint_sync(self, key: CheckpointKey, seq: int, data: bytes) -> bool:
        db = self._audit_conn()  # off the engine's connection, like the audit log
        if self.crypt is not None:
            data = self.crypt.seal(data, _checkpoint_aad(key))
        with _writing(db, f"{self.path} (stream checkpoint)"):
            row = db.execute("SELECT seq FROM stream_checkpoints WHERE stream=? AND stage=? AND instance=?", key).fetchone()
            if row is not None and row[0] >= seq:
                return False
            db.execute("INSERT OR REPLACE INTO stream_checkpoints VALUES (?,?,?,?,?)", (*key, seq, data))
        return True

    async def get_checkpoint(self, key: CheckpointKey) -> bytes | None:
        return await self._call(self._get_checkpoint_sync, key)

    def _get_checkpoint_sync(self, key: CheckpointKey) -> bytes | None:
        row = self._audit_conn().execute(
            "SELECT data FROM stream_checkpoints WHERE stream=? AND stage=? AND instance=?", key
        ).fetchone()
        if row is None:
            return None
        return open_value(self.crypt, bytes(row[0]), _checkpoint_aad(key), f"checkpoint of {key[0]}/{key[1]}[{key[2]}]")


def _aad(kind: str, run_id: str, name: str = "") -> bytes:
    """Where a sealed value belongs (its AES-GCM associated data): a value moved elsewhere fails."""
    return f"{kind}:{run_id}/{name}".encode()


def _checkpoint_aad(key: CheckpointKey) -> bytes:
    """A checkpoint's associated data: sealed for one instance, it opens for no other."""
    return _aad("checkpoint", f"{key[0]}/{key[1]}", str(key[2]))


def _seal_task_row(crypt: AtRest, row: tuple) -> tuple:
    """A ``tasks`` row with its error and result sealed (they hold task data)."""
    run_id, name, error, result = row[0], row[1], row[7], row[8]
    return (
        *row[:7],
        crypt.seal(error, _aad("error", run_id, name)) if error is not None else None,
        crypt.seal(result, _aad("result", run_id, name)) if result is not None else None,
    )


def open_store(
    url: str,
    data_dir: Path,
    *,
    cluster: str = "default",
    artifact_dir: Path | None = None,
    accept_empty_store: bool = False,
    etcd_tls: TLSConfig | None = None,
    crypt: AtRest | None = None,
) -> Store:
    """Make the store a ``--store`` URL names: ``sqlite`` (default), ``sqlite:///path`` or
    ``etcd://host:port[,host:port...]`` (HA; keys under ``/xpipe/<cluster>/``).

    ``accept_empty_store`` lets a SQLite store start although its database went missing
    or empty (see :class:`SQLiteStore`); ``etcd_tls`` is how to reach etcd over TLS;
    ``crypt`` seals what it stores (encryption at rest)."""
    if url in ("", "sqlite"):
        return SQLiteStore(data_dir / "xpipe.db", accept_empty=accept_empty_store, crypt=crypt)
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite://") :], accept_empty=accept_empty_store, crypt=crypt)
    if url.startswith("etcd://"):
        from ._etcd_store import EtcdStore  # only HA deployments pay for the etcd client

        return EtcdStore.from_url(
            url, cluster=cluster, artifact_dir=artifact_dir or data_dir / "artifacts", crypt=crypt, tls=etcd_tls,
        )
    raise ValueError(
        f"unknown --store {url!r}: expected 'sqlite', 'sqlite:///PATH' or 'etcd://HOST:PORT[,HOST:PORT...]'"
    )
