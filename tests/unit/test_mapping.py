"""Dynamic fan-out without processes: the splitters, the SDK's checks, the codec of parts,
and the state machine's split / sub-task / gather flow (events in, actions out)."""

from __future__ import annotations

import datetime as dt

import pytest

from xpipe import Pipeline, Task, _codec
from xpipe._limits import MAX_PARTITIONS
from xpipe._mapping import Partitions, by_date, by_key, by_size, round_robin, split_value
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._events import (
    Assign, CancelAttempts, RunRestored, RunSubmitted, TaskFailed, TaskRecord, TaskSucceeded, WorkerConnected,
)  # fmt: skip
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec
from xpipe.errors import PipelineValidationError



def ok(key, wid="w1", now=1.0, value=b"v"):
    return TaskSucceeded(now, wid, key, now, pb.Payload(codec=pb.CODEC_RAW, data=value))


def fail(key, wid="w1", now=1.0):
    return TaskFailed(now, wid, key, now, pb.TaskError(error_type="TASK_FAILURE", message="boom"))

ROWS = [
    {"date": "2024-05-02", "region": "eu", "v": 1},
    {"date": dt.date(2024, 5, 1), "region": "us", "v": 2},
    {"date": dt.datetime(2024, 5, 2, 13, 0), "region": "eu", "v": 3},
    {"date": "2024-06-30", "region": "us", "v": 4},
]


# ---- splitters ----------------------------------------------------------------------


def test_by_date_groups_rows_per_day_in_date_order():
    assert by_date(ROWS) == {"2024-05-01": [ROWS[1]], "2024-05-02": [ROWS[0], ROWS[2]], "2024-06-30": [ROWS[3]]}
    assert list(by_date(ROWS, period="month")) == ["2024-05", "2024-06"]
    assert list(by_date(ROWS, period="year")) == ["2024"]
    assert list(by_date(ROWS, period="week")) == ["2024-W18", "2024-W26"]


def test_by_date_reads_another_field_and_objects():
    class Row:
        def __init__(self, day):
            self.day = day

    rows = [Row("2024-01-02"), Row("2024-01-01")]
    assert {k: [r.day for r in v] for k, v in by_date(rows, field="day").items()} == {
        "2024-01-01": ["2024-01-01"], "2024-01-02": ["2024-01-02"],
    }  # fmt: skip


def test_by_date_names_a_bad_row():
    with pytest.raises(ValueError, match="row 1 .* has no field 'date'"):
        by_date([{"date": "2024-01-01"}, {"day": 1}])
    with pytest.raises(ValueError, match="row 0 field 'date' is not an ISO date"):
        by_date([{"date": "yesterday"}])
    with pytest.raises(ValueError, match="row 0 field 'date' is int"):
        by_date([{"date": 5}])


