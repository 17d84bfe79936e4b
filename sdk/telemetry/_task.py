"""What a task records about itself: metric points, tracked values and what an attempt cost.

Users see two sides. Inside a task, :func:`record_metric` adds a point to the running
attempt. On a result, :class:`TaskMetrics` reads what the attempt sent back
(``result.tasks[name].metrics`` / ``.performance`` / ``.metric_warnings``).

In between, the worker's task runner makes one :class:`AttemptRecorder` per attempt of a
Python or handler task (command tasks run in their own process and cannot call in). The
recorder is cheap for the common task that records nothing: no clock read, no message, and
:meth:`AttemptRecorder.telemetry` returns None so the outcome carries nothing extra. Points
ride on the attempt's outcome (``TaskEvent.telemetry``), so they cost no message of their own.

The value rule of ``@pipeline.track_metric`` (:func:`tracked_value`) is a pure function, run
on the worker where the return value is at hand (it may be big, or stay in the artifact store).
"""

from __future__ import annotations

import contextvars
import math
import numbers
import os
import resource
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._limits import (
    MAX_METRIC_LABEL_VALUE_CHARS,
    MAX_METRIC_LABELS,
    MAX_METRIC_NAME_CHARS,
    MAX_METRIC_POINTS,
    MAX_METRIC_WARNINGS,
    METRIC_LABEL_RE,
    METRIC_NAME_RE,
    RESERVED_METRIC_LABELS,
    SHOWN_CHARS,
    shown,
)
from .._proto import common_pb2 as pb

__all__ = [
    "record_metric",
    "check_metric",
    "metric_name_problem",
    "tracked_value",
    "metric_key",
    "AttemptRecorder",
    "TaskPerformance",
    "TaskMetrics",
    "current_attempt",
]

#: The recorder of the attempt running in this thread (the thread executor runs several at once).
_CURRENT: contextvars.ContextVar[AttemptRecorder | None] = contextvars.ContextVar("xpipe_attempt", default=None)
#: The attempt running in this process's main thread: an executor child runs one task at a
#: time there, so threads the task starts may record into it too.
_MAIN_THREAD_ATTEMPT: AttemptRecorder | None = None
_MAIN_THREAD_ID = threading.main_thread().ident
#: ``ru_maxrss`` is in KiB on Linux (bytes on macOS).
_RSS_UNIT_BYTES = 1 if os.uname().sysname == "Darwin" else 1024


def current_attempt() -> tuple[str, str, int] | None:
    """``(run_id, task, attempt)`` of the Python task running here, or None outside a task.

    A stream instance (a long-lived task) names itself with it in its reports, so the
    coordinator can tell a stale attempt from the current one.
    """
    recorder = _CURRENT.get() or _MAIN_THREAD_ATTEMPT
    if recorder is None or recorder.attempt is None:
        return None
    ref = recorder.attempt
    return (ref.run_id, ref.task, ref.attempt)


def metric_name_problem(name: Any) -> str:
    """Why ``name`` cannot be a metric name ("" if it can): Prometheus' rule and a length bound."""
    if not isinstance(name, str):
        return f"metric name must be a str, got {type(name).__name__} {_quote(name)}"
    if len(name) > MAX_METRIC_NAME_CHARS:
        return f"metric name {shown(name)} has {len(name)} characters; the limit is {MAX_METRIC_NAME_CHARS}"
    if METRIC_NAME_RE.fullmatch(name) is None:
        return (
            f"metric name {name!r} is not a valid Prometheus metric name: it must match "
            f"{METRIC_NAME_RE.pattern} (letters, digits, '_' and ':', not starting with a digit)"
        )
    return ""


