"""Serve a process's metrics as Prometheus text on ``/metrics`` (``--metrics-listen``).

Both daemons use this: an OpenTelemetry ``MeterProvider`` with one
``PrometheusMetricReader``, whose collector sits in a private ``prometheus_client``
registry served over HTTP from a thread. Nothing is written by hand: the exporter
turns OTel data into Prometheus families and ``prometheus_client`` writes the text.

Why a bridge for histograms: an OTel SDK ``Histogram.record`` costs ~9 µs on this
machine (attribute hashing, a lock, a bisect), while the coordinator spends ~110 µs of
CPU on a whole task. Recording two histograms and a counter per task would cost the
scheduler ~25%. So hot-path histograms are :class:`BucketHistogram` objects (plain
ints, ~0.2 µs per value) that the reader turns into OTel ``Histogram`` data at scrape
time (:class:`_BridgingReader`); counters and gauges are OTel observable instruments
whose callbacks read plain ints at scrape time. Metrics off: none of this is built.

Example::

    endpoint = start_metrics("127.0.0.1:0", service="xpipe-worker")
    meter = endpoint.meter
    meter.create_observable_gauge("xpipe_worker_slots", callbacks=[...])
    ...
    endpoint.stop()
"""

from __future__ import annotations

import bisect
import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from xpipe._domain import VERSION

from ._listen import METRICS_PATH, MetricsListenError, parse_listen

__all__ = ["OVERFLOW", "BucketHistogram", "LastValueGauge", "MetricsEndpoint", "start_metrics"]

log = logging.getLogger(__name__)

#: Distinct label sets one histogram keeps by default; past it values go to the overflow
#: series, so a scrape stays bounded. Half OpenTelemetry's default cardinality limit (2,000):
#: a scrape costs ~0.18 ms of the coordinator's CPU per histogram series (docs/metrics.md).
DEFAULT_MAX_SERIES = 1_000
#: The label tuple of the overflow series, exported as OpenTelemetry's
#: ``otel.metric.overflow="true"`` (``otel_metric_overflow`` in the scrape).
OVERFLOW = ("__overflow__",)

_SCOPE = InstrumentationScope("xpipe")


class BucketHistogram:
    """A cumulative histogram per label set, kept as plain ints (cheap on the hot path).

    Args:
        bounds: upper bounds of the buckets (ascending); a last +Inf bucket is implied.
        max_series: distinct label sets kept; past it, values of a new set go to one
            overflow series (:data:`OVERFLOW`), as OpenTelemetry's cardinality limit does.
    """

    __slots__ = ("bounds", "max_series", "overflowed", "series")

    def __init__(self, bounds: Sequence[float], *, max_series: int = DEFAULT_MAX_SERIES):
        if list(bounds) != sorted(bounds):
            raise ValueError(f"histogram bounds must be ascending, got {list(bounds)}")
        self.bounds = tuple(bounds)
        #: label values -> [count per bucket..., +Inf count, sum, min, max]
        self.series: dict[tuple, list] = {}
        self.max_series = max_series
        #: Values that went to the overflow series.
        self.overflowed = 0

    def observe(self, labels: tuple, value: float) -> None:
        """Count ``value`` under ``labels`` (under :data:`OVERFLOW` past the cap).

        No lock: the engine's loop is the only writer and a scrape copies each series
        list in one C-level step; at worst a scrape sees a bucket one value ahead of the
        sum, which the next scrape makes right.
        """
        cells = self.series.get(labels)
        if cells is None:
            if len(self.series) >= self.max_series:
                self.overflowed += 1
                labels = OVERFLOW
                cells = self.series.get(OVERFLOW)
            if cells is None:
                cells = self.series[labels] = [0] * (len(self.bounds) + 1) + [0.0, value, value]
        cells[bisect.bisect_left(self.bounds, value)] += 1
        cells[-3] += value
        if value < cells[-2]:
            cells[-2] = value
        elif value > cells[-1]:
            cells[-1] = value

    def snapshot(self) -> list[tuple[tuple, list]]:
        return [(k, list(v)) for k, v in list(self.series.items())]

    def count(self, labels: tuple) -> int:
        """Values counted under ``labels`` (0 for an unknown set)."""
        cells = self.series.get(labels)
        return 0 if cells is None else sum(cells[: len(self.bounds) + 1])


