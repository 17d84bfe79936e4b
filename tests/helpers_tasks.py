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
