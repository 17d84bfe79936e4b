"""The worker's pure core: events in, actions out, no stream, executor or clock."""

from __future__ import annotations

import pytest

from xpipe._proto import common_pb2 as pb
from xpipe.worker._state import (
    AssignmentsReceived,
    AttemptEnded,
    CancelQueued,
    CancelRequested,
    DrainRequested,
    GiveBack,
    GraceExpired,
    Offer,
    OutcomesSent,
    Report,
    Start,
    StopRunning,
    WorkerState,
    task_request,
)

ONE_CORE = task_request(pb.Resources())


def key(i: int) -> tuple[str, str, int]:
    return ("run", f"t{i}", 1)


def offer(i: int, need=ONE_CORE) -> Offer:
    return Offer(key(i), need, payload=f"assignment {i}")


def step(state: WorkerState, event) -> list:
    actions = state.handle(event)
    state.validate()
    return actions


def started(actions) -> list:
    return [a.key for a in actions if isinstance(a, Start)]


def test_admission_stays_within_slots_and_starts_in_arrival_order():
    state = WorkerState(slots=2, offered=pb.Resources(cpu_cores=8))
    actions = step(state, AssignmentsReceived(0.0, tuple(offer(i) for i in range(5))))
    assert actions == [Start(key(0), "assignment 0"), Start(key(1), "assignment 1")]
    assert state.queued() == [key(2), key(3), key(4)]
    actions = step(state, AttemptEnded(1.0, key(1), "outcome 1"))
    assert actions == [Report(key(1), "outcome 1"), Start(key(2), "assignment 2")]
    assert state.finished == 1


def test_admission_waits_for_resources_first_come_first_served():
    state = WorkerState(slots=4, offered=pb.Resources(cpu_cores=2, gpu=1))
    gpu = task_request(pb.Resources(cpu_cores=1, gpu=1))
    actions = step(state, AssignmentsReceived(0.0, (offer(0, gpu), offer(1, gpu), offer(2))))
    # The second GPU task does not fit; the small one behind it waits its turn too.
    assert started(actions) == [key(0)]
    assert started(step(state, AttemptEnded(1.0, key(0), "done"))) == [key(1), key(2)]


def test_an_oversized_request_runs_alone_on_an_idle_worker():
    state = WorkerState(slots=2, offered=pb.Resources(cpu_cores=1))
    big = task_request(pb.Resources(cpu_cores=4))
    assert started(step(state, AssignmentsReceived(0.0, (offer(0, big), offer(1))))) == [key(0)]
    assert started(step(state, AttemptEnded(1.0, key(0), "done"))) == [key(1)]


def test_a_duplicate_assignment_after_a_reconnect_is_held_once():
    state = WorkerState(slots=1, offered=pb.Resources(cpu_cores=1))
    step(state, AssignmentsReceived(0.0, (offer(0), offer(1))))
    assert step(state, AssignmentsReceived(1.0, (offer(0), offer(1)))) == []
    assert list(state.held) == [key(0), key(1)]


def test_cancel_of_a_queued_attempt_reports_it_and_frees_its_place():
    state = WorkerState(slots=1, offered=pb.Resources(cpu_cores=1))
    step(state, AssignmentsReceived(0.0, (offer(0), offer(1), offer(2))))
    assert step(state, CancelRequested(1.0, key(1))) == [CancelQueued(key(1))]
    assert step(state, CancelRequested(1.0, key(0))) == [StopRunning(key(0))]  # running: the executor ends it
    assert step(state, AttemptEnded(2.0, key(0), "cancelled")) == [Report(key(0), "cancelled"), Start(key(2), "assignment 2")]
    assert step(state, CancelRequested(3.0, key(9))) == []  # not held: nothing to do


def test_drain_gives_back_queued_work_and_refuses_new_work():
    state = WorkerState(slots=1, offered=pb.Resources(cpu_cores=1))
    step(state, AssignmentsReceived(0.0, (offer(0), offer(1), offer(2))))
    actions = step(state, DrainRequested(1.0))
    assert actions == [GiveBack(key(1), "worker draining"), GiveBack(key(2), "worker draining")]
    assert step(state, DrainRequested(1.5)) == []  # once
    assert step(state, AssignmentsReceived(2.0, (offer(3),))) == [GiveBack(key(3), "worker draining")]
    assert not state.idle  # the running attempt finishes
    assert step(state, AttemptEnded(3.0, key(0), "done")) == [Report(key(0), "done")]
    assert state.idle
    counts = state.counts()
    assert (counts.finished, counts.given_back, counts.held) == (1, 3, 0)
    assert counts.line() == "worker stopped: 1 finished, 3 given back, 0 lost"


def test_grace_expired_gives_back_running_work_and_ignores_its_late_outcome():
    state = WorkerState(slots=2, offered=pb.Resources(cpu_cores=2))
    step(state, AssignmentsReceived(0.0, (offer(0), offer(1), offer(2))))
    step(state, DrainRequested(1.0))
    actions = step(state, GraceExpired(31.0))
    reason = "worker stopped before the attempt finished"
    assert set(actions) == {GiveBack(key(0), reason), StopRunning(key(0)), GiveBack(key(1), reason), StopRunning(key(1))}
    assert state.idle and state.ledger.used_cpu == 0
    assert step(state, AttemptEnded(32.0, key(0), "late")) == []  # reported once: as given back
    assert state.counts().line(unsent=2) == "worker stopped: 0 finished, 3 given back, 2 lost"


def test_outcomes_are_kept_for_resend_within_the_window_and_the_cap():
    state = WorkerState(slots=1, offered=pb.Resources(cpu_cores=1), recent_window_s=60.0, recent_max=3)
    step(state, OutcomesSent(0.0, ((key(0), "o0"), (key(1), "o1"))))
    assert state.recent_outcomes() == ["o0", "o1"]  # sent again on every Register until they age out
    step(state, OutcomesSent(10.0, ((key(2), "o2"), (key(3), "o3"))))
    assert state.recent_outcomes() == ["o1", "o2", "o3"]  # at most recent_max
    step(state, OutcomesSent(65.0, ((key(4), "o4"),)))
    assert state.recent_outcomes() == ["o2", "o3", "o4"]
    step(state, OutcomesSent(71.0, ()))
    assert state.recent_outcomes() == ["o4"]  # older than the window


def test_a_bad_slot_count_is_refused_with_its_value():
    with pytest.raises(ValueError, match="slots must be at least 1, got 0"):
        WorkerState(slots=0, offered=pb.Resources())


def test_an_unknown_event_is_refused_by_name():
    with pytest.raises(TypeError, match="cannot handle str"):
        WorkerState(slots=1, offered=pb.Resources()).handle("tick")
