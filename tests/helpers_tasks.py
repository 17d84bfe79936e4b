"""Task functions the executor tests run by import path in real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from xpipe._handlers import handler


def add(*numbers: Any, **named: Any) -> Any:
    """Sum of every positional and keyword value."""
    return sum(numbers) + sum(named.values())


def describe(*args: Any, **kwargs: Any) -> dict:
    """Echo back what the task was called with, to check argument plumbing."""
    return {"args": list(args), "kwargs": kwargs}


def noop() -> None:
    return None


def fail_with_value_error(message: str = "bad value") -> None:
    raise ValueError(message)


class DataQualityError(Exception):
    """A user error that names its own xpipe error type."""

    error_type = "DATA_QUALITY_FAILURE"


def fail_data_quality() -> None:
    raise DataQualityError("12 rows have no id")


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def crash(code: int = 3) -> None:
    """End the interpreter at once, as a segfault or a native abort would."""
    os._exit(code)


def unpicklable() -> Any:
    return threading.Lock()


def pid() -> int:
    return os.getpid()


def echo(value: Any) -> Any:
    return value


def exit_via_sys_exit() -> None:
    sys.exit(4)


def spawn_sleeper(seconds: float = 300) -> int:
    """Start a background process in this process's group and return its pid."""
    proc = subprocess.Popen(["sleep", str(seconds)])
    return proc.pid


def spawn_then_sleep(pid_file: str, seconds: float) -> None:
    """Start a background process, record its pid in ``pid_file``, then hang."""
    Path(pid_file).write_text(str(spawn_sleeper()))
    time.sleep(seconds)


def scribble_on_pipe() -> str:
    """Write a bogus frame onto the executor child's socket to its parent (argv[2])."""
    os.write(int(sys.argv[2]), b"\x00\x00\x00\x03abc")
    return "done"


@handler("double")
def double(value: Any) -> Any:
    return value * 2


# ---- error policies (tests/unit/test_policies.py, tests/integration/test_policies.py) ----

from xpipe import handle_errors  # noqa: E402 - kept next to the helpers that use it


class DataValidationError(Exception):
    """Bad input data: the policies below skip a task that raises it."""


def count_call(counter_dir: str) -> int:
    """Add one to the call counter kept in ``counter_dir`` and return the new count."""
    path = Path(counter_dir) / "calls"
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


def cached_data(*args: Any, **kwargs: Any) -> dict:
    """A fallback: what the failed task was called with, marked as cached."""
    return {"cached": True, "args": list(args), "kwargs": kwargs}


def broken_cache(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("cache is empty too")


def _raise_for(kind: str) -> str:
    if kind == "invalid":
        raise DataValidationError("row 7 has no id")
    if kind == "down":
        raise ConnectionError("api.example is down")
    if kind == "bug":
        raise KeyError("missing_column")
    return "fresh"


@handle_errors(retry_on=[ConnectionError, TimeoutError], skip_on=[DataValidationError], fallback=cached_data)
def fetch(kind: str) -> str:
    """The seed's resilient extract: retry network errors, skip bad data, else use the cache."""
    return _raise_for(kind)


@handle_errors(retry_on=[ConnectionError], skip_on=[DataValidationError])
def fetch_no_fallback(kind: str) -> str:
    return _raise_for(kind)


@handle_errors(fallback=broken_cache)
def fetch_broken_fallback(kind: str) -> str:
    return _raise_for(kind)


@handle_errors(retry_on=[ConnectionError], fallback=cached_data)
def flaky_fetch(counter_dir: str, failures: int) -> str:
    """Raise ConnectionError on the first ``failures`` calls (counted in ``counter_dir``)."""
    count = count_call(counter_dir)
    if count <= failures:
        raise ConnectionError(f"call {count} of {failures} failing calls")
    return f"fresh on call {count}"


def fail_times(counter_dir: str, failures: int) -> int:
    """Raise ValueError on the first ``failures`` calls, then return the call count."""
    count = count_call(counter_dir)
    if count <= failures:
        raise ValueError(f"call {count} fails")
    return count


def sleep_then_mark(marker_dir: str, name: str, seconds: float) -> str:
    """Sleep, then append one line to ``marker_dir/name``: each run of the task leaves one line."""
    time.sleep(seconds)
    with open(Path(marker_dir) / name, "a") as f:
        f.write("ran\n")
    return name


def wait_for_file_then_bytes(path: str, size: int) -> bytes:
    """Wait (up to 60 s) until ``path`` exists, then return ``size`` random bytes (zstd cannot
    shrink them): many of these finish together, with results big enough to take a while to send."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.001)
    return os.urandom(size)


class ReportedQualityError(Exception):
    """A data-quality failure that carries a report for the caller."""

    error_type = "DATA_QUALITY_FAILURE"

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.quality_report = report


def fail_with_quality_report(bad_rows: int) -> None:
    raise ReportedQualityError(f"{bad_rows} rows failed validation", {"bad_rows": bad_rows, "checks": ["id", "amount"]})


def import_missing_module() -> None:
    """Needs a module no worker has: the run fails DEPENDENCY_FAILURE naming it."""
    import xpipe_test_module_nobody_has  # noqa: F401


def clean_rows(rows: int, fixes: list | None = None) -> dict:
    """Reports a data-quality failure with a suggested fix, until it is given fixes."""
    if not fixes:
        raise ReportedQualityError(
            f"{rows} rows have no id", {"details": {"rows_without_id": rows}, "suggested_fixes": ["drop_rows_without_id"]}
        )
    return {"rows": rows, "applied": list(fixes)}


def probe_module(module: str) -> Any:
    """Imports ``module`` (a package a test installs on the worker at run time) and returns its ``VALUE``."""
    import importlib

    return importlib.import_module(module).VALUE


def record_rows(rows: float) -> float:
    """Record the custom metric ``rows`` (alerting's metric_threshold rule watches it)."""
    import xpipe

    xpipe.record_metric("rows", rows)
    return rows
