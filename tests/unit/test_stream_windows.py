"""Windows against hand-computed answers: alignment, watermark, lateness, sliding overlaps, checkpoints."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams import (
    FiredWindow,
    RecordError,
    Windower,
    WindowSpec,
    event_time_s,
    window_spec,
)


def feed(windower, times, *, field="t"):
    """Add one record per time; the fired windows as (start, end, [times]) and the late records."""
    fired, late = [], []
    for t in times:
        out, missed = windower.add({field: t}, now_s=0.0)
        fired += [(w.start, w.end, [r[field] for r in w.records]) for w in out]
        if missed is not None:
            late.append((missed.record[field], missed.missed))
    return fired, late


def test_tumbling_event_time_windows_with_lateness_and_a_late_record():
    w = Windower(window_spec("10s", time_field="t", allowed_lateness="5s"))
    fired, late = feed(w, [1, 3, 12, 9, 16, 2, 21, 14, 27, 40])
    # By hand: 16 moves the watermark to 16 >= 10 + 5, so [0, 10) fires with 1, 3, 9 (arrival
    # order); 2 then is late for it. 14 is still on time for [10, 20) (20 + 5 > 21). 27 fires
    # [10, 20); 40 fires [20, 30). [40, 50) stays open.
    assert fired == [(0.0, 10.0, [1, 3, 9]), (10.0, 20.0, [12, 16, 14]), (20.0, 30.0, [21, 27])]
    assert late == [(2, ((0.0, 10.0),))]
    assert (w.late_count, w.fired_count, w.watermark_s, w.open_windows) == (1, 3, 40.0, [(40.0, 50.0)])


def test_windows_align_to_multiples_of_their_size_since_the_epoch():
    spec = window_spec("5min")
    assert spec == WindowSpec(300.0, 300.0, None, 0.0) and spec.tumbling
    assert spec.windows_of(1_700_000_123.5) == [(1_700_000_100.0, 1_700_000_400.0)]
    assert spec.windows_of(1_700_000_100.0) == [(1_700_000_100.0, 1_700_000_400.0)]  # start is inside
    assert spec.windows_of(1_700_000_099.999) == [(1_699_999_800.0, 1_700_000_100.0)]  # end is not


def test_a_window_fires_once_when_the_watermark_reaches_its_end_without_lateness():
    w = Windower(window_spec(10, time_field="t"))
    fired, late = feed(w, [0, 9.5, 10, 10, 5])
    assert fired == [(0.0, 10.0, [0, 9.5])]  # the record at 10 belongs to [10, 20) and closes [0, 10)
    assert late == [(5, ((0.0, 10.0),))]  # never fires twice: 5 goes to the late output instead
    assert w.fired_count == 1


def test_sliding_windows_overlap_and_a_record_can_be_late_for_some_of_them():
    spec = window_spec("10s", slide="5s", time_field="t")
    assert spec.windows_of(7) == [(0.0, 10.0), (5.0, 15.0)] and not spec.tumbling
    w = Windower(spec)
    fired, late = feed(w, [3, 7, 12, 16, 4, 13, 21])
    # By hand: 3 -> [-5,5) [0,10); 7 -> [0,10) [5,15) and fires [-5,5); 12 fires [0,10);
    # 16 fires [5,15); 4 missed both its windows; 13 missed [5,15) but joins [10,20);
    # 21 fires [10,20).
    assert fired == [(-5.0, 5.0, [3]), (0.0, 10.0, [3, 7]), (5.0, 15.0, [7, 12]), (10.0, 20.0, [12, 16, 13])]
    assert late == [(4, ((-5.0, 5.0), (0.0, 10.0))), (13, ((5.0, 15.0),))]
    assert w.open_windows == [(15.0, 25.0), (20.0, 30.0)]


def test_several_windows_firing_at_once_come_oldest_first():
    w = Windower(window_spec(1, time_field="t", allowed_lateness=5))
    fired, late = feed(w, [2.5, 0.5, 1.5, 2.7])
    assert fired == [] and late == []  # all within the lateness: nothing due yet
    fired, _ = feed(w, [10])
    assert fired == [(0.0, 1.0, [0.5]), (1.0, 2.0, [1.5]), (2.0, 3.0, [2.5, 2.7])]


def test_processing_time_windows_fire_on_advance():
    w = Windower(window_spec("1min"))
    assert w.add({"v": 1}, now_s=100.0) == ([], None)
    assert w.add({"v": 2}, now_s=110.0) == ([], None)
    assert w.advance(119.9) == []
    assert w.advance(120.0) == [FiredWindow(60.0, 120.0, [{"v": 1}, {"v": 2}])]
    assert w.advance(500.0) == []  # nothing open: nothing fires, nothing is invented
    event_time = Windower(window_spec("1min", time_field="t"))
    event_time.add({"t": 1}, now_s=0)
    assert event_time.advance(10_000) == []  # event time moves only with the records


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(1_700_000_000, 1_700_000_000.0), (12.25, 12.25), ("2026-11-29T10:00:00Z", 1_795_946_400.0),
     ("2026-11-29T11:00:00+01:00", 1_795_946_400.0), ("2026-11-29T10:00:00", 1_795_946_400.0),
     ("2026-11-29T10:00:00.5+00:00", 1_795_946_400.5)],
)  # fmt: skip
def test_event_time_reads_epoch_seconds_and_iso_8601(value, seconds):
    assert event_time_s({"ts": value}, "ts") == seconds


@pytest.mark.parametrize(
    ("record", "problem"),
    [({"x": 1}, "has no time field 'ts'"), ({"ts": "yesterday"}, "'yesterday' is neither"), ({"ts": True}, "True is neither"),
     ({"ts": float("nan")}, "nan is neither"), ({"ts": None}, "None is neither"), (b"raw", "has no time field")],
)  # fmt: skip
def test_a_record_without_a_usable_time_is_an_error_and_changes_nothing(record, problem):
    w = Windower(window_spec("10s", time_field="ts"))
    w.add({"ts": 5}, now_s=0)
    before = w.snapshot()
    with pytest.raises(RecordError) as info:
        w.add(record, now_s=0, source="stage agg")
    assert "record from stage agg" in str(info.value) and problem in str(info.value)
    assert info.value.payload is record  # what the runtime sends to <stage>.dlq
    assert w.snapshot() == before


def test_a_restored_windower_resumes_as_if_never_stopped():
    spec = window_spec("10s", slide="5s", time_field="t", allowed_lateness="2s")
    times = [3, 7, 12, 4, 16, 13, 21, 2, 30, 27, 44]
    straight = Windower(spec)
    expected = feed(straight, times)
    first = Windower(spec)
    head = feed(first, times[:5])
    checkpoint = json.loads(json.dumps(first.snapshot()))  # what the runtime stores
    resumed = Windower.restore(spec, checkpoint)
    tail = feed(resumed, times[5:])
    assert (head[0] + tail[0], head[1] + tail[1]) == expected
    assert (resumed.late_count, resumed.fired_count, resumed.watermark_s) == (
        straight.late_count, straight.fired_count, straight.watermark_s)  # fmt: skip
    assert Windower.restore(spec, Windower(spec).snapshot()).watermark_s == float("-inf")


def test_a_checkpoint_from_other_window_options_or_malformed_is_refused():
    w = Windower(window_spec("10s", time_field="t"))
    w.add({"t": 1}, now_s=0)
    with pytest.raises(
        DataStreamError,
        match="window checkpoint was taken with .*size_s=10.0.* the stage now has .*size_s=20.0",
    ):
        Windower.restore(window_spec("20s", time_field="t"), w.snapshot())
    with pytest.raises(DataStreamError, match="window checkpoint is malformed: KeyError"):
        Windower.restore(w.spec, {"spec": [10.0, 10.0, "t", 0.0]})


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"window_size": "5 parsecs"}, "window_size='5 parsecs': cannot read duration"),
     ({"window_size": "0s"}, "window_size='0s': a window must last more than 0 s"),
     ({"window_size": -5}, "window_size=-5: a duration must be finite and >= 0"),
     ({"window_size": "1min", "slide": "2min"}, "slide='2min': must be more than 0 s and at most window_size='1min'"),
     ({"window_size": "1min", "slide": "0s"}, "slide='0s': must be more than 0 s"),
     ({"window_size": "1h", "slide": "1s"}, "3600 windows per record, more than the limit 1000"),
     ({"window_size": "1min", "allowed_lateness": "soon"}, "allowed_lateness='soon': cannot read duration"),
     ({"window_size": "1min", "time_field": ""}, "time_field='': must be a non-empty field name"),
     ({"window_size": None, "slide": "5s"}, "slide='5s' needs window_size="),
     ({"window_size": None, "allowed_lateness": "5s"}, "allowed_lateness='5s' needs window_size="),
     ({"window_size": None, "time_field": "ts"}, "time_field='ts' needs window_size=")],
)  # fmt: skip
def test_bad_window_options_name_the_argument_and_value(kwargs, problem):
    with pytest.raises(DataStreamError) as info:
        window_spec(**kwargs)
    assert problem in str(info.value)


def test_window_options_take_seconds_timedeltas_and_strings():
    assert window_spec(None) is None and window_spec(None, allowed_lateness=0) is None
    assert window_spec(timedelta(minutes=1), slide=30, allowed_lateness="1.5s") == WindowSpec(
        60.0, 30.0, None, 1.5
    )


@pytest.mark.parametrize("size", [0.1, 0.3, 0.7, 60.0])
def test_every_time_falls_in_its_windows_despite_float_rounding(size):
    tumbling, sliding = window_spec(size), window_spec(size, slide=size / 2)
    for k in range(-50, 2000):
        for t in (k * size, k * size / 2, k * size + 1e-9):  # edges, where rounding bites
            ((start, end),) = tumbling.windows_of(t)
            assert start - 1e-9 <= t < end + 1e-9 and end - start == pytest.approx(
                size
            )  # read to the nanosecond
            windows = sliding.windows_of(t)
            assert len(windows) == 2 and all(a - 1e-9 <= t < b + 1e-9 for a, b in windows)
        assert tumbling.windows_of(k * size) == tumbling.windows_of(k * size + 1e-12)  # one side of the edge
