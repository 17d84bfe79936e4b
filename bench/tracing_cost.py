"""Per-task CPU cost of tracing, measured without the network (issue 12, traces).

Not the full bench (``python -m bench``): a micro-benchmark of the code paths tracing
touches, best of N repeats on one machine, so that tracing off can be compared with the
code before it and with tracing on.

- ``coordinator``: a wide run of 10,000 no-op tasks through the state machine and the
  engine's dispatch (``SchedulerState.handle``/``schedule`` + ``Engine._dispatch``: the
  coordinator's per-task work minus gRPC and the store), for an untraced run, a traced
  run relayed by a coordinator that does not trace, and a traced run on a tracing
  coordinator (spans exported to an in-process OTLP receiver on loopback).
- ``worker``: ``run_assignment`` of a no-op Python task in this process, untraced and
  traced (the ``task <name>`` span, under load: exported in the batch processor's batches).

CPU is ``time.process_time()``: every thread of this process, so the batch span
processor's export thread (serializing and sending spans) is counted, and a final flush
is inside the measurement. The receiver runs in its own process, not counted. Cases are
interleaved, best of ``--repeat`` each, to keep drift of a shared machine out.

Run: ``python -m bench.tracing_cost [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._engine import Engine, EngineConfig
from xpipe.coordinator._events import Assign
from xpipe.telemetry._tracing import Tracing, TracingConfig

from bench._enginewide import TASKS, run_wide, wide_engine, wide_spec

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


_RECEIVER = """if True:
    import sys
    from concurrent import futures
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    sys.stdin.read()  # until the benchmark closes our stdin
"""


def _receiver() -> tuple[subprocess.Popen, str]:
    """A real OTLP/gRPC endpoint in its own process that accepts and drops spans."""
    proc = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, f"127.0.0.1:{proc.stdout.readline().strip()}"


def wide_run_s(trace_context: str, tracing: Tracing | None) -> float:
    """Seconds of CPU the coordinator's core spends on a wide run of TASKS no-op tasks."""
    engine = wide_engine(EngineConfig(tracing=tracing))
    spec = wide_spec(trace_context=trace_context)
    started = time.process_time()
    run_wide(engine, spec)
    if tracing is not None:
        tracing.flush(30)
    return time.process_time() - started


def worker_task_s(tracing: Tracing | None, traceparent: str, n: int = 2000) -> float:
    """Seconds per no-op task through ``run_assignment`` (its span's export included when traced)."""
    from xpipe.worker._runtask import run_assignment

    assignment = worker_pb2.Assignment(attempt=worker_pb2.AttemptRef(run_id="r", task="t", attempt=1),
                                       traceparent=traceparent)  # fmt: skip
    assignment.task.name = "t"
    assignment.task.python.import_path = "bench.tasks:noop"
    cache: dict = {}
    started = time.process_time()
    for i in range(n):
        run_assignment(assignment, None, cache, tracing=tracing, worker_name="w0")
        if tracing is not None and i % 500 == 499:
            tracing.flush(30)  # as the batch processor would, without dropping any
    if tracing is not None:
        tracing.flush(30)
    return (time.process_time() - started) / n


def pieces_us(tracing: Tracing, repeat: int) -> dict[str, float]:
    """The pieces tracing adds to the coordinator, each timed alone (µs per task)."""
    import timeit

    from xpipe.coordinator._engine import assignment_bytes

    spec = pb.TaskSpec(name="t1", python=pb.PythonCall(import_path="bench.tasks:noop"))
    plain = Assign("w1", ("r1", "t1", 1), spec, ())
    traced = Assign("w1", ("r1", "t1", 1), spec, (), traceparent=TRACEPARENT)
    engine = Engine(store=None, config=EngineConfig(tracing=tracing))  # type: ignore[arg-type]
    batch = {TRACEPARENT: [Assign(f"w{i % 4}", ("r1", f"t{i}", 1), spec, (), traceparent=TRACEPARENT)
                           for i in range(64)]}  # fmt: skip

    def best(fn, number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6

    def one_turn() -> None:
        engine._trace_assignments(batch)

    out = {
        "assignment_bytes, untraced run": best(lambda: assignment_bytes(plain), 20000),
        "assignment_bytes, traced run": best(lambda: assignment_bytes(traced), 20000),
    }
    started = time.process_time()
    for _ in range(200):
        one_turn()
    tracing.flush(30)
    out["coordinator.assign span of a 64-task turn, with its export, per task"] = (
        (time.process_time() - started) / 200 / 64 * 1e6
    )
    # With a slot per worker most turns assign one task: the span's cost per turn is per task.
    single = {TRACEPARENT: batch[TRACEPARENT][:1]}
    started = time.process_time()
    for _ in range(2000):
        engine._trace_assignments(single)
    tracing.flush(30)
    out["coordinator.assign of a 1-task turn, with its export, per task"] = (time.process_time() - started) / 2000 * 1e6
    out["per run: SDK root span + coordinator.submit span, with their export"] = _run_spans_us(tracing)
    return out


def _run_spans_us(tracing: Tracing, runs: int = 2000) -> float:
    """CPU of the two spans each run adds on its submit path (the SDK's and the coordinator's), per run."""
    from xpipe._proto import pipeline_pb2
    from xpipe.telemetry._tracing import end_run_span, start_run_span

    started = time.process_time()
    for i in range(runs):
        if i % 500 == 499:
            tracing.flush(30)  # as the export thread would, without dropping any
        request = pipeline_pb2.SubmitPipelineRequest()
        root = start_run_span(tracing, "roundtrip", 1, request)
        span = tracing.start_span("coordinator.submit", traceparent=request.traceparent, tracestate=request.tracestate,
                                  attributes={"xpipe.pipeline": "roundtrip", "xpipe.tasks": 1})  # fmt: skip
        tracing.headers_of(span)
        span.set_attribute("xpipe.run_id", "r" * 32)
        span.end()
        end_run_span(tracing, root, run_id="r" * 32, state="RUN_SUCCEEDED")
    tracing.flush(30)
    return (time.process_time() - started) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    receiver, endpoint = _receiver()
    tracing = Tracing(TracingConfig(endpoint, "bench"))
    try:
        coordinator = {
            "untraced run, tracing off": ("", None),
            "traced run, coordinator relays (tracing off)": (TRACEPARENT, None),
            "traced run, coordinator tracing on": (TRACEPARENT, tracing),
        }
        worker = {"untraced": (None, ""), "tracing on, untraced assignment": (tracing, ""),
                  "traced": (tracing, TRACEPARENT)}  # fmt: skip
        best: dict[str, float] = {}
        for _ in range(opts.repeat):
            for label, (context, trace_to) in coordinator.items():
                key = f"coordinator, {label}"
                best[key] = min(best.get(key, 1e9), wide_run_s(context, trace_to) / TASKS)
            for label, (trace_to, parent) in worker.items():
                key = f"worker run_assignment, {label}"
                best[key] = min(best.get(key, 1e9), worker_task_s(trace_to, parent))
        for key, seconds in best.items():
            print(f"{key}: {seconds * 1e6:.2f} µs CPU/task (best of {opts.repeat})")
        for key, us in pieces_us(tracing, opts.repeat).items():
            print(f"{key}: {us:.2f} µs")
    finally:
        tracing.shutdown()
        receiver.stdin.close()
        receiver.wait(10)


if __name__ == "__main__":
    main()
