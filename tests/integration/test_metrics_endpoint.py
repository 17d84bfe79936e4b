"""``--metrics-listen`` on a real cluster: scrape ``/metrics`` over HTTP and check the counts.

One coordinator and two workers serve metrics on their own loopback ports; the tests run
real pipelines (successes, a failure, a retry that then succeeds, a timeout, a skip and
a cancel), parse the scrape with ``prometheus_client``'s parser and compare each count
with what the runs did. Task-recorded metrics come from a raw worker stream that
answers its assignment with a ``TaskTelemetry``, as a worker of the tel-taskmetrics
branch will.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task
from xpipe._proto import common_pb2, worker_pb2, worker_pb2_grpc

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from tests.helpers_metrics import scrape, value

OUTCOMES = ("succeeded", "failed", "timeout", "cancelled", "skipped")


def metrics_cluster(tmp_path, workers: int) -> Cluster:
    """A cluster whose processes serve metrics; one per test, as the leak check is per test."""
    return Cluster(tmp_path, workers=workers, slots=2, metrics=True)


@pytest.fixture
def cluster(request, tmp_path) -> Iterator[Cluster]:
    with metrics_cluster(tmp_path, getattr(request, "param", 2)) as c:
        yield c


@pytest.fixture
def pm(cluster: Cluster) -> Iterator[PipelineManager]:
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


def attempts(samples, pipeline: str) -> dict[str, float]:
    return {o: value(samples, "xpipe_task_attempts_total", pipeline=pipeline, outcome=o) for o in OUTCOMES}


def busy_slots(cluster: Cluster) -> float:
    return sum(value(scrape(cluster.metrics_url(w)), "xpipe_worker_slots_busy") for w in ("w0", "w1"))


def test_the_scrape_counts_what_the_runs_did(cluster, pm, tmp_path):
    before = scrape(cluster.metrics_url())
    p = Pipeline("metrics_run")
    bad = Task("bad", ht.fail_with_value_error)
    p.add_tasks([
        Task("ok_a", ht.noop), Task("ok_b", ht.noop), bad, Task("after_bad", ht.noop, depends_on=[bad]),
        Task("flaky", ht.fail_times, args=(str(tmp_path), 1), max_retries=1, retry_delay_s=0.05),
        Task("slow", ht.sleep, args=(30,), timeout_s=0.5),
        Task("skip", ht.fetch, args=("invalid",)),
    ])  # fmt: skip
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False, timeout_s=60)
    tasks = info.value.result.tasks
    assert tasks["flaky"].attempts == 2 and tasks["flaky"].status == "succeeded"
    assert tasks["slow"].status == "failed" and tasks["skip"].status == "skipped"
    assert tasks["after_bad"].status == "upstream_failed"

    # A cancelled attempt: cancel a run while its one task runs (the worker shows a busy slot).
    hold = Pipeline("metrics_cancel")
    hold.add_task(Task("hold", ht.sleep, args=(30,)))
    run_id = pm.submit(hold)
    eventually(lambda: pm.get_run(run_id).tasks["hold"].status == "running", timeout_s=15, message="hold running")
    eventually(lambda: busy_slots(cluster) == 1, timeout_s=10, message="one busy slot in the workers' scrapes")
    assert pm.cancel(run_id)
    assert pm.wait(run_id, timeout_s=15, raise_on_failure=False).status == "cancelled"

    after = scrape(cluster.metrics_url())
    assert attempts(after, "metrics_run") == {"succeeded": 3, "failed": 2, "timeout": 1, "cancelled": 0, "skipped": 1}
    assert attempts(after, "metrics_cancel") == {"succeeded": 0, "failed": 0, "timeout": 0, "cancelled": 1, "skipped": 0}
    duration = "xpipe_task_duration_seconds_count"
    assert value(after, duration, pipeline="metrics_run", task="flaky") == 2
    assert value(after, duration, pipeline="metrics_run", task="ok_a") == 1
    assert value(after, duration, pipeline="metrics_run", task="slow") == 1
    assert value(after, duration, pipeline="metrics_run", task="after_bad") == 0  # never ran
    slow_s = value(after, "xpipe_task_duration_seconds_sum", pipeline="metrics_run", task="slow")
    assert 0.5 <= slow_s < 5  # it ran until its timeout
    assert value(after, "xpipe_task_queue_wait_seconds_count", pipeline="metrics_run") == 7
    assert value(after, "xpipe_task_queue_wait_seconds_count", pipeline="metrics_cancel") == 1

    def grew(sample: str) -> float:
        return value(after, sample) - value(before, sample)

    assert grew("xpipe_dispatch_batch_size_sum") == 8  # every attempt was sent once
    assert 1 <= grew("xpipe_dispatch_batch_size_count") <= 8
    assert grew("xpipe_store_commit_seconds_count") >= 4  # submits, starts, results: group-committed
    assert value(after, "xpipe_store_commit_seconds_sum") > 0

    def idle() -> bool:
        now = scrape(cluster.metrics_url())
        return (value(now, "xpipe_runs_active"), value(now, "xpipe_ready_tasks"),
                value(now, "xpipe_workers", state="ready")) == (0, 0, 2)  # fmt: skip

    eventually(idle, timeout_s=10, message="no active run, no ready task, two ready workers")
    eventually(lambda: busy_slots(cluster) == 0, timeout_s=10, message="no busy slot once cancelled")
    for name in ("w0", "w1"):
        worker = scrape(cluster.metrics_url(name))
        assert value(worker, "xpipe_worker_slots") == 2
        assert 0 <= value(worker, "xpipe_worker_cpu_percent") <= 100
        assert value(worker, "xpipe_worker_memory_bytes") > 0


def _raw_worker(cluster: Cluster, handler: str, telemetry: common_pb2.TaskTelemetry, pm: PipelineManager,
                pipeline: Pipeline) -> str:  # fmt: skip
    """Serve ``handler`` on a raw worker stream, run ``pipeline``, answer with ``telemetry``; the run id."""
    register = worker_pb2.Register(
        worker_id=f"raw-{time.monotonic_ns()}", name="raw", host="h", slots=1, handlers=[handler],
        resources=common_pb2.Resources(cpu_cores=4, memory_bytes=8 << 30),
    )  # fmt: skip
    outbox: queue.Queue = queue.Queue()

    def requests():
        yield worker_pb2.WorkerMessage(register=register)
        while (message := outbox.get(timeout=30)) is not None:
            yield message

    with grpc.insecure_channel(cluster.address) as channel:
        call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(requests(), timeout=30)
        try:
            replies = iter(call)
            assert next(replies).WhichOneof("body") == "registered"
            eventually(lambda: "raw" in {w.name for w in cluster.list_workers()}, timeout_s=10, message="raw listed")
            run_id = pm.submit(pipeline)
            batch = next(m for m in replies if m.WhichOneof("body") == "assignments").assignments
            (assignment,) = batch.assignments
            now = time.time()
            done = worker_pb2.TaskEvent(
                attempt=assignment.attempt, at=now, started_at=now - 0.2, telemetry=telemetry,
                succeeded=worker_pb2.Succeeded(result=common_pb2.Payload(codec=common_pb2.CODEC_JSON, data=b"1")),
            )  # fmt: skip
            outbox.put(worker_pb2.WorkerMessage(events=worker_pb2.TaskEventBatch(events=[done])))
            assert pm.wait(run_id, timeout_s=15).status == "succeeded"
        finally:
            outbox.put(None)
            call.cancel()
    return run_id


@pytest.mark.parametrize("cluster", [0], indirect=True)  # the raw worker is the only one
def test_task_recorded_metrics_reach_the_scrape(cluster, pm):
    point = common_pb2.MetricPoint
    telemetry = common_pb2.TaskTelemetry(metrics=[
        point(name="rows_processed", value=42, labels={"table": "users"}, kind=common_pb2.METRIC_KIND_CUSTOM),
        point(name="data_quality_score", value=0.93, kind=common_pb2.METRIC_KIND_TRACKED),
        point(name="revenue_impact", value=1200.5, kind=common_pb2.METRIC_KIND_BUSINESS),
    ])  # fmt: skip
    # (A point with an invalid name never gets this far: the coordinator's worker-message
    # check refuses it, tests/unit/test_task_telemetry.py; the export's own drop of such
    # points is covered by tests/unit/test_metrics.py.)
    p = Pipeline("metrics_probe")
    p.add_task(Task.handler("measure", "metrics_probe"))
    _raw_worker(cluster, "metrics_probe", telemetry, pm, p)
    after = scrape(cluster.metrics_url())
    at = {"pipeline": "metrics_probe", "task": "measure"}
    assert value(after, "xpipe_custom_metric", name="rows_processed", table="users", **at) == 42
    assert value(after, "xpipe_custom_metric_value_count", name="rows_processed", table="users", **at) == 1
    assert value(after, "xpipe_custom_metric", name="data_quality_score", **at) == 0.93
    assert value(after, "xpipe_business_metric", name="revenue_impact", **at) == 1200.5
    assert value(after, "xpipe_business_metric_value_sum", name="revenue_impact", **at) == 1200.5
    assert attempts(after, "metrics_probe")["succeeded"] == 1


def _daemon(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("cluster", [0], indirect=True)
def test_a_metrics_port_in_use_fails_start_up_with_one_line(cluster, tmp_path):
    taken = f"127.0.0.1:{cluster.metrics_ports['coordinator']}"  # a live coordinator serves there
    expected = f"--metrics-listen {taken}: cannot serve metrics there: address already in use"
    for program, args in (
        ("xpipe.coordinator", ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")]),
        ("xpipe.worker", ["--coordinator", cluster.address, "--name", "second"]),
    ):
        done = _daemon([program, *args, "--metrics-listen", taken])
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"xpipe-{program.split('.')[1]}: {expected}"
        assert "Traceback" not in done.stderr
    assert "second" not in {w.name for w in cluster.list_workers()}  # it never registered


@pytest.mark.parametrize("cluster", [0], indirect=True)
def test_port_zero_binds_a_free_port_and_logs_it(cluster):
    proc = cluster.add_worker("zero", slots=1, extra_args=["--metrics-listen", "127.0.0.1:0"])
    try:
        found = eventually(lambda: re.search(r"metrics served on (http://127\.0\.0\.1:\d+/metrics)", proc.log_text()),
                           timeout_s=10, message="the bound metrics address in the worker's log")  # fmt: skip
        url = found.group(1)
        assert not url.endswith(":0/metrics")
        assert value(scrape(url), "xpipe_worker_slots") == 1
    finally:
        proc.terminate()


def test_the_embedded_default_ignores_an_inherited_metrics_address(monkeypatch, tmp_path):
    """XPIPE_METRICS_LISTEN set for a daemon must not reach the embedded cluster's processes:
    all of them would ask for the one port, and every worker would fail to start."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setenv("XPIPE_METRICS_LISTEN", f"127.0.0.1:{held.getsockname()[1]}")
        with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "embedded") as pm:
            p = Pipeline("embedded_metrics")
            p.add_task(Task("one", ht.echo, args=(1,)))
            assert pm.execute_pipeline(p, monitor=False, timeout_s=60).outputs["one"] == 1
