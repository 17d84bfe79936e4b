"""The dashboard's JSON API (``--http-listen``) on a real coordinator and workers.

Every call goes over real HTTP on loopback (urllib with proxies off); the event streams
are read line by line as a browser's EventSource would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import insights_pb2, insights_pb2_grpc
from xpipe._proto.common_pb2 import SUCCEEDED

from tests import helpers_logs as hl
from tests import helpers_tasks as ht
from tests.harness import Cluster, SecureSetup, eventually, free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def get(url: str, *, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET; error statuses are answers, not exceptions."""
    request = urllib.request.Request(url, headers=headers or {})
    opener = _OPENER if context is None else urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))  # fmt: skip
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def events(url: str, *, until: str = "end", timeout_s: float = 30.0) -> Iterator[tuple[str, object]]:
    """Server-Sent Events of ``url`` as (event, data), up to and including ``until``."""
    deadline = time.monotonic() + timeout_s
    with _OPENER.open(url, timeout=timeout_s) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        name, data = "", ""
        while time.monotonic() < deadline:
            line = response.readline().decode()
            if not line:
                return
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                yield name, json.loads(data)
                if name == until:
                    return
                name, data = "", ""
    raise AssertionError(f"no {until!r} event from {url} within {timeout_s}s")


@pytest.fixture
def web(tmp_path) -> Iterator[tuple[Cluster, str]]:
    port = free_port()
    with Cluster(tmp_path, workers=2, slots=2, coordinator_args=("--http-listen", f"127.0.0.1:{port}")) as cluster:
        yield cluster, f"http://127.0.0.1:{port}/"


@pytest.fixture
def pm(web) -> Iterator[PipelineManager]:
    manager = PipelineManager(coordinator=web[0].address)
    yield manager
    manager.close()


