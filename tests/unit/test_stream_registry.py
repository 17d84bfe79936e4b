"""The stream registry's pure parts: the scaling rule, fencing, health, status, stop answers.

Runs are real ``RunEntry`` objects built from specs (the state machine's own records), with
task states set as the scheduler would; no coordinator, no grpc.
"""

from __future__ import annotations

import pytest

from xpipe._proto import common_pb2 as pb
from xpipe._proto import stream_pb2
from xpipe.coordinator._entries import RunEntry
from xpipe.coordinator._streams import (
    DOUBLE_FACTOR,
    LAG_UP_THRESHOLD,
    STALE_REPORT_S,
    BadInstance,
    Cooldowns,
    StreamRegistry,
    current_runs,
    scale,
)
from xpipe.streams._labels import AUTO_SCALING_LABEL, STAGES_LABEL, STREAM_LABEL, stages_label

T0 = 1_000_000.0


def _run(run_id: str = "r1", name: str = "s", parallelism: int = 2, auto: bool = False, created_at: float = T0) -> RunEntry:
    spec = pb.PipelineSpec(name=name)
    for i in range(parallelism):
        spec.tasks.add(name=f"enrich[{i}]")
    spec.labels[STREAM_LABEL] = name
    spec.labels[STAGES_LABEL] = stages_label([{"name": "enrich", "input": "kafka://b/t", "parallelism": parallelism}])
    if auto:
        spec.labels[AUTO_SCALING_LABEL] = "1"
    run = RunEntry(run_id, spec, created_at)
    for task in run.tasks.values():
        task.state, task.attempt, task.worker, task.started_at = pb.RUNNING, 1, "w0-abc", created_at
    return run


def _report(i: int, n: int, *, run_id: str = "r1", attempt: int = 1, lag: int = 0, state: str = "running", stream: str = "s"):
    ref = stream_pb2.InstanceRef(stream=stream, stage="enrich", instance=i, run_id=run_id, attempt=attempt)
    return stream_pb2.InstanceReport(ref=ref, state=state, records_in=n, records_out=n // 2, lag=lag,
                                     buffer_fill=5, buffer_size=10, dropped=1, errors=2, dead_lettered=3, late=4)  # fmt: skip


# ---------------------------------------------------------------- scale()

def _history(lags: list[int], start: float, step_s: float = 1.0) -> list[tuple[float, int]]:
    return [(start + k * step_s, lag) for k, lag in enumerate(lags)]


def test_growing_lag_above_the_threshold_adds_one_instance():
    history = _history([2000, 2500, 3000, 3500, 4000, 4500], T0)
    assert scale(1, 4, history, T0 + 5, last_change=T0 - 100) == 2


def test_lag_far_above_the_threshold_doubles_but_not_past_parallelism():
    big = DOUBLE_FACTOR * LAG_UP_THRESHOLD + 1
    history = _history([big - 500, big - 300, big], T0, 2.5)
    assert scale(2, 8, history, T0 + 5, last_change=0) == 4
    assert scale(3, 4, history, T0 + 5, last_change=0) == 4


@pytest.mark.parametrize(
    ("lags", "why"),
    [
        ([5000, 4000, 3000, 2000, 1500, 1200], "lag above the threshold but shrinking"),
        ([100, 200, 300, 400, 500, 600], "growing but below the threshold"),
        ([3000, 3000, 3000, 3000, 3000, 3000], "flat"),
    ],
)
def test_no_scale_up_without_growth_above_the_threshold(lags, why):
    assert scale(2, 4, _history(lags, T0), T0 + 5, last_change=0) == 2, why


def test_scale_up_waits_for_its_cooldown_and_for_a_history_spanning_the_window():
    history = _history([2000, 3000, 4000, 5000, 6000, 7000], T0)
    assert scale(1, 4, history, T0 + 5, last_change=T0 + 1, cooldowns=Cooldowns(up_s=5)) == 1
    assert scale(1, 4, history, T0 + 5, last_change=T0 - 0.1, cooldowns=Cooldowns(up_s=5)) == 2
    short = [(T0 + 4.5, 2000), (T0 + 5, 3000)]  # half a second of history is no trend
    assert scale(1, 4, short, T0 + 5, last_change=0) == 1


