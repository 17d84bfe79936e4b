"""What keeps a task inside what it asked for: memory limits and capped output.

A leaf module (it imports nothing of ours): the executor imports it in the worker, and the
executor's children import it to apply a limit around each task.

Memory: a task's declared ``resources.memory_bytes`` (or the worker's
``--task-memory-limit`` for tasks that declare none) bounds what the task may allocate. In
an executor child that is ``RLIMIT_DATA`` (heap and private mappings, what ``malloc`` and
``mmap`` take), set for the task's duration on top of what the child already holds and
restored after, so a warm child serves the next task with its own limit. An allocation over
the limit fails (``MemoryError`` in Python, ``ENOMEM`` in C), and the task fails with
``RESOURCE_EXHAUSTION``. A cgroup v2 per child would count page cache and kill instead of
refusing; it is not used yet, see :func:`memory_enforcement`.

Output: an executor child's file descriptors 1 and 2 are pipes the worker reads; it keeps
the last :data:`TASK_OUTPUT_TAIL_BYTES` of each per attempt (:class:`TailBuffer`), so no
task can fill the worker's own log or memory.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from typing import Iterator

__all__ = [
    "TASK_OUTPUT_TAIL_BYTES",
    "ENFORCEMENT_RLIMIT",
    "ENFORCEMENT_NONE",
    "memory_enforcement",
    "memory_limit",
    "command_limit_preexec",
    "peak_rss_bytes",
    "format_bytes",
    "TailBuffer",
]

#: How much of each output stream (stdout, stderr) of one attempt is kept: the last bytes.
TASK_OUTPUT_TAIL_BYTES = 64 * 1024
#: Values of ``Register.memory_enforcement``: how this worker holds tasks to their memory.
ENFORCEMENT_RLIMIT = "rlimit"
ENFORCEMENT_NONE = "none"

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def memory_enforcement(executor: str) -> str:
    """How tasks' memory limits are enforced on this worker, decided once at start-up.

    ``"rlimit"`` for the process executor on Linux (``RLIMIT_DATA`` counts anonymous
    ``mmap`` there since Linux 4.7), ``"none"`` for the thread executor (one process
    cannot hold its threads to separate limits) and elsewhere.
    """
    if executor != "process" or not sys.platform.startswith("linux"):
        return ENFORCEMENT_NONE
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return ENFORCEMENT_NONE
    return ENFORCEMENT_RLIMIT if (major, minor) >= (4, 7) else ENFORCEMENT_NONE


_proc_fds: dict[str, int] = {}


def _proc_fd(name: str, flags: int) -> int:
    """A kept-open descriptor of ``/proc/self/<name>``: one syscall per use, not three."""
    fd = _proc_fds.get(name)
    if fd is None:
        fd = _proc_fds[name] = os.open(f"/proc/self/{name}", flags | os.O_CLOEXEC)
    return fd


def _data_bytes() -> int:
    """What this process holds now in heap and private mappings (``statm`` data field)."""
    return int(os.pread(_proc_fd("statm", os.O_RDONLY), 256, 0).split()[5]) * _PAGE_BYTES


def _reset_peak_rss() -> None:
    try:  # "5": reset VmHWM to the current RSS, so the peak is this task's
        os.write(_proc_fd("clear_refs", os.O_WRONLY), b"5")
    except OSError:  # old kernels: the peak then covers the process's whole life
        pass


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since the current task started (VmHWM)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextlib.contextmanager
def memory_limit(limit_bytes: int) -> Iterator[None]:
    """Hold this process to ``limit_bytes`` more heap than it has now, until the block ends.

    Only the soft limit moves, so it can be raised again afterwards; a hard limit set by
    the operator (``ulimit -d``) stays in force above it. ``limit_bytes`` 0 does nothing.
    """
    if limit_bytes <= 0:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    target = _data_bytes() + limit_bytes
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    _reset_peak_rss()
    resource.setrlimit(resource.RLIMIT_DATA, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def command_limit_preexec(limit_bytes: int):
    """A ``preexec_fn`` that holds a command to ``limit_bytes`` of heap, from its exec on."""

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        target = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (target, hard))

    return apply


def format_bytes(size: int) -> str:
    """``104857600`` -> ``"100 MiB"``: binary units, as ``memory_mb`` counts them."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns at GiB


class TailBuffer:
    """The last ``cap_bytes`` written to a stream, and how many bytes came in all."""

    __slots__ = ("cap_bytes", "data", "total_bytes")

    def __init__(self, cap_bytes: int = TASK_OUTPUT_TAIL_BYTES):
        self.cap_bytes = cap_bytes
        self.data = bytearray()
        self.total_bytes = 0

    def append(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        if len(chunk) >= self.cap_bytes:
            self.data[:] = chunk[-self.cap_bytes :]
            return
        self.data += chunk
        # Trim in bulk (at twice the cap), not on every write: amortized O(1) per byte.
        if len(self.data) > 2 * self.cap_bytes:
            del self.data[: len(self.data) - self.cap_bytes]

    def tail(self) -> bytes:
        return bytes(self.data[-self.cap_bytes :])

    @property
    def dropped_bytes(self) -> int:
        return self.total_bytes - min(len(self.data), self.cap_bytes)

    def clear(self) -> None:
        self.data.clear()
        self.total_bytes = 0