def test_runs_run_detail_task_logs_and_errors(web, pm):
    _, url = web
    assert pm.client.cluster_status().dashboard_url == url

    p = Pipeline("web_api")
    p.add_task(Task("a", ht.echo, args=(0.5,)))
    p.add_task(Task("b", ht.sleep, depends_on=["a"]))  # sleeps a's result: 0.5 s
    p.add_task(Task("c", ht.describe, depends_on=["b"]))
    p.add_task(Task("quick", ht.describe, depends_on=["a"]))
    p.add_task(Task("talk", hl.chatty, args=("hello",)))
    p.add_task(Task("bad", ht.fail_with_value_error, args=("no good value",), max_retries=0))
    run_id = pm.submit(p, retry_on_failure=False)
    pm.wait(run_id, timeout_s=60, raise_on_failure=False)

    status, body = get(f"{url}api/runs")
    assert status == 200
    run = next(r for r in body["runs"] if r["run_id"] == run_id)
    assert run["pipeline"] == "web_api" and run["state"] == "RUN_FAILED" and run["total_tasks"] == 6
    assert run["counts"] == {"SUCCEEDED": 5, "FAILED": 1} and run["duration_s"] > 0.5
    assert [r["run_id"] for r in get(f"{url}api/runs?state=failed&pipeline=web_api&limit=5")[1]["runs"]] == [run_id]
    assert get(f"{url}api/runs?state=RUN_SUCCEEDED")[1]["runs"] == []
    assert get(f"{url}api/runs?pipeline=other")[1]["runs"] == []

    status, detail = get(f"{url}api/runs/{run_id}")
    assert status == 200
    tasks = detail["tasks"]
    i = {name: n for n, name in enumerate(tasks["name"])}
    assert tasks["depends_on"][i["c"]] == [i["b"]] and tasks["depends_on"][i["a"]] == []
    assert tasks["state"][i["bad"]] == "FAILED" and tasks["error_message"][i["bad"]] == "no good value"
    assert tasks["worker"][i["a"]] in ("w0", "w1") and tasks["attempt"][i["a"]] == 1
    assert detail["critical_path"] == ["a", "b", "c"]  # b's sleep makes it the longest
    assert detail["critical_path_s"] >= 0.5

    status, bad = get(f"{url}api/runs/{run_id}/tasks/bad")
    assert status == 200 and bad["state"] == "FAILED" and bad["worker"] in ("w0", "w1")
    assert bad["error"]["exception_type"] == "ValueError" and bad["error"]["message"] == "no good value"
    assert "ValueError: no good value" in bad["error"]["traceback"]
    assert bad["attempts"][-1]["attempt"] == 1 and bad["attempts"][-1]["state"] == "FAILED"
    assert [t["to"] for t in bad["attempts"][-1]["transitions"]][-1] == "FAILED"
    status, c = get(f"{url}api/runs/{run_id}/tasks/c")
    assert c["depends_on"] == ["b"] and c["error"] is None and c["state"] == "SUCCEEDED"
    assert get(f"{url}api/runs/{run_id}/tasks/b")[1]["dependents"] == ["c"]

    def talk_lines() -> list[str]:
        return [line["data"] for line in get(f"{url}api/runs/{run_id}/tasks/talk/logs")[1]["lines"]]

    eventually(lambda: any("out hello" in d for d in talk_lines()), timeout_s=10, message="talk's stdout")
    followed = [data["data"] for name, data in events(f"{url}api/runs/{run_id}/tasks/talk/logs?follow=1") if name == "log"]
    assert any("err hello" in d for d in followed) and any("out hello" in d for d in followed)
    def log_reads() -> list:
        return [e for e in pm.get_audit() if e.action.endswith("/GetTaskLogs") and e.target == f"{run_id}/talk"]

    # Recorded like the RPC's reads (the audit log is written in batches).
    eventually(lambda: len(log_reads()) >= 2, timeout_s=10, message="the dashboard's log reads in the audit log")
    assert log_reads()[-1].principal == "local"

    # Errors name what is wrong.
    assert get(f"{url}api/runs/nope") == (404, {"error": "no run 'nope'", "status": 404})
    assert get(f"{url}api/runs/{run_id}/tasks/zzz")[0] == 404
    assert "zzz" in get(f"{url}api/runs/{run_id}/tasks/zzz")[1]["error"]
    assert get(f"{url}api/runs/nope/events")[0] == 404
    status, err = get(f"{url}api/runs?limit=0")
    assert status == 400 and err["parameter"] == "limit" and "from 1 to 1000" in err["error"]
    status, err = get(f"{url}api/runs?state=sideways")
    assert status == 400 and err["parameter"] == "state" and "sideways" in err["error"]
    assert get(f"{url}api/alerts?since=yesterday")[1]["parameter"] == "since"
    assert get(f"{url}api/nothing-here")[0] == 404


def test_workers_with_samples_circuits_alerts(web):
    _, url = web

    def workers() -> list[dict]:
        return get(f"{url}api/workers")[1]["workers"]

    eventually(lambda: all(len(w["samples"]["at"]) >= 2 for w in workers()) and len(workers()) == 2,
               timeout_s=15, message="two heartbeat samples per worker")  # fmt: skip
    for w in workers():
        assert w["name"] in ("w0", "w1") and w["slots"] == 2 and w["state"] == "ready"
        assert w["resources"]["cpu_cores"] > 0 and w["resources"]["memory_bytes"] > 0
        s = w["samples"]
        assert len(s["at"]) == len(s["cpu_percent"]) == len(s["memory_used_bytes"]) and s["memory_used_bytes"][-1] > 0
        assert s["at"] == sorted(s["at"])
    assert get(f"{url}api/circuits") == (200, {"circuits": []})
    assert get(f"{url}api/alerts") == (200, {"alerts": []})
    status, cluster = get(f"{url}api/cluster")
    assert status == 200 and cluster["workers"] == 2 and cluster["dashboard_url"] == url and not cluster["auth"]


