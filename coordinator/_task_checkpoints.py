"""Task checkpoints on the coordinator: kept with the task, sent with its next attempt.

A running attempt's ``xpipe.checkpoint()`` reaches the coordinator as a ``CheckpointSave``
on its worker's stream. :class:`TaskCheckpointBook` takes it only from the worker that runs
the task's current attempt (a save of a stale attempt, a worker presumed dead, is dropped),
writes it to the store and keeps it in memory, so that the task's next attempt carries it
in its ``Assignment.checkpoint`` without a store read on the dispatch path. A restarted
coordinator reloads the checkpoints of the runs it resumes.

Store side: one row (SQLite table ``task_checkpoints``) or key (etcd
``<prefix>task_checkpoints/<run>/<task>``) per task, the newest save of its newest attempt,
sealed like results under ``--encryption-key-file``. It goes when its run is deleted
(retention, ``CollectGarbage``). The mixins below are the stores' halves; ``Store`` keeps
the in-memory default.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpipe._limits import MAX_PATH_CHARS, MAX_TASK_CHECKPOINT_BYTES
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.telemetry._logformat import log_ids

if TYPE_CHECKING:
    from xpipe.security._atrest import AtRest

    from ._state import SchedulerState
    from ._store import Store

__all__ = ["TaskCheckpointBook", "check_checkpoint_save", "SQLiteTaskCheckpoints", "EtcdTaskCheckpoints",
           "TASK_CHECKPOINT_SCHEMA"]  # fmt: skip

log = logging.getLogger(__name__)

#: The SQLite table (created with the store's other tables).
TASK_CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS task_checkpoints (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    writes INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
"""

_LIVE = (pb.ASSIGNED, pb.RUNNING)


def check_checkpoint_save(save: worker_pb2.CheckpointSave) -> str:
    """Why a worker's CheckpointSave cannot be taken ("" if it can): the SDK's limit, again."""
    ref = save.attempt
    if not ref.run_id or not ref.task or ref.attempt < 1:
        return "CheckpointSave.attempt must name a run, a task and an attempt >= 1"
    if len(save.state.data) > MAX_TASK_CHECKPOINT_BYTES:
        return (f"CheckpointSave.state of task {ref.task!r} is {len(save.state.data)} bytes, over the limit of "
                f"{MAX_TASK_CHECKPOINT_BYTES} bytes")  # fmt: skip
    if len(save.state.artifact_ref) > MAX_PATH_CHARS:
        return f"CheckpointSave.state.artifact_ref has {len(save.state.artifact_ref)} chars; the limit is {MAX_PATH_CHARS}"
    if not save.state.data and not save.state.artifact_ref:
        return f"CheckpointSave.state of task {ref.task!r} is empty (neither data nor artifact_ref)"
    return ""


class TaskCheckpointBook:
    """The newest checkpoint of each task of the unfinished runs, in memory and in the store.

    Args:
        store: where saves are written (before they count).
        state: the scheduler's state, read to tell the current attempt from a stale one.
    """

    def __init__(self, store: Store, state: SchedulerState):
        self._store = store
        self._state = state
        #: (run_id, task) -> (attempt, seq, encoded field ``Assignment.checkpoint``)
        self._saved: dict[tuple[str, str], tuple[int, int, bytes]] = {}
        #: Saves taken and written (for tests and logs).
        self.written = 0

    def __bool__(self) -> bool:
        return bool(self._saved)

    async def restore(self, run_ids: Iterable[str]) -> None:
        """Load what the store holds for these (resumed) runs."""
        for run_id in run_ids:
            for data in await self._store.task_checkpoints(run_id):
                save = worker_pb2.CheckpointSave.FromString(data)
                self._keep(save)

    def _keep(self, save: worker_pb2.CheckpointSave) -> None:
        ref = save.attempt
        field = worker_pb2.Assignment(checkpoint=save.state).SerializeToString()
        self._saved[(ref.run_id, ref.task)] = (ref.attempt, save.seq, field)

    async def save(self, worker_id: str, save: worker_pb2.CheckpointSave) -> bool:
        """Store ``save`` if it comes from the current attempt's worker and is newer; True if stored.

        A store that refuses the write is logged, not raised: the task runs on, and a later
        attempt resumes from the previous checkpoint.
        """
        ref = save.attempt
        run = self._state.runs.get(ref.run_id)
        entry = run.tasks.get(ref.task) if run is not None else None
        ids = log_ids((ref.run_id, ref.task, ref.attempt))
        if entry is None or entry.attempt != ref.attempt or entry.worker != worker_id or entry.state not in _LIVE:
            log.info("ignored checkpoint %d of task %r (run %s, attempt %d) from worker %s: not its current attempt",
                     save.seq, ref.task, ref.run_id, ref.attempt, worker_id, extra=ids)  # fmt: skip
            return False
        held = self._saved.get((ref.run_id, ref.task))
        if held is not None and (held[0], held[1]) >= (ref.attempt, save.seq):
            return False
        from ._store import StoreError  # _store imports this module: not at the top

        try:
            await self._store.put_task_checkpoint(ref.run_id, ref.task, ref.attempt, save.seq, save.SerializeToString())
        except (StoreError, RuntimeError) as exc:  # a store fault, a lost etcd lease: the engine's commits see it too
            log.warning("checkpoint %d of task %r (run %s, attempt %d) was not stored: %s; a next attempt resumes "
                        "from an earlier one", save.seq, ref.task, ref.run_id, ref.attempt, exc, extra=ids)  # fmt: skip
            return False
        self._keep(save)
        self.written += 1
        log.debug("stored checkpoint %d of task %r (run %s, attempt %d)", save.seq, ref.task, ref.run_id, ref.attempt,
                  extra=ids)  # fmt: skip
        return True

    def field(self, attempt: tuple[str, str, int]) -> bytes:
        """The encoded ``Assignment.checkpoint`` for a new attempt of this task (b"" when none)."""
        held = self._saved.get((attempt[0], attempt[1]))
        return held[2] if held is not None and held[0] < attempt[2] else b""

    def drop_runs(self, run_ids: Iterable[str]) -> None:
        """Forget finished runs' checkpoints in memory (the store keeps them until the run goes)."""
        if not self._saved:
            return
        gone = set(run_ids)
        for key in [k for k in self._saved if k[0] in gone]:
            del self._saved[key]


