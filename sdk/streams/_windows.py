"""Windows over a stream: which records a stage's task sees together, and when.

A pure core, fed records and times by the runtime, that owns no clock. Tumbling windows are
aligned to multiples of their size since the epoch, each ``[start, end)``; with ``slide`` a
window starts every ``slide`` seconds, so windows overlap and a record is in ``size/slide``
of them. Time is the record's event time (``time_field``: epoch seconds, or an ISO 8601
string) or, without a time field, the processing time the runtime passes in.

The watermark is the largest event time seen (or the latest processing time). A window fires
exactly once, when the watermark reaches ``end + allowed_lateness``, with its records in
arrival order. A record for a window whose time has passed is late: it is returned as a
:class:`LateRecord` (and counted) for the runtime's ``<stage>.late`` stream, never dropped.
With sliding windows a record can be late for its older windows and on time for newer
ones; it joins the open ones and is also reported late, naming the windows it missed.

:meth:`Windower.snapshot` and :meth:`Windower.restore` checkpoint the open windows with the
watermark, so a restarted instance resumes where the checkpoint was taken.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .._retry import parse_duration_s
from ..errors import DataStreamError
from ._records import RecordError

__all__ = [
    "MAX_WINDOWS_PER_RECORD",
    "FiredWindow",
    "LateRecord",
    "Window",
    "WindowSpec",
    "Windower",
    "event_time_s",
    "window_spec",
]

#: A record joins at most this many sliding windows (``size / slide``), bounding the work per record.
MAX_WINDOWS_PER_RECORD = 1000

Window = tuple[float, float]  # (start, end) in epoch seconds, end exclusive

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """How a stage groups records into windows.

    Attributes:
        size_s: the length of each window, seconds (> 0).
        slide_s: seconds between window starts; equal to ``size_s`` for tumbling windows.
        time_field: the record field with the event time; None for processing time.
        allowed_lateness_s: how long after a window's end it stays open for late records.
    """

    size_s: float
    slide_s: float
    time_field: str | None = None
    allowed_lateness_s: float = 0.0

    @property
    def tumbling(self) -> bool:
        return self.slide_s == self.size_s

    def windows_of(self, t: float) -> list[Window]:
        """The windows containing time ``t``, oldest first.

        The arithmetic is done in whole nanoseconds, so that a time on a window's edge (0.3 s
        in windows of 0.1 s) belongs to exactly one side of it, as in the hand-computed
        answer; float division would put it on either side.
        """
        t_ns = round(t * _NS_PER_S)
        size = round(self.size_s * _NS_PER_S)
        slide = round(self.slide_s * _NS_PER_S)
        if slide == size:  # tumbling: exactly one window
            start = t_ns // size * size
            return [(start / _NS_PER_S, (start + size) / _NS_PER_S)]
        first, last = (t_ns - size) // slide + 1, t_ns // slide
        return [(k * slide / _NS_PER_S, (k * slide + size) / _NS_PER_S) for k in range(first, last + 1)]


def _duration(name: str, value: Any) -> float:
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise DataStreamError(f"{name}={value!r:.80}: {exc}") from None


def window_spec(
    window_size: Any, slide: Any = None, time_field: str | None = None, allowed_lateness: Any = "0s"
) -> WindowSpec | None:
    """Read a stage's window options (as ``StreamPipeline.transform`` takes them); None without a window.

    Durations are seconds, a timedelta, or strings like ``"5min"``, ``"30s"``.

    Raises:
        DataStreamError: a duration that does not parse, a window of 0 s, a slide larger than
            the window or giving more than :data:`MAX_WINDOWS_PER_RECORD` windows per record,
            a bad time field, or slide/lateness/time field given without ``window_size``; the
            message names the argument and the value.
    """
    if window_size is None:
        lateness_set = allowed_lateness not in ("0s", "0", 0, timedelta(0), None)
        for name, value, given in (("slide", slide, slide is not None), ("time_field", time_field, time_field is not None),
                                   ("allowed_lateness", allowed_lateness, lateness_set)):  # fmt: skip
            if given:
                raise DataStreamError(
                    f"{name}={value!r:.80} needs window_size=; a stage without a window has no {name}"
                )
        return None
    size_s = _duration("window_size", window_size)
    if size_s <= 0:
        raise DataStreamError(f"window_size={window_size!r:.80}: a window must last more than 0 s")
    slide_s = size_s if slide is None else _duration("slide", slide)
    if slide is not None and not 0 < slide_s <= size_s:
        raise DataStreamError(
            f"slide={slide!r:.80}: must be more than 0 s and at most window_size={window_size!r:.80}"
        )
    if size_s / slide_s > MAX_WINDOWS_PER_RECORD:
        raise DataStreamError(
            f"slide={slide!r:.80}: window_size/slide = {size_s / slide_s:.0f} windows per record, "
            f"more than the limit {MAX_WINDOWS_PER_RECORD}"
        )
    lateness_s = _duration("allowed_lateness", allowed_lateness)
    if time_field is not None and (not isinstance(time_field, str) or not time_field):
        raise DataStreamError(f"time_field={time_field!r:.80}: must be a non-empty field name")
    return WindowSpec(size_s, slide_s, time_field, lateness_s)


def event_time_s(record: Any, time_field: str, *, source: str = "") -> float:
    """The event time of ``record`` in epoch seconds.

    The field holds epoch seconds (int or float) or an ISO 8601 string; a string without a
    UTC offset is read as UTC.

    Raises:
        RecordError: the record is not a dict, lacks the field, or its value is not a finite
            number or ISO 8601 string. The runtime routes it to the dead-letter stream.
    """
    where = f"record from {source}" if source else "record"
    if not isinstance(record, dict) or time_field not in record:
        raise RecordError(f"{where}: has no time field {time_field!r}", source=source, payload=record)
    value = record[time_field]
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    raise RecordError(
        f"{where}: time field {time_field!r} = {value!r:.80} is neither epoch seconds nor an ISO 8601 time",
        source=source,
        payload=record,
    )


@dataclass(frozen=True, slots=True)
class FiredWindow:
    """A window whose time has come: the task's batch, with ``self.window = (start, end)``."""

    start: float
    end: float
    records: list[Any]


