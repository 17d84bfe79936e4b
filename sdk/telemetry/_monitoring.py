"""``Pipeline.enable_monitoring(config)``: the seed's ``monitoring_config`` dict, checked key by key.

Every key is either acted on now or checked for shape and kept with the run for the issue
that builds on it, so a typo never passes silently:

* ``metrics_collection`` (acted on here): ``custom_metrics`` (``record_metric`` and
  ``track_metric``), ``business_metrics`` (``track_business_metric``), ``system_metrics``
  (``track_performance`` for every Python task of the pipeline) and ``collection_interval``
  (a duration, stored);
* ``alerting`` (checked by ``._alertconfig``, the table the coordinator's
  ``--alerting-config`` shares): stored with the run (``PipelineSpec.monitoring_json``);
  the coordinator reads it and raises and delivers the run's alerts;
* ``anomaly_detection``, ``predictive_analytics``: stored with the run for issue 15's insights.

A pure module: it turns a dict into a frozen :class:`MonitoringConfig` or raises
:class:`~xpipe.errors.PipelineValidationError` naming the key path, e.g.
``monitoring_config["metrics_collection"]["colection_interval"]: unknown key; known: ...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._limits import MAX_MONITORING_CONFIG_CHARS, MAX_NAME_CHARS
from .._retry import parse_duration_s
from ._alertconfig import AlertConfigError, parse_alerting
from ..errors import PipelineValidationError

__all__ = ["MonitoringConfig", "parse_monitoring_config", "SENSITIVITIES"]

#: ``anomaly_detection.sensitivity`` values.
SENSITIVITIES = ("low", "medium", "high")
#: ``metrics_collection.collection_interval`` when not given.
DEFAULT_COLLECTION_INTERVAL_S = 10.0


class _Refused(Exception):
    def __init__(self, path: str, problem: str | None = None):
        super().__init__(path if problem is None else f"{path}: {problem}")


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Refused(path, f"must be True or False, got {type(value).__name__} {value!r:.80}")
    return value


def _interval(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, timedelta)):
        raise _Refused(path, f"must be a duration such as '10s', seconds or a timedelta, got {type(value).__name__}")
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        raise _Refused(path, str(exc)) from None
    if seconds <= 0:
        raise _Refused(path, f"must be longer than 0 s, got {value!r}")
    return seconds


def _sensitivity(path: str, value: Any) -> str:
    if value not in SENSITIVITIES:
        raise _Refused(path, f"must be one of {', '.join(SENSITIVITIES)}, got {value!r:.80}")
    return value


def _model(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise _Refused(path, f"must name a model (a non-empty string of at most {MAX_NAME_CHARS} chars), got {value!r:.80}")
    return value


#: section -> key -> the check that reads the value. The one table of what is accepted.
_SCHEMA: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "metrics_collection": {
        "system_metrics": _bool,
        "business_metrics": _bool,
        "custom_metrics": _bool,
        "collection_interval": _interval,
    },
    "alerting": {},  # checked whole by ._alertconfig (shared with --alerting-config)
    "anomaly_detection": {"enabled": _bool, "sensitivity": _sensitivity, "ml_model": _model},
    "predictive_analytics": {
        "failure_prediction": _bool,
        "performance_forecasting": _bool,
        "resource_optimization": _bool,
    },
}


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """What :meth:`Pipeline.enable_monitoring` was given, checked.

    Attributes:
        custom_metrics: keep ``record_metric`` points and ``track_metric`` values (default True).
        business_metrics: keep ``track_business_metric`` values (default True).
        system_metrics: measure every Python task of the pipeline as ``track_performance``
            does (default False: only tasks decorated with it).
        collection_interval_s: how often issue 15's dashboard samples (stored; default 10).
        sections: the whole config as checked (``collection_interval`` read as
            ``collection_interval_s``), stored with the run as JSON.
    """

    custom_metrics: bool = True
    business_metrics: bool = True
    system_metrics: bool = False
    collection_interval_s: float = DEFAULT_COLLECTION_INTERVAL_S
    sections: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> str:
        """The config as kept with the run (``PipelineSpec.monitoring_json``)."""
        return json.dumps(dict(self.sections), sort_keys=True, separators=(",", ":"))


def parse_monitoring_config(config: Any, *, where: str = "monitoring_config") -> MonitoringConfig:
    """Check the seed's ``monitoring_config`` dict (every section and key optional).

    Raises:
        PipelineValidationError: not a dict, an unknown section or key, or a value of the
            wrong shape; the message names the key path and the known keys.
    """
    try:
        return _parse(config, where)
    except _Refused as exc:
        raise PipelineValidationError(str(exc)) from None


def _parse(config: Any, where: str) -> MonitoringConfig:
    if not isinstance(config, Mapping):
        raise _Refused(where, f"must be a dict of sections ({', '.join(_SCHEMA)}), got {type(config).__name__}")
    checked: dict[str, dict[str, Any]] = {}
    for section, body in config.items():
        path = f"{where}[{section!r}]"
        keys = _SCHEMA.get(section) if isinstance(section, str) else None
        if keys is None:
            raise _Refused(path, f"unknown section; known: {', '.join(_SCHEMA)}")
        if section == "alerting":
            try:
                checked[section] = parse_alerting(body, path)
            except AlertConfigError as exc:
                raise _Refused(str(exc)) from None
            continue
        if not isinstance(body, Mapping):
            raise _Refused(path, f"must be a dict with keys {', '.join(keys)}, got {type(body).__name__}")
        out: dict[str, Any] = {}
        for key, value in body.items():
            check = keys.get(key) if isinstance(key, str) else None
            if check is None:
                raise _Refused(f"{path}[{key!r}]", f"unknown key; known: {', '.join(sorted(keys))}")
            read = check(f"{path}[{key!r}]", value)
            out["collection_interval_s" if key == "collection_interval" else key] = read
        checked[section] = out
    made = checked.get("metrics_collection", {})
    result = MonitoringConfig(
        custom_metrics=made.get("custom_metrics", True),
        business_metrics=made.get("business_metrics", True),
        system_metrics=made.get("system_metrics", False),
        collection_interval_s=made.get("collection_interval_s", DEFAULT_COLLECTION_INTERVAL_S),
        sections=tuple(checked.items()),
    )
    if len(result.to_json()) > MAX_MONITORING_CONFIG_CHARS:
        raise _Refused(where, f"is longer than {MAX_MONITORING_CONFIG_CHARS} chars as JSON")
    return result
