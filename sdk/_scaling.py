"""Autoscaling settings: the one place their names, defaults and limits are written.

The SDK checks them at ``pipeline.configure_auto_scaling(...)``, the coordinator checks its
``--autoscale-*`` flags and every submitted pipeline's settings with the same function, and
the pure autoscaler (``xpipe.coordinator._autoscale``) reads them. A leaf module: it imports
only the duration parser and the generated message.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from datetime import timedelta

from ._proto import common_pb2
from ._retry import parse_duration_s

__all__ = ["AutoscaleSettings", "MAX_AUTOSCALE_WORKERS", "scaling_from_options"]

#: Most workers any autoscaler setting may name (a typo like 10000000 is refused, not obeyed).
MAX_AUTOSCALE_WORKERS = 100_000


@dataclass(frozen=True, slots=True)
class AutoscaleSettings:
    """How the autoscaler sizes the cluster (docs/autoscaling.md).

    Attributes:
        min_workers: never fewer workers than this (scaling down stops here).
        max_workers: never more workers than this.
        scale_up_threshold: utilization (busy slots / slots, or mean CPU) at or above which
            workers are added; a backlog of ready tasks also adds them.
        scale_down_threshold: utilization below which idle workers are drained and removed.
        scale_up_cooldown_s: seconds after a scale-up (or the start) before the next one.
        scale_down_cooldown_s: seconds after any scaling before the next scale-down.
        interval_s: seconds between two decisions of the coordinator's loop.
        use_cpu: count CPU from heartbeats as utilization; off for workers that share one
            host (the local provider), whose CPU says nothing about needing more of them.
    """

    min_workers: int = 1
    max_workers: int = 10
    scale_up_threshold: float = 0.8
    scale_down_threshold: float = 0.3
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 300.0
    interval_s: float = 10.0
    use_cpu: bool = True

    def __post_init__(self) -> None:
        for name in ("min_workers", "max_workers"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r:.80}: must be a whole number of workers")
            if not 0 <= value <= MAX_AUTOSCALE_WORKERS:
                raise ValueError(f"{name}={value}: must be between 0 and {MAX_AUTOSCALE_WORKERS}")
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers={self.min_workers} is above max_workers={self.max_workers}")
        for name in ("scale_up_threshold", "scale_down_threshold"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r:.80}: must be a fraction between 0 and 1 (0.8 is 80%)")
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError(
                f"scale_down_threshold={self.scale_down_threshold} must be below "
                f"scale_up_threshold={self.scale_up_threshold} (else the cluster flaps)"
            )
        for name in ("scale_up_cooldown_s", "scale_down_cooldown_s", "interval_s"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r:.80}: must be a finite number of seconds >= 0")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s={self.interval_s}: must be above 0")

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_proto(cls, msg: common_pb2.AutoscaleSettings) -> AutoscaleSettings:
        """Raises: ValueError naming the field (a client in another language skipped our checks)."""
        return cls(msg.min_workers, msg.max_workers, msg.scale_up_threshold, msg.scale_down_threshold,
                   msg.scale_up_cooldown_s, msg.scale_down_cooldown_s)  # fmt: skip

    def to_proto(self) -> common_pb2.AutoscaleSettings:
        """The pipeline's part (the interval is the coordinator's own)."""
        return common_pb2.AutoscaleSettings(
            min_workers=self.min_workers, max_workers=self.max_workers, scale_up_threshold=self.scale_up_threshold,
            scale_down_threshold=self.scale_down_threshold, scale_up_cooldown_s=self.scale_up_cooldown_s,
            scale_down_cooldown_s=self.scale_down_cooldown_s,
        )  # fmt: skip

    def with_bounds(self, min_workers: int, max_workers: int) -> AutoscaleSettings:
        return replace(self, min_workers=min_workers, max_workers=max_workers)


def _duration(name: str, value: str | float | timedelta) -> float:
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r:.80}: {exc}") from None


def scaling_from_options(
    *,
    min_workers: int,
    max_workers: int,
    scale_up_threshold: float,
    scale_down_threshold: float,
    scale_up_cooldown: str | float | timedelta,
    scale_down_cooldown: str | float | timedelta,
    interval: str | float | timedelta = 10.0,
) -> AutoscaleSettings:
    """Settings from the seed's spelling (durations as "5min", seconds or timedelta).

    Raises:
        ValueError: a setting out of range or unreadable; the message names it.
    """
    return AutoscaleSettings(
        min_workers=min_workers, max_workers=max_workers,
        scale_up_threshold=scale_up_threshold, scale_down_threshold=scale_down_threshold,
        scale_up_cooldown_s=_duration("scale_up_cooldown", scale_up_cooldown),
        scale_down_cooldown_s=_duration("scale_down_cooldown", scale_down_cooldown),
        interval_s=_duration("interval", interval),
    )  # fmt: skip
