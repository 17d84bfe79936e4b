"""Alerting: rules that watch the scheduler's records, and delivery to Slack, webhooks, email, PagerDuty.

The coordinator raises and delivers alerts, so they never depend on a client staying
alive. Config comes from two places, one shape (``xpipe.telemetry._alertconfig``): the
cluster's ``--alerting-config FILE`` (every run, and worker_lost) and a pipeline's
``monitoring_config["alerting"]`` (its runs; its rules override the cluster's, and its
channels are added).

The engine hands each turn's actions to :meth:`Alerting.observe` after they are
committed, only while :attr:`Alerting.active` (a cluster config, or a run with one): with
no config that is one attribute check per turn. Per task record it costs a dict lookup,
and for a finished task an append to a bounded deque and a comparison with a cached
median; the robust z (``xpipe.insights._robust``) is computed only for a task slow enough
that it could be an anomaly.

Rules (``Alert.rule``): run_failed, task_failed (after its retries), run_slow (slower
than p95 x factor of its pipeline's recent runs), anomaly (a task's duration far above
its name's recent ones), worker_lost, circuit_open, metric_threshold. An alert of the
same rule and target within ``dedupe_window_s`` is counted on the first one
(``details_json["count"]``) and not delivered again.

History: the newest :data:`HISTORY_CAP` alerts in memory, and with the SQLite store in
its database (``_alertstore``), so ``xpipe alerts`` and the dashboard show them after a
restart. Under etcd the history is memory-only (it starts empty on a new leader).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import uuid
from collections import OrderedDict, deque
from typing import Any

from xpipe._domain import error_type_name
from xpipe._proto import common_pb2 as pb
from xpipe._proto import insights_pb2
from xpipe.insights._robust import SENSITIVITY_Z, median_mad, robust_z
from xpipe.telemetry._alertconfig import (
    DEFAULT_DEDUPE_WINDOW_S, DEFAULT_PAGERDUTY_URL, DEFAULT_RATE_PER_MINUTE, RULES, AlertConfigError, parse_alerting,
    rule_settings,
)  # fmt: skip

from ._alertsend import Deliverer, Route
from ._events import CircuitOpened, RunRecord, TaskRecord, WorkerLost

__all__ = ["Alerting", "HISTORY_CAP", "load_alerting_config"]

log = logging.getLogger(__name__)

#: Alerts kept (memory and store); older ones are forgotten.
HISTORY_CAP = 10_000
#: Dedupe keys remembered at most (oldest forgotten first).
_DEDUPE_KEYS_CAP = 10_000
#: (pipeline, task) names whose recent durations are kept at most (oldest forgotten first).
_DURATION_KEYS_CAP = 100_000
#: How often changed alerts are written to the store.
_FLUSH_INTERVAL_S = 0.5
_SEVERITY = {"run_failed": "critical", "task_failed": "warning", "run_slow": "warning", "anomaly": "warning",
             "worker_lost": "critical", "circuit_open": "critical", "metric_threshold": "warning"}  # fmt: skip


def load_alerting_config(path) -> dict[str, Any]:
    """Read and check ``--alerting-config FILE`` (``.toml``, else JSON).

    Raises:
        ValueError: unreadable, not parsable, or a bad key; the message names the file and key.
    """
    import tomllib

    try:
        text = path.read_text()
        raw = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--alerting-config {path}: {exc}") from None
    try:
        return parse_alerting(raw, "alerting")
    except AlertConfigError as exc:
        raise ValueError(f"--alerting-config {path}: {exc}") from None


class _Scope:
    """What applies to one run (or the cluster): each rule's settings, and the routes."""

    __slots__ = ("config", "rules", "routes", "anomaly", "thresholds")

    def __init__(self, config: dict[str, Any], base: _Scope | None = None):
        self.config = config
        rules = dict(base.rules) if base is not None else {}
        for name in RULES:
            given = config.get("rules", {}).get(name)
            if base is None or given is not None:
                rules[name] = rule_settings(config, name)
        self.rules: dict[str, dict[str, Any] | None] = rules
        self.anomaly = rules.get("anomaly")
        thresholds: dict[str, list[dict[str, Any]]] = {}
        for t in (rules.get("metric_threshold") or {}).get("thresholds", []):
            thresholds.setdefault(t["metric"], []).append(t)
        self.thresholds = thresholds
        routes = list(base.routes) if base is not None else []
        for route in _routes(config, base.config if base is not None else {}):
            if all((r.channel, r.target) != (route.channel, route.target) for r in routes):
                routes.append(route)
        self.routes: list[Route] = routes


