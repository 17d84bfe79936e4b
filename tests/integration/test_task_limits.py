"""Tasks stay inside what they asked for, on a real coordinator and real workers.

Memory: a task over its declared memory fails RESOURCE_EXHAUSTION and the worker carries
on. Output: 100 MB of stdout does not reach the worker's log. Artifact references: a
hostile one in a task's arguments is refused at submit, and one in a result a lying worker
reports is refused by the worker that would read it; the client never sees the file.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests import helpers_limits as hl
from tests.harness import Cluster, child_env, eventually
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task
from xpipe._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc, worker_pb2, worker_pb2_grpc

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
def test_hostile_artifact_reference_in_arguments_is_refused_at_submit(tmp_path: Path, target: str) -> None:
    """Arguments travel inline: the coordinator refuses any reference in them, reading nothing."""
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
            with pytest.raises(grpc.RpcError) as caught:
                stub.SubmitPipeline(pipeline_pb2.SubmitPipelineRequest(pipeline=spec), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "args.artifact_ref" in caught.value.details()
        assert "TOP-SECRET" not in caught.value.details() and "root:x:0:0" not in caught.value.details()


def _lying_worker(address: str, ref: str) -> tuple[grpc.Channel, object]:
    """A raw worker stream that serves handler "liar" and answers with a hostile result reference."""
    channel = grpc.insecure_channel(address)
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    outbox: queue.Queue = queue.Queue()
    outbox.put(worker_pb2.WorkerMessage(register=worker_pb2.Register(
        worker_id="liar", name="liar", host="localhost", slots=1, handlers=["liar"], labels={"kind": "liar"},
        resources=common_pb2.Resources(cpu_cores=2, memory_bytes=2**30))))  # fmt: skip

    def requests():
        while (message := outbox.get()) is not None:
            yield message

    stream = stub.Connect(requests())

    def answer():
        with contextlib.suppress(grpc.RpcError):  # the stream ends when the test closes the channel
            _answer()

    def _answer():
        for message in stream:
            if message.WhichOneof("body") != "assignments":
                continue
            for a in message.assignments.assignments:
                result = common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, artifact_ref=ref, size_bytes=10)
                now = time.time()
                event = worker_pb2.TaskEvent(attempt=a.attempt, at=now, started_at=now,
                                             succeeded=worker_pb2.Succeeded(result=result))  # fmt: skip
                outbox.put(worker_pb2.WorkerMessage(events=worker_pb2.TaskEventBatch(events=[event])))

    threading.Thread(target=answer, daemon=True).start()
    return channel, outbox


def test_hostile_result_reference_from_a_lying_worker_is_not_read_by_the_next_worker(tmp_path: Path) -> None:
    """Defence in depth: a worker reads only references inside its artifact directory.

    A lying worker reports a result whose reference points at a file outside the artifact
    directory; the real worker that runs the downstream task refuses it without reading,
    and the client never sees the file.
    """
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-contents\n")
    with Cluster(tmp_path, workers=1, slots=1, worker_args=("--labels", "kind=real")) as c:
        ref = f"file://{c.data_dir / 'artifacts'}/../../secret"
        channel, outbox = _lying_worker(c.address, ref)
        try:
            eventually(lambda: "liar" in {w.name for w in c.list_workers()}, timeout_s=10, message="liar never registered")
            p = Pipeline("lied-to")
            lie = Task.handler("lie", "liar")
            p.add_tasks([lie, Task("use", hl.allocate, depends_on=[lie], labels={"kind": "real"})])
            with PipelineManager(coordinator=c.address) as pm:
                run_id = pm.submit(p)
                *_, last = pm.client._watch_pb(run_id, summary_only=True, timeout_s=60)  # the wire types: raw
                assert last.summary.state == common_pb2.RUN_FAILED
                # Results stay raw here: the SDK itself refuses to decode the lie, as it should.
                info = pm.client._get_run_pb(run_id, include_results=True)
                tasks = {t.name: t for t in info.tasks}
                assert tasks["lie"].state == common_pb2.SUCCEEDED and tasks["lie"].result.artifact_ref == ref
                use = tasks["use"]
                assert use.state == common_pb2.FAILED and use.worker == "w0"
                assert use.error.error_type == "SERIALIZATION", use.error
                assert "refusing artifact reference" in use.error.message
                assert b"TOP-SECRET" not in info.SerializeToString()
                ok = Pipeline("ok")
                ok.add_task(Task("ok", hl.allocate, args=(16 * MIB,), labels={"kind": "real"}))
                assert pm.execute_pipeline(ok, monitor=False, timeout_s=60).succeeded
        finally:
            outbox.put(None)
            channel.close()
