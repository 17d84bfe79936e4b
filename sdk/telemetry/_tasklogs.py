"""Task logs: the facts every process agrees on (caps, flush period, stream names, marker).

A leaf: it imports nothing of ours, so the worker that captures logs, the coordinator that
keeps them and the SDK and CLI that show them share one spelling of each fact.
"""

from __future__ import annotations

__all__ = [
    "STDERR",
    "STDOUT",
    "STREAM_NAMES",
    "TASK_LOG_BATCH_MAX_BYTES",
    "TASK_LOG_FLUSH_INTERVAL_S",
    "TASK_LOG_FORMAT",
    "TASK_LOG_LAG_S",
    "TASK_LOG_MAX_BYTES",
    "TASK_LOG_PENDING_MAX_BYTES",
    "TASK_LOG_SETTLE_S",
    "truncation_marker",
]

#: Output kept per attempt (stdout and stderr together) by default; ``--task-log-max-bytes``.
TASK_LOG_MAX_BYTES = 1 << 20
#: While an attempt writes, its output leaves the worker at most this long after it was read.
TASK_LOG_FLUSH_INTERVAL_S = 0.2
#: Captured output a worker holds unsent (coordinator slow or unreachable); past it new
#: output is dropped with a counted marker rather than held.
TASK_LOG_PENDING_MAX_BYTES = 8 << 20
#: Output in one worker message at most: a flood leaves in pieces that never hog the stream.
TASK_LOG_BATCH_MAX_BYTES = 256 << 10
#: A followed task that finished without its worker's "final" log entry (it printed
#: nothing, or its worker died) is given this long for stragglers before the stream ends.
TASK_LOG_SETTLE_S = 1.0

#: How a task's ``logging`` records look in its captured stderr.
TASK_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: A task's last log batch leaves its worker right after its outcome, a few ms behind it
#: (one more message on the stream). A read of a task that finished less than this long ago
#: and whose final log entry has not arrived waits for it, this long after the finish at most.
TASK_LOG_LAG_S = 0.1

#: ``LogStream`` numbers (worker.proto); the same as the file descriptors they come from.
STDOUT = 1
STDERR = 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


def truncation_marker(stream: int, dropped_bytes: int) -> str:
    """The line shown where ``dropped_bytes`` of a stream were not kept."""
    name = STREAM_NAMES.get(stream, "output")
    return f"[xpipe: {dropped_bytes} bytes of {name} dropped (over the per-attempt log cap, or shed under load)]\n"
