"""The audit log and lineage with a real coordinator and worker (SQLite), through the CLI and SDK.

Auth is off here, so every call is recorded as ``local``. Tampering is done the way an
intruder with the data directory would: SQL on the coordinator's own database file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import uuid
from pathlib import Path

import grpc
import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster, child_env, eventually
from xpipe import Pipeline, PipelineManager, Task, audit_data_access, track_data_lineage
from xpipe._proto import audit_pb2, audit_pb2_grpc, pipeline_pb2, pipeline_pb2_grpc
from xpipe._proto import common_pb2 as pb

#: Fields the OpenLineage RunEvent schema (2-0-2) requires, and those of its parts.
_REQUIRED_EVENT = {"eventTime", "producer", "schemaURL", "run", "job"}
_EVENT_TYPES = {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}


def audit_cli(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", "audit", *args, "--coordinator", address],
                          env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip


def audit_json(address: str, *args: str) -> dict:
    out = audit_cli(address, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def result_bytes(address: str, run_id: str, task: str) -> bytes:
    """The task's result as the coordinator serves it (artifacts inlined): the bytes hashes cover."""
    with grpc.insecure_channel(address) as channel:
        info = pipeline_pb2_grpc.PipelineServiceStub(channel).GetTaskResult(
            pipeline_pb2.GetTaskResultRequest(run_id=run_id, task=task), timeout=30
        )
    assert info.result.data, f"{task} has no result bytes"
    return info.result.data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_calls_and_marked_data_access_are_audited_and_tampering_is_caught(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("audited")
        a = Task("a", ht.echo, args=("alpha" * 50,))
        b = audit_data_access(Task("b", ht.double, depends_on=[a]))
        p.add_tasks([a, b, Task("c", ht.echo, depends_on=[b])])
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)  # submits through WatchRun
        assert result.succeeded, result
        run_id = result.run_id
        other = pm.submit(p)  # through SubmitPipeline
        assert pm.wait(other, timeout_s=60).succeeded
        assert pm.client.task_result(run_id, "b").value == "alpha" * 100  # a data read: audited
        assert pm.cancel(run_id) is False  # a mutation (of a finished run): audited all the same
        pm.get_logs(run_id, "a")  # a data read through a server stream
        with grpc.insecure_channel(c.address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetTaskResult(pipeline_pb2.GetTaskResultRequest(run_id="nope", task="b"), timeout=30)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            bad = pipeline_pb2.WatchRunRequest(submit=pipeline_pb2.SubmitPipelineRequest(
                pipeline=pb.PipelineSpec(name="broken", tasks=[pb.TaskSpec(name="x", depends_on=["x"])])))
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.WatchRun(bad, timeout=30))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            audit_stub = audit_pb2_grpc.AuditServiceStub(channel)
            for request, words in ((audit_pb2.GetAuditRequest(limit=10_001), "over the most entries of one page (10000)"),
                                   (audit_pb2.GetAuditRequest(since=-1), "since must be unix seconds >= 0"),
                                   (audit_pb2.GetLineageRequest(), "run_id is required")):  # fmt: skip
                call = audit_stub.GetAudit if isinstance(request, audit_pb2.GetAuditRequest) else audit_stub.GetLineage
                with pytest.raises(grpc.RpcError) as invalid:
                    call(request, timeout=30)
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in invalid.value.details()

        def entries() -> list[dict]:
            return audit_json(c.address)["entries"]

        found = eventually(lambda: [e for e in entries() if e["action"] == "task.data_access"
                                    and e["target"] == f"{run_id}/b"], timeout_s=15,
                           message="the marked task's data access in the audit log")  # fmt: skip
        log = entries()
        actions = {(e["action"], e["target"], e["principal"], e["outcome"]) for e in log}
        assert ("/xpipe.v1.PipelineService/WatchRun", run_id, "local", "ok") in actions, log
        assert ("/xpipe.v1.PipelineService/SubmitPipeline", other, "local", "ok") in actions, log
        assert ("/xpipe.v1.PipelineService/GetTaskResult", f"{run_id}/b", "local", "ok") in actions, log
        assert ("/xpipe.v1.PipelineService/CancelRun", run_id, "local", "ok") in actions, log
        assert ("/xpipe.v1.PipelineService/GetTaskLogs", f"{run_id}/a", "local", "ok") in actions, log
        watch = next(e for e in log if e["action"].endswith("/WatchRun"))
        assert watch["stimulus_id"] == f"rpc-submit-{run_id}" and watch["detail"] == {"submit": "audited"}
        submit = next(e for e in log if e["action"].endswith("/SubmitPipeline"))
        assert submit["stimulus_id"] == f"rpc-submit-{other}"
        assert not any(e["action"].endswith(("/GetRun", "/ListRuns")) for e in log), "metadata reads are not audited"
        failed = {e["action"].rpartition("/")[2]: e for e in log if e["outcome"] == "failed"}
        assert failed["GetTaskResult"]["target"] == "nope/b"
        assert failed["GetTaskResult"]["detail"]["status"].startswith("NOT_FOUND: ")
        assert failed["WatchRun"]["target"] == "broken" and failed["WatchRun"]["detail"]["status"].startswith(
            "INVALID_ARGUMENT: ")
        # Only b is marked: one entry, its hashes are those of the bytes the coordinator holds.
        assert len(found) == 1 and found[0]["target"] == f"{run_id}/b" and found[0]["principal"] == "local"
        detail = found[0]["detail"]
        b_bytes, a_bytes = result_bytes(c.address, run_id, "b"), result_bytes(c.address, run_id, "a")
        assert detail["output_sha256"] == sha(b_bytes) and int(detail["output_size_bytes"]) == len(b_bytes)
        assert json.loads(detail["inputs"]) == [{"task": "a", "sha256": sha(a_bytes), "size_bytes": len(a_bytes)}]
        assert "alpha" not in json.dumps(log), "a value reached the audit log"

        only_local = audit_json(c.address, "--principal", "local", "--since", "1h")["entries"]
        assert {e["principal"] for e in only_local} == {"local"} and len(only_local) >= 4
        assert audit_json(c.address, "--principal", "nobody")["entries"] == []
        table = audit_cli(c.address)
        assert table.returncode == 0 and "task.data_access" in table.stdout and "SubmitPipeline" in table.stdout
        assert table.stdout.splitlines()[0].split() == ["SEQ", "TIME", "(UTC)", "PRINCIPAL", "ACTION", "TARGET", "OUTCOME"]
        assert len(table.stdout.splitlines()) >= 1 + len(log)  # (the reads since added entries)

        ok = audit_cli(c.address, "--verify")
        assert ok.returncode == 0 and "audit log intact" in ok.stdout, ok.stdout + ok.stderr

        db_path = c.data_dir / "xpipe.db"
        newest = audit_json(c.address)["head_seq"]

        def tampered(sql: str, *params) -> dict:
            db = sqlite3.connect(db_path, timeout=10)
            saved = db.execute("SELECT * FROM audit").fetchall()
            db.execute(sql, params)
            db.commit()
            try:
                out = audit_cli(c.address, "--verify", "--json")
                assert out.returncode == 1, out.stdout + out.stderr
                return json.loads(out.stdout)["problem"]
            finally:
                db.execute("DELETE FROM audit")
                db.executemany(f"INSERT INTO audit VALUES ({','.join('?' * len(saved[0]))})", saved)
                db.commit()
                db.close()

        assert tampered("UPDATE audit SET principal = 'mallory' WHERE seq = 2") == {
            "seq": 2, "kind": "changed", "message": "audit entry seq 2 was changed (its hash does not match)"}
        removed = tampered("DELETE FROM audit WHERE seq = 3")
        assert (removed["seq"], removed["kind"]) == (3, "removed"), removed
        cut = tampered("DELETE FROM audit WHERE seq = ?", newest)
        assert (cut["seq"], cut["kind"]) == (newest, "removed") and "head hash" in cut["message"], cut
        human = audit_cli(c.address, "--verify")
        assert human.returncode == 0, "restoring the rows did not restore the chain: " + human.stdout


