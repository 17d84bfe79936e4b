"""The Go client example (examples/clients/go) against a real coordinator and workers.

The example uses only proto/xpipe/v1 and google.golang.org/grpc: it submits four command
tasks, follows them with WatchRun, reads a 1 MiB result through GetArtifact, a 20 KiB JSON
result without zstd, and a failed command's exit code and stderr (docs/api.md). It checks
what it read itself and exits 1 naming a mismatch; this test checks its output as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, Cluster, free_port
from tests.helpers_clients import FINAL_EVENTS, expected_task_lines

GO_DIR = REPO_ROOT / "examples" / "clients" / "go"
PROGRAM = GO_DIR / "bin" / "polyglot-go"
RUN_TIMEOUT_S = 30
# A cold build downloads modules and compiles grpc-go (minutes on 2 busy cores); once built,
# build.sh returns at once.
BUILD_TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="go is not on PATH: cannot build the Go client example"
)


@pytest.fixture(scope="module")
def program() -> str:
    """The built example (build.sh is idempotent: fast when nothing changed)."""
    env = {**os.environ, "XPIPE_PYTHON": sys.executable}  # its protoc is this venv's grpc_tools
    build = subprocess.run(
        ["bash", str(GO_DIR / "build.sh")], env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert build.returncode == 0, f"build.sh failed:\n{build.stdout}\n{build.stderr}"
    assert PROGRAM.is_file(), build.stdout
    return str(PROGRAM)


def _run(program: str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, "--target", target, *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def test_go_client_submits_watches_and_reads_every_result(tmp_path, program):
    with Cluster(tmp_path, workers=2) as cluster:
        done = _run(program, cluster.address)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.splitlines()

    events = [line for line in lines if line.startswith("event ")]
    for final in FINAL_EVENTS:
        assert final in events, lines
    assert len(events) == len(set(events)), "an event line repeats a state the task already had"

    results = [line for line in lines if not line.startswith("event ")]
    run_id = results[-1].split()[1]
    assert results == [*expected_task_lines("go"), f"run {run_id} RUN_FAILED"]
    assert lines.index(events[-1]) < lines.index(results[0]), "results are read after the run ended"


def test_go_client_names_the_status_of_a_failed_rpc(program):
    # Nothing listens on the port: the first RPC fails, and the program says which and why.
    done = _run(program, f"127.0.0.1:{free_port()}", "--timeout", "10s")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "SubmitPipeline failed: Unavailable:" in done.stderr, done.stderr


def _copy_of_example(tmp_path) -> Path:
    """The example's sources and the protos in a repo-shaped folder, so a build can fail there."""
    example = tmp_path / "repo" / "examples" / "clients" / "go"
    example.mkdir(parents=True)
    for source in ("build.sh", "go.mod", "go.sum", *(p.name for p in GO_DIR.glob("*.go"))):
        shutil.copy(GO_DIR / source, example / source)
    shutil.copytree(REPO_ROOT / "proto", tmp_path / "repo" / "proto")
    return example


def test_build_without_grpc_tools_says_to_run_make_install(tmp_path, program):
    # `program` first: the protoc plugins are cached, so the build gets as far as protoc.
    example = _copy_of_example(tmp_path)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    done = subprocess.run(
        ["bash", str(example / "build.sh")],
        env={**os.environ, "XPIPE_PYTHON": str(bare / "bin" / "python")},
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "has no grpc_tools (grpcio-tools); run 'make install' first" in done.stderr
    assert not (example / "bin" / "polyglot-go").exists()


def test_build_without_go_skips_with_a_reason(tmp_path):
    go_dir = str(Path(shutil.which("go")).resolve().parent)
    if shutil.which("dirname", path=go_dir) or shutil.which("sha256sum", path=go_dir):
        pytest.skip(f"go lives beside the shell tools in {go_dir}: cannot hide it alone")
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not shutil.which("go", path=d))
    example = _copy_of_example(tmp_path)
    done = subprocess.run(
        [shutil.which("bash"), str(example / "build.sh")],
        env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # make install goes on with the other examples
    assert "go client: go is not on PATH; skipping" in done.stderr
    assert not (example / "bin").exists()
