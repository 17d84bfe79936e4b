"""xpipe's own high-volume spans, written straight as OTLP protobuf and exported in batches.

Why not the OpenTelemetry SDK for these: a ``task <name>`` span made by the SDK cost its
executor process ~35-40 µs to build and ~30 µs to encode (a no-op task costs ~40 µs in
all), and a ``coordinator.assign`` span per engine turn cost the coordinator ~70 µs, a
turn being one or two tasks when workers have a slot each. Issue 12 allows telemetry 5% of
the scheduler's throughput. Here a task span is one ``trace_pb2.Span`` filled in once
(a few µs), and the coordinator only notes assignments per run (a list append), turning
them into one span per run and export interval. The spans are the same OTLP spans the SDK
would send (same ids, parents, attributes, status and ``exception`` event), to the same
endpoint, with the same resource; the SDK still makes every other span, the task's own
spans included (see docs/tracing.md, "Cost").
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
from collections import deque
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["DEFAULT_SCHEDULE_DELAY_MS", "MAX_ASSIGN_NAMES", "OwnSpan", "SpanBatcher", "new_span_id", "new_trace_id", "schedule_delay_ms"]

log = logging.getLogger(__name__)

#: How often queued spans leave when ``OTEL_BSP_SCHEDULE_DELAY`` is not set (the SDK's own
#: default, 5 s, would leave a short run's spans waiting; a batch per 200 ms costs nothing).
DEFAULT_SCHEDULE_DELAY_MS = 200
#: Spans held before new ones are dropped, and the most sent in one export (the SDK's defaults).
MAX_QUEUE_SPANS = 2048
MAX_EXPORT_BATCH_SPANS = 512
#: The deadline of one export when ``OTEL_EXPORTER_OTLP_TIMEOUT`` is not set (s, the SDK's default).
DEFAULT_EXPORT_TIMEOUT_S = 10.0
#: Most attempts one ``coordinator.assign`` span names (it counts them all).
MAX_ASSIGN_NAMES = 1000


#: The OTLP trace service's method, and the field tags (number << 3 | 2: length-delimited)
#: that frame serialized spans into its request (opentelemetry/proto/trace/v1/trace.proto).
_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RESOURCE_SPANS_TAG = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_RESOURCE_TAG = b"\x0a"  # ResourceSpans.resource = 1
_SCOPE_SPANS_TAG = b"\x12"  # ResourceSpans.scope_spans = 2
_SCOPE_TAG = b"\x0a"  # ScopeSpans.scope = 1
_SPANS_TAG = b"\x12"  # ScopeSpans.spans = 2


def _varint(n: int) -> bytes:
    """``n`` as a protobuf varint (a length here)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _framed(tag: bytes, message: Any) -> bytes:
    data = message.SerializeToString()
    return tag + _varint(len(data)) + data


def schedule_delay_ms(environ: Any = os.environ) -> int:
    """``OTEL_BSP_SCHEDULE_DELAY`` if set (ms), else :data:`DEFAULT_SCHEDULE_DELAY_MS`."""
    text = environ.get("OTEL_BSP_SCHEDULE_DELAY", "")
    if not text:
        return DEFAULT_SCHEDULE_DELAY_MS
    try:
        return max(1, int(text))
    except ValueError:
        log.warning("OTEL_BSP_SCHEDULE_DELAY %r is not a whole number of milliseconds; using %d",
                    text, DEFAULT_SCHEDULE_DELAY_MS)  # fmt: skip
        return DEFAULT_SCHEDULE_DELAY_MS


def _export_timeout_s(environ: Any = os.environ) -> float:
    text = environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "")
    try:
        return float(text) if text else DEFAULT_EXPORT_TIMEOUT_S
    except ValueError:
        log.warning("OTEL_EXPORTER_OTLP_TIMEOUT %r is not a number of seconds; using %g", text, DEFAULT_EXPORT_TIMEOUT_S)
        return DEFAULT_EXPORT_TIMEOUT_S


