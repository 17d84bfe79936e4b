"""A local OTLP/gRPC trace sink for ``python -m bench --telemetry``.

It stands in for an OpenTelemetry Collector on the same machine: it accepts every export and
counts the spans, so the bench pays what a real deployment pays to send them (serialization,
the exporter's thread, a loopback gRPC call) and can check that spans did arrive.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Counting(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        count = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpSink:
    """A started OTLP/gRPC trace receiver on ``127.0.0.1``; :attr:`address` is ``HOST:PORT``."""

    def __init__(self) -> None:
        self._servicer = _Counting()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._servicer, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()

    @property
    def spans(self) -> int:
        """Spans received so far."""
        return self._servicer.spans

    def stop(self) -> None:
        self._server.stop(grace=None)
