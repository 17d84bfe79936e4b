"""Task checkpoints in the task's process and the executors: what is saved, paced, refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import xpipe
from tests.harness import eventually
from xpipe import _codec
from xpipe._checkpoint import CheckpointOutsideTaskError, TaskCheckpoints
from xpipe._limits import MAX_TASK_CHECKPOINT_BYTES
from xpipe._proto import common_pb2, worker_pb2
from xpipe.coordinator._task_checkpoints import check_checkpoint_save
from xpipe.worker._executor import ProcessExecutor
from xpipe.worker._runtask import run_assignment
from xpipe.worker._thread_executor import ThreadExecutor

HELPERS = "tests.helpers_checkpoints"


def _assignment(call: str, *upstream: Any, attempt: int = 1, saved: Any = None, interval_s: float = 0.0):
    a = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id="run-1", task="t", attempt=attempt))
    a.task.name = "t"
    a.task.python.import_path = f"{HELPERS}:{call}"
    a.task.checkpoint_interval_s = interval_s
    for i, value in enumerate(upstream):
        a.task.depends_on.append(f"u{i}")
        a.upstream.append(_codec.encode(value))
    if saved is not None:
        a.checkpoint.CopyFrom(_codec.encode(saved))
    return a


def _saves(sent: list[bytes]) -> list[tuple[int, Any]]:
    out = []
    for data in sent:
        save = worker_pb2.CheckpointSave.FromString(data)
        out.append((save.seq, _codec.decode(save.state)))
    return out


def _outcome(event: worker_pb2.TaskEvent) -> Any:
    assert event.WhichOneof("kind") == "succeeded", event
    return _codec.decode(event.succeeded.result)


def test_outside_a_task_both_calls_say_so():
    with pytest.raises(CheckpointOutsideTaskError, match=r"xpipe\.checkpoint\(\) works only inside"):
        xpipe.checkpoint({"step": 1})
    with pytest.raises(CheckpointOutsideTaskError, match=r"xpipe\.last_checkpoint\(\) works only inside"):
        xpipe.last_checkpoint()
    assert isinstance(CheckpointOutsideTaskError("x"), xpipe.XpipeError)


def test_every_save_goes_out_in_order_and_the_next_attempt_starts_from_the_given_one():
    sent: list[bytes] = []
    event = run_assignment(_assignment("save_each", [1, 2, 3]), None, {}, checkpoint_send=sent.append)
    assert _outcome(event) == {"started": None, "last": 3}
    assert _saves(sent) == [(1, 1), (2, 2), (3, 3)]
    attempt = worker_pb2.CheckpointSave.FromString(sent[0]).attempt
    assert (attempt.run_id, attempt.task, attempt.attempt) == ("run-1", "t", 1)

    sent.clear()
    event = run_assignment(_assignment("save_each", [], attempt=2, saved={"step": 7}), None, {},
                           checkpoint_send=sent.append)  # fmt: skip
    assert _outcome(event) == {"started": {"step": 7}, "last": {"step": 7}}
    assert sent == []
    with pytest.raises(CheckpointOutsideTaskError):  # the attempt is over
        xpipe.checkpoint(1)


def test_an_unpicklable_state_fails_the_task_naming_its_type():
    sent: list[bytes] = []
    event = run_assignment(_assignment("save_unpicklable"), None, {}, checkpoint_send=sent.append)
    error = event.failed.error
    assert error.exception_type == "SerializationError"
    assert "xpipe.checkpoint()" in error.message and "dict" in error.message and "lock" in error.message
    assert sent == []


def test_a_state_over_the_limit_is_refused_naming_the_limit():
    sent: list[bytes] = []
    event = run_assignment(_assignment("save_bytes", MAX_TASK_CHECKPOINT_BYTES + 1024), None, {},
                           checkpoint_send=sent.append)  # fmt: skip
    error = event.failed.error
    assert error.exception_type == "SerializationError"
    assert f"over the limit of {MAX_TASK_CHECKPOINT_BYTES} bytes (MAX_TASK_CHECKPOINT_BYTES)" in error.message
    assert sent == []


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _book(interval_s: float, sent: list[bytes], clock: Any = time.monotonic) -> TaskCheckpoints:
    spec = common_pb2.TaskSpec(name="t", checkpoint_interval_s=interval_s)
    ref = worker_pb2.AttemptRef(run_id="run-1", task="t", attempt=1)
    return TaskCheckpoints(ref, spec, None, sent.append, clock=clock)


def test_within_the_interval_saves_are_held_and_the_newest_wins():
    sent: list[bytes] = []
    clock = _Clock()
    book = _book(3600.0, sent, clock)  # the timer never fires within this test
    book.save("a")
    book.save("b")
    book.save("c")
    assert _saves(sent) == [(1, "a")]
    assert book.last() == "c"  # the task reads its newest state, held or sent
    clock.now += 3600.0
    book.save("d")  # the interval passed: sent at once, "c" was replaced without being sent
    assert _saves(sent) == [(1, "a"), (2, "d")]
    book.save("e")
    book.close(flush=False)  # a success drops what is held
    assert _saves(sent)[-1] == (2, "d")
    assert (book.sent, book.coalesced) == (2, 3)


def test_a_failed_attempt_sends_what_it_held_and_the_timer_sends_it_when_due():
    sent: list[bytes] = []
    book = _book(3600.0, sent)
    book.save(1)
    book.save(2)
    book.close(flush=True)
    assert _saves(sent) == [(1, 1), (2, 2)]

    sent = []
    book = _book(0.2, sent)
    book.save("first")
    book.save("held")
    assert _saves(sent) == [(1, "first")]
    eventually(lambda: len(sent) == 2, timeout_s=5, message="the held save was never sent")
    assert _saves(sent)[1] == (2, "held")
    book.close(flush=True)
    assert len(sent) == 2  # nothing held any more


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_executors_hand_saves_to_their_sink_with_the_attempt(kind):
    async def main() -> list[tuple[tuple, int, Any]]:
        got: list[tuple[tuple, int, Any]] = []
        executor = ProcessExecutor(1, imports=[HELPERS]) if kind == "process" else ThreadExecutor(1)

        def sink(key: tuple, data: bytes) -> None:
            save = worker_pb2.CheckpointSave.FromString(data)
            got.append((key, save.seq, _codec.decode(save.state)))

        executor.set_checkpoint_sink(sink)
        async with executor:
            event = await executor.run(_assignment("save_each", ["x", "y"], attempt=3), None)
            assert _outcome(event) == {"started": None, "last": "y"}
            await asyncio.sleep(0)  # the thread executor's saves arrive by call_soon_threadsafe
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert got == [(("run-1", "t", 3), 1, "x"), (("run-1", "t", 3), 2, "y")]


def test_the_coordinator_refuses_a_malformed_save_naming_the_field():
    good = worker_pb2.CheckpointSave(attempt=worker_pb2.AttemptRef(run_id="r", task="t", attempt=1), seq=1,
                                     state=_codec.encode(1))  # fmt: skip
    assert check_checkpoint_save(good) == ""
    no_attempt = worker_pb2.CheckpointSave(seq=1, state=_codec.encode(1))
    assert "CheckpointSave.attempt" in check_checkpoint_save(no_attempt)
    empty = worker_pb2.CheckpointSave(attempt=good.attempt, seq=1)
    assert "is empty" in check_checkpoint_save(empty)
    big = worker_pb2.CheckpointSave(attempt=good.attempt, seq=1,
                                    state=common_pb2.Payload(data=b"x" * (MAX_TASK_CHECKPOINT_BYTES + 1)))  # fmt: skip
    assert f"over the limit of {MAX_TASK_CHECKPOINT_BYTES} bytes" in check_checkpoint_save(big)


# ---- the coordinator's book, on a real SQLite store -------------------------------


def _save(run_id: str, attempt: int, seq: int, state: Any) -> worker_pb2.CheckpointSave:
    ref = worker_pb2.AttemptRef(run_id=run_id, task="t", attempt=attempt)
    return worker_pb2.CheckpointSave(attempt=ref, seq=seq, state=_codec.encode(state))


def _running(state: Any, run_id: str, worker: str, attempt: int) -> None:
    """Put ``run_id`` in the scheduler's state with task ``t`` running ``attempt`` on ``worker``."""
    from xpipe.coordinator._entries import RunEntry

    run = state.runs.get(run_id) or RunEntry(run_id, common_pb2.PipelineSpec(name="p", tasks=[{"name": "t"}]), 1.0)
    state.runs[run_id] = run
    entry = run.tasks["t"]
    entry.state, entry.worker, entry.attempt = common_pb2.RUNNING, worker, attempt


