"""Big results: written once by the executor, served from memory to a local consumer, read
from the artifact directory by any other, and durable once reported.

Real coordinator and workers on loopback; workers ``wa`` and ``wb`` (one slot each) carry
labels so a test can pin a task to one of them.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from xpipe import Pipeline, PipelineManager, Task

from tests import helpers_payload as hp
from tests.harness import Cluster, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, workers=0, slots=1, imports=("tests.helpers_tasks", "tests.helpers_payload"))
    c.start()
    try:
        c.add_worker("wa", extra_args=("--labels", "node=a"))
        c.add_worker("wb", extra_args=("--labels", "node=b"))
        yield c
    finally:
        c.stop()


def _artifacts(c: Cluster) -> Path:
    return c.data_dir / "artifacts"


def _finish(pm: PipelineManager, p: Pipeline, timeout_s: float = 60.0) -> str:
    """Submit and follow the summary only (results would make the coordinator read artifacts)."""
    run_id = pm.submit(p)
    for event in pm.client.watch(run_id, summary_only=True):
        if event.summary.state.lower() in ("succeeded", "failed", "cancelled"):
            break
    return run_id


def _worker_of(pm: PipelineManager, run_id: str, task: str) -> str:
    return pm.client.get_run(run_id).task(task).worker


def test_a_consumer_on_the_producers_worker_takes_the_local_copy(two):
    with PipelineManager(coordinator=two.address) as pm:
        p = Pipeline("local")
        make = Task("make", hp.big, args=(1,), labels={"node": "a"})
        # On the other worker: delete make's file once written, so only wa's copy is left.
        gone = Task(
            "gone", hp.remove_artifact, args=(str(_artifacts(two) / "*" / "make.1"),), labels={"node": "b"}
        )
        use = Task("use", hp.digest, depends_on=[make, gone])  # not pinned: placement chooses
        p.add_tasks([make, gone, use])
        run_id = _finish(pm, p)
        result = pm.client.task_result(run_id, "use")
        assert result.state == "SUCCEEDED", result.error
        assert result.value == hashlib.sha256(hp.big(1)).hexdigest()
        # Locality put the consumer where the bytes were; that worker's executor still held
        # them, and no file was read (there was none left).
        assert _worker_of(pm, run_id, "use") == "wa"
        assert not list(_artifacts(two).glob(f"{run_id}/make.*"))


def test_a_consumer_on_another_worker_reads_the_artifact_directory(two):
    with PipelineManager(coordinator=two.address) as pm:
        p = Pipeline("shared")
        make = Task("make", hp.big, args=(2,), labels={"node": "a"})
        use = Task("use", hp.digest, depends_on=[make], labels={"node": "b"})
        p.add_tasks([make, use])
        run_id = _finish(pm, p)
        assert pm.client.task_result(run_id, "use").value == hashlib.sha256(hp.big(2)).hexdigest()
        # Written once, by the producer: one file, no temporary left behind.
        assert sorted(f.name for f in (_artifacts(two) / run_id).iterdir()) == ["make.1"]

        # Without the file, the other worker has no copy: the error names the artifact.
        p = Pipeline("shared-gone")
        make = Task("make3", hp.big, args=(3,), labels={"node": "a"})
        gone = Task(
            "gone", hp.remove_artifact, args=(str(_artifacts(two) / "*" / "make3.1"),), labels={"node": "b"}
        )
        use = Task("use", hp.digest, depends_on=[make, gone], labels={"node": "b"}, max_retries=0)
        p.add_tasks([make, gone, use])
        run_id = _finish(pm, p)
        result = pm.client.task_result(run_id, "use")
        assert result.state == "FAILED"
        assert result.error_type == "SERIALIZATION"
        assert f"{run_id}/make3.1" in result.error and "artifact store" in result.error


def test_a_big_result_outlives_the_worker_that_reported_it(two, tmp_path):
    go = tmp_path / "worker-a-killed"
    with PipelineManager(coordinator=two.address) as pm:
        p = Pipeline("durable")
        make = Task("make", hp.big, args=(4,), labels={"node": "a"})
        gate = Task("gate", hp.wait_for_file, args=(str(go),), labels={"node": "b"})
        use = Task("use", hp.digest, depends_on=[make, gate])
        p.add_tasks([make, gate, use])
        run_id = pm.submit(p)
        eventually(lambda: pm.client.get_run(run_id).task("make").state == "SUCCEEDED", timeout_s=30)
        two.workers["wa"].stop_signal(signal.SIGKILL, group=True)  # with its executor and its copy
        two.workers["wa"].wait(10)
        # Once the coordinator has seen wa go, nothing more can be placed there.
        eventually(lambda: {w.name: w.state for w in two.list_workers()}["wa"] != "ready", timeout_s=15)
        go.touch()
        eventually(lambda: pm.client.task_result(run_id, "use").state == "SUCCEEDED", timeout_s=30)
        assert pm.client.task_result(run_id, "use").value == hashlib.sha256(hp.big(4)).hexdigest()
        info = pm.client.get_run(run_id)
        # The reported result was kept, not recomputed: the consumer read wa's file from wb.
        assert info.task("make").attempts == 1
        assert info.task("use").worker == "wb"
