"""One trace per run: spans from the SDK, the coordinator and the workers reach a real OTLP receiver.

The receiver is a real gRPC server on a loopback port that implements the OTLP trace
service from the ``opentelemetry-proto`` definitions; every process exports to it over
OTLP/gRPC exactly as it would to a collector.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from xpipe import Pipeline, PipelineManager, Task
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.telemetry._tracing import SHUTDOWN_FLUSH_S

from tests.harness import Cluster, eventually, free_port
from tests.helpers_otlp import serve_traces

#: Coordinator spans leave on the batch processor's schedule: 100 ms instead of 5 s shows
#: that OTEL_BSP_SCHEDULE_DELAY reaches the SDK and keeps the test quick.
BSP_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


# ---- tasks (workers import them by path) -----------------------------------------------


def opens_its_own_span() -> int:
    """A task that traces its own work with the plain OTel API."""
    with trace.get_tracer("user-code").start_as_current_span("user work") as span:
        span.set_attribute("user.rows", 3)
    return 3


def fails_on_purpose(rows: int) -> int:
    raise ValueError(f"bad batch of {rows} rows")


# ---- the receiver ----------------------------------------------------------------------


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict
    status: int
    status_message: str
    events: list = field(default_factory=list)


def _value(v) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span, flattened."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        service=str(resource.get("service.name", "")), name=s.name, trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes}, status=s.status.code,
                        status_message=s.status.message,
                        events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in s.events],
                    ))  # fmt: skip
        with self._lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()
    with serve_traces(got) as address:
        yield got, address


@pytest.fixture
def traced_cluster(tmp_path, receiver, monkeypatch) -> Iterator[Cluster]:
    for key, value in BSP_ENV.items():
        monkeypatch.setenv(key, value)
    _, endpoint = receiver
    with Cluster(tmp_path, workers=1, slots=2, otlp_endpoint=endpoint) as cluster:
        yield cluster


def three_tasks(name: str) -> Pipeline:
    pipeline = Pipeline(name)
    own = Task("own_span", opens_its_own_span)
    fails = Task("fails", fails_on_purpose, depends_on=[own], max_retries=0)
    command = Task.command("command", [sys.executable, "-c", "import os; print(os.environ['TRACEPARENT'])"])
    pipeline.add_tasks([own, fails, command])
    return pipeline


# ---- tests -----------------------------------------------------------------------------


def test_one_trace_covers_sdk_coordinator_and_worker_with_right_parents(traced_cluster, receiver):
    got, endpoint = receiver
    # The application's own current span: the run's root span must become its child.
    app = trace.SpanContext(trace_id=0x1234567890ABCDEF1234567890ABCDEF, span_id=0x1122334455667788, is_remote=False,
                            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))  # fmt: skip
    with (
        PipelineManager(coordinator=traced_cluster.address, otlp_endpoint=endpoint) as pm,
        trace.use_span(trace.NonRecordingSpan(app)),
    ):
        result = pm.execute_pipeline(three_tasks("traced"), raise_on_failure=False, monitor=False)
    assert result.status == "failed"
    trace_id = f"{app.trace_id:032x}"

    def assigned() -> list[str]:
        spans = [s.attributes for s in got.of_trace(trace_id) if s.name == "coordinator.assign"]
        assert all(a["xpipe.assigned"] == len(a["xpipe.attempts"].split()) for a in spans)
        return sorted(attempt for a in spans for attempt in a["xpipe.attempts"].split())

    def whole_trace() -> dict[str, Span] | None:
        spans = {s.name: s for s in got.of_trace(trace_id)}
        wanted = {"run traced", "coordinator.submit", "task own_span", "user work", "task fails", "task command"}
        return spans if wanted <= spans.keys() and len(assigned()) >= 3 else None

    spans = eventually(whole_trace, timeout_s=15, message="every span of the run reaches the receiver")
    by_id = {s.span_id: s for s in got.of_trace(trace_id)}
    root, submit = spans["run traced"], spans["coordinator.submit"]
    assert root.service == "xpipe-sdk" and root.parent_id == f"{app.span_id:016x}"
    assert root.attributes["xpipe.run_id"] == result.run_id and root.status == trace_pb2.Status.STATUS_CODE_ERROR
    assert submit.service == "xpipe-coordinator" and submit.parent_id == root.span_id
    assert submit.attributes["xpipe.run_id"] == result.run_id
    assert assigned() == ["command#1", "fails#1", "own_span#1"]  # each attempt once
    assert all(s.parent_id == submit.span_id for s in got.of_trace(trace_id) if s.name == "coordinator.assign")

    for name in ("own_span", "fails", "command"):
        span = spans[f"task {name}"]
        assert span.service == "xpipe-worker"
        expected = {"xpipe.run_id": result.run_id, "xpipe.task": name, "xpipe.attempt": 1, "xpipe.worker": "w0"}
        assert {key: span.attributes.get(key) for key in expected} == expected
        chain, at = [], span
        while at.parent_id in by_id:  # walk up to the SDK's root
            at = by_id[at.parent_id]
            chain.append(at.name)
        assert chain[-2:] == ["coordinator.submit", "run traced"], chain
    user = spans["user work"]
    assert user.parent_id == spans["task own_span"].span_id and user.attributes == {"user.rows": 3}
    assert spans["task own_span"].status != trace_pb2.Status.STATUS_CODE_ERROR

    failed = spans["task fails"]
    assert failed.status == trace_pb2.Status.STATUS_CODE_ERROR and "bad batch of 3 rows" in failed.status_message
    (exception,) = [attrs for name, attrs in failed.events if name == "exception"]
    assert exception["exception.type"] == "ValueError" and exception["exception.message"] == "bad batch of 3 rows"
    assert "fails_on_purpose" in exception["exception.stacktrace"]

    # The command saw TRACEPARENT naming its own task span.
    printed = result.outputs["command"]["stdout"].strip()
    assert printed == f"00-{trace_id}-{spans['task command'].span_id}-01"


def test_sample_ratio_zero_from_the_environment_sends_no_span(traced_cluster, receiver, monkeypatch):
    got, endpoint = receiver
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    with PipelineManager(coordinator=traced_cluster.address, otlp_endpoint=endpoint) as pm:
        dropped = pm.execute_pipeline(three_tasks("unsampled"), raise_on_failure=False, monitor=False)
    # A sampled run after it (the argument wins over the environment): once its worker and
    # coordinator spans are in, so would the first run's be (each process exports in order).
    with PipelineManager(coordinator=traced_cluster.address, otlp_endpoint=endpoint, trace_sample_ratio=1.0) as pm:
        kept = pm.execute_pipeline(three_tasks("sampled"), raise_on_failure=False, monitor=False)
    eventually(lambda: len([s for s in got.spans if s.attributes.get("xpipe.run_id") == kept.run_id
                            and s.name in ("task fails", "task own_span", "task command", "coordinator.submit")]) == 4,
               timeout_s=15, message="the sampled run's spans arrive")  # fmt: skip
    assert got.named("run sampled") and not got.named("run unsampled")
    assert not [s for s in got.spans if s.attributes.get("xpipe.run_id") == dropped.run_id]
    assert not [s for s in got.spans if s.attributes.get("xpipe.pipeline") == "unsampled"]


def test_an_untraced_coordinator_passes_the_context_on_and_refuses_a_malformed_one(tmp_path, receiver, monkeypatch):
    """Also the thread executor: tasks run in the worker process, whose provider is the global one."""
    got, endpoint = receiver
    for key, value in BSP_ENV.items():
        monkeypatch.setenv(key, value)
    worker_args = ("--otlp-endpoint", endpoint, "--executor", "thread")
    cluster = Cluster(tmp_path, workers=1, worker_args=worker_args)
    with cluster, PipelineManager(coordinator=cluster.address, otlp_endpoint=endpoint) as pm:
        result = pm.execute_pipeline(three_tasks("relayed"), raise_on_failure=False, monitor=False)
        (root,) = eventually(lambda: got.named("run relayed"), timeout_s=15)
        task = eventually(lambda: got.named("task own_span"), timeout_s=15)[0]
        # No coordinator span in between: the worker's task span hangs from the SDK's root.
        assert task.trace_id == root.trace_id and task.parent_id == root.span_id
        assert not [s for s in got.of_trace(root.trace_id) if s.service == "xpipe-coordinator"]
        assert task.attributes["xpipe.run_id"] == result.run_id
        (user,) = eventually(lambda: got.named("user work"), timeout_s=15)
        assert user.parent_id == task.span_id and user.trace_id == root.trace_id
        failed = eventually(lambda: got.named("task fails"), timeout_s=15)[0]
        assert failed.status == trace_pb2.Status.STATUS_CODE_ERROR

        channel = grpc.insecure_channel(cluster.address)
        try:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            request = pipeline_pb2.SubmitPipelineRequest(
                pipeline=three_tasks("bad_context").to_proto(), traceparent="00-not-a-trace-01"
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.SubmitPipeline(request, timeout=10)
        finally:
            channel.close()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("xpipe-rejected", "field") in refused.value.trailing_metadata()
        assert "traceparent '00-not-a-trace-01' is not a W3C traceparent" in refused.value.details()
        assert [r.pipeline for r in pm.list_runs()] == ["relayed"]  # nothing was submitted


def test_an_unreachable_collector_delays_no_run_and_no_shutdown_for_long(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Cluster(tmp_path, workers=1, otlp_endpoint=dead) as cluster:
        pm = PipelineManager(coordinator=cluster.address, otlp_endpoint=dead)
        try:
            started = time.monotonic()
            result = pm.execute_pipeline(three_tasks("lost_spans"), raise_on_failure=False, monitor=False)
            run_s = time.monotonic() - started
        finally:
            started = time.monotonic()
            pm.close()
            close_s = time.monotonic() - started
    assert result.tasks["own_span"].status == "succeeded" and result.tasks["fails"].status == "failed"
    print(f"run {run_s:.2f} s, close {close_s:.2f} s")
    assert run_s < 5.0, f"the run took {run_s:.1f} s: exporting must never hold a task up"
    assert close_s < SHUTDOWN_FLUSH_S + 1.0, f"close took {close_s:.1f} s"


def test_the_embedded_default_exports_from_all_its_processes(tmp_path, receiver, monkeypatch):
    got, endpoint = receiver
    for key, value in BSP_ENV.items():
        monkeypatch.setenv(key, value)
    pipeline = Pipeline("embedded")
    pipeline.add_task(Task("own_span", opens_its_own_span))
    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "local", otlp_endpoint=endpoint) as pm:
        result = pm.execute_pipeline(pipeline, monitor=False)
        (root,) = eventually(lambda: got.named("run embedded"), timeout_s=15)
        wanted = {"coordinator.submit", "coordinator.assign", "task own_span", "user work"}
        eventually(lambda: wanted <= {s.name for s in got.of_trace(root.trace_id)}, timeout_s=15,
                   message="the embedded coordinator's and worker's spans arrive")  # fmt: skip
    (task,) = [s for s in got.of_trace(root.trace_id) if s.name == "task own_span"]
    assert task.attributes["xpipe.run_id"] == result.run_id and task.attributes["xpipe.worker"] == "local-0"
