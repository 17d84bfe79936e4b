"""The transition log and the one event table: what ``xpipe story`` tells, tested without I/O.

Plus the store's side of it: a failed attempt's moves persist with the task row and come
back after a restart (a real SQLite file, no server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from xpipe._limits import STORY_HISTORY_ENTRIES, TRANSITION_LOG_ENTRIES
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator import _events
from xpipe.coordinator._events import (
    CancelAttempts,
    CancelRequested,
    Event,
    RunRestored,
    RunSubmitted,
    TaskFailed,
    TaskRecord,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerConnected,
)
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._story import RESTORED, story_from_records
from xpipe.coordinator._store import SQLiteStore
from xpipe.coordinator._validate import validate_spec

N = pb.TaskState.Name


def spec_of(edges: dict[str, list[str]], *, retries: dict[str, int] | None = None) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name="p", retry_on_failure=True)
    for name, deps in edges.items():
        t = spec.tasks.add(name=name, depends_on=deps)
        t.python.import_path = "m:f"
        t.retry.max_retries = (retries or {}).get(name, 0)
    return spec


def submit(state: SchedulerState, edges, run_id="r1", **kw):
    spec = spec_of(edges, **kw)
    return state.handle(RunSubmitted(0.0, run_id, spec, tuple(validate_spec(spec))))


def connect(state: SchedulerState, wid="w1", slots=1):
    return state.handle(WorkerConnected(0.0, wid, wid, "host", slots))


def ok(key, wid="w1", now=1.0):
    return TaskSucceeded(now, wid, key, now, pb.Payload(codec=pb.CODEC_RAW, data=b"v"))


def fail(key, wid="w1", now=1.0):
    return TaskFailed(now, wid, key, now, pb.TaskError(error_type="TASK_FAILURE", message="boom"))


def moves(entries):
    """(task, attempt, from, to) of each entry: the shape a story is checked by."""
    return [(e[3], e[4], N(e[5]), N(e[6])) for e in entries]


def started(key, wid="w1", now=0.5, sid=""):
    return TaskStarted(now, wid, key, now, stimulus_id=sid)


def with_sid(event: Event, sid: str) -> Event:
    return dataclasses.replace(event, stimulus_id=sid)


def test_every_event_type_has_exactly_one_handler_in_the_table():
    events = {
        obj for obj in vars(_events).values()
        if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event
    }  # fmt: skip
    s = SchedulerState()
    assert set(s._handlers) == events
    with pytest.raises(TypeError, match="unknown event"):
        s.handle(Event(0.0))


def test_stimulus_id_is_keyword_only_with_a_default():
    assert Tick(1.0).stimulus_id == ""
    assert Tick(1.0, stimulus_id="tick-3").stimulus_id == "tick-3"
    with pytest.raises(TypeError):
        Tick(1.0, "tick-3")  # positional: refused, so old call sites cannot shift fields


def test_retry_story_tells_the_failure_then_the_success_on_attempt_two():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    submit(s, {"a": []}, retries={"a": 1})
    s.schedule(0.1, stimulus_id="schedule-1")
    s.handle(started(("r1", "a", 1), sid="ws-w1-1.1"))
    out = s.handle(with_sid(fail(("r1", "a", 1), now=1.0), "ws-w1-1.2"))
    rec = next(a for a in out if isinstance(a, TaskRecord))
    assert rec.state == pb.RETRY_WAIT and rec.stimulus_id == "ws-w1-1.2"
    assert moves(rec.history) == [("a", 1, "READY", "ASSIGNED"), ("a", 1, "ASSIGNED", "RUNNING"),
                                  ("a", 1, "RUNNING", "RETRY_WAIT")]  # fmt: skip
    s.handle(Tick(2.0, stimulus_id="tick-7"))
    s.schedule(2.0, stimulus_id="schedule-2")
    s.handle(started(("r1", "a", 2), now=2.1, sid="ws-w1-1.3"))
    out = s.handle(with_sid(ok(("r1", "a", 2), now=3.0), "ws-w1-1.4"))
    story = s.story("r1")
    assert moves(story) == [
        ("a", 0, "PENDING", "READY"),
        ("a", 1, "READY", "ASSIGNED"),
        ("a", 1, "ASSIGNED", "RUNNING"),
        ("a", 1, "RUNNING", "RETRY_WAIT"),
        ("a", 1, "RETRY_WAIT", "READY"),
        ("a", 2, "READY", "ASSIGNED"),
        ("a", 2, "ASSIGNED", "RUNNING"),
        ("a", 2, "RUNNING", "SUCCEEDED"),
    ]
    assert [e[1] for e in story] == ["", "schedule-1", "ws-w1-1.1", "ws-w1-1.2", "tick-7", "schedule-2",
                                     "ws-w1-1.3", "ws-w1-1.4"]  # fmt: skip
    assert [e[0] for e in story] == [0.0, 0.1, 0.5, 1.0, 2.0, 2.0, 2.1, 3.0]
    assert story[3][7] == "TASK_FAILURE: boom"
    assert story[4][7] == "retry backoff over"
    assert story[5][7] == "worker w1"
    # The success adds nothing to the persisted history: no extra bytes on the success path.
    done = next(a for a in out if isinstance(a, TaskRecord))
    assert done.state == pb.SUCCEEDED and len(done.history) == 3


def test_cancel_story_names_the_request_and_cancels_the_attempt_out():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    submit(s, {"a": [], "b": ["a"]})
    s.schedule(0.1)
    s.handle(started(("r1", "a", 1)))
    out = s.handle(CancelRequested(1.0, "r1", stimulus_id="rpc-cancel-r1"))
    assert [a for a in out if isinstance(a, CancelAttempts)] == [CancelAttempts("w1", (("r1", "a", 1),))]
    tail = s.story("r1")[-2:]
    assert moves(tail) == [("a", 1, "RUNNING", "CANCELLED"), ("b", 0, "PENDING", "CANCELLED")]
    assert {(e[1], e[7]) for e in tail} == {("rpc-cancel-r1", "cancelled by request")}
    assert s.runs["r1"].tasks["b"].error is None  # a user's cancel sets no error


def test_fail_fast_stop_takes_the_same_path_with_the_failure_as_reason():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, slots=2)
    spec = spec_of({"a": [], "b": []})
    spec.fault_tolerance.fail_fast = True
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    s.schedule(0.1)
    s.handle(started(("r1", "a", 1)))
    out = s.handle(with_sid(fail(("r1", "a", 1), now=1.0), "ws-w1-1.9"))
    assert CancelAttempts("w1", (("r1", "b", 1),)) in out
    last = s.story("r1", "b")[-1]
    assert (N(last[5]), N(last[6]), last[1]) == ("ASSIGNED", "CANCELLED", "ws-w1-1.9")
    assert last[7] == "cancelled: task 'a' failed and the run has failure_isolation off"
    assert s.runs["r1"].tasks["b"].error.error_type == "CANCELLED"


def test_upstream_failed_story_blames_the_failed_dependency_and_its_stimulus():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s)
    submit(s, {"a": [], "b": ["a"], "c": ["b"]})
    s.schedule(0.1)
    s.handle(with_sid(fail(("r1", "a", 1), now=1.0), "ws-w1-1.5"))
    tail = s.story("r1")[-3:]
    assert moves(tail) == [("a", 1, "ASSIGNED", "FAILED"), ("b", 0, "PENDING", "UPSTREAM_FAILED"),
                           ("c", 0, "PENDING", "UPSTREAM_FAILED")]  # fmt: skip
    assert {e[1] for e in tail} == {"ws-w1-1.5"}
    assert tail[1][7] == "UPSTREAM_FAILED: upstream task 'a' did not succeed"
    assert moves(s.story("r1", "c")) == [("c", 0, "PENDING", "UPSTREAM_FAILED")]


def test_log_is_bounded_and_keeps_the_newest_moves():
    assert SchedulerState().transitions.maxlen == TRANSITION_LOG_ENTRIES
    s = SchedulerState(prefetch=0, transition_log_entries=5)
    connect(s)
    submit(s, {"a": [], "b": ["a"], "c": ["b"]})
    for name in "abc":
        s.schedule(1.0)
        s.handle(ok(("r1", name, 1)))
    assert len(s.transitions) == 5  # 9 moves were made
    assert moves(s.story("r1")) == [
        ("b", 1, "READY", "ASSIGNED"), ("b", 1, "ASSIGNED", "SUCCEEDED"),
        ("c", 0, "PENDING", "READY"), ("c", 1, "READY", "ASSIGNED"), ("c", 1, "ASSIGNED", "SUCCEEDED"),
    ]  # fmt: skip
    assert s.story("nope") is None


def test_a_task_retried_without_end_keeps_a_bounded_history():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=1e9)
    connect(s)
    submit(s, {"a": []}, retries={"a": 1000})
    now = 0.0
    for attempt in range(1, 40):
        s.schedule(now)
        s.handle(fail(("r1", "a", attempt), now=now))
        now += 1000.0  # past any backoff
        s.handle(Tick(now))
    assert len(s.runs["r1"].tasks["a"].history) == STORY_HISTORY_ENTRIES
    assert s.runs["r1"].tasks["a"].history[-1][4] == 39


def test_fail_run_logs_the_forced_failures_with_the_stimulus():
    s = SchedulerState(prefetch=0)
    connect(s)
    submit(s, {"a": [], "b": ["a"]})
    s.schedule(0.1)
    s.fail_run("r1", "boom inside", 2.0, stimulus_id="ws-w1-3.3")
    assert [(e[1], N(e[5]), N(e[6]), e[7]) for e in s.story("r1")[-2:]] == [
        ("ws-w1-3.3", "ASSIGNED", "FAILED", "INTERNAL: boom inside"),
        ("ws-w1-3.3", "PENDING", "FAILED", "INTERNAL: boom inside"),
    ]


def _retried_then_succeeded() -> SchedulerState:
    s = SchedulerState(prefetch=0)
    connect(s)
    submit(s, {"a": [], "b": ["a"]}, retries={"a": 1})
    s.schedule(0.1)
    s.handle(started(("r1", "a", 1), sid="ws-w1-1.1"))
    s.handle(with_sid(fail(("r1", "a", 1), now=1.0), "ws-w1-1.2"))
    s.handle(Tick(2.0))
    s.schedule(2.0)
    s.handle(started(("r1", "a", 2), now=2.5))
    s.handle(ok(("r1", "a", 2), now=3.0))
    return s


def test_story_from_stored_rows_keeps_the_failed_attempt_and_rebuilds_the_rest():
    s = _retried_then_succeeded()
    story = story_from_records(s.iter_records("r1"), "a")
    assert moves(story) == [
        ("a", 1, "READY", "ASSIGNED"), ("a", 1, "ASSIGNED", "RUNNING"), ("a", 1, "RUNNING", "RETRY_WAIT"),
        ("a", 2, "ASSIGNED", "RUNNING"), ("a", 2, "RUNNING", "SUCCEEDED"),
    ]  # fmt: skip
    assert [e[1] for e in story][1:] == ["ws-w1-1.1", "ws-w1-1.2", RESTORED, RESTORED]
    assert [e[0] for e in story][2:] == [1.0, 2.5, 3.0]


def test_restored_run_starts_its_log_with_what_the_store_knew():
    old = _retried_then_succeeded()
    records = {r.name: r for r in old.iter_records("r1")}
    # As if the old coordinator had stored b before a's success made it READY.
    records["b"] = dataclasses.replace(records["b"], state=pb.PENDING)
    spec = old.runs["r1"].spec
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(RunRestored(10.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records, stimulus_id="recovery-r1"))
    assert moves(s.story("r1", "a"))[2:] == [("a", 1, "RUNNING", "RETRY_WAIT"), ("a", 2, "ASSIGNED", "RUNNING"),
                                             ("a", 2, "RUNNING", "SUCCEEDED")]  # fmt: skip
    # b was PENDING when stored: it becomes READY now, because of the recovery.
    assert [(e[1], N(e[6])) for e in s.story("r1", "b")] == [("recovery-r1", "READY")]


def test_sqlite_store_keeps_history_only_for_tasks_that_failed(tmp_path):
    s = _retried_then_succeeded()
    records = list(s.iter_records("r1"))
    header = s._run_record(s.runs["r1"], spec=s.runs["r1"].spec)

    async def main():
        async with SQLiteStore(tmp_path / "x.db", synchronous="OFF") as store:
            await store.commit([header, *records])
            return await store.get_run("r1")

    stored = asyncio.run(main())
    assert stored.tasks["a"].history == s.runs["r1"].tasks["a"].history
    assert story_from_records(stored.tasks.values()) == story_from_records(records)
    db = sqlite3.connect(tmp_path / "x.db")
    rows = dict(db.execute("SELECT name, history FROM task_history"))
    db.close()
    assert set(rows) == {"a"} and len(rows["a"]) < 200  # compact JSON, and only for the retried task


def test_sqlite_store_made_before_the_history_table_gains_it(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tasks (run_id TEXT NOT NULL, name TEXT NOT NULL, state INTEGER NOT NULL, attempt INTEGER "
        "NOT NULL, worker TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL, error BLOB, "
        "result BLOB, PRIMARY KEY (run_id, name)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO tasks VALUES ('r0', 'x', ?, 1, 'w', 1.0, 2.0, NULL, NULL)", (pb.SUCCEEDED,))
    db.commit()
    db.close()
    s = _retried_then_succeeded()

    async def main():
        async with SQLiteStore(path, synchronous="OFF") as store:
            await store.commit([s._run_record(s.runs["r1"], spec=s.runs["r1"].spec), *s.iter_records("r1")])
            return await store.get_run("r1")

    stored = asyncio.run(main())
    assert len(stored.tasks["a"].history) == 3
    db = sqlite3.connect(path)
    assert db.execute("SELECT state FROM tasks WHERE run_id='r0'").fetchone() == (pb.SUCCEEDED,)  # kept
    db.close()
