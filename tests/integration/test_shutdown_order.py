"""Ordered shutdown of real worker and coordinator processes: nothing accepted is lost.

A worker on SIGTERM stops taking work, gives back what it queued (it runs elsewhere),
finishes what runs, then closes its stream and logs its final counts. A coordinator on
SIGTERM refuses new calls before its engine stops: a client sees UNAVAILABLE (and tries
again), never an internal error, and every submit it was told succeeded is durable.
"""

from __future__ import annotations

import re
import signal
import threading
import time

import grpc

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.worker._daemon import SHUTDOWN_FLUSH_S

FINAL_COUNTS = re.compile(r"worker stopped: (\d+) finished, (\d+) given back, (\d+) lost")


def test_sigterm_gives_back_queued_attempts_finishes_running_ones_and_logs_counts(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with Cluster(tmp_path, workers=1, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("ordered")
        p.add_tasks([Task(f"s{i}", ht.sleep_then_mark, args=(str(markers), f"s{i}", 1.0)) for i in range(5)])
        run_id = pm.submit(p)
        # w0, alone, holds one running attempt and more prefetched into its queue.
        eventually(lambda: any(t.status == "running" for t in pm.get_run(run_id).tasks.values()), timeout_s=20)
        c.add_worker("w1", slots=2)
        c.workers["w0"].stop_signal(signal.SIGTERM)
        assert c.workers["w0"].wait(timeout_s=20) == 0
        result = pm.wait(run_id, timeout_s=60)
        assert result.succeeded
        counts = FINAL_COUNTS.search(c.workers["w0"].log_text())
        assert counts, c.workers["w0"].log_tail()
        finished, given_back, lost = map(int, counts.groups())
        assert finished >= 1 and given_back >= 1 and lost == 0
        rerun = [t for t in result.tasks.values() if t.attempts > 1]
        assert len(rerun) == given_back and all(t.worker == "w1" for t in rerun)  # what w0 gave back ran on w1 ...
        for i in range(5):  # ... and nothing ran twice: given back before it started
            assert (markers / f"s{i}").read_text() == "ran\n"


def test_outcomes_that_finish_during_the_drain_are_recorded_before_the_worker_exits(tmp_path):
    """Eight attempts finish together just after SIGTERM, with 200 KiB results each: the
    worker closes its stream only once the coordinator has read them (it half-closes and
    waits for the call to end), so none is lost and requeued. Alone in the cluster, a
    requeued attempt would never run again."""
    go = tmp_path / "go"
    with Cluster(tmp_path, workers=1, slots=8) as c, PipelineManager(coordinator=c.address) as pm:
        for round_ in range(3):
            name = f"w{round_}"
            go.unlink(missing_ok=True)
            p = Pipeline(f"drain-outcomes-{round_}")
            p.add_tasks([Task(f"t{i}", ht.wait_for_file_then_bytes, args=(str(go), 200 * 1024), resource_requirements={"cpu_cores": 0.25})
                         for i in range(8)])  # fmt: skip
            run_id = pm.submit(p)
            eventually(lambda: all(t.status == "running" for t in pm.get_run(run_id).tasks.values()), timeout_s=30,
                       message="not all eight attempts started")  # fmt: skip
            worker = c.workers[name]
            worker.stop_signal(signal.SIGTERM)
            eventually(lambda: "draining" in worker.log_text(), timeout_s=10, message="the worker never began draining")
            go.touch()
            assert worker.wait(timeout_s=20) == 0
            assert "closed by the coordinator" in worker.log_text(), worker.log_tail()
            result = pm.wait(run_id, timeout_s=10)
            assert result.succeeded, {n: t.status for n, t in result.tasks.items()}
            assert all(t.attempts == 1 for t in result.tasks.values())
            if round_ < 2:
                c.add_worker(f"w{round_ + 1}", slots=8)


def test_a_coordinator_that_never_ends_the_call_is_cancelled_after_the_flush(tmp_path):
    """A frozen coordinator cannot end the half-closed call: the worker gives up after the
    5 s flush (SHUTDOWN_FLUSH_S), says so, cancels the call and still exits 0."""
    with Cluster(tmp_path, workers=1, slots=1) as c:
        worker = c.workers["w0"]
        c.coordinator.stop_signal(signal.SIGSTOP)
        try:
            signalled = time.monotonic()
            worker.stop_signal(signal.SIGTERM)
            assert worker.wait(timeout_s=20) == 0
            waited_s = time.monotonic() - signalled
        finally:
            c.coordinator.stop_signal(signal.SIGCONT)
        log = worker.log_text()
        assert "the coordinator did not close the stream within" in log, worker.log_tail()
        assert "closed by the coordinator" not in log
        assert SHUTDOWN_FLUSH_S - 0.5 <= waited_s < SHUTDOWN_FLUSH_S + 10, waited_s


def _spec(name: str) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name=name)
    spec.tasks.add(name="t").command.argv.append("true")
    return spec


def test_calls_during_coordinator_shutdown_get_unavailable_and_accepted_runs_survive(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c:
        accepted: dict[str, str] = {}  # idempotency key -> run id, for every submit answered OK
        refused: list[grpc.StatusCode] = []
        lock = threading.Lock()
        done = threading.Event()

        def submit_until_refused(n: int) -> None:
            with grpc.insecure_channel(c.address) as channel:
                stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
                i = 0
                while not done.is_set():
                    key = f"client{n}-{i}"
                    request = pipeline_pb2.SubmitPipelineRequest(pipeline=_spec(key), idempotency_key=key)
                    try:
                        run_id = stub.SubmitPipeline(request, timeout=10).run_id
                    except grpc.RpcError as exc:
                        with lock:
                            refused.append(exc.code())
                        return
                    with lock:
                        accepted[key] = run_id
                    i += 1

        clients = [threading.Thread(target=submit_until_refused, args=(n,)) for n in range(4)]
        for t in clients:
            t.start()
        try:
            eventually(lambda: len(accepted) >= 20, timeout_s=30)
            c.coordinator.stop_signal(signal.SIGTERM)
            assert c.coordinator.wait(timeout_s=20) == 0
            eventually(lambda: len(refused) == len(clients), timeout_s=20)
        finally:
            done.set()
            for t in clients:
                t.join(timeout=20)
        assert set(refused) == {grpc.StatusCode.UNAVAILABLE}, refused
        c.restart_coordinator(wait_for_workers=False)
        with grpc.insecure_channel(c.address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            for key, run_id in accepted.items():
                reply = stub.GetRun(pipeline_pb2.GetRunRequest(run_id=run_id), timeout=5)
                assert reply.summary.run_id == run_id, key