def test_by_key_round_robin_by_size():
    assert by_key(ROWS, field="region") == {"eu": [ROWS[0], ROWS[2]], "us": [ROWS[1], ROWS[3]]}
    assert round_robin(list(range(7)), partitions=3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert by_size(list(range(7)), size=3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(TypeError, match="'by_size' splits a list of rows, got dict"):
        by_size({"a": 1}, size=2)


def test_split_value_list_dict_and_errors():
    assert split_value([1, 2], task="t").values == [1, 2]
    parts = split_value({"b": 1, "a": 2}, task="t")
    assert (parts.keys, parts.values) == (["b", "a"], [1, 2])
    with pytest.raises(TypeError, match=r"task 't' fans out over the upstream result, which must be a list, tuple or "
                                        r"dict \(or set partitioning_strategy to split it\); got int"):
        split_value(5, task="t")
    with pytest.raises(TypeError, match="what partitioning_strategy '<lambda>' returned, which must be a list, tuple or dict; got str"):
        split_value(5, task="t", splitter=lambda v: "no")  # noqa: ARG005
    with pytest.raises(ValueError, match=f"has {MAX_PARTITIONS + 1} partitions; the limit is {MAX_PARTITIONS}"):
        split_value(range(MAX_PARTITIONS + 1), task="t", strategy="by_size", params={"size": 1})


def halves(value):
    return [value[: len(value) // 2], value[len(value) // 2 :]]


def test_a_callable_splitter():
    assert split_value([1, 2, 3, 4], task="t", splitter=halves).values == [[1, 2], [3, 4]]


def test_parts_round_trip_through_the_codec():
    payload = Partitions([1, "x", None], None).to_payload("r")
    assert payload.codec == pb.CODEC_MAP_PARTS
    assert _codec.decode(payload) == [1, "x", None]
    keyed = Partitions([1, 2], [dt.date(2024, 1, 1), "k"]).to_payload("r")
    assert _codec.decode(keyed) == {dt.date(2024, 1, 1): 1, "k": 2}
    bad = pb.Payload(codec=pb.CODEC_MAP_PARTS, data=b"\xff\xff")
    with pytest.raises(Exception, match="corrupt fan-out parts"):
        _codec.decode(bad)


# ---- the SDK's checks -----------------------------------------------------------------


def double(x):
    return 2 * x


def numbers():
    return [1, 2, 3]


def build(**kw):
    src = Task("src", numbers)
    mapped = Task("m", double, depends_on=[src], **kw)
    p = Pipeline("p")
    p.add_tasks([src, mapped])
    return p


def test_mapped_task_spec():
    spec = build(parallelism=4, partitioning_strategy=("by_size", {"size": 2})).to_proto().tasks[1]
    assert spec.map.parallelism == 4 and spec.map.strategy == "by_size"
    assert spec.map.splitter.import_path == "xpipe._mapping:split_upstream"
    assert not build().to_proto().tasks[1].HasField("map")
    assert build(expand=True).to_proto().tasks[1].map.parallelism == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"parallelism": 0}, "task 'm': parallelism must be an int from 1 to 100000, got 0"),
        ({"parallelism": -3}, "task 'm': parallelism must be an int from 1 to 100000, got -3"),
        ({"parallelism": 2.5}, "task 'm': parallelism must be an int from 1 to 100000, got 2.5"),
        ({"parallelism": True}, "task 'm': parallelism must be an int"),
        ({"partitioning_strategy": "by_month"}, "task 'm': partitioning_strategy unknown strategy 'by_month'; known: by_date, by_key"),
        ({"partitioning_strategy": "by_key"}, r"partitioning_strategy 'by_key' needs parameter\(s\) \['field'\]"),
        ({"partitioning_strategy": ("by_size", {"size": 0})}, "parameter 'size' must be an int from 1 to 100000, got 0"),
        ({"partitioning_strategy": ("by_date", {"period": "hour"})}, "'period' must be one of day, week, month, year"),
        ({"partitioning_strategy": ("by_date", {"col": "d"})}, r"unknown parameter\(s\) \['col'\]"),
        ({"expand": "yes"}, "task 'm': expand must be True or False"),
    ],
)
def test_bad_settings_name_the_task_and_field(kw, message):
    with pytest.raises(PipelineValidationError, match=message):
        build(**kw).to_proto()


def test_subclass_attributes_are_read_at_build_time():
    class Proc(Task):
        def __init__(self):
            super().__init__("proc", depends_on=["src"])
            self.parallelism = 0

        def proc(self, part):
            return part

    p = Pipeline("p")
    p.add_tasks([Task("src", numbers), Proc()])
    with pytest.raises(PipelineValidationError, match="task 'proc': parallelism must be an int"):
        p.to_proto()


def test_a_mapped_task_needs_an_upstream():
    p = Pipeline("p")
    p.add_task(Task("m", double, parallelism=2))
    with pytest.raises(PipelineValidationError, match="task 'm': depends_on is empty; a fanned-out task maps"):
        p.to_proto()


def test_task_map_puts_over_first():
    src, other = Task("src", numbers), Task("other", numbers)
    mapped = Task.map("m", double, over=src, depends_on=[other, src], parallelism=3)
    assert mapped.depends_on == ["src", "other"] and mapped.expand and mapped.parallelism == 3


# ---- the state machine -------------------------------------------------------------


def mapped_spec(parallelism=2, retries=0):
    spec = pb.PipelineSpec(name="p", retry_on_failure=True)
    spec.tasks.add(name="src").python.import_path = "m:src"
    m = spec.tasks.add(name="m", depends_on=["src"])
    m.python.import_path = "m:f"
    m.retry.max_retries = retries
    m.map.parallelism = parallelism
    m.map.splitter.import_path = "xpipe._mapping:split_upstream"
    spec.tasks.add(name="after", depends_on=["m"]).python.import_path = "m:g"
    return spec


def parts_payload(n, keys=None):
    return Partitions([f"part{i}" for i in range(n)], keys).to_payload("t")


