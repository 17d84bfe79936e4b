"""A worker that leaves after a drain is ``drained``, not ``lost``: no deadline, no alert."""

from __future__ import annotations

from xpipe._domain import DEPARTED_WORKER_STATES, WORKER_STATES
from xpipe.coordinator._events import (
    Assign, DrainRequested, Tick, WorkerConnected, WorkerDisconnected, WorkerLost, WorkersForgotten,
)  # fmt: skip
from xpipe.coordinator._state import SchedulerState
from tests.unit.test_state import submit


def _state() -> SchedulerState:
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=5.0, validate=True)
    s.handle(WorkerConnected(0.0, "a-1", "a", "host", 1))
    return s


def test_a_drained_worker_that_leaves_is_drained_and_never_lost():
    s = _state()
    s.handle(DrainRequested(1.0, "a-1"))
    assert s.worker_shown_state(s.workers["a-1"]) == "draining"
    s.handle(WorkerDisconnected(2.0, "a-1"))
    worker = s.workers["a-1"]
    assert s.worker_shown_state(worker) == "drained" and "drained" in WORKER_STATES
    out = s.handle(Tick(60.0))  # far past the heartbeat deadline
    assert worker.state == "drained" and not [a for a in out if isinstance(a, WorkerLost)]
    assert s.unhealthy_workers() == [] and s.worker_by_name("a") is None
    assert "a-1" not in s.placement.nodes


def test_a_draining_worker_that_leaves_holding_work_is_disconnected_then_lost():
    s = _state()
    out = submit(s, {"t": []})
    assert [a for a in out + s.schedule(0.0) if isinstance(a, Assign)]
    s.handle(DrainRequested(1.0, "a-1"))
    s.handle(WorkerDisconnected(2.0, "a-1"))  # it died with the task: not a clean drain
    assert s.worker_shown_state(s.workers["a-1"]) == "disconnected"
    out = s.handle(Tick(60.0))
    assert s.workers["a-1"].state == "lost" and [a for a in out if isinstance(a, WorkerLost)]


def test_a_drained_worker_can_be_forgotten_and_come_back():
    s = _state()
    s.handle(DrainRequested(1.0, "a-1"))
    s.handle(WorkerDisconnected(2.0, "a-1"))
    assert s.sort_for_forgetting(["a"])[0] == ["a"]
    s.handle(WorkerConnected(3.0, "a-1", "a", "host", 1))  # restarted under the same id
    assert s.worker_shown_state(s.workers["a-1"]) == "ready" and "drained" in DEPARTED_WORKER_STATES
    s.handle(DrainRequested(4.0, "a-1"))
    s.handle(WorkerDisconnected(5.0, "a-1"))
    s.handle(WorkersForgotten(6.0, ("a-1",)))
    assert "a-1" not in s.workers
