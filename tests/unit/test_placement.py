"""Pure tests of resource-aware placement: the index alone, and through the state machine."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe._dag import PLACEMENT_STRATEGIES
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe.coordinator._events import (
    Assign,
    DrainRequested,
    HeartbeatReceived,
    RunRestored,
    RunSubmitted,
    TaskRecord,
    TaskSucceeded,
    Tick,
    WorkerConnected,
    WorkerDisconnected,
)
from xpipe.coordinator._placement import STRATEGIES, UNBOUNDED, PlacementIndex, Request, normalize_strategy
from xpipe.coordinator._state import SchedulerState
from xpipe.coordinator._validate import validate_spec

GiB = 2**30


def res(cpu=0.0, memory_gb=0.0, gpu=0, **custom) -> pb.Resources:
    return pb.Resources(cpu_cores=cpu, memory_bytes=int(memory_gb * GiB), gpu=gpu, custom=custom)


def req(cpu=1.0, memory_gb=0.0, gpu=0, labels=None, **custom) -> Request:
    return Request.of(res(cpu, memory_gb, gpu, **custom), labels)


# ---------------------------------------------------------------------- the index alone


def test_strategies_agree_with_the_sdk_and_default_is_balanced():
    assert STRATEGIES == PLACEMENT_STRATEGIES
    assert normalize_strategy("") == "resource_balanced"
    with pytest.raises(ValueError, match="unknown placement strategy 'fastest'.*pack"):
        normalize_strategy("fastest")


def test_a_request_with_nothing_asks_one_core():
    assert Request.of(None).cpu_milli == 1000
    assert Request.of(pb.Resources(memory_bytes=5)).cpu_milli == 1000
    r = req(2.5, 1, 1, licenses=2, labels={"zone": "a"})
    assert r.describe() == "cpu_cores=2.5, memory=1 GiB, gpu=1, licenses=2, label zone=a"
    assert Request.of(r.to_proto(), {"zone": "a"}) == r


def test_gpu_request_goes_only_to_the_gpu_worker():
    idx = PlacementIndex()
    for i in range(10):
        idx.upsert(f"cpu{i}", slots=4, credit=4, resources=res(8, 32), labels={})
    idx.upsert("gpu0", slots=4, credit=4, resources=res(8, 32, gpu=1), labels={})
    assert idx.pick(req(1, gpu=1)) == "gpu0"
    idx.hold("gpu0", "a", req(1, gpu=1))
    assert idx.pick(req(1, gpu=1)) is None  # its only GPU is taken
    idx.release("gpu0", "a")
    assert idx.pick(req(1, gpu=1)) == "gpu0"


def test_long_running_attempts_take_free_slots_only_and_keep_them_from_prefetch():
    idx = PlacementIndex()
    idx.upsert("w", slots=2, credit=4, resources=res(8, 32), labels={})  # two slots, two more as prefetch
    pinned = Request.of(res(0.25), pinned=True)
    idx.hold("w", "batch-1", req(1))
    idx.hold("w", "batch-2", req(1))
    assert idx.pick(pinned) is None  # both slots busy: a stream instance would wait behind them
    assert idx.pick(req(1)) == "w"  # a batch task may still queue as prefetch
    idx.release("w", "batch-1")
    idx.release("w", "batch-2")
    idx.hold("w", "stream-0", pinned)
    assert idx.pick(req(1)) == "w"  # one slot is still free
    idx.hold("w", "stream-1", pinned)
    assert idx.pick(req(1)) is None and idx.pick(pinned) is None  # every slot pinned: nothing queues there
    idx.release("w", "stream-1")
    assert idx.pick(req(1)) == "w" and idx.pick(pinned) == "w"


def test_memory_heavy_request_goes_where_it_fits_and_nobody_is_over_committed():
    idx = PlacementIndex()
    idx.upsert("small", slots=8, credit=8, resources=res(8, 4), labels={})
    idx.upsert("big", slots=8, credit=8, resources=res(8, 16), labels={})
    heavy = req(1, memory_gb=8)
    assert idx.pick(heavy) == "big"
    idx.hold("big", 1, heavy)
    assert idx.pick(heavy) == "big"
    idx.hold("big", 2, heavy)
    assert idx.pick(heavy) is None  # 16 GiB are held; "small" never fits 8 GiB
    assert idx.nodes["big"].used_memory == 16 * GiB


def test_slots_never_override_resources():
    idx = PlacementIndex()
    idx.upsert("w", slots=16, credit=16, resources=res(2), labels={})
    placed = 0
    while (w := idx.pick(req(1))) is not None:
        idx.hold(w, placed, req(1))
        placed += 1
    assert placed == 2


def test_prefetch_scales_what_a_worker_may_hold_but_not_what_one_task_may_ask():
    idx = PlacementIndex()
    idx.upsert("w", slots=16, credit=24, resources=res(2), labels={})  # headroom 24/16 = 1.5
    placed = 0
    while (w := idx.pick(req(1))) is not None:
        idx.hold(w, placed, req(1))
        placed += 1
    assert placed == 3  # 2 cores x 1.5: one waits on the worker for a free core
    idx2 = PlacementIndex()
    idx2.upsert("w", slots=1, credit=9, resources=res(2), labels={})
    assert idx2.pick(req(3)) is None  # larger than the worker: never, whatever the headroom


def test_credit_bounds_a_worker_without_resources():
    idx = PlacementIndex()
    idx.upsert("bare", slots=2, credit=3, resources=None, labels={})
    assert idx.nodes["bare"].cpu == UNBOUNDED
    for i in range(3):
        assert idx.pick(req(64)) == "bare"
        idx.hold("bare", i, req(64))
    assert idx.pick(req(1)) is None
    assert idx.pick(req(1, gpu=1)) is None  # a bare worker offers no GPU


def test_labels_must_match():
    idx = PlacementIndex()
    idx.upsert("a", slots=4, credit=4, resources=res(4), labels={"zone": "a"})
    idx.upsert("b", slots=4, credit=4, resources=res(4), labels={"zone": "b", "disk": "ssd"})
    assert idx.pick(req(labels={"zone": "b"})) == "b"
    assert idx.pick(req(labels={"zone": "b", "disk": "hdd"})) is None
    assert "labels disk=hdd, zone=b" in idx.why_never_fits(req(labels={"zone": "b", "disk": "hdd"}))


def test_pack_fills_one_worker_first_spread_alternates():
    def place(strategy, n):
        idx = PlacementIndex()
        for name in ("w1", "w2", "w3"):
            idx.upsert(name, slots=4, credit=4, resources=res(4), labels={})
        out = []
        for i in range(n):
            w = idx.pick(req(1), strategy=strategy)
            idx.hold(w, i, req(1))
            out.append(w)
        return out

    assert place("pack", 6) == ["w1"] * 4 + ["w2"] * 2
    assert sorted(place("spread", 6)) == ["w1", "w1", "w2", "w2", "w3", "w3"]
    assert sorted(place("resource_balanced", 6)) == ["w1", "w1", "w2", "w2", "w3", "w3"]


def test_balanced_weighs_live_load_from_heartbeats():
    idx = PlacementIndex()
    idx.upsert("busy", slots=4, credit=4, resources=res(4), labels={})
    idx.upsert("idle", slots=4, credit=4, resources=res(4), labels={})
    idx.set_load("busy", 90.0)
    picks = []
    for i in range(4):
        w = idx.pick(req(1), strategy="resource_balanced")
        idx.hold(w, i, req(1))
        picks.append(w)
    # idle takes work while its share (up to 3/4) stays under busy's load (0.9), then is full.
    assert picks == ["idle"] * 4
    assert idx.pick(req(1), strategy="resource_balanced") == "busy"
    # spread ignores the load: it looks at tasks per slot.
    assert idx.pick(req(1), strategy="spread") == "busy"


def test_balanced_evens_dominant_share_across_sizes():
    idx = PlacementIndex()
    idx.upsert("big", slots=16, credit=16, resources=res(16), labels={})
    idx.upsert("small", slots=16, credit=16, resources=res(4), labels={})
    picks = []
    for i in range(10):
        w = idx.pick(req(1))
        idx.hold(w, i, req(1))
        picks.append(w)
    assert picks.count("big") == 8 and picks.count("small") == 2  # both half used


def test_ineligible_and_removed_workers_take_nothing():
    idx = PlacementIndex()
    idx.upsert("w", slots=2, credit=2, resources=res(2), labels={})
    idx.set_eligible("w", False)
    assert not idx.has_room() and idx.pick(req(1)) is None
    assert idx.why_never_fits(req(1)) == ""  # still registered: it could fit later
    idx.set_eligible("w", True)
    assert idx.pick(req(1)) == "w"
    idx.remove("w")
    assert idx.pick(req(1)) is None and not idx.nodes
    assert idx.why_never_fits(req(99)) == ""  # nobody registered: no verdict


def test_why_never_fits_names_the_missing_resource():
    idx = PlacementIndex()
    idx.upsert("a", slots=2, credit=2, resources=res(4, 64), labels={})
    idx.upsert("b", slots=2, credit=2, resources=res(32, 8), labels={})
    assert idx.why_never_fits(req(2, 4)) == ""
    msg = idx.why_never_fits(req(1, gpu=2))
    assert "gpu=2 (largest offer: 0)" in msg and "cpu" not in msg
    msg = idx.why_never_fits(req(64, 128))
    assert "cpu_cores=64 (largest offer: 32)" in msg and "memory=128 GiB (largest offer: 64 GiB)" in msg
    assert "licenses=1 (largest offer: 0)" in idx.why_never_fits(req(1, licenses=1))
    # Each resource exists somewhere, but never on one worker together.
    assert "no single registered worker offers all of cpu_cores=16, memory=32 GiB" in idx.why_never_fits(req(16, 32))
    idx.upsert("c", slots=2, credit=2, resources=res(32, 64), labels={})  # capacity changed: cache dropped
    assert idx.why_never_fits(req(16, 32)) == ""


def test_narrow_constraints_scan_only_their_workers():
    idx = PlacementIndex()
    for i in range(500):
        idx.upsert(f"w{i}", slots=4, credit=4, resources=res(4), labels={"host": f"h{i}"})
    idx.upsert("gpu", slots=4, credit=4, resources=res(4, gpu=1), labels={"host": "g"})
    idx.examined = 0
    assert idx.pick(req(1, gpu=1)) == "gpu"
    assert idx.pick(req(1, labels={"host": "h321"})) == "w321"
    assert idx.examined <= 4


def test_repeated_failures_cost_nothing_until_a_release():
    idx = PlacementIndex()
    for i in range(200):
        idx.upsert(f"w{i}", slots=4, credit=4, resources=res(4), labels={})
        idx.hold(f"w{i}", i, req(2))  # everyone has 2 cores free
    idx.examined = 0
    assert idx.pick(req(3)) is None
    assert idx.examined == 0  # the max-free-cpu heap rejects at once
    idx.release("w7", 7)
    assert idx.pick(req(3)) == "w7"


def test_heaps_are_compacted():
    idx = PlacementIndex()
    idx.upsert("w", slots=1000, credit=1000, resources=res(1000), labels={})
    for i in range(500):
        idx.hold("w", i, req(1))
        idx.set_load("w", float(i % 100))
    assert len(idx._free_cpu) <= 4 * len(idx.nodes) + 64
    assert idx.pick(req(1)) == "w"


def test_holds_and_releases_push_heap_entries_only_when_a_pick_reads_them():
    # A turn's results release attempts on many workers, and its placements hold new ones:
    # each worker costs one entry per heap when the heaps are next read, not one per change.
    idx = PlacementIndex()
    workers = [f"w{i}" for i in range(100)]
    for w in workers:
        idx.upsert(w, slots=1, credit=65, resources=res(4), labels={})
    assert idx.pick(req(1)) == "w0"
    read = len(idx._free_cpu)
    assert read == len(workers)
    for round_no in range(20):
        for w in workers:
            idx.hold(w, (w, round_no), req(0.1))
    for w in workers:
        for round_no in range(20 if w == "w7" else 19):
            idx.release(w, (w, round_no))
    assert len(idx._free_cpu) == read  # nothing pushed yet
    # w7 alone holds nothing now; the others one attempt each. The entries read first
    # (everyone empty, w0 first) are stale and must not be believed.
    assert idx.pick(req(1)) == "w7"
    assert len(idx._free_cpu) <= 2 * len(workers)


@settings(max_examples=60, deadline=None)
@given(
    workers=st.lists(
        st.tuples(st.integers(1, 8), st.integers(0, 8), st.integers(0, 2), st.sampled_from(["a", "b"])),
        min_size=1, max_size=8,
    ),
    ops=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 6), st.integers(0, 1), st.sampled_from(["", "a", "b"]),
                  st.sampled_from(STRATEGIES), st.booleans()),
        max_size=60,
    ),
)  # fmt: skip
def test_pick_agrees_with_brute_force_and_never_over_commits(workers, ops):
    idx = PlacementIndex()
    for i, (cpu, mem, gpu, zone) in enumerate(workers):
        idx.upsert(f"w{i}", slots=4, credit=5, resources=res(cpu, mem, gpu), labels={"zone": zone})
    held: list[tuple[str, int]] = []
    for n, (cpu, mem, gpu, zone, strategy, release) in enumerate(ops):
        if release and held:
            idx.release(*held.pop(0))
            continue
        r = req(cpu or 0.5, mem, gpu, labels={"zone": zone} if zone else None)
        chosen = idx.pick(r, strategy=strategy)
        fitting = [w for w, node in idx.nodes.items() if node.fits_now(r)]
        if chosen is None:
            assert fitting == []
        else:
            assert chosen in fitting
            idx.hold(chosen, n, r)
            held.append((chosen, n))
        for node in idx.nodes.values():
            assert node.used_cpu <= node._cap(node.cpu) and node.used_memory <= node._cap(node.memory)
            assert node.used_gpu <= node._cap(node.gpu) and len(node.held) <= node.credit
            assert all(node.fits_ever(r) for r in node.held.values())


# ---------------------------------------------------------------------- through the state machine


def spec_of(tasks: dict, *, strategy="", wait_s=0.0, limits=None, fail_fast=False) -> pb.PipelineSpec:
    """tasks: name -> (deps, resources, labels, priority)."""
    spec = pb.PipelineSpec(name="p", placement_strategy=strategy, wait_for_resources_s=wait_s)
    if limits is not None:
        spec.resource_limits.CopyFrom(limits)
    spec.fault_tolerance.fail_fast = fail_fast
    for name, (deps, resources, labels, priority) in tasks.items():
        t = spec.tasks.add(name=name, depends_on=deps, priority=priority)
        t.python.import_path = "m:f"
        if resources is not None:
            t.resources.CopyFrom(resources)
        t.labels.update(labels or {})
    return spec


def T(deps=(), resources=None, labels=None, priority=0):
    return (list(deps), resources, labels, priority)


def submit(s, tasks, now=0.0, run_id="r1", **kw):
    spec = spec_of(tasks, **kw)
    return s.handle(RunSubmitted(now, run_id, spec, tuple(validate_spec(spec))))


def connect(s, wid, slots=4, resources=None, labels=None, now=0.0):
    return s.handle(WorkerConnected(now, wid, wid, "host", slots, labels=labels or {}, resources=resources))


def assigns(actions):
    return [a for a in actions if isinstance(a, Assign)]


def done(s, a, now=1.0):
    return s.handle(TaskSucceeded(now, a.worker_id, a.attempt, now, pb.Payload(), started_at=now - 0.5))


def task_state(s, name, run_id="r1"):
    return s.runs[run_id].tasks[name].state


def test_state_places_gpu_tasks_on_gpu_workers_and_never_over_commits():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "cpu", slots=8, resources=res(2, 8))
    connect(s, "gpu", slots=8, resources=res(2, 8, gpu=1))
    submit(s, {**{f"g{i}": T(resources=res(1, gpu=1)) for i in range(3)}, **{f"c{i}": T() for i in range(6)}})
    out = assigns(s.schedule(0.0))
    by = {}
    for a in out:
        by.setdefault(a.worker_id, []).append(a.attempt[1])
    assert [n for n in by["gpu"] if n.startswith("g")] == ["g0"]  # one GPU: one GPU task at a time
    assert all(n.startswith("c") for n in by["cpu"]) and len(by["cpu"]) == 2  # 2 cores, 8 slots
    assert len(by["gpu"]) == 2  # g0 plus one cpu task fill its 2 cores
    g0 = next(a for a in out if a.attempt[1] == "g0")
    done(s, g0)
    nxt = assigns(s.schedule(1.0))
    assert [(a.worker_id, a.attempt[1]) for a in nxt] == [("gpu", "g1")]


def test_ready_order_is_priority_then_critical_path_then_fifo():
    s = SchedulerState(prefetch=0, validate=True)
    submit(s, {
        "solo1": T(), "solo2": T(),
        "head": T(), "mid": T(["head"]), "tail": T(["mid"]),  # head has the longest path
        "urgent": T(priority=5),
    })  # fmt: skip
    connect(s, "w", slots=1, resources=res(1))
    order = []
    for step in range(6):
        (a,) = assigns(s.schedule(float(step)))
        order.append(a.attempt[1])
        done(s, a, now=float(step) + 0.5)
    # mid (path 2) beats the solos (path 1); tail (path 1) became ready last: FIFO puts it last.
    assert order == ["urgent", "head", "mid", "solo1", "solo2", "tail"]


def test_impossible_request_fails_fast_with_resource_exhaustion():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "w", slots=4, resources=res(4, 16))
    submit(s, {"train": T(resources=res(2, gpu=1)), "after": T(["train"]), "other": T()})
    out = s.schedule(0.0)
    failed = [r for r in out if isinstance(r, TaskRecord) and r.state == pb.FAILED]
    assert [r.name for r in failed] == ["train"]
    err = failed[0].error
    assert err.error_type == "RESOURCE_EXHAUSTION" and err.non_retryable
    assert "gpu=1 (largest offer: 0)" in err.message and "'train'" in err.message
    assert err.required_resources.gpu == 1 and err.required_resources.cpu_cores == 2
    assert task_state(s, "after") == pb.UPSTREAM_FAILED
    assert [a.attempt[1] for a in assigns(out)] == ["other"]


def test_no_verdict_while_no_worker_is_registered():
    s = SchedulerState(prefetch=0, validate=True)
    submit(s, {"big": T(resources=res(64))})
    assert s.schedule(0.0) == [] and task_state(s, "big") == pb.READY
    connect(s, "w", resources=res(4))
    s.schedule(0.5)
    assert task_state(s, "big") == pb.FAILED


def test_wait_for_resources_lets_a_late_worker_take_the_task():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "cpu", resources=res(4))
    submit(s, {"g": T(resources=res(1, gpu=1))}, wait_s=5.0)
    assert assigns(s.schedule(0.0)) == [] and task_state(s, "g") == pb.READY
    s.handle(Tick(4.0))
    assert task_state(s, "g") == pb.READY
    connect(s, "gpu", resources=res(4, gpu=1), now=4.5)
    assert [a.worker_id for a in assigns(s.schedule(4.5))] == ["gpu"]
    s.handle(Tick(6.0))  # the deadline passes while it runs: nothing happens
    assert task_state(s, "g") == pb.ASSIGNED


def test_wait_for_resources_fails_after_the_deadline():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "cpu", resources=res(4))
    submit(s, {"g": T(resources=res(1, gpu=1))}, wait_s=2.0)
    s.schedule(0.0)
    out = s.handle(Tick(2.5))
    (rec,) = [r for r in out if isinstance(r, TaskRecord)]
    assert rec.state == pb.FAILED and "waited 2s" in rec.error.message


def test_run_resource_limits_cap_what_is_in_flight():
    s = SchedulerState(prefetch=8, validate=True)
    connect(s, "w1", slots=8, resources=res(8))
    connect(s, "w2", slots=8, resources=res(8))
    submit(s, {f"t{i}": T(resources=res(2)) for i in range(8)} | {"huge": T(resources=res(6))},
           limits=pb.Resources(cpu_cores=5))  # fmt: skip
    out = s.schedule(0.0)
    first = assigns(out)
    assert len(first) == 2  # 2 + 2 cores <= 5 < 6
    (huge,) = [r for r in out if isinstance(r, TaskRecord) and r.name == "huge"]
    assert huge.state == pb.FAILED and "resource_limits are smaller" in huge.error.message
    done(s, first[0])
    assert len(assigns(s.schedule(1.0))) == 1


def test_draining_disconnected_and_lost_workers_release_and_take_nothing():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=5.0, validate=True)
    connect(s, "w1", slots=2, resources=res(2))
    connect(s, "w2", slots=2, resources=res(2))
    submit(s, {f"t{i}": T() for i in range(6)})
    assert len(assigns(s.schedule(0.0))) == 4
    s.handle(DrainRequested(0.1, "w1"))
    s.handle(WorkerDisconnected(0.1, "w2"))
    assert not s.placement.has_room()
    s.handle(Tick(6.0))  # both silent past the deadline: lost, attempts requeued
    assert s.placement.nodes == {}
    connect(s, "w3", slots=2, resources=res(2), now=6.0)
    assert len(assigns(s.schedule(6.0))) == 2


def test_heartbeat_load_steers_balanced_placement():
    s = SchedulerState(prefetch=0, validate=True)
    connect(s, "busy", slots=4, resources=res(4))
    connect(s, "idle", slots=4, resources=res(4))
    s.handle(HeartbeatReceived(0.1, "busy", metrics=worker_pb2.WorkerMetrics(cpu_percent=95.0)))
    submit(s, {"a": T(), "b": T()})
    assert {a.worker_id for a in assigns(s.schedule(0.2))} == {"idle"}


def test_pack_strategy_per_run():
    s = SchedulerState(prefetch=0, validate=True)
    for w in ("w1", "w2"):
        connect(s, w, slots=4, resources=res(4))
    submit(s, {f"t{i}": T() for i in range(4)}, strategy="pack")
    assert {a.worker_id for a in assigns(s.schedule(0.0))} == {"w1"}
    submit(s, {f"u{i}": T() for i in range(2)}, run_id="r2", strategy="spread")
    assert {a.worker_id for a in assigns(s.schedule(0.0))} == {"w2"}  # w1 is full


def test_restored_run_waits_for_workers_to_reconnect_before_judging():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=5.0, validate=True)
    spec = spec_of({"g": T(resources=res(1, gpu=1)), "c": T()})
    running = TaskRecord("r1", "c", pb.RUNNING, 1, "w-cpu", 1.0)
    s.handle(RunRestored(10.0, "r1", spec, ("g", "c"), 0.0, {"c": running}))
    connect(s, "w-cpu", resources=res(1), now=10.1)
    s.handle(WorkerConnected(10.1, "w-cpu", "w-cpu", "h", 4, resources=res(1), running=(("r1", "c", 1),)))
    s.schedule(10.1)
    assert task_state(s, "g") == pb.READY  # the GPU worker may still be reconnecting
    assert s.placement.nodes["w-cpu"].used_cpu == 1000  # the restored attempt is charged
    connect(s, "w-gpu", resources=res(1, gpu=1), now=11.0)
    assert [a.worker_id for a in assigns(s.schedule(11.0))] == ["w-gpu"]


def test_restored_run_judges_after_the_settle_time():
    s = SchedulerState(prefetch=0, heartbeat_timeout_s=5.0, validate=True)
    spec = spec_of({"g": T(resources=res(1, gpu=1))})
    s.handle(RunRestored(10.0, "r1", spec, ("g",), 0.0, {}))
    connect(s, "w-cpu", resources=res(1), now=10.1)
    s.schedule(12.0)
    assert task_state(s, "g") == pb.READY
    s.schedule(15.5)
    assert task_state(s, "g") == pb.FAILED


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), strategy=st.sampled_from(STRATEGIES))
def test_random_runs_never_over_commit(seed, strategy):
    rng = random.Random(seed)
    s = SchedulerState(prefetch=rng.randint(0, 3), validate=True, rng=rng)
    for i in range(rng.randint(1, 4)):
        connect(s, f"w{i}", slots=rng.randint(1, 6), resources=res(rng.randint(1, 4), rng.randint(1, 8), rng.randint(0, 1)))
    tasks = {}
    for i in range(rng.randint(1, 25)):
        deps = [f"t{j}" for j in range(i) if rng.random() < 0.15]
        tasks[f"t{i}"] = T(deps, res(rng.choice([0, 0.5, 1, 2]), rng.choice([0, 0, 1, 2]), rng.choice([0, 0, 0, 1])),
                           priority=rng.randint(0, 2))  # fmt: skip
    submit(s, tasks, strategy=strategy)
    now = 0.0
    for _ in range(200):
        now += 0.1
        active = [a for a in assigns(s.schedule(now))]
        held = [k for w in s.workers.values() for k in w.assigned]
        if not held and not active:
            break
        key = rng.choice(held)
        wid = next(w for w, wk in s.workers.items() if key in wk.assigned)
        s.handle(TaskSucceeded(now, wid, key, now, pb.Payload()))
    run = s.runs["r1"]
    # Every task ends: placed and finished, or failed as impossible (and its dependents).
    assert run.terminal == len(run.tasks)
    for t in run.tasks.values():
        if t.state == pb.FAILED:
            assert t.error.error_type == "RESOURCE_EXHAUSTION"


def test_fractional_headroom_leaves_no_room_a_default_task_cannot_use():
    idx = PlacementIndex()
    idx.upsert("w", slots=4, credit=5, resources=res(2), labels={})  # 2 cores x 1.25 = 2.5
    for i in range(2):
        assert idx.pick(req(1)) == "w"
        idx.hold("w", i, req(1))
    # Half a core "left" would make the scheduler scan the whole ready queue for nothing.
    assert idx.pick(req(1)) is None and not idx.has_room()
