"""One OpenTelemetry trace per run, across the SDK, the coordinator and the workers.

Every process sets tracing up here, the same way: a ``TracerProvider`` with a parent-based
sampler, a ``BatchSpanProcessor`` and an OTLP/gRPC exporter on a plaintext channel (meant
for a collector on loopback or a trusted network; see docs/tracing.md), for the spans
tasks open themselves; xpipe's own spans follow that provider's sampler but are written
and exported by :mod:`xpipe.telemetry._spans`, at a fraction of the SDK's cost. The context
travels as a W3C ``traceparent`` (and ``tracestate``) in the submit request, with the run,
and in each assignment.

Tracing is off unless an endpoint is given (``--otlp-endpoint``, ``otlp_endpoint=``, or
``OTEL_EXPORTER_OTLP_ENDPOINT``). Off means :func:`setup_tracing` returns None: nothing
of the OpenTelemetry SDK is imported or installed, callers keep None, and their hot
paths pay one ``is None`` (or empty-string) check per task.

The OpenTelemetry SDK reads its own environment: ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` choose the sampler when no ratio is given here, and
``OTEL_BSP_*`` tune the batch span processor (``OTEL_BSP_SCHEDULE_DELAY`` xpipe's own
exports too; its default here is 200 ms, not the SDK's 5 s).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from xpipe._proto import common_pb2

if TYPE_CHECKING:  # imported when tracing starts: off, nothing of OpenTelemetry is loaded
    from xpipe.telemetry._spans import OwnSpan, SpanBatcher

__all__ = [
    "ENDPOINT_ENV",
    "MAX_TRACESTATE_CHARS",
    "TRACEPARENT_ENV",
    "TRACESTATE_ENV",
    "Tracing",
    "TracingConfig",
    "check_trace_context",
    "is_sampled",
    "resolve_endpoint",
    "setup_tracing",
]

log = logging.getLogger(__name__)

#: The standard variable every OTLP exporter reads; honoured by all xpipe processes.
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: Where a command task finds its parent span (the convention OTel uses for processes).
TRACEPARENT_ENV = "TRACEPARENT"
TRACESTATE_ENV = "TRACESTATE"
#: W3C Trace Context: "vendors MUST propagate at least 512 characters" of tracestate; we
#: carry no more (it is stored with every traced run).
MAX_TRACESTATE_CHARS = 512
#: version-traceid-parentid-flags, lowercase hex (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: Parsed parent contexts kept (:meth:`Tracing.context_from`); a few runs' worth.
_PARENTS_KEPT = 256
#: How long a process waits for its last spans to reach the collector when it ends. A
#: healthy collector takes milliseconds; an unreachable one would hold every exit for the
#: exporter's whole retry timeout (10 s), so the wait is cut short and the loss logged.
SHUTDOWN_FLUSH_S = 2.0


def _follows_parent(sampler: Any) -> bool:
    """Whether ``sampler`` samples a span with a remote parent exactly when the parent is sampled."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    return (
        isinstance(sampler, ParentBased)
        and sampler._remote_parent_sampled is ALWAYS_ON
        and sampler._remote_parent_not_sampled is ALWAYS_OFF
    )


def resolve_endpoint(endpoint: str | None, environ: Mapping[str, str] = os.environ, *, name: str = "otlp_endpoint") -> str:
    """The OTLP endpoint as ``HOST:PORT``: ``endpoint`` if given, else the environment; "" when off.

    A scheme (``http://``, as the OTel env var is often written) is dropped: the channel
    is plaintext gRPC either way.

    Raises:
        ValueError: the value is not ``HOST:PORT`` (the message names where it came from).
    """
    source = name
    if not endpoint:
        endpoint = environ.get(ENDPOINT_ENV, "")
        source = ENDPOINT_ENV
    endpoint = endpoint.strip()
    if not endpoint:
        return ""
    address = re.sub(r"^[a-z]+://", "", endpoint).rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{source} {endpoint!r} is not HOST:PORT (e.g. 127.0.0.1:4317)")
    return address


def check_sample_ratio(ratio: float | None) -> float | None:
    """``ratio`` if it is a number in [0, 1] (or None: the OTel environment decides).

    Raises:
        ValueError: out of range or not a number.
    """
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"trace sample ratio must be a number from 0 to 1, got {ratio!r}")
    return float(ratio)