def test_the_chain_continues_across_a_restart(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1) as c, PipelineManager(coordinator=c.address) as pm:
        one = Pipeline("one")
        one.add_tasks([Task("n", ht.noop)])
        run1 = pm.execute_pipeline(one, monitor=False, timeout_s=60).run_id
        before = eventually(lambda: audit_json(c.address)["entries"], message="entries before the restart")
        c.restart_coordinator()
        pm.cancel(run1)
        after = eventually(lambda: [e for e in audit_json(c.address)["entries"] if e["seq"] > before[-1]["seq"]],
                           message="an entry after the restart")  # fmt: skip
        assert after[0]["prev_hash"] == before[-1]["hash"]
        assert audit_cli(c.address, "--verify").returncode == 0


class _Collector:
    """A real OpenLineage HTTP endpoint on loopback (stdlib ``http.server``, in a thread)."""

    def __init__(self) -> None:
        events: list[dict] = []
        self.events = events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/api/v1/lineage":
                    self.send_error(404)
                    return
                if self.headers.get("Content-Type") != "application/json":
                    self.send_error(415)
                    return
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _check_event(event: dict) -> None:
    assert _REQUIRED_EVENT <= set(event), set(event)
    assert event["eventType"] in _EVENT_TYPES
    assert event["eventTime"].endswith("+00:00") and "T" in event["eventTime"]
    assert str(uuid.UUID(event["run"]["runId"])) == event["run"]["runId"]
    assert event["job"]["namespace"] and event["job"]["name"]
    assert event["schemaURL"].startswith("https://openlineage.io/spec/") and event["producer"].startswith("https://")
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] and dataset["name"].startswith("sha256:")


