"""The engine shell with a real SQLite store: durability before acknowledgement."""

import asyncio

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
