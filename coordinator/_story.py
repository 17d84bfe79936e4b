"""The story of a task: what the coordinator's transition log holds, and how it is kept.

Pure (no I/O): the state machine logs one :data:`~._events.StoryEntry` per task move. An
attempt that ends without success keeps its entries on the task (``history``); the
stores persist that history with the task row in the compact form of
:func:`encode_history`, and :func:`story_from_records` tells a stored run's story from
those rows. See docs/design.md, "The story of a task".
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from xpipe._domain import error_type_name
from xpipe._proto import common_pb2 as pb

from ._events import StoryEntry, TaskRecord

__all__ = ["RESTORED", "ERROR_MOVES", "restored_entries", "story_from_records", "encode_history", "decode_history"]

#: stimulus_id of story entries rebuilt from a stored task row rather than logged as they happened.
RESTORED = "restored"
#: Moves whose reason, when none is given, is the task's error (set just before the move).
ERROR_MOVES = frozenset({pb.RETRY_WAIT, pb.FAILED, pb.RECOVERING, pb.SKIPPED, pb.CANCELLED, pb.UPSTREAM_FAILED})


def restored_entries(rec: TaskRecord) -> list[StoryEntry]:
    """A stored task row's story: its persisted history, then its latest move rebuilt.

    The latest attempt's moves were not persisted one by one (that would cost a write per
    move); they are rebuilt from the row's times and state, marked :data:`RESTORED`. The
    state a task left is not stored either: RUNNING when it had started, PENDING for an
    upstream failure, else unknown (``TASK_STATE_UNSPECIFIED``).
    """
    entries = list(rec.history)
    if rec.state == pb.PENDING or (entries and entries[-1][4] == rec.attempt and entries[-1][6] == rec.state):
        return entries  # nothing happened yet, or the last move is already in the history
    run_id, name, attempt = rec.run_id, rec.name, rec.attempt
    reason = f"{error_type_name(rec.error)}: {rec.error.message}" if rec.error is not None and rec.state in ERROR_MOVES else ""
    if rec.started_at and rec.state != pb.ASSIGNED:
        entries.append((rec.started_at, RESTORED, run_id, name, attempt, pb.ASSIGNED, pb.RUNNING, "worker " + rec.worker))
        if rec.state != pb.RUNNING:
            entries.append((rec.finished_at or rec.started_at, RESTORED, run_id, name, attempt, pb.RUNNING, rec.state, reason))
    elif rec.finished_at:  # a row with no time (READY, ASSIGNED) adds nothing GetRun does not show
        frm = pb.PENDING if rec.state == pb.UPSTREAM_FAILED else pb.TASK_STATE_UNSPECIFIED
        entries.append((rec.finished_at, RESTORED, run_id, name, attempt, frm, rec.state, reason))
    return entries


def story_from_records(records: Iterable[TaskRecord], task: str = "") -> list[StoryEntry]:
    """The story of a run held only in the store (``task``: just that task's), oldest first."""
    entries = [e for rec in records if not task or rec.name == task for e in restored_entries(rec)]
    entries.sort(key=lambda e: e[0])  # stable: a task's moves at one time keep their order
    return entries


def encode_history(history: tuple[StoryEntry, ...]) -> bytes | None:
    """A task's story of earlier attempts as the store keeps it (None when there is none).

    JSON rows of (time, stimulus_id, attempt, from, to, reason): the run and task are the
    row's own, so they are not repeated. Written only for tasks that failed or were
    requeued, with the row the move writes anyway.
    """
    if not history:
        return None
    return json.dumps([[e[0], e[1], e[4], e[5], e[6], e[7]] for e in history], separators=(",", ":")).encode()


def decode_history(run_id: str, name: str, data: bytes | None) -> tuple[StoryEntry, ...]:
    """The inverse of :func:`encode_history`."""
    if not data:
        return ()
    return tuple((t, sid, run_id, name, attempt, frm, to, reason) for t, sid, attempt, frm, to, reason in json.loads(data))
