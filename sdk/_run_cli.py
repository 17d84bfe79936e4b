"""What ``xpipe run`` and ``xpipe status`` print about a run, and how ``run`` follows it.

Kept apart from :mod:`._cli` (argument parsing, one function per subcommand) because a run
that is followed has moving parts of its own: the run id is printed as soon as the run is
durable, a piped output gets a progress line every few seconds, Ctrl-C asks whether to
cancel (or cancels), and a big run ends in a compact summary instead of a line per task.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ._result import RUN_STATUS

if TYPE_CHECKING:
    from ._dag import Pipeline
    from ._manager import PipelineManager
    from ._proto import pipeline_pb2
    from ._result import PipelineResult

__all__ = [
    "COMPACT_AFTER_TASKS",
    "DEFAULT_PROGRESS_INTERVAL_S",
    "SLOWEST_SHOWN",
    "RunInterrupted",
    "exit_on_sigterm",
    "follow_run",
    "task_lines",
    "task_rows",
]

#: Past this many tasks a run's text ends in a compact summary (``--verbose``: every task).
COMPACT_AFTER_TASKS = 20
#: Tasks named under "slowest" in a compact summary.
SLOWEST_SHOWN = 5
#: Seconds between progress lines when the output is not a terminal.
DEFAULT_PROGRESS_INTERVAL_S = 5.0
#: Columns of a task's name in the text tables.
_NAME_WIDTH = 30


class RunInterrupted(Exception):
    """Ctrl-C while a run was followed; ``cancelled`` says whether it was cancelled."""

    def __init__(self, run_id: str, cancelled: bool):
        super().__init__(run_id)
        self.run_id = run_id
        self.cancelled = cancelled


# ---------------------------------------------------------------------- tables


def task_rows(tasks: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Name -> the JSON row of a task, from ``TaskRunInfo`` (run) or ``TaskInfo`` (status)."""
    rows = {}
    for t in tasks:
        status = getattr(t, "status", None) or t.state.lower()
        duration_s = t.finished_at - t.started_at if t.started_at and t.finished_at else None
        rows[t.name] = {
            "status": status, "attempts": t.attempts, "worker": t.worker, "started_at": t.started_at,
            "finished_at": t.finished_at, "duration_s": None if duration_s is None else max(0.0, duration_s),
            "error": t.error, "error_type": t.error_type, "exception_type": t.exception_type,
            "traceback": t.traceback, "cache_hit": t.cache_hit,
        }  # fmt: skip
    return rows


def _duration(duration_s: float | None) -> str:
    if duration_s is None:
        return "-"
    return f"{duration_s * 1000:.1f} ms" if duration_s < 1 else f"{duration_s:.2f} s"


def _task_line(name: str, row: Mapping[str, Any]) -> list[str]:
    """One task's line, and under a failed one the traceback its worker sent."""
    line = (f"  {name[:_NAME_WIDTH]:{_NAME_WIDTH}} {row['status']:16} {row['worker'] or '-':12} "
            f"{_duration(row['duration_s']):>10} {row['attempts']:>3} tries")  # fmt: skip
    if row.get("cache_hit"):
        line += "  (cache hit)"
    if row["error"]:
        line += f"  {row['exception_type'] or row['error_type']}: {row['error']}"
    lines = [line]
    if row["traceback"] and row["status"] == "failed":
        lines += ["      " + text for text in row["traceback"].rstrip().splitlines()]
    return lines


def task_lines(rows: Mapping[str, Mapping[str, Any]], *, verbose: bool) -> list[str]:
    """Text of a run's tasks: a line each, or past ``COMPACT_AFTER_TASKS`` a summary.

    The summary counts tasks by state, lists every failed task (with its traceback) and the
    ``SLOWEST_SHOWN`` slowest, so a 10,000-task run stays readable.
    """
    if verbose or len(rows) <= COMPACT_AFTER_TASKS:
        return [text for name, row in rows.items() for text in _task_line(name, row)]
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"  {len(rows)} tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    hits = sum(1 for row in rows.values() if row.get("cache_hit"))
    if hits:
        lines[0] += f" ({hits} from the result cache)"
    failed = [(name, row) for name, row in rows.items() if row["status"] == "failed"]
    if failed:
        lines.append("  failed:")
        lines += [text for name, row in failed for text in _task_line(name, row)]
    timed = sorted((row["duration_s"], name) for name, row in rows.items() if row["duration_s"] is not None)
    if timed:
        lines.append("  slowest:")
        lines += [text for _, name in reversed(timed[-SLOWEST_SHOWN:]) for text in _task_line(name, rows[name])]
    lines.append("  (--verbose: every task)")
    return lines