class LastValueGauge:
    """The last value per label set (its caller bounds the label sets)."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[tuple, float] = {}

    def set(self, labels: tuple, value: float) -> None:
        self.series[labels] = value

    def snapshot(self) -> list[tuple[tuple, float]]:
        return list(self.series.items())  # one C-level copy: safe against the loop's writes


@dataclass(frozen=True, slots=True)
class BridgedMetric:
    """How one plain-int instrument appears in the scrape.

    ``label_names`` name the label tuple's positions; a label tuple may carry one more
    item, a tuple of extra ``(key, value)`` pairs (a task point's own labels).
    """

    name: str
    description: str
    unit: str
    label_names: tuple[str, ...]
    source: BucketHistogram | LastValueGauge


def _attributes(names: tuple[str, ...], labels: tuple) -> dict[str, str]:
    if labels == OVERFLOW:
        return {"otel.metric.overflow": "true"}
    attrs = dict(zip(names, labels))
    if len(labels) > len(names):
        attrs.update(labels[len(names)])
    return attrs


def _to_otel(metric: BridgedMetric, start_ns: int, now_ns: int) -> Metric | None:
    source = metric.source
    if isinstance(source, BucketHistogram):
        n = len(source.bounds) + 1
        points = [
            HistogramDataPoint(
                attributes=_attributes(metric.label_names, labels), start_time_unix_nano=start_ns,
                time_unix_nano=now_ns, count=sum(cells[:n]), sum=cells[-3], bucket_counts=cells[:n],
                explicit_bounds=source.bounds, min=cells[-2], max=cells[-1], exemplars=[],
            )
            for labels, cells in source.snapshot()
        ]
        data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
    else:
        points = [
            NumberDataPoint(
                attributes=_attributes(metric.label_names, labels), start_time_unix_nano=start_ns,
                time_unix_nano=now_ns, value=value, exemplars=[],
            )
            for labels, value in source.snapshot()
        ]
        data = Gauge(data_points=points)
    if not points:
        return None
    return Metric(name=metric.name, description=metric.description, unit=metric.unit, data=data)


class _BridgingReader(PrometheusMetricReader):
    """A Prometheus reader that also exports the plain-int instruments, as OTel data.

    ``_receive_metrics`` is where a ``MetricReader`` gets each collection; the bridged
    metrics are appended there as one more scope, so the exporter translates them like
    any SDK metric (the same naming, unit suffixes and label rules).
    """

    def __init__(self, registry: CollectorRegistry, resource: Resource):
        super().__init__(registry=registry, scope_info_enabled=False)
        self.bridged: list[BridgedMetric] = []
        self._resource = resource
        self._start_ns = time.time_ns()

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> None:
        now_ns = time.time_ns()
        extra = [m for m in (_to_otel(b, self._start_ns, now_ns) for b in self.bridged) if m is not None]
        if extra:
            scope = ScopeMetrics(scope=_SCOPE, metrics=extra, schema_url="")
            ours = ResourceMetrics(resource=self._resource, scope_metrics=[scope], schema_url="")
            metrics_data = MetricsData(resource_metrics=[*metrics_data.resource_metrics, ours])
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class _QuietHandler(WSGIRequestHandler):
    """Scrapes come every few seconds: log them at DEBUG, not on stderr."""

    def log_message(self, format: str, *args) -> None:
        log.debug("metrics %s - %s", self.address_string(), format % args)


def _only_metrics(app: Callable) -> Callable:
    """The exposition app on ``/metrics``; 404 for any other path."""

    def serve(environ: dict, start_response: Callable):
        if environ.get("PATH_INFO", "") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: metrics are served on {METRICS_PATH}\n".encode()]
        return app(environ, start_response)

    return serve


class MetricsEndpoint:
    """A meter provider and the HTTP server that serves its metrics (see :func:`start_metrics`)."""

    def __init__(self, provider: MeterProvider, reader: _BridgingReader, server: ThreadingWSGIServer, address: str):
        self.provider = provider
        self.meter = provider.get_meter("xpipe")
        self._reader = reader
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="xpipe-metrics-http", daemon=True)
        self._thread.start()
        #: ``HOST:PORT`` actually bound (the port is the real one when 0 was asked).
        self.address = address
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.address}{METRICS_PATH}"

    def bridge(self, name: str, source: BucketHistogram | LastValueGauge, *, description: str, unit: str = "",
               labels: Sequence[str] = ()) -> None:  # fmt: skip
        """Export a plain-int instrument as ``name`` (the exporter adds unit suffixes)."""
        self._reader.bridged.append(BridgedMetric(name, description, unit, tuple(labels), source))

    def stop(self) -> None:
        """Stop serving and shut the provider down (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.provider.shutdown()


def start_metrics(listen: str, *, service: str) -> MetricsEndpoint:
    """Serve Prometheus text for a new meter provider on ``listen`` (``HOST:PORT``, port 0 allowed).

    Raises:
        MetricsListenError: a bad address, or one that cannot be bound (in use, not
            ours); its message names the address, one line for the operator.
    """
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    try:
        server = make_server(host, port, _only_metrics(make_wsgi_app(registry)), ThreadingWSGIServer,
                             handler_class=_QuietHandler)  # fmt: skip
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise MetricsListenError(f"--metrics-listen {listen}: cannot serve metrics there: {why}") from None
    server.daemon_threads = True
    resource = Resource.create({"service.name": service})
    reader = _BridgingReader(registry, resource)
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    bound_host, bound_port = server.server_address[:2]
    endpoint = MetricsEndpoint(provider, reader, server, f"{bound_host}:{bound_port}")
    # Prometheus' build-info pattern; it also means every collection has SDK data, which
    # is what makes the reader hand a collection (and so the bridged metrics) on.
    endpoint.meter.create_observable_gauge(
        "xpipe_build_info", [lambda _: [Observation(1, {"version": VERSION})]],
        description="Always 1; the version of xpipe is its label",
    )  # fmt: skip
    log.info("metrics served on %s", endpoint.url)
    return endpoint
