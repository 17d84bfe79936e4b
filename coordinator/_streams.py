"""The coordinator's knowledge of stream pipelines: instances' reports, status, stop, scaling.

A stream pipeline is one ordinary run labelled ``xpipe.stream`` (see ``sdk/streams/_labels``),
one long-lived task per stage instance. The scheduler already knows those runs, also after a
restart or a failover (the engine resumes every unfinished run from the store), so the
registry does not copy them: it reads the engine's state when asked, and adds only what
the scheduler cannot know: each instance's last report, the rates derived from its
counters, stop requests and auto-scaling. Those live in memory; after a failover the
instances report again within :data:`REPORT_INTERVAL_S`, and a stop is asked again.

Everything here is pure (no grpc, no I/O): ``_stream_service`` translates the wire and
applies what :class:`StreamRegistry` decides (a cancel, a resubmit).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from xpipe._proto import common_pb2 as pb
from xpipe._proto import stream_pb2
from xpipe.security._principal import DEFAULT_NAMESPACE
from xpipe.streams._labels import (
    AUTO_SCALING_LABEL,
    REPORT_INTERVAL_S,
    STAGES_LABEL,
    STREAM_LABEL,
    instance_task_name,
    stages_from_label,
)

from ._entries import RunEntry

__all__ = [
    "DOWN_COOLDOWN_S",
    "LAG_UP_THRESHOLD",
    "MAX_CHECKPOINT_BYTES",
    "STALE_REPORT_S",
    "UP_COOLDOWN_S",
    "BadInstance",
    "Cooldowns",
    "StreamRegistry",
    "scale",
]

log = logging.getLogger(__name__)

#: Largest checkpoint an instance may save (its pickled state and open windows).
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
#: An instance whose last report is older than this is unhealthy (three missed reports).
STALE_REPORT_S = 3 * REPORT_INTERVAL_S
#: A RUNNING instance that has not reported for this long after its task started is unhealthy.
STARTUP_GRACE_S = 10.0
#: Default drain timeout of StopStream (its ``timeout_s`` 0).
STOP_TIMEOUT_S = 30.0

# ---------------------------------------------------------------- auto-scaling rule
#: Lag (records, summed over a stage) above which a growing lag scales the stage up.
LAG_UP_THRESHOLD = 1000
#: Lag at most this is "about zero" for scaling down.
LAG_IDLE = 10
#: Lag over this many times the threshold doubles the active instances instead of adding one.
DOUBLE_FACTOR = 10
#: The lag must have grown over this window to scale up.
GROWTH_WINDOW_S = 5.0
#: Defaults of :class:`Cooldowns`: least time between two changes of one stage.
UP_COOLDOWN_S = 5.0
DOWN_COOLDOWN_S = 30.0
#: Lag samples kept per stage are at least this far apart.
SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class Cooldowns:
    """Least seconds since the last change before scaling up, and down."""

    up_s: float = UP_COOLDOWN_S
    down_s: float = DOWN_COOLDOWN_S


def scale(
    active: int,
    parallelism: int,
    lag_history: Sequence[tuple[float, int]],
    now: float,
    last_change: float,
    cooldowns: Cooldowns = Cooldowns(),
) -> int:
    """The active instance count a stage should have, from its recent lag.

    Up (by one, or doubled when the lag is over ``DOUBLE_FACTOR * LAG_UP_THRESHOLD``) when
    the lag grew over the last :data:`GROWTH_WINDOW_S`, is above :data:`LAG_UP_THRESHOLD`,
    and ``cooldowns.up_s`` passed since ``last_change``. Down by one when every sample of
    the last ``cooldowns.down_s`` is at most :data:`LAG_IDLE` (and the history reaches that
    far back) and the down cooldown passed. Always within 1..parallelism.

    Args:
        lag_history: ``(unix_s, lag)`` samples, oldest first; unknown lags are left out.
    """
    parallelism = max(1, parallelism)
    active = min(max(1, active), parallelism)
    if not lag_history:
        return active
    latest_t, latest = lag_history[-1]
    since_change_s = now - last_change
    window = [lag for t, lag in lag_history if t >= now - GROWTH_WINDOW_S]
    spans_window = lag_history[0][0] <= now - GROWTH_WINDOW_S / 2
    if (
        active < parallelism and since_change_s >= cooldowns.up_s and latest > LAG_UP_THRESHOLD
        and spans_window and len(window) >= 2 and window[-1] > window[0]
    ):  # fmt: skip
        step = active if latest > DOUBLE_FACTOR * LAG_UP_THRESHOLD else 1
        return min(parallelism, active + step)
    recent = [lag for t, lag in lag_history if t >= now - cooldowns.down_s]
    reaches_back = lag_history[0][0] <= now - cooldowns.down_s
    if active > 1 and since_change_s >= cooldowns.down_s and reaches_back and all(lag <= LAG_IDLE for lag in recent):
        return active - 1
    return active


class BadInstance(Exception):
    """A request names no stream, stage or instance the coordinator knows; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Seen:
    """An instance's last report, when it came, and rates from its counters."""

    report: stream_pb2.InstanceReport
    at: float
    in_per_s: float = 0.0
    out_per_s: float = 0.0