@dataclass(frozen=True, slots=True)
class LateRecord:
    """A record that came after its window(s) fired; ``missed`` names those windows."""

    record: Any
    time_s: float
    missed: tuple[Window, ...]


@dataclass(slots=True)
class Windower:
    """The open windows of one stage instance.

    Feed each record with :meth:`add`; it returns the windows that fire and the late
    records. Under processing time, also call :meth:`advance` on a timer so windows fire
    when no record comes.
    """

    spec: WindowSpec
    watermark_s: float = -math.inf
    late_count: int = 0
    fired_count: int = 0
    _open: dict[Window, list[Any]] = field(default_factory=dict)
    _next_end_s: float = math.inf  # the earliest end among the open windows: nothing fires before it

    def add(
        self, record: Any, *, now_s: float, source: str = ""
    ) -> tuple[list[FiredWindow], LateRecord | None]:
        """Place one record; return ``(fired windows, the record if late else None)``.

        Args:
            now_s: the processing time (epoch seconds); the record's time when the spec has no time field.
            source: named in errors (the stream or stage the record came from).

        Raises:
            RecordError: the record's event time is missing or unreadable (see :func:`event_time_s`);
                nothing in the windower changed.
        """
        spec = self.spec
        t = now_s if spec.time_field is None else event_time_s(record, spec.time_field, source=source)
        closed_before = (
            self.watermark_s - spec.allowed_lateness_s
        )  # windows ending at or before this have fired
        missed = []
        for window in spec.windows_of(t):
            if window[1] <= closed_before:
                missed.append(window)
            else:
                bucket = self._open.get(window)
                if bucket is None:
                    self._open[window] = bucket = []
                    self._next_end_s = min(self._next_end_s, window[1])
                bucket.append(record)
        late = None
        if missed:
            self.late_count += 1
            late = LateRecord(record, t, tuple(missed))
        return self._advance_to(t), late

    def advance(self, now_s: float) -> list[FiredWindow]:
        """Move a processing-time watermark to ``now_s`` and return the windows that fire.

        Under event time the watermark moves only with the records' times, and this fires nothing.
        """
        if self.spec.time_field is not None:
            return []
        return self._advance_to(now_s)

    def _advance_to(self, t: float) -> list[FiredWindow]:
        if t <= self.watermark_s:
            return []
        self.watermark_s = t
        horizon = t - self.spec.allowed_lateness_s
        if horizon < self._next_end_s:  # the common case: no window is due, and no scan
            return []
        due = sorted((w for w in self._open if w[1] <= horizon), key=lambda w: (w[1], w[0]))
        self.fired_count += len(due)
        fired = [FiredWindow(w[0], w[1], self._open.pop(w)) for w in due]
        self._next_end_s = min((w[1] for w in self._open), default=math.inf)
        return fired

    def flush(self) -> list[FiredWindow]:
        """Fire every open window now, oldest first, with what it holds (a drain's last step)."""
        due = self.open_windows
        self.fired_count += len(due)
        fired = [FiredWindow(w[0], w[1], self._open.pop(w)) for w in due]
        self._next_end_s = math.inf
        return fired

    @property
    def open_windows(self) -> list[Window]:
        """The windows holding records that have not fired, oldest first."""
        return sorted(self._open, key=lambda w: (w[1], w[0]))

    def snapshot(self) -> dict[str, Any]:
        """The state to checkpoint with the stage's offsets: plain dicts, lists and numbers.

        The records are included as they are (dicts or bytes); the runtime encodes them.
        """
        spec = self.spec
        return {
            "spec": [spec.size_s, spec.slide_s, spec.time_field, spec.allowed_lateness_s],
            "watermark_s": None if self.watermark_s == -math.inf else self.watermark_s,
            "late_count": self.late_count,
            "fired_count": self.fired_count,
            "windows": [[start, end, list(records)] for (start, end), records in self._open.items()],
        }

    @classmethod
    def restore(cls, spec: WindowSpec, snapshot: dict[str, Any]) -> Windower:
        """A windower resuming from :meth:`snapshot` under ``spec``.

        Raises:
            DataStreamError: the snapshot was taken under other window options (the stage
                changed: its open windows mean something else now) or is malformed.
        """
        try:
            taken = WindowSpec(*snapshot["spec"])
            watermark = snapshot["watermark_s"]
            windower = cls(
                spec,
                -math.inf if watermark is None else float(watermark),
                int(snapshot["late_count"]),
                int(snapshot["fired_count"]),
            )
            for start, end, records in snapshot["windows"]:
                windower._open[(float(start), float(end))] = list(records)
            windower._next_end_s = min((w[1] for w in windower._open), default=math.inf)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataStreamError(f"window checkpoint is malformed: {type(exc).__name__}: {exc}") from None
        if taken != spec:
            raise DataStreamError(
                f"window checkpoint was taken with {taken}, the stage now has {spec}; it cannot resume it"
            )
        return windower