def _set_value(target: otlp_common_pb2.AnyValue, value: Any) -> None:
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, (list, tuple)):
        for item in value:
            _set_value(target.array_value.values.add(), item)
    else:
        target.string_value = str(value)


def add_attributes(repeated: Any, attributes: dict[str, Any]) -> None:
    """Append ``attributes`` (a plain dict) to a repeated OTLP ``KeyValue`` field.

    Filled in place: building ``KeyValue(value=AnyValue(...))`` messages first costs twice as much.
    """
    add = repeated.add
    for key, value in attributes.items():
        _set_value(add(key=key).value, value)


def encode_attributes(attributes: dict[str, Any]) -> bytes:
    """``attributes`` serialized as a Span's attribute fields, to append to a serialized Span.

    Protobuf's wire format concatenates repeated fields, so attributes that many spans
    share (the run, the worker) are encoded once and their bytes reused.
    """
    span = trace_pb2.Span()
    add_attributes(span.attributes, attributes)
    return span.SerializeToString()


def new_trace_id() -> int:
    """A random non-zero 128-bit trace id (what the SDK's ``RandomIdGenerator`` does)."""
    while True:
        trace_id = random.getrandbits(128)
        if trace_id:
            return trace_id


def new_span_id() -> int:
    """A random non-zero 64-bit span id (what the SDK's ``RandomIdGenerator`` does)."""
    while True:
        span_id = random.getrandbits(64)
        if span_id:
            return span_id


class OwnSpan:
    """One of xpipe's own spans being recorded, kept plainly; serialized once when it ends.

    It answers the calls xpipe makes on a span (``set_attribute``, ``record_exception``,
    ``end``, its W3C ids to pass on). An unsampled one (``sampled=False``) records nothing
    and only carries the ids, with the sampled flag off, as the SDK's non-recording spans do.

    Args:
        parent_id: 0 for a root span.
        encoded: more attributes, already serialized (see :func:`encode_attributes`).
        tracestate: the W3C ``tracestate`` passed on with this span (the parent's).
        sink: takes the serialized span when it ends (:meth:`SpanBatcher.add`).
    """

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "start_ns", "attributes", "encoded", "events", "error",
                 "sampled", "tracestate", "_sink")  # fmt: skip

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int, name: str, attributes: dict[str, Any], encoded: bytes = b"",
        *, sampled: bool = True, tracestate: str = "", sink: Any = None, start_ns: int | None = None,
    ):  # fmt: skip
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.attributes = attributes
        self.encoded = encoded
        self.events: list[trace_pb2.Span.Event] = []
        self.error = ""  # the ERROR status's description; "" leaves the status unset
        self.sampled = sampled
        self.tracestate = tracestate
        self._sink = sink
        self.start_ns = time.time_ns() if start_ns is None else start_ns

    @property
    def traceparent(self) -> str:
        """This span as a W3C ``traceparent``."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def is_recording(self) -> bool:
        return self.sampled

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self, description: str) -> None:
        """Status ERROR with ``description`` (the OTel way to mark a failed operation)."""
        self.error = description

    def end(self, end_ns: int | None = None) -> None:
        """End the span and hand it to its sink (once; nothing when unsampled).

        The sink serializes it later, on its export thread: the caller (a submit, a task's
        answer) does not wait for the protobuf work. Changes after ``end`` are not kept.
        """
        sink, self._sink = self._sink, None
        if sink is not None and self.sampled:
            sink(self, time.time_ns() if end_ns is None else end_ns)

    def record_exception(self, exc: BaseException, attributes: dict[str, Any] | None = None) -> None:
        """An ``exception`` event, with the attributes the OTel SDK's ``record_exception`` gives."""
        module = type(exc).__module__
        qualname = type(exc).__qualname__
        recorded = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exc),
            "exception.stacktrace": "".join(traceback.format_exception(exc)),
            "exception.escaped": "False",
        }
        if attributes:
            recorded.update(attributes)
        event = trace_pb2.Span.Event(time_unix_nano=time.time_ns(), name="exception")
        add_attributes(event.attributes, recorded)
        self.events.append(event)

    def to_bytes(self, end_ns: int) -> bytes:
        """The span, ended at ``end_ns``, serialized (the encoded attributes appended)."""
        return self.to_proto(end_ns).SerializeToString() + self.encoded

    def to_proto(self, end_ns: int) -> trace_pb2.Span:
        """The span without its encoded attributes."""
        span = trace_pb2.Span(
            trace_id=self.trace_id.to_bytes(16, "big"), span_id=self.span_id.to_bytes(8, "big"),
            parent_span_id=self.parent_id.to_bytes(8, "big") if self.parent_id else b"", name=self.name,
            kind=trace_pb2.Span.SPAN_KIND_INTERNAL, start_time_unix_nano=self.start_ns, end_time_unix_nano=end_ns,
        )  # fmt: skip
        if self.tracestate:
            span.trace_state = self.tracestate
        add = span.attributes.add
        for key, value in self.attributes.items():  # add_attributes inlined: this runs per task
            target = add(key=key).value
            if type(value) is str:
                target.string_value = value
            elif type(value) is int:
                target.int_value = value
            else:
                _set_value(target, value)
        if self.events:
            span.events.extend(self.events)
        if self.error:
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            span.status.message = self.error
        return span