def test_events_stream_task_state_changes_live(web, pm):
    _, url = web
    p = Pipeline("web_live")
    p.add_task(Task("first", ht.sleep, args=(0.5,)))
    p.add_task(Task("slow", ht.sleep, depends_on=["first"]))  # sleeps first's result: 0.5 s
    run_id = pm.submit(p)
    seen: list[str] = []
    runs: list[dict] = []
    snapshot = None
    for name, data in events(f"{url}api/runs/{run_id}/events"):
        if name == "snapshot":  # the first event: the run detail, every task with its upstreams
            assert snapshot is None, "one snapshot per stream"
            snapshot = data
        elif name == "tasks":
            seen += [s for n, s in zip(data["name"], data["state"]) if n == "slow"]
        elif name in ("run", "end"):
            runs.append(data)
    tasks = snapshot["tasks"]
    assert set(tasks["name"]) == {"first", "slow"} and snapshot["run"]["run_id"] == run_id
    assert tasks["state"][tasks["name"].index("slow")] == "PENDING"  # it waited for "first"
    assert tasks["depends_on"][tasks["name"].index("slow")] == [tasks["name"].index("first")]
    assert "critical_path" in snapshot
    assert "RUNNING" in seen and seen[-1] == "SUCCEEDED" and seen.index("RUNNING") < len(seen) - 1
    assert runs[-1]["state"] == "RUN_SUCCEEDED" and runs[-1]["counts"] == {"SUCCEEDED": 2}
    # A finished run answers its end at once.
    names = [name for name, _ in events(f"{url}api/runs/{run_id}/events", timeout_s=5)]
    assert names == ["snapshot", "end"]


def test_a_big_runs_events_are_lean_indices_and_the_server_sends_its_critical_path(web, pm):
    """Above 500 tasks, changes are (snapshot index, state number) pairs; no times, so the
    server computes the critical path and sends it (``critical``) before ``end``."""
    _, url = web
    p = Pipeline("web_big")
    p.add_task(Task("gate", ht.sleep, args=(0.5,)))  # the stream is open before the rest run
    for i in range(600):
        p.add_task(Task(f"t{i}", ht.describe, depends_on=["gate"]))
    run_id = pm.submit(p)
    got = list(events(f"{url}api/runs/{run_id}/events", timeout_s=60))
    names = [name for name, _ in got]
    assert names[0] == "snapshot" and names[-2:] == ["critical", "end"], names
    snapshot = got[0][1]
    assert set(snapshot["tasks"]) == {"name", "state", "started_at", "finished_at", "depends_on"}, "a lean snapshot"
    order, legend = snapshot["tasks"]["name"], snapshot["task_states"]
    assert legend[str(SUCCEEDED)] == "SUCCEEDED"
    last: dict[str, str] = dict(zip(order, snapshot["tasks"]["state"]))
    for name, data in got:
        if name == "tasks":
            assert set(data) == {"index", "state"}, data.keys()
            for i, state in zip(data["index"], data["state"]):
                last[order[i]] = legend[str(state)]
    assert set(last.values()) == {"SUCCEEDED"}, "every task's last change was seen"
    critical = dict(got)["critical"]
    assert critical["critical_path"][0] == "gate" and len(critical["critical_path"]) == 2
    assert critical["critical_path_s"] >= 0.5