def _quote(value: Any) -> str:
    """``repr(value)``, cut short so an error quoting a hostile value stays small."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_metric(name: Any, value: Any, labels: Mapping[str, Any]) -> float:
    """Check one point as :func:`record_metric` takes it; return the value as a float.

    Raises:
        TypeError: the name is not a str, the value not a real number (bool included), or a
            label value not a str.
        ValueError: the name breaks Prometheus' rule or a length bound, the value is NaN or
            infinite, or a label is badly named, reserved, too long or one too many.
    """
    problem = metric_name_problem(name)
    if problem:
        raise (TypeError if not isinstance(name, str) else ValueError)(f"record_metric: {problem}")
    if not _is_real(value):
        raise TypeError(
            f"record_metric: value of metric {name!r} must be a real number (int or float, not bool), "
            f"got {type(value).__name__} {_quote(value)}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"record_metric: value of metric {name!r} must be finite, got {number!r}")
    if len(labels) > MAX_METRIC_LABELS:
        raise ValueError(
            f"record_metric: metric {name!r} has {len(labels)} labels; the limit is {MAX_METRIC_LABELS}"
        )
    for key, label in labels.items():
        if METRIC_LABEL_RE.fullmatch(key) is None or key.startswith("__"):
            raise ValueError(
                f"record_metric: label {shown(key)} of metric {name!r} is not a valid Prometheus label "
                f"name: it must match {METRIC_LABEL_RE.pattern} and not start with '__'"
            )
        if key in RESERVED_METRIC_LABELS:
            raise ValueError(
                f"record_metric: label {key!r} of metric {name!r} is reserved (the export sets "
                f"{', '.join(sorted(RESERVED_METRIC_LABELS))}); choose another label name"
            )
        if not isinstance(label, str):
            raise TypeError(
                f"record_metric: label {key!r} of metric {name!r} must be a str, got {type(label).__name__} "
                f"{_quote(label)}"
            )
        if len(label) > MAX_METRIC_LABEL_VALUE_CHARS:
            raise ValueError(
                f"record_metric: label {key!r} of metric {name!r} has {len(label)} characters; the limit "
                f"is {MAX_METRIC_LABEL_VALUE_CHARS}"
            )
    return number


def record_metric(name: str, value: float, /, **labels: str) -> None:
    """Record a value the running task measured, e.g. ``record_metric("rows_dropped", 12, table="users")``.

    Call it from a Python task's code on a worker (process or thread executor, and threads
    the task starts in a process executor). The points ride on the attempt's outcome: they
    show as ``result.tasks[name].metrics`` and are exported by the coordinator. An attempt
    keeps at most :data:`~xpipe._limits.MAX_METRIC_POINTS` points; later ones are dropped
    and a warning says how many. The last value of a name (and labels) wins.

    Raises:
        RuntimeError: called outside a task (e.g. in the submitting process).
        TypeError, ValueError: a bad name, value or label (see :func:`check_metric`); raised
            in the task, so the attempt fails with that message unless the task catches it.
    """
    recorder = _CURRENT.get()
    if recorder is None:
        recorder = _MAIN_THREAD_ATTEMPT
        if recorder is None:
            raise RuntimeError(
                "xpipe.record_metric() was called outside a task: it records into the attempt of the "
                "Python task running on a worker, so call it from the task's own code"
            )
    number = check_metric(name, value, labels)
    recorder.add(name, number, labels, pb.METRIC_KIND_CUSTOM)


def tracked_value(metric: str, returned: Any, key: str | None = None) -> tuple[float | None, str]:
    """The value ``@pipeline.track_metric(metric, key=key)`` takes from a task's return.

    The rule, first match wins:

    1. ``key`` given: ``returned[key]``;
    2. ``returned`` is a mapping with the key ``metric``: that value;
    3. ``returned`` is a mapping with exactly one numeric value whose key appears inside
       the metric name (``quality_score`` serves ``data_quality_score``);
    4. ``returned`` itself is a number.

    Returns:
        ``(value, "")``, or ``(None, why)`` when nothing fits, two keys fit, or the value
        found is not a finite real number; ``why`` names the metric and the keys seen.
    """
    where = f"tracked metric {metric!r}"
    if key is not None:
        if not isinstance(returned, Mapping) or key not in returned:
            return None, f"{where}: the task's return has no key {key!r}{_keys_seen(returned)}"
        return _as_value(where, f"key {key!r}", returned[key])
    if isinstance(returned, Mapping):
        if metric in returned:
            return _as_value(where, f"key {metric!r}", returned[metric])
        fits = [k for k, v in returned.items() if isinstance(k, str) and k and k in metric and _is_real(v)]
        if len(fits) == 1:
            return _as_value(where, f"key {fits[0]!r}", returned[fits[0]])
        if len(fits) > 1:
            return None, (
                f"{where}: keys {', '.join(map(repr, sorted(fits)))} of the task's return all fit; "
                f"name one with key=..."
            )
        return None, (
            f"{where}: no numeric key of the task's return is named {metric!r} or appears inside that "
            f"name{_keys_seen(returned)}; name one with key=..."
        )
    if _is_real(returned):
        return _as_value(where, "the return value", returned)
    return None, (
        f"{where}: the task returned {type(returned).__name__}, neither a number nor a mapping with a "
        f"numeric key for it"
    )


def _as_value(where: str, source: str, value: Any) -> tuple[float | None, str]:
    if not _is_real(value):
        return None, f"{where}: {source} holds {type(value).__name__} {_quote(value)}, not a number"
    number = float(value)
    if not math.isfinite(number):
        return None, f"{where}: {source} holds {number!r}, not a finite number"
    return number, ""


def _keys_seen(returned: Any) -> str:
    if not isinstance(returned, Mapping):
        return f" (it returned {type(returned).__name__})"
    keys = sorted(map(str, returned))
    listed = ", ".join(map(repr, keys[:20])) + (", ..." if len(keys) > 20 else "")
    return f"; keys seen: {listed or 'none'}"


class AttemptRecorder:
    """Collects what one attempt records; the worker makes one per Python or handler attempt.

    ``start()`` right before the call (it makes :func:`record_metric` find this attempt and,
    for a tracked task, reads the clocks), ``stop()`` right after it, ``returned(value)`` with
    what it returned, ``close()`` in a ``finally``; then :meth:`telemetry` is the message to
    send (None when the attempt recorded nothing).
    """

    __slots__ = ("spec", "attempt", "points", "warnings", "dropped", "performance", "_perf", "_token", "_main", "_t0", "_cpu0")

    def __init__(self, spec: pb.TaskSpec, attempt: Any = None):  # a worker_pb2.AttemptRef
        # Lists are made on first use: most attempts record nothing and should pay nothing.
        self.spec = spec
        self.attempt = attempt
        self.points: list[pb.MetricPoint] | None = None
        self.warnings: list[str] | None = None
        self.dropped = 0
        self.performance: pb.TaskPerformance | None = None
        self._perf = spec.track_performance
        self._token: contextvars.Token | None = None
        self._main = False

    def start(self) -> None:
        global _MAIN_THREAD_ATTEMPT
        self._token = _CURRENT.set(self)
        if threading.get_ident() == _MAIN_THREAD_ID:
            self._main = True
            _MAIN_THREAD_ATTEMPT = self
        if self._perf:
            self._cpu0 = self._cpu_s()
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        """The call returned or raised: measure it (tracked tasks only; a second call is a no-op)."""
        if self._perf and self.performance is None:
            wall_s = time.perf_counter() - self._t0
            self.performance = pb.TaskPerformance(
                wall_s=wall_s,
                cpu_s=max(0.0, self._cpu_s() - self._cpu0),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT_BYTES,
            )

    def close(self) -> None:
        """Stop taking points (in a ``finally``): later calls raise "outside a task"."""
        global _MAIN_THREAD_ATTEMPT
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if self._main and _MAIN_THREAD_ATTEMPT is self:
            _MAIN_THREAD_ATTEMPT = None

    def _cpu_s(self) -> float:
        # An executor child runs one task at a time in its main thread: the process's CPU is
        # the task's (with threads it started). A pool thread shares its process: its own CPU.
        # getrusage, not os.times: the latter counts in clock ticks (10 ms).
        if self._main:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime
        return time.thread_time()

    def add(self, name: str, value: float, labels: Mapping[str, str], kind: int) -> None:
        if kind == pb.METRIC_KIND_CUSTOM and self.spec.custom_metrics_off:
            return  # enable_monitoring(custom_metrics=False): checked, not kept
        if self.points is None:
            self.points = []
        if len(self.points) >= MAX_METRIC_POINTS:
            self.dropped += 1
            return
        self.points.append(pb.MetricPoint(name=name, value=value, labels=labels, kind=kind))

    def warn(self, message: str) -> None:
        if self.warnings is None:
            self.warnings = []
        if len(self.warnings) < MAX_METRIC_WARNINGS:
            self.warnings.append(message)

    def returned(self, value: Any) -> None:
        """Take the tracked metrics' values from what the task returned."""
        for tracked in self.spec.track:
            problem = metric_name_problem(tracked.name)
            number = None
            if not problem:
                try:
                    number, problem = tracked_value(tracked.name, value, tracked.key or None)
                except Exception as exc:  # noqa: BLE001 - a strange return must not fail the task
                    problem = f"tracked metric {tracked.name!r}: reading the task's return raised {type(exc).__name__}: {exc}"
            if problem:
                self.warn(problem)
            else:
                self.add(tracked.name, number, {}, tracked.kind or pb.METRIC_KIND_TRACKED)  # type: ignore[arg-type]

    def telemetry(self) -> pb.TaskTelemetry | None:
        """What to send with the outcome; None when nothing was recorded."""
        if self.points is None and self.performance is None and self.warnings is None:
            return None
        warnings = list(self.warnings or ())
        if self.dropped:
            warnings.append(
                f"record_metric: {self.dropped} point(s) dropped; an attempt keeps at most {MAX_METRIC_POINTS}"
            )
        made = pb.TaskTelemetry(metrics=self.points or (), warnings=warnings)
        if self.performance is not None:
            made.performance.CopyFrom(self.performance)
        return made


