"""The engine shell with a real SQLite store: durability before acknowledgement."""

import asyncio
import contextlib

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import Engine
from xpipe.coordinator._store import SQLiteStore


def _spec(name: str) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name=name)
    spec.tasks.add(name="a").command.argv.append("true")
    return spec


def test_a_retried_submit_waits_for_the_first_and_names_the_same_run(tmp_path):
    async def scenario():
        store = SQLiteStore(tmp_path / "x.db")
        await store.open()
        engine = Engine(store)
        await engine.start()
        try:
            first = asyncio.ensure_future(engine.submit(_spec("p"), idempotency_key="k1"))
            await asyncio.sleep(0)  # the first is posted, not yet committed
            again = await engine.submit(_spec("p"), idempotency_key="k1")
            assert again in engine.state.runs  # committed and known when the retry returns
            assert (await store.get_run(again)) is not None
            assert again == await first
            other = await engine.submit(_spec("p"), idempotency_key="k2")
            assert other != again
        finally:
            await engine.stop()
            await store.close()

    asyncio.run(scenario())


class _StalledStore(SQLiteStore):
    """A real SQLite store whose commits wait while ``stalled`` is clear (a slow disk under load)."""

    def __init__(self, path):
        super().__init__(path)
        self.resume = asyncio.Event()
        self.resume.set()
        self.waiting = asyncio.Event()

    async def commit(self, records) -> None:
        if records and not self.resume.is_set():
            self.waiting.set()
            await self.resume.wait()
        await super().commit(records)


@contextlib.asynccontextmanager
async def _submit_held_in_commit(tmp_path):
    """An engine with worker w1 connected, and a submit whose commit is held (``store.resume``).

    Yields (engine, store, w1's session, the submit's future), once the commit is waiting.
    """
    from xpipe.coordinator._events import WorkerConnected

    store = _StalledStore(tmp_path / "x.db")
    await store.open()
    engine = Engine(store)
    await engine.start()
    try:
        session = engine.connect_worker("w1")
        engine.post(WorkerConnected(0.0, "w1", "w1", "host", 1))
        store.resume.clear()
        submitted = asyncio.ensure_future(engine.submit(_spec("p")))
        await asyncio.wait_for(store.waiting.wait(), 10)
        yield engine, store, session, submitted
    finally:
        await engine.stop()
        await store.close()


def test_assignments_are_on_their_way_while_their_turn_commits(tmp_path):
    """A heartbeat read while a turn's commit is awaited must find that turn's assignments on
    their way: counted nowhere, they were requeued as lost once the commit outlasted the grace."""

    async def scenario():
        async with _submit_held_in_commit(tmp_path) as (engine, store, session, submitted):
            (attempt,) = [key for key in engine.state.workers["w1"].assigned]
            # The worker has received nothing yet: its heartbeat's count (0) leaves it on its way.
            assert session.confirm(0) == {attempt}
            assert session.outbox.empty(), "sent before its ASSIGNED record was committed"
            store.resume.set()
            run_id = await asyncio.wait_for(submitted, 10)
            message = await asyncio.wait_for(session.outbox.get(), 10)
            assert len(message.assignments.assignments) == 1 and attempt[0] == run_id
            assert session.queued == 1, "numbered twice"
            assert session.confirm(1) == frozenset()  # received: no longer on its way

    asyncio.run(scenario())


def test_assignments_are_numbered_on_the_stream_they_go_out_on(tmp_path):
    """A worker that connects again while the commit is awaited gets the batch on its new
    stream, numbered there (the worker counts from 0 on each stream)."""

    async def scenario():
        async with _submit_held_in_commit(tmp_path) as (engine, store, old, submitted):
            new = engine.connect_worker("w1")
            assert old.outbox.get_nowait() is None  # the stale stream is told to end
            store.resume.set()
            await asyncio.wait_for(submitted, 10)
            message = await asyncio.wait_for(new.outbox.get(), 10)
            (attempt,) = engine.state.workers["w1"].assigned
            assert len(message.assignments.assignments) == 1
            assert new.queued == 1 and new.confirm(0) == {attempt}

    asyncio.run(scenario())