def test_lineage_of_a_three_task_run_and_its_openlineage_export(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=2) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("lineage")
        big = os.urandom(300 * 1024)  # incompressible, over the artifact threshold: travels by reference
        a = Task("a", ht.echo, args=(big,))
        b = Task("b", ht.echo, args=("small",))
        p.add_tasks([a, b, Task("c", ht.describe, depends_on=[a, b])])
        p.enable_lineage()
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.succeeded and result.outputs["c"]["args"] == [big, "small"]
        run_id = result.run_id
        graph = pm.get_lineage(run_id)
        assert graph.run_id == run_id and graph.pipeline == "lineage"
        assert sorted(n.task for n in graph.nodes) == ["a", "b", "c"]
        assert sorted((e.from_task, e.to_task) for e in graph.edges) == [("a", "c"), ("b", "c")]
        bytes_of = {t: result_bytes(c.address, run_id, t) for t in "abc"}
        for task in "abc":
            node = graph.node(task)
            assert node.state == "SUCCEEDED" and node.principal == "local" and node.finished_at >= node.started_at > 0
            assert (node.output.sha256, node.output.size_bytes) == (sha(bytes_of[task]), len(bytes_of[task]))
        assert graph.node("a").output.artifact_ref.startswith("file://"), "the big result should be an artifact"
        assert [(d.task, d.sha256) for d in graph.node("c").inputs] == [("a", sha(bytes_of["a"])), ("b", sha(bytes_of["b"]))]
        assert graph.node("a").inputs == ()
        with pytest.raises(KeyError, match="tracked"):
            graph.node("nope")

        path = tmp_path / "lineage.jsonl"
        assert pm.export_lineage(run_id, path=path) == 6
        events = [json.loads(line) for line in path.read_text().splitlines()]
        for event in events:
            _check_event(event)
        assert [(e["job"]["name"], e["eventType"]) for e in events] == [
            (f"lineage.{t}", kind) for t in sorted("abc") for kind in ("START", "COMPLETE")]  # fmt: skip
        complete_c = events[5]
        assert [d["name"] for d in complete_c["inputs"]] == [f"sha256:{sha(bytes_of['a'])}", f"sha256:{sha(bytes_of['b'])}"]
        assert complete_c["outputs"][0]["name"] == f"sha256:{sha(bytes_of['c'])}"
        assert events[0]["run"]["runId"] == events[1]["run"]["runId"] != events[3]["run"]["runId"]
        assert "small" not in path.read_text(), "a value reached the lineage"

        with _Collector() as collector:
            sent = pm.export_lineage(run_id, url=f"http://127.0.0.1:{collector.port}/api/v1/lineage", namespace="prod")
            assert sent == 6 and len(collector.events) == 6
            for event in collector.events:
                _check_event(event)
                assert event["job"]["namespace"] == "prod"
            with pytest.raises(OSError, match="answered 404"):
                pm.export_lineage(run_id, url=f"http://127.0.0.1:{collector.port}/elsewhere")
        with pytest.raises(ValueError, match="exactly one of"):
            pm.export_lineage(run_id)