def test_lag_near_zero_for_the_down_cooldown_removes_one_instance():
    history = _history([0] * 31, T0)
    now = T0 + 30
    assert scale(3, 4, history, now, last_change=T0 - 1) == 2
    assert scale(3, 4, history, now, last_change=T0 + 1) == 3  # changed 29 s ago: cooldown not over
    assert scale(3, 4, history[5:], now, last_change=0) == 3  # history covers 25 s only
    assert scale(3, 4, [*history[:-1], (now, 50)], now, last_change=0) == 3  # not idle at the end
    assert scale(1, 4, history, now, last_change=0) == 1  # never below one


def test_scale_keeps_bounds_and_an_empty_history_changes_nothing():
    assert scale(0, 4, [], T0, last_change=0) == 1
    assert scale(9, 4, [], T0, last_change=0) == 4
    assert scale(2, 4, [], T0, last_change=0) == 2
    assert scale(1, 0, _history([5000, 9000, 20000], T0, 2.5), T0 + 5, last_change=0) == 1


# ---------------------------------------------------------------- reports, fencing, stop

def test_reports_of_an_older_attempt_or_run_are_fenced_and_not_kept():
    reg, run = StreamRegistry(), _run()
    run.tasks["enrich[0]"].attempt = 3
    runs = {"r1": run}
    assert reg.report(runs, _report(0, 10, attempt=2), T0).fenced
    assert reg.report(runs, _report(0, 10, run_id="r0", attempt=3), T0).fenced
    assert not reg.report(runs, _report(0, 10, attempt=3), T0).fenced
    assert not reg.report(runs, _report(0, 10, run_id="", attempt=0), T0).fenced  # unknown to the instance
    status = reg.status(run, T0)
    assert status.stages[0].instances[0].last_report.ref.attempt == 0


def test_bad_references_name_the_stream_stage_or_instance():
    reg, runs = StreamRegistry(), {"r1": _run()}
    cases = [
        (_report(0, 1, stream="ghost"), "NOT_FOUND", "'ghost'"),
        (_report(0, 1, stream=""), "INVALID_ARGUMENT", "stream name is empty"),
        (_report(2, 1), "INVALID_ARGUMENT", "instance 2 of stage 'enrich' is out of range: parallelism is 2"),
    ]
    other = _report(0, 1)
    other.ref.stage = "load"
    cases.append((other, "NOT_FOUND", "no stage 'load'"))
    for report, code, text in cases:
        with pytest.raises(BadInstance, match=text) as caught:
            reg.report(runs, report, T0)
        assert caught.value.code == code


def test_stop_and_drain_are_answered_to_the_current_run_only():
    reg, run = StreamRegistry(), _run()
    runs = {"r1": run}
    assert not reg.report(runs, _report(0, 1), T0).drain
    reg.request_stop(run, drain=True, timeout_s=0, now=T0)
    control = reg.report(runs, _report(0, 2), T0 + 1)
    assert control.drain and not control.stop
    assert reg.status(run, T0 + 1).state == "draining"
    reg.request_stop(run, drain=False, timeout_s=5, now=T0)
    control = reg.report(runs, _report(0, 3), T0 + 2)
    assert control.stop and not control.drain
    newer = _run("r2", created_at=T0 + 10)
    runs["r2"] = newer
    run.state = pb.RUN_CANCELLED
    assert current_runs(runs.values())["s"] is newer
    assert not reg.report(runs, _report(0, 1, run_id="r2"), T0 + 3).stop  # the stop was for r1


# ---------------------------------------------------------------- status and health