def _with_detection(scope: _Scope, detection: Any, own: dict[str, Any] | None) -> _Scope:
    """``scope`` with the run's ``anomaly_detection`` applied to its anomaly rule.

    ``enabled: False`` turns the rule off for the run; a ``sensitivity`` sets its threshold
    (:data:`SENSITIVITY_Z`, as ``detect_anomalies`` uses) unless the run's own alerting rules
    name a threshold.
    """
    if not isinstance(detection, dict) or scope.anomaly is None:
        return scope
    if detection.get("enabled") is False:
        anomaly = None
    else:
        z = SENSITIVITY_Z.get(detection.get("sensitivity"))  # type: ignore[arg-type]
        given = ((own or {}).get("rules") or {}).get("anomaly")
        if z is None or (isinstance(given, dict) and "threshold" in given) or z == scope.anomaly["threshold"]:
            return scope
        anomaly = {**scope.anomaly, "threshold": z}
    tuned = copy.copy(scope)
    tuned.rules = {**scope.rules, "anomaly": anomaly}
    tuned.anomaly = anomaly
    return tuned


def _routes(config: dict[str, Any], cluster: dict[str, Any]) -> list[Route]:
    out = []
    for key, channel in (("slack_webhook", "slack"), ("webhook", "webhook")):
        if key in config:
            out.append(Route(channel, config[key]))
    smtp = config.get("smtp") or cluster.get("smtp")
    for address in config.get("email_alerts", []):
        if smtp is None:
            out.append(Route("email", address, problem="dropped: no smtp server configured for e-mail alerts (alerting.smtp)"))
        else:
            out.append(Route("email", address, tuple(sorted(smtp.items()))))
    pd = config.get("pager_duty")
    if pd is True and isinstance(cluster.get("pager_duty"), dict):
        pd = cluster["pager_duty"]
    if pd:
        pd = {} if pd is True else pd
        url = pd.get("url", DEFAULT_PAGERDUTY_URL)
        if "routing_key" not in pd:
            out.append(Route("pagerduty", url, problem="dropped: pager_duty needs a routing_key (alerting.pager_duty)"))
        else:
            out.append(Route("pagerduty", url, (("routing_key", pd["routing_key"]),)))
    return out


class _Durations:
    """Recent durations of one task name (or pipeline), with a median refreshed now and then."""

    __slots__ = ("values", "median", "fresh_in")

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=window)
        self.median = math.inf
        self.fresh_in = 0


