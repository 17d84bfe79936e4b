"""The dashboard's JSON endpoints (docs/api.md, "Dashboard JSON API").

Each handler reads what the matching RPC reads (the engine's state, the store, the task
log store, the breakers, alerting) and carries the permission that RPC needs as
``handler.permission``, which the auth middleware checks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from xpipe._domain import VERSION, error_type_name
from xpipe._graph import sub_task_of
from xpipe._limits import MAX_LIST_RUNS
from xpipe.security._auth import authorization_value
from xpipe.security._principal import DEFAULT_NAMESPACE

from .._caller import CALLER
from .._insights_service import readable_alerts
from ._app import COORDINATOR, SERVER, SESSION_TTL_S, TOKEN_COOKIE, json_error
from ._rows import counts_of, critical_path, lean_columns, run_json, run_state_names, task_columns, task_state_name

__all__ = ["add_routes", "needs", "query_int", "query_float", "BadParameter", "load_run", "run_detail_json"]

#: Most runs ``GET /api/runs`` lists, and its default.
MAX_RUNS_LISTED = 1000
DEFAULT_RUNS_LISTED = 50
#: Most alerts ``GET /api/alerts`` lists, and its default.
MAX_ALERTS_LISTED = 1000
DEFAULT_ALERTS_LISTED = 100


def needs(permission: str):
    """Mark a handler with the permission its endpoint needs (checked by the auth middleware)."""

    def mark(handler):
        handler.permission = permission
        return handler

    return mark


class BadParameter(web.HTTPBadRequest):
    """A bad query value: answers 400 naming the parameter."""

    def __init__(self, parameter: str, message: str):
        body = json.dumps({"error": f"{parameter}: {message}", "status": 400, "parameter": parameter})
        super().__init__(text=body, content_type="application/json")


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, f"{raw!r} is not an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise BadParameter(name, f"{value} is out of range; it must be from {low} to {high}")
    return value


def query_float(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(name, f"{raw!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise BadParameter(name, f"{raw!r} must be a finite number of seconds, 0 or more")
    return value


def _no_run(run_id: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": f"no run {run_id!r}", "status": 404}), content_type="application/json")


def _no_task(run_id: str, task: str) -> web.HTTPNotFound:
    body = json.dumps({"error": f"run {run_id!r} has no task {task!r}", "status": 404})
    return web.HTTPNotFound(text=body, content_type="application/json")


async def load_run(c, run_id: str):
    """(entry-like run view, tasks, deps-by-name, live) of a run in memory or in the store; 404 otherwise.

    The view has ``run_id, name, namespace, state, created_at, finished_at, total``.
    """
    engine = c.engine
    run = engine.state.runs.get(run_id)
    if run is not None:
        tasks = list(run.tasks.values())
        view = _RunView(run_id, run.name, run.spec.namespace or DEFAULT_NAMESPACE, run.state, run.created_at,
                        run.finished_at, len(tasks))  # fmt: skip
        # A fan-out's sub-task hangs off its parent in the drawn DAG.
        return view, tasks, {t.name: t.deps or ((t.parent,) if t.parent else ()) for t in tasks}, True
    stored = await engine.store.get_run(run_id)
    if stored is None:
        raise _no_run(run_id)
    h = stored.header
    deps: dict[str, tuple[str, ...]] = {}
    order: list[str] = []
    if stored.spec is not None:
        for spec in stored.spec.tasks:
            order.append(spec.name)
            deps[spec.name] = tuple(dict.fromkeys([*spec.depends_on, *(f.source_task for f in spec.flows)]))
    for name in stored.tasks:
        if name not in deps:
            order.append(name)
            sub = sub_task_of(name)  # a fan-out's sub-task hangs off its parent in the drawn DAG
            deps[name] = (sub[0],) if sub is not None and sub[0] in deps else ()
    tasks = [stored.tasks[name] if name in stored.tasks else _Pending(name) for name in order]
    namespace = (stored.spec.namespace if stored.spec is not None else "") or DEFAULT_NAMESPACE
    view = _RunView(run_id, h.name, namespace, h.state, h.created_at, h.finished_at, h.total or len(tasks))
    return view, tasks, deps, False


class _RunView:
    __slots__ = ("run_id", "name", "namespace", "state", "created_at", "finished_at", "total")

    def __init__(self, run_id, name, namespace, state, created_at, finished_at, total):
        self.run_id, self.name, self.namespace, self.state = run_id, name, namespace, state
        self.created_at, self.finished_at, self.total = created_at, finished_at, total


class _Pending:
    """A task of a stored spec with no record yet (it never left PENDING)."""

    __slots__ = ("name",)
    state, attempt, worker, started_at, finished_at, error, telemetry = 1, 0, "", 0.0, 0.0, None, None

    def __init__(self, name: str):
        self.name = name


def run_view_json(view, tasks, now: float) -> dict:
    return run_json(view.run_id, view.name, view.namespace, view.state, view.created_at, view.finished_at,
                    view.total, counts_of(t.state for t in tasks), now)  # fmt: skip


# ---------------------------------------------------------------------- runs


@needs("run:read")
async def list_runs(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    limit = query_int(request, "limit", DEFAULT_RUNS_LISTED, 1, MAX_RUNS_LISTED)
    pipeline = request.query.get("pipeline", "")
    state = request.query.get("state", "").upper()
    states = run_state_names()
    wanted = None
    if state:
        wanted = states.get(state, states.get(f"RUN_{state}"))
        if wanted is None:
            names = ", ".join(n for n in states if n != "RUN_STATE_UNSPECIFIED")
            raise BadParameter("state", f"{request.query['state']!r} is not a run state ({names})")
    engine = c.engine
    # Filters apply after reading: read more than asked when filtering, up to the store's cap.
    records = await engine.store.list_runs(limit if wanted is None and not pipeline else min(MAX_LIST_RUNS, max(20 * limit, 1000)))
    auth = c.guard.auth
    visible = None if auth is None else await auth.readable([rec.run_id for rec in records])
    now = time.time()
    runs = []
    for rec in records:
        if visible is not None and rec.run_id not in visible:
            continue
        live = engine.state.runs.get(rec.run_id)
        state_now = live.state if live is not None else rec.state
        name = live.name if live is not None else rec.name
        if (wanted is not None and state_now != wanted) or (pipeline and name != pipeline):
            continue
        if live is not None:
            runs.append(run_json(rec.run_id, live.name, live.spec.namespace or DEFAULT_NAMESPACE, live.state,
                                 live.created_at, live.finished_at, len(live.tasks),
                                 counts_of(t.state for t in live.tasks.values()), now))  # fmt: skip
        else:
            counts = {k: v for k, v in (("SUCCEEDED", getattr(rec, "succeeded", 0)), ("FAILED", getattr(rec, "failed", 0))) if v}
            runs.append(run_json(rec.run_id, rec.name, getattr(rec, "namespace", "") or "", rec.state, rec.created_at,
                                 rec.finished_at, rec.total, counts, now))  # fmt: skip
        if len(runs) >= limit:
            break
    return web.json_response({"runs": runs})


@needs("run:read")
async def get_run(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    run_id = request.match_info["run_id"]
    view, tasks, deps, _ = await load_run(c, run_id)
    body = run_detail_json(view, tasks, deps, c.engine.state.worker_name, time.time())
    return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def run_detail_json(view, tasks, deps, worker_name, now: float, *, lean: bool = False) -> dict:
    """A run with every task (parallel arrays plus ``depends_on``) and its critical path.

    The run detail's body, and the first message of the run's event stream: a page loads
    the run once, from either. ``lean``: only the columns of :func:`lean_columns`.
    """
    cols = lean_columns(tasks) if lean else task_columns(tasks, worker_name)
    index = {name: i for i, name in enumerate(cols["name"])}
    dep_idx = [[index[d] for d in deps.get(name, ()) if d in index] for name in cols["name"]]
    cols["depends_on"] = dep_idx
    path, path_s = critical_path(cols["name"], dep_idx, cols["started_at"], cols["finished_at"], now)
    return {"run": run_view_json(view, tasks, now), "tasks": cols, "critical_path": path, "critical_path_s": path_s}


@needs("run:read")
async def get_task(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    run_id, name = request.match_info["run_id"], request.match_info["task"]
    view, tasks, deps, _ = await load_run(c, run_id)
    task = next((t for t in tasks if t.name == name), None)
    if task is None:
        raise _no_task(run_id, name)
    state = c.engine.state
    worker_of = lambda w: (state.worker_name(w) or w) if w else ""  # noqa: E731
    error = None
    if task.error is not None and (task.error.message or task.error.exception_type or task.error.type):
        e = task.error
        error = {"type": error_type_name(e), "exception_type": e.exception_type, "message": e.message,
                 "traceback": e.traceback, "non_retryable": e.non_retryable}  # fmt: skip
    try:
        story = await c.engine.story(run_id, name) or []
    except LookupError:
        story = []
    attempts: dict[int, dict[str, Any]] = {}
    for at, sid, _, _, attempt, frm, to, reason in story:
        a = attempts.setdefault(attempt, {"attempt": attempt, "worker": "", "started_at": 0.0, "finished_at": 0.0,
                                          "state": "", "transitions": []})  # fmt: skip
        a["transitions"].append({"time": at, "from": task_state_name(frm), "to": task_state_name(to), "reason": reason,
                                 "stimulus_id": sid})  # fmt: skip
        a["state"] = task_state_name(to)
        if task_state_name(to) == "RUNNING" and not a["started_at"]:
            a["started_at"] = at
        if task_state_name(to) in ("SUCCEEDED", "FAILED", "CANCELLED", "RETRY_WAIT", "UPSTREAM_FAILED", "SKIPPED"):
            a["finished_at"] = at
    current = attempts.get(task.attempt)
    if current is not None:
        current["worker"] = worker_of(task.worker)
        current["started_at"] = task.started_at or current["started_at"]
        current["finished_at"] = task.finished_at or current["finished_at"]
    telemetry = getattr(task, "telemetry", None)
    dependents = [t for t, ups in deps.items() if name in ups]
    body = {
        "run_id": run_id, "task": name, "state": task_state_name(task.state), "attempt": task.attempt,
        "worker": worker_of(task.worker), "started_at": task.started_at, "finished_at": task.finished_at,
        "duration_s": max(0.0, (task.finished_at or time.time()) - task.started_at) if task.started_at else 0.0,
        "depends_on": list(deps.get(name, ())), "dependents": dependents, "error": error,
        "attempts": [attempts[k] for k in sorted(attempts)],
        "telemetry": MessageToDict(telemetry, preserving_proto_field_name=True) if telemetry is not None else {},
    }  # fmt: skip
    return web.json_response(body)


# ---------------------------------------------------------------------- cluster


@needs("worker:read")
async def list_workers(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    samples = request.app[SERVER].samples
    state = c.engine.state
    out = []
    for w in state.workers.values():
        seen = samples.get(w.worker_id)
        rows = list(seen[1]) if seen is not None else []
        r = w.resources
        m = w.metrics
        out.append({
            "worker_id": w.worker_id, "name": w.name, "host": w.host, "state": state.worker_shown_state(w),
            "slots": w.slots, "running": len(w.assigned), "labels": dict(w.labels), "handlers": sorted(w.handlers),
            "resources": {"cpu_cores": r.cpu_cores, "memory_bytes": r.memory_bytes, "gpu": r.gpu, "custom": dict(r.custom)}
            if r is not None else None,
            "last_heartbeat": w.last_seen, "memory_enforcement": w.memory_enforcement,
            "metrics": {"cpu_percent": m.cpu_percent, "memory_percent": m.memory_percent,
                        "memory_used_bytes": m.memory_used_bytes, "load_1m": m.load_1m} if m is not None else None,
            "samples": {"at": [s[0] for s in rows], "cpu_percent": [s[1] for s in rows],
                        "memory_used_bytes": [s[2] for s in rows]},
        })  # fmt: skip
    return web.json_response({"workers": out})


@needs("cluster:read")
async def list_circuits(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    circuits = [{"name": s.name, "state": s.state, "failures": s.failures, "opened_at": s.opened_at}
                for s in c.engine.state.breakers.snapshot(time.time())]  # fmt: skip
    return web.json_response({"circuits": circuits})


@needs("alert:read")
async def list_alerts(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    limit = query_int(request, "limit", DEFAULT_ALERTS_LISTED, 1, MAX_ALERTS_LISTED)
    since = query_float(request, "since", 0.0)
    alerts = []
    for a in await readable_alerts(c, since=since, limit=limit, rule=request.query.get("rule", "")):
        d = MessageToDict(a, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        raw = d.pop("details_json", "")
        try:
            d["details"] = json.loads(raw) if raw else {}
        except ValueError:
            d["details"] = {"text": raw}
        alerts.append(d)
    return web.json_response({"alerts": alerts})


@needs("cluster:read")
async def cluster(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    state = c.engine.state
    leader, _, _ = await c.cluster_view()
    principal = CALLER.get()
    return web.json_response({
        "coordinator_id": c.coordinator_id, "version": VERSION, "leader": c.election is None or c.election.is_leader,
        "leader_address": leader, "workers": state.connected_workers(), "active_runs": state.active_runs(),
        "dashboard_url": c.dashboard_url, "auth": c.guard.auth is not None,
        "principal": principal.name if principal is not None else "",
    })  # fmt: skip


# ---------------------------------------------------------------------- login


async def login(request: web.Request) -> web.Response:
    """Check a credential and keep it in an HttpOnly cookie (EventSource cannot send headers)."""
    c = request.app[COORDINATOR]
    server = request.app[SERVER]
    if c.guard.auth is None:
        return web.json_response({"principal": "local"})
    try:
        body = await request.json()
    except ValueError:
        return json_error(400, 'the body must be JSON: {"token": "..."} or {"username": ..., "password": ...}', parameter="body")
    if not isinstance(body, dict):
        return json_error(400, "the body must be a JSON object", parameter="body")
    token = body.get("token")
    if not token and body.get("username"):
        token = f"{body['username']}:{body.get('password', '')}"
    if not isinstance(token, str) or not token:
        return json_error(400, 'token: missing (send {"token": "..."})', parameter="token")
    try:
        principal = await server.principal_of(authorization_value(token))
    except PermissionError as exc:
        return json_error(401, str(exc))
    response = web.json_response({"principal": principal.name})
    # The cookie holds a session id; the credential stays in the coordinator's memory.
    session = server.open_session(token)
    response.set_cookie(TOKEN_COOKIE, session, httponly=True, samesite="Strict", secure=request.secure, path="/api/",
                        max_age=int(SESSION_TTL_S))  # fmt: skip
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SERVER].close_session(request.cookies.get(TOKEN_COOKIE, ""))
    response = web.json_response({"principal": ""})
    response.del_cookie(TOKEN_COOKIE, path="/api/")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/cluster", cluster)
    app.router.add_get("/api/runs", list_runs)
    app.router.add_get("/api/runs/{run_id}", get_run)
    app.router.add_get("/api/runs/{run_id}/tasks/{task}", get_task)
    app.router.add_get("/api/workers", list_workers)
    app.router.add_get("/api/circuits", list_circuits)
    app.router.add_get("/api/alerts", list_alerts)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
