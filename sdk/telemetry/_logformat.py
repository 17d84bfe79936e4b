"""How the coordinator and the worker write their own logs: text lines or JSON lines.

JSON lines are for log shippers (Loki, Elasticsearch, CloudWatch): one object per record
with ``ts``, ``level``, ``logger`` and ``message``, plus ``run_id``, ``task``, ``attempt``
and ``stimulus_id`` when the call passed them with ``extra=`` (as the engine and the
daemon do where they log about a run or a task). No per-task logging is added for this:
the hot path logs nothing per task.
"""

from __future__ import annotations

import json
import logging
import time

__all__ = [
    "CONTEXT_FIELDS", "LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "iso_time", "log_ids",
]  # fmt: skip

#: Values of ``--log-format``.
LOG_FORMATS = ("text", "json")
#: Record attributes copied into JSON lines when a call passed them with ``extra=``.
CONTEXT_FIELDS = ("run_id", "task", "attempt", "stimulus_id", "worker_id")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def iso_time(epoch_s: float) -> str:
    """``2026-11-30T03:50:12.345Z``: a unix time as ISO 8601 in UTC, to the millisecond.

    Every time our daemons log is written so (never a raw epoch float), and in UTC, so
    lines of machines in different zones sort and compare as they are.
    """
    ms = int(epoch_s * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + f".{ms:03d}Z"


def log_ids(key: tuple[str, str, int] | None = None, *, run_id: str = "", stimulus_id: str = "") -> dict[str, object]:
    """The ``extra=`` of a record about an attempt ``(run_id, task, attempt)``, a run, or a stimulus."""
    ids: dict[str, object] = {}
    if key is not None:
        ids["run_id"], ids["task"], ids["attempt"] = key
    elif run_id:
        ids["run_id"] = run_id
    if stimulus_id:
        ids["stimulus_id"] = stimulus_id
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ISO 8601 UTC time> LEVEL logger: message`` (logging's own asctime is local, with a comma)."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return iso_time(record.created)


def configure_logging(level: str, log_format: str) -> None:
    """Set up the root logger of a daemon (replaces ``logging.basicConfig``).

    Raises:
        ValueError: ``log_format`` is not one of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