def test_book_keeps_the_current_attempts_newest_save_sealed_and_reloads_it(tmp_path):
    from xpipe.coordinator._events import RunRecord
    from xpipe.coordinator._state import SchedulerState
    from xpipe.coordinator._store import SQLiteStore
    from xpipe.coordinator._task_checkpoints import TaskCheckpointBook
    from xpipe.security._atrest import AtRest
    from xpipe.security._keys import create_keyring

    keyfile = tmp_path / "keys.json"
    create_keyring(keyfile)
    marker = "MARKER-checkpoint-41c9"

    async def scenario() -> None:
        store = SQLiteStore(tmp_path / "xpipe.db", crypt=AtRest(keyfile))
        await store.open()
        try:
            state = SchedulerState()
            book = TaskCheckpointBook(store, state)
            _running(state, "r1", "w1", 1)
            assert await book.save("w1", _save("r1", 1, 1, {"step": 1, "note": marker}))
            assert not await book.save("w2", _save("r1", 1, 2, "from a worker that does not run it"))
            assert not await book.save("w1", _save("r1", 0, 9, "from an older attempt"))
            assert await book.save("w1", _save("r1", 1, 3, {"step": 3, "note": marker}))
            assert not await book.save("w1", _save("r1", 1, 2, "older than the stored seq"))
            assert book.field(("r1", "t", 1)) == b""  # the running attempt has its own
            sent = worker_pb2.Assignment.FromString(book.field(("r1", "t", 2)))
            assert _codec.decode(sent.checkpoint) == {"step": 3, "note": marker}
            _running(state, "r1", "w2", 2)  # the task moved on: attempt 1 is stale now
            assert not await book.save("w1", _save("r1", 1, 4, "stale"))
            assert book.written == 2

            reloaded = TaskCheckpointBook(store, SchedulerState())  # as a restarted coordinator
            await reloaded.restore(["r1"])
            again = worker_pb2.Assignment.FromString(reloaded.field(("r1", "t", 2)))
            assert _codec.decode(again.checkpoint) == {"step": 3, "note": marker}
            reloaded.drop_runs(["r1"])
            assert reloaded.field(("r1", "t", 2)) == b"" and not reloaded

            # Sealed at rest: the marker is nowhere in the database file.
            db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("xpipe.db*") if p.is_file())
            assert marker.encode() not in db_bytes

            # Deleted with its run (retention, xpipe gc).
            await store.commit([RunRecord("r1", "p", common_pb2.RUN_SUCCEEDED, 1.0, 2.0, 1,
                                          spec=common_pb2.PipelineSpec(name="p"))])  # fmt: skip
            assert await store.delete_runs(["r1"]) == 1
            assert await store.task_checkpoints("r1") == []
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_store_that_refuses_the_write_is_logged_and_nothing_is_kept(tmp_path, caplog):
    from xpipe.coordinator._state import SchedulerState
    from xpipe.coordinator._store import SQLiteStore
    from xpipe.coordinator._task_checkpoints import TaskCheckpointBook

    async def scenario() -> None:
        store = SQLiteStore(tmp_path / "xpipe.db")
        await store.open()
        await store.close()  # every write now fails: "store is not open"
        state = SchedulerState()
        book = TaskCheckpointBook(store, state)
        _running(state, "r1", "w1", 1)
        assert not await book.save("w1", _save("r1", 1, 1, "lost"))
        assert book.field(("r1", "t", 2)) == b"" and book.written == 0

    with caplog.at_level("WARNING", logger="xpipe.coordinator._task_checkpoints"):
        asyncio.run(scenario())
    assert "checkpoint 1 of task 't' (run r1, attempt 1) was not stored: store is not open" in caplog.text