def test_a_task_marked_with_track_data_lineage_alone_is_tracked_and_failures_are_recorded(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("partial")
        a = Task("a", ht.echo, args=(1,))
        p.add_tasks([a, track_data_lineage(Task("bad", ht.fail_with_value_error, depends_on=[a]))])
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60, raise_on_failure=False)
        assert not result.succeeded
        run_id = result.run_id
        graph = eventually(lambda: pm.get_lineage(run_id) if pm.get_lineage(run_id).nodes else None,
                           message="the failed task's lineage")  # fmt: skip
        assert [n.task for n in graph.nodes] == ["bad"]
        node = graph.nodes[0]
        assert node.state == "FAILED" and node.output is None
        assert [(d.task, d.sha256) for d in node.inputs] == [("a", sha(result_bytes(c.address, run_id, "a")))]
        events = graph.openlineage_events()
        assert [e["eventType"] for e in events] == ["START", "FAIL"]
        with pytest.raises(Exception, match="no run"):
            pm.get_lineage("does-not-exist")



def test_ha_a_new_leader_continues_the_chain_in_etcd(tmp_path: Path) -> None:
    from tests.integration.test_ha import HACluster

    with HACluster(tmp_path, n=2, ttl_s=2) as ha:
        leader = ha.wait_leader()
        ha.start_worker("w0")
        ha.wait_workers(leader, ["w0"])
        with PipelineManager(coordinator=ha.coordinator_list) as pm:
            p = Pipeline("ha-audited")
            p.add_tasks([audit_data_access(Task("a", ht.echo, args=(7,)))])
            run_id = pm.execute_pipeline(p, monitor=False, timeout_s=60).run_id
            first = eventually(lambda: [e for e in audit_json(leader)["entries"] if e["action"] == "task.data_access"],
                               message="the data access stored by the first leader")  # fmt: skip
            ha.coordinators[leader].terminate()  # a clean stop flushes its queue
            new_leader = ha.wait_leader(among=[a for a in ha.addresses if a != leader])
            assert pm.cancel(run_id) is False
            log = eventually(lambda: (e := audit_json(new_leader)["entries"]) and e[-1]["action"].endswith("/CancelRun")
                             and e, message="the new leader's entry")  # fmt: skip
        assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
        assert log[-1]["prev_hash"] == log[-2]["hash"] and first[0] in log
        verified = audit_cli(new_leader, "--verify")
        assert verified.returncode == 0 and f"{len(log)} entries" in verified.stdout, verified.stdout + verified.stderr