class _Assigned:
    """A run's assignments noted since the last export: they become one ``coordinator.assign`` span."""

    __slots__ = ("run_id", "pipeline", "first_ns", "last_ns", "count", "names")

    def __init__(self, run_id: str, pipeline: str, now_ns: int):
        self.run_id, self.pipeline = run_id, pipeline
        self.first_ns = self.last_ns = now_ns
        self.count = 0
        self.names: list[str] = []


class SpanBatcher:
    """Queues spans and exports them over OTLP/gRPC on its own thread, every schedule delay.

    Like the SDK's batch span processor: nothing on the caller's path but an append; a full
    queue drops new spans (counted, logged once per export); a failed export is dropped and
    logged. Unlike it, a flush and the shutdown are bounded in time.

    Args:
        endpoint: ``HOST:PORT`` of the OTLP/gRPC receiver; plaintext.
        resource: the resource attributes (``service.name`` ...), the same as the SDK's spans'.
        max_names: most attempt names one ``coordinator.assign`` span lists (it counts them all).
    """

    def __init__(self, endpoint: str, resource: dict[str, Any], *, max_names: int = MAX_ASSIGN_NAMES):
        import grpc

        self.endpoint = endpoint
        resource_pb = resource_pb2.Resource()
        add_attributes(resource_pb.attributes, resource)
        self._delay_s = schedule_delay_ms() / 1000
        self._timeout_s = _export_timeout_s()
        self._max_names = max_names
        self._resource_prefix = _framed(_RESOURCE_TAG, resource_pb)
        self._scope_prefix = _framed(_SCOPE_TAG, otlp_common_pb2.InstrumentationScope(name="xpipe"))
        self._channel = grpc.insecure_channel(endpoint)
        # The OTLP TraceService's Export, sent as bytes we frame ourselves (see _request).
        self._export = self._channel.unary_unary(
            _EXPORT_METHOD, request_serializer=None,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )  # fmt: skip
        self._lock = threading.Lock()
        # Serialized Spans, or (OwnSpan, end_ns) to serialize at export; append and popleft are thread-safe.
        self._spans: deque[bytes | tuple[OwnSpan, int]] = deque()
        self._assigned: dict[str, _Assigned] = {}  # by the run's traceparent
        self._dropped = 0
        self._wake = threading.Event()
        self._done = threading.Condition(self._lock)
        self._wanted = 0  # flushes asked for
        self._exported = 0  # flushes whose export has ended (the loop's wake-ups cover them)
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, span: bytes | OwnSpan, end_ns: int = 0) -> None:
        """Queue one finished span: serialized, or an :class:`OwnSpan` ended at ``end_ns``,
        serialized at export (dropped, and counted, when the queue is full)."""
        if len(self._spans) >= MAX_QUEUE_SPANS:
            self._dropped += 1
            return
        self._spans.append(span if end_ns == 0 else (span, end_ns))  # no lock on the task path
        if self._thread is None:
            self._start()

    def note_assigned(
        self, traceparent: str, run_id: str, pipeline: str, names: list[str], count: int, now_ns: int
    ) -> None:
        """Note ``count`` assignments of a run (``names``: ``task#attempt``), for its next ``coordinator.assign`` span.

        ``traceparent`` (the run's, sampled) is the span's parent; it is parsed at export.
        """
        with self._lock:
            assigned = self._assigned.get(traceparent)
            if assigned is None:
                assigned = self._assigned[traceparent] = _Assigned(run_id, pipeline, now_ns)
            assigned.last_ns = now_ns
            assigned.count += count
            room = self._max_names - len(assigned.names)
            if room > 0:
                assigned.names.extend(names[:room])
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="xpipe-span-export", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._lock:
                covered = self._wanted
            self._export_all()
            with self._lock:
                self._exported = covered
                self._done.notify_all()
                if self._closed:
                    return

    def _take(self) -> list[bytes]:
        queue = self._spans
        spans = [queue.popleft() for _ in range(len(queue))]
        spans = [s if type(s) is bytes else s[0].to_bytes(s[1]) for s in spans]
        with self._lock:
            assigned, self._assigned = self._assigned, {}
        for traceparent, a in assigned.items():
            span = trace_pb2.Span(
                trace_id=bytes.fromhex(traceparent[3:35]), span_id=new_span_id().to_bytes(8, "big"),
                parent_span_id=bytes.fromhex(traceparent[36:52]), name="coordinator.assign",
                kind=trace_pb2.Span.SPAN_KIND_INTERNAL, start_time_unix_nano=a.first_ns, end_time_unix_nano=a.last_ns,
            )  # fmt: skip
            add_attributes(span.attributes, {"xpipe.run_id": a.run_id, "xpipe.pipeline": a.pipeline,
                                             "xpipe.assigned": a.count, "xpipe.attempts": " ".join(a.names)})  # fmt: skip
            spans.append(span.SerializeToString())
        return spans

    def _export_all(self) -> None:
        spans = self._take()
        if self._dropped:
            log.warning("%d spans dropped: more than %d were queued (is the collector at %s keeping up?)",
                        self._dropped, MAX_QUEUE_SPANS, self.endpoint)  # fmt: skip
            self._dropped = 0
        for start in range(0, len(spans), MAX_EXPORT_BATCH_SPANS):
            request = self._request(spans[start : start + MAX_EXPORT_BATCH_SPANS])
            try:
                self._export(request, timeout=self._timeout_s)
            except Exception as exc:  # noqa: BLE001 - a lost batch must not end the exporting
                log.warning("%d spans not exported to %s: %s", len(spans) - start, self.endpoint, exc)
                return

    def _request(self, spans: list[bytes]) -> bytes:
        """An ``ExportTraceServiceRequest`` holding ``spans`` (serialized), framed around them.

        Protobuf's wire format lets a message's bytes be put in a parent as they are (tag,
        length, bytes): building the request as messages copied every span again and cost
        ~4 µs a span, this costs a fraction of one.
        """
        scope_spans = self._scope_prefix + b"".join([_SPANS_TAG + _varint(len(span)) + span for span in spans])
        resource_spans = self._resource_prefix + _SCOPE_SPANS_TAG + _varint(len(scope_spans)) + scope_spans
        return _RESOURCE_SPANS_TAG + _varint(len(resource_spans)) + resource_spans

    def flush(self, timeout_s: float) -> bool:
        """Export what is queued now, waiting at most ``timeout_s``; False if that was not enough."""
        with self._lock:
            if self._thread is None:
                return True
            self._wanted += 1
            wanted = self._wanted
            self._wake.set()
            return self._done.wait_for(lambda: self._exported >= wanted, timeout_s)

    def shutdown(self, timeout_s: float) -> bool:
        """Export what is left and stop, waiting at most ``timeout_s``; False if that was not enough."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout_s)
            if thread.is_alive():
                return False
        self._channel.close()
        return True
