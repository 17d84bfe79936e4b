"""The shape of an ``alerting`` config: where alerts go and which rules raise them.

One table read by two callers, so the two never drift: ``pipeline.enable_monitoring``
(``monitoring_config["alerting"]``, kept with the run) and ``xpipe-coordinator
--alerting-config FILE`` (JSON or TOML, cluster-wide). Pure: a dict in, a checked dict
out, or :class:`AlertConfigError` naming the key path, the value and what is accepted.

Example::

    {"slack_webhook": "https://hooks.slack.com/...", "webhook": "http://127.0.0.1:9000/a",
     "email_alerts": ["ops@example.com"],
     "smtp": {"host": "127.0.0.1", "port": 25, "starttls": False, "from": "xpipe@example.com"},
     "pager_duty": {"routing_key": "R0UT1NG"},
     "rules": {"run_slow": {"factor": 3}, "metric_threshold": [{"metric": "rows", "below": 10}]}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .._limits import MAX_NAME_CHARS, MAX_TEXT_CHARS

__all__ = [
    "AlertConfigError", "DEFAULT_PAGERDUTY_URL", "RULES", "RULE_DEFAULTS", "parse_alerting", "rule_settings",
]  # fmt: skip

#: Where ``pager_duty: True`` sends (PagerDuty Events API v2).
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
#: Every rule name (as ``insights.proto``'s ``Alert.rule``).
RULES = ("run_failed", "task_failed", "run_slow", "anomaly", "worker_lost", "circuit_open", "metric_threshold")
#: Each rule's settings when the config does not name it (``metric_threshold`` has none:
#: it is off until thresholds are given). ``dedupe_window_s``: the same rule and target
#: within it are one alert, counted.
RULE_DEFAULTS: dict[str, dict[str, float]] = {
    "run_failed": {},
    "task_failed": {},
    # a run slower than p95 x factor of its pipeline's last window_runs finished runs (once min_runs are known)
    "run_slow": {"factor": 2.0, "window_runs": 50, "min_runs": 5},
    # a task whose duration is more than threshold robust sd from its name's last window durations
    "anomaly": {"threshold": 5.0, "window": 50, "min_samples": 10},
    "worker_lost": {},
    "circuit_open": {},
}
#: Top-level knobs and their defaults.
DEFAULT_DEDUPE_WINDOW_S = 300.0
DEFAULT_RATE_PER_MINUTE = 60


class AlertConfigError(ValueError):
    """An alerting config key has a bad value; the message names the key path."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")


def _url(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")) or len(value) > MAX_TEXT_CHARS:
        raise AlertConfigError(path, f"must be an http(s) URL of at most {MAX_TEXT_CHARS} chars, got {value!r:.80}")
    return value


def _email(path: str, value: Any) -> str:
    if not isinstance(value, str) or "@" not in value.strip("@") or len(value) > MAX_NAME_CHARS:
        raise AlertConfigError(path, f"is not an e-mail address: {value!r:.80}")
    return value


def _emails(path: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise AlertConfigError(path, f"must be a list of e-mail addresses, got {type(value).__name__}")
    return [_email(f"{path}[{i}]", v) for i, v in enumerate(value)]


def _text(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        raise AlertConfigError(path, f"must be a non-empty string of at most {MAX_TEXT_CHARS} chars, got {value!r:.80}")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AlertConfigError(path, f"must be true or false, got {type(value).__name__} {value!r:.80}")
    return value


def _number(path: str, value: Any, *, low: float = 0.0, integer: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or not math.isfinite(value) or value <= low:
        kind = "an integer" if integer else "a number"
        raise AlertConfigError(path, f"must be {kind} above {low:g}, got {value!r:.80}")
    return value


def _port(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise AlertConfigError(path, f"must be a port number 1..65535, got {value!r:.80}")
    return value


def _section(path: str, value: Any, keys: dict[str, Callable[[str, Any], Any]]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise AlertConfigError(path, f"must be a table with keys {', '.join(keys)}, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        check = keys.get(key) if isinstance(key, str) else None
        if check is None:
            raise AlertConfigError(f"{path}[{key!r}]", f"unknown key; known: {', '.join(sorted(keys))}")
        out[key] = check(f"{path}[{key!r}]", item)
    return out


_SMTP = {"host": _text, "port": _port, "starttls": _bool, "from": _email, "username": _text, "password_file": _text}


def _smtp(path: str, value: Any) -> dict[str, Any]:
    out = _section(path, value, _SMTP)
    if "host" not in out:
        raise AlertConfigError(path, "needs a host")
    return out


def _pager_duty(path: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        raise AlertConfigError(path, f"must be true, false or a table with url and routing_key, got {type(value).__name__}")
    return _section(path, value, {"url": _url, "routing_key": _text})


def _threshold(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise AlertConfigError(path, f"must be a table {{metric, above | below}}, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        if key == "metric":
            out[key] = _text(f"{path}['metric']", item)
        elif key in ("above", "below"):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise AlertConfigError(f"{path}[{key!r}]", f"must be a finite number, got {item!r:.80}")
            out[key] = float(item)
        else:
            raise AlertConfigError(f"{path}[{key!r}]", "unknown key; known: above, below, metric")
    if "metric" not in out or ("above" not in out and "below" not in out):
        raise AlertConfigError(path, "needs a metric and above or below")
    return out


def _rule_params(name: str) -> Callable[[str, Any], Any]:
    defaults = RULE_DEFAULTS[name]

    def check(path: str, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if not defaults:
            raise AlertConfigError(path, f"must be true or false, got {type(value).__name__} {value!r:.80}")
        keys = {k: (lambda p, v, k=k: _number(p, v, integer=isinstance(defaults[k], int))) for k in defaults}
        return _section(path, value, keys)

    return check


def _rules(path: str, value: Any) -> dict[str, Any]:
    keys: dict[str, Callable[[str, Any], Any]] = {name: _rule_params(name) for name in RULE_DEFAULTS}

    def thresholds(p: str, v: Any) -> list[dict[str, Any]]:
        if isinstance(v, Mapping):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise AlertConfigError(p, f"must be a list of {{metric, above | below}}, got {type(v).__name__}")
        return [_threshold(f"{p}[{i}]", t) for i, t in enumerate(v)]

    keys["metric_threshold"] = thresholds
    return _section(path, value, keys)


#: key -> the check that reads its value. The one table of what ``alerting`` accepts.
ALERTING_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "slack_webhook": _url,
    "webhook": _url,
    "email_alerts": _emails,
    "smtp": _smtp,
    "pager_duty": _pager_duty,
    "rules": _rules,
    "dedupe_window_s": lambda p, v: float(_number(p, v)),
    "rate_per_minute": lambda p, v: int(_number(p, v, integer=True)),
}


def parse_alerting(value: Any, path: str = "alerting") -> dict[str, Any]:
    """Check an ``alerting`` table; returns it as checked (every key optional).

    Raises:
        AlertConfigError: an unknown key, or a value of the wrong type or range (the
            message names the key path).
    """
    return _section(path, value, ALERTING_KEYS)


def rule_settings(config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """A checked config's settings of one rule (defaults filled in), or None when it is off."""
    given = config.get("rules", {}).get(name, True)
    if given is False:
        return None
    if name == "metric_threshold":
        return {"thresholds": given} if isinstance(given, list) and given else None
    settings = dict(RULE_DEFAULTS[name])
    if isinstance(given, Mapping):
        settings.update(given)
    return settings
