"""Task functions for the dashboard's browser tests (tests/browser): tasks the test releases.

A task that waits for a file lets the test decide when it finishes, so the page can be
watched while a node is running and again once it has succeeded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def wait_for_file(*_upstream: Any, path: str, timeout_s: float = 120.0) -> str:
    """Return once ``path`` exists; upstream results (the positional arguments) are ignored.

    Raises:
        TimeoutError: the file did not appear within ``timeout_s`` (a test that forgot it).
    """
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:g}s")
        time.sleep(0.05)  # in the task, polling a file the test creates; not test synchronization
    return path


def say_wait_say(*_upstream: Any, path: str, timeout_s: float = 120.0) -> str:
    """Print a line, wait for ``path`` (see :func:`wait_for_file`), print another: a live log."""
    print(f"waiting for {Path(path).name}", flush=True)
    wait_for_file(path=path, timeout_s=timeout_s)
    print(f"released by {Path(path).name}", flush=True)
    return path
