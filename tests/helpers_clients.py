"""What the client examples (examples/clients/<lang>) must print: one source for their tests.

Each example submits the same pipeline (examples/clients/README.md, "The contract"). The
expected lines are computed here by running the blob and json20k tasks' programs, so a test
knows the answer without trusting the client.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys

__all__ = ["BLOB_PY", "FINAL_EVENTS", "JSON_PY", "expected_task_lines"]

#: The blob task's program: 1 MiB of incompressible text (it travels by artifact reference).
BLOB_PY = (
    "import hashlib,sys; b=b''.join(hashlib.sha256(str(i).encode()).hexdigest().encode() "
    "for i in range(16384)); sys.stdout.write(b.decode())"
)
#: The json20k task's program: a ~20 KiB JSON document of 640 rows (zstd-compressed on the worker).
JSON_PY = 'import json; print(json.dumps({"rows": [{"i": i, "name": "row-%05d" % i} for i in range(640)]}))'
#: The `event` lines every example prints, whatever came before: each task's end state.
FINAL_EVENTS = ("event greet SUCCEEDED", "event blob SUCCEEDED", "event json20k SUCCEEDED", "event fail FAILED")


@functools.cache
def _stdout_of(python_code: str) -> bytes:
    return subprocess.run([sys.executable, "-c", python_code], capture_output=True, check=True).stdout


def expected_task_lines(lang: str) -> list[str]:
    """The four `task` lines the ``lang`` example prints, in order."""
    blob = _stdout_of(BLOB_PY)
    assert len(blob) == 1_048_576, "BLOB_PY must print exactly 1 MiB"
    return [
        f"task greet SUCCEEDED stdout=hello from {lang}",
        f"task blob SUCCEEDED artifact=yes bytes={len(blob)} sha256={hashlib.sha256(blob).hexdigest()}",
        f"task json20k SUCCEEDED zstd=no rows=640 bytes={len(_stdout_of(JSON_PY))}",
        "task fail FAILED exit_code=3 stderr=disk full stdout=partial output",
    ]
