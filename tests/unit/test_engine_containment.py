"""A bug in one run is not an outage: the engine fails that run and goes on.

Faults are injected by a state machine whose hooks raise for one named pipeline only
(dask's ``BlockedGatherDep`` habit): the engine, the SQLite store and the worker stream
queue are the real ones.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness import eventually_async
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._engine import Engine, EngineConfig, InternalError
from xpipe.coordinator._events import HeartbeatReceived, TaskSucceeded, WorkerConnected
from xpipe.coordinator._state import INTERNAL_ERROR, SchedulerState
from xpipe.coordinator._store import SQLiteStore

CAUSE = "injected fault for the containment test"


class FaultyState(SchedulerState):
    """Raises in one chosen place, for runs of the pipeline named ``bad`` only."""

    def __init__(self, where: str):
        super().__init__(prefetch=8, heartbeat_timeout_s=30.0, validate=True)
        self.where = where

    def _bad(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run.name == "bad"

    def _on_result(self, ev, out):
        if self.where == "result" and self._bad(ev.attempt[0]) and ev.attempt[1] == "a":
            super()._on_result(ev, out)  # half-applied: the task moved, then the bug
            raise RuntimeError(CAUSE)
        super()._on_result(ev, out)

    def _on_submitted(self, ev, out):
        super()._on_submitted(ev, out)
        if self.where == "submit" and self._bad(ev.run_id):
            raise RuntimeError(CAUSE)

    def _assign(self, run, task, worker, now, out):
        if self.where == "assign" and run.name == "bad" and task.name == "b":
            raise RuntimeError(CAUSE)
        super()._assign(run, task, worker, now, out)

    def _on_heartbeat(self, ev, out):
        if self.where == "heartbeat":
            raise RuntimeError(CAUSE)
        super()._on_heartbeat(ev, out)


def _spec(name: str, *, chain: bool = False) -> pb.PipelineSpec:
    """Tasks a and b (b after a when ``chain``), then c after both."""
    spec = pb.PipelineSpec(name=name)
    spec.tasks.add(name="a").command.argv.append("true")
    b = spec.tasks.add(name="b")
    b.command.argv.append("true")
    if chain:
        b.depends_on.append("a")
    c = spec.tasks.add(name="c", depends_on=["a", "b"])
    c.command.argv.append("true")
    return spec


class Harness:
    """An engine on a real store with one pretend worker stream that answers every assignment."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.session = engine.connect_worker("w1")
        self.cancelled: list[tuple[str, str, int]] = []
        engine.post(WorkerConnected(time.time(), "w1", "w1", "localhost", 4))
        self._answer = True

    def pump(self, *, answer: bool = True) -> None:
        """Take what the engine sent; succeed each assignment (unless told not to)."""
        outbox = self.session.outbox
        while not outbox.empty():
            message = outbox.get_nowait()
            if message is None:
                continue
            body = message.WhichOneof("body")
            if body == "cancel":
                self.cancelled += [(r.run_id, r.task, r.attempt) for r in message.cancel.attempts]
            elif body == "assignments" and answer:
                for raw in message.assignments.assignments:
                    a = worker_pb2.Assignment.FromString(raw)
                    key = (a.attempt.run_id, a.attempt.task, a.attempt.attempt)
                    now = time.time()
                    self.engine.post(TaskSucceeded(now, "w1", key, now, pb.Payload(), now))

    async def until(self, condition, timeout_s: float = 5.0, *, answer: bool = True) -> None:
        """Wait for ``condition``, answering the engine's assignments as a worker would meanwhile."""

        def pumped() -> bool:
            if condition():
                return True
            self.pump(answer=answer)
            return False

        what = getattr(condition, "__name__", "")
        await eventually_async(pumped, timeout_s=timeout_s, interval_s=0.005, message=what)


def _state_of(engine: Engine, run_id: str) -> int:
    run = engine.state.runs.get(run_id)
    return run.state if run is not None else pb.RUN_STATE_UNSPECIFIED


def _finished(engine: Engine, *run_ids: str):
    return lambda: all(_state_of(engine, r) in (pb.RUN_SUCCEEDED, pb.RUN_FAILED) for r in run_ids)


async def _with_engine(tmp_path, where: str, body) -> None:
    store = SQLiteStore(tmp_path / "xpipe.db")
    await store.open()
    engine = Engine(store, EngineConfig(tick_interval_s=0.02))
    engine.state = FaultyState(where)
    await engine.start()
    try:
        await body(engine, store, Harness(engine))
        loop_task = engine._tasks[0]
        assert not loop_task.done(), "the engine loop ended"
        engine.state.validate()
    finally:
        await engine.stop()
        await store.close()


