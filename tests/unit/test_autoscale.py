"""The autoscaler's rule over time series: bursts, ramps, flapping, backlogs, cooldowns, bounds."""

from __future__ import annotations

import pytest

from xpipe._scaling import AutoscaleSettings, scaling_from_options
from xpipe.coordinator._autoscale import Autoscaler, Observation, WorkerLoad, tighten

S = AutoscaleSettings(min_workers=1, max_workers=5, scale_up_threshold=0.8, scale_down_threshold=0.3,
                      scale_up_cooldown_s=30, scale_down_cooldown_s=60, interval_s=10)  # fmt: skip


def cluster(*busy: int, slots: int = 2, cpu: float | None = None, backlog: int = 0, draining=()) -> Observation:
    return Observation(
        tuple(WorkerLoad(f"w{i}", slots, b, cpu, None, f"w{i}" in draining) for i, b in enumerate(busy)), backlog
    )


def run(scaler: Autoscaler, series):
    """(time, observation) pairs -> [(time, desired, action, drained ids)]."""
    return [(t, d.desired, d.action, d.drain) for t, obs in series for d in [scaler.decide(t, obs)]]


def test_a_burst_scales_up_at_once_then_waits_out_the_cooldown():
    a = Autoscaler(S)
    out = run(a, [(0, cluster(2, 2)), (10, cluster(2, 2, backlog=20)), (20, cluster(2, 2, backlog=20)),
                  (40, cluster(2, 2, 2, 2, 2, backlog=20))])  # fmt: skip
    assert out[0][1:3] == (3, "up")  # full slots: ceil(2 * 1.0 / 0.8) = 3
    assert out[1][1:3] == (3, "hold")  # within 30 s of the scale-up: the pending worker is not asked for twice
    assert out[2][1:3] == (3, "hold")
    assert out[3][1:3] == (5, "hold")  # at max: no more


def test_a_backlog_counts_as_load_even_with_idle_cpu():
    a = Autoscaler(S)
    # Slots half busy, CPU idle (tasks that sleep), yet 6 tasks wait: add workers for them.
    d = a.decide(0, cluster(1, 1, cpu=0.05, backlog=6))
    assert (d.action, d.desired) == ("up", 5)
    d = Autoscaler(S).decide(0, cluster(1, 1, cpu=0.05, backlog=1))
    assert (d.action, d.desired) == ("up", 3)


def test_cpu_from_heartbeats_scales_up_when_slots_are_not_full():
    d = Autoscaler(S).decide(0, cluster(0, 1, cpu=0.95))
    assert d.action == "up" and d.desired == 3  # ceil(2 * 0.95 / 0.8)


def test_a_slow_ramp_adds_one_worker_per_cooldown():
    a = Autoscaler(S)
    series = [(0, cluster(1, 1)), (30, cluster(2, 1)), (60, cluster(2, 2)), (61, cluster(2, 2, 1)),
              (95, cluster(2, 2, 2)), (130, cluster(2, 2, 2, 2))]  # fmt: skip
    out = run(a, series)
    assert [o[2] for o in out] == ["hold", "hold", "up", "hold", "up", "up"]
    assert [o[1] for o in out] == [2, 2, 3, 3, 4, 5]


