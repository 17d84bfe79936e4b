"""A stand-in stream instance for the control-plane tests: a long-lived task that reports.

It talks to the coordinator like the real runtime (``sdk/streams/_instance.py``) does,
through the real ``StreamService`` RPCs and the environment its worker exports, and
returns once told to drain, stop, or that it is fenced. Kept tiny: the runtime replaces it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc

from xpipe._proto import stream_pb2, stream_pb2_grpc

#: How often this stand-in reports (faster than the runtime, so tests see rates quickly).
REPORT_EVERY_S = 0.2


def env_of_task(*names: str) -> dict[str, str | None]:
    """What a task process sees of the worker's exported environment."""
    return {name: os.environ.get(name) for name in names}


def instance(stream: str, stage: str, index: int, run_id: str, marker_dir: str = "", fail_first: bool = False,
             per_report: int = 10) -> str:  # fmt: skip
    """Report every REPORT_EVERY_S, ``per_report`` more records each time, until told to end.

    ``marker_dir`` counts attempts (one file each): a task cannot otherwise know its attempt
    number; with ``fail_first`` the first attempt raises, so a second one takes over.
    """
    attempt = 0
    if marker_dir:
        attempt = len(list(Path(marker_dir).iterdir())) + 1
        (Path(marker_dir) / f"attempt-{attempt}").touch()
        if fail_first and attempt == 1:
            raise RuntimeError("first attempt fails on purpose")
    coordinator = os.environ["XPIPE_COORDINATOR"].split(",")[0]
    ref = stream_pb2.InstanceRef(stream=stream, stage=stage, instance=index, run_id=run_id, attempt=attempt,
                                 worker_id=os.environ.get("XPIPE_WORKER_ID", ""))  # fmt: skip
    with grpc.insecure_channel(coordinator) as channel:
        stub = stream_pb2_grpc.StreamServiceStub(channel)
        count = 0
        while True:
            count += per_report
            report = stream_pb2.InstanceReport(ref=ref, state="running", at=time.time(), records_in=count,
                                               records_out=count, lag=5, buffer_fill=3, buffer_size=10)  # fmt: skip
            control = stub.ReportInstance(report, timeout=10)
            if control.fenced:
                return "fenced"
            if control.drain or control.stop:
                report.state = "stopped"
                stub.ReportInstance(report, timeout=10)
                return "drained" if control.drain else "stopped"
            time.sleep(REPORT_EVERY_S)  # the report cadence, not a wait for something