class Alerting:
    """The coordinator's alert engine.

    Args:
        config: the checked cluster config (``--alerting-config``), or None.
        loopback_only: deliver only to loopback hosts (``--alert-loopback-only``).
        backoff_initial_s: first wait between tries of a delivery (doubles, up to 60 s).
        queue_size: deliveries waiting at most.
    """

    def __init__(
        self, config: dict[str, Any] | None = None, *, loopback_only: bool = False, backoff_initial_s: float = 1.0,
        queue_size: int = 1000,
    ):  # fmt: skip
        self.config = config or {}
        self.cluster: _Scope | None = None
        if config:
            self.cluster = _Scope(self.config)
        self.dedupe_window_s = float(self.config.get("dedupe_window_s", DEFAULT_DEDUPE_WINDOW_S))
        self.deliverer = Deliverer(
            self._changed, queue_size=queue_size, backoff_initial_s=backoff_initial_s, loopback_only=loopback_only,
            rate_per_minute=int(self.config.get("rate_per_minute", DEFAULT_RATE_PER_MINUTE)),
        )  # fmt: skip
        #: run_id -> the scope that applies, for runs alerting watches.
        self._runs: dict[str, _Scope] = {}
        self._durations: dict[tuple[str, str], _Durations] = {}
        self._run_durations: dict[str, deque[float]] = {}
        self._history: deque[insights_pb2.Alert] = deque(maxlen=HISTORY_CAP)
        self._recent: OrderedDict[str, insights_pb2.Alert] = OrderedDict()
        self._dirty: dict[str, insights_pb2.Alert] = {}
        self._flusher: asyncio.Task | None = None
        self._flushed = asyncio.Event()
        self.store = None  # an AlertStore when the store is SQLite (see start)
        #: Alerts counted on an earlier one of the same dedupe key instead of raised.
        self.deduplicated = 0

    @property
    def active(self) -> bool:
        """Does any run or the cluster have alerting? (The engine's one check per turn.)"""
        return self.cluster is not None or bool(self._runs)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, store_path=None, crypt=None) -> None:
        """Load the kept history (SQLite store at ``store_path``, sealed with ``crypt``) and start delivering."""
        if store_path is not None and self.store is None:
            from ._alertstore import AlertStore

            self.store = AlertStore(store_path, cap=HISTORY_CAP, crypt=crypt)
            kept = await self.store.load()
            self._history.extend(kept)
        self.deliverer.start()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="xpipe-alert-flush")

    async def stop(self) -> None:
        """Stop delivering and write what changed (idempotent)."""
        await self.deliverer.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self._flush()
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _changed(self, alert: insights_pb2.Alert) -> None:
        self._dirty[alert.id] = alert

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            try:
                await self._flush()
            except Exception:  # a full disk: alerts stay in memory and are written next time
                log.exception("could not write %d alerts to the store; trying again", len(self._dirty))

    async def _flush(self) -> None:
        if self.store is None:
            self._dirty.clear()
            return
        if not self._dirty:
            return
        batch, self._dirty = list(self._dirty.values()), {}
        try:
            await self.store.put(batch)
        except BaseException:
            for alert in batch:
                self._dirty.setdefault(alert.id, alert)
            raise

    # ------------------------------------------------------------------ config per run

    def watch_run(self, run_id: str, spec: pb.PipelineSpec) -> None:
        """A run was submitted or resumed: note which rules and channels apply to it (once per run)."""
        own = None
        detection: Any = None
        if spec.monitoring_json:
            try:
                monitoring = json.loads(spec.monitoring_json)
                section = monitoring.get("alerting")
                detection = monitoring.get("anomaly_detection")
                own = parse_alerting(section, 'monitoring_config["alerting"]') if section else None
            except (ValueError, AttributeError) as exc:  # a client that skipped the SDK's checks
                log.error("run %s: its alerting config is refused, alerting uses the cluster's: %s", run_id, exc)
        if own is not None:
            scope = _Scope(own, self.cluster)
        elif self.cluster is not None:
            scope = self.cluster
        else:
            return
        self._runs[run_id] = _with_detection(scope, detection, own)

    # ------------------------------------------------------------------ rules

    def observe(self, actions: list, state, now: float) -> None:
        """One engine turn's committed actions: raise the alerts they call for."""
        runs = self._runs
        for action in actions:
            kind = type(action)
            if kind is TaskRecord:
                scope = runs.get(action.run_id)
                if scope is None:
                    continue
                if action.state == pb.SUCCEEDED:
                    if scope.anomaly is not None and action.started_at:
                        self._check_duration(scope, action, state, now)
                    if action.telemetry is not None and scope.thresholds:
                        self._check_metrics(scope, action, state, now)
                elif action.state == pb.FAILED and scope.rules.get("task_failed") is not None:
                    self._task_failed(scope, action, state, now)
            elif kind is RunRecord:
                if action.state in (pb.RUN_SUCCEEDED, pb.RUN_FAILED, pb.RUN_CANCELLED):
                    scope = runs.pop(action.run_id, None)
                    if scope is not None:
                        self._run_finished(scope, action, now)
            elif kind is WorkerLost:
                if self.cluster is not None and self.cluster.rules.get("worker_lost") is not None:
                    self.raise_alert(self.cluster, "worker_lost", f"worker {action.name} lost: no word for "
                                     f"{action.silent_s:.1f}s; {action.attempts} attempts requeued", now,
                                     target=action.name, worker=action.name,
                                     details={"worker_id": action.worker_id, "requeued_attempts": action.attempts})  # fmt: skip
            elif kind is CircuitOpened:
                scope = runs.get(action.run_id) or self.cluster
                if scope is not None and scope.rules.get("circuit_open") is not None:
                    run = state.runs.get(action.run_id)
                    self.raise_alert(scope, "circuit_open", f"circuit {action.circuit} opened after "
                                     f"{action.failures} failures (task {action.task})", now,
                                     target=action.circuit, run_id=action.run_id, task=action.task,
                                     pipeline=run.name if run is not None else "", details={"circuit": action.circuit})  # fmt: skip

    def _task_failed(self, scope: _Scope, rec: TaskRecord, state, now: float) -> None:
        run = state.runs.get(rec.run_id)
        pipeline = run.name if run is not None else ""
        error = rec.error
        why = f"{error_type_name(error)}: {error.message}"[:300] if error is not None else "failed"
        self.raise_alert(scope, "task_failed", f"task {rec.name} of {pipeline} failed after {rec.attempt} "
                         f"attempts (run {rec.run_id}): {why}", now, target=f"{pipeline}/{rec.name}",
                         run_id=rec.run_id, pipeline=pipeline, task=rec.name, worker=rec.worker,
                         details={"attempts": rec.attempt, "error": why})  # fmt: skip

    def _check_duration(self, scope: _Scope, rec: TaskRecord, state, now: float) -> None:
        settings = scope.anomaly
        run = state.runs.get(rec.run_id)
        pipeline = run.name if run is not None else ""
        key = (pipeline, rec.name)
        durations = self._durations.get(key)
        if durations is None:
            if len(self._durations) >= _DURATION_KEYS_CAP:  # forget the oldest task name first
                del self._durations[next(iter(self._durations))]
            durations = self._durations[key] = _Durations(int(settings["window"]))
        value = rec.finished_at - rec.started_at
        values = durations.values
        threshold = settings["threshold"]
        # robust_z floors the spread at 5% of the median: below this bound z cannot pass the threshold.
        if len(values) >= settings["min_samples"] and value > durations.median * (1 + 0.05 * threshold):
            z = robust_z(value, values)
            if z > threshold:
                median = median_mad(values)[0]
                self.raise_alert(scope, "anomaly", f"task {rec.name} of {pipeline} took {value:.3f}s, "
                                 f"{z:.1f} robust sd above its median {median:.3f}s (run {rec.run_id})", now,
                                 target=f"{pipeline}/{rec.name}", run_id=rec.run_id, pipeline=pipeline,
                                 task=rec.name, worker=rec.worker,
                                 details={"duration_s": value, "median_s": median, "robust_z": z})  # fmt: skip
        values.append(value)
        durations.fresh_in -= 1
        if durations.fresh_in <= 0:  # the median moves slowly: refresh it every tenth of the window
            durations.median = median_mad(values)[0]
            durations.fresh_in = max(1, len(values) // 10, values.maxlen // 10)

    def _check_metrics(self, scope: _Scope, rec: TaskRecord, state, now: float) -> None:
        for point in rec.telemetry.metrics:
            for t in scope.thresholds.get(point.name, ()):
                above, below = t.get("above"), t.get("below")
                if (above is not None and point.value > above) or (below is not None and point.value < below):
                    run = state.runs.get(rec.run_id)
                    pipeline = run.name if run is not None else ""
                    limit = f"above {above:g}" if above is not None and point.value > above else f"below {below:g}"
                    self.raise_alert(scope, "metric_threshold", f"metric {point.name} = {point.value:g} of task "
                                     f"{rec.name} is {limit} (run {rec.run_id})", now,
                                     target=f"{pipeline}/{point.name}", run_id=rec.run_id, pipeline=pipeline,
                                     task=rec.name, details={"metric": point.name, "value": point.value, **t})  # fmt: skip

    def _run_finished(self, scope: _Scope, rec: RunRecord, now: float) -> None:
        took_s = (rec.finished_at or now) - rec.created_at
        if rec.state == pb.RUN_FAILED and scope.rules.get("run_failed") is not None:
            self.raise_alert(scope, "run_failed", f"run {rec.run_id} of {rec.name} failed after {took_s:.1f}s", now,
                             target=rec.name, run_id=rec.run_id, pipeline=rec.name, details={"duration_s": took_s})
        settings = scope.rules.get("run_slow")
        if rec.state != pb.RUN_SUCCEEDED or settings is None:
            return
        recent = self._run_durations.get(rec.name)
        if recent is None:
            recent = self._run_durations[rec.name] = deque(maxlen=int(settings["window_runs"]))
        if len(recent) >= settings["min_runs"]:
            ordered = sorted(recent)
            p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
            if took_s > p95 * settings["factor"]:
                self.raise_alert(scope, "run_slow", f"run {rec.run_id} of {rec.name} took {took_s:.1f}s, over "
                                 f"{settings['factor']:g} x its p95 {p95:.1f}s", now, target=rec.name,
                                 run_id=rec.run_id, pipeline=rec.name,
                                 details={"duration_s": took_s, "p95_s": p95, "runs": len(ordered)})  # fmt: skip
        recent.append(took_s)

    # ------------------------------------------------------------------ raising

    def raise_alert(
        self, scope: _Scope, rule: str, summary: str, now: float, *, target: str, run_id: str = "", pipeline: str = "",
        task: str = "", worker: str = "", details: dict[str, Any] | None = None,
    ) -> insights_pb2.Alert | None:  # fmt: skip
        """Record an alert and queue its deliveries; a repeat within the dedupe window is only counted.

        Returns:
            The new alert, or None when it was counted on an earlier one.
        """
        dedupe_key = f"{rule}:{target}"
        earlier = self._recent.get(dedupe_key)
        if earlier is not None and now - earlier.at < self.dedupe_window_s:
            self.deduplicated += 1
            counted = json.loads(earlier.details_json)
            counted["count"] = counted.get("count", 1) + 1
            counted["last_at"] = now
            earlier.details_json = json.dumps(counted, sort_keys=True)
            self._changed(earlier)
            return None
        body = {"count": 1, **(details or {})}
        alert = insights_pb2.Alert(
            id=uuid.uuid4().hex[:16], rule=rule, severity=_SEVERITY[rule], summary=summary[:500],
            details_json=json.dumps(body, sort_keys=True, default=str), at=now, run_id=run_id, pipeline=pipeline,
            task=task, worker=worker, dedupe_key=dedupe_key,
        )  # fmt: skip
        self._recent[dedupe_key] = alert
        self._recent.move_to_end(dedupe_key)
        while len(self._recent) > _DEDUPE_KEYS_CAP:
            self._recent.popitem(last=False)
        self._history.append(alert)
        log.warning("alert %s: %s", rule, alert.summary)
        for route in scope.routes:
            self.deliverer.offer(alert, route)
        self._changed(alert)
        return alert

    def history(self, *, since: float = 0.0, limit: int = 100, rule: str = "") -> list[insights_pb2.Alert]:
        """Alerts raised, newest first (at most ``limit``, since ``since``, of ``rule`` if given)."""
        out = []
        for alert in reversed(self._history):
            if alert.at < since:
                break
            if rule and alert.rule != rule:
                continue
            out.append(alert)
            if len(out) >= limit:
                break
        return out
