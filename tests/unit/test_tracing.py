"""Tracing set-up and the trace context's way through the coordinator (no network).

The whole path, with real processes and a real OTLP receiver, is in
tests/integration/test_tracing.py; here: tracing off costs nothing, bad values are named,
and a traced run keeps its context in the state machine and the store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import types

import pytest
from xpipe import Client, PipelineManager
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, RunRecord, RunRestored, RunSubmitted, WorkerConnected
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._store import SQLiteStore
from xpipe.coordinator._validate import validate_spec
from xpipe.telemetry._tracing import (
    ENDPOINT_ENV,
    MAX_TRACESTATE_CHARS,
    check_sample_ratio,
    check_trace_context,
    config_from_arguments,
    is_sampled,
    resolve_endpoint,
    setup_tracing,
    tracing_arguments,
)

from tests.harness import REPO_ROOT, child_env

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_with_no_endpoint_nothing_of_the_otel_sdk_is_loaded_or_installed():
    # A fresh interpreter: this one may have loaded the OTel SDK for other tests.
    program = """if True:
        import json, os, sys
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        from opentelemetry import trace
        from xpipe import Client
        from xpipe.telemetry._tracing import setup_tracing
        client = Client("127.0.0.1:1")
        print(json.dumps({
            "client": client._tracing is None,
            "setup": setup_tracing(None, service_name="x") is None,
            "provider": type(trace.get_tracer_provider()).__name__,
            "sdk_loaded": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))),
        }))
    """
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=child_env(),
                         cwd=REPO_ROOT, timeout=60, check=True)  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"client": True, "setup": True, "provider": "ProxyTracerProvider", "sdk_loaded": []}


def test_the_endpoint_argument_wins_over_the_environment_and_a_scheme_is_dropped():
    env = {ENDPOINT_ENV: "http://127.0.0.1:4317/"}
    assert resolve_endpoint(None, env) == "127.0.0.1:4317"
    assert resolve_endpoint("localhost:5555", env) == "localhost:5555"
    assert resolve_endpoint("", {}) == ""
    assert setup_tracing(None, service_name="x", environ={}) is None


@pytest.mark.parametrize("bad", ["nope", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":4317", "host:port"])
def test_a_malformed_endpoint_is_refused_naming_where_it_came_from(bad):
    with pytest.raises(ValueError, match=f"otlp_endpoint {bad!r} is not HOST:PORT"):
        resolve_endpoint(bad, {})
    with pytest.raises(ValueError, match=f"{ENDPOINT_ENV} {bad!r} is not HOST:PORT"):
        resolve_endpoint(None, {ENDPOINT_ENV: bad})
    opts = types.SimpleNamespace(otlp_endpoint=bad, trace_sample_ratio=None)
    with pytest.raises(ValueError, match=f"--otlp-endpoint {bad!r} is not HOST:PORT"):
        config_from_arguments(opts, service_name="xpipe-worker")


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_a_sample_ratio_outside_0_to_1_is_refused(bad):
    with pytest.raises(ValueError, match="trace sample ratio must be a number from 0 to 1"):
        check_sample_ratio(bad)
    opts = types.SimpleNamespace(otlp_endpoint="127.0.0.1:4317", trace_sample_ratio=bad)
    with pytest.raises(ValueError, match="--trace-sample-ratio"):
        config_from_arguments(opts, service_name="xpipe-coordinator")


def test_flags_for_the_embedded_processes():
    assert tracing_arguments(None, None) == ()
    assert tracing_arguments("127.0.0.1:4317", 0.25) == ("--otlp-endpoint", "127.0.0.1:4317", "--trace-sample-ratio", "0.25")


def test_client_and_manager_refuse_a_bad_endpoint_before_starting_anything(monkeypatch):
    with pytest.raises(ValueError, match="otlp_endpoint 'no-port' is not HOST:PORT"):
        Client("127.0.0.1:1", otlp_endpoint="no-port")
    started = []
    monkeypatch.setattr("xpipe._manager.LocalCluster.start", lambda self: started.append(self))
    with pytest.raises(ValueError, match="trace sample ratio"):
        PipelineManager(otlp_endpoint="127.0.0.1:4317", trace_sample_ratio=2)
    assert started == []


@pytest.mark.parametrize(
    ("traceparent", "tracestate", "problem"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "", "is not a W3C traceparent"),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "", "is not a W3C traceparent"),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", "", "is not a W3C traceparent"),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "", "is not a W3C traceparent"),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "", "is not a W3C traceparent"),
        ("", "k=v", "tracestate is set but traceparent is empty"),
        (TRACEPARENT, "k=" + "v" * MAX_TRACESTATE_CHARS, f"more than the {MAX_TRACESTATE_CHARS} allowed"),
    ],
)
def test_a_malformed_trace_context_is_refused_naming_the_field(traceparent, tracestate, problem):
    with pytest.raises(ValueError, match=problem):
        check_trace_context(traceparent, tracestate)


def test_a_good_trace_context_passes_and_its_sampled_flag_is_read():
    check_trace_context(TRACEPARENT, "vendor=abc")
    check_trace_context("", "")
    assert is_sampled(TRACEPARENT) and not is_sampled(TRACEPARENT[:-2] + "00") and not is_sampled("")


def _spec(trace_context: str) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name="p", trace_context=trace_context)
    spec.tasks.add(name="a").python.import_path = "m:f"
    spec.tasks.add(name="b", depends_on=["a"]).python.import_path = "m:f"
    return spec


@pytest.mark.parametrize("trace_context", ["", TRACEPARENT, TRACEPARENT + "\nvendor=abc"])
def test_each_assignment_of_a_traced_run_carries_its_traceparent(trace_context):
    s = SchedulerState(prefetch=4)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 2))
    spec = _spec(trace_context)
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    (assign,) = [a for a in s.schedule(0.0) if isinstance(a, Assign)]
    assert assign.traceparent == trace_context.partition("\n")[0]


def test_a_run_read_back_from_the_store_keeps_its_trace(tmp_path):
    """The context is part of the stored spec, so a coordinator restart keeps the run in its trace."""
    spec = _spec(TRACEPARENT + "\nvendor=abc")

    async def round_trip():
        store = SQLiteStore(tmp_path / "db.sqlite")
        await store.open()
        try:
            await store.commit([RunRecord("r1", "p", pb.RUN_RUNNING, 1.0, 0.0, 2, spec)])
            return await store.load_unfinished()
        finally:
            await store.close()

    (stored,) = asyncio.run(round_trip())
    assert stored.spec.trace_context == TRACEPARENT + "\nvendor=abc"
    s = SchedulerState(prefetch=4)
    s.handle(WorkerConnected(2.0, "w1", "w1", "host", 2))
    s.handle(RunRestored(2.0, "r1", stored.spec, tuple(validate_spec(stored.spec, restored=True)), 1.0, {}))
    (assign,) = [a for a in s.schedule(2.0) if isinstance(a, Assign)]
    assert assign.traceparent == TRACEPARENT
