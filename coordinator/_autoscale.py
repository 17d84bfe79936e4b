"""The autoscaler's rule: a pure function of utilization, backlog, settings and time.

No clock, no I/O: the coordinator's loop (``_autoscale_loop``) observes the state machine,
passes ``now`` in, and carries the :class:`Decision` out through a provider. The rule, in
order (docs/autoscaling.md):

1. Bounds first: fewer workers than ``min_workers`` scale up to it, more than ``max_workers``
   scale down to it, whatever the cooldowns.
2. Scale up when utilization (the higher of busy slots / slots and mean CPU from
   heartbeats) reaches ``scale_up_threshold``, or ready tasks wait for slots (the backlog):
   to ``ceil(n * utilization / scale_up_threshold)`` and to enough workers for the backlog,
   at least one more, at most ``max_workers``; not within ``scale_up_cooldown_s`` of the
   last scale-up.
3. Scale down when utilization is below ``scale_down_threshold`` and nothing waits: to
   ``ceil(n * utilization / midpoint)`` of the thresholds, never below ``min_workers``; not
   within ``scale_down_cooldown_s`` of the last scaling either way. Scaling down only
   drains: the decision names the workers to drain (idle ones first, then the least loaded);
   the provider removes them once they have left.
4. Otherwise hold the last desired count (a worker asked for but not yet registered is not
   asked for twice, nor cancelled).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import NamedTuple

from xpipe._scaling import AutoscaleSettings

__all__ = ["Autoscaler", "Decision", "Observation", "WorkerLoad", "tighten"]


class WorkerLoad(NamedTuple):
    """One connected worker as the autoscaler sees it (a tuple: 10,000 are made per decision).

    Attributes:
        cpu_fraction: its host's CPU use from its last heartbeat (0..1), None before one.
        memory_fraction: its host's memory use (0..1), None before a heartbeat.
        draining: already draining (not counted, never chosen again).
    """

    worker_id: str
    slots: int
    busy: int
    cpu_fraction: float | None = None
    memory_fraction: float | None = None
    draining: bool = False


@dataclass(frozen=True)
class Observation:
    """What the loop read off the state machine: connected workers and ready tasks waiting."""

    workers: tuple[WorkerLoad, ...] = ()
    backlog: int = 0

    @cached_property
    def active(self) -> tuple[WorkerLoad, ...]:
        return tuple(w for w in self.workers if not w.draining)

    def slots(self) -> int:
        return sum(w.slots for w in self.active)

    def busy_slots(self) -> int:
        return sum(min(w.busy, w.slots) for w in self.active)

    def slot_utilization(self) -> float:
        slots = self.slots()
        if slots == 0:
            return 1.0 if self.backlog else 0.0
        return self.busy_slots() / slots

    def cpu_utilization(self) -> float | None:
        seen = [w.cpu_fraction for w in self.active if w.cpu_fraction is not None]
        return sum(seen) / len(seen) if seen else None

    def memory_utilization(self) -> float | None:
        seen = [w.memory_fraction for w in self.active if w.memory_fraction is not None]
        return sum(seen) / len(seen) if seen else None

    def utilization(self, use_cpu: bool = True) -> float:
        """The higher of slot and CPU utilization: either one full means the cluster is."""
        cpu = self.cpu_utilization() if use_cpu else None
        return max(self.slot_utilization(), cpu if cpu is not None else 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the autoscaler wants now.

    Attributes:
        desired: workers the cluster should have (draining ones not counted).
        drain: ids of workers to drain now (a scale-down), idle ones first.
        action: "up", "down" or "hold".
        reason: one line for the log and ``xpipe`` status.
    """

    desired: int
    drain: tuple[str, ...] = ()
    action: str = "hold"
    reason: str = ""


def tighten(cluster: AutoscaleSettings, pipelines: list[AutoscaleSettings], ceiling: int) -> AutoscaleSettings:
    """The settings in force while pipelines with their own settings have active runs.

    Their bounds apply: the highest ``min_workers`` and the tightest (lowest)
    ``max_workers`` win, never above ``ceiling`` (the operator's cap). Of their thresholds
    and cooldowns, the ones that keep capacity win: the lowest scale-up threshold and
    cooldown, the lowest scale-down threshold and the longest scale-down cooldown. The
    interval and ``use_cpu`` stay the cluster's. With none, the cluster's settings apply.
    """
    if not pipelines:
        return cluster
    high = min(min(p.max_workers for p in pipelines), ceiling)
    low = min(max(p.min_workers for p in pipelines), high)
    return replace(
        cluster, min_workers=low, max_workers=high,
        scale_up_threshold=min(p.scale_up_threshold for p in pipelines),
        scale_down_threshold=min(p.scale_down_threshold for p in pipelines),
        scale_up_cooldown_s=min(p.scale_up_cooldown_s for p in pipelines),
        scale_down_cooldown_s=max(p.scale_down_cooldown_s for p in pipelines),
    )  # fmt: skip