async def _assert_internal_failure(engine: Engine, store: SQLiteStore, run_id: str) -> None:
    assert _state_of(engine, run_id) == pb.RUN_FAILED
    stored = await store.get_run(run_id)
    assert stored is not None and stored.header.state == pb.RUN_FAILED
    errors = [t.error for t in stored.tasks.values() if t.error is not None and t.error.error_type == INTERNAL_ERROR]
    assert errors, "no task carries the INTERNAL error"
    assert all(CAUSE in e.message for e in errors)
    # The store has every task of the run in a terminal state, as memory does.
    assert {t.name for t in stored.tasks.values()} == {"a", "b", "c"}
    assert all(t.state in (pb.SUCCEEDED, pb.FAILED) for t in stored.tasks.values())


def test_a_bug_handling_one_runs_result_fails_that_run_only(tmp_path):
    async def body(engine, store, h):
        bad = await engine.submit(_spec("bad"))
        good = await engine.submit(_spec("good"))
        await h.until(_finished(engine, bad, good))
        assert _state_of(engine, good) == pb.RUN_SUCCEEDED
        await _assert_internal_failure(engine, store, bad)
        # b of the bad run was out on the worker when a's result broke: cancelled, hold released.
        await h.until(lambda: any(k[0] == bad for k in h.cancelled))
        assert not [k for k in engine.state.workers["w1"].assigned if k[0] == bad]
        assert engine.contained == 1
        # Everyone else goes on: a new run after the bug still runs to the end.
        later = await engine.submit(_spec("later", chain=True))
        await h.until(_finished(engine, later))
        assert _state_of(engine, later) == pb.RUN_SUCCEEDED

    asyncio.run(_with_engine(tmp_path, "result", body))


def test_a_bug_handling_a_submit_answers_it_with_an_internal_error(tmp_path):
    async def body(engine, store, h):
        with pytest.raises(InternalError, match=CAUSE) as caught:
            await engine.submit(_spec("bad"), idempotency_key="k-bad")
        run_id = next(iter(engine.state.runs))
        assert run_id in str(caught.value)
        await _assert_internal_failure(engine, store, run_id)
        good = await engine.submit(_spec("good"))
        await h.until(_finished(engine, good))
        assert _state_of(engine, good) == pb.RUN_SUCCEEDED

    asyncio.run(_with_engine(tmp_path, "submit", body))


def test_a_bug_while_scheduling_one_runs_task_fails_that_run_only(tmp_path):
    async def body(engine, store, h):
        bad = await engine.submit(_spec("bad", chain=True))
        good = await engine.submit(_spec("good", chain=True))
        await h.until(_finished(engine, bad, good))
        assert _state_of(engine, good) == pb.RUN_SUCCEEDED
        await _assert_internal_failure(engine, store, bad)
        stored = await store.get_run(bad)
        assert stored.tasks["a"].state == pb.SUCCEEDED  # done before the bug: kept
        assert "scheduling task 'b'" in stored.tasks["b"].error.message

    asyncio.run(_with_engine(tmp_path, "assign", body))


def test_a_bug_handling_a_worker_event_drops_that_event_only(tmp_path):
    async def body(engine, store, h):
        engine.post(HeartbeatReceived(time.time(), "w1", (), worker_pb2.Heartbeat().metrics))
        await h.until(lambda: engine.contained == 1)
        good = await engine.submit(_spec("good"))
        await h.until(_finished(engine, good))
        assert _state_of(engine, good) == pb.RUN_SUCCEEDED

    asyncio.run(_with_engine(tmp_path, "heartbeat", body))


def test_finished_runs_in_memory_are_bounded_by_estimated_bytes(tmp_path):
    """Past the byte budget the oldest finished runs leave memory; reads then come from the store."""

    async def scenario():
        store = SQLiteStore(tmp_path / "xpipe.db")
        await store.open()
        one_run = 3 * 1900 + 200  # about what estimate_run_bytes gives a 3-task run
        engine = Engine(store, EngineConfig(tick_interval_s=0.02, finished_runs_memory_bytes=2 * one_run))
        await engine.start()
        try:
            h = Harness(engine)
            ids = []
            for i in range(4):
                ids.append(await engine.submit(_spec(f"p{i}")))
                await h.until(lambda: ids[-1] in engine._finished)
            assert [r for r in ids if r in engine.state.runs] == ids[-2:]
            assert engine._finished_bytes <= 2 * one_run
            info = await engine.run_info(ids[0], include_results=False)
            assert info.summary.state == pb.RUN_SUCCEEDED and len(info.tasks) == 3
        finally:
            await engine.stop()
            await store.close()

    asyncio.run(scenario())
