"""Durable stores for run and task state.

The engine hands a store every ``RunRecord``/``TaskRecord`` of one scheduling step in a
single :meth:`Store.commit` call (group commit), and sends nothing to a worker or client
until that call returns. The SQLite store runs in WAL mode with ``synchronous=NORMAL``: a
committed transaction survives a crash or ``kill -9`` of the coordinator (it is in the
WAL file); only a power loss can lose the last few. ``synchronous="FULL"`` makes every
commit fsync as well, at a cost measured in ``bench/``.
"""

from __future__ import annotations

import abc
import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from xpipe._proto import common_pb2 as pb

from ._events import RunRecord, TaskRecord

__all__ = ["Store", "SQLiteStore", "StoredRun", "open_store"]

_zc = zstandard.ZstdCompressor(level=3)
_zd = zstandard.ZstdDecompressor()


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
"""
_FINISHED = (pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED)
#: Commits of at most this many records (no spec or result over 64 KiB) run on the event loop.
INLINE_COMMIT_RECORDS = 32


class SQLiteStore(Store):
    """The embedded default: one SQLite file in the coordinator's data directory.

    Reads and big commits run on one dedicated thread. Commits of a few small rows (the
    steady state) run on the event loop itself: they take tens of microseconds, less
    than the hop to the thread and back.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL"):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
            raise ValueError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="xpipe-sqlite")
        await self._call(self._open_sync)

    def _open_sync(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._pool is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _close_sync(self) -> None:
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
        db.execute("BEGIN")
        try:
            if new_runs:
                db.executemany(
                    "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)",
                    [
                        (r.run_id, r.name, r.state, r.created_at, r.finished_at, r.total,
                         _zc.compress(r.spec.SerializeToString()))
                        for r in new_runs
                    ],
                )  # fmt: skip
            if run_updates:
                db.executemany(
                    "UPDATE runs SET state=?, finished_at=? WHERE run_id=?",
                    [(r.state, r.finished_at, r.run_id) for r in run_updates.values()],
                )
            if tasks:
                db.executemany(
                    "INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (t.run_id, t.name, t.state, t.attempt, t.worker, t.started_at, t.finished_at,
                         t.error.SerializeToString() if t.error is not None else None,
                         t.result.SerializeToString() if t.result is not None else None)
                        for t in tasks.values()
                    ],
                )  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.commits += 1
        self.rows_written += len(new_runs) + len(run_updates) + len(tasks)

    async def load_unfinished(self) -> list[StoredRun]:
        return await self._call(self._load_unfinished_sync)

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
        spec = pb.PipelineSpec.FromString(_zd.decompress(row[6])) if row[6] else None
        header = RunRecord(*row[:6])
        result_col = "result" if with_results else "NULL"
        tasks = {}
        for name, state, attempt, worker, started, finished, error, result in db.execute(
            f"SELECT name, state, attempt, worker, started_at, finished_at, error, {result_col} "
            "FROM tasks WHERE run_id=?",
            (run_id,),
        ):
            tasks[name] = TaskRecord(
                run_id, name, state, attempt, worker, started, finished,
                pb.TaskError.FromString(error) if error is not None else None,
                pb.Payload.FromString(result) if result is not None else None,
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


def open_store(url: str, data_dir: Path, *, cluster: str = "default", artifact_dir: Path | None = None) -> Store:
    """Make the store a ``--store`` URL names: ``sqlite`` (default), ``sqlite:///path`` or
    ``etcd://host:port[,host:port...]`` (HA; keys under ``/xpipe/<cluster>/``)."""
    if url in ("", "sqlite"):
        return SQLiteStore(data_dir / "xpipe.db")
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite://") :])
    if url.startswith("etcd://"):
        from ._etcd_store import EtcdStore  # only HA deployments pay for the etcd client

        return EtcdStore.from_url(url, cluster=cluster, artifact_dir=artifact_dir or data_dir / "artifacts")
    raise ValueError(
        f"unknown --store {url!r}: expected 'sqlite', 'sqlite:///PATH' or 'etcd://HOST:PORT[,HOST:PORT...]'"
    )
