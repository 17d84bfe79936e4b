"""Tasks stay inside what they asked for, on a real coordinator and real workers.

Memory: a task over its declared memory fails RESOURCE_EXHAUSTION and the worker carries
on. Output: 100 MB of stdout does not reach the worker's log. Artifact references: a
hostile one in a task's arguments is refused, and the client never sees the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests import helpers_limits as hl
from tests.harness import Cluster, child_env, eventually
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc

MIB = 2**20


def test_memory_hog_fails_with_resource_exhaustion_and_the_worker_carries_on(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=1) as c:
        (worker,) = c.list_workers()
        assert worker.memory_enforcement == "rlimit"
        assert "task memory limits: enforced by rlimit" in c.workers["w0"].log_text()
        shown = subprocess.run(
            [sys.executable, "-c", "import sys; from xpipe._cli import main; sys.exit(main())",
             "workers", "--json", "--coordinator", c.address],
            capture_output=True, text=True, env=child_env(), timeout=60, check=True,
        ).stdout  # fmt: skip
        assert json.loads(shown)[0]["memory_enforcement"] == "rlimit"
        with PipelineManager(coordinator=c.address) as pm:
            hog = Pipeline("hog")
            hog.add_task(Task("hog", hl.allocate, args=(1024 * MIB,), resource_requirements={"memory_mb": 100}))
            with pytest.raises(PipelineExecutionError) as caught:
                pm.execute_pipeline(hog, monitor=False, timeout_s=60)
            assert caught.value.error_type == "RESOURCE_EXHAUSTION" and caught.value.task == "hog"
            assert "memory limit of 100 MiB" in str(caught.value)
            tasks = caught.value.result.tasks
            assert tasks["hog"].attempts == 1  # not retried: the same limit would refuse it again
            # The worker is still connected, and runs the next tasks: one under its limit.
            (worker,) = c.list_workers()
            assert worker.state == "ready"
            fits = Pipeline("fits")
            fits.add_task(Task("fits", hl.allocate, args=(32 * MIB,), resource_requirements={"memory_mb": 100}))
            assert pm.execute_pipeline(fits, monitor=False, timeout_s=60).outputs["fits"] == 32 * MIB


def test_100_mb_of_stdout_stays_out_of_the_worker_log(tmp_path: Path) -> None:
    with Cluster(tmp_path, workers=1, slots=1) as c:
        log_before = c.workers["w0"].log_path.stat().st_size
        with PipelineManager(coordinator=c.address) as pm:
            loud = Pipeline("loud")
            loud.add_task(Task("loud", hl.print_lots, args=(100 * 10**6, "END-OF-OUTPUT")))
            assert pm.execute_pipeline(loud, monitor=False, timeout_s=120).outputs["loud"] == 100 * 10**6
            after = Pipeline("after")
            after.add_task(Task("after", hl.allocate, args=(16 * MIB,)))
            assert pm.execute_pipeline(after, monitor=False, timeout_s=60).outputs["after"] == 16 * MIB
        log_text = c.workers["w0"].log_text()
        assert c.workers["w0"].log_path.stat().st_size - log_before < 16 * 1024, log_text[-2000:]
        assert "END-OF-OUTPUT" not in log_text and "yyyy" not in log_text
        (worker,) = c.list_workers()
        assert worker.state == "ready" and c.workers["w0"].alive()


@pytest.mark.parametrize("target", ["secret", "/etc/passwd"])
def test_hostile_artifact_reference_is_refused_without_reading(tmp_path: Path, target: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-contents\n")
    with Cluster(tmp_path, workers=1, slots=1) as c:
        artifacts = c.data_dir / "artifacts"
        ref = f"file://{artifacts}/../../secret" if target == "secret" else "file:///etc/passwd"
        spec = common_pb2.PipelineSpec(name="hostile")
        task = spec.tasks.add(name="steal")
        task.python.import_path = "tests.helpers_tasks:echo"
        task.args.CopyFrom(common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, artifact_ref=ref, size_bytes=10))
        with grpc.insecure_channel(c.address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            run_id = stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec), timeout=30).run_id
            events = list(stub.WatchRun(pipeline_pb2.WatchRunRequest(run_id=run_id), timeout=60))
            assert events[-1].summary.state == common_pb2.RUN_FAILED
            info = stub.GetRun(pipeline_pb2.GetRunRequest(run_id=run_id, include_results=True), timeout=30)
        (steal,) = info.tasks
        error = steal.error
        assert error.error_type == "SERIALIZATION"
        assert "refusing artifact reference" in error.message and ref in error.message
        assert str(artifacts) in error.message  # names the directory it must stay inside
        everything = info.SerializeToString()
        assert b"TOP-SECRET" not in everything and b"root:x:0:0" not in everything
        # The worker read nothing and carries on.
        with PipelineManager(coordinator=c.address) as pm:
            ok = Pipeline("ok")
            ok.add_task(Task("ok", hl.allocate, args=(16 * MIB,)))
            assert pm.execute_pipeline(ok, monitor=False, timeout_s=60).succeeded
