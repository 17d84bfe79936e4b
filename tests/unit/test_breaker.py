"""Circuit breaker transitions, driven by hand with explicit times (no clock, no I/O)."""

from __future__ import annotations

import pytest

from xpipe.coordinator._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreakers, CircuitSnapshot


def opened(threshold=3, window_s=10.0, open_s=5.0, name="p/t", at=0.0) -> CircuitBreakers:
    b = CircuitBreakers(threshold=threshold, window_s=window_s, open_s=open_s)
    for i in range(threshold):
        b.record_failure(name, at + i * 0.1)
    assert b.state(name, at + threshold * 0.1) == OPEN
    return b


def test_an_unknown_circuit_is_closed_and_allows():
    b = CircuitBreakers()
    assert b.allow("p/t", 0.0) and b.state("p/t", 0.0) == CLOSED
    assert b.snapshot() == []


def test_failures_below_the_threshold_keep_it_closed():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    b.record_failure("p/t", 0.0)
    b.record_failure("p/t", 1.0)
    assert b.allow("p/t", 1.5) and b.state("p/t", 1.5) == CLOSED
    assert b.snapshot() == [CircuitSnapshot("p/t", CLOSED, 2, 0.0)]


def test_threshold_failures_within_the_window_open_it_and_it_fails_fast():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    for t in (0.0, 4.0, 9.0):
        b.record_failure("p/t", t)
    assert b.state("p/t", 9.0) == OPEN
    assert not b.allow("p/t", 9.0) and not b.allow("p/t", 13.9)
    assert b.snapshot() == [("p/t", OPEN, 3, 9.0)]  # a plain tuple too


def test_failures_spread_wider_than_the_window_do_not_open_it():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    for t in (0.0, 6.0, 12.0, 18.0):  # never three within 10 s
        b.record_failure("p/t", t)
    assert b.state("p/t", 18.0) == CLOSED and b.allow("p/t", 18.0)
    assert b.snapshot(18.0)[0].failures == 2


def test_after_open_s_exactly_one_probe_goes_through():
    b = opened()
    assert b.state("p/t", 5.3) == HALF_OPEN  # what allow() would find
    assert b.allow("p/t", 5.3)  # the probe
    assert not b.allow("p/t", 5.4) and not b.allow("p/t", 9.0)  # one at a time
    assert b.snapshot()[0].state == HALF_OPEN


def test_a_successful_probe_closes_it_and_forgets_old_failures():
    b = opened()
    assert b.allow("p/t", 6.0)
    b.record_success("p/t", 6.5)
    assert b.state("p/t", 6.5) == CLOSED and b.allow("p/t", 6.6) and b.allow("p/t", 6.7)
    b.record_failure("p/t", 7.0)  # one new failure does not reopen it
    assert b.state("p/t", 7.0) == CLOSED
    (snap,) = b.snapshot()
    assert (snap.name, snap.state, snap.failures) == ("p/t", CLOSED, 1)


def test_a_failed_probe_reopens_it_for_another_open_s():
    b = opened()
    assert b.allow("p/t", 6.0)
    b.record_failure("p/t", 6.5)
    assert b.state("p/t", 6.5) == OPEN and b.snapshot()[0].opened_at == 6.5
    assert not b.allow("p/t", 11.4)
    assert b.allow("p/t", 11.5)  # the next probe


def test_a_probe_that_never_reports_is_given_up_after_open_s():
    b = opened()
    assert b.allow("p/t", 6.0)  # probe sent; its worker dies and no outcome ever comes
    assert not b.allow("p/t", 10.9)
    assert b.allow("p/t", 11.0)  # a second probe
    assert not b.allow("p/t", 11.1)


def test_a_late_failure_while_open_changes_nothing_and_success_while_open_does_not_close():
    b = opened()
    b.record_failure("p/t", 1.0)
    b.record_success("p/t", 1.0)
    assert b.state("p/t", 1.0) == OPEN and b.snapshot()[0] == ("p/t", OPEN, 3, 0.2)


def test_circuits_are_independent_and_a_shared_name_counts_every_task():
    b = CircuitBreakers(threshold=2, window_s=10.0, open_s=5.0)
    b.record_failure("payments-api", 0.0)  # from task a
    b.record_failure("p/other", 0.0)
    b.record_failure("payments-api", 1.0)  # from task b of another run
    assert b.state("payments-api", 1.0) == OPEN and b.state("p/other", 1.0) == CLOSED
    assert [s.name for s in b.snapshot()] == ["p/other", "payments-api"]


def test_successes_forget_a_circuit_with_no_failures_left():
    b = CircuitBreakers(threshold=3, window_s=10.0, open_s=5.0)
    b.record_failure("p/t", 0.0)
    b.record_success("p/t", 20.0)  # the failure fell out of the window
    assert len(b) == 0 and b.snapshot() == []


def test_configure_gives_one_circuit_its_own_settings():
    b = CircuitBreakers(threshold=5, window_s=60.0, open_s=30.0)
    b.configure("fragile", threshold=1, window_s=1.0, open_s=0.5)
    b.record_failure("fragile", 0.0)
    b.record_failure("sturdy", 0.0)
    assert b.state("fragile", 0.0) == OPEN and b.state("sturdy", 0.0) == CLOSED
    assert b.allow("fragile", 0.5)


def test_snapshot_with_now_shows_an_expired_open_circuit_as_half_open():
    b = opened()
    assert b.snapshot(100.0)[0].state == HALF_OPEN
    assert b.snapshot()[0].state == OPEN  # nothing was let out by looking


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": 2.5}, "threshold"),
        ({"window_s": 0}, "window_s"),
        ({"window_s": float("inf")}, "window_s"),
        ({"open_s": -1}, "open_s"),
        ({"open_s": "30s"}, "open_s"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CircuitBreakers(**kwargs)
    settings = {"threshold": 5, "window_s": 60.0, "open_s": 30.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        CircuitBreakers().configure("x", **settings)