@dataclass
class Autoscaler:
    """The rule with its memory: the last desired count and when it last scaled.

    ``decide`` reads no clock and does no I/O; the same inputs in the same order give the
    same decisions, which is what the time-series tests rely on.
    """

    settings: AutoscaleSettings
    desired: int | None = None
    last_up_at: float = -math.inf
    last_down_at: float = -math.inf
    #: Desired count set by the resource manager (increase/reduce_resources), applied at the next decision.
    requested: int | None = field(default=None)

    def request(self, desired: int) -> int:
        """Ask for ``desired`` workers (clamped to the bounds); returns what will be asked for."""
        s = self.settings
        self.requested = max(s.min_workers, min(s.max_workers, desired))
        return self.requested

    def decide(self, now: float, obs: Observation, settings: AutoscaleSettings | None = None) -> Decision:
        s = settings or self.settings
        active = obs.active
        n = len(active)
        held = self.desired if self.desired is not None else n
        held = max(s.min_workers, min(s.max_workers, held))
        if self.requested is not None:
            want, self.requested = max(s.min_workers, min(s.max_workers, self.requested)), None
            if want > n:
                return self._up(now, want, f"resource manager asked for {want} workers")
            if want < n:
                return self._down(now, obs, want, f"resource manager asked for {want} workers")
        if n < s.min_workers:
            if held >= s.min_workers and now - self.last_up_at < s.scale_up_cooldown_s:
                return self._hold(held, f"waiting for {held - n} workers asked for to register")
            return self._up(now, max(held, s.min_workers), f"{n} workers is below min_workers={s.min_workers}")
        if n > s.max_workers:
            return self._down(now, obs, s.max_workers, f"{n} workers is above max_workers={s.max_workers}")
        util = obs.utilization(s.use_cpu)
        if (util >= s.scale_up_threshold or obs.backlog) and n < s.max_workers:
            if now - self.last_up_at < s.scale_up_cooldown_s:
                return self._hold(held, f"scale-up cooldown ({util:.0%} busy, {obs.backlog} waiting)")
            per_worker = obs.slots() / n if n else 1.0
            want = max(
                n + 1,
                math.ceil(n * util / s.scale_up_threshold) if s.scale_up_threshold else n + 1,
                n + math.ceil(obs.backlog / max(per_worker, 1.0)),
                held,  # workers asked for earlier and still starting are not asked for again
            )
            want = min(s.max_workers, want)
            if want == held and held > n:
                return self._hold(held, f"waiting for {held - n} workers asked for to register")
            return self._up(now, want, f"{util:.0%} busy, {obs.backlog} tasks waiting")
        if util < s.scale_down_threshold and not obs.backlog and n > s.min_workers:
            since = now - max(self.last_up_at, self.last_down_at)
            if since < s.scale_down_cooldown_s:
                return self._hold(held, f"scale-down cooldown ({util:.0%} busy)")
            midpoint = (s.scale_up_threshold + s.scale_down_threshold) / 2
            want = max(s.min_workers, min(n - 1, math.ceil(n * util / midpoint)))
            return self._down(now, obs, want, f"{util:.0%} busy, nothing waiting")
        return self._hold(max(held, n) if n <= s.max_workers else held, f"{util:.0%} busy, {obs.backlog} waiting")

    def _hold(self, desired: int, reason: str) -> Decision:
        self.desired = desired
        return Decision(desired, (), "hold", reason)

    def _up(self, now: float, desired: int, reason: str) -> Decision:
        self.desired, self.last_up_at = desired, now
        return Decision(desired, (), "up", reason)

    def _down(self, now: float, obs: Observation, desired: int, reason: str) -> Decision:
        active = obs.active
        # Idle first, then least busy, then least CPU: the cheapest workers to lose.
        count = max(0, len(active) - desired)
        order = heapq.nsmallest(count, active, key=lambda w: (w.busy, w.cpu_fraction or 0.0, w.worker_id))
        drain = tuple(w.worker_id for w in order)
        self.desired, self.last_down_at = desired, now
        return Decision(desired, drain, "down", reason)
