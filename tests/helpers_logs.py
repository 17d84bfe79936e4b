"""Tasks that write output, for tests/integration/test_task_logs.py (importable by workers)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("tests.helpers_logs")


def chatty(tag: str) -> str:
    """Writes one line each to stdout, stderr and the log, and starts a child that prints."""
    print(f"out {tag}")
    print(f"err {tag}", file=sys.stderr)
    log.info("logged %s", tag)
    subprocess.run([sys.executable, "-c", f"print('child {tag}')"], check=True)
    return tag


def printer(lines: int, interval_s: float) -> int:
    """Prints a line every ``interval_s`` with a plain print (no flush)."""
    for i in range(lines):
        print(f"tick {i}")
        time.sleep(interval_s)  # the task's own pace, not synchronisation
    return lines


def flood(total_bytes: int) -> int:
    """Writes whole 64 KiB blocks to stdout, at least ``total_bytes``, as fast as the pipe takes them."""
    block = (b"x" * 1023 + b"\n") * 64
    out = sys.stdout.buffer
    written = 0
    while written < total_bytes:
        out.write(block)
        written += len(block)
    out.flush()
    return written


def fail_first(state_dir: str) -> str:
    """Prints its attempt, then fails on the first call and succeeds on the second."""
    marker = Path(state_dir) / "failed-once"
    if not marker.exists():
        print("attempt one here")
        marker.write_text("1")
        raise RuntimeError("first call fails")
    print("attempt two here")
    return "ok"


def quick(x: int = 0) -> int:
    return x + 1


def pid_file_wait(path: str) -> None:
    """Prints, then waits until ``path`` exists (the test creates it)."""
    print("waiting for the file", flush=False)
    while not os.path.exists(path):
        time.sleep(0.02)  # polling a file the test writes: the task's own wait
