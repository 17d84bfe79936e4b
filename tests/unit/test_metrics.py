"""The coordinator's metrics fed by the real state machine, served on a real HTTP endpoint.

No cluster here: events go into a real :class:`SchedulerState`, each "turn" is handed to
:meth:`CoordinatorMetrics.turn` as the engine does, and the counts are read back by
scraping ``/metrics`` over HTTP and parsing it with ``prometheus_client``'s parser.
"""

from __future__ import annotations

import gc
import json
import math
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import (
    Assign,
    CancelRequested,
    HeartbeatPaceChanged,
    RunSubmitted,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Tick,
    WorkerConnected,
)
from xpipe.coordinator._metrics import MAX_SERIES_PER_NAME, CoordinatorMetrics
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec
from xpipe.telemetry._export import BucketHistogram, start_metrics
from xpipe.telemetry._listen import MetricsListenError, parse_listen

from tests.helpers_metrics import scrape, value

ROOT = Path(__file__).resolve().parents[2]


class Driver:
    """A state machine and its metrics, stepped in turns like the engine does."""

    def __init__(self, endpoint):
        self.state = SchedulerState(prefetch=0, heartbeat_timeout_s=10.0)
        self.metrics = CoordinatorMetrics(endpoint, lambda: self.state)
        self.now = 100.0

    def turn(self, *events) -> list:
        actions: list = []
        for ev in events:
            self.state.handle(ev, actions)
        self.state.schedule(self.now, actions)
        sent = [a for a in actions if isinstance(a, Assign)]
        per_worker = Counter(a.worker_id for a in sent)
        if per_worker:  # as Engine._dispatch: one batch per worker
            self.metrics.dispatched(per_worker.values())
        self.metrics.turn(actions, self.state.runs, self.now, 0.002)
        return sent


@pytest.fixture
def endpoint():
    ep = start_metrics("127.0.0.1:0", service="test")
    yield ep
    ep.stop()


def _spec(name: str, tasks: dict[str, dict]) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name=name, retry_on_failure=True)
    for task, opts in tasks.items():
        t = spec.tasks.add(name=task, depends_on=opts.get("deps", []))
        t.python.import_path = "m:f"
        t.retry.max_retries = opts.get("retries", 0)
        t.retry.retry_delay_s = 0.5
    return spec


def _error(kind: str) -> pb.TaskError:
    return pb.TaskError(type=pb.ErrorType.Value(f"ERROR_TYPE_{kind}"), message=kind.lower())


def test_each_attempt_is_counted_once_by_outcome(endpoint):
    d = Driver(endpoint)
    spec = _spec("etl", {
        "ok": {}, "bad": {}, "after_bad": {"deps": ["bad"]}, "flaky": {"retries": 1}, "slow": {}, "skip": {},
        "long": {},
    })  # fmt: skip
    d.turn(WorkerConnected(d.now, "w1", "w1", "h", 10))
    sent = d.turn(RunSubmitted(d.now, "r1", spec, tuple(validate_spec(spec))))
    by_task = {a.attempt[1]: a.attempt for a in sent}
    assert set(by_task) == {"ok", "bad", "flaky", "slow", "skip", "long"}
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_dispatch_batch_size_sum") == 6  # one batch of six to w1
    assert value(samples, "xpipe_dispatch_batch_size_count") == 1
    assert value(samples, "xpipe_ready_tasks") == 0 and value(samples, "xpipe_runs_active") == 1
    d.now += 1
    d.turn(TaskStarted(d.now, "w1", by_task["long"], d.now - 0.5))
    started = d.now - 1
    d.now += 1
    payload = pb.Payload(codec=pb.CODEC_RAW, data=b"v")
    retried = d.turn(
        TaskSucceeded(d.now, "w1", by_task["ok"], d.now, payload, started_at=started),
        TaskFailed(d.now, "w1", by_task["bad"], d.now, _error("TASK_FAILURE"), started_at=started),
        TaskFailed(d.now, "w1", by_task["flaky"], d.now, _error("TASK_FAILURE"), started_at=started),
        TaskFailed(d.now, "w1", by_task["slow"], d.now, _error("TIMEOUT"), started_at=started),
        TaskSucceeded(d.now, "w1", by_task["skip"], d.now, pb.Payload(), started_at=started, skipped=True),
    )
    assert retried == []  # flaky waits out its backoff
    d.now += 1
    (again,) = d.turn(Tick(d.now))
    d.turn(TaskSucceeded(d.now, "w1", again.attempt, d.now, payload, started_at=d.now - 0.25))
    d.turn(CancelRequested(d.now, "r1"))  # "long" is still running: its attempt ends cancelled
    # A forced failure of the finished run re-emits every task's record: nothing more is counted.
    d.metrics.turn(d.state.fail_run("r1", "test", d.now), d.state.runs, d.now, -1)
    samples = scrape(endpoint.url)
    counted = {o: value(samples, "xpipe_task_attempts_total", pipeline="etl", outcome=o)
               for o in ("succeeded", "failed", "timeout", "cancelled", "skipped")}  # fmt: skip
    assert counted == {"succeeded": 2, "failed": 2, "timeout": 1, "cancelled": 1, "skipped": 1}
    assert value(samples, "xpipe_task_duration_seconds_count", pipeline="etl", task="flaky") == 2
    assert value(samples, "xpipe_task_duration_seconds_sum", pipeline="etl", task="flaky") == pytest.approx(2.25)
    assert value(samples, "xpipe_task_duration_seconds_count", pipeline="etl", task="long") == 0  # cancelled
    assert value(samples, "xpipe_task_duration_seconds_count", pipeline="etl", task="after_bad") == 0  # never ran
    assert value(samples, "xpipe_task_queue_wait_seconds_count", pipeline="etl") == 7
    assert value(samples, "xpipe_store_commit_seconds_count") == 7  # every Driver.turn but the forced one
    assert value(samples, "xpipe_runs_active") == 0 and value(samples, "xpipe_ready_tasks") == 0
    assert value(samples, "xpipe_workers", state="ready") == 1 and value(samples, "xpipe_workers", state="lost") == 0


