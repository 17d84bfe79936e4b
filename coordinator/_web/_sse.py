"""Server-Sent Event streams: a run's task changes, and a task's log as it is written.

Run events hook into WatchRun's source (``Engine.watch``, summaries only: one queue item
per engine turn) plus :meth:`Engine.track_changes` (a set add per changed task of a
watched run, nothing for other runs); rows are built from the tasks' entries when sent. Each client coalesces what
came in into at most :data:`MAX_MESSAGES_PER_S` messages a second (latest state per
task), and is dropped when it falls behind (:data:`MAX_QUEUED_TURNS` turns unread, or a
write blocked for :data:`WRITE_TIMEOUT_S`): nothing is buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web
from xpipe._domain import TERMINAL_RUN_STATES
from xpipe._proto.common_pb2 import TaskState
from xpipe.telemetry._tasklogs import STDERR

from .._caller import CALLER
from .._logs import READ_ROWS, LogFollower
from ._api import load_run, needs, query_int, run_detail_json
from ._app import COORDINATOR, SERVER
from ._rows import critical_path, run_json, task_columns, task_state_name

__all__ = ["add_routes"]

log = logging.getLogger(__name__)

#: Most run-event messages a client gets per second (changes in between are coalesced).
MAX_MESSAGES_PER_S = 10
#: A big run's page (the pages' level-of-detail view, above this many tasks) gets at most
#: MAX_MESSAGES_PER_S_BIG: each message repaints thousands of cells in the browser, which
#: costs the viewer's CPU per message far more than per change (one a second instead of two
#: cut Chromium's CPU while following a 10,000-task run from 0.31 s to 0.22 s).
BIG_RUN_TASKS = 500
MAX_MESSAGES_PER_S_BIG = 1
#: A big run's critical path is computed here (O(tasks)), at most this often and at its end;
#: its change messages carry only indices and state numbers, no times to compute it from.
CRITICAL_EVERY_S_BIG = 5.0
#: A heartbeat comment this often keeps idle streams open through proxies.
HEARTBEAT_S = 15.0
#: Engine turns a client may leave unread before it is dropped (it reconnects).
MAX_QUEUED_TURNS = 2000
#: A write that blocks this long means the client stopped reading: it is dropped.
WRITE_TIMEOUT_S = 10.0
#: The audit action of a log read: the RPC it mirrors, so one query finds every log read.
_LOGS_ACTION = "/xpipe.v1.PipelineService/GetTaskLogs"
#: Log rows a plain (not following) read answers at most; ``next_after_seq`` pages on.
LOG_ROWS_PER_READ = READ_ROWS


#: The request's prepared event-stream response, returned as it is when the stream is cut.
_STREAM = web.RequestKey("sse", web.StreamResponse)


class _Dropped(Exception):
    """The client fell behind; its stream ends."""


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})  # fmt: skip
    await response.prepare(request)
    request[_STREAM] = response
    return response


async def _send(response: web.StreamResponse, event: str, data) -> None:
    payload = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n" if event else data
    try:
        await asyncio.wait_for(response.write(payload.encode()), WRITE_TIMEOUT_S)
    except TimeoutError:
        raise _Dropped(f"a write blocked for {WRITE_TIMEOUT_S:.0f}s") from None


def _tracked(handler):
    """Register the stream's task with the server, so stopping the server ends it."""

    async def run(request: web.Request):
        streams = request.app[SERVER].streams
        task = asyncio.current_task()
        streams.add(task)
        try:
            return await handler(request)
        except (ConnectionResetError, _Dropped) as exc:
            # Cut the connection: a client that stopped reading gets no orderly end it would wait for.
            log.info("dashboard stream %s dropped: %s", request.path, exc or type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
            return request.get(_STREAM) or web.Response(status=204)
        finally:
            streams.discard(task)

    run.permission = handler.permission
    return run


# ---------------------------------------------------------------------- run events


@needs("run:read")
async def run_events(request: web.Request) -> web.StreamResponse:
    c = request.app[COORDINATOR]
    run_id = request.match_info["run_id"]
    engine = c.engine
    run = engine.state.runs.get(run_id)
    if run is None or run.state in TERMINAL_RUN_STATES:  # finished: one snapshot and the end
        view, tasks, deps, _ = await load_run(c, run_id)  # 404 for an unknown run
        detail = run_detail_json(view, tasks, deps, engine.state.worker_name, time.time(),
                                 lean=len(tasks) > BIG_RUN_TASKS)  # fmt: skip
        response = await _open(request)
        await _send(response, "snapshot", detail)
        await _send(response, "end", detail["run"])
        return response
    # Subscribe before the snapshot: a change in between is sent again, never missed. Summary
    # events wake the stream once per engine turn; the changed tasks' names are collected by
    # the engine in a set (no message per task) and read from their entries when sending.
    queue = engine.watch(run_id, tasks=False)
    dirty = engine.track_changes(run_id)
    try:
        # A live run is read from memory: no await suspends here, so the run cannot end in between.
        view, tasks, deps, _ = await load_run(c, run_id)
        entries = run.tasks
        states = {name: t.state for name, t in entries.items()}
        counts: dict[int, int] = {}
        for st in states.values():
            counts[st] = counts.get(st, 0) + 1
        namespace = run.spec.namespace or "default"
        big = len(entries) > BIG_RUN_TASKS
        detail = run_detail_json(view, tasks, deps, engine.state.worker_name, time.time(), lean=big)

        def summary_json(summary) -> dict:
            return run_json(run_id, summary.pipeline, namespace, summary.state, summary.created_at, summary.finished_at,
                            summary.total_tasks, {task_state_name(k): v for k, v in counts.items() if v}, time.time())  # fmt: skip

        summary = run.summary()
        if big:  # changes name tasks by their index in the snapshot's arrays
            cols = detail["tasks"]
            order = [entries[name] for name in cols["name"]]
            index = {name: i for i, name in enumerate(cols["name"])}
            detail["task_states"] = {number: task_state_name(number) for number in TaskState.values()}
            big_deps, big_names = cols["depends_on"], cols["name"]
        response = await _open(request)
        await _send(response, "snapshot", detail)
        del detail, tasks, deps
        loop = asyncio.get_running_loop()
        interval_s = 1.0 / (MAX_MESSAGES_PER_S_BIG if big else MAX_MESSAGES_PER_S)
        last_sent = loop.time()
        critical_at = last_sent
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await _send(response, "", ": heartbeat\n\n")
                continue
            # Coalesce: what comes within this message's interval rides along.
            wait_s = last_sent + interval_s - loop.time()
            if wait_s > 0 and event is not None and event.summary.state not in TERMINAL_RUN_STATES:
                await asyncio.sleep(wait_s)
            if queue.qsize() > MAX_QUEUED_TURNS:
                raise _Dropped(f"{queue.qsize()} engine turns unread")
            stopped = False
            while event is not None:
                summary = event.summary
                if queue.empty():
                    break
                event = queue.get_nowait()
            else:
                stopped = True
            changed = [entries[name] for name in dirty if name in entries]
            dirty.clear()
            for t in changed:
                old = states.get(t.name)
                if old is not None:
                    counts[old] -= 1
                states[t.name] = t.state
                counts[t.state] = counts.get(t.state, 0) + 1
            now_summary = summary_json(summary)
            await _send(response, "run", now_summary)
            if changed:
                if big:
                    rows = {"index": [index[t.name] for t in changed], "state": [t.state for t in changed]}
                else:
                    rows = task_columns(changed, engine.state.worker_name)
                await _send(response, "tasks", rows)
            last_sent = loop.time()
            if big and (summary.state in TERMINAL_RUN_STATES or last_sent - critical_at >= CRITICAL_EVERY_S_BIG):
                critical_at = last_sent
                path, path_s = critical_path(big_names, big_deps, [t.started_at for t in order],
                                             [t.finished_at for t in order], time.time())  # fmt: skip
                await _send(response, "critical", {"critical_path": path, "critical_path_s": path_s})
            if summary.state in TERMINAL_RUN_STATES:
                await _send(response, "end", now_summary)
                return response
            if stopped:  # the engine stopped (shutdown, store fault, HA step-down): the client reconnects
                return response
    finally:
        engine.unwatch(run_id, queue)
        engine.untrack_changes(run_id, dirty)


# ---------------------------------------------------------------------- task logs


def _line(row) -> dict:
    return {"seq": row.seq, "attempt": row.attempt, "stream": "stderr" if row.stream == STDERR else "stdout",
            "data": row.data.decode("utf-8", errors="replace"), "truncated_bytes": row.dropped_bytes, "at": row.at}  # fmt: skip


@needs("logs:read")
async def task_logs(request: web.Request) -> web.StreamResponse:
    c = request.app[COORDINATOR]
    run_id, task = request.match_info["run_id"], request.match_info["task"]
    attempt = query_int(request, "attempt", 0, 0, 1_000_000)
    seq = query_int(request, "after_seq", 0, 0, (1 << 63) - 1)
    follow = request.query.get("follow", "")
    if follow not in ("", "0", "1", "true", "false"):
        from ._api import BadParameter

        raise BadParameter("follow", f"{follow!r} is not 0 or 1")
    _, tasks, _, _ = await load_run(c, run_id)
    if all(t.name != task for t in tasks):
        from ._api import _no_task

        raise _no_task(run_id, task)
    # Log lines are task data: recorded like the GetTaskLogs call they mirror (auth off: as 'local').
    principal = CALLER.get()
    c.audit.record(principal=principal.name if principal is not None else "anonymous", action=_LOGS_ACTION,
                   target=f"{run_id}/{task}", detail={"via": "dashboard"})  # fmt: skip
    logs = c.task_logs
    if follow not in ("1", "true"):
        rows = await logs.read(run_id, task, attempt, after_seq=seq)
        rows = rows[:LOG_ROWS_PER_READ]
        lines = [_line(r) for r in rows if not r.final]
        return web.json_response({"lines": lines, "next_after_seq": rows[-1].seq if rows else seq})
    follower = LogFollower(logs, c.engine.state.runs, run_id, task, attempt, after_seq=seq, follow=True)
    loop = asyncio.get_running_loop()
    response = await _open(request)
    quiet_since = loop.time()
    async with contextlib.aclosing(follower.rows()) as rows:
        async for row in rows:
            now = loop.time()
            if row is not None:
                await _send(response, "log", _line(row))
                quiet_since = now
            elif now - quiet_since >= HEARTBEAT_S:
                await _send(response, "", ": heartbeat\n\n")
                quiet_since = now
    await _send(response, "end", {"next_after_seq": follower.seq})
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/runs/{run_id}/events", _tracked(run_events))
    app.router.add_get("/api/runs/{run_id}/tasks/{task}/logs", _tracked(task_logs))
