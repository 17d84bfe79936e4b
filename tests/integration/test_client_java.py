"""The Java client example (examples/clients/java) against a real coordinator and workers.

The example uses only the protos and grpc-java, so this shows that a JVM service can submit
command pipelines, follow them, and read a 1 MiB result (GetArtifact), a 20 KiB JSON result
without zstd, and a failed command's exit code and stderr. The contract it follows is in
examples/clients/java/README.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, Cluster, free_port
from tests.helpers_clients import FINAL_EVENTS, expected_task_lines
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc

_EXAMPLE = REPO_ROOT / "examples" / "clients" / "java"
_JAR = _EXAMPLE / "target" / "xpipe-client-java.jar"
# A cold build downloads grpc-java, protoc and Maven's plugins (minutes); a warm one is instant.
_BUILD_TIMEOUT_S = 900
_RUN_TIMEOUT_S = 30

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None or shutil.which("mvn") is None,
    reason="the Java client example needs java (17+) and mvn on PATH",
)


@pytest.fixture(scope="module")
def client_jar() -> Iterator[Path]:
    """The example's runnable jar, built (or found up to date) by its own build.sh."""
    build = subprocess.run(
        ["bash", str(_EXAMPLE / "build.sh")],
        capture_output=True,
        text=True,
        timeout=_BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"build.sh failed:\n{build.stdout}\n{build.stderr}"
    assert _JAR.is_file(), f"build.sh did not produce {_JAR}"
    yield _JAR


def _run_client(jar: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["java", "-jar", str(jar), *args], capture_output=True, text=True, timeout=_RUN_TIMEOUT_S
    )


def test_java_client_reads_every_result_of_a_failed_run(client_jar: Path, cluster: Cluster) -> None:
    run = _run_client(client_jar, "--target", cluster.address)
    assert run.returncode == 0, f"client exited {run.returncode}:\n{run.stderr}\n{run.stdout}"
    lines = run.stdout.splitlines()

    # WatchRun showed each task reach its end state.
    for event in FINAL_EVENTS:
        assert event in lines, f"{event!r} not in the client's output:\n{run.stdout}"

    expected = expected_task_lines("java")
    reports = [line for line in lines if line.startswith(("task ", "run "))]
    assert reports[:4] == expected, run.stdout
    match = re.fullmatch(r"run (\S+) RUN_FAILED", reports[4]) if len(reports) == 5 else None
    assert match, run.stdout

    # The coordinator agrees: the run the client named is its pipeline, and it failed.
    with cluster.channel() as channel:
        info = pipeline_pb2_grpc.PipelineServiceStub(channel).GetRun(
            pipeline_pb2.GetRunRequest(run_id=match.group(1)), timeout=10
        )
    assert info.summary.pipeline == "polyglot-java"
    assert info.summary.state == common_pb2.RUN_FAILED


def test_java_client_names_each_mismatch_and_exits_1(client_jar: Path, tmp_path: Path) -> None:
    # Workers that refuse commands: every task fails, so no result is what the client expects.
    with Cluster(tmp_path, workers=1, worker_args=("--allow-code", "import")) as cluster:
        run = _run_client(client_jar, "--target", cluster.address)
    assert run.returncode == 1, run.stdout
    problems = run.stderr.splitlines()
    first = "xpipe-client-java: check failed: greet: state FAILED, expected SUCCEEDED"
    assert problems[0].startswith(first), run.stderr
    assert "refuses command code" in problems[0]
    assert "fail: state UPSTREAM_FAILED, expected FAILED" in run.stderr
    assert re.search(r"^run \S+ RUN_FAILED$", run.stdout, re.MULTILINE), run.stdout


def test_java_client_reports_a_failed_rpc_and_a_bad_argument(client_jar: Path) -> None:
    # Nothing listens on the port: the channel fails, and the client names the RPC and status.
    run = _run_client(client_jar, "--target", f"127.0.0.1:{free_port()}")
    assert run.returncode == 1
    assert "xpipe-client-java: WatchRun failed: UNAVAILABLE" in run.stderr, run.stderr

    run = _run_client(client_jar, "--target")
    assert run.returncode == 1
    assert "--target needs a value (HOST:PORT)" in run.stderr, run.stderr