# ---------------------------------------------------------------------- following a run


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while the block runs, so cleanup runs.

    Without it a terminated ``xpipe run`` dies at once and leaves the embedded default's
    coordinator and workers (in sessions of their own) running. Only the main thread can
    set a handler; elsewhere (``main()`` called from a thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



class _ProgressLines:
    """A line every ``interval_s`` about the latest summary, for output that is not a terminal.

    A thread prints them, so a run that changes nothing for a while still shows it is alive
    (the event stream is silent then).
    """

    def __init__(self, interval_s: float, out: TextIO):
        self.interval_s = interval_s
        self.out = out
        self.latest: pipeline_pb2.RunSummary | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="xpipe-run-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            s = self.latest
            if s is None:
                continue
            done = s.succeeded_tasks + s.failed_tasks
            print(f"[{time.monotonic() - self._started:6.1f}s] run {s.run_id}: {RUN_STATUS.get(s.state, '?')}, "
                  f"{done}/{s.total_tasks} tasks done ({s.succeeded_tasks} succeeded, {s.failed_tasks} failed)",
                  file=self.out, flush=True)  # fmt: skip

    def tap(self, events: Iterator[pipeline_pb2.RunEvent]) -> Iterator[pipeline_pb2.RunEvent]:
        try:
            for event in events:
                self.latest = event.summary
                yield event
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def follow_run(
    pm: PipelineManager,
    pipeline: Pipeline,
    *,
    out: TextIO,
    progress_interval_s: float,
    cancel_on_interrupt: bool | None,
    embedded: bool,
) -> PipelineResult:
    """Submit, say the run id at once, and follow the run to its end.

    Args:
        out: where the run id and progress lines go (stderr when stdout carries JSON).
        progress_interval_s: seconds between progress lines when stdout is not a terminal
            (a terminal gets a progress bar); 0: none.
        cancel_on_interrupt: on Ctrl-C, True cancels the run, False leaves it running, None
            asks (when stdin is a terminal; else it cancels).
        embedded: the cluster is this command's own and stops with it, so Ctrl-C cancels.

    Raises:
        RunInterrupted: Ctrl-C after the run started.
    """
    run_id = pm.submit(pipeline)
    print(f"run {run_id} of {pipeline.name} started", file=out, flush=True)
    terminal = sys.stdout.isatty() and out is sys.stdout
    lines = None if terminal or progress_interval_s <= 0 else _ProgressLines(progress_interval_s, out)
    try:
        events = pm.client._watch_pb(run_id, summary_only=True, results_on_end=True)
        if lines is not None:
            lines.start()
            events = lines.tap(events)
        # The stream is followed in a thread while this (main) thread waits in short, always
        # interruptible steps: a Ctrl-C must reach us whatever the RPC library is doing then.
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def follow() -> None:
            try:
                outcome["result"] = pm._follow(events, monitor=terminal, raise_on_failure=False, pipeline=pipeline)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=follow, name="xpipe-run-follow", daemon=True).start()
        while not done.wait(0.2):
            pass
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
    except KeyboardInterrupt:
        if lines is not None:
            lines.stop()
        raise RunInterrupted(run_id, _interrupted(pm, run_id, cancel_on_interrupt, embedded)) from None
    finally:
        if lines is not None:
            lines.stop()


def _interrupted(pm: PipelineManager, run_id: str, cancel: bool | None, embedded: bool) -> bool:
    """After Ctrl-C: cancel the run, or ask, or leave it; True when it was cancelled."""
    if embedded:
        cancel = True  # the embedded cluster stops with this command: nothing would finish the run
    elif cancel is None:
        cancel = not sys.stdin.isatty() or _ask(f"\ncancel run {run_id}? [y/N] ")
    if cancel:
        cancelled = pm.client.cancel(run_id)
        print(f"run {run_id}: {'cancelled' if cancelled else 'had already finished'}", file=sys.stderr, flush=True)
        return cancelled
    print(f"run {run_id} goes on; follow it with: xpipe status {run_id}", file=sys.stderr, flush=True)
    return False


def _ask(question: str) -> bool:
    """Yes only for y/yes; a second Ctrl-C also means yes (the user insists), end of input no."""
    try:
        return input(question).strip().lower() in ("y", "yes")
    except KeyboardInterrupt:
        return True
    except EOFError:
        return False
