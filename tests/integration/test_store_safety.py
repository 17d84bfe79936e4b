"""The coordinator's store fails safe, on real processes: a full disk (a real tmpfs, filled
by the test), a truncated or malformed database, and private file modes."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Cluster, Proc, eventually, free_port
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc


def _spec(name: str, tasks: int = 3, argv_bytes: int = 0) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name=name)
    for i in range(tasks):
        argv = spec.tasks.add(name=f"t{i}").command.argv
        argv.append("true")
        if argv_bytes:
            argv.append(os.urandom(argv_bytes // 2).hex())  # incompressible: it must take disk
    return spec


def _submit(stub, spec: pb.PipelineSpec) -> str:
    request = pipeline_pb2.SubmitPipelineRequest(pipeline=spec)
    return stub.SubmitPipeline(request, timeout=20).run_id


def _run_state(stub, run_id: str) -> int:
    return stub.GetRun(pipeline_pb2.GetRunRequest(run_id=run_id), timeout=5).summary.state


def _health(channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    return reply.status


def _fill(path: Path) -> None:
    """Write ``path`` until the file system says it is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left over for close() to write
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")


def test_a_full_disk_is_refused_with_its_cause_and_the_coordinator_recovers_by_itself(tmp_path):
    data = tmp_path / "coordinator-data"  # Cluster's --data-dir
    data.mkdir()
    _mount_tmpfs(data, "8m")
    try:
        with Cluster(tmp_path, workers=1) as cluster, grpc.insecure_channel(cluster.address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            before = _submit(stub, _spec("before"))
            eventually(lambda: _run_state(stub, before) == pb.RUN_SUCCEEDED, timeout_s=20, message="first run done")

            filler = data / "filler"
            _fill(filler)
            with pytest.raises(grpc.RpcError) as caught:
                _submit(stub, _spec("too-big", tasks=200, argv_bytes=2000))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
            assert "database or disk is full" in caught.value.details()

            # Up, answering reads from the store, refusing writes until there is room again.
            assert cluster.coordinator.alive()
            eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout_s=5,
                       message="health NOT_SERVING while the store refuses writes")  # fmt: skip
            listed = stub.ListRuns(pipeline_pb2.ListRunsRequest(), timeout=5).runs
            assert [r.pipeline for r in listed] == ["before"]  # the refused run was never recorded
            assert _run_state(stub, before) == pb.RUN_SUCCEEDED
            with pytest.raises(grpc.RpcError) as again:
                _submit(stub, _spec("while-full"))
            assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk is full" in again.value.details()

            filler.unlink()
            eventually(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, timeout_s=20,
                       message="coordinator serving again after space came back")  # fmt: skip
            after = _submit(stub, _spec("after"))
            eventually(lambda: _run_state(stub, after) == pb.RUN_SUCCEEDED, timeout_s=30,
                       message="a run after the recovery done (the worker came back)")  # fmt: skip
            info = stub.GetRun(pipeline_pb2.GetRunRequest(run_id=before), timeout=5)
            assert info.summary.state == pb.RUN_SUCCEEDED
            assert [t.state for t in info.tasks] == [pb.SUCCEEDED] * 3
            names = sorted(r.pipeline for r in stub.ListRuns(pipeline_pb2.ListRunsRequest(), timeout=5).runs)
            assert names == ["after", "before"]
            assert cluster.coordinator.alive()
            assert "Traceback" not in cluster.coordinator.log_text()
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def _coordinator(tmp_path: Path, *args: str) -> Proc:
    argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", f"127.0.0.1:{free_port()}",
            "--data-dir", str(tmp_path / "coordinator-data"), *args]  # fmt: skip
    return Proc("coordinator-refused", argv, log_dir=tmp_path / "logs", cwd=tmp_path)


def _refusal(proc: Proc) -> str:
    try:
        status = proc.wait(30)
    finally:
        proc.kill()
    text = proc.log_text()
    assert status == 2, text
    assert "Traceback" not in text, text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("xpipe-coordinator:")]
    return line


def test_a_truncated_store_is_refused_until_accepted_empty(tmp_path):
    with Cluster(tmp_path, workers=1) as cluster, grpc.insecure_channel(cluster.address) as channel:
        _submit(pipeline_pb2_grpc.PipelineServiceStub(channel), _spec("kept", tasks=1))
    db = cluster.data_dir / "xpipe.db"
    os.truncate(db, 0)

    line = _refusal(_coordinator(tmp_path))
    assert str(db) in line and "is empty" in line and "--accept-empty-store" in line and "backup" in line

    with Cluster(tmp_path, workers=1, coordinator_args=["--accept-empty-store"]) as cluster:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            assert list(stub.ListRuns(pipeline_pb2.ListRunsRequest(), timeout=5).runs) == []
            _submit(stub, _spec("fresh", tasks=1))
    with Cluster(tmp_path, workers=1):  # accepted once: starts as usual after, without the flag
        pass


def test_a_malformed_store_gets_one_line_with_the_way_out(tmp_path):
    data = tmp_path / "coordinator-data"
    data.mkdir()
    (data / "xpipe.db").write_bytes(b"definitely not SQLite " * 500)
    line = _refusal(_coordinator(tmp_path))
    assert str(data / "xpipe.db") in line and "file is not a database" in line
    assert "restore" in line and "--accept-empty-store" in line


def test_the_store_and_artifacts_are_private(tmp_path):
    with Cluster(tmp_path, workers=1) as cluster, grpc.insecure_channel(cluster.address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        run_id = _submit(stub, _spec("modes", tasks=1))
        eventually(lambda: _run_state(stub, run_id) == pb.RUN_SUCCEEDED, timeout_s=20, message="run done")
        data = cluster.data_dir
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert modes == {
            "xpipe.db": 0o600, "xpipe.db-wal": 0o600, "xpipe.db-shm": 0o600, "xpipe.db.manifest": 0o600,
            "task-logs.db": 0o600, "task-logs.db-wal": 0o600, "task-logs.db-shm": 0o600,
            "artifacts": 0o700,
        }, modes  # fmt: skip
