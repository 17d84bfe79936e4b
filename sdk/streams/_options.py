"""The stream options a user gives and how each is checked: one place for their names and limits.

A leaf of the streams package (no asyncio, no I/O), so that building and checking a pipeline
loads nothing the runtime alone needs.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..errors import DataStreamError

__all__ = ["BACKPRESSURE_STRATEGIES", "check_buffer_size", "check_rate", "check_strategy"]

#: What a full buffer does with one more record.
BACKPRESSURE_STRATEGIES = ("block", "drop_oldest", "drop_newest")


def check_strategy(strategy: Any) -> str:
    """``strategy`` if it is one of :data:`BACKPRESSURE_STRATEGIES`, else a DataStreamError naming them."""
    if strategy not in BACKPRESSURE_STRATEGIES:
        raise DataStreamError(
            f"backpressure_strategy={strategy!r:.80}: expected one of {', '.join(map(repr, BACKPRESSURE_STRATEGIES))}"
        )
    return strategy


def check_buffer_size(buffer_size: Any) -> int:
    """``buffer_size`` if it is an int >= 1, else a DataStreamError naming the value."""
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise DataStreamError(f"buffer_size={buffer_size!r:.80}: must be an integer >= 1 (records)")
    return buffer_size


def check_rate(rate: Any) -> float | None:
    """``max_throughput_per_second`` as a positive float, or None (no limit).

    Raises:
        DataStreamError: not a finite number > 0; the message names the value.
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate <= 0:
        raise DataStreamError(
            f"max_throughput_per_second={rate!r:.80}: must be a number > 0 (records per second) or None"
        )
    return float(rate)
