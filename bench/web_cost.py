"""What the dashboard costs the coordinator (issue 15): run detail of a 10,000-task run, and
the CPU per task of a wide run with one SSE client watching it versus none.

Not the full bench (``python -m bench``): a micro-benchmark in one process. A wide run of
10,000 no-op tasks is driven through the engine in-process (``bench._enginewide``: state
machine, dispatch, and here also ``Engine._notify``, which feeds watchers), one turn per
scheduling round, yielding to the event loop between turns as the real loop does. The
dashboard is the real aiohttp server on loopback; the watching client is a separate
process (``curl``-like urllib reader), so its CPU is not counted. CPU is
``time.process_time()`` of this process: engine, web server and its event streams.
Cases are interleaved, best of ``--repeat``.

Run: ``python -m bench.web_cost [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import EngineConfig
from xpipe.coordinator._events import Assign, RunSubmitted, TaskSucceeded
from xpipe.coordinator._server import Coordinator
from xpipe.coordinator._validate import validate_spec
from xpipe.coordinator._web import WebServer

from bench._enginewide import TASKS, wide_engine, wide_spec

_READER = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
n = 0
with opener.open(sys.argv[1], timeout=120) as r:
    for line in r:
        n += len(line)
        if line.startswith(b"event: end"):
            break
print(n)
"""


def _submit(engine, spec) -> None:
    actions: list = []
    engine.state.handle(RunSubmitted(time.time(), "r1", spec, tuple(validate_spec(spec))), actions)
    engine._notify([a for a in actions if type(a).__name__ in ("RunRecord", "TaskRecord")])


async def _drive(engine) -> None:
    """Run r1 to its end, one engine turn per scheduling round."""
    state = engine.state
    result = pb.Payload(codec=pb.CODEC_RAW, data=b"")
    done, now = 0, time.time()
    while done < TASKS:
        actions: list = []
        state.schedule(now, actions)
        engine._dispatch(actions, engine._number_assignments(actions))
        for action in list(actions):
            if isinstance(action, Assign):
                now += 1e-6
                state.handle(TaskSucceeded(now, action.worker_id, action.attempt, now, result), actions)
                done += 1
        engine._notify([a for a in actions if type(a).__name__ in ("RunRecord", "TaskRecord")])
        for session in engine.sessions.values():
            while not session.outbox.empty():
                session.outbox.get_nowait()
        await asyncio.sleep(0)  # the real loop yields between turns: streams run here


async def one_run(watch: bool) -> float:
    """CPU seconds per task of one wide run, with or without an SSE client watching."""
    c = Coordinator(store=None)  # type: ignore[arg-type]  # never started: only its engine and web are used
    c.engine = wide_engine(EngineConfig())
    web = WebServer(c, "127.0.0.1:0")
    await web.start()
    _submit(c.engine, wide_spec())
    reader = None
    try:
        if watch:  # the reader runs in its own process; wait until it watches (its snapshot is sent then)
            reader = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _READER, f"{web.url}api/runs/r1/events", stdout=subprocess.PIPE)  # fmt: skip
            while "r1" not in c.engine._changed_names:
                await asyncio.sleep(0.005)
        began = time.process_time()
        await _drive(c.engine)
        if reader is not None:
            while "r1" in c.engine._changed_names:  # until the stream sent the end
                await asyncio.sleep(0.001)
        spent = time.process_time() - began
        if reader is not None:
            out, _ = await reader.communicate()
            assert int(out) > 0
        return spent / TASKS
    finally:
        await web.stop()


async def run_detail_ms(repeat: int) -> tuple[float, float, int]:
    """(server-side ms, ms over loopback HTTP, bytes) of GET /api/runs/{id} for a live 10,000-task run."""
    from xpipe.coordinator._web import _api

    c = Coordinator(store=None)  # type: ignore[arg-type]
    c.engine = wide_engine(EngineConfig())
    spec = wide_spec()
    for i in range(1, TASKS):  # a DAG, not a flat fan: each task after t0 waits on one earlier one
        spec.tasks[i].depends_on.append(f"t{(i - 1) // 2}")
    c.engine.state.handle(RunSubmitted(time.time(), "r1", spec, tuple(validate_spec(spec))))
    web = WebServer(c, "127.0.0.1:0")
    await web.start()
    try:
        server_ms, http_ms, size = [], [], 0
        handler = _api.get_run

        class _Req:  # the handler reads only these
            app = web._runner.app
            match_info = {"run_id": "r1"}

        for _ in range(repeat):
            t = time.perf_counter()
            response = await handler(_Req())
            server_ms.append((time.perf_counter() - t) * 1e3)
            size = len(response.text)
            t = time.perf_counter()
            body = await asyncio.to_thread(_get, f"{web.url}api/runs/r1")
            http_ms.append((time.perf_counter() - t) * 1e3)
            assert len(body["tasks"]["name"]) == TASKS
        return min(server_ms), min(http_ms), size
    finally:
        await web.stop()


def _get(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as r:
        return json.loads(r.read())


async def main(repeat: int) -> None:
    server_ms, http_ms, size = await run_detail_ms(max(repeat, 5))
    print(f"run detail, 10,000 tasks: {server_ms:.1f} ms server side, {http_ms:.1f} ms over HTTP, {size / 1e6:.2f} MB")
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeat):
        for watch in (False, True):
            best[watch] = min(best[watch], await one_run(watch))
    off, on = best[False] * 1e6, best[True] * 1e6
    print(f"coordinator CPU per task, wide run: {off:.1f} us unwatched, {on:.1f} us with one SSE client "
          f"(+{(on - off) / off * 100:.1f}%)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args().repeat))
