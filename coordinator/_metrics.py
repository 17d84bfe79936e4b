"""The coordinator's metrics: what the engine counts, and how the scrape reads it.

The state machine stays free of OpenTelemetry. The engine hands each turn's actions to
:meth:`CoordinatorMetrics.turn` (one call per turn, and only when ``--metrics-listen``
is set), which reads the task records the turn produced anyway: a READY record starts
a task's queue wait, an ASSIGNED one opens an attempt, an outcome closes it. Counts
are plain ints and histograms are :class:`~xpipe.telemetry._export.BucketHistogram`
objects, read at scrape time from the HTTP thread; gauges are computed at scrape time
from the state (run and worker tables copied in one C-level step each).

Attempts are counted when they end with an outcome, once: only an attempt this engine
saw go out (or found out, on a restart) is counted, so records repeated by a forced
failure of a run, or an attempt requeued when its worker was lost, count nothing.

Task-recorded metrics (``TaskEvent.telemetry``) are exported from the finished attempt's
task record in :meth:`CoordinatorMetrics.turn`, through :meth:`CoordinatorMetrics.task_telemetry`.
See docs/metrics.md for every name and label.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from xpipe._domain import TERMINAL_RUN_STATES, WORKER_STATES, error_type_name
from xpipe._graph import sub_task_of
from xpipe._proto import common_pb2 as pb
from xpipe.telemetry._export import BucketHistogram, LastValueGauge, MetricsEndpoint

from ._events import Action, TaskRecord
from ._gc import GENERATIONS, process_pauses

__all__ = [
    "ATTEMPT_OUTCOMES",
    "MAX_SERIES_PER_FAMILY",
    "MAX_SERIES_PER_NAME",
    "TASK_SECONDS_BOUNDS",
    "WORKER_STATES",
    "CoordinatorMetrics",
]

log = logging.getLogger(__name__)

#: The values of the ``outcome`` label of ``xpipe_task_attempts_total``.
ATTEMPT_OUTCOMES = ("succeeded", "failed", "timeout", "cancelled", "skipped")

#: Buckets (seconds) of task durations and queue waits: 5 ms to an hour.
TASK_SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Buckets (seconds) of one store group commit.
COMMIT_SECONDS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
#: Buckets of assignments per batch sent to one worker.
BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Buckets of task-recorded values: no unit is known, so decades either side of 1.
TASK_VALUE_BOUNDS = (0.001, 0.01, 0.1, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)

#: Distinct label sets (pipeline, task and the point's own labels) one task-recorded
#: metric name keeps; points of a new set past it are dropped and counted.
MAX_SERIES_PER_NAME = 1_000
#: Distinct series all names of one family (custom or business) keep together.
MAX_SERIES_PER_FAMILY = 10_000
#: A point's own labels: at most this many, each value at most this many chars.
MAX_POINT_LABELS = 8
MAX_LABEL_VALUE_CHARS = 128

#: Prometheus' rules for metric and label names; labels we set ourselves are reserved.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RESERVED_LABELS = frozenset({"name", "pipeline", "task", "le", "quantile"})

#: Why points are dropped: the ``reason`` label of ``xpipe_metric_points_dropped_total``.
DROP_REASONS = ("invalid_name", "invalid_value", "invalid_labels", "series_limit")


def _per_generation(values: list) -> list[Observation]:
    return [Observation(values[g], {"generation": str(g)}) for g in GENERATIONS]


_READY, _ASSIGNED, _RUNNING = pb.READY, pb.ASSIGNED, pb.RUNNING
_OUTCOME_OF_STATE = {
    pb.SUCCEEDED: "succeeded",
    pb.SKIPPED: "skipped",
    pb.CANCELLED: "cancelled",
    pb.FAILED: "failed",  # refined by the error's type, see _outcome
    pb.RETRY_WAIT: "failed",
    pb.RECOVERING: "failed",
    pb.MAPPED: "succeeded",  # a fan-out's split attempt succeeded (its sub-tasks are attempts of their own)
}
#: Outcomes whose attempt a worker ran to an end: their run time goes into the duration.
_TIMED_OUTCOMES = frozenset({"succeeded", "failed", "timeout", "skipped"})


def _contained(method: Callable) -> Callable:
    """A bug in the metrics must not stop the engine or a worker's stream: log it, count it, go on."""

    @functools.wraps(method)
    def call(self: CoordinatorMetrics, *args, **kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            self.internal_errors += 1
            log.exception("metrics: internal error in %s (%d so far); scheduling goes on", method.__name__,
                          self.internal_errors)  # fmt: skip

    return call


def _outcome(rec: TaskRecord) -> str:
    outcome = _OUTCOME_OF_STATE[rec.state]
    if outcome == "failed" and rec.error is not None:
        kind = error_type_name(rec.error)
        if kind == "TIMEOUT":
            return "timeout"
        if kind == "CANCELLED":
            return "cancelled"
    return outcome


class _TaskValues:
    """One family of task-recorded metrics: a last-value gauge and a histogram per series."""

    def __init__(self) -> None:
        self.last = LastValueGauge()
        self.values = BucketHistogram(TASK_VALUE_BOUNDS, max_series=MAX_SERIES_PER_FAMILY)
        self.per_name: dict[str, int] = {}  # series per metric name, for MAX_SERIES_PER_NAME

    def record(self, labels: tuple, value: float) -> bool:
        """False when the series is new and a cap is reached (nothing recorded)."""
        if labels not in self.last.series:
            name = labels[0]
            if self.per_name.get(name, 0) >= MAX_SERIES_PER_NAME or len(self.last.series) >= MAX_SERIES_PER_FAMILY:
                return False
            self.per_name[name] = self.per_name.get(name, 0) + 1
        self.last.set(labels, value)
        self.values.observe(labels, value)
        return True


class CoordinatorMetrics:
    """The coordinator's instruments, fed by the engine and read at scrape time.

    Args:
        endpoint: where the metrics are served (``--metrics-listen``).
        state_of: returns the current engine's state machine (engines are replaced on
            a store fault or a leadership change; the metrics outlive them).
    """

    def __init__(self, endpoint: MetricsEndpoint, state_of: Callable[[], object]):
        self._state_of = state_of
        #: pipeline -> {outcome: attempts ended so}.
        self.attempts: dict[str, dict[str, int]] = {}
        self.duration = BucketHistogram(TASK_SECONDS_BOUNDS)
        self.queue_wait = BucketHistogram(TASK_SECONDS_BOUNDS)
        self.commit = BucketHistogram(COMMIT_SECONDS_BOUNDS)
        self.batch_size = BucketHistogram(BATCH_SIZE_BOUNDS)
        self.custom = _TaskValues()
        self.business = _TaskValues()
        #: Bugs of the metrics caught by _contained (logged; the engine went on).
        self.internal_errors = 0
        #: reason -> task-recorded points dropped.
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        # (run_id, task) -> when it became READY (this engine's clock); its size is the
        # ready-task gauge.
        self._ready_at: dict[tuple[str, str], float] = {}
        # (run_id, task) -> READY time of the attempt out now (0 once its wait is counted).
        # No attempt number: the state machine's records always name the current attempt.
        self._inflight: dict[tuple[str, str], float] = {}
        self._register(endpoint)

    def _register(self, endpoint: MetricsEndpoint) -> None:
        m = endpoint.meter
        m.create_observable_counter(
            "xpipe_task_attempts", [self._observe_attempts],
            description="Task attempts ended, by pipeline and outcome (succeeded|failed|timeout|cancelled|skipped)",
        )  # fmt: skip
        m.create_observable_gauge(
            "xpipe_ready_tasks", [lambda _: [Observation(len(self._ready_at))]],
            description="Tasks READY and waiting for a worker slot",
        )  # fmt: skip
        m.create_observable_gauge("xpipe_runs_active", [self._observe_runs], description="Runs not yet finished")
        m.create_observable_gauge(
            "xpipe_workers", [self._observe_workers],
            description="Workers known to this coordinator, by state (ready|busy|draining|disconnected|drained|lost)",
        )  # fmt: skip
        m.create_observable_gauge(
            "xpipe_heartbeat_interval", [lambda _: [Observation(self._state_of().heartbeat_interval_s)]], unit="s",
            description="Seconds between heartbeats workers are told (stretched by --max-heartbeats-per-s)",
        )  # fmt: skip
        m.create_observable_gauge(
            "xpipe_heartbeat_timeout", [lambda _: [Observation(self._state_of().heartbeat_timeout_s)]], unit="s",
            description="Seconds of silence after which a worker is lost, in effect now",
        )  # fmt: skip
        m.create_observable_counter(
            "xpipe_metric_points_dropped", [self._observe_dropped],
            description="Task-recorded metric points dropped, by reason (see docs/metrics.md)",
        )  # fmt: skip
        pauses = process_pauses()
        m.create_observable_counter(
            "xpipe_gc_collections", [lambda _: _per_generation(pauses.collections)],
            description="Garbage collections of this process, by generation (2: full); see --gc-threshold",
        )  # fmt: skip
        m.create_observable_counter(
            "xpipe_gc_pause", [lambda _: _per_generation(pauses.seconds)], unit="s",
            description="Seconds this process paused for garbage collection, by generation",
        )  # fmt: skip
        endpoint.bridge("xpipe_task_duration", self.duration, unit="s", labels=("pipeline", "task"),
                        description="Run time of task attempts that ended on a worker (worker clock)")  # fmt: skip
        endpoint.bridge("xpipe_task_queue_wait", self.queue_wait, unit="s", labels=("pipeline",),
                        description="Time from a task attempt's READY to its start on a worker")  # fmt: skip
        endpoint.bridge("xpipe_store_commit", self.commit, unit="s", description="Time of one store group commit")
        endpoint.bridge("xpipe_dispatch_batch_size", self.batch_size,
                        description="Assignments sent to one worker in one batch")  # fmt: skip
        labels = ("name", "pipeline", "task")
        endpoint.bridge("xpipe_custom_metric", self.custom.last, labels=labels,
                        description="Last value of a task-recorded metric (record_metric, track_metric)")  # fmt: skip
        endpoint.bridge("xpipe_custom_metric_value", self.custom.values, labels=labels,
                        description="Values of a task-recorded metric (record_metric, track_metric)")  # fmt: skip
        endpoint.bridge("xpipe_business_metric", self.business.last, labels=labels,
                        description="Last value of a business metric (track_business_metric)")  # fmt: skip
        endpoint.bridge("xpipe_business_metric_value", self.business.values, labels=labels,
                        description="Values of a business metric (track_business_metric)")  # fmt: skip

    # ------------------------------------------------------------------ fed by the engine

    @_contained
    def reset(self) -> None:
        """A new engine starts: attempts the old one had out are its story, not this one's."""
        self._ready_at.clear()
        self._inflight.clear()

    @_contained
    def restored(self, run_id: str, tasks: dict, now: float) -> None:
        """A run read back from the store: count its READY tasks and its attempts out."""
        for name, rec in tasks.items():
            if rec.state == _READY:
                self._ready_at[(run_id, name)] = now
            elif rec.state in (_ASSIGNED, _RUNNING):
                self._inflight[(run_id, name)] = 0.0

    @_contained
    def turn(self, actions: Iterable[Action], runs: dict, now: float, commit_s: float) -> None:
        """Account for one engine turn: its task records and its commit.

        Called once per turn, after the commit and the dispatch; ``commit_s`` < 0: the
        turn committed nothing. The hot path of the metrics, kept flat on purpose: one
        tuple and one or two dict operations per record, the histograms touched once per
        attempt. Quick attempts (under the worker's STARTED_REPORT_DELAY_S) have no
        RUNNING record: their queue wait is taken when they end, from their start.
        """
        ready_at, inflight = self._ready_at, self._inflight
        for a in actions:
            if a.__class__ is not TaskRecord:
                continue
            state = a.state
            if state == _READY:
                key = (a.run_id, a.name)
                ready_at[key] = now
                if a.attempt:  # a requeue (or a retry): an attempt out ended without an outcome
                    inflight.pop(key, None)
            elif state == _ASSIGNED:
                key = (a.run_id, a.name)
                inflight[key] = ready_at.pop(key, 0.0)
            elif state == _RUNNING:
                key = (a.run_id, a.name)
                since = inflight.get(key)
                if since and a.started_at:
                    run = runs.get(a.run_id)
                    self.queue_wait.observe((run.name if run is not None else "",), max(0.0, a.started_at - since))
                    inflight[key] = 0.0  # counted
            elif state in _OUTCOME_OF_STATE:
                key = (a.run_id, a.name)
                since = inflight.pop(key, None)
                if since is None:  # not an attempt this engine had out, or counted already
                    ready_at.pop(key, None)  # a READY task failed or cancelled without a worker
                    continue
                run = runs.get(a.run_id)
                pipeline = run.name if run is not None else ""
                started_at = a.started_at
                if since and started_at:
                    self.queue_wait.observe((pipeline,), max(0.0, started_at - since))
                outcome = _OUTCOME_OF_STATE[state] if a.error is None else _outcome(a)
                counts = self.attempts.get(pipeline)
                if counts is None:
                    counts = self.attempts[pipeline] = dict.fromkeys(ATTEMPT_OUTCOMES, 0)
                counts[outcome] += 1
                name = a.name
                if name[-1] == "]":  # a fan-out's sub-task counts as its task: one series, not one each
                    sub = sub_task_of(name)
                    name = sub[0] if sub is not None else name
                if started_at and outcome in _TIMED_OUTCOMES and a.finished_at >= started_at:
                    self.duration.observe((pipeline, name), a.finished_at - started_at)
                telemetry = a.telemetry
                if telemetry is not None and telemetry.metrics:
                    # Here, not where the worker's message is decoded: an outcome re-sent
                    # after a reconnect is stale and makes no record, so it is exported once.
                    self.task_telemetry(pipeline, name, telemetry)
        if commit_s >= 0:
            self.commit.observe((), commit_s)

    @_contained
    def dispatched(self, batch_sizes: Iterable[int]) -> None:
        """The engine sent these batches of assignments this turn (one size per worker)."""
        observe = self.batch_size.observe
        for size in batch_sizes:
            observe((), size)

    # ------------------------------------------------------------------ task-recorded metrics

    @_contained
    def task_telemetry(self, pipeline: str, task: str, telemetry: pb.TaskTelemetry) -> None:
        """Export the points an attempt recorded (CUSTOM and TRACKED, or BUSINESS).

        A worker's message is not trusted: a point with a name that is not a Prometheus
        name, a value that is not finite, or labels that are not valid (bad or reserved
        names, more than MAX_POINT_LABELS, values over MAX_LABEL_VALUE_CHARS) is dropped,
        as is a point of a new series past the caps; each drop is counted by reason.
        """
        for point in telemetry.metrics:
            name, value = point.name, point.value
            if not _METRIC_NAME.match(name):
                self._drop("invalid_name", name, pipeline, task)
                continue
            if not math.isfinite(value):
                self._drop("invalid_value", name, pipeline, task)
                continue
            extra: tuple = ()
            if point.labels:
                items = sorted(point.labels.items())
                if len(items) > MAX_POINT_LABELS or not all(
                    _LABEL_NAME.match(k) and k not in _RESERVED_LABELS and not k.startswith("__")
                    and len(v) <= MAX_LABEL_VALUE_CHARS for k, v in items
                ):  # fmt: skip
                    self._drop("invalid_labels", name, pipeline, task)
                    continue
                extra = (tuple(items),)
            family = self.business if point.kind == pb.METRIC_KIND_BUSINESS else self.custom
            if not family.record((name, pipeline, task, *extra), value):
                self._drop("series_limit", name, pipeline, task)

    def _drop(self, reason: str, name: str, pipeline: str, task: str) -> None:
        self.dropped[reason] += 1
        # Logged at the 1st, 10th, 100th... drop of each reason, so a flood cannot flood the log.
        n = self.dropped[reason]
        if math.log10(n).is_integer():
            log.warning("dropped task metric point %.80r of task %r (pipeline %r): %s (%d so far)",
                        name, task, pipeline, reason, n)  # fmt: skip

    # ------------------------------------------------------------------ read at scrape time

    def _observe_attempts(self, _: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"pipeline": p, "outcome": o})
            for p, counts in list(self.attempts.items())
            for o, n in list(counts.items())
        ]

    def _observe_dropped(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"reason": r}) for r, n in list(self.dropped.items())]

    def _observe_runs(self, _: CallbackOptions) -> list[Observation]:
        runs = list(self._state_of().runs.values())
        return [Observation(sum(1 for r in runs if r.state not in TERMINAL_RUN_STATES))]

    def _observe_workers(self, _: CallbackOptions) -> list[Observation]:
        state = self._state_of()
        counts = dict.fromkeys(WORKER_STATES, 0)
        for worker in list(state.workers.values()):
            shown = state.worker_shown_state(worker)
            counts[shown] = counts.get(shown, 0) + 1
        return [Observation(n, {"state": s}) for s, n in counts.items()]