def start(n=5, parallelism=2, retries=0, slots=8):
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", slots))
    spec = mapped_spec(parallelism, retries)
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    (a,) = [x for x in s.schedule(0.0) if isinstance(x, Assign)]
    out = s.handle(ok(a.attempt, value=b"src"))
    (split,) = [x for x in s.schedule(1.0) if isinstance(x, Assign)]
    assert split.task.python.import_path == "xpipe._mapping:split_upstream"
    assert [p.data for p in split.upstream] == [b"src"]
    result = pb.Payload(codec=pb.CODEC_RAW, data=b"x") if n is None else parts_payload(n)
    out = s.handle(TaskSucceeded(2.0, "w1", split.attempt, 2.0, result))
    return s, out


def test_split_makes_sub_tasks_released_up_to_parallelism():
    s, out = start(n=5, parallelism=2)
    run = s.runs["r1"]
    assert run.tasks["m"].state == pb.MAPPED
    assert [n for n, t in run.tasks.items() if t.state == pb.READY] == ["m[0]", "m[1]"]
    mapped_rec = [r for r in out if isinstance(r, TaskRecord) and r.name == "m"][-1]
    assert mapped_rec.state == pb.MAPPED and mapped_rec.result.codec == pb.CODEC_MAP_PARTS
    sent = [x for x in s.schedule(3.0) if isinstance(x, Assign)]
    assert [a.attempt[1] for a in sent] == ["m[0]", "m[1]"]
    assert _codec.decode(sent[0].upstream[0]) == "part0"
    assert sent[0].task.python.import_path == "m:f" and not sent[0].task.HasField("map")
    done = 0
    while sent:
        a = sent.pop(0)
        s.handle(ok(a.attempt, now=4.0, value=a.attempt[1].encode()))
        done += 1
        sent += [x for x in s.schedule(4.0) if isinstance(x, Assign) and x.attempt[1] != "after"]
        live = [t for n, t in run.tasks.items() if n.startswith("m[") and t.state in (pb.READY, pb.ASSIGNED, pb.RUNNING)]
        assert len(live) <= 2
    assert done == 5
    assert run.tasks["m"].state == pb.SUCCEEDED
    assert _codec.decode(run.tasks["m"].result) == [f"m[{i}]".encode() for i in range(5)]
    assert run.tasks["after"].state in (pb.READY, pb.ASSIGNED)


def test_a_sub_task_failing_for_good_fails_its_parent_and_dependents():
    s, _ = start(n=3, parallelism=0)
    run = s.runs["r1"]
    sent = [x for x in s.schedule(3.0) if isinstance(x, Assign)]
    assert len(sent) == 3
    out = s.handle(fail(sent[1].attempt, now=4.0))
    assert run.tasks["m"].state == pb.FAILED
    assert "sub-task 'm[1]' failed: boom" in run.tasks["m"].error.message
    assert run.tasks["after"].state == pb.UPSTREAM_FAILED
    assert {run.tasks["m[0]"].state, run.tasks["m[2]"].state} == {pb.CANCELLED}
    (cancel,) = [x for x in out if isinstance(x, CancelAttempts)]
    assert sorted(k[1] for k in cancel.attempts) == ["m[0]", "m[2]"]
    assert run.state == pb.RUN_FAILED


def test_a_failed_sub_task_is_retried_with_the_parents_policy():
    s, _ = start(n=1, parallelism=1, retries=1)
    run = s.runs["r1"]
    (a,) = [x for x in s.schedule(3.0) if isinstance(x, Assign)]
    s.handle(fail(a.attempt, now=4.0))
    assert run.tasks["m[0]"].state == pb.RETRY_WAIT
    assert run.tasks["m"].state == pb.MAPPED


def test_zero_parts_succeed_at_once_as_an_empty_list():
    s, _ = start(n=0)
    assert s.runs["r1"].tasks["m"].state == pb.SUCCEEDED
    assert _codec.decode(s.runs["r1"].tasks["m"].result) == []


def test_a_split_without_parts_fails_the_task_naming_why():
    s, _ = start(n=None)
    task = s.runs["r1"].tasks["m"]
    assert task.state == pb.FAILED and "returned no partitions" in task.error.message


def split_answer(result):
    """A run at its split attempt, answered with ``result``; returns the fanned-out task."""
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(WorkerConnected(0.0, "w1", "w1", "host", 8))
    spec = mapped_spec()
    s.handle(RunSubmitted(0.0, "r1", spec, tuple(validate_spec(spec))))
    (a,) = [x for x in s.schedule(0.0) if isinstance(x, Assign)]
    s.handle(ok(a.attempt))
    (split,) = [x for x in s.schedule(1.0) if isinstance(x, Assign)]
    s.handle(TaskSucceeded(2.0, "w1", split.attempt, 2.0, result))
    return s.runs["r1"].tasks["m"]


