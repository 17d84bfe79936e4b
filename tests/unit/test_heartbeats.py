"""The heartbeat pacing rule (coordinator/_heartbeats.py): a fleet growing and shrinking."""

from __future__ import annotations

import pytest
from xpipe.coordinator._events import HeartbeatReceived, HeartbeatPaceChanged, Tick, WorkerConnected
from xpipe.coordinator._heartbeats import (
    RECOMPUTE_EVERY_S,
    HeartbeatPacer,
    HeartbeatSettings,
    effective_interval_s,
    scaled_timeout_s,
)
from xpipe.coordinator._state import SchedulerState


def test_effective_interval_is_the_configured_one_until_the_cap_binds():
    assert effective_interval_s(1.0, 2, 250) == 1.0
    assert effective_interval_s(1.0, 250, 250) == 1.0
    assert effective_interval_s(1.0, 1000, 250) == 4.0
    assert effective_interval_s(5.0, 10_000, 250) == 40.0
    assert effective_interval_s(1.0, 10_000, 0) == 1.0  # 0: no cap


def test_timeout_scales_with_the_interval():
    assert scaled_timeout_s(5.0, 1.0, 4.0) == 20.0  # still five missed heartbeats
    assert scaled_timeout_s(10.0, 1.0, 1.0) == 10.0


def test_a_growing_fleet_is_told_a_longer_interval_and_the_timeout_rises_at_once():
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    assert pacer.update(0.0, 100) is None  # below the cap: nothing to tell
    assert pacer.announced == HeartbeatSettings(1.0, 5.0)
    assert pacer.update(1.0, 1000) == HeartbeatSettings(4.0, 20.0)
    assert pacer.timeout_in_effect_s == 20.0  # before any worker slows down


def test_small_moves_are_not_announced_and_recomputing_waits_a_second():
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    assert pacer.update(0.0, 1000) == HeartbeatSettings(4.0, 20.0)
    assert pacer.update(0.5, 5000) is None  # within a second of the last look
    assert pacer.update(1.0, 1150) is None  # 4.6 s: a 15% change
    assert pacer.announced.interval_s == 4.0
    assert pacer.update(2.0, 1200) == HeartbeatSettings(4.8, 24.0)  # 20%


def test_a_shrinking_fleet_keeps_the_longer_timeout_for_one_old_timeout():
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    pacer.update(0.0, 1000)
    assert pacer.timeout_in_effect_s == 20.0
    assert pacer.update(10.0, 500) == HeartbeatSettings(2.0, 10.0)
    # A worker may have beaten at 9.9 at the 4 s pace, before it heard of the 2 s one.
    assert pacer.timeout_in_effect_s == 20.0
    pacer.update(29.9, 500)
    assert pacer.timeout_in_effect_s == 20.0
    pacer.update(30.0, 500)
    assert pacer.timeout_in_effect_s == 10.0


def test_back_below_the_cap_the_configured_interval_returns_exactly():
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    pacer.update(0.0, 290)  # 1.16 s: a 16% change, not announced
    assert pacer.announced.interval_s == 1.0
    pacer.update(1.0, 330)
    assert pacer.announced == HeartbeatSettings(1.32, pytest.approx(6.6))
    pacer.update(2.0, 300)  # 1.2 s: -9%, not announced
    assert pacer.announced.interval_s == 1.32
    # Back to the configured interval is announced even below 20% (1.2 s to 1 s: -17%),
    # so a fleet that shrank below the cap gets its exact detection time back.
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    pacer.update(0.0, 275)  # 1.1 s: not announced (10%)
    assert pacer.update(1.0, 100) is None  # nothing changed for the workers
    assert pacer.update(2.0, 300) == HeartbeatSettings(1.2, pytest.approx(6.0))  # 20%
    assert pacer.update(3.0, 330) is None  # 1.32 s: +10%
    assert pacer.update(4.0, 290) is None  # 1.16 s: -3%
    assert pacer.update(5.0, 249) == HeartbeatSettings(1.0, 5.0)  # -17%, but the floor


def test_growing_again_while_a_lowering_is_pending_raises_the_timeout_at_once():
    pacer = HeartbeatPacer(1.0, 5.0, 250)
    pacer.update(0.0, 1000)  # 4 s / 20 s
    pacer.update(1.0, 500)  # 2 s / 10 s, 20 s kept until 21
    assert pacer.update(2.0, 2000) == HeartbeatSettings(8.0, 40.0)
    assert pacer.timeout_in_effect_s == 40.0
    pacer.update(25.0, 2000)  # the old pending lowering must not apply
    assert pacer.timeout_in_effect_s == 40.0


def test_no_cap_never_announces():
    pacer = HeartbeatPacer(1.0, 5.0, 0)
    for i in range(5):
        assert pacer.update(i * RECOMPUTE_EVERY_S, 10_000 * (i + 1)) is None
    assert pacer.timeout_in_effect_s == 5.0


def test_the_state_machine_loses_workers_by_the_timeout_it_was_given():
    s = SchedulerState(heartbeat_timeout_s=5.0)
    s.handle(WorkerConnected(0.0, "w1", "w1", "h", 1))
    s.handle(HeartbeatPaceChanged(1.0, 4.0, 20.0))
    s.handle(HeartbeatReceived(1.0, "w1"))
    s.handle(Tick(20.9))
    assert s.workers["w1"].state != "lost"
    s.handle(Tick(21.1))
    assert s.workers["w1"].state == "lost"
