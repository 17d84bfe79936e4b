"""The one backoff policy every reconnect loop uses: bounds, cap, jitter, reset, deadlines."""

from __future__ import annotations

import math
import random

import pytest

from xpipe._backoff import Backoff


def test_without_jitter_delays_double_up_to_the_cap():
    backoff = Backoff(initial_s=0.05, max_s=1.0, multiplier=2, jitter=0)
    assert [backoff.next_delay() for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.attempts == 8


def test_jitter_only_shortens_each_delay_within_its_fraction():
    backoff = Backoff(initial_s=0.1, max_s=2.0, multiplier=2, jitter=0.5, rng=random.Random(7))
    bases = [0.1, 0.2, 0.4, 0.8, 1.6] + [2.0] * 195
    delays = [backoff.next_delay() for _ in bases]
    for base, delay in zip(bases, delays):
        assert base * 0.5 <= delay <= base
    # The cap holds with jitter too, and jitter actually spreads the capped delays.
    capped = delays[5:]
    assert max(capped) <= 2.0
    assert max(capped) - min(capped) > 0.5


def test_a_seeded_rng_gives_an_exact_schedule():
    rng = random.Random(42)
    expected = [base * (1 - 0.25 * rng.random()) for base in (0.05, 0.1, 0.2)]
    backoff = Backoff(initial_s=0.05, max_s=2.0, jitter=0.25, rng=random.Random(42))
    assert [backoff.next_delay() for _ in range(3)] == expected


def test_reset_starts_again_from_the_initial_delay():
    backoff = Backoff(initial_s=0.05, max_s=2.0, jitter=0)
    for _ in range(10):
        backoff.next_delay()
    assert backoff.next_delay() == 2.0
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.05


def test_the_delay_never_passes_the_deadline():
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0)
    assert backoff.next_delay(remaining_s=0.3) == 0.3
    assert backoff.next_delay(remaining_s=5.0) == 2.0  # the schedule advanced despite the clip
    assert backoff.next_delay(remaining_s=-1.0) == 0.0  # a deadline already passed: no sleep


def test_a_long_outage_never_overflows():
    backoff = Backoff(initial_s=1.0, max_s=3600.0, multiplier=1000, jitter=0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 3600.0 and math.isfinite(delay)


def test_multiplier_one_keeps_a_constant_delay():
    backoff = Backoff(initial_s=0.2, max_s=0.2, multiplier=1, jitter=0)
    assert {backoff.next_delay() for _ in range(5)} == {0.2}


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"initial_s": 0}, "initial_s must be > 0"),
        ({"initial_s": float("nan")}, "initial_s must be a finite number"),
        ({"max_s": float("inf")}, "max_s must be a finite number"),
        ({"initial_s": 1.0, "max_s": 0.5}, "max_s must be >= initial_s"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
        ({"jitter": True}, "jitter must be a finite number"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        Backoff(**kwargs)