@dataclass(slots=True)
class _Stop:
    run_id: str
    drain: bool
    deadline: float


@dataclass(slots=True)
class _Scaling:
    active: int
    last_change: float
    history: deque = field(default_factory=lambda: deque(maxlen=int((DOWN_COOLDOWN_S + GROWTH_WINDOW_S) / SAMPLE_EVERY_S) + 8))


def stream_of(run: RunEntry) -> str:
    """The stream pipeline a run runs, or "" for an ordinary run."""
    return run.spec.labels.get(STREAM_LABEL, "")


def namespace_of(run: RunEntry) -> str:
    return run.spec.namespace or DEFAULT_NAMESPACE


_parsed_stages: dict[str, tuple[str, list[dict]]] = {}


def _stages(run: RunEntry) -> list[dict]:
    """The run's stages label, parsed once per label value (reports read it every second)."""
    label = run.spec.labels.get(STAGES_LABEL, "")
    cached = _parsed_stages.get(run.run_id)
    if cached is None or cached[0] != label:
        if len(_parsed_stages) > 4096:  # runs come and go: keep this bounded
            _parsed_stages.clear()
        cached = _parsed_stages[run.run_id] = (label, stages_from_label(label))
    return cached[1]


def current_runs(runs: Iterable[RunEntry]) -> dict[str, RunEntry]:
    """Each stream's current run: its newest unfinished run, else its newest run."""
    best: dict[str, RunEntry] = {}
    for run in runs:
        name = stream_of(run)
        if not name:
            continue
        held = best.get(name)
        if held is None or (run.state == pb.RUN_RUNNING, run.created_at) > (held.state == pb.RUN_RUNNING, held.created_at):
            best[name] = run
    return best


def is_stale(ref: stream_pb2.InstanceRef, run: RunEntry, task) -> bool:
    """An instance of an older run, or an older attempt than the task's current one: fenced.

    An empty run_id or a zero attempt is "not known to the instance" and is not held
    against it (the other field still fences it).
    """
    return bool(ref.run_id and ref.run_id != run.run_id) or 0 < ref.attempt < task.attempt


def instance_problem(task_state: int, seen: _Seen | None, started_at: float, now: float, error: str = "") -> str:
    """Why an instance is unhealthy, or "" when it is not."""
    if task_state == pb.FAILED:
        return f"task failed: {error}" if error else "task failed"
    if task_state == pb.SUCCEEDED:
        return ""  # drained and returned
    if task_state != pb.RUNNING:
        return f"task is {pb.TaskState.Name(task_state)}"
    if seen is None:
        waited_s = now - started_at if started_at else 0.0
        return f"no report {waited_s:.0f} s after it started" if waited_s > STARTUP_GRACE_S else ""
    if seen.report.state == "failed":
        return f"instance failed: {seen.report.last_error}" if seen.report.last_error else "instance failed"
    age_s = now - seen.at
    if age_s > STALE_REPORT_S:
        return f"last report {age_s:.1f} s ago (expected every {REPORT_INTERVAL_S:g} s)"
    return ""


