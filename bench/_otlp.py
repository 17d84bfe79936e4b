"""A local OTLP/gRPC trace sink for ``python -m bench --telemetry``.

It stands in for an OpenTelemetry Collector on another machine: xpipe's processes pay what
a real deployment pays to send spans (building them, OTLP encoding, the exporter's thread,
a loopback gRPC call), while the sink itself costs this machine next to nothing. It takes
each export as raw bytes and parses only the first few, enough to prove that spans arrive
(:attr:`OtlpSink.spans`); the rest are counted by bytes.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_PARSED_EXPORTS = 8  # parse this many requests; count the rest as bytes only
_EMPTY_REPLY = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class OtlpSink:
    """A started OTLP/gRPC trace receiver on ``127.0.0.1``; :attr:`address` is ``HOST:PORT``."""

    def __init__(self) -> None:
        self.spans = 0  #: spans in the parsed exports
        self.exports = 0  #: export requests received
        self.bytes = 0  #: their total size
        self._lock = threading.Lock()
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # bytes in, bytes out
        service = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[service])
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()

    def _export(self, request: bytes, context) -> bytes:
        with self._lock:
            self.exports += 1
            self.bytes += len(request)
            parse = self.exports <= _PARSED_EXPORTS
        if parse:
            message = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
            count = sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
            with self._lock:
                self.spans += count
        return _EMPTY_REPLY

    def stop(self) -> None:
        self._server.stop(grace=None)
