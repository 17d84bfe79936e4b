"""The Node client example (examples/clients/node) against a real coordinator and workers.

Issue 18's "done means": a Node client with no native modules, built only from
``proto/xpipe/v1``, gets a 1 MiB result (through GetArtifact), a 20 KiB JSON result without
zstd, and a failed command's exit code and stderr. The test runs the real program (``node``,
``@grpc/grpc-js``) and checks what it prints against what it must have received; the
program checks the same things itself and exits 1 on a mismatch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.harness import REPO_ROOT, Cluster, free_port
from tests.helpers_clients import BLOB_PY, JSON_PY, expected_task_lines
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc

EXAMPLE_DIR = REPO_ROOT / "examples" / "clients" / "node"
CLIENT = EXAMPLE_DIR / "client.mjs"
BUILD_TIMEOUT_S = 300.0  # a cold npm install; a warm build.sh returns in about a second
CLIENT_TIMEOUT_S = 30.0



@pytest.fixture(scope="module")
def node_client() -> Iterator[Path]:
    """The built example: build.sh run once per module (a no-op when already built)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the Node client example needs {' and '.join(missing)} on PATH")
    build = subprocess.run(
        ["bash", str(EXAMPLE_DIR / "build.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"build.sh failed ({build.returncode}):\n{build.stdout}\n{build.stderr}"
    assert (EXAMPLE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "build.sh did not install @grpc/grpc-js"
    )
    yield CLIENT


def _run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(CLIENT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S + 5,
        cwd=EXAMPLE_DIR,
    )


@functools.cache
def _python_stdout(code: str) -> str:
    """What the contract's task prints, run here once (the test's own expectation)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_node_client_reads_every_result_without_native_modules(node_client, tmp_path):
    with Cluster(tmp_path, workers=2) as cluster:
        done = _run_client("--target", cluster.address, "--timeout-s", str(CLIENT_TIMEOUT_S))
    assert done.returncode == 0, (
        f"client exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    lines = done.stdout.splitlines()

    events = [line for line in lines if line.startswith("event ")]
    for task, state in (
        ("greet", "SUCCEEDED"),
        ("blob", "SUCCEEDED"),
        ("json20k", "SUCCEEDED"),
        ("fail", "FAILED"),
    ):
        assert f"event {task} {state}" in events, f"no state change to {state} for {task}: {events}"
    assert events.index("event greet SUCCEEDED") < events.index(
        "event blob SUCCEEDED"
    )  # blob depends on greet

    tasks = [line for line in lines if line.startswith("task ")]
    assert tasks == expected_task_lines("node")
    (run_line,) = [line for line in lines if line.startswith("run ")]
    _, run_id, state = run_line.split(" ")
    assert run_id and state == "RUN_FAILED"
    assert lines[-1] == run_line and done.stderr == ""


def test_node_client_dependencies_have_no_native_addon(node_client):
    # npm ls exits non-zero when node_modules does not match package-lock.json.
    listed = subprocess.run(
        ["npm", "ls", "--all", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLE_DIR,
    )
    assert listed.returncode == 0, listed.stderr
    tree = json.loads(listed.stdout)["dependencies"]
    assert set(tree) == {"@grpc/grpc-js", "@grpc/proto-loader"}
    modules = EXAMPLE_DIR / "node_modules"
    native = [
        str(p.relative_to(modules))
        for p in modules.rglob("*")
        if p.name == "binding.gyp" or p.suffix == ".node"
    ]
    assert native == [], f"native addon files under node_modules: {native}"
    gyp = [
        str(manifest.parent.relative_to(modules))
        for manifest in modules.rglob("package.json")
        if json.loads(manifest.read_text()).get("gypfile")
    ]
    assert gyp == [], f"packages that build a native addon: {gyp}"


def test_node_client_names_a_failed_rpc_and_bad_arguments(node_client):
    # Nothing listens there: the first RPC fails within the client's deadline.
    down = _run_client("--target", f"127.0.0.1:{free_port()}", "--timeout-s", "3")
    assert down.returncode == 1
    assert down.stderr.startswith("error: WatchRun failed: UNAVAILABLE: "), down.stderr

    bad_timeout = _run_client("--timeout-s", "soon")
    assert (bad_timeout.returncode, bad_timeout.stderr) == (
        1,
        "error: --timeout-s must be a positive number of seconds, got soon\n",
    )

    no_protos = _run_client("--proto-dir", "/nonexistent/protos", "--timeout-s", "3")
    assert no_protos.returncode == 1
    assert no_protos.stderr.startswith(
        "error: cannot load xpipe/v1/pipeline.proto from /nonexistent/protos: "
    )


# ---------------------------------------------------------------- a server that lies
#
# The real coordinator refuses to serve bytes that fail their hash (DATA_LOSS) and never sends
# zstd to a client that did not list it, so it cannot drive the client's own checks. This
# PipelineService answers like the real one for the contract's run, except for one lie, so
# each check is seen to fire (and, with no lie, the client is seen to accept honest answers).


def _json_payload(value: dict, **fields) -> common_pb2.Payload:
    data = json.dumps(value).encode()
    return common_pb2.Payload(codec=common_pb2.CODEC_JSON, data=data, size_bytes=len(data), **fields)


class _LyingPipelineService(pipeline_pb2_grpc.PipelineServiceServicer):
    """Serves the contract's finished run (run id ``r-lies``) from memory, with ``lie`` in it."""

    RUN_ID = "r-lies"

    def __init__(self, lie: str | None, blob: str) -> None:
        self.lie = lie
        self.blob_json = json.dumps({"stdout": blob, "stderr": "", "exit_code": 0}).encode()

    def WatchRun(self, request, context):
        states = {"greet": "SUCCEEDED", "blob": "SUCCEEDED", "json20k": "SUCCEEDED", "fail": "FAILED"}
        yield pipeline_pb2.RunEvent(
            summary=pipeline_pb2.RunSummary(
                run_id=self.RUN_ID, pipeline=request.submit.pipeline.name, state=common_pb2.RUN_FAILED
            ),
            changed=[
                pipeline_pb2.TaskInfo(name=name, state=common_pb2.TaskState.Value(state))
                for name, state in states.items()
            ],
        )

    def GetTaskResult(self, request, context):
        if request.task == "greet":
            return pipeline_pb2.TaskResult(
                state=common_pb2.SUCCEEDED,
                result=_json_payload({"stdout": "hello from node\n", "stderr": "", "exit_code": 0}),
            )
        if request.task == "blob":
            return pipeline_pb2.TaskResult(
                state=common_pb2.SUCCEEDED,
                result=common_pb2.Payload(
                    codec=common_pb2.CODEC_JSON, artifact_ref="sha256-blob", size_bytes=len(self.blob_json)
                ),
            )
        if request.task == "json20k":
            stdout = "rows: 640\n" if self.lie == "not json" else _python_stdout(JSON_PY)
            payload = _json_payload({"stdout": stdout, "stderr": "", "exit_code": 0}, zstd=self.lie == "zstd")
            return pipeline_pb2.TaskResult(state=common_pb2.SUCCEEDED, result=payload)
        error = common_pb2.TaskError(message="command exited with code 3: disk full")
        if self.lie != "no exit_code":
            error.exit_code = 3
        payload = _json_payload({"stdout": "partial output\n", "stderr": "disk full\n", "exit_code": 3})
        return pipeline_pb2.TaskResult(state=common_pb2.FAILED, result=payload, error=error)

    def GetArtifact(self, request, context):
        if self.lie == "data loss":
            context.abort(grpc.StatusCode.DATA_LOSS, "artifact sha256-blob does not match its hash")
        data = self.blob_json
        sha256 = hashlib.sha256(b"not these bytes" if self.lie == "sha256" else data).hexdigest()
        half = len(data) // 2
        yield pipeline_pb2.ArtifactChunk(
            data=data[:half], offset=0, total_bytes=len(data), compression="identity",
            codec=common_pb2.CODEC_JSON, size_bytes=len(data), sha256=sha256,
        )  # fmt: skip
        if self.lie == "gap":
            half += 10
        yield pipeline_pb2.ArtifactChunk(data=data[half:], offset=half)


@pytest.mark.parametrize(
    ("lie", "complaint"),
    [
        (None, ""),
        ("sha256", "error: GetArtifact(blob): sha256 of the bytes is "),
        ("gap", "error: GetArtifact(blob): chunk at offset "),
        (
            "data loss",
            "error: GetArtifact(blob) failed: DATA_LOSS: artifact sha256-blob does not match its hash",
        ),
        (
            "zstd",
            "error: task json20k: result came zstd-compressed although this client does not accept zstd",
        ),
        ("no exit_code", "error: task fail: TaskError.exit_code is none, expected 3"),
        ("not json", "error: task json20k: stdout is not JSON: "),
    ],
    ids=["honest", "sha256", "gap", "data-loss", "zstd", "no-exit-code", "not-json"],
)
def test_node_client_catches_a_server_that_lies(node_client, lie, complaint):
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(
        _LyingPipelineService(lie, _python_stdout(BLOB_PY)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        done = _run_client("--target", f"127.0.0.1:{port}", "--timeout-s", "10")
    finally:
        server.stop(grace=None)
    if lie is None:
        assert (done.returncode, done.stderr) == (0, ""), done.stdout
        assert done.stdout.splitlines()[-1] == "run r-lies RUN_FAILED"
    else:
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith(complaint), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr  # only the lie is reported