def test_status_sums_stages_and_derives_rates_between_reports():
    reg, run = StreamRegistry(), _run()
    runs = {"r1": run}
    for i in range(2):
        reg.report(runs, _report(i, 100, lag=7), T0)
        reg.report(runs, _report(i, 300, lag=7), T0 + 2)  # +200 in, +100 out in 2 s, each
    status = reg.status(run, T0 + 2, worker_name=lambda w: {"w0-abc": "w0"}.get(w))
    assert (status.name, status.run_id, status.state, status.healthy, status.problem) == ("s", "r1", "running", True, "")
    (stage,) = status.stages
    assert (stage.parallelism, stage.active, stage.lag) == (2, 2, 14)
    assert stage.records_in_per_s == pytest.approx(200.0) and stage.records_out_per_s == pytest.approx(100.0)
    assert (stage.records_in, stage.records_out, stage.dropped, stage.errors, stage.dead_lettered, stage.late) == (600, 300, 2, 4, 6, 8)
    assert stage.buffer_fill == pytest.approx(0.5)
    assert [(i.task, i.worker_name, i.task_state) for i in stage.instances] == [("enrich[0]", "w0", "RUNNING"), ("enrich[1]", "w0", "RUNNING")]


def test_a_silent_instance_a_failed_one_and_a_task_not_running_are_problems():
    reg, run = StreamRegistry(), _run()
    runs = {"r1": run}
    reg.report(runs, _report(0, 1), T0)
    reg.report(runs, _report(1, 1), T0)
    late = reg.status(run, T0 + STALE_REPORT_S + 0.5)
    assert not late.healthy and "last report 3.5 s ago" in late.problem
    assert late.stages[0].records_in_per_s == 0.0  # a stale rate is not shown as throughput
    reg.report(runs, _report(0, 2, state="failed"), T0 + 1)
    run.tasks["enrich[1]"].state = pb.RETRY_WAIT
    status = reg.status(run, T0 + 1)
    assert not status.healthy
    assert "enrich[0]: instance failed" in status.problem and "enrich[1]: task is RETRY_WAIT" in status.problem
    run.tasks["enrich[1]"].state = pb.FAILED
    run.tasks["enrich[1]"].error = pb.TaskError(message="boom")
    run.state = pb.RUN_FAILED
    failed = reg.status(run, T0 + 1)
    assert failed.state == "failed" and not failed.healthy and "task failed: boom" in failed.problem


def test_a_new_stream_is_starting_and_healthy_until_its_grace_ends():
    reg, run = StreamRegistry(), _run()
    status = reg.status(run, T0 + 1)
    assert (status.state, status.healthy, status.stages[0].lag) == ("starting", True, -1)
    assert not reg.status(run, T0 + 30).healthy  # running 30 s without a single report


def test_a_drained_stream_is_stopped_and_not_unhealthy():
    reg, run = StreamRegistry(), _run()
    for task in run.tasks.values():
        task.state = pb.SUCCEEDED
    run.state = pb.RUN_SUCCEEDED
    status = reg.status(run, T0)
    assert (status.state, status.healthy) == ("stopped", True)


def test_auto_scaling_answers_active_instances_and_shows_them():
    reg, run = StreamRegistry(Cooldowns(up_s=1, down_s=3)), _run(parallelism=4, auto=True)
    runs = {"r1": run}
    seen = []
    for k in range(30):  # idle for 15 s: from all 4 down, one at a time, to 1
        now = T0 + k * 0.5
        controls = [reg.report(runs, _report(i, k, lag=0), now) for i in range(4)]
        seen.append(controls[-1].active_instances)
    assert seen[0] == 4 and seen[-1] == 1
    assert all(a - b in (0, 1) for a, b in zip(seen, seen[1:]))  # down by one at a time
    lag = 2000
    for k in range(30, 50):  # then the lag grows 500 per half second: up again
        now = T0 + k * 0.5
        lag += 500
        controls = [reg.report(runs, _report(i, k, lag=lag // 4), now) for i in range(4)]
    assert controls[-1].active_instances > 1
    assert reg.status(run, now).stages[0].active == controls[-1].active_instances
    assert not reg.report({"r1": _run()}, _report(0, 1), now).active_instances  # no auto-scaling label: 0
