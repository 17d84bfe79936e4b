"""Alert history in the SQLite store's database: one row per alert, the newest ``cap`` kept.

A table of its own on its own connection and thread (like the audit log's), written in
batches by :class:`~._alerting.Alerting`'s flusher, so the engine's commits never wait on
it. Each row holds the ``insights_pb2.Alert`` message with its deliveries, rewritten when
a delivery changes; with ``--encryption-key-file`` that body is sealed (an alert quotes task
errors, which may hold data), bound to the alert's id. Under etcd the history is kept in
memory only (see ``_alerting``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from xpipe._proto import insights_pb2
from xpipe.security._atrest import AtRest, open_value

from ._store import _writing

__all__ = ["AlertStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    rule TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at);
"""


class AlertStore:
    """The ``alerts`` table of the store database at ``path``, keeping the newest ``cap`` rows.

    With ``crypt`` (the store's keyring) bodies are sealed; plain rows from before stay readable.
    """

    def __init__(self, path: str | Path, *, cap: int, crypt: AtRest | None = None):
        self.path = Path(path)
        self.cap = cap
        self.crypt = crypt
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="xpipe-alerts")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def load(self) -> list[insights_pb2.Alert]:
        """The kept alerts, oldest first."""
        return await self._call(self._load_sync)

    def _load_sync(self) -> list[insights_pb2.Alert]:
        rows = self._conn().execute("SELECT id, body FROM alerts ORDER BY at DESC LIMIT ?", (self.cap,)).fetchall()
        return [insights_pb2.Alert.FromString(open_value(self.crypt, body, _aad(id_), f"alert {id_}"))
                for id_, body in reversed(rows)]  # fmt: skip

    async def put(self, alerts: Sequence[insights_pb2.Alert]) -> None:
        """Insert or rewrite these alerts, then forget all but the newest ``cap``."""
        crypt = self.crypt
        rows = [(a.id, a.at, a.rule, crypt.seal(a.SerializeToString(), _aad(a.id)) if crypt else a.SerializeToString())
                for a in alerts]  # fmt: skip
        await self._call(self._put_sync, rows)

    def _put_sync(self, rows: list[tuple[str, float, str, bytes]]) -> None:
        db = self._conn()
        with _writing(db, f"{self.path} (alerts)"):
            db.executemany("INSERT OR REPLACE INTO alerts (id, at, rule, body) VALUES (?, ?, ?, ?)", rows)
            db.execute(
                "DELETE FROM alerts WHERE at < (SELECT at FROM alerts ORDER BY at DESC LIMIT 1 OFFSET ?)", (self.cap - 1,)
            )

    async def close(self) -> None:
        if self._pool is None:
            return
        await self._call(self._close_sync)
        self._pool.shutdown(wait=True)
        self._pool = None

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _aad(alert_id: str) -> bytes:
    """A sealed alert body's place (AES-GCM associated data): it opens only as its own row."""
    return b"alert:" + alert_id.encode()