# ---- reading it back -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskPerformance:
    """What one attempt of a ``track_performance`` task cost the process that ran it.

    Attributes:
        wall_s: seconds from the call to its return or raise.
        cpu_s: user + system CPU seconds of the attempt: of the whole executor process (the
            task and the threads it started) in the process executor, of the task's thread in
            the thread executor.
        peak_rss_bytes: the peak resident memory of that process (``ru_maxrss``). An executor
            child is reused across tasks, so this is its peak so far, which may come from an
            earlier task.
    """

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int

    @classmethod
    def from_proto(cls, message: pb.TaskPerformance) -> TaskPerformance:
        return cls(wall_s=message.wall_s, cpu_s=message.cpu_s, peak_rss_bytes=message.peak_rss_bytes)


def metric_key(name: str, labels: Mapping[str, str]) -> str:
    """How a point is named in ``metrics``: ``name``, or ``name{k="v",...}`` (labels sorted)."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class TaskMetrics:
    """What a task's last finished attempt recorded (``pm.get_metrics(run_id)[task]``).

    Attributes:
        metrics: metric key (see :func:`metric_key`) -> the last value recorded.
        performance: set for ``track_performance`` tasks, else None.
        warnings: what could not be recorded (a tracked value not found, points dropped).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    performance: TaskPerformance | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, telemetry: pb.TaskTelemetry | None) -> TaskMetrics:
        if telemetry is None:
            return cls()
        metrics = {metric_key(p.name, p.labels): p.value for p in telemetry.metrics}
        performance = TaskPerformance.from_proto(telemetry.performance) if telemetry.HasField("performance") else None
        return cls(metrics, performance, tuple(telemetry.warnings))