class SQLiteTaskCheckpoints:
    """SQLiteStore's task checkpoints: written off the engine's connection, like stream checkpoints."""

    # What SQLiteStore provides.
    path: Path
    crypt: AtRest | None
    _call: Callable[..., Awaitable[Any]]
    _audit_conn: Callable[[], sqlite3.Connection]

    async def put_task_checkpoint(self, run_id: str, task: str, attempt: int, seq: int, data: bytes) -> None:
        await self._call(self._put_task_checkpoint_sync, run_id, task, attempt, seq, data)

    def _put_task_checkpoint_sync(self, run_id: str, task: str, attempt: int, seq: int, data: bytes) -> None:
        from ._store import _aad, _writing

        db = self._audit_conn()
        if self.crypt is not None:
            data = self.crypt.seal(data, _aad("task_checkpoint", run_id, task))
        with _writing(db, f"{self.path} (task checkpoint)"):
            db.execute(
                "INSERT INTO task_checkpoints VALUES (?,?,?,?,1,?) ON CONFLICT (run_id, name) DO UPDATE SET "
                "attempt=excluded.attempt, seq=excluded.seq, data=excluded.data, writes=writes+1",
                (run_id, task, attempt, seq, data),
            )

    async def task_checkpoints(self, run_id: str) -> list[bytes]:
        return await self._call(self._task_checkpoints_sync, run_id)

    def _task_checkpoints_sync(self, run_id: str) -> list[bytes]:
        from ._store import _aad, open_value

        rows = self._audit_conn().execute(
            "SELECT name, data FROM task_checkpoints WHERE run_id=? ORDER BY name", (run_id,)
        ).fetchall()
        return [open_value(self.crypt, bytes(data), _aad("task_checkpoint", run_id, name),
                           f"checkpoint of task {run_id}/{name}") for name, data in rows]  # fmt: skip


class EtcdTaskCheckpoints:
    """EtcdStore's task checkpoints: one fenced key per task, deleted with the run's other keys."""

    # What EtcdStore provides.
    prefix: bytes
    cluster: str
    _pack: Callable[..., bytes]
    _unpack: Callable[..., bytes]
    _txn: Callable[..., Awaitable[Any]]
    _scan: Callable[..., AsyncIterator[Any]]
    _fence_compares: Callable[[], list]

    def _task_checkpoints_prefix(self, run_id: str) -> bytes:
        return self.prefix + f"task_checkpoints/{run_id}/".encode()

    async def put_task_checkpoint(self, run_id: str, task: str, attempt: int, seq: int, data: bytes) -> None:
        from aetcd import rpc

        from ._etcd_store import FencedError

        key = self._task_checkpoints_prefix(run_id) + task.encode()
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=self._pack(data, key)))
        request = rpc.TxnRequest(compare=self._fence_compares(), success=[put])
        what = f"checkpoint of task {run_id}/{task}"
        response = await self._txn(request, what)
        if not response.succeeded:
            raise FencedError(f"{what} refused: this coordinator no longer leads cluster {self.cluster!r}")

    async def task_checkpoints(self, run_id: str) -> list[bytes]:
        prefix = self._task_checkpoints_prefix(run_id)
        return [self._unpack(kv.value, f"checkpoint of task {run_id}", kv.key)
                async for kv in self._scan(prefix)]  # fmt: skip

