"""xpipe's own spans (task and coordinator.assign), written as OTLP protobuf without the OTel SDK.

They must be the spans the SDK would have sent: checked against a real OTLP/gRPC receiver
on loopback and against the SDK's own ``record_exception``. Also the failure paths: a full
queue, an unreachable collector, samplers other than the default.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from xpipe.telemetry import _spans
from xpipe.telemetry._tracing import Tracing, TracingConfig

from tests.harness import free_port
from tests.helpers_otlp import serve_traces

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = TRACEPARENT[:-2] + "00"
TRACE_ID, PARENT_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict, trace_pb2.Span]]:
        """(resource attributes, span) of every span received."""
        with self._lock:
            return [
                ({a.key: a.value.string_value for a in rs.resource.attributes}, span)
                for request in self.requests for rs in request.resource_spans
                for ss in rs.scope_spans for span in ss.spans
            ]  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()
    with serve_traces(got) as address:
        yield got, address


@pytest.fixture
def tracing(receiver, monkeypatch) -> Iterator[Tracing]:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    t = Tracing(TracingConfig(receiver[1], "xpipe-worker"))
    try:
        yield t
    finally:
        t.shutdown()


def attributes(span: trace_pb2.Span | trace_pb2.Span.Event) -> dict:
    out = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind)
    return out


def run_task(tracing: Tracing, traceparent: str, fail: Exception | None = None) -> tuple[_spans.OwnSpan | None, object]:
    """What the worker does around a task; returns the span and the span current during the task."""
    span, token = tracing.start_task_span(
        "task t1", traceparent, {"xpipe.task": "t1", "xpipe.attempt": 2}, (("xpipe.run_id", "r1"), ("xpipe.worker", "w0"))
    )
    current = trace.get_current_span()
    with tracing.tracer.start_as_current_span("user work"):  # the task's own span, through the SDK
        pass
    tracing.deactivate(token)
    if span is not None:
        if fail is not None:
            try:
                raise fail
            except Exception as exc:  # noqa: BLE001 - recorded, with its traceback
                span.record_exception(exc)
            span.set_attribute("xpipe.error_type", "TASK_FAILURE")
            span.set_error(f"TASK_FAILURE: {fail}")
        span.end()
    return span, current


def test_a_task_span_reaches_a_real_receiver_as_the_sdk_would_send_it(tracing, receiver):
    got, _ = receiver
    span, current = run_task(tracing, TRACEPARENT, fail=ValueError("bad rows"))
    assert span is not None
    # While the task ran, its span was current (so the task's own spans are its children).
    assert current.get_span_context().span_id == span.span_id and current.get_span_context().trace_id == TRACE_ID
    assert span.traceparent == f"00-{TRACE_ID:032x}-{span.span_id:016x}-01"
    assert tracing.flush(5)
    received = {s.name: (resource, s) for resource, s in got.spans()}
    resource, task = received["task t1"]
    assert resource["service.name"] == "xpipe-worker" and resource["telemetry.sdk.language"] == "python"
    assert task.trace_id == TRACE_ID.to_bytes(16, "big") and task.parent_span_id == PARENT_ID.to_bytes(8, "big")
    assert task.span_id == span.span_id.to_bytes(8, "big") and task.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert task.start_time_unix_nano <= task.end_time_unix_nano
    assert attributes(task) == {"xpipe.task": "t1", "xpipe.attempt": 2, "xpipe.run_id": "r1", "xpipe.worker": "w0",
                                "xpipe.error_type": "TASK_FAILURE"}  # fmt: skip
    assert task.status.code == trace_pb2.Status.STATUS_CODE_ERROR and task.status.message == "TASK_FAILURE: bad rows"
    user = received["user work"][1]
    assert user.parent_span_id == task.span_id and user.trace_id == task.trace_id

    # The exception event carries what the OTel SDK's record_exception would.
    sdk_span = TracerProvider().get_tracer("t").start_span("s")
    try:
        raise ValueError("bad rows")
    except ValueError as exc:
        sdk_span.record_exception(exc)
    (ours,), (theirs,) = task.events, sdk_span.events
    assert ours.name == theirs.name == "exception"
    mine, sdk = attributes(ours), dict(theirs.attributes)
    assert mine.keys() == sdk.keys()
    assert {k: mine[k] for k in mine if k != "exception.stacktrace"} == {k: sdk[k] for k in sdk if k != "exception.stacktrace"}
    assert "ValueError: bad rows" in mine["exception.stacktrace"] and "run_task" in mine["exception.stacktrace"]


def test_an_unsampled_attempt_has_no_span_and_the_task_s_own_spans_are_not_sampled(tracing, receiver):
    got, _ = receiver
    span, current = run_task(tracing, UNSAMPLED)
    assert span is None and current.get_span_context().span_id == PARENT_ID  # its remote parent, not sampled
    span, _ = run_task(tracing, TRACEPARENT)  # a sampled one after it, to know the export happened
    assert tracing.flush(5)
    assert [s.name for _, s in got.spans()].count("user work") == 1 and span is not None


@pytest.mark.parametrize("env", [{"OTEL_TRACES_SAMPLER": "always_off"}, {"OTEL_SDK_DISABLED": "true"}])
def test_the_sdk_s_sampler_and_switch_decide_for_task_spans_too(receiver, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tracing = Tracing(TracingConfig(receiver[1], "xpipe-worker"))
    try:
        span, _ = run_task(tracing, TRACEPARENT)
        assert span is None
        tracing.note_assigned(TRACEPARENT, "r1", "p", ["t1#1"], 1)
        assert tracing.flush(5) and receiver[0].spans() == []
    finally:
        tracing.shutdown()


def test_a_run_s_assignments_become_one_assign_span_per_export(tracing, receiver):
    got, _ = receiver
    batcher = _spans.SpanBatcher(tracing.config.endpoint, {"service.name": "xpipe-coordinator"}, max_names=3)
    try:
        batcher.note_assigned(TRACEPARENT, "r1", "wide", ["t1#1", "t2#1"], 2, 1_000)
        batcher.note_assigned(TRACEPARENT, "r1", "wide", ["t3#1", "t4#1"], 2, 2_000)
        assert batcher.flush(5)
    finally:
        assert batcher.shutdown(5)
    ((resource, span),) = got.spans()
    assert resource["service.name"] == "xpipe-coordinator" and span.name == "coordinator.assign"
    assert span.parent_span_id == PARENT_ID.to_bytes(8, "big") and span.trace_id == TRACE_ID.to_bytes(16, "big")
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1_000, 2_000)
    # Past max_names the names are cut, the count stays.
    assert attributes(span) == {"xpipe.run_id": "r1", "xpipe.pipeline": "wide", "xpipe.assigned": 4,
                                "xpipe.attempts": "t1#1 t2#1 t3#1"}  # fmt: skip


def test_a_full_queue_drops_new_spans_and_says_how_many(receiver, caplog, monkeypatch):
    monkeypatch.setattr(_spans, "MAX_QUEUE_SPANS", 5)
    batcher = _spans.SpanBatcher(receiver[1], {"service.name": "x"})
    span = _spans.OwnSpan(TRACE_ID, 1, PARENT_ID, "task t", {}).to_bytes(2)
    try:
        with caplog.at_level(logging.WARNING, logger=_spans.__name__):
            for _ in range(8):  # the export thread sleeps its 200 ms: nothing leaves meanwhile
                batcher.add(span)
            assert batcher.flush(5)
    finally:
        batcher.shutdown(5)
    assert len(receiver[0].spans()) == 5
    assert "3 spans dropped: more than 5 were queued" in caplog.text


def test_an_unreachable_collector_loses_the_spans_but_keeps_flush_and_shutdown_bounded(caplog):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    batcher = _spans.SpanBatcher(dead, {"service.name": "x"})
    with caplog.at_level(logging.WARNING, logger=_spans.__name__):
        batcher.add(_spans.OwnSpan(TRACE_ID, 1, PARENT_ID, "task t", {}).to_bytes(2))
        started = time.monotonic()
        flushed = batcher.flush(5)
        flush_s = time.monotonic() - started
        batcher.add(_spans.OwnSpan(TRACE_ID, 2, PARENT_ID, "task t", {}).to_bytes(2))
        started = time.monotonic()
        batcher.shutdown(1.0)
        shutdown_s = time.monotonic() - started
    assert flushed and flush_s < 5, f"flush took {flush_s:.1f} s"  # the export was tried, and failed
    assert shutdown_s < 1.5, f"shutdown took {shutdown_s:.1f} s"
    assert f"1 spans not exported to {dead}" in caplog.text


def test_the_schedule_delay_is_short_unless_the_environment_sets_it(caplog):
    assert _spans.schedule_delay_ms({}) == _spans.DEFAULT_SCHEDULE_DELAY_MS == 200
    assert _spans.schedule_delay_ms({"OTEL_BSP_SCHEDULE_DELAY": "100"}) == 100

    with caplog.at_level(logging.WARNING, logger=_spans.__name__):
        assert _spans.schedule_delay_ms({"OTEL_BSP_SCHEDULE_DELAY": "soon"}) == 200
    assert "OTEL_BSP_SCHEDULE_DELAY 'soon' is not a whole number of milliseconds" in caplog.text


@pytest.mark.parametrize("root", [False, True])
def test_a_span_with_shared_attributes_appended_reads_back_whole(root):
    """Shared attributes are appended as bytes: the receiver must read one span with all of them."""
    span = _spans.OwnSpan(
        TRACE_ID, 7, 0 if root else PARENT_ID, "task ünïcode",
        {"s": "x" * 300, "n": 2**40, "neg": -3, "flag": True, "ratio": 0.5, "list": ["a", "b"]},
        _spans.encode_attributes({"xpipe.run_id": "r1"}), tracestate="" if root else "vendor=1", start_ns=10,
    )  # fmt: skip
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        span.record_exception(exc)
    span.set_error("TASK_FAILURE: boom")
    got = trace_pb2.Span.FromString(span.to_bytes(20))
    assert attributes(got) | {"list": None} == {"s": "x" * 300, "n": 2**40, "neg": -3, "flag": True, "ratio": 0.5,
                                                 "xpipe.run_id": "r1", "list": None}  # fmt: skip
    assert [v.string_value for v in got.attributes[5].value.array_value.values] == ["a", "b"]
    assert got.parent_span_id == (b"" if root else PARENT_ID.to_bytes(8, "big"))
    assert got.trace_state == ("" if root else "vendor=1") and got.name == "task ünïcode"
    assert (got.start_time_unix_nano, got.end_time_unix_nano) == (10, 20)
    assert got.status.code == trace_pb2.Status.STATUS_CODE_ERROR and got.events[0].name == "exception"