def test_the_worker_sends_a_save_holds_it_while_disconnected_and_drops_a_malformed_one(caplog):
    from xpipe.worker._daemon import WorkerConfig, WorkerDaemon

    daemon = WorkerDaemon(WorkerConfig(coordinators=("127.0.0.1:1",)))
    key = ("run-1", "t", 2)
    save = _save("run-1", 1, 1, {"step": 4})  # names attempt 1: the executor's key wins

    daemon._checkpoint_out(key, save.SerializeToString())  # not connected, attempt not running: dropped
    assert daemon._held_checkpoints == {}
    daemon._state.running.add(key)
    daemon._checkpoint_out(key, save.SerializeToString())
    daemon._checkpoint_out(key, _save("run-1", 2, 2, {"step": 5}).SerializeToString())
    held = daemon._held_checkpoints[key]
    assert (held.attempt.attempt, held.seq, _codec.decode(held.state)) == (2, 2, {"step": 5})  # newest per attempt

    queue: asyncio.Queue = asyncio.Queue()
    daemon._send = queue
    daemon._checkpoint_out(key, save.SerializeToString())
    message = queue.get_nowait()
    assert message.checkpoint.attempt.attempt == 2 and message.checkpoint.seq == 1

    with caplog.at_level("WARNING", logger="xpipe.worker._daemon"):
        daemon._checkpoint_out(key, b"\xff\xff\xff")
    assert "dropped a malformed checkpoint of ('run-1', 't', 2)" in caplog.text
    assert queue.empty()