def test_a_requeued_attempt_counts_no_outcome_and_waits_again(endpoint):
    d = Driver(endpoint)
    spec = _spec("p", {"a": {}})
    d.turn(WorkerConnected(d.now, "w1", "w1", "h", 1))
    (first,) = d.turn(RunSubmitted(d.now, "r1", spec, tuple(validate_spec(spec))))
    d.now += 30  # no heartbeat: w1 is lost and the attempt goes back to READY
    assert d.turn(Tick(d.now)) == []
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_ready_tasks") == 1 and value(samples, "xpipe_workers", state="lost") == 1
    (second,) = d.turn(WorkerConnected(d.now, "w2", "w2", "h", 1))
    d.turn(TaskSucceeded(d.now + 1, "w1", first.attempt, d.now + 1, pb.Payload(), started_at=d.now))  # stale
    d.turn(TaskSucceeded(d.now + 3, "w2", second.attempt, d.now + 3, pb.Payload(), started_at=d.now + 2))
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_task_attempts_total", pipeline="p", outcome="succeeded") == 1
    assert value(samples, "xpipe_task_queue_wait_seconds_sum", pipeline="p") == pytest.approx(2.0)


def _telemetry(*points: pb.MetricPoint) -> pb.TaskTelemetry:
    return pb.TaskTelemetry(metrics=list(points))


def test_task_points_are_exported_and_bad_ones_dropped_by_reason(endpoint):
    m = Driver(endpoint).metrics
    m.task_telemetry("etl", "load", _telemetry(
        pb.MetricPoint(name="rows", value=10, labels={"table": "users"}, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="rows", value=30, labels={"table": "users"}, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="data_quality_score", value=0.9, kind=pb.METRIC_KIND_TRACKED),
        pb.MetricPoint(name="revenue_impact", value=1200.5, kind=pb.METRIC_KIND_BUSINESS),
        pb.MetricPoint(name="bad-name", value=1, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="nan", value=math.nan, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="clash", value=1, labels={"pipeline": "x"}, kind=pb.METRIC_KIND_CUSTOM),
        pb.MetricPoint(name="long", value=1, labels={"k": "v" * 500}, kind=pb.METRIC_KIND_CUSTOM),
    ))  # fmt: skip
    samples = scrape(endpoint.url)
    users = {"name": "rows", "pipeline": "etl", "task": "load", "table": "users"}
    assert value(samples, "xpipe_custom_metric", **users) == 30  # the last value
    assert value(samples, "xpipe_custom_metric_value_count", **users) == 2
    assert value(samples, "xpipe_custom_metric_value_sum", **users) == 40
    quality = {"name": "data_quality_score", "pipeline": "etl", "task": "load", "table": ""}
    assert value(samples, "xpipe_custom_metric", **quality) == 0.9
    revenue = {"name": "revenue_impact", "pipeline": "etl", "task": "load"}
    assert value(samples, "xpipe_business_metric", **revenue) == 1200.5
    assert value(samples, "xpipe_business_metric_value_count", **revenue) == 1
    for reason, n in (("invalid_name", 1), ("invalid_value", 1), ("invalid_labels", 2), ("series_limit", 0)):
        assert value(samples, "xpipe_metric_points_dropped_total", reason=reason) == n, reason


def test_series_per_name_are_capped_and_the_rest_dropped(endpoint):
    m = Driver(endpoint).metrics
    points = [pb.MetricPoint(name="per_user", value=i, labels={"user": str(i)}) for i in range(MAX_SERIES_PER_NAME + 5)]
    m.task_telemetry("p", "t", _telemetry(*points))
    m.task_telemetry("p", "t", _telemetry(pb.MetricPoint(name="per_user", value=7, labels={"user": "3"})))
    m.task_telemetry("p", "t", _telemetry(pb.MetricPoint(name="other", value=1)))  # another name has room
    samples = scrape(endpoint.url)
    kept = [k for k in samples if k[0] == "xpipe_custom_metric" and ("name", "per_user") in k[1]]
    assert len(kept) == MAX_SERIES_PER_NAME
    assert value(samples, "xpipe_custom_metric", name="per_user", pipeline="p", task="t", user="3") == 7
    assert value(samples, "xpipe_custom_metric", name="other", pipeline="p", task="t", user="") == 1
    assert value(samples, "xpipe_metric_points_dropped_total", reason="series_limit") == 5