def test_corrupt_parts_fail_the_task_naming_why():
    task = split_answer(pb.Payload(codec=pb.CODEC_MAP_PARTS, data=b"\xff\xff"))
    assert task.state == pb.FAILED and "cannot fan out: its partitions cannot be read" in task.error.message


def test_too_many_parts_fail_the_task_naming_the_limit(monkeypatch):
    from xpipe.coordinator import _mapping_flow

    monkeypatch.setattr(_mapping_flow, "MAX_PARTITIONS", 3)
    task = split_answer(parts_payload(4))
    assert task.state == pb.FAILED
    assert "it split into 4 partitions; the limit is 3 (MAX_PARTITIONS)" in task.error.message


def test_unreadable_stored_parts_fail_the_task_on_restore():
    spec = mapped_spec()
    records = {
        "src": TaskRecord("r1", "src", pb.SUCCEEDED, 1, "w1", 1.0, 1.0, None, pb.Payload()),
        "m": TaskRecord("r1", "m", pb.MAPPED, 1, "w1", 2.0, 2.0, None,
                        pb.Payload(codec=pb.CODEC_MAP_PARTS, data=b"\xff\xff")),
    }  # fmt: skip
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(RunRestored(5.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records))
    task = s.runs["r1"].tasks["m"]
    assert task.state == pb.FAILED and "stored partitions of task 'm' cannot be read" in task.error.message
    assert s.runs["r1"].tasks["after"].state == pb.UPSTREAM_FAILED


def test_restore_after_every_sub_task_finished_finishes_the_task():
    spec = mapped_spec()
    records = {
        "src": TaskRecord("r1", "src", pb.SUCCEEDED, 1, "w1", 1.0, 1.0, None, pb.Payload()),
        "m": TaskRecord("r1", "m", pb.MAPPED, 1, "w1", 2.0, 2.0, None, parts_payload(2)),
        "m[0]": TaskRecord("r1", "m[0]", pb.SUCCEEDED, 1, "w1", 3.0, 3.0, None, _codec.encode("a")),
        "m[1]": TaskRecord("r1", "m[1]", pb.SUCCEEDED, 1, "w1", 3.0, 3.0, None, _codec.encode("b")),
    }
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(RunRestored(5.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records))
    run = s.runs["r1"]
    assert run.tasks["m"].state == pb.SUCCEEDED and _codec.decode(run.tasks["m"].result) == ["a", "b"]
    assert run.tasks["after"].state == pb.READY


def test_restore_mid_fan_out_keeps_finished_sub_tasks():
    s, out = start(n=4, parallelism=2)
    records = {r.name: r for r in out if isinstance(r, TaskRecord)}
    sent = [x for x in s.schedule(3.0) if isinstance(x, Assign)]
    out = s.handle(ok(sent[0].attempt, now=4.0, value=b"zero"))
    records.update({r.name: r for r in out if isinstance(r, TaskRecord)})
    for r in s.schedule(4.0):
        if isinstance(r, TaskRecord):
            records[r.name] = r
    records.update({r.name: r for r in s.iter_records("r1") if r.name in ("src",)})
    # A new coordinator reads the rows back.
    fresh = SchedulerState(prefetch=0, validate=True)
    fresh.handle(WorkerConnected(5.0, "w1", "w1", "host", 8))
    spec = mapped_spec(2)
    fresh.handle(RunRestored(5.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records))
    run = fresh.runs["r1"]
    assert run.tasks["m"].state == pb.MAPPED
    assert run.tasks["m[0]"].state == pb.SUCCEEDED and run.tasks["m[0]"].result.data == b"zero"
    assert fresh.runs["r1"].tasks["m"].fan.open <= 2


# ---- the coordinator's checks of a submitted spec ---------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.ClearField("depends_on"), "task 'm': map: depends_on is empty"),
        (lambda m: setattr(m.map, "parallelism", 10**6), "map.parallelism is 1000000; the limit is 100000"),
        (lambda m: m.map.splitter.ClearField("import_path"), "map.splitter needs an import_path"),
        (lambda m: setattr(m.map.split_args, "artifact_ref", "file:///x"), "map.split_args must be an inline Payload"),
    ],
)
def test_the_coordinator_checks_a_submitted_map(change, message):
    spec = mapped_spec()
    change(spec.tasks[1])
    with pytest.raises(PipelineValidationError, match=message):
        validate_spec(spec)


