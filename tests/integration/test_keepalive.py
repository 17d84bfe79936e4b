"""Pings bound the SDK's streams: a frozen coordinator breaks a watch in seconds, not never.

A SIGSTOPped (or partitioned) coordinator keeps its TCP connections open: the kernel still
acknowledges every segment, so without HTTP/2 pings a watch with no ``timeout_s`` waits
until the kernel gives up, if ever. The coordinator must also accept the clients' pings:
one that pings more often than it allows gets GOAWAY ``too_many_pings``.
"""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, Task
from xpipe._limits import (
    CONNECT_ATTEMPT_TIMEOUT_MS,
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    MIN_PING_INTERVAL_MS,
)
from xpipe._proto import pipeline_pb2, pipeline_pb2_grpc
from xpipe.errors import CoordinatorUnavailableError

CONNECT_TIMEOUT_S = 1.0
#: Scheduling slack on a loaded 2-core machine.
MARGIN_S = 5.0


def test_a_watch_on_a_frozen_coordinator_gives_up_within_keepalive_and_connect_timeout(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c, \
            PipelineManager(coordinator=c.address, connect_timeout_s=CONNECT_TIMEOUT_S) as pm:  # fmt: skip
        p = Pipeline("frozen")
        p.add_task(Task("long", ht.sleep, args=(120,)))
        run_id = pm.submit(p)
        eventually(lambda: pm.get_run(run_id).tasks["long"].status == "running", timeout_s=20)
        events = pm.client.watch(run_id)
        next(events)  # the stream is open and has answered
        c.coordinator.stop_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            with pytest.raises(CoordinatorUnavailableError) as info:
                for _ in events:
                    pass
            gave_up_s = time.monotonic() - frozen_at
        finally:
            c.coordinator.stop_signal(signal.SIGCONT)
        # A ping goes out within KEEPALIVE_TIME_MS, is unanswered after KEEPALIVE_TIMEOUT_MS;
        # one reconnect then waits CONNECT_ATTEMPT_TIMEOUT_MS for the frozen peer's SETTINGS.
        pings_and_connect_ms = KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS + CONNECT_ATTEMPT_TIMEOUT_MS
        bound_s = pings_and_connect_ms / 1000 + CONNECT_TIMEOUT_S
        print(f"frozen coordinator to CoordinatorUnavailableError: {gave_up_s:.1f}s (bound {bound_s:g}s)")
        assert gave_up_s < bound_s + MARGIN_S
        assert c.address in str(info.value)


def test_the_coordinator_refuses_pings_faster_than_its_minimum(tmp_path):
    """The control for the limit the SDK's pings respect: too frequent pings get GOAWAY."""
    assert MIN_PING_INTERVAL_MS <= KEEPALIVE_TIME_MS, "the coordinator would refuse the SDK's own pings"
    too_often = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with Cluster(tmp_path, workers=0) as c, \
            PipelineManager(coordinator=c.address) as pm, \
            grpc.insecure_channel(c.address, options=too_often) as channel:  # fmt: skip
        p = Pipeline("idle")
        p.add_task(Task("waits", ht.sleep, args=(1,)))  # no worker: the run stays pending, the watch idle
        run_id = pm.submit(p)
        stream = pipeline_pb2_grpc.PipelineServiceStub(channel).WatchRun(
            pipeline_pb2.WatchRunRequest(run_id=run_id, summary_only=True), timeout=30
        )
        try:
            with pytest.raises(grpc.RpcError) as info:
                for _ in stream:
                    pass
        finally:
            stream.cancel()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "Too many pings", info.value.details()
