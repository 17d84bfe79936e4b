"""Sampling profiles of xpipe processes with py-spy, summarised as text.

``python -m bench --profile`` runs one extra, unmeasured xpipe sample of each scenario
with py-spy attached to the coordinator and to worker ``w0`` (with its task executor
children). The raw collapsed stacks are saved next to the JSON, and the top frames (self
time, and inclusive time per function) go into the JSON and the printed report, with the
CPU seconds each process used during the run (which process is the bottleneck).

Only samples holding the GIL are kept (``py-spy --gil``): py-spy's idle detection counts a
thread blocked in ``epoll_wait`` under uvloop as busy, which buried the real work under
the event loop's waits. A sample whose innermost Python frame is ``Runner.run`` is time
spent in C below the loop (uvloop callbacks, gRPC's Cython core, protobuf).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._report import BenchError

__all__ = ["find_py_spy", "PySpy", "top_frames", "format_top"]

_ATTACH_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 30.0
_LINE_NO = re.compile(r":\d+\)$")


def find_py_spy() -> str | None:
    """Path of py-spy: next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class PySpy:
    """``py-spy record`` attached to one process until :meth:`stop`.

    Args:
        pid: the process to sample.
        out: where the collapsed stacks ("raw" format) go.
        subprocesses: also sample the process's children (a worker's task executors).
        rate_hz: samples per second.
        gil: keep only samples of threads holding the GIL (see the module docstring).
    """

    def __init__(self, pid: int, out: Path, *, subprocesses: bool = False, rate_hz: int = 200, gil: bool = True):
        exe = find_py_spy()
        if exe is None:
            raise BenchError("py-spy not found; install it with `.venv/bin/pip install py-spy`")
        self.out = Path(out)
        self.log_path = self.out.with_suffix(".log")
        argv = [exe, "record", "--format", "raw", "--rate", str(rate_hz), "--nonblocking", "-o", str(self.out),
                "--pid", str(pid)]  # fmt: skip
        if subprocesses:
            argv.append("--subprocesses")
        if gil:
            argv.append("--gil")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._wait_attached()

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_attached(self) -> None:
        deadline = time.monotonic() + _ATTACH_TIMEOUT_S
        while "Sampling process" not in self._log():
            if self._proc.poll() is not None:
                raise BenchError(f"py-spy exited with {self._proc.returncode} before sampling:\n{self._log()}")
            if time.monotonic() >= deadline:
                self._proc.kill()
                self._proc.wait()
                raise BenchError(f"py-spy did not start sampling within {_ATTACH_TIMEOUT_S:g}s:\n{self._log()}")
            time.sleep(0.02)

    def stop(self) -> Path:
        """Stop sampling (SIGINT makes py-spy write its output) and return the output path.

        Raises:
            BenchError: py-spy failed or wrote nothing.
        """
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise BenchError(f"py-spy did not stop within {_STOP_TIMEOUT_S:g}s:\n{self._log()}") from None
        if not self.out.exists():
            raise BenchError(f"py-spy wrote no profile (exit {self._proc.returncode}):\n{self._log()}")
        self.log_path.unlink(missing_ok=True)  # kept only when something went wrong
        return self.out


@contextlib.contextmanager
def profiling(targets: dict[str, tuple[int, bool]], out_dir: Path, stem: str) -> Iterator[dict[str, Path]]:
    """Attach py-spy to every ``name -> (pid, subprocesses)`` for the ``with`` body.

    Yields a dict that is filled with ``name -> collapsed-stacks path`` on exit.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, PySpy] = {}
    paths: dict[str, Path] = {}
    try:
        for name, (pid, subprocesses) in targets.items():
            spies[name] = PySpy(pid, out_dir / f"{stem}-{name}.txt", subprocesses=subprocesses)
        yield paths
    finally:
        errors = []
        for name, spy in spies.items():
            try:
                paths[name] = spy.stop()
            except BenchError as exc:
                errors.append(f"{name}: {exc}")
        if errors and sys.exc_info()[0] is None:
            raise BenchError("profiling failed: " + "; ".join(errors))


def _frames(stack: str) -> list[str]:
    """Frames of one collapsed stack, root first, without line numbers (so a function is one entry).

    With ``--subprocesses`` py-spy puts ``process PID:"command line"`` pseudo-frames first
    (the parent's, then the child's); they are dropped here, and since a command line may
    itself contain ";" (``python -c "a; b"``), each is cut at its closing quote rather than
    at the first ";". The CPU meter tells the processes apart instead.
    """
    while stack.startswith("process "):  # one per level: the worker, then its task executor
        start = stack.find(':"')
        end = stack.find('";', start + 2) if start >= 0 else -1
        stack = stack[end + 2 :] if end >= 0 else ""
    frames = [f for f in stack.split(";") if f]
    return [_LINE_NO.sub(")", f) for f in frames]


def top_frames(collapsed: str, limit: int = 15) -> dict[str, Any]:
    """Summarise py-spy "raw" output: the functions that use the most samples.

    Returns:
        ``{"samples": N, "self": [(frame, pct)], "inclusive": [(frame, pct)]}``; "self" counts
        samples where the function was the innermost frame, "inclusive" those where it was
        anywhere on the stack.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        # --threads adds a "thread" pseudo-frame; it is not a function.
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for frame in set(frames):
            incl_counts[frame] += n
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(f, pct(c)) for f, c in self_counts.most_common(limit)],
        "inclusive": [(f, pct(c)) for f, c in incl_counts.most_common(limit)],
    }


class CpuMeter:
    """CPU seconds (user + system) each named process uses between start and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]):
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before = {name: self._cpu(p) for name, p in self._procs.items()}
        self._started = time.perf_counter()

    @staticmethod
    def _cpu(proc: Any) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    def stop(self) -> dict[str, Any]:
        """``{"wall_s": s, "cpu_s": {name: seconds}}``; a process that vanished is left out."""
        import psutil

        wall = time.perf_counter() - self._started
        cpu = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                cpu[name] = self._cpu(proc) - self._before[name]
        return {"wall_s": wall, "cpu_s": cpu}


def format_cpu(name: str, usage: dict[str, Any]) -> str:
    wall = usage["wall_s"]
    lines = [f"{name}: CPU seconds per process over {wall:.2f}s of wall time"]
    lines += [f"  {proc:<14} {cpu:6.2f}s  ({cpu / wall * 100:3.0f}% of a core)" for proc, cpu in usage["cpu_s"].items()]
    return "\n".join(lines)


def format_top(name: str, summary: dict[str, Any], limit: int = 12) -> str:
    lines = [f"{name}: {summary['samples']} samples holding the GIL"]
    for kind in ("self", "inclusive"):
        lines.append(f"  top {kind}:")
        lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in summary[kind][:limit]]
    return "\n".join(lines)


def read_profile(path: Path) -> dict[str, Any]:
    return top_frames(Path(path).read_text(errors="replace"))


def can_profile() -> str | None:
    """None when py-spy is available, else why not."""
    if find_py_spy() is None:
        return "py-spy not found; `.venv/bin/pip install py-spy`"
    if os.name != "posix":
        return "profiling needs a POSIX system"
    return None
