"""The state machine forgets unhealthy workers on an operator's WorkersForgotten event."""

from __future__ import annotations

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import Assign, ResetWorker, Tick, WorkerConnected, WorkerDisconnected, WorkersForgotten
from xpipe.coordinator._state import SchedulerState
from tests.unit.test_state import submit


def _state() -> SchedulerState:
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=5.0, validate=True)
    for wid in ("a-1", "b-1", "c-1"):
        s.handle(WorkerConnected(0.0, wid, wid.split("-")[0], "host", 1))
    return s


def test_unhealthy_lists_lost_and_disconnected_but_not_a_name_that_came_back():
    s = _state()
    s.handle(WorkerDisconnected(1.0, "b-1"))
    assert s.unhealthy_workers() == ["b"]
    for wid in ("a-1", "b-1"):  # a keeps its stream, c goes silent
        s.workers[wid].last_seen = 9.0
    s.handle(Tick(10.0))
    assert s.workers["c-1"].state == "lost" and s.unhealthy_workers() == ["b", "c"]
    s.handle(WorkerConnected(11.0, "c-2", "c", "host", 1))  # c restarted under a new id
    assert s.unhealthy_workers() == ["b"]


def test_forgetting_drops_unhealthy_workers_requeues_their_attempts_and_keeps_healthy_ones():
    s = _state()
    out = submit(s, {"t": []})
    (assign,) = [a for a in out + s.schedule(0.0) if isinstance(a, Assign)]
    holder = assign.worker_id
    s.handle(WorkerDisconnected(1.0, holder))
    healthy = next(w for w in s.workers if w != holder)
    out = s.handle(WorkersForgotten(2.0, (holder, healthy, "ghost-9")))
    assert holder not in s.workers and healthy in s.workers  # the connected one stays; the unknown id is ignored
    assert [a.worker_id for a in out if isinstance(a, ResetWorker)] == [holder]
    assert s.runs["r1"].tasks["t"].state == pb.READY  # requeued, not lost with the worker
    assert holder not in s.placement.nodes
    again = [a for a in s.schedule(3.0) if isinstance(a, Assign)]
    assert again and again[0].worker_id != holder
