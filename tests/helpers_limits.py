"""Task functions for the limit tests (memory, output); importable by workers and children."""

from __future__ import annotations

import os
import subprocess
import sys

MIB = 2**20


def allocate(n_bytes: int) -> int:
    """Allocate and touch ``n_bytes`` in 16 MiB pieces, so RSS really grows; return the total."""
    chunks = []
    for _ in range(n_bytes // (16 * MIB)):
        chunk = bytearray(16 * MIB)
        chunk[::4096] = b"x" * len(chunk[::4096])
        chunks.append(chunk)
    return sum(len(c) for c in chunks)


def print_lots(n_bytes: int, marker: str = "END-OF-OUTPUT") -> int:
    """Write ``n_bytes`` to stdout through Python, fd 1 directly and a subprocess, then a marker to stderr."""
    line = b"y" * 1023 + b"\n"
    third = n_bytes // 3
    sys.stdout.write((line * (third // len(line))).decode())
    os.write(1, line * (third // len(line)))
    subprocess.run([sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'z' * {third})"], check=True)
    print(marker, file=sys.stderr)
    return n_bytes


def fail_after_output(text: str) -> None:
    """Say ``text`` on both streams, then fail."""
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    raise RuntimeError("failed after writing output")
