"""A coordinator bug in one run reaches the SDK as ``INTERNAL``; everyone else carries on.

The coordinator runs in this process (on its own event loop thread, serving real gRPC on a
loopback port) so that its state machine can be swapped for one with an injected fault,
gated on the pipeline's name; the worker is a real ``xpipe-worker`` process.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from tests import helpers_tasks as ht
from tests.harness import Proc, eventually
from tests.unit.test_engine_containment import CAUSE, FaultyState
from xpipe import Pipeline, PipelineManager, Task
from xpipe.coordinator._engine import EngineConfig
from xpipe.coordinator._server import Coordinator
from xpipe.coordinator._store import SQLiteStore
from xpipe.errors import DistributedExecutionError, PipelineExecutionError


class _Served:
    """A coordinator on a background event loop, with a faulty state machine."""

    def __init__(self, tmp_path, where: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coordinator-loop", daemon=True)
        self.thread.start()
        store = SQLiteStore(tmp_path / "data" / "xpipe.db")
        self.coordinator = Coordinator(store, listen="127.0.0.1:0", config=EngineConfig(tick_interval_s=0.02))
        self.coordinator.engine.state = FaultyState(where)
        self.address = self._run(self.coordinator.start())

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def alive(self) -> bool:
        return not any(t.done() for t in self.coordinator.engine._tasks)

    def close(self) -> None:
        try:
            self._run(self.coordinator.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def served(request, tmp_path) -> Iterator[tuple[_Served, Proc]]:
    served = _Served(tmp_path, request.param)
    worker = Proc("w0", [sys.executable, "-m", "xpipe.worker", "--coordinator", served.address, "--name", "w0",
                         "--slots", "2", "--import", "tests.helpers_tasks"], log_dir=tmp_path / "logs")  # fmt: skip
    try:
        eventually(lambda: any(w.connected for w in served.coordinator.engine.state.workers.values()),
                   timeout_s=20, message="the worker never registered")  # fmt: skip
        yield served, worker
    finally:
        worker.terminate()
        served.close()


def _pipeline(name: str) -> Pipeline:
    # FaultyState("assign") raises placing task "b" of the pipeline named "bad".
    p = Pipeline(name)
    a = Task("a", ht.echo, args=(1,))
    p.add_tasks([a, Task("b", ht.echo, args=(2,)), Task("c", ht.add, depends_on=[a, "b"])])
    return p


@pytest.mark.parametrize("served", ["assign"], indirect=True)
def test_a_bug_placing_a_task_fails_that_run_as_internal_and_others_succeed(served):
    server, _ = served
    with PipelineManager(coordinator=server.address) as pm:
        with pytest.raises(PipelineExecutionError) as caught:
            pm.execute_pipeline(_pipeline("bad"), timeout_s=30)
        assert caught.value.error_type == "INTERNAL"
        assert CAUSE in str(caught.value)
        good = pm.execute_pipeline(_pipeline("good"), timeout_s=30)
        assert good.status == "succeeded" and good.outputs["c"] == 3
    assert server.alive()


@pytest.mark.parametrize("served", ["submit"], indirect=True)
def test_a_bug_handling_a_submit_is_answered_internal_not_a_hang(served):
    server, _ = served
    with PipelineManager(coordinator=server.address) as pm:
        with pytest.raises(DistributedExecutionError, match="INTERNAL") as caught:
            pm.submit(_pipeline("bad"))
        assert CAUSE in str(caught.value)
        assert pm.execute_pipeline(_pipeline("good"), timeout_s=30).status == "succeeded"
    assert server.alive()