def check_trace_context(traceparent: str, tracestate: str = "") -> None:
    """Refuse a malformed W3C context, naming the field, so a client bug is not silently untraced.

    Raises:
        ValueError: ``traceparent`` is not ``00-<32 hex>-<16 hex>-<2 hex>`` (ids not all
            zero), or ``tracestate`` comes without it or is too long.
    """
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent)
        if match is None or traceparent.startswith("ff") or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
            raise ValueError(
                f"traceparent {traceparent[:80]!r} is not a W3C traceparent "
                "(version-traceid-spanid-flags in lowercase hex, e.g. 00-<32 hex>-<16 hex>-01)"
            )
    if tracestate:
        if not traceparent:
            raise ValueError("tracestate is set but traceparent is empty; send both or neither")
        if len(tracestate) > MAX_TRACESTATE_CHARS:
            raise ValueError(f"tracestate has {len(tracestate)} chars, more than the {MAX_TRACESTATE_CHARS} allowed")


def is_sampled(traceparent: str) -> bool:
    """Whether a (valid) traceparent's sampled flag is set: only those get spans downstream."""
    return bool(traceparent) and int(traceparent[-2:], 16) & 1 == 1


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """How one process exports spans; JSON-able so the worker hands it to its executor children."""

    #: ``HOST:PORT`` of an OTLP/gRPC receiver (a collector); plaintext.
    endpoint: str
    #: ``service.name`` of this process's spans.
    service_name: str
    #: Parent-based ratio sampler; None leaves it to ``OTEL_TRACES_SAMPLER`` (default: parent-based, 1.0).
    sample_ratio: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TracingConfig | None:
        return cls(**json.loads(text)) if text else None


