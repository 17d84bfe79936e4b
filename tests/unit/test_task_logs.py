"""The pure and local parts of task logs: the worker's buffer, the coordinator's store, formats."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest
from xpipe._proto import pipeline_pb2, worker_pb2
from xpipe._types import LogChunk, format_logs
from xpipe.coordinator._logs import TaskLogStore, check_log_batch
from xpipe.telemetry._logformat import JsonFormatter, configure_logging
from xpipe.telemetry._tasklogs import STDERR, STDOUT
from xpipe.worker._executor import ProcessExecutor
from xpipe.worker._thread_executor import ThreadExecutor
from xpipe.worker._tasklogs import TaskLogBuffer

from tests.unit.test_executor import assignment, key_of, run, value

A = ("run-1", "t", 1)
B = ("run-1", "u", 1)


def entries(batch: worker_pb2.TaskLogBatch | None) -> list[tuple]:
    assert batch is not None
    return [(e.attempt.task, e.stream, e.data, e.dropped_bytes, e.final) for e in batch.entries]


# ---- the worker's buffer --------------------------------------------------------


def test_output_waits_for_the_flush_interval_then_leaves_merged_in_order():
    buf = TaskLogBuffer(flush_interval_s=0.2)
    buf.add(A, STDOUT, b"one\n", now=10.0)
    buf.add(A, STDOUT, b"two\n", now=10.1)
    buf.add(A, STDERR, b"oops\n", now=10.1)
    assert not buf.due(10.19) and buf.wait_s(10.1) == pytest.approx(0.1)
    assert buf.due(10.21)
    assert entries(buf.take()) == [("t", STDOUT, b"one\ntwo\n", 0, False), ("t", STDERR, b"oops\n", 0, False)]
    assert buf.take() is None and not buf.due(99.0) and buf.wait_s(99.0) is None


def test_an_attempt_that_ends_is_due_at_once_with_a_final_entry_and_a_silent_one_costs_nothing():
    buf = TaskLogBuffer()
    buf.end(B)  # wrote nothing: nothing to send
    assert not buf.due(0.0) and buf.take() is None
    buf.add(A, STDOUT, b"x\n", now=0.0)
    buf.end(A)
    assert buf.due(0.0)
    assert entries(buf.take()) == [("t", STDOUT, b"x\n", 0, False), ("t", 0, b"", 0, True)]
    assert buf.take() is None


def test_the_per_attempt_cap_keeps_the_head_and_counts_the_rest_in_a_marker():
    buf = TaskLogBuffer(10)
    buf.add(A, STDOUT, b"0123456", now=0.0)
    buf.add(A, STDERR, b"abcdef", now=0.0)  # 3 kept, 3 over
    buf.add(A, STDOUT, b"more", now=0.0)  # all over
    buf.add(B, STDOUT, b"other", now=0.0)  # another attempt has its own cap
    buf.end(A)
    got = entries(buf.take())
    assert got == [
        ("t", STDOUT, b"0123456", 0, False),
        ("t", STDERR, b"abc", 0, False),
        ("u", STDOUT, b"other", 0, False),
        ("t", STDOUT, b"", 4, False),
        ("t", STDERR, b"", 3, False),
        ("t", 0, b"", 0, True),
    ]
    assert buf.dropped_cap_bytes == 7
    buf.add(A, STDOUT, b"stray", now=1.0)  # a leftover process of the ended attempt: same cap
    assert entries(buf.take()) == [("t", STDOUT, b"", 5, False)]


def test_a_full_buffer_sheds_new_output_with_a_marker_placed_where_it_was_lost():
    buf = TaskLogBuffer(1 << 20, max_pending_bytes=8)
    buf.add(A, STDOUT, b"12345678", now=0.0)
    buf.add(A, STDOUT, b"lost", now=0.0)  # no room: the coordinator has not taken the first yet
    assert buf.dropped_pending_bytes == 4 and buf.pending_bytes == 8
    assert entries(buf.take()) == [("t", STDOUT, b"12345678", 0, False), ("t", STDOUT, b"", 4, False)]
    buf.add(A, STDOUT, b"back", now=1.0)
    assert entries(buf.take()) == [("t", STDOUT, b"back", 0, False)]


def test_batches_hold_about_max_bytes_each():
    buf = TaskLogBuffer(1 << 30, max_pending_bytes=1 << 30)
    for i in range(10):
        buf.add((f"r{i}", "t", 1), STDOUT, b"x" * 1000, now=0.0)
    sizes = []
    while (batch := buf.take(max_bytes=3000)) is not None:
        sizes.append(sum(len(e.data) for e in batch.entries))
    assert sizes == [3000, 3000, 3000, 1000] and buf.pending_bytes == 0


def test_a_negative_cap_is_refused():
    with pytest.raises(ValueError, match="max_bytes_per_attempt must not be negative, got -1"):
        TaskLogBuffer(-1)


# ---- executors hand output to the sink --------------------------------------------


def _printing(what: str) -> str:
    return f"import sys; print('out {what}'); print('err {what}', file=sys.stderr)"


def test_process_executor_sends_each_attempts_output_to_the_sink():
    got: list[tuple] = []

    async def main():
        async with ProcessExecutor(1) as ex:
            ex.set_log_sink(lambda key, stream, data: got.append((key, stream, data)))
            first = assignment(call="builtins:print", args=None)
            second = assignment(argv=[sys.executable, "-c", _printing("cmd")])
            await ex.run(first, None)
            await ex.run(second, None)
            return key_of(first), key_of(second)

    first, second = run(main())
    joined = {}
    for key, stream, data in got:
        joined[(key, stream)] = joined.get((key, stream), b"") + data
    assert joined == {(first, STDOUT): b"\n", (second, STDOUT): b"out cmd\n", (second, STDERR): b"err cmd\n"}


def test_thread_executor_routes_a_task_threads_print_and_logging_to_its_attempt(capsys):
    got: list[tuple] = []
    task_logger = logging.getLogger("tests.unit.test_task_logs.task")
    task_logger.setLevel(logging.INFO)

    async def main():
        ex = ThreadExecutor(1)
        ex.set_log_sink(lambda key, stream, data: got.append((key, stream, data)))
        async with ex:
            a = assignment(call="tests.helpers_logs:quick")
            b = assignment(call="builtins:print")
            event_a = await ex.run(a, None)
            await ex.run(b, None)
            print("the worker's own line")  # outside any task: not routed
            await asyncio.sleep(0)  # let call_soon_threadsafe deliveries run
            return key_of(b), event_a

    key_b, event_a = run(main())
    assert value(event_a) == 1
    assert (key_b, STDOUT, b"\n") in got
    assert all(key == key_b for key, _, _ in got)
    assert "the worker's own line" in capsys.readouterr().out
    assert sys.stdout.__class__.__name__ != "_RoutedStream"  # undone on stop


# ---- the coordinator's store ----------------------------------------------------


def _batch(*items: tuple) -> worker_pb2.TaskLogBatch:
    out = worker_pb2.TaskLogBatch()
    for key, stream, data, dropped, final in items:
        out.entries.add(attempt=worker_pb2.AttemptRef(run_id=key[0], task=key[1], attempt=key[2]), stream=stream,
                        data=data, dropped_bytes=dropped, final=final)  # fmt: skip
    return out


def test_the_store_caps_each_attempt_keeps_order_and_survives_a_reopen(tmp_path):
    path = tmp_path / "task-logs.db"

    async def write():
        async with TaskLogStore(path, max_bytes_per_attempt=8) as store:
            changed = store.watch("run-1")
            store.append(_batch((A, STDOUT, b"hello ", 0, False), (B, STDERR, b"b\n", 0, False)), now=1.0)
            store.append(_batch((A, STDOUT, b"world\n", 0, False), (A, 0, b"", 0, True)), now=2.0)
            await asyncio.wait_for(changed.wait(), 5)
            store.unwatch("run-1", changed)
            return store.dropped_bytes

    assert asyncio.run(write()) == 4  # "hello " + "wo" fit in 8 bytes; "rld\n" did not

    async def read():
        async with TaskLogStore(path) as store:
            return await store.read("run-1"), await store.read("run-1", "t", 1), await store.read("run-2")

    every, only_a, other = asyncio.run(read())
    assert [(r.task, r.stream, r.data, r.dropped_bytes, r.final) for r in every] == [
        ("t", STDOUT, b"hello ", 0, False),
        ("u", STDERR, b"b\n", 0, False),
        ("t", STDOUT, b"wo", 4, False),
        ("t", 0, b"", 0, True),
    ]
    assert [r.task for r in only_a] == ["t", "t", "t"] and other == []
    assert [r.seq for r in every] == sorted(r.seq for r in every)


def test_the_store_sheds_output_it_cannot_hold_with_a_marker(tmp_path):
    async def main():
        async with TaskLogStore(tmp_path / "logs.db", max_pending_bytes=4) as store:
            store.append(_batch((A, STDOUT, b"abcd", 0, False), (A, STDOUT, b"efgh", 0, False)), now=1.0)
            for _ in range(100):
                rows = await store.read("run-1")
                if len(rows) == 2:
                    return rows, store.dropped_bytes
                await asyncio.sleep(0.01)  # the writer's turn; bounded by the loop count
            raise AssertionError(f"rows never written: {rows}")

    rows, dropped = asyncio.run(main())
    assert [(r.data, r.dropped_bytes) for r in rows] == [(b"abcd", 0), (b"", 4)] and dropped == 4


def test_a_bad_log_batch_is_refused_naming_the_field():
    good = _batch((A, STDOUT, b"x", 0, False))
    assert check_log_batch(good) == ""
    assert "entries[0].attempt.run_id" in check_log_batch(_batch((("", "t", 1), STDOUT, b"x", 0, False)))
    assert "entries[0].attempt.task" in check_log_batch(_batch((("r", "t" * 1000, 1), STDOUT, b"x", 0, False)))
    assert "entries[0].stream is 7" in check_log_batch(_batch((A, 7, b"x", 0, False)))


# ---- how logs are shown, and the daemons' own format -----------------------------


def test_format_logs_heads_each_attempt_and_shows_markers():
    chunks = [
        LogChunk.from_proto(pipeline_pb2.TaskLogChunk(task="t", attempt=1, stream=STDOUT, data=b"a")),
        LogChunk.from_proto(pipeline_pb2.TaskLogChunk(task="t", attempt=1, stream=STDOUT, truncated_bytes=9)),
        LogChunk.from_proto(pipeline_pb2.TaskLogChunk(task="t", attempt=2, stream=STDERR, data=b"b\n")),
    ]
    assert "".join(format_logs(chunks)) == (
        "==> task 't' attempt 1 <==\na"
        "[xpipe: 9 bytes of stdout dropped (over the per-attempt log cap, or shed under load)]\n"
        "==> task 't' attempt 2 <==\nb\n"
    )


def test_json_log_lines_carry_the_run_task_attempt_and_stimulus_ids():
    record = logging.LogRecord("xpipe.x", logging.WARNING, __file__, 1, "task %s failed", ("t",), None)
    record.run_id, record.task, record.attempt, record.stimulus_id = "r1", "t", 2, "ws-w-1.5"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "task t failed" and line["level"] == "WARNING" and line["logger"] == "xpipe.x"
    assert (line["run_id"], line["task"], line["attempt"], line["stimulus_id"]) == ("r1", "t", 2, "ws-w-1.5")
    plain = json.loads(JsonFormatter().format(logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)))
    assert "run_id" not in plain and plain["ts"].endswith("Z")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("INFO", "xml")


def test_a_write_sqlite_refuses_is_logged_and_later_writes_go_on(tmp_path, caplog):
    async def main():
        async with TaskLogStore(tmp_path / "logs.db") as store:
            loop = asyncio.get_running_loop()
            # SQLite itself refuses the writes (as for a read-only or full disk), on the store's thread.
            await loop.run_in_executor(store._io, store._db.execute, "PRAGMA query_only=ON")
            store.append(_batch((A, STDOUT, b"lost\n", 0, False)), now=1.0)
            for _ in range(200):
                if "task log rows" in caplog.text:
                    break
                await asyncio.sleep(0.01)  # the writer's turn; bounded by the loop count
            await loop.run_in_executor(store._io, store._db.execute, "PRAGMA query_only=OFF")
            changed = store.watch("run-1")
            store.append(_batch((A, STDOUT, b"kept\n", 0, False)), now=2.0)
            await asyncio.wait_for(changed.wait(), 5)
            return await store.read("run-1")

    with caplog.at_level(logging.ERROR, logger="xpipe.coordinator._logs"):
        rows = asyncio.run(main())
    assert "cannot write 1 task log rows" in caplog.text and "they are lost" in caplog.text
    assert [r.data for r in rows] == [b"kept\n"]


def test_a_bad_attempt_is_refused_before_anything_is_sent():
    from xpipe import Client
    from xpipe._cli import main

    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="attempt must be an int >= 0"):
            Client._logs_request("run-1", "", bad, follow=False)
    with pytest.raises(SystemExit, match="--attempt must be >= 0"):
        main(["logs", "run-1", "--attempt", "-1", "--coordinator", "127.0.0.1:1"])


# ---- when a reader has it all -----------------------------------------------------


class _Entry:
    def __init__(self, name: str, state: int, attempt: int, finished_at: float = 0.0):
        self.name, self.state, self.attempt, self.finished_at = name, state, attempt, finished_at


class _Run:
    def __init__(self, *entries: _Entry):
        self.tasks = {e.name: e for e in entries}


def test_a_follower_is_done_when_every_task_finished_and_its_final_entry_came():
    from xpipe._proto import common_pb2 as pb
    from xpipe.coordinator._logs import logs_awaited

    run = _Run(_Entry("a", pb.SUCCEEDED, 1), _Entry("b", pb.RUNNING, 2))
    assert logs_awaited(run, "", 0, set()) is True  # b still runs
    assert logs_awaited(run, "a", 0, set()) is False  # a finished, its final entry not here yet
    assert logs_awaited(run, "a", 0, {("a", 1)}) is None
    assert logs_awaited(run, "b", 1, {("b", 1)}) is None  # attempt 1 of b is over and complete
    assert logs_awaited(run, "b", 1, set()) is False
    assert logs_awaited(_Run(_Entry("s", pb.SKIPPED, 0)), "", 0, set()) is None  # never ran: nothing to wait for
    assert logs_awaited(None, "", 0, set()) is None  # not in memory: long finished


def test_a_plain_read_waits_only_for_tasks_that_just_finished_without_their_final_entry():
    from xpipe._proto import common_pb2 as pb
    from xpipe.coordinator._logs import logs_lag_s
    from xpipe.telemetry._tasklogs import TASK_LOG_LAG_S

    now = 1000.0
    run = _Run(_Entry("old", pb.SUCCEEDED, 1, now - 5), _Entry("new", pb.FAILED, 2, now - 0.03),
               _Entry("running", pb.RUNNING, 1))  # fmt: skip
    assert logs_lag_s(run, "old", 0, set(), now) == 0.0
    assert logs_lag_s(run, "", 0, set(), now) == pytest.approx(TASK_LOG_LAG_S - 0.03)
    assert logs_lag_s(run, "", 0, {("new", 2)}, now) == 0.0
    assert logs_lag_s(run, "new", 0, set(), now + 10) == 0.0
    assert logs_lag_s(None, "", 0, set(), now) == 0.0
