"""HeartbeatGate: a heartbeat due just after outcomes went out is skipped, never two in a row."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xpipe.worker._state import HeartbeatGate

INTERVAL_S = 1.0


def test_an_idle_worker_beats_every_interval():
    gate = HeartbeatGate()
    assert all(gate.due(float(t), INTERVAL_S) for t in range(10))
    assert (gate.sent, gate.skipped) == (10, 0)


def test_outcomes_within_the_interval_skip_one_beat_then_the_next_is_sent_anyway():
    gate = HeartbeatGate()
    assert gate.due(0.0, INTERVAL_S)
    gate.results_sent(0.5)
    assert not gate.due(1.0, INTERVAL_S)  # the outcomes 0.5 s ago said it is alive
    gate.results_sent(1.7)
    assert gate.due(2.0, INTERVAL_S)  # never two skipped in a row: it lists what it holds
    gate.results_sent(2.5)
    assert not gate.due(3.0, INTERVAL_S)
    assert (gate.sent, gate.skipped) == (2, 2)


def test_outcomes_older_than_the_interval_do_not_skip():
    gate = HeartbeatGate()
    gate.results_sent(0.0)
    assert gate.due(1.0, INTERVAL_S)  # exactly one interval ago: not within it
    assert gate.due(2.5, INTERVAL_S)


@given(
    st.lists(st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=0.99)), min_size=1, max_size=200),
    st.sampled_from([0.2, 1.0, 4.0]),
)
def test_the_coordinator_never_goes_two_intervals_without_a_sign_of_life(ticks, interval_s):
    """Beats fall every interval; outcomes at any moments between. Between two signs of life
    (a heartbeat sent, or outcomes sent) there are never more than two intervals, so a
    timeout of several intervals is never reached by skipping."""
    gate = HeartbeatGate()
    last_sign = 0.0
    skipped_before = False
    assert gate.due(0.0, interval_s)
    for i, (outcomes, offset) in enumerate(ticks, start=1):
        if outcomes:  # outcomes sent somewhere in the interval before this beat
            at = (i - 1 + offset) * interval_s
            gate.results_sent(at)
            assert at - last_sign <= 2 * interval_s
            last_sign = at
        now = i * interval_s
        if gate.due(now, interval_s):
            assert now - last_sign <= 2 * interval_s
            last_sign = now
            skipped_before = False
        else:
            assert now - last_sign < interval_s  # skipped only just after outcomes
            assert not skipped_before, f"two beats skipped in a row at {now}"
            skipped_before = True
    assert gate.sent + gate.skipped == len(ticks) + 1
