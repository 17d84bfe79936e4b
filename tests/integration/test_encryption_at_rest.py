"""Encryption at rest with real daemons: ``--encryption-key-file`` on coordinator and workers.

A marker goes into a small result, a big (artifact) result, a task argument (the spec), a
cloudpickled function (the code) and a task log line; every byte under the data and
artifact directories (SQLite, its WAL, task-logs.db, artifact files) and every etcd value
is grepped for it. The SDK still reads it all back through the coordinator.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from aetcd import rpc
from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import insights_pb2, insights_pb2_grpc
from xpipe.errors import RequestRejectedError
from xpipe.security._atrest import sealed_key_id
from xpipe.security._keys import create_keyring, rotate_keyring

from tests import helpers_atrest as ha
from tests import helpers_tasks
from tests.harness import Cluster, EtcdServer, Proc, eventually, free_port

pytestmark = pytest.mark.integration

IMPORTS = ("tests.helpers_tasks", "tests.helpers_atrest")


def _marker() -> str:
    return f"MARK-{uuid.uuid4().hex}"


def _cluster(tmp_path: Path, key: Path | None, *, workers: int = 1, coordinator_args: tuple = ()) -> Cluster:
    flag = ("--encryption-key-file", str(key)) if key is not None else ()
    return Cluster(tmp_path, workers=workers, slots=2, imports=IMPORTS,
                   coordinator_args=(*flag, *coordinator_args), worker_args=flag)  # fmt: skip


def _finish(pm: PipelineManager, p: Pipeline) -> str:
    run_id = pm.submit(p)
    for event in pm.client.watch(run_id, summary_only=True):
        if event.summary.state.lower() in ("succeeded", "failed", "cancelled"):
            break
    return run_id


def _marked_pipeline(name: str, marker: str, *, pinned: bool = False) -> Pipeline:
    """Every kind of data at rest, each holding ``marker``."""
    code_marker = marker + "-code"
    p = Pipeline(name)
    small = Task("small", ha.shout, args=(marker,))  # inline result, a log line, an argument (spec)
    # An artifact file, opened by a worker: by another one when there are two (wa, wb), so it
    # reads (and decrypts) the file rather than its producer's copy in memory.
    big = Task("big", ha.big_with, args=(marker,), labels={"node": "a"} if pinned else None)
    check = Task("check", ha.holds, args=(marker,), depends_on=[big], labels={"node": "b"} if pinned else None)
    code = Task("code", lambda: code_marker)  # cloudpickled: the code itself holds the marker
    p.add_tasks([small, big, check, code])
    return p


def _two_workers(c: Cluster, key: Path | None) -> None:
    flag = ("--encryption-key-file", str(key)) if key is not None else ()
    c.add_worker("wa", extra_args=("--labels", "node=a", *flag))
    c.add_worker("wb", extra_args=("--labels", "node=b", *flag))


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(f) for f in root.rglob("*") if f.is_file() and needle in f.read_bytes()]


def _check_readable(pm: PipelineManager, run_id: str, marker: str) -> None:
    assert pm.client.task_result(run_id, "small").value == marker
    big = pm.client.task_result(run_id, "big").value
    assert len(big) == ha.BIG_BYTES and big.startswith(marker.encode()) and big.endswith(marker.encode())
    assert pm.client.task_result(run_id, "check").value is True
    assert pm.client.task_result(run_id, "code").value == marker + "-code"


def _logs(pm: PipelineManager, run_id: str) -> str:
    return "".join(chunk.text for chunk in pm.client.get_logs(run_id, "small"))


def test_without_a_key_the_marker_is_on_disk(tmp_path):
    """The control: the grep below finds plain data, so its "not found" means something."""
    marker = _marker()
    with _cluster(tmp_path, None, workers=0) as c, PipelineManager(coordinator=c.address) as pm:
        _two_workers(c, None)
        run_id = _finish(pm, _marked_pipeline("plain", marker, pinned=True))
        _check_readable(pm, run_id, marker)
        eventually(lambda: marker in _logs(pm, run_id), timeout_s=10)
        found = _files_holding(c.data_dir, marker.encode())
        assert any(f.endswith("big.1") for f in found), found  # the artifact file
        assert any("xpipe.db" in f for f in found), found  # result/spec in SQLite (or its WAL)
        assert any("task-logs.db" in f for f in found), found


def test_with_a_key_nothing_on_disk_holds_the_marker_and_the_sdk_reads_it_all(tmp_path):
    key = tmp_path / "keys.json"
    key_id = create_keyring(key)
    marker = _marker()
    with _cluster(tmp_path, key, workers=0) as c, PipelineManager(coordinator=c.address) as pm:
        _two_workers(c, key)
        run_id = _finish(pm, _marked_pipeline("sealed", marker, pinned=True))
        assert pm.client.get_run(run_id).task("check").worker == "wb"  # read big's sealed file from disk
        _check_readable(pm, run_id, marker)
        eventually(lambda: marker in _logs(pm, run_id), timeout_s=10)
        # While running: the WAL holds the newest rows.
        assert _files_holding(c.data_dir, marker.encode()) == []
        artifacts = list((c.data_dir / "artifacts").rglob("big.*"))
        assert [a.name for a in artifacts] == ["big.1.xpe"]
        assert sealed_key_id(artifacts[0].read_bytes()) == key_id
        c.restart_coordinator()
        # After a restart the run is read back from the store (decrypted) and the WAL was checkpointed.
        _check_readable(pm, run_id, marker)
        assert marker in _logs(pm, run_id)
    assert _files_holding(c.data_dir, marker.encode()) == []


def test_etcd_values_and_files_hold_no_marker(tmp_path):
    key = tmp_path / "keys.json"
    create_keyring(key)
    marker = _marker()
    with EtcdServer(tmp_path) as etcd:
        store = ("--store", f"etcd://{etcd.endpoint}", "--artifact-dir", str(tmp_path / "shared-artifacts"))
        with _cluster(tmp_path, key, coordinator_args=store) as c, PipelineManager(coordinator=c.address) as pm:
            p = _marked_pipeline("etcd", marker)
            # A spec over etcd's 64 KiB inline limit: it goes to the artifact directory (sealed).
            p.add_tasks([Task("spill", ha.holds, args=(ha.big_with(marker), marker))])
            run_id = _finish(pm, p)
            _check_readable(pm, run_id, marker)
            assert pm.client.task_result(run_id, "spill").value is True
            with grpc.insecure_channel(etcd.endpoint) as channel:
                reply = rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"\0", range_end=b"\0"), timeout=5)
            values = [kv.value for kv in reply.kvs]
            assert any(kv.key.startswith(b"/xpipe/default/tasks/" + run_id.encode()) for kv in reply.kvs)
            assert not [v for v in values if marker.encode() in v]
            assert _files_holding(etcd.data_dir, marker.encode()) == []
            assert _files_holding(tmp_path / "shared-artifacts", marker.encode()) == []


def _sealed_result_key_ids(db: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT name, result FROM tasks WHERE run_id=? AND result IS NOT NULL", (run_id,))
        return {name: sealed_key_id(result) for name, result in rows}


def test_rotation_is_noticed_old_data_stays_readable_new_data_uses_the_new_key(tmp_path):
    key = tmp_path / "keys.json"
    old_id = create_keyring(key)
    first, second = _marker(), _marker()
    with _cluster(tmp_path, key) as c, PipelineManager(coordinator=c.address) as pm:
        run1 = _finish(pm, _marked_pipeline("before", first))
        db = c.data_dir / "xpipe.db"
        assert set(_sealed_result_key_ids(db, run1).values()) == {old_id}
        new_id = rotate_keyring(key)
        # No restart: the daemons re-read the file (checked at most once a second); a run
        # submitted after that is sealed with the new key, by the coordinator and the worker.
        def sealed_with_new_key() -> str | None:
            run_id = _finish(pm, _marked_pipeline("after", second))
            ids = _sealed_result_key_ids(db, run_id)
            big = next((c.data_dir / "artifacts" / run_id).glob("big.*"))
            return run_id if set(ids.values()) == {new_id} and sealed_key_id(big.read_bytes()) == new_id else None

        run2 = eventually(sealed_with_new_key, timeout_s=20, interval_s=0.2)
        c.restart_coordinator()
        _check_readable(pm, run1, first)  # the old key still opens the old run
        _check_readable(pm, run2, second)


def test_a_wrong_keyring_refuses_reads_naming_the_key_id_and_no_keyring_refuses_to_start(tmp_path):
    key = tmp_path / "keys.json"
    key_id = create_keyring(key)
    other = tmp_path / "other.json"
    create_keyring(other)
    marker = _marker()
    c = _cluster(tmp_path, key, workers=0)
    with c:
        pm = PipelineManager(coordinator=c.address)
        c.add_worker("w0", extra_args=("--encryption-key-file", str(key)))
        run_id = _finish(pm, _marked_pipeline("wrong", marker))
        pm.close()
        # The wrong keyring: the coordinator starts (its store is encrypted, it has a key) but
        # cannot open this run: the read fails naming the key id; the coordinator stays up.
        c.coordinator_args = ("--encryption-key-file", str(other))
        c.restart_coordinator(wait_for_workers=False)
        with PipelineManager(coordinator=c.address) as pm:
            with pytest.raises(RequestRejectedError, match=rf"FAILED_PRECONDITION: .*key id '{key_id}' is not in keyring"):
                pm.client.task_result(run_id, "small")
            with pytest.raises(RequestRejectedError, match=key_id):
                pm.client.get_logs(run_id, "small")
            assert c.coordinator.alive()
        c.coordinator.terminate()
        # No keyring over an encrypted store: a one-line refusal, exit 2, no traceback.
        c.coordinator_args = ()
        proc = Proc("coordinator-nokey", [sys.executable, "-m", "xpipe.coordinator", "--listen", c.address,
                                          "--data-dir", str(c.data_dir)], log_dir=c.log_dir)  # fmt: skip
        try:
            assert proc.wait(30) == 2
        finally:
            proc.kill()
        text = proc.log_path.read_text()
        assert "is encrypted at rest" in text and "--encryption-key-file" in text and "Traceback" not in text


@pytest.mark.parametrize("coordinator_has_key", [True, False])
def test_a_worker_that_disagrees_with_the_coordinator_exits_naming_the_problem(tmp_path, coordinator_has_key):
    key = tmp_path / "keys.json"
    create_keyring(key)
    with _cluster(tmp_path, key if coordinator_has_key else None, workers=0) as c:
        argv = [sys.executable, "-m", "xpipe.worker", "--coordinator", c.address, "--name", "odd"]
        if not coordinator_has_key:
            argv += ["--encryption-key-file", str(key)]
        proc = Proc("odd-worker", argv, log_dir=c.log_dir)
        try:
            assert proc.wait(30) == 2
        finally:
            proc.kill()
        text = proc.log_path.read_text()
        if coordinator_has_key:
            assert "encrypts data at rest but this worker has no --encryption-key-file" in text
        else:
            assert f"this worker has --encryption-key-file {key}" in text and "does not encrypt at rest" in text


@pytest.mark.parametrize("daemon", ["xpipe.coordinator", "xpipe.worker"])
@pytest.mark.parametrize("content", [None, "{not json", '{"version": 1, "active": "k1", "keys": []}'])
def test_a_missing_or_malformed_key_file_is_a_one_line_startup_error(tmp_path, daemon, content):
    key = tmp_path / "keys.json"
    if content is not None:
        key.write_text(content)
        key.chmod(0o600)  # else a (right) warning about its mode comes first
    argv = [sys.executable, "-m", daemon, "--encryption-key-file", str(key)]
    argv += ["--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0"] if daemon == "xpipe.coordinator" else [
        "--coordinator", "127.0.0.1:9"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(key) in lines[0] and "--encryption-key-file" in lines[0]


def test_an_unfinished_run_under_a_key_the_keyring_lacks_stops_the_start_naming_the_key_id(tmp_path):
    key = tmp_path / "keys.json"
    key_id = create_keyring(key)
    other = tmp_path / "other.json"
    create_keyring(other)
    with _cluster(tmp_path, key) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("long")
        p.add_tasks([Task("wait", helpers_tasks.sleep, args=(60,))])
        run_id = pm.submit(p)
        eventually(lambda: pm.client.get_run(run_id).task("wait").state == "RUNNING", timeout_s=20)
        c.coordinator.terminate()
        c.workers["w0"].kill()  # its sleeping task would hold the teardown for the drain grace
        proc = Proc("coordinator-other-key", [sys.executable, "-m", "xpipe.coordinator", "--listen", c.address,
                                              "--data-dir", str(c.data_dir), "--encryption-key-file", str(other)],
                    log_dir=c.log_dir)  # fmt: skip
        try:
            assert proc.wait(30) == 2
        finally:
            proc.kill()
        text = proc.log_path.read_text()
        assert f"xpipe-coordinator: cannot decrypt spec of {run_id}: key id '{key_id}' is not in keyring" in text
        assert "Traceback" not in text


@pytest.mark.parametrize("sealed", [False, True], ids=["plain-control", "sealed"])
def test_alert_history_is_sealed_like_the_rest_of_the_store(tmp_path, sealed):
    """An alert quotes the task's error; under a key its stored row holds no plaintext."""
    key = tmp_path / "keys.json"
    if sealed:
        create_keyring(key)
    alerting = tmp_path / "alerting.json"  # delivered nowhere (nobody listens), kept in the history
    alerting.write_text(json.dumps({"webhook": f"http://127.0.0.1:{free_port()}/hook"}))
    marker = _marker()
    with _cluster(tmp_path, key if sealed else None, coordinator_args=("--alerting-config", str(alerting))) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("alerted")
        p.add_task(Task("boom", helpers_tasks.fail_with_value_error, args=(marker,)))
        _finish(pm, p)

        def alerts() -> list:
            request = insights_pb2.ListAlertsRequest(limit=100)
            reply = pm.client._call_on(insights_pb2_grpc.InsightsServiceStub, lambda s: s.ListAlerts(request, timeout=10))
            return [a for a in reply.alerts if marker in a.summary]

        eventually(lambda: [a.rule for a in alerts()] == ["task_failed"], timeout_s=30)  # it quotes the error
        c.restart_coordinator()  # the history is read back (opened) from the store
        assert [a.rule for a in alerts()] == ["task_failed"]
        found = _files_holding(c.data_dir, marker.encode())
        if sealed:
            assert found == []
        else:
            assert any("xpipe.db" in f for f in found), found