def test_only_the_metrics_path_is_served(endpoint):
    assert urllib.request.urlopen(endpoint.url, timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(endpoint.url.replace("/metrics", "/"), timeout=5)
    assert info.value.code == 404


def test_a_port_in_use_is_refused_naming_the_address():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(MetricsListenError) as info:
            start_metrics(taken, service="test")
    assert str(info.value) == f"--metrics-listen {taken}: cannot serve metrics there: address already in use"


@pytest.mark.parametrize("bad", ["", "7400", "host:", "host:port", ":9100", "h:70000"])
def test_a_malformed_address_is_refused_naming_it(bad):
    with pytest.raises(MetricsListenError, match="--metrics-listen .*expected HOST:PORT"):
        parse_listen(bad)


def test_histogram_buckets_are_cumulative_with_inclusive_bounds():
    h = BucketHistogram((1, 2))
    for v in (0.5, 1, 1.5, 3):
        h.observe(("x",), v)
    ((_, cells),) = h.snapshot()
    assert cells[:3] == [2, 1, 1] and cells[3:] == [6.0, 0.5, 3]
    with pytest.raises(ValueError, match="ascending"):
        BucketHistogram((2, 1))


def test_histogram_series_past_the_cap_go_to_the_overflow_series(endpoint):
    h = BucketHistogram((1,), max_series=2)
    for task in ("a", "b", "c", "d", "a"):
        h.observe(("p", task), 0.5)
    endpoint.bridge("xpipe_test", h, description="test", unit="s", labels=("pipeline", "task"))
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_test_seconds_count", pipeline="p", task="a") == 2
    assert value(samples, "xpipe_test_seconds_count", otel_metric_overflow="true") == 2  # c and d
    assert value(samples, "xpipe_test_seconds_count", pipeline="p", task="c") == 0
    assert h.overflowed == 2


def test_with_metrics_off_the_daemons_load_no_opentelemetry():
    code = ("import sys, json, xpipe.coordinator._main, xpipe.worker._main\n"
            "print(json.dumps([m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus_client'))]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("module", ["xpipe.coordinator._main", "xpipe.worker._main"])
def test_the_flag_defaults_to_the_environment_variable(module, monkeypatch):
    import importlib

    build_parser = importlib.import_module(module).build_parser
    monkeypatch.delenv("XPIPE_METRICS_LISTEN", raising=False)
    assert build_parser().parse_args([]).metrics_listen == ""  # off
    monkeypatch.setenv("XPIPE_METRICS_LISTEN", "127.0.0.1:9464")
    assert build_parser().parse_args([]).metrics_listen == "127.0.0.1:9464"
    assert build_parser().parse_args(["--metrics-listen", "0.0.0.0:9100"]).metrics_listen == "0.0.0.0:9100"


def test_a_bug_in_the_metrics_is_logged_and_the_caller_goes_on(endpoint, caplog):
    d = Driver(endpoint)
    d.metrics.turn(None, d.state.runs, d.now, 0.001)  # not iterable: a bug, not the engine's problem
    d.metrics.task_telemetry("p", "t", "not telemetry")
    assert d.metrics.internal_errors == 2
    assert "metrics: internal error in turn (1 so far); scheduling goes on" in caplog.text
    spec = _spec("after", {"a": {}})
    d.turn(WorkerConnected(d.now, "w1", "w1", "h", 1))
    (sent,) = d.turn(RunSubmitted(d.now, "r1", spec, tuple(validate_spec(spec))))
    d.turn(TaskSucceeded(d.now, "w1", sent.attempt, d.now, pb.Payload(), started_at=d.now))
    assert value(scrape(endpoint.url), "xpipe_task_attempts_total", pipeline="after", outcome="succeeded") == 1


def test_the_heartbeat_pace_is_shown(endpoint):
    d = Driver(endpoint)
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_heartbeat_interval_seconds") == 1.0
    assert value(samples, "xpipe_heartbeat_timeout_seconds") == 10.0
    d.turn(HeartbeatPaceChanged(d.now, 4.0, 40.0))  # the fleet grew past --max-heartbeats-per-s
    samples = scrape(endpoint.url)
    assert value(samples, "xpipe_heartbeat_interval_seconds") == 4.0
    assert value(samples, "xpipe_heartbeat_timeout_seconds") == 40.0


def test_garbage_collections_and_their_pauses_are_counted_by_generation(endpoint):
    Driver(endpoint)
    before = scrape(endpoint.url)
    for generation in (0, 1, 2):
        gc.collect(generation)
    after = scrape(endpoint.url)
    for g in ("0", "1", "2"):
        assert value(after, "xpipe_gc_collections_total", generation=g) >= value(
            before, "xpipe_gc_collections_total", generation=g) + 1  # fmt: skip
        assert value(after, "xpipe_gc_pause_seconds_total", generation=g) > value(
            before, "xpipe_gc_pause_seconds_total", generation=g)  # fmt: skip