def test_auth_tokens_cookie_and_permissions(tmp_path):
    setup = SecureSetup(tmp_path, mtls=False)
    port = free_port()
    with Cluster(tmp_path, workers=0, security=setup, coordinator_args=("--http-listen", f"127.0.0.1:{port}")):
        url = f"https://127.0.0.1:{port}/"
        tls = ssl.create_default_context(cafile=setup.ca)
        status, body = get(f"{url}api/runs", context=tls)
        assert status == 401 and body["permission"] == "run:read"
        status, body = get(f"{url}api/runs", headers={"Authorization": "Bearer xpt_wrong"}, context=tls)
        assert status == 401 and "not valid" in body["error"]
        viewer = {"Authorization": f"Bearer {setup.tokens['viewer']}"}
        assert get(f"{url}api/runs", headers=viewer, context=tls) == (200, {"runs": []})
        assert get(f"{url}api/alerts", headers=viewer, context=tls)[0] == 200
        status, body = get(f"{url}api/runs/r-1/tasks/t/logs", headers=viewer, context=tls)
        assert status == 403 and body["permission"] == "logs:read" and "logs:read" in body["error"]
        # Logged in, the cookie carries the token (what an EventSource sends).
        login = urllib.request.Request(f"{url}api/login", data=json.dumps({"token": setup.tokens["viewer"]}).encode(),
                                       headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
        with opener.open(login, timeout=10) as response:
            cookie = response.headers["Set-Cookie"]
            assert json.loads(response.read()) == {"principal": "viewer"}
        assert "HttpOnly" in cookie and "Secure" in cookie
        session = cookie.split(";")[0]
        assert setup.tokens["viewer"] not in cookie, "the cookie holds a session id, not the credential"
        assert get(f"{url}api/cluster", headers={"Cookie": session}, context=tls)[1]["principal"] == "viewer"
        assert get(f"{url}api/runs", headers={"Cookie": session}, context=tls)[0] == 200
        assert get(f"{url}api/runs", headers={"Cookie": "xpipe_token=forged"}, context=tls)[0] == 401
        logout = urllib.request.Request(f"{url}api/logout", data=b"", headers={"Cookie": session}, method="POST")
        with opener.open(logout, timeout=10) as response:
            assert json.loads(response.read()) == {"principal": ""}
        assert get(f"{url}api/runs", headers={"Cookie": session}, context=tls)[0] == 401, "logged out: the session ended"
        bad_login = urllib.request.Request(f"{url}api/login", data=b'{"token": "xpt_nope"}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(bad_login, timeout=10)
        assert refused.value.code == 401
        not_json = urllib.request.Request(f"{url}api/login", data=b"token=abc", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(not_json, timeout=10)
        assert refused.value.code == 400 and json.loads(refused.value.read())["parameter"] == "body"
        wrong_method = urllib.request.Request(f"{url}api/runs", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(wrong_method, timeout=10)
        assert refused.value.code == 405 and "use GET" in json.loads(refused.value.read())["error"]


def _coordinator(tmp_path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", f"127.0.0.1:{free_port()}",
            "--data-dir", str(tmp_path / "data"), *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_non_loopback_dashboard_refused_without_tls_and_auth(tmp_path):
    done = _coordinator(tmp_path, "--http-listen", "0.0.0.0:0")
    assert done.returncode != 0
    assert "refusing to serve the dashboard (--http-listen) on non-loopback 0.0.0.0:0" in done.stderr
    assert "--tls-cert/--tls-key and --auth" in done.stderr


def test_dashboard_port_in_use_exits_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _coordinator(tmp_path, "--http-listen", f"127.0.0.1:{port}")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("xpipe-coordinator: --http-listen: cannot serve the dashboard on 127.0.0.1:") and str(port) in last


def test_a_client_that_falls_behind_is_dropped_and_unsubscribed(monkeypatch):
    """In-process: a real engine (no store) and the real web server; the stream is dropped
    once more engine turns pile up than it may leave unread, and the engine forgets it."""
    import aiohttp
    from xpipe._proto import common_pb2 as pb
    from xpipe.coordinator._engine import Engine, EngineConfig, _Session
    from xpipe.coordinator._events import RunSubmitted, WorkerConnected
    from xpipe.coordinator._server import Coordinator
    from xpipe.coordinator._validate import validate_spec
    from xpipe.coordinator._web import WebServer, _sse

    monkeypatch.setattr(_sse, "MAX_QUEUED_TURNS", 3)

    async def scenario() -> list[str]:
        c = Coordinator(store=None)  # never started: only its engine and web server are used
        engine = c.engine = Engine(store=None, config=EngineConfig())
        engine.state.handle(WorkerConnected(0.0, "w0", "w0", "host", 1000))
        engine.sessions["w0"] = _Session("w0")
        spec = pb.PipelineSpec(name="drop")
        for i in range(100):
            spec.tasks.add(name=f"t{i}").python.import_path = "tests.helpers_tasks:noop"
        engine.state.handle(RunSubmitted(time.time(), "r1", spec, tuple(validate_spec(spec))))
        web = WebServer(c, "127.0.0.1:0")
        await web.start()
        names: list[str] = []
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{web.url}api/runs/r1/events") as response:
                with pytest.raises(aiohttp.ClientPayloadError):  # the server cut the stream
                    async for line in response.content:
                        if line.startswith(b"event: "):
                            names.append(line[7:].strip().decode())
                        if names == ["snapshot"]:
                            # Ten engine turns at once, each with a change, while the stream waits
                            # out its coalescing interval: more than it may leave unread.
                            for i in range(10):
                                actions: list = []
                                engine.state.schedule(time.time(), actions)
                                engine._notify([a for a in actions if type(a).__name__ == "TaskRecord"] or
                                               [_record(engine, f"t{i}")])  # fmt: skip
                            names.append("pushed")
            assert "r1" not in engine._watchers and "r1" not in engine._changed_names
        finally:
            await web.stop()
        return names

    names = asyncio.run(scenario())
    assert names[:2] == ["snapshot", "pushed"] and "end" not in names  # closed without the end event


def _record(engine, name: str):
    from xpipe.coordinator._events import TaskRecord

    t = engine.state.runs["r1"].tasks[name]
    return TaskRecord("r1", name, t.state, t.attempt)


def test_ha_follower_answers_503_naming_the_leader(tmp_path, etcd):
    """Two coordinators on one etcd, each serving the dashboard: the leader's API answers,
    the follower's answers 503 with the leader's address and dashboard URL."""
    from tests.harness import Proc, terminate_all

    grpc_ports, http_ports = [free_port(), free_port()], [free_port(), free_port()]
    procs = [
        Proc(f"coordinator{i}", [
            sys.executable, "-m", "xpipe.coordinator", "--listen", f"127.0.0.1:{grpc_ports[i]}",
            "--data-dir", str(tmp_path / f"c{i}"), "--store", f"etcd://{etcd.endpoint}", "--cluster", "web-ha",
            "--lease-ttl-s", "2", "--artifact-dir", str(tmp_path / "artifacts"),
            "--http-listen", f"127.0.0.1:{http_ports[i]}",
        ], log_dir=tmp_path / "logs")  # fmt: skip
        for i in range(2)
    ]
    try:
        def answers() -> list[int]:
            out = []
            for port in http_ports:
                try:
                    out.append(get(f"http://127.0.0.1:{port}/api/runs")[0])
                except OSError:
                    out.append(0)
            return out

        eventually(lambda: sorted(answers()) == [200, 503], timeout_s=30, message="one leader, one follower")
        leader = answers().index(200)
        status, body = get(f"http://127.0.0.1:{http_ports[1 - leader]}/api/runs")
        assert status == 503 and "not the leader" in body["error"]
        assert body["leader_address"] == f"127.0.0.1:{grpc_ports[leader]}"
        # The leader published its dashboard in its member key: a browser can be sent there.
        assert body["leader_dashboard_url"].startswith(f"http://127.0.0.1:{http_ports[leader]}"), body
    finally:
        terminate_all(procs)


def test_the_embedded_default_serves_the_dashboard_on_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("XPIPE_COORDINATOR", raising=False)
    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "embedded") as pm:
        url = pm.client.cluster_status().dashboard_url
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        status, cluster = get(f"{url}api/cluster")
        assert status == 200 and cluster["dashboard_url"] == url


def test_runs_are_filtered_by_namespace_like_list_runs(tmp_path):
    principals = {**SecureSetup.DEFAULT_PRINCIPALS, "teama": ["viewer"]}
    setup = SecureSetup(tmp_path, principals=principals, namespaces={"teama": ["team-a"]})
    port = free_port()
    # Alerts go to a loopback port nobody listens on: delivery fails, the history keeps them.
    alerting = tmp_path / "alerting.json"
    alerting.write_text(json.dumps({"webhook": f"http://127.0.0.1:{free_port()}/hook"}))
    args = ("--http-listen", f"127.0.0.1:{port}", "--alerting-config", str(alerting))
    with Cluster(tmp_path, workers=1, security=setup, coordinator_args=args) as cluster, \
            PipelineManager(coordinator=cluster.address, **cluster.client_options("submitter")) as pm:  # fmt: skip
        ids = {}
        for ns in ("team-a", "team-b"):
            p = Pipeline(f"ns_{ns}", namespace=ns)
            p.add_task(Task("one", ht.fail_with_value_error))
            ids[ns] = pm.submit(p)
        for run_id in ids.values():
            assert pm.wait(run_id, timeout_s=60, raise_on_failure=False).status == "failed"
        url = f"https://127.0.0.1:{port}/"
        tls = ssl.create_default_context(cafile=setup.ca)
        teama = {"Authorization": f"Bearer {setup.tokens['teama']}"}
        assert [r["run_id"] for r in get(f"{url}api/runs", headers=teama, context=tls)[1]["runs"]] == [ids["team-a"]]
        assert get(f"{url}api/runs/{ids['team-a']}", headers=teama, context=tls)[0] == 200
        status, body = get(f"{url}api/runs/{ids['team-b']}", headers=teama, context=tls)
        assert status == 403 and body["permission"] == "run:read" and "team-b" in body["error"]
        assert get(f"{url}api/runs/{ids['team-b']}/events", headers=teama, context=tls)[0] == 403
        admin = {"Authorization": f"Bearer {setup.tokens['admin']}"}
        assert len(get(f"{url}api/runs", headers=admin, context=tls)[1]["runs"]) == 2
        # Alerts follow their runs' namespaces, on the page and through ListAlerts alike.
        def run_alerts(headers) -> set[str]:
            return {a["run_id"] for a in get(f"{url}api/alerts", headers=headers, context=tls)[1]["alerts"] if a["run_id"]}

        eventually(lambda: run_alerts(admin) == set(ids.values()), timeout_s=30)
        assert run_alerts(teama) == {ids["team-a"]}
        with PipelineManager(coordinator=cluster.address, **cluster.client_options("teama")) as viewer:
            request = insights_pb2.ListAlertsRequest(limit=100)
            listed = viewer.client._call_on(insights_pb2_grpc.InsightsServiceStub, lambda s: s.ListAlerts(request, timeout=10))
        assert {a.run_id for a in listed.alerts if a.run_id} == {ids["team-a"]}


def test_a_client_certificate_is_an_identity_under_mtls(tmp_path):
    setup = SecureSetup(tmp_path)  # mTLS: --tls-client-auth require
    port = free_port()
    with Cluster(tmp_path, workers=0, security=setup, coordinator_args=("--http-listen", f"127.0.0.1:{port}")):
        url = f"https://127.0.0.1:{port}/api/runs"
        plain = ssl.create_default_context(cafile=setup.ca)
        assert get(url, context=plain)[0] == 401  # no certificate, no token
        with_cert = ssl.create_default_context(cafile=setup.ca)
        with_cert.load_cert_chain(*setup.cert("client"))
        status, body = get(url, context=with_cert)  # known by its certificate, whose role grants nothing here
        assert status == 403 and "'client'" in body["error"] and body["permission"] == "run:read"
        admin = {"Authorization": f"Bearer {setup.tokens['admin']}"}
        assert get(url, headers=admin, context=with_cert) == (200, {"runs": []})  # the token wins, as on gRPC