class Tracing:
    """A tracer provider exporting over OTLP/gRPC through a batch span processor.

    Args:
        config: where and how to export.
        install_global: also make it the process's global provider, so that code using the
            plain OTel API (``trace.get_tracer(...)``, as tasks do) exports through it. The
            SDK leaves the global alone: it belongs to the user's application.
    """

    def __init__(self, config: TracingConfig, *, install_global: bool = False):
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from xpipe.telemetry import _spans

        self.config = config
        sampler = None if config.sample_ratio is None else ParentBased(TraceIdRatioBased(config.sample_ratio))
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": config.service_name}
        self.provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes), shutdown_on_exit=False)
        # The SDK's default delay (5 s) would hold a short run's spans back; ours is 200 ms.
        delay = {} if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else {"schedule_delay_millis": _spans.DEFAULT_SCHEDULE_DELAY_MS}
        exporter = OTLPSpanExporter(endpoint=config.endpoint, insecure=True)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, **delay))
        if install_global:
            trace.set_tracer_provider(self.provider)
        self.tracer = self.provider.get_tracer("xpipe")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._context = otel_context
        self._parents: dict[tuple[str, str], Any] = {}
        self._closed = False
        # Task and assign spans skip the SDK (see _spans); they follow its sampler and switch.
        self._disabled = self.provider._disabled  # OTEL_SDK_DISABLED=true
        self._follow_parent = _follows_parent(self.provider.sampler)
        self._batcher: SpanBatcher | None = None
        self._task_parents: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[int, int, bool, bytes]] = {}
        self._sampled_flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._spans = _spans

    def context_from(self, traceparent: str, tracestate: str = "") -> Any:
        """An OTel Context whose current span is the remote one ``traceparent`` names (or none).

        Memoized: every task of a run has the same parent, and parsing it costs ~20 µs.
        """
        if not traceparent:
            return None
        key = (traceparent, tracestate)
        context = self._parents.get(key)
        if context is None:
            carrier = {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}
            context = self._propagator.extract(carrier)
            if len(self._parents) >= _PARENTS_KEPT:
                self._parents.clear()
            self._parents[key] = context
        return context

    def headers_of(self, span: OwnSpan) -> tuple[str, str]:
        """``(traceparent, tracestate)`` of ``span``, to send downstream."""
        return span.traceparent, span.tracestate

    def start_span(
        self, name: str, *, traceparent: str = "", tracestate: str = "", use_current: bool = False,
        attributes: dict[str, Any] | None = None, start_time: int | None = None,
    ) -> OwnSpan:  # fmt: skip
        """Start one of xpipe's spans under ``traceparent`` (or the current span if ``use_current``, else a new trace).

        An :class:`OwnSpan`, not an SDK span: the SDK's cost ~130 µs a span, made, encoded
        and exported, on the path of every submit (docs/tracing.md, "Cost"). It is sampled
        as the SDK's sampler decides, and not recorded when not sampled.
        """
        attributes = dict(attributes or {})
        parent_id, sampled_flag, remote = 0, False, True
        if traceparent:
            trace_id, parent_id, sampled_flag = int(traceparent[3:35], 16), int(traceparent[36:52], 16), is_sampled(traceparent)
        elif use_current:
            current = self._trace.get_current_span().get_span_context()
            if current.is_valid:
                trace_id, parent_id, sampled_flag = current.trace_id, current.span_id, current.trace_flags.sampled
                tracestate, remote = current.trace_state.to_header(), current.is_remote
        if not parent_id:
            trace_id = self._spans.new_trace_id()
        if self._disabled:
            sampled = False
        elif parent_id and self._follow_parent and remote:
            sampled = sampled_flag
        else:  # a root, or a sampler that is not the default: it decides
            if traceparent:
                context = self.context_from(traceparent, tracestate)
            elif parent_id:
                context = None  # the current one
            else:
                context = self._context.Context()  # a root: no ambient span of this process
            decision = self.provider.sampler.should_sample(context, trace_id, name, attributes=attributes)
            sampled = decision.decision.is_sampled()
        return self._spans.OwnSpan(
            trace_id, self._spans.new_span_id(), parent_id, name, attributes, sampled=sampled, tracestate=tracestate,
            sink=self.batcher.add, start_ns=start_time,
        )  # fmt: skip

    def activate(self, span: OwnSpan) -> object:
        """Make ``span`` current (code's own spans become its children); :meth:`deactivate` undoes it.

        Not a context manager: this runs once per traced task, and a generator-based one
        costs a few µs more.
        """
        flags = self._sampled_flags if span.sampled else self._trace.TraceFlags(0)
        context = self._trace.SpanContext(span.trace_id, span.span_id, False, flags)
        return self._context.attach(self._trace.set_span_in_context(self._trace.NonRecordingSpan(context)))

    def deactivate(self, token: object) -> None:
        self._context.detach(token)

    def set_error(self, span: OwnSpan, description: str) -> None:
        """Status ERROR with ``description`` (the OTel way to mark a failed operation)."""
        span.set_error(description)

    @property
    def batcher(self) -> SpanBatcher:
        """The exporter of xpipe's own spans (:mod:`xpipe.telemetry._spans`), started on first use."""
        if self._batcher is None:
            self._batcher = self._spans.SpanBatcher(self.config.endpoint, dict(self.provider.resource.attributes))
        return self._batcher

    def _sampled(self, traceparent: str, trace_id: int, name: str) -> bool:
        """Whether a span under the remote ``traceparent`` is sampled, as the SDK's sampler decides.

        The default (parent-based) sampler follows the parent's flag; any other asks the sampler.
        """
        if self._disabled:
            return False
        if self._follow_parent:
            return is_sampled(traceparent)
        decision = self.provider.sampler.should_sample(self.context_from(traceparent), trace_id, name)
        return decision.decision.is_sampled()

    def start_task_span(
        self, name: str, traceparent: str, attributes: dict[str, Any], shared: tuple[tuple[str, Any], ...] = ()
    ) -> tuple[OwnSpan | None, object]:
        """Start a task's span under ``traceparent`` and make it current; return it (None: not sampled) and a token.

        An :class:`OwnSpan`, not an SDK span (docs/tracing.md, "Cost"): what is current while
        the task runs is a ``NonRecordingSpan`` with its ids, so spans the task opens with
        the OTel API are its children. An unsampled attempt makes its remote parent current,
        so the task's own spans are not sampled either. Undo with :meth:`deactivate`, then
        end the span.

        Args:
            attributes: the span's own attributes.
            shared: more attributes, the same for many spans (the run's, the worker's):
                encoded once and memoized with the parsed ``traceparent``.
        """
        parent = self._task_parents.get((traceparent, shared))
        if parent is None:
            trace_id = int(traceparent[3:35], 16)
            sampled = self._sampled(traceparent, trace_id, name)
            parent = (trace_id, int(traceparent[36:52], 16), sampled, self._spans.encode_attributes(dict(shared)))
            if len(self._task_parents) >= _PARENTS_KEPT:
                self._task_parents.clear()
            if self._follow_parent or self._disabled:  # else the sampler may decide per span
                self._task_parents[(traceparent, shared)] = parent
        trace_id, parent_id, sampled, encoded = parent
        if not sampled:
            return None, self._context.attach(self.context_from(traceparent))
        span = self._spans.OwnSpan(
            trace_id, self._spans.new_span_id(), parent_id, name, attributes, encoded, sink=self.batcher.add
        )
        context = self._trace.SpanContext(trace_id, span.span_id, False, self._sampled_flags)
        return span, self._context.attach(self._trace.set_span_in_context(self._trace.NonRecordingSpan(context)))

    def note_assigned(self, traceparent: str, run_id: str, pipeline: str, names: list[str], count: int) -> None:
        """Note a run's assignments of this turn for its ``coordinator.assign`` span (one per run and export)."""
        if self._follow_parent and not self._disabled:
            sampled = is_sampled(traceparent)  # the default sampler: no parsing on each turn
        else:
            sampled = self._sampled(traceparent, int(traceparent[3:35], 16), "coordinator.assign")
        if sampled:
            self.batcher.note_assigned(traceparent, run_id, pipeline, names, count, time.time_ns())

    def flush(self, timeout_s: float = SHUTDOWN_FLUSH_S) -> bool:
        """Export what is queued, waiting at most ``timeout_s``; False if that was not enough.

        Bounded on a helper thread: the SDK's ``force_flush`` ignores its timeout.
        """
        if self._closed:
            return True
        started = time.monotonic()
        flusher = threading.Thread(target=self.provider.force_flush, name="xpipe-span-flush-now", daemon=True)
        flusher.start()
        flusher.join(timeout_s)
        done = not flusher.is_alive()
        if self._batcher is not None:
            done = self._batcher.flush(max(0.0, timeout_s - (time.monotonic() - started))) and done
        if not done:
            log.warning("spans not all exported within %g s; is the collector at %s reachable?",
                        timeout_s, self.config.endpoint)  # fmt: skip
            return False
        return True

    def shutdown(self, timeout_s: float = SHUTDOWN_FLUSH_S) -> None:
        """Export what is left and stop, waiting at most ``timeout_s`` (idempotent).

        Bounded on a helper thread because the SDK's own shutdown waits for the exporter,
        which retries for its whole timeout when the collector is unreachable.
        """
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        closer = threading.Thread(target=self.provider.shutdown, name="xpipe-span-shutdown", daemon=True)
        closer.start()
        done = True
        if self._batcher is not None:  # both export at once: the wait is one timeout, not two
            done = self._batcher.shutdown(timeout_s)
        closer.join(max(0.0, timeout_s - (time.monotonic() - started)))
        if closer.is_alive() or not done:
            log.warning("spans not all exported within %g s of shutdown; is the collector at %s reachable?",
                        timeout_s, self.config.endpoint)  # fmt: skip


