"""Resource-aware placement on real, heterogeneous worker processes.

One cluster serves the module: a small cpu worker (2 cores, 1 GiB, no GPU) and a GPU
worker (2 cores, 8 GiB, 1 GPU, label accel=gpu), both with 8 slots so that only their
resources can stop the coordinator from over-committing them. Tasks record their own
start and end times; overlaps are checked from those records.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineExecutionError, PipelineManager, Task

GiB = 2**30
CAPACITY = {"cpu": {"cpu": 2.0, "memory": 1 * GiB, "gpu": 0}, "gpu": {"cpu": 2.0, "memory": 8 * GiB, "gpu": 1}}


def span(*args: object) -> tuple[float, float]:
    """Sleep ``args[-1]`` seconds (upstream results come first), and say when this ran."""
    seconds = args[-1]
    start = time.time()
    time.sleep(seconds)
    return (start, time.time())


@pytest.fixture(scope="module")
def hetero(tmp_path_factory: pytest.TempPathFactory):
    cluster = Cluster(tmp_path_factory.mktemp("placement"), workers=0)
    try:
        cluster._start_coordinator()  # start() waits for default workers; ours differ, added below
        cluster.add_worker("cpu", 8, ["--resources", "cpu=2,memory=1Gi,gpu=0"])
        cluster.add_worker("gpu", 8, ["--resources", "cpu=2,memory=8Gi,gpu=1", "--labels", "accel=gpu"])
        yield cluster
    finally:
        cluster.stop()
        print(cluster.format_logs())


@pytest.fixture
def pm(hetero):
    manager = PipelineManager(coordinator=hetero.address)
    yield manager
    manager.close()


def _max_concurrent(spans: list[tuple[float, float, float]]) -> float:
    """Largest sum of amounts over overlapping (start, end, amount) spans."""
    events = sorted([(s, 1, a) for s, _, a in spans] + [(e, 0, -a) for _, e, a in spans])  # ends first on ties
    best = level = 0.0
    for _, _, delta in events:
        level += delta
        best = max(best, level)
    return best


def test_heterogeneous_placement_never_over_commits(pm):
    p = Pipeline("hetero")
    requests: dict[str, dict] = {}
    for i in range(3):
        requests[f"gpu{i}"] = {"cpu_cores": 1, "gpu": 1}
        requests[f"mem{i}"] = {"cpu_cores": 1, "memory_gb": 4}
    for i in range(6):
        requests[f"plain{i}"] = {}
    for name, reqs in requests.items():
        p.add_task(Task(name, span, args=(0.25,), resource_requirements=reqs))
    result = pm.execute_pipeline(p, monitor=False)
    by_worker: dict[str, list[tuple[str, float, float]]] = {}
    for name, (start, end) in result.outputs.items():
        by_worker.setdefault(result.tasks[name].worker, []).append((name, start, end))
    assert {n for n, *_ in by_worker.get("cpu", [])} <= {f"plain{i}" for i in range(6)}  # no GPU, too little memory
    assert {f"gpu{i}" for i in range(3)} | {f"mem{i}" for i in range(3)} <= {n for n, *_ in by_worker["gpu"]}
    for worker, spans in by_worker.items():
        cap = CAPACITY[worker]
        cpu = _max_concurrent([(s, e, requests[n].get("cpu_cores", 1)) for n, s, e in spans])
        gpu = _max_concurrent([(s, e, requests[n].get("gpu", 0)) for n, s, e in spans])
        mem = _max_concurrent([(s, e, requests[n].get("memory_gb", 0) * GiB) for n, s, e in spans])
        assert cpu <= cap["cpu"] and gpu <= cap["gpu"] and mem <= cap["memory"], (worker, cpu, gpu, mem, spans)
    # The GPU tasks, one GPU: strictly one after another.
    assert _max_concurrent([(s, e, 1) for n, s, e in by_worker["gpu"] if n.startswith("gpu")]) == 1


def test_impossible_request_fails_fast(pm):
    p = Pipeline("impossible")
    big = Task("needs_4_gpus", span, args=(0.0,), resource_requirements={"cpu_cores": 1, "gpu": 4})
    p.add_tasks([big, Task("after", span, args=(0.0,), depends_on=[big]), Task("fine", span, args=(0.0,))])
    started = time.monotonic()
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    assert time.monotonic() - started < 5.0
    exc = info.value
    assert exc.error_type == "RESOURCE_EXHAUSTION" and exc.task == "needs_4_gpus"
    assert exc.required_resources == {"cpu_cores": 1.0, "gpu": 4}
    assert "gpu=4 (largest offer: 1)" in str(exc)
    assert exc.result.tasks["fine"].status == "succeeded"
    assert exc.result.tasks["after"].status == "upstream_failed"


def test_a_late_worker_unblocks_a_waiting_task(pm, hetero):
    p = Pipeline("late")
    p.add_task(Task("needs_zone_b", span, args=(0.0,), labels={"zone": "b"}))
    p.configure_placement(wait_for_resources_s=60)
    run_id = pm.submit(p)
    # It waits (READY, not failed) while no registered worker has zone=b ...
    eventually(lambda: pm.get_run(run_id).tasks["needs_zone_b"].status == "ready", message="task waits")
    late = hetero.add_worker("late", 1, ["--labels", "zone=b"])
    try:
        result = pm.wait(run_id, timeout_s=30)
        assert result.tasks["needs_zone_b"].worker == "late"
    finally:
        late.terminate()


def test_priorities_are_honoured(pm):
    # Two cores each on a 2-core worker: one at a time, in priority order.
    p = Pipeline("prio")
    for i, prio in enumerate([1, 5, 3, 9, 0]):
        p.add_task(Task(f"t{i}_p{prio}", span, args=(0.05,), priority=prio, labels={"accel": "gpu"},
                        resource_requirements={"cpu_cores": 2}))  # fmt: skip
    result = pm.execute_pipeline(p, monitor=False)
    order = sorted(result.outputs, key=lambda n: result.outputs[n][0])
    assert order == ["t3_p9", "t1_p5", "t2_p3", "t0_p1", "t4_p0"]


def test_execution_plan_with_history_and_a_budget(pm, hetero):
    p = Pipeline("planned")
    a = Task("plan_a", span, args=(0.2,), resource_requirements={"cpu_cores": 1})
    tasks = [a] + [Task(f"plan_b{i}", span, args=(0.2,), depends_on=[a]) for i in range(4)]
    p.add_tasks(tasks)
    pm.execute_pipeline(p, monitor=False)  # history for the plan
    plan = pm.create_execution_plan(p, optimization_strategy="time_optimal", resource_constraints={"cpu_cores": 2})
    assert plan.tasks["plan_a"].duration_samples >= 1
    assert 0.15 < plan.tasks["plan_a"].estimated_duration_s < 2.0
    assert [len(s.tasks) for s in plan.stages] == [1, 2, 2]
    result = pm.execute_with_plan(plan, monitor=False)
    spans = [(s, e, 1.0) for s, e in result.outputs.values()]
    assert _max_concurrent(spans) <= 2  # the plan's constraint held in flight, on 4 cores
    assert not plan.cost_known
    with pytest.warns(UserWarning, match="accepted but not acted on"):
        with pytest.warns(UserWarning, match="cost_budget cannot be checked"):
            pm.execute_distributed(p, cost_budget=0.01, data_size="10TB", monitor=False)


def test_execute_distributed_refuses_a_plan_over_budget(pm, hetero):
    priced = hetero.add_worker("priced", 1, ["--resources", "cpu=1,memory=1Gi", "--labels", "cost_per_hour=3600"])
    try:
        p = Pipeline("pricey")
        p.add_task(Task("one", span, args=(0.0,), labels={"cost_per_hour": "3600"}))
        with pytest.raises(PipelineExecutionError, match=r"estimated cost 1 exceeds cost_budget 0.25 by 0.75") as info:
            pm.execute_distributed(p, cost_budget=0.25, monitor=False)
        assert info.value.plan.estimated_cost == pytest.approx(1.0)
        assert pm.execute_distributed(p, cost_budget=2, monitor=False).succeeded
    finally:
        priced.terminate()
