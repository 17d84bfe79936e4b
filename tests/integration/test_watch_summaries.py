"""Summary-only watches get progress at a bounded rate, and the end at once.

``execute_pipeline`` watches summaries only; a busy run changes its counts every engine
turn, and one event per turn cost coordinator and client CPU per task
(see ``SUMMARY_EVENT_INTERVAL_S`` in coordinator/_server.py).
"""

from __future__ import annotations

import time

from tests import helpers_tasks as ht
from xpipe import Client, Pipeline, Task
from xpipe._proto.common_pb2 import RUN_SUCCEEDED
from xpipe.coordinator._server import SUMMARY_EVENT_INTERVAL_S


def test_a_busy_run_sends_few_summaries_and_the_end_at_once(cluster):
    p = Pipeline("many")
    p.add_tasks([Task(f"t{i}", ht.noop) for i in range(600)])
    with Client(cluster.address) as client:
        arrivals: list[tuple[float, object]] = []
        for event in client._submit_and_watch_pb(p.to_proto(), summary_only=True, results_on_end=True, timeout_s=60):
            arrivals.append((time.monotonic(), event))
    events = [e for _, e in arrivals]
    assert events[-1].summary.state == RUN_SUCCEEDED and events[-1].summary.succeeded_tasks == 600
    assert len(events[-1].changed) == 600  # results_on_end still carries every task
    done = [e.summary.succeeded_tasks for e in events]
    assert done == sorted(done), done  # counts never go back
    # One event per interval at most while the run goes on (plus the first and the last).
    span_s = arrivals[-1][0] - arrivals[0][0]
    assert len(events) <= 2 + span_s / SUMMARY_EVENT_INTERVAL_S + 1, (len(events), span_s)
    gaps = [b[0] - a[0] for a, b in zip(arrivals[1:-1], arrivals[2:-1])]
    assert all(g >= SUMMARY_EVENT_INTERVAL_S * 0.9 for g in gaps), gaps


def test_progress_of_a_long_run_still_arrives_before_its_end(cluster):
    p = Pipeline("slow-tail")
    p.add_tasks([Task("first", ht.noop), Task("second", ht.sleep, args=(2.0,))])  # side by side
    with Client(cluster.address) as client:
        arrivals = []
        for event in client._submit_and_watch_pb(p.to_proto(), summary_only=True, timeout_s=60):
            arrivals.append((time.monotonic(), event.summary.succeeded_tasks, event.summary.state))
    end_at = arrivals[-1][0]
    # "first" finished long before the run ended, and the watcher heard of it then.
    progress = [at for at, done, _ in arrivals if done == 1]
    assert progress and end_at - progress[0] > 1.0, arrivals
    assert arrivals[-1][1:] == (2, RUN_SUCCEEDED), arrivals