def test_flapping_around_a_threshold_does_not_flap_the_cluster():
    a = Autoscaler(S)
    # 6 or 7 of the busy slots, alternating every 10 s for 10 minutes: 4 workers are at
    # 75% / 88%, around the up threshold; once there are 5 they are at 60% / 70%.
    def at(t: int) -> Observation:
        n = 4 if t < 40 else 5
        busy = 7 if (t // 10) % 2 else 6
        return cluster(*[min(2, busy - 2 * i) if busy > 2 * i else 0 for i in range(n)])

    out = run(a, [(t, at(t)) for t in range(0, 600, 10)])
    assert [(o[0], o[1]) for o in out if o[2] != "hold"] == [(10, 5)]  # one step up, then steady
    # Around the down threshold (25% / 35% of 5 workers' slots): at most one step down per cooldown.
    a = Autoscaler(S)
    out = run(a, [(t, cluster(1, 1, 1 if (t // 10) % 2 else 0, 0, 0)) for t in range(0, 600, 10)])
    downs = [o for o in out if o[2] == "down"]
    assert downs and all(b[0] - a_[0] >= 60 for a_, b in zip(downs, downs[1:]))
    assert not [o for o in out if o[2] == "up"]


def test_scale_down_drains_idle_workers_first_never_below_min():
    a = Autoscaler(S)
    d = a.decide(1000, cluster(0, 1, 0, 0, cpu=0.01))
    assert d.action == "down" and d.desired == 1
    assert set(d.drain) == {"w0", "w2", "w3"}  # the busy one stays
    a = Autoscaler(S)
    d = a.decide(1000, cluster(0, 0, 0, 1, cpu=0.01))
    assert d.drain == ("w0", "w1", "w2")


def test_scale_down_waits_for_its_cooldown_after_any_scaling():
    a = Autoscaler(S)
    assert a.decide(0, cluster(2, 2, 2)).action == "up"
    assert a.decide(40, cluster(0, 0, 0, 0)).action == "hold"  # 40 s < 60 s since the scale-up
    d = a.decide(61, cluster(0, 0, 0, 0))
    assert d.action == "down" and len(d.drain) == 3
    # Draining workers are not counted nor chosen again; the next step waits another minute.
    assert a.decide(80, cluster(0, 0, 0, 0, draining={"w0", "w1", "w2"})).action == "hold"


def test_draining_workers_are_not_counted_as_capacity():
    d = Autoscaler(S).decide(0, cluster(2, 0, 0, draining={"w1", "w2"}, backlog=2))
    assert d.action == "up"


def test_bounds_apply_whatever_the_cooldowns():
    a = Autoscaler(S.with_bounds(3, 5))
    assert (a.decide(0, cluster()).desired, a.decide(1, cluster(0)).desired) == (3, 3)
    a = Autoscaler(S)
    a.decide(0, cluster(2, 2, 2))  # scaled up: both cooldowns run
    d = a.decide(1, cluster(0, 0, 0, 0, 0, 0, 0))  # 7 workers > max 5
    assert d.action == "down" and d.desired == 5 and len(d.drain) == 2
    assert Autoscaler(S.with_bounds(0, 0)).decide(0, cluster(backlog=100)).desired == 0


def test_no_workers_and_a_backlog_asks_for_one():
    d = Autoscaler(S.with_bounds(0, 5)).decide(0, cluster(backlog=3))
    assert d.action == "up" and d.desired == 3  # no slots known: one per waiting task, up to max


def test_cpu_can_be_left_out_for_workers_that_share_a_host():
    busy_host = cluster(0, 0, cpu=1.0)  # another program keeps the host busy; the workers are idle
    assert Autoscaler(S).decide(0, busy_host).action == "up"
    from dataclasses import replace

    d = Autoscaler(replace(S, use_cpu=False)).decide(1000, cluster(0, 0, cpu=1.0))
    assert d.action == "down" and d.desired == 1


def test_the_resource_manager_sets_the_count_within_bounds():
    a = Autoscaler(S)
    assert a.request(50) == 5
    d = a.decide(0, cluster(0, 0))
    assert (d.action, d.desired) == ("up", 5)
    a.request(1)
    d = a.decide(1, cluster(0, 0, 0, 0, 0))
    assert d.action == "down" and len(d.drain) == 4


def test_pipeline_bounds_tighten_the_cluster_settings():
    p1 = S.with_bounds(2, 50)
    p2 = S.with_bounds(1, 4)
    eff = tighten(S.with_bounds(1, 8), [p1, p2], ceiling=8)
    assert (eff.min_workers, eff.max_workers) == (2, 4)  # highest min, tightest max
    assert tighten(S, [], ceiling=8) is S
    eager = AutoscaleSettings(1, 4, 0.6, 0.2, 5.0, 900.0)
    eff = tighten(S, [eager, S], ceiling=8)
    assert (eff.scale_up_threshold, eff.scale_down_threshold) == (0.6, 0.2)  # the thresholds that keep capacity
    assert (eff.scale_up_cooldown_s, eff.scale_down_cooldown_s, eff.interval_s) == (5.0, 900.0, S.interval_s)
    assert tighten(S, [S.with_bounds(9, 50)], ceiling=8).max_workers == 8  # never above the operator's cap
    assert tighten(S, [S.with_bounds(9, 50)], ceiling=8).min_workers == 8


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_workers": 5, "max_workers": 2}, "min_workers=5 is above max_workers=2"),
    ({"min_workers": -1}, "min_workers=-1: must be between 0"),
    ({"max_workers": 2.5}, "max_workers=2.5: must be a whole number"),
    ({"scale_up_threshold": 1.5}, "scale_up_threshold=1.5: must be a fraction"),
    ({"scale_down_threshold": 0.9}, "scale_down_threshold=0.9 must be below scale_up_threshold=0.8"),
    ({"scale_up_cooldown": "5 fortnights"}, "scale_up_cooldown='5 fortnights'"),
    ({"scale_down_cooldown": -3}, "scale_down_cooldown=-3"),
    ({"interval": 0}, "interval_s=0"),
])  # fmt: skip
def test_bad_settings_name_the_field(kwargs, message):
    base = dict(min_workers=2, max_workers=50, scale_up_threshold=0.8, scale_down_threshold=0.3,
                scale_up_cooldown="5min", scale_down_cooldown="10min")  # fmt: skip
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        scaling_from_options(**{**base, **kwargs})


def test_the_seed_spelling_reads_durations():
    s = scaling_from_options(min_workers=2, max_workers=50, scale_up_threshold=0.8, scale_down_threshold=0.3,
                             scale_up_cooldown="5min", scale_down_cooldown="10min")  # fmt: skip
    assert (s.scale_up_cooldown_s, s.scale_down_cooldown_s) == (300.0, 600.0)


@pytest.mark.parametrize(("fields", "message"), [
    ({"min_workers": 5, "max_workers": 2}, "autoscale.min_workers=5 is above max_workers=2"),
    ({"min_workers": 1, "max_workers": 2, "scale_up_threshold": 0.8, "scale_down_threshold": float("nan")},
     "autoscale.scale_down_threshold=nan"),
    ({"min_workers": 1, "max_workers": 2, "scale_up_threshold": 0.8, "scale_down_threshold": 0.3,
      "scale_up_cooldown_s": float("inf")}, "autoscale.scale_up_cooldown_s=inf"),
])  # fmt: skip
def test_the_coordinator_checks_a_submitted_pipelines_settings(fields, message):
    """A client in another language skips the SDK's checks: the coordinator refuses, naming the field."""
    from xpipe._proto import common_pb2 as pb
    from xpipe.coordinator._validate import validate_spec
    from xpipe.errors import PipelineValidationError

    spec = pb.PipelineSpec(name="p", tasks=[pb.TaskSpec(name="t", python=pb.PythonCall(import_path="m:f"))])
    spec.autoscale.CopyFrom(pb.AutoscaleSettings(**fields))
    with pytest.raises(PipelineValidationError, match=message.replace(".", r"\.", 1)):
        validate_spec(spec)
    spec.autoscale.CopyFrom(pb.AutoscaleSettings(min_workers=1, max_workers=2, scale_up_threshold=0.8,
                                                 scale_down_threshold=0.3))  # fmt: skip
    assert validate_spec(spec) == ["t"]
