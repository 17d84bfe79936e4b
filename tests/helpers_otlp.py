"""A real OTLP/gRPC trace receiver on a loopback port, for the tracing tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.harness import free_port


@contextlib.contextmanager
def serve_traces(servicer: trace_service_pb2_grpc.TraceServiceServicer) -> Iterator[str]:
    """Serve ``servicer`` as the OTLP TraceService on ``127.0.0.1``; yields its ``HOST:PORT``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(grace=None)
