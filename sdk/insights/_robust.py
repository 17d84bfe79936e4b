"""Robust statistics shared by anomaly detection (SDK) and the anomaly alert rule (coordinator).

A leaf: no imports of ours. Median and MAD (median absolute deviation) resist the outliers
they are meant to find, where mean and standard deviation are dragged by them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["MAD_SCALE", "SENSITIVITY_Z", "median_mad", "robust_z", "z_from"]

#: ``anomaly_detection.sensitivity`` -> the robust z a value must pass to be an anomaly: the
#: one table for ``detect_anomalies`` and the coordinator's anomaly alerts.
SENSITIVITY_Z: dict[str, float] = {"low": 6.0, "medium": 4.0, "high": 3.0}

#: MAD times this estimates the standard deviation of normally distributed data.
MAD_SCALE = 1.4826


def median_mad(values: Sequence[float]) -> tuple[float, float]:
    """``(median, MAD)`` of ``values`` (at least one)."""
    median = statistics.median(values)
    return median, statistics.median(abs(v - median) for v in values)


def robust_z(value: float, history: Sequence[float], *, floor_fraction: float = 0.05) -> float:
    """How many robust standard deviations ``value`` is from ``history``'s median.

    The spread is floored at ``floor_fraction`` of the median, so a perfectly steady history
    (MAD 0) does not turn a 1% wobble into an anomaly. Returns 0.0 for an empty history.
    """
    if not history:
        return 0.0
    median, mad = median_mad(history)
    return z_from(value, median, mad, floor_fraction=floor_fraction)


def z_from(value: float, median: float, mad: float, *, floor_fraction: float = 0.05) -> float:
    """:func:`robust_z` from a median and MAD already known (a baseline kept sorted, say)."""
    spread = max(mad * MAD_SCALE, abs(median) * floor_fraction, 1e-9)
    return (value - median) / spread
