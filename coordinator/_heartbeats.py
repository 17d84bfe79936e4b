"""Heartbeat pacing: the fleet's heartbeat rate is capped by stretching every worker's interval.

Each heartbeat costs the coordinator about 0.3 ms of CPU (mostly gRPC's threads), so a big
fleet at a short interval keeps a core busy doing nothing. As schedulers such as Nomad do
(``max_heartbeats_per_second``), the interval a worker is told grows with the fleet:
``max(--heartbeat-interval-s, live workers / --max-heartbeats-per-s)``, and the timeout
grows in proportion, so a worker is still lost after the same number of missed heartbeats.

:class:`HeartbeatPacer` is pure (the caller passes the time in): it decides when a new
interval is worth announcing (a change of :data:`ANNOUNCE_CHANGE` or more, looked at once
every :data:`RECOMPUTE_EVERY_S` at most) and which timeout lost detection uses meanwhile,
so no worker is declared lost because its interval just changed: a longer timeout holds
at once; a shorter one only after the shorter interval has been announced for one old
timeout (a worker may have last beaten just before the announcement, at the old pace).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xpipe._proto import worker_pb2

__all__ = [
    "ANNOUNCE_CHANGE",
    "DEFAULT_MAX_HEARTBEATS_PER_S",
    "RECOMPUTE_EVERY_S",
    "HeartbeatPacer",
    "HeartbeatSettings",
    "effective_interval_s",
    "scaled_timeout_s",
]

log = logging.getLogger(__name__)

#: The coordinator's default ``--max-heartbeats-per-s``: 250 a second is about 8% of a core
#: (0.3 ms each); below 250 workers at a 1 s interval the cap changes nothing.
DEFAULT_MAX_HEARTBEATS_PER_S = 250.0
#: A new effective interval is announced when it differs from the announced one by this
#: fraction or more (hysteresis: a fleet that gains or loses a few workers sends nothing).
ANNOUNCE_CHANGE = 0.2
#: The effective interval is recomputed at most this often, not per registration: a fleet
#: connecting at 1,000 a second gets one announcement a second, not 1,000.
RECOMPUTE_EVERY_S = 1.0


def effective_interval_s(interval_s: float, live_workers: int, max_per_s: float) -> float:
    """The interval that keeps ``live_workers`` under ``max_per_s`` heartbeats a second.

    Never below the configured ``interval_s``; ``max_per_s`` 0 turns the cap off.
    """
    if max_per_s <= 0:
        return interval_s
    return max(interval_s, live_workers / max_per_s)


def scaled_timeout_s(timeout_s: float, interval_s: float, effective_s: float) -> float:
    """The timeout for ``effective_s``: as many missed heartbeats as ``timeout_s`` allows at ``interval_s``."""
    return timeout_s * effective_s / interval_s


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    """What workers are told: beat every ``interval_s``; silent for ``timeout_s``, lost."""

    interval_s: float
    timeout_s: float

    def message(self) -> worker_pb2.CoordinatorMessage:
        """The ``HeartbeatSettings`` message that tells a worker these settings."""
        return worker_pb2.CoordinatorMessage(
            heartbeat_settings=worker_pb2.HeartbeatSettings(interval_s=self.interval_s, timeout_s=self.timeout_s)
        )


class HeartbeatPacer:
    """The announced heartbeat interval and the lost-detection timeout in effect.

    Args:
        interval_s: ``--heartbeat-interval-s``, the shortest interval ever told.
        timeout_s: ``--heartbeat-timeout-s``, the timeout at that interval.
        max_per_s: ``--max-heartbeats-per-s``; 0 keeps the configured interval for any fleet.
    """

    def __init__(self, interval_s: float, timeout_s: float, max_per_s: float):
        self.configured = HeartbeatSettings(interval_s, timeout_s)
        self.max_per_s = max_per_s
        #: What workers are told now (at registration, and in HeartbeatSettings).
        self.announced = self.configured
        #: The timeout lost detection uses now: never below what any worker's last pace needs.
        self.timeout_in_effect_s = timeout_s
        self._lower_at: float | None = None  # when timeout_in_effect_s may fall to announced.timeout_s
        self._checked_at = float("-inf")

    def update(self, now: float, live_workers: int) -> HeartbeatSettings | None:
        """Look at the fleet (at most once a :data:`RECOMPUTE_EVERY_S`); the settings to announce, if new.

        Call it often (every tick): a pending lowering of the timeout in effect is applied
        on time even between recomputations. Read :attr:`timeout_in_effect_s` afterwards.
        """
        if self._lower_at is not None and now >= self._lower_at:
            self.timeout_in_effect_s = self.announced.timeout_s
            self._lower_at = None
        if now - self._checked_at < RECOMPUTE_EVERY_S:
            return None
        self._checked_at = now
        configured, announced = self.configured, self.announced
        target_s = effective_interval_s(configured.interval_s, live_workers, self.max_per_s)
        if target_s == announced.interval_s:
            return None
        # Back to the configured interval is always announced (a small fleet gets its exact
        # detection time back); other moves only past the hysteresis.
        # (The 1e-9: exactly 20% in floating point, 4.8 against 4.0 say, counts as 20%.)
        change = abs(target_s / announced.interval_s - 1.0)
        if target_s != configured.interval_s and change < ANNOUNCE_CHANGE - 1e-9:
            return None
        new = HeartbeatSettings(target_s, scaled_timeout_s(configured.timeout_s, configured.interval_s, target_s))
        self.announced = new
        if new.timeout_s >= self.timeout_in_effect_s:
            self.timeout_in_effect_s = new.timeout_s  # longer: at once, before any worker slows down
            self._lower_at = None
        else:
            # Shorter: a worker may have beaten just before hearing of it, at the old pace.
            self._lower_at = now + self.timeout_in_effect_s
        return new
