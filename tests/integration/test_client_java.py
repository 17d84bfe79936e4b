"""The Java client example (examples/clients/java) against a real coordinator and workers.

The example uses only the protos and grpc-java, so this shows that a JVM service can submit
command pipelines, follow them, and read a 1 MiB result (GetArtifact), a 20 KiB JSON result
without zstd, and a failed command's exit code and stderr. The contract it follows is in
examples/clients/java/README.md.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, Cluster
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc

_EXAMPLE = REPO_ROOT / "examples" / "clients" / "java"
_JAR = _EXAMPLE / "target" / "xpipe-client-java.jar"
# A cold build downloads grpc-java, protoc and Maven's plugins (minutes); a warm one is instant.
_BUILD_TIMEOUT_S = 900
_RUN_TIMEOUT_S = 30

# The same programs the client submits (examples/clients/java), run here to know the answer.
_BLOB_PY = (
    "import hashlib,sys; b=b''.join(hashlib.sha256(str(i).encode()).hexdigest().encode()"
    " for i in range(16384)); sys.stdout.write(b.decode())"
)
_JSON_PY = (
    'import json; print(json.dumps({"rows": [{"i": i, "name": "row-%05d" % i}'
    " for i in range(640)]}))"
)

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


def _stdout_of(program: str) -> bytes:
    return subprocess.run([sys.executable, "-c", program], capture_output=True, check=True, timeout=30).stdout


def test_java_client_reads_every_result_of_a_failed_run(client_jar: Path, cluster: Cluster) -> None:
    run = subprocess.run(
        ["java", "-jar", str(client_jar), "--target", cluster.address],
        capture_output=True,
        text=True,
        timeout=_RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, f"client exited {run.returncode}:\n{run.stderr}\n{run.stdout}"
    lines = run.stdout.splitlines()

    # WatchRun showed each task reach its end state.
    for event in ("event greet SUCCEEDED", "event blob SUCCEEDED", "event json20k SUCCEEDED", "event fail FAILED"):
        assert event in lines, f"{event!r} not in the client's output:\n{run.stdout}"

    blob = _stdout_of(_BLOB_PY)
    assert len(blob) == 1_048_576
    json20k = _stdout_of(_JSON_PY)
    expected = [
        "task greet SUCCEEDED stdout=hello from java",
        f"task blob SUCCEEDED artifact=yes bytes=1048576 sha256={hashlib.sha256(blob).hexdigest()}",
        f"task json20k SUCCEEDED zstd=no rows=640 bytes={len(json20k)}",
        "task fail FAILED exit_code=3 stderr=disk full stdout=partial output",
    ]
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