class StreamRegistry:
    """Reports, rates, stop requests and scaling of the stream pipelines; status from them.

    Args:
        cooldowns: auto-scaling's cooldowns (tests shorten them).
    """

    def __init__(self, cooldowns: Cooldowns = Cooldowns()):
        self.cooldowns = cooldowns
        self._seen: dict[tuple[str, str, int], _Seen] = {}
        self._stops: dict[str, _Stop] = {}
        self._scaling: dict[tuple[str, str], _Scaling] = {}
        self._current: dict[str, str] = {}  # stream -> its current run id, to skip a scan

    # ------------------------------------------------------------ instances

    def report(self, runs: Mapping[str, RunEntry], req: stream_pb2.InstanceReport, now: float) -> stream_pb2.InstanceControl:
        """Keep an instance's report and answer what it should do.

        Raises:
            BadInstance: the stream, stage or instance is unknown (names which).
        """
        ref = req.ref
        own = runs.get(ref.run_id) if ref.run_id else None
        if own is not None and own.state == pb.RUN_RUNNING and stream_of(own) == ref.stream:
            current = own  # the common case, O(1): a restart cancels the old run before it submits
        else:
            current = self.current(runs, ref.stream)
        task = self.instance_task(current, ref.stage, ref.instance)
        if is_stale(ref, current, task):
            log.info("fenced a report of %s/%s[%d] (run %s attempt %d; current run %s attempt %d)", ref.stream,
                     ref.stage, ref.instance, ref.run_id, ref.attempt, current.run_id, task.attempt)  # fmt: skip
            return stream_pb2.InstanceControl(fenced=True)
        key = (ref.stream, ref.stage, ref.instance)
        old = self._seen.get(key)
        seen = _Seen(req, now)
        if old is not None and old.report.ref.attempt == ref.attempt and now > old.at:
            elapsed_s = now - old.at
            seen.in_per_s = max(0, req.records_in - old.report.records_in) / elapsed_s
            seen.out_per_s = max(0, req.records_out - old.report.records_out) / elapsed_s
        self._seen[key] = seen
        control = stream_pb2.InstanceControl()
        stop = self._stops.get(ref.stream)
        if stop is not None and stop.run_id == current.run_id:
            control.drain, control.stop = stop.drain, not stop.drain
        if current.spec.labels.get(AUTO_SCALING_LABEL) == "1":
            control.active_instances = self._autoscale(current, ref.stage, now)
        return control

    def _autoscale(self, run: RunEntry, stage: str, now: float) -> int:
        parallelism = next((s["parallelism"] for s in _stages(run) if s["name"] == stage), 1)
        key = (stream_of(run), stage)
        scaling = self._scaling.get(key)
        if scaling is None:
            scaling = self._scaling[key] = _Scaling(active=parallelism, last_change=now)
        lags = [self._seen.get((key[0], stage, i)) for i in range(parallelism)]
        if all(s is not None and s.report.lag >= 0 and s.report.ref.run_id == run.run_id for s in lags):
            if not scaling.history or now - scaling.history[-1][0] >= SAMPLE_EVERY_S:
                scaling.history.append((now, sum(s.report.lag for s in lags)))
        active = scale(scaling.active, parallelism, scaling.history, now, scaling.last_change, self.cooldowns)
        if active != scaling.active:
            log.info("stream %s stage %s: %d -> %d active instances", key[0], stage, scaling.active, active)
            scaling.active, scaling.last_change = active, now
        return active

    def current(self, runs: Mapping[str, RunEntry], name: str) -> RunEntry:
        """The stream's current run. Raises BadInstance (NOT_FOUND) for an unknown stream."""
        if not name:
            raise BadInstance("INVALID_ARGUMENT", "stream name is empty")
        known = runs.get(self._current.get(name, ""))
        if known is not None and known.state == pb.RUN_RUNNING and stream_of(known) == name:
            return known  # a restart cancels the old run first: a running one is the newest
        run = current_runs(runs.values()).get(name)
        if run is not None:
            self._current[name] = run.run_id
        if run is None:
            raise BadInstance("NOT_FOUND", f"no stream pipeline {name!r} is known to the coordinator")
        return run

    @staticmethod
    def instance_task(run: RunEntry, stage: str, instance: int):
        """The task of ``stage[instance]`` in ``run``. Raises BadInstance naming what is wrong."""
        if not stage:
            raise BadInstance("INVALID_ARGUMENT", "stage name is empty")
        stages = {s["name"]: s["parallelism"] for s in _stages(run)}
        if stage not in stages:
            raise BadInstance("NOT_FOUND", f"stream {stream_of(run)!r} has no stage {stage!r} (stages: {sorted(stages)})")
        if instance >= stages[stage]:
            raise BadInstance("INVALID_ARGUMENT",
                              f"instance {instance} of stage {stage!r} is out of range: parallelism is {stages[stage]}")
        task = run.tasks.get(instance_task_name(stage, instance))
        if task is None:
            raise BadInstance("NOT_FOUND", f"run {run.run_id} has no task {instance_task_name(stage, instance)!r}")
        return task

    # ------------------------------------------------------------ stop and restart

    def request_stop(self, run: RunEntry, drain: bool, timeout_s: float, now: float) -> _Stop:
        """Ask the run's instances to drain (or stop); the caller cancels it past the deadline."""
        stop = _Stop(run.run_id, drain, now + (timeout_s if timeout_s > 0 else STOP_TIMEOUT_S))
        self._stops[stream_of(run)] = stop
        return stop

    def forget_stop(self, name: str) -> None:
        self._stops.pop(name, None)

    # ------------------------------------------------------------ status

    def status(self, run: RunEntry, now: float, worker_name=lambda worker_id: None) -> stream_pb2.StreamStatus:
        """The stream's status as GetStreams shows it (``worker_name`` maps a worker id to its name)."""
        name = stream_of(run)
        stop = self._stops.get(name)
        stopping = stop is not None and stop.run_id == run.run_id
        auto = run.spec.labels.get(AUTO_SCALING_LABEL) == "1"
        out = stream_pb2.StreamStatus(name=name, run_id=run.run_id, started_at=run.created_at, auto_scaling=auto,
                                      namespace=namespace_of(run))  # fmt: skip
        problems: list[str] = []
        reported = False
        for spec in _stages(run):
            stage = out.stages.add(name=spec["name"], input=spec["input"], parallelism=spec["parallelism"])
            scaling = self._scaling.get((name, spec["name"])) if auto else None
            stage.active = scaling.active if scaling is not None else spec["parallelism"]
            lag, lag_known = 0, True
            for i in range(spec["parallelism"]):
                task = run.tasks.get(instance_task_name(spec["name"], i))
                if task is None:
                    continue
                seen = self._seen.get((name, spec["name"], i))
                if seen is not None and seen.report.ref.run_id != run.run_id:
                    seen = None  # a report of an earlier run of this stream
                error = task.error.message if task.error is not None else ""
                inst = stage.instances.add(instance=i, task=task.name, task_state=pb.TaskState.Name(task.state),
                                           worker_id=task.worker, worker_name=worker_name(task.worker) or "")  # fmt: skip
                inst.problem = instance_problem(task.state, seen, task.started_at, now, error)
                inst.healthy = not inst.problem
                if inst.problem:
                    problems.append(f"{task.name}: {inst.problem}")
                if seen is None:
                    lag_known = lag_known and task.state == pb.SUCCEEDED
                    continue
                reported = True
                r = seen.report
                inst.last_report.CopyFrom(r)
                inst.reported_at = seen.at
                fresh = now - seen.at <= STALE_REPORT_S and task.state == pb.RUNNING
                stage.records_in_per_s += seen.in_per_s if fresh else 0.0
                stage.records_out_per_s += seen.out_per_s if fresh else 0.0
                stage.records_in += r.records_in
                stage.records_out += r.records_out
                stage.dropped += r.dropped
                stage.errors += r.errors
                stage.dead_lettered += r.dead_lettered
                stage.late += r.late
                stage.redelivered += r.redelivered
                if r.buffer_size:
                    stage.buffer_fill = max(stage.buffer_fill, r.buffer_fill / r.buffer_size)
                if r.lag < 0:
                    lag_known = False
                else:
                    lag += r.lag
            stage.lag = lag if lag_known and stage.instances else -1
        if run.state == pb.RUN_FAILED:
            out.state, out.healthy = "failed", False
            out.problem = "; ".join(problems) or "the run failed"
        elif run.state in (pb.RUN_SUCCEEDED, pb.RUN_CANCELLED):
            out.state, out.healthy = "stopped", True
        else:
            out.state = "draining" if stopping else "running" if reported else "starting"
            out.healthy = not problems
            out.problem = "; ".join(problems)
        return out