#: The SDK's tracings, one per configuration and process (see :func:`setup_tracing`).
_SHARED: dict[TracingConfig, Tracing] = {}
_SHARED_LOCK = threading.Lock()


def setup_tracing(
    endpoint: str | None,
    *,
    service_name: str,
    sample_ratio: float | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Tracing | None:
    """The process's tracing for this configuration, or None (off) when no endpoint is given nor set.

    Shared: every ``Client`` of a process with the same settings uses one tracer provider
    and its one export thread, however many clients a program makes; it is shut down
    (bounded) when the interpreter exits, so a program that never closes its client still
    sends its last spans.

    Raises:
        ValueError: a malformed endpoint or ratio (the message names it).
    """
    resolved = resolve_endpoint(endpoint, environ)
    ratio = check_sample_ratio(sample_ratio)
    if not resolved:
        return None
    config = TracingConfig(resolved, service_name, ratio)
    with _SHARED_LOCK:
        tracing = _SHARED.get(config)
        if tracing is None:
            log.info("exporting traces over OTLP/gRPC to %s (plaintext)", resolved)
            tracing = _SHARED[config] = Tracing(config)
            atexit.register(tracing.shutdown)
    return tracing


def add_tracing_arguments(parser: Any) -> None:
    """``--otlp-endpoint`` and ``--trace-sample-ratio``, the same on every xpipe binary."""
    parser.add_argument("--otlp-endpoint", default="", metavar="HOST:PORT",
                        help=f"export traces over OTLP/gRPC (plaintext) to this collector (default: ${ENDPOINT_ENV}; "
                             "none: tracing off)")  # fmt: skip
    parser.add_argument("--trace-sample-ratio", type=float, default=None, metavar="RATIO",
                        help="sample this share of new traces, 0 to 1 (parent-based: a run's trace is kept or "
                             "dropped as a whole); default: $OTEL_TRACES_SAMPLER, else 1.0")  # fmt: skip


def config_from_arguments(opts: Any, *, service_name: str) -> TracingConfig | None:
    """The parsed ``--otlp-endpoint`` and ``--trace-sample-ratio`` (or the environment); None: off.

    Raises:
        ValueError: a malformed value (the message names the flag or variable).
    """
    try:
        ratio = check_sample_ratio(opts.trace_sample_ratio)
    except ValueError as exc:
        raise ValueError(f"--trace-sample-ratio: {exc}") from None
    endpoint = resolve_endpoint(opts.otlp_endpoint, name="--otlp-endpoint")
    return TracingConfig(endpoint, service_name, ratio) if endpoint else None


def tracing_from_arguments(opts: Any, *, service_name: str) -> Tracing | None:
    """:class:`Tracing` from the parsed flags (see :func:`config_from_arguments`); None: off."""
    config = config_from_arguments(opts, service_name=service_name)
    if config is None:
        return None
    log.info("exporting traces over OTLP/gRPC to %s (plaintext)", config.endpoint)
    return Tracing(config)


# ---- the SDK's root span ---------------------------------------------------------------


def start_run_span(tracing: Tracing, pipeline: str, tasks: int, request: Any) -> Any:
    """Start the root span ``run <pipeline>`` and put its context in the submit ``request``.

    The caller's current span, if any (from the application's own tracer provider), is
    its parent, so a run submitted inside a traced request joins that trace.
    """
    span = tracing.start_span(
        f"run {pipeline}", use_current=True, attributes={"xpipe.pipeline": pipeline, "xpipe.tasks": tasks}
    )
    request.traceparent, request.tracestate = tracing.headers_of(span)
    return span


def end_run_span(tracing: Tracing, span: Any, *, run_id: str = "", state: str = "", error: BaseException | None = None) -> None:
    """End the root span with what is known of the run: its id, its end state, or the error that broke the call."""
    if run_id:
        span.set_attribute("xpipe.run_id", run_id)
    if state:
        span.set_attribute("xpipe.run_state", state)
        if state != "RUN_SUCCEEDED":
            tracing.set_error(span, f"the run ended {state}")
    if error is not None:
        span.record_exception(error)
        tracing.set_error(span, f"{type(error).__name__}: {error}")
    span.end()


def follow_run_span(tracing: Tracing, span: Any, events: Iterator[Any], terminal: frozenset[int]) -> Iterator[Any]:
    """Pass ``events`` (``RunEvent``\\ s) through; end ``span`` when the run ends or the caller stops.

    A waiting caller's root span thus lasts as long as the run, as seen by the SDK.
    """
    run_id = state = ""
    error: BaseException | None = None
    try:
        for event in events:
            run_id = event.summary.run_id or run_id
            if event.summary.state in terminal:
                state = common_pb2.RunState.Name(event.summary.state)
            yield event
    except Exception as exc:
        error = exc
        raise
    finally:
        end_run_span(tracing, span, run_id=run_id, state=state, error=error)


def tracing_arguments(endpoint: str | None, sample_ratio: float | None) -> tuple[str, ...]:
    """The flags that give a child process (the embedded default's) the same tracing; checks both.

    Raises:
        ValueError: a malformed endpoint or ratio (the message names it).
    """
    resolved = resolve_endpoint(endpoint, {})  # the environment reaches children by itself
    ratio = check_sample_ratio(sample_ratio)
    args = ("--otlp-endpoint", resolved) if resolved else ()
    return args + (("--trace-sample-ratio", repr(ratio)) if ratio is not None else ())
