"""A client that waits on a long run, run as its own process so a test can measure its CPU.

Usage: ``python -m tests.integration.waiting_client ADDRESS MODE CONNECT_TIMEOUT_S``, with
MODE ``wait`` (submit, then ``PipelineManager.wait``) or ``execute``
(``execute_pipeline``). It prints ``RUN <run_id>`` once submitted (``wait`` mode), and on
the way out one JSON line: ``{"outcome": ..., "error": ..., "message": ..., "addresses": ...}``.
Exit status: 0 when the run ended, 3 when an xpipe error ended the wait.
"""

from __future__ import annotations

import json
import sys

from tests import helpers_tasks as ht
from xpipe import Pipeline, PipelineManager, Task
from xpipe.errors import XpipeError

#: Longer than any test waits: the run must still be going when the coordinator dies.
LONG_TASK_S = 300.0


def main(argv: list[str]) -> int:
    address, mode, timeout_text = argv
    connect_timeout_s = None if timeout_text == "none" else float(timeout_text)
    pipeline = Pipeline("waiting-client")
    pipeline.add_task(Task("long", ht.sleep, args=(LONG_TASK_S,)))
    with PipelineManager(coordinator=address, connect_timeout_s=connect_timeout_s) as pm:
        try:
            if mode == "wait":
                run_id = pm.submit(pipeline)
                print(f"RUN {run_id}", flush=True)
                pm.wait(run_id)
            else:
                pm.execute_pipeline(pipeline, monitor=False)
        except XpipeError as exc:
            print(json.dumps({"outcome": "error", "error": type(exc).__name__, "message": str(exc),
                              "addresses": list(getattr(exc, "addresses", ()))}), flush=True)  # fmt: skip
            return 3
    print(json.dumps({"outcome": "ended"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