def test_a_full_disk_keeps_audit_entries_queued_until_there_is_room(tmp_path: Path) -> None:
    from tests.integration.test_store_safety import _fill, _mount_tmpfs

    data = tmp_path / "coordinator-data"  # Cluster's --data-dir
    data.mkdir()
    _mount_tmpfs(data, "8m")
    try:
        with Cluster(tmp_path, workers=1) as c, PipelineManager(coordinator=c.address) as pm:
            one = Pipeline("before-full")
            one.add_tasks([Task("n", ht.echo, args=(1,))])
            run_id = pm.execute_pipeline(one, monitor=False, timeout_s=60).run_id
            stored = eventually(lambda: audit_json(c.address)["head_seq"], message="the submit stored")
            filler = data / "filler"
            _fill(filler)
            for _ in range(3):  # reads and a no-op cancel: the engine writes nothing, the audit log does
                assert pm.client.task_result(run_id, "n").value == 1
            assert pm.cancel(run_id) is False
            eventually(lambda: "audit log: the store refused a write" in c.coordinator.log_text(), timeout_s=10,
                       message="the audit write fault logged")  # fmt: skip
            page = audit_json(c.address)
            assert page["head_seq"] == stored and page["queued"] == 4 and page["dropped"] == 0, page
            filler.unlink()
            log = eventually(lambda: (e := audit_json(c.address))["queued"] == 0 and e["entries"], timeout_s=20,
                             message="the queued entries stored once there is room")  # fmt: skip
            assert [e["action"].rpartition("/")[2] for e in log[-4:]] == ["GetTaskResult"] * 3 + ["CancelRun"]
            assert "the store takes writes again" in c.coordinator.log_text()
            assert audit_cli(c.address, "--verify").returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_the_coordinator_exports_lineage_as_tasks_finish(tmp_path: Path) -> None:
    path = tmp_path / "exported.jsonl"
    with _Collector() as collector:
        targets = (f"file:{path}", f"http://127.0.0.1:{collector.port}/api/v1/lineage")
        for target in targets:
            with Cluster(tmp_path / target[:4], workers=1, coordinator_args=["--lineage-export", target]) as c, \
                    PipelineManager(coordinator=c.address) as pm:  # fmt: skip
                p = Pipeline("exported")
                a = Task("a", ht.echo, args=(1,))
                p.add_tasks([a, Task("b", ht.double, depends_on=[a])])
                p.enable_lineage()
                run_id = pm.execute_pipeline(p, monitor=False, timeout_s=60).run_id
                if target.startswith("file:"):
                    events = eventually(lambda: len(lines := path.read_text().splitlines()) == 4 and lines,
                                        message="4 events in the file")  # fmt: skip
                    events = [json.loads(line) for line in events]
                else:
                    events = eventually(lambda: len(collector.events) == 4 and collector.events,
                                        message="4 events POSTed")  # fmt: skip
                for event in events:
                    _check_event(event)
                assert sorted((e["job"]["name"], e["eventType"]) for e in events) == [
                    ("exported.a", "COMPLETE"), ("exported.a", "START"), ("exported.b", "COMPLETE"), ("exported.b", "START")]
                # The same events as an export from the stored lineage.
                again = pm.get_lineage(run_id).openlineage_events()
                assert sorted(json.dumps(e, sort_keys=True) for e in again) == sorted(
                    json.dumps(e, sort_keys=True) for e in events)  # fmt: skip


def test_a_bad_lineage_export_target_is_refused_at_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir",
                          str(tmp_path / "d"), "--lineage-export", "s3://bucket/x"],
                         env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "--lineage-export 's3://bucket/x': expected file:PATH or http(s)://HOST[:PORT]/PATH" in out.stderr


def test_an_unreachable_export_target_is_logged_and_the_lineage_kept(tmp_path: Path) -> None:
    from tests.harness import free_port

    url = f"http://127.0.0.1:{free_port()}/api/v1/lineage"  # nothing listens there
    with Cluster(tmp_path, workers=1, coordinator_args=["--lineage-export", url]) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("unsent")
        p.add_tasks([track_data_lineage(Task("a", ht.echo, args=(1,)))])
        run_id = pm.execute_pipeline(p, monitor=False, timeout_s=60).run_id
        eventually(lambda: "lineage export of 2 events failed" in c.coordinator.log_text(), timeout_s=20,
                   message="the failed export logged")  # fmt: skip
        assert f"{url} unreachable" in c.coordinator.log_text()
        assert [n.task for n in pm.get_lineage(run_id).nodes] == ["a"]
