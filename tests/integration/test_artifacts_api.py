"""Results for any client (issue 18): GetArtifact, inline_max_bytes, accept_compression,
a failed command's kept result and ``stdout_limit_bytes``, over plain gRPC stubs.

A plain stub is what a Go, Java or Node client is: it lists no zstd unless it says so, and
reads big results by reference. One cluster serves every test; each test that changes an
artifact on disk runs its own pipeline.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import grpc
import pytest
import zstandard
from xpipe import Client, Pipeline, PipelineManager, Task
from xpipe._limits import MAX_ARTIFACT_CHUNK_BYTES, MAX_COMMAND_STDOUT_LIMIT_BYTES
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.errors import PipelineValidationError

from tests.harness import Cluster, SecureSetup, eventually

MIB = 1024 * 1024
#: 16,384 x 64 hex chars: exactly 1 MiB of deterministic text that zstd halves (so it stays
#: above the 256 KiB artifact threshold), no trailing newline (the client contract's BLOB_PY).
BLOB_PY = (
    "import hashlib,sys; b=b''.join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(16384));"
    " sys.stdout.write(b.decode())"
)
JSON_PY = 'import json; print(json.dumps({"rows": [{"i": i, "name": "row-%05d" % i} for i in range(640)]}))'


def _hex_text(n_hashes: int) -> bytes:
    return b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(n_hashes))


def _hex_py(n_hashes: int) -> str:
    return (f"import hashlib,sys; sys.stdout.write(''.join(hashlib.sha256(str(i).encode()).hexdigest() "
            f"for i in range({n_hashes})))")  # fmt: skip


def _command(name: str, argv: list[str], *, deps: tuple[str, ...] = (), stdout_limit_bytes: int = 0) -> pb.TaskSpec:
    return pb.TaskSpec(
        name=name, depends_on=list(deps),
        command=pb.CommandCall(argv=argv, stdout_limit_bytes=stdout_limit_bytes),
    )  # fmt: skip


def _big(name: str) -> pb.TaskSpec:
    """A command whose 1 MiB stdout makes a result that travels by reference."""
    return _command(name, [sys.executable, "-c", _hex_py(16384)], stdout_limit_bytes=2 * MIB)


def _run(stub: pipeline_pb2_grpc.PipelineServiceStub, name: str, tasks: list[pb.TaskSpec]) -> str:
    """Submit, and wait for the end with WatchRun; the run id."""
    request = pipeline_pb2.WatchRunRequest(
        submit=pipeline_pb2.SubmitPipelineRequest(pipeline=pb.PipelineSpec(name=name, tasks=tasks)), summary_only=True
    )
    last = None
    for last in stub.WatchRun(request, timeout=60):
        pass
    assert last is not None
    return last.summary.run_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("artifacts-api"), workers=2, slots=2) as c:
        yield c


@pytest.fixture(scope="module")
def stub(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        yield pipeline_pb2_grpc.PipelineServiceStub(channel)


@pytest.fixture(scope="module")
def polyglot_run(stub) -> str:
    """The client contract's run: greet, blob (1 MiB stdout), json20k, a failing command; and a
    command whose stdout overflows its 1 MiB stdout_limit_bytes, and one killed by SIGKILL."""
    return _run(stub, "artifacts-api", [
        _command("greet", ["sh", "-c", "echo hello"]),
        _command("blob", [sys.executable, "-c", BLOB_PY], deps=("greet",), stdout_limit_bytes=2 * MIB),
        _command("json20k", [sys.executable, "-c", JSON_PY], deps=("greet",)),
        _command("fail", ["sh", "-c", "echo partial output; echo 'disk full' >&2; exit 3"], deps=("greet",)),
        _command("tail", [sys.executable, "-c", _hex_py(24576)], stdout_limit_bytes=MIB),  # 1.5 MiB written
        _command("killed", ["sh", "-c", "echo before; kill -9 $$"]),
    ])  # fmt: skip


def _result(stub, run_id: str, task: str, **kwargs) -> pipeline_pb2.TaskResult:
    return stub.GetTaskResult(pipeline_pb2.GetTaskResultRequest(run_id=run_id, task=task, **kwargs), timeout=10)


def _read(stub, run_id: str, task: str, ref: str, **kwargs) -> tuple[pipeline_pb2.ArtifactChunk, list, bytes]:
    """(first chunk, every chunk, the concatenated bytes) of GetArtifact."""
    request = pipeline_pb2.GetArtifactRequest(run_id=run_id, task=task, ref=ref, **kwargs)
    chunks = list(stub.GetArtifact(request, timeout=10))
    return chunks[0], chunks, b"".join(c.data for c in chunks)


def _blob_ref(stub, run_id: str) -> str:
    reply = _result(stub, run_id, "blob", inline_max_bytes=65536)
    assert reply.result.artifact_ref, "the 1 MiB result should stay by reference"
    return reply.result.artifact_ref


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_get_artifact_serves_identity_chunks_checked_by_sha256_to_a_client_without_zstd(stub, polyglot_run):
    reply = _result(stub, polyglot_run, "blob", inline_max_bytes=65536)
    payload = reply.result
    assert reply.state == pb.SUCCEEDED and payload.artifact_ref and not payload.data
    assert len(payload.artifact_sha256) == 64 and payload.zstd  # stored compressed, with its hash
    first, chunks, data = _read(stub, polyglot_run, "blob", payload.artifact_ref, chunk_bytes=100_000)
    assert first.compression == "identity" and first.codec == pb.CODEC_JSON
    assert first.total_bytes == len(data) == first.size_bytes == payload.size_bytes
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert [c.offset for c in chunks] == list(range(0, len(data), 100_000))
    assert all(len(c.data) == 100_000 for c in chunks[:-1])
    result = json.loads(data)
    assert result["exit_code"] == 0 and result["stdout"].encode() == _hex_text(16384)
    assert len(result["stdout"]) == MIB


def test_get_artifact_serves_zstd_as_stored_to_a_client_that_lists_it(stub, polyglot_run):
    ref = _blob_ref(stub, polyglot_run)
    first, chunks, data = _read(stub, polyglot_run, "blob", ref, accept_compression=["zstd"])
    assert first.compression == "zstd" and first.total_bytes == len(data) < first.size_bytes
    assert first.sha256 == hashlib.sha256(data).hexdigest() == _result(
        stub, polyglot_run, "blob", inline_max_bytes=65536).result.artifact_sha256  # fmt: skip
    assert len(chunks) == -(-len(data) // (256 * 1024))  # the default chunk is 256 KiB
    plain = zstandard.ZstdDecompressor().decompress(data, max_output_size=first.size_bytes)
    assert json.loads(plain)["stdout"].encode() == _hex_text(16384)


def test_an_unknown_accept_compression_value_falls_back_to_identity(stub, polyglot_run):
    ref = _blob_ref(stub, polyglot_run)
    first, _, data = _read(stub, polyglot_run, "blob", ref, accept_compression=["br", "gzip", "ZSTD "])
    assert first.compression == "identity" and json.loads(data)["exit_code"] == 0
    json20k = _result(stub, polyglot_run, "json20k", accept_compression=["br"]).result
    assert not json20k.zstd and len(json.loads(json.loads(json20k.data)["stdout"])["rows"]) == 640


def test_get_artifact_refuses_what_the_task_result_does_not_name(stub, polyglot_run):
    ref = _blob_ref(stub, polyglot_run)
    code, details = _code(lambda: _read(stub, "no-such-run", "blob", ref))
    assert code == grpc.StatusCode.NOT_FOUND and "no run 'no-such-run'" in details
    code, details = _code(lambda: _read(stub, polyglot_run, "nope", ref))
    assert code == grpc.StatusCode.NOT_FOUND and "has no task 'nope'" in details
    # Another task's ref, and a made-up path inside the artifact directory: neither is named.
    code, details = _code(lambda: _read(stub, polyglot_run, "json20k", ref))
    assert code == grpc.StatusCode.NOT_FOUND and "names no artifact" in details
    code, details = _code(lambda: _read(stub, polyglot_run, "blob", ref + "x"))
    assert code == grpc.StatusCode.NOT_FOUND and "names no artifact" in details
    code, details = _code(lambda: _read(stub, polyglot_run, "blob", "file:///etc/passwd"))
    assert code == grpc.StatusCode.NOT_FOUND and "names no artifact" in details


def test_chunk_bytes_above_the_limit_is_invalid(stub, polyglot_run):
    ref = _blob_ref(stub, polyglot_run)
    code, details = _code(lambda: _read(stub, polyglot_run, "blob", ref, chunk_bytes=MAX_ARTIFACT_CHUNK_BYTES + 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_bytes" in details and str(MAX_ARTIFACT_CHUNK_BYTES) in details


def test_a_tampered_artifact_is_data_loss_and_a_deleted_one_not_found(stub, cluster):
    run_id = _run(stub, "tampered", [_big("big"), _big("gone")])
    ref = _result(stub, run_id, "big", inline_max_bytes=1).result.artifact_ref
    path = Path(ref.removeprefix("file://"))
    assert path.is_relative_to((cluster.data_dir / "artifacts").resolve())
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, details = _code(lambda: _read(stub, run_id, "big", ref))
    assert code == grpc.StatusCode.DATA_LOSS and ref in details and "SHA-256" in details
    # Inlining never hands out the altered bytes either: the result stays a reference.
    assert _result(stub, run_id, "big").result.artifact_ref == ref
    gone = _result(stub, run_id, "gone", inline_max_bytes=1).result.artifact_ref
    Path(gone.removeprefix("file://")).unlink()
    code, details = _code(lambda: _read(stub, run_id, "gone", gone))
    assert code == grpc.StatusCode.NOT_FOUND and "is gone" in details


def test_inline_max_bytes_keeps_big_results_by_ref_and_zero_inlines_all(stub, polyglot_run):
    by_ref = stub.GetRun(pipeline_pb2.GetRunRequest(run_id=polyglot_run, include_results=True, inline_max_bytes=65536))
    results = {t.name: t.result for t in by_ref.tasks}
    assert results["blob"].artifact_ref and results["blob"].artifact_sha256
    assert results["greet"].data and not results["greet"].artifact_ref  # small results stay inline
    inline = _result(stub, polyglot_run, "blob", accept_compression=["zstd"])  # 0: inline all, as before
    assert inline.result.data and not inline.result.artifact_ref and not inline.result.artifact_sha256
    assert inline.result.zstd
    below = _result(stub, polyglot_run, "blob", inline_max_bytes=4 * MIB)  # under the limit: inline, identity
    assert not below.result.zstd and json.loads(below.result.data)["stdout"].encode() == _hex_text(16384)


def test_a_20_kib_json_result_reaches_a_client_without_zstd_as_identity(stub, polyglot_run):
    with_zstd = _result(stub, polyglot_run, "json20k", accept_compression=["zstd"]).result
    assert with_zstd.zstd  # compressed on the worker (>= 16 KiB)
    for reply in (
        _result(stub, polyglot_run, "json20k", inline_max_bytes=65536).result,
        next(t.result for t in stub.GetRun(pipeline_pb2.GetRunRequest(
            run_id=polyglot_run, include_results=True), timeout=10).tasks if t.name == "json20k"),
        next(t.result for t in list(stub.WatchRun(pipeline_pb2.WatchRunRequest(
            run_id=polyglot_run, results_on_end=True), timeout=10))[-1].changed if t.name == "json20k"),
    ):  # fmt: skip
        assert not reply.zstd and reply.size_bytes == len(reply.data)
        rows = json.loads(json.loads(reply.data)["stdout"])["rows"]
        assert len(rows) == 640 and rows[-1] == {"i": 639, "name": "row-00639"}


def test_a_failed_command_keeps_its_exit_code_stdout_and_stderr(stub, polyglot_run):
    reply = _result(stub, polyglot_run, "fail", inline_max_bytes=65536)
    assert reply.state == pb.FAILED
    assert reply.error.HasField("exit_code") and reply.error.exit_code == 3
    assert "exited with code 3" in reply.error.message
    assert json.loads(reply.result.data) == {"stdout": "partial output\n", "stderr": "disk full\n", "exit_code": 3}
    run = stub.GetRun(pipeline_pb2.GetRunRequest(run_id=polyglot_run, include_results=True), timeout=10)
    assert run.summary.state == pb.RUN_FAILED
    fail = next(t for t in run.tasks if t.name == "fail")
    assert json.loads(fail.result.data)["stderr"] == "disk full\n" and fail.error.exit_code == 3
    ok = _result(stub, polyglot_run, "greet")
    assert not ok.error.HasField("exit_code")
    killed = _result(stub, polyglot_run, "killed")
    assert killed.state == pb.FAILED and killed.error.exit_code == -9  # negative: the signal
    assert json.loads(killed.result.data) == {"stdout": "before\n", "stderr": "", "exit_code": -9}


def test_stdout_limit_bytes_keeps_that_much_of_stdout_and_a_too_big_value_is_refused(stub, polyglot_run):
    blob = json.loads(_result(stub, polyglot_run, "blob").result.data)
    assert len(blob["stdout"]) == MIB and "dropped_bytes" not in blob  # 1 MiB under a 2 MiB limit
    tail = json.loads(_result(stub, polyglot_run, "tail").result.data)
    assert tail["stdout"].encode() == _hex_text(24576)[-MIB:]  # the last 1 MiB of 1.5 MiB
    assert tail["dropped_bytes"]["stdout"] == MIB // 2
    too_big = MAX_COMMAND_STDOUT_LIMIT_BYTES + 1
    spec = pb.PipelineSpec(name="too-big", tasks=[_command("t", ["true"], stdout_limit_bytes=too_big)])
    code, details = _code(lambda: stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stdout_limit_bytes" in details and str(too_big) in details
    assert str(MAX_COMMAND_STDOUT_LIMIT_BYTES) in details
    with pytest.raises(PipelineValidationError, match="stdout_limit_bytes must be an int from 0 to 67108864"):
        Task.command("t", ["true"], stdout_limit_bytes=too_big)


def test_the_python_sdk_reads_a_5_mib_result_through_get_artifact(cluster, stub):
    text = _hex_text(81920)  # 5 MiB: above the SDK's 4 MiB inline limit
    p = Pipeline("sdk-5mib")
    p.add_task(Task.command("big", [sys.executable, "-c", _hex_py(81920)], stdout_limit_bytes=6 * MIB))
    with PipelineManager(coordinator=cluster.address) as pm:
        result = pm.execute_pipeline(p, monitor=False)
        assert result.outputs["big"]["stdout"].encode() == text
        assert pm.client.task_result(result.run_id, "big").value["stdout"].encode() == text
        assert pm.client.get_run(result.run_id, include_results=True).summary.state == "SUCCEEDED"
    # It came by reference: what the SDK asks for leaves it there.
    reply = _result(stub, result.run_id, "big", inline_max_bytes=4 * MIB, accept_compression=["zstd"])
    assert reply.result.artifact_ref and reply.result.size_bytes > 4 * MIB


def test_the_python_sdk_shows_a_failed_commands_result(cluster, stub, polyglot_run):
    with Client(cluster.address) as client:
        failed = client.task_result(polyglot_run, "fail")
    assert failed.state == "FAILED" and failed.error_type == "TASK_FAILURE"
    assert failed.value == {"stdout": "partial output\n", "stderr": "disk full\n", "exit_code": 3}


def test_the_recorded_hash_and_a_failed_commands_result_survive_a_coordinator_restart(tmp_path):
    with Cluster(tmp_path, workers=1, slots=2) as cluster, grpc.insecure_channel(cluster.address) as channel:
        stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
        run_id = _run(stub, "restart", [_big("big"), _command("fail", ["sh", "-c", "echo 'disk full' >&2; exit 3"])])
        before = _result(stub, run_id, "big", inline_max_bytes=1).result
        cluster.restart_coordinator()  # the results come back from SQLite now
        after = _result(stub, run_id, "big", inline_max_bytes=1).result
        assert after.artifact_sha256 == before.artifact_sha256 and after.artifact_ref == before.artifact_ref
        assert _read(stub, run_id, "big", after.artifact_ref)[0].sha256  # still served, still checked
        failed = _result(stub, run_id, "fail")
        assert failed.error.exit_code == 3 and json.loads(failed.result.data)["stderr"] == "disk full\n"


def test_a_run_in_another_namespace_is_permission_denied_never_the_bytes(tmp_path):
    setup = SecureSetup(tmp_path, principals={**SecureSetup.DEFAULT_PRINCIPALS, "teama": ["submitter"],
                                              "teamb": ["submitter"]},
                        namespaces={"teama": ["team-a"], "teamb": ["team-b"]})  # fmt: skip
    with Cluster(tmp_path, workers=1, slots=2, security=setup) as cluster:
        with setup.channel(cluster.address, token=setup.tokens["teama"]) as channel:
            a = pipeline_pb2_grpc.PipelineServiceStub(channel)
            request = pipeline_pb2.SubmitPipelineRequest(pipeline=pb.PipelineSpec(
                name="secret", namespace="team-a", tasks=[_big("big")]))
            run_id = a.SubmitPipeline(request, timeout=10).run_id
            eventually(lambda: a.GetRun(pipeline_pb2.GetRunRequest(run_id=run_id), timeout=5).summary.state
                       == pb.RUN_SUCCEEDED, timeout_s=30, message="team-a's run done")  # fmt: skip
            ref = _result(a, run_id, "big", inline_max_bytes=1).result.artifact_ref
            assert ref and _read(a, run_id, "big", ref)[0].total_bytes > MIB
        with setup.channel(cluster.address, token=setup.tokens["teamb"]) as channel:
            b = pipeline_pb2_grpc.PipelineServiceStub(channel)
            code, details = _code(lambda: _read(b, run_id, "big", ref))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "namespace 'team-a'" in details


def test_a_sealed_artifact_is_served_decrypted_and_checked(tmp_path):
    from xpipe.security._keys import create_keyring

    key = tmp_path / "keyring.json"
    create_keyring(key)
    flag = ("--encryption-key-file", str(key))
    with Cluster(tmp_path, workers=1, slots=1, coordinator_args=flag, worker_args=flag) as cluster:
        with grpc.insecure_channel(cluster.address) as channel:
            sealed = pipeline_pb2_grpc.PipelineServiceStub(channel)
            run_id = _run(sealed, "sealed", [_big("big")])
            ref = _result(sealed, run_id, "big", inline_max_bytes=1).result.artifact_ref
            assert ref.endswith(".xpe")
            on_disk = Path(ref.removeprefix("file://")).read_bytes()
            assert _hex_text(100) not in on_disk  # sealed: no plain text at rest
            first, _, data = _read(sealed, run_id, "big", ref)
    assert first.compression == "identity" and first.sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads(data)["stdout"].encode() == _hex_text(16384)