def test_a_task_named_like_a_sub_task_is_refused():
    spec = mapped_spec()
    spec.tasks.add(name="m[3]").python.import_path = "m:f"
    with pytest.raises(PipelineValidationError, match=r"task 'm\[3\]': is named like sub-task 3 of fanned-out task 'm'"):
        validate_spec(spec)
    spec.tasks[-1].name = "m[x]"
    validate_spec(spec)  # not a sub-task's name


# ---- metrics: sub-tasks count as their task (one series, not one per partition) ---------


def test_sub_task_durations_are_one_metric_series_of_their_task():
    from xpipe.coordinator._metrics import CoordinatorMetrics
    from xpipe.telemetry._export import start_metrics

    from tests.helpers_metrics import scrape, value

    endpoint = start_metrics("127.0.0.1:0", service="test")
    try:
        s, _ = start(n=3, parallelism=0)
        metrics = CoordinatorMetrics(endpoint, lambda: s)
        actions: list = []
        s.schedule(3.0, actions)
        sent = [a for a in actions if isinstance(a, Assign)]
        for a in sent:
            s.handle(TaskSucceeded(4.0, "w1", a.attempt, 4.0, pb.Payload(), started_at=3.5), actions)
        metrics.turn(actions, s.runs, 4.0, 0.001)
        samples = scrape(endpoint.url)
        assert value(samples, "xpipe_task_duration_seconds_count", pipeline="p", task="m") == 3
        assert not [key for key in samples if any(v.startswith("m[") for _, v in key[1])]
    finally:
        endpoint.stop()


def test_restore_with_a_sub_task_failed_before_the_restart_fails_the_task():
    spec = mapped_spec()
    error = pb.TaskError(error_type="TASK_FAILURE", message="boom")
    records = {
        "src": TaskRecord("r1", "src", pb.SUCCEEDED, 1, "w1", 1.0, 1.0, None, pb.Payload()),
        "m": TaskRecord("r1", "m", pb.MAPPED, 1, "w1", 2.0, 2.0, None, parts_payload(3)),
        "m[0]": TaskRecord("r1", "m[0]", pb.FAILED, 1, "w1", 3.0, 3.0, error),
    }
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(RunRestored(5.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records))
    run = s.runs["r1"]
    assert run.tasks["m"].state == pb.FAILED and "sub-task 'm[0]' failed: boom" in run.tasks["m"].error.message
    assert [run.tasks[f"m[{i}]"].state for i in (1, 2)] == [pb.CANCELLED, pb.CANCELLED]
    assert run.state == pb.RUN_FAILED


def test_cancel_mid_fan_out_cancels_the_task_and_its_sub_tasks():
    from xpipe.coordinator._events import CancelRequested

    s, _ = start(n=4, parallelism=2)
    sent = [x for x in s.schedule(3.0) if isinstance(x, Assign)]
    out = s.handle(CancelRequested(4.0, "r1"))
    run = s.runs["r1"]
    assert run.state == pb.RUN_CANCELLED
    assert {run.tasks[n].state for n in ("m", "m[0]", "m[1]", "m[2]", "m[3]", "after")} == {pb.CANCELLED}
    (cancel,) = [x for x in out if isinstance(x, CancelAttempts)]
    assert sorted(cancel.attempts) == sorted(a.attempt for a in sent)


def test_restore_after_the_fan_out_finished_still_shows_its_sub_tasks():
    spec = mapped_spec()
    gathered = Partitions(["a", "b"], None).to_payload("m")
    records = {
        "m[1]": TaskRecord("r1", "m[1]", pb.SUCCEEDED, 1, "w1", 3.0, 3.0, None, _codec.encode("b")),
        "src": TaskRecord("r1", "src", pb.SUCCEEDED, 1, "w1", 1.0, 1.0, None, pb.Payload()),
        "m": TaskRecord("r1", "m", pb.SUCCEEDED, 1, "w1", 2.0, 4.0, None, gathered),
        "m[0]": TaskRecord("r1", "m[0]", pb.SUCCEEDED, 1, "w1", 3.0, 3.0, None, _codec.encode("a")),
    }
    s = SchedulerState(prefetch=0, validate=True)
    s.handle(RunRestored(5.0, "r1", spec, tuple(validate_spec(spec)), 0.0, records))
    run = s.runs["r1"]
    assert list(run.tasks) == ["src", "m", "after", "m[0]", "m[1]"]
    assert run.tasks["m[1]"].state == pb.SUCCEEDED and run.tasks["after"].state == pb.READY
    assert [r.name for r in s.iter_records("r1")][-2:] == ["m[0]", "m[1]"]
