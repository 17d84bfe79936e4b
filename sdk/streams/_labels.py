"""How a stream pipeline appears as a run: its labels, its instance task names, its cadences.

The SDK's ``start()`` submits a stream pipeline as one ordinary run, one long-lived task per
stage instance; the coordinator's stream registry reads these labels back, so both import
them from here. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "AUTO_SCALING_LABEL",
    "CHECKPOINT_INTERVAL_S",
    "REPORT_INTERVAL_S",
    "STAGES_LABEL",
    "STREAM_LABEL",
    "instance_task_name",
    "parse_instance_task",
    "stages_label",
    "stages_from_label",
]

#: Label naming the stream pipeline a run runs (its value: the pipeline's name).
STREAM_LABEL = "xpipe.stream"
#: Label with the stages as JSON: ``[{"name": ..., "input": ..., "parallelism": n}, ...]``.
STAGES_LABEL = "xpipe.stream.stages"
#: Label "1" when ``start(auto_scaling=True)``.
AUTO_SCALING_LABEL = "xpipe.stream.auto_scaling"

#: How often an instance reports to the coordinator (and learns stop, drain, scaling).
REPORT_INTERVAL_S = 1.0
#: How often a stateful or windowed instance checkpoints, then commits its source.
CHECKPOINT_INTERVAL_S = 1.0

_TASK_RE = re.compile(r"(?P<stage>.+)\[(?P<i>\d+)\]")


def instance_task_name(stage: str, instance: int) -> str:
    """The run's task name of a stage instance: ``"<stage>[<i>]"``."""
    return f"{stage}[{instance}]"


def parse_instance_task(name: str) -> tuple[str, int] | None:
    """``(stage, instance)`` from an instance task's name, or None if it is not one."""
    match = _TASK_RE.fullmatch(name)
    return None if match is None else (match["stage"], int(match["i"]))


def stages_label(stages: list[dict[str, Any]]) -> str:
    """The :data:`STAGES_LABEL` value for ``[{"name", "input", "parallelism"}, ...]``."""
    return json.dumps([{"name": s["name"], "input": s["input"], "parallelism": int(s["parallelism"])} for s in stages], separators=(",", ":"))


def stages_from_label(value: str) -> list[dict[str, Any]]:
    """Read :func:`stages_label`'s output; [] when it is missing or malformed."""
    try:
        stages = json.loads(value)
        return [{"name": str(s["name"]), "input": str(s["input"]), "parallelism": int(s["parallelism"])} for s in stages]
    except (ValueError, TypeError, KeyError):
        return []
