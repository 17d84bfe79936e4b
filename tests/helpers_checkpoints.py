"""Tasks that checkpoint, run by import path in real worker processes (tests of task checkpoints)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import xpipe
from xpipe.telemetry._task import current_attempt


def _attempt() -> int:
    found = current_attempt()
    assert found is not None
    return found[2]


def stepper(marks_dir: str, steps: int, step_s: float) -> int:
    """Sum 1..steps, one step each ``step_s``, saving ``{step, total}`` after every step.

    Each step leaves ``step-<i>.attempt-<a>``; each attempt leaves ``start.attempt-<a>``
    holding the step it resumed after, so a test sees where every attempt began.
    """
    state = xpipe.last_checkpoint() or {"step": 0, "total": 0}
    attempt = _attempt()
    Path(marks_dir, f"start.attempt-{attempt}").write_text(str(state["step"]))
    for i in range(state["step"] + 1, steps + 1):
        time.sleep(step_s)
        state = {"step": i, "total": state["total"] + i}
        Path(marks_dir, f"step-{i:02d}.attempt-{attempt}").touch()
        xpipe.checkpoint(state)
    return state["total"]


def chatty(calls: int, spread_s: float, fail_first: bool = False) -> Any:
    """Checkpoint ``0..calls-1`` over about ``spread_s``; return what a retry found, or the last.

    With ``fail_first``, the first attempt raises after its last save, so the retry shows
    which state reached the coordinator.
    """
    if _attempt() > 1:
        return {"resumed_from": xpipe.last_checkpoint()}
    pause_s = spread_s / calls
    for i in range(calls):
        xpipe.checkpoint(i)
        if pause_s:
            time.sleep(pause_s)
    if fail_first:
        raise RuntimeError("first attempt fails after its saves")
    return {"last": xpipe.last_checkpoint()}


def save_twice_and_hold(marks_dir: str) -> Any:
    """Attempt 1: save ``{"part": 1}``, wait for ``go``, save ``{"part": 2}``, then hold until
    ``release``; each save leaves ``saved-<n>``. A later attempt returns what it got."""
    marks = Path(marks_dir)
    if _attempt() > 1:
        return {"attempt": _attempt(), "resumed_from": xpipe.last_checkpoint()}
    xpipe.checkpoint({"part": 1})
    (marks / "saved-1").touch()
    _wait_for(marks / "go")
    xpipe.checkpoint({"part": 2})
    (marks / "saved-2").touch()
    _wait_for(marks / "release")
    return {"attempt": 1}


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def big_state(size_bytes: int, digest_file: str) -> dict:
    """Save ``size_bytes`` of random bytes on the first attempt and fail; the retry digests what it got."""
    if _attempt() == 1:
        xpipe.checkpoint(os.urandom(size_bytes))
        blob = xpipe.last_checkpoint()
        Path(digest_file).write_text(hashlib.sha256(blob).hexdigest())
        raise RuntimeError("first attempt fails after saving a big state")
    got = xpipe.last_checkpoint()
    return {"size": len(got), "sha256": hashlib.sha256(got).hexdigest()}


def save_each(values: list) -> dict:
    """Save each value in turn; report what this attempt started with and ended with."""
    started = xpipe.last_checkpoint()
    for value in values:
        xpipe.checkpoint(value)
    return {"started": started, "last": xpipe.last_checkpoint()}


def save_unpicklable() -> None:
    """Save a state pickle refuses (a lock)."""
    import threading

    xpipe.checkpoint({"lock": threading.Lock()})


def save_bytes(size_bytes: int) -> None:
    """Save ``size_bytes`` of incompressible bytes."""
    xpipe.checkpoint(os.urandom(size_bytes))
