"""Pure tests of execution plans, pipeline placement options, and the duration history query."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe import Pipeline, PipelineValidationError, Task
from xpipe._cli import main as cli_main
from xpipe._manager import _execution_error
from xpipe._plan import ExecutionPlan, PlanWorker, build_plan, parse_constraints, to_proto_limits
from xpipe._proto import admin_pb2, pipeline_pb2
from xpipe._proto import common_pb2 as pb
from xpipe._result import PipelineResult
from xpipe.coordinator._events import RunRecord, TaskRecord
from xpipe.coordinator._store import SQLiteStore

GiB = 2**30


def f(*args):
    return 1


def ml_pipeline() -> Pipeline:
    """The seed's ML training pipeline, with resource requests."""
    p = Pipeline("ml_training")
    load = Task("load_data", f)
    feat = Task("features", f, depends_on=[load], resource_requirements={"cpu_cores": 2, "memory_gb": 4})
    models = [
        Task(f"train_model_{c}", f, depends_on=[feat], resource_requirements={"cpu_cores": 4, "memory_gb": 8})
        for c in "abc"
    ]
    evaluate = Task("evaluate", f, depends_on=models)
    select = Task("select", f, depends_on=[evaluate])
    deploy = Task("deploy", f, depends_on=[select])
    p.add_tasks([load, feat, *models, evaluate, select, deploy])
    return p


WORKERS = [
    PlanWorker("big", {"cpu_cores": 16, "memory_bytes": 64 * GiB, "gpu": 0}, {"cost_per_hour": "2.0"}, 2.0),
    PlanWorker("small", {"cpu_cores": 4, "memory_bytes": 16 * GiB, "gpu": 0}, {"cost_per_hour": "0.2"}, 0.2),
]


def check_plan(plan: ExecutionPlan, pipeline: Pipeline, limits: dict[str, float]) -> None:
    """Every task once; dependencies in earlier stages; each stage within the constraints."""
    tasks = pipeline.tasks
    seen = [n for s in plan.stages for n in s.tasks]
    assert sorted(seen) == sorted(tasks)
    for stage in plan.stages:
        assert stage.tasks, "empty stage"
        for name in stage.tasks:
            assert plan.tasks[name].stage == stage.index
            for dep in tasks[name].upstream:
                assert plan.tasks[dep].stage < stage.index, f"{name} runs with or before its dependency {dep}"
        for key, cap in limits.items():
            assert stage.peak_resources.get(key, 0.0) <= cap + 1e-6, f"stage {stage.index} exceeds {key}"
    assert plan.estimated_duration_s >= plan.critical_path_s - 1e-9
    path = plan.critical_path
    for a, b in zip(path, path[1:]):
        assert a in tasks[b].upstream
    assert plan.critical_path_s == pytest.approx(sum(plan.tasks[n].estimated_duration_s for n in path))


def test_seed_plan_with_history_constraints_and_costs():
    p = ml_pipeline()
    plan = build_plan(
        p, optimization_strategy="time_optimal", resource_constraints={"cpu_cores": 8, "memory_gb": 32},
        cost_optimization=True, durations={"train_model_b": (30.0, 4)}, workers=WORKERS,
    )  # fmt: skip
    check_plan(plan, p, {"cpu_cores": 8, "memory_bytes": 32 * GiB})
    assert plan.tasks["train_model_b"].estimated_duration_s == 30.0 and plan.tasks["train_model_b"].duration_samples == 4
    assert plan.tasks["deploy"].estimated_duration_s == 1.0 and plan.tasks["deploy"].duration_samples == 0
    assert plan.critical_path == ("load_data", "features", "train_model_b", "evaluate", "select", "deploy")
    assert plan.critical_path_s == 35.0
    # Three 4-core models cannot share one 8-core stage.
    assert max(len(s.tasks) for s in plan.stages) == 2
    assert plan.peak_resources["cpu_cores"] == 8
    # Cheapest fitting worker: a 4-core model is all of "small" (0.2/h) vs a quarter of "big" (0.5/h).
    t = plan.tasks["train_model_b"]
    assert t.worker == "small" and t.estimated_cost == pytest.approx(30 / 3600 * 0.2)
    assert plan.estimated_cost == pytest.approx(sum(x.estimated_cost for x in plan.tasks.values()))
    assert plan.cost_known and plan.placement_strategy == "spread"
    text = str(plan)
    assert "critical path: load_data -> features -> train_model_b" in text and "stage 0" in text
    data = json.loads(plan.to_json())
    assert data["stages"][0]["tasks"] == ["load_data"]
    assert data["tasks"]["train_model_b"]["duration_samples"] == 4
    assert data["resource_constraints"] == {"cpu_cores": 8.0, "memory_bytes": 32.0 * GiB}


def test_without_cost_optimization_the_cost_is_the_mean_over_fitting_workers():
    plan = build_plan(ml_pipeline(), workers=WORKERS)
    t = plan.tasks["train_model_a"]
    assert t.worker is None
    assert t.estimated_cost == pytest.approx((1 / 3600) * (0.2 * 1.0 + 2.0 * 0.25) / 2)


def test_unpriced_workers_and_tasks_that_fit_nowhere_are_reported():
    p = Pipeline("g")
    p.add_task(Task("gpu_job", f, resource_requirements={"gpu": 1}))
    plan = build_plan(p, workers=[PlanWorker("cpu", {"cpu_cores": 4, "memory_bytes": GiB, "gpu": 0})])
    assert not plan.cost_known and plan.estimated_cost == 0
    assert any("'gpu_job'" in w and "fits no registered worker" in w for w in plan.warnings)
    assert "no worker has a cost_per_hour label" in str(plan)


def test_resource_optimal_flattens_the_peak_without_lengthening_the_critical_path():
    p = Pipeline("flat")
    chain = [Task("c0", f)]
    for i in range(1, 4):
        chain.append(Task(f"c{i}", f, depends_on=[chain[-1]]))
    side = [Task(f"s{i}", f, resource_requirements={"cpu_cores": 2}) for i in range(4)]
    p.add_tasks([*chain, *side])
    fast = build_plan(p, optimization_strategy="time_optimal")
    flat = build_plan(p, optimization_strategy="resource_optimal")
    check_plan(fast, p, {})
    check_plan(flat, p, {})
    assert fast.peak_resources["cpu_cores"] == 9  # every side task in stage 0 with c0
    assert flat.peak_resources["cpu_cores"] == 3  # one side task per stage, next to the chain
    assert len(flat.stages) == len(fast.stages) == 4
    assert flat.placement_strategy == "resource_balanced"
    assert build_plan(p, optimization_strategy="cost_optimal").placement_strategy == "pack"


def test_priority_claims_the_early_stage():
    p = Pipeline("prio")
    p.add_tasks([Task("low", f, resource_requirements={"cpu_cores": 4}),
                 Task("high", f, resource_requirements={"cpu_cores": 4}, priority=9)])  # fmt: skip
    plan = build_plan(p, resource_constraints={"cpu_cores": 4})
    assert [s.tasks for s in plan.stages] == [("high",), ("low",)]


def test_bad_plan_arguments_are_named():
    p = ml_pipeline()
    with pytest.raises(PipelineValidationError, match="unknown optimization_strategy 'fastest'"):
        build_plan(p, optimization_strategy="fastest")
    with pytest.raises(PipelineValidationError, match=r"resource_constraints\['cpu_cores'\] must be a finite number > 0"):
        build_plan(p, resource_constraints={"cpu_cores": -1})
    with pytest.raises(PipelineValidationError, match="gives memory twice"):
        parse_constraints({"memory_gb": 1, "memory_mb": 5})
    with pytest.raises(PipelineValidationError, match="must be a dict"):
        parse_constraints([1])
    with pytest.raises(PipelineValidationError, match=r"task 'train_model_a' alone exceeds resource_constraints \(cpu_cores=4 > 2\)"):
        build_plan(p, resource_constraints={"cpu_cores": 2})


def test_constraints_become_run_limits():
    limits = to_proto_limits(parse_constraints({"cpu_cores": 8, "memory_gb": 32, "licenses": 2}))
    assert limits.cpu_cores == 8 and limits.memory_bytes == 32 * GiB and limits.gpu == 0
    assert dict(limits.custom) == {"licenses": 2.0}
    assert build_plan(ml_pipeline()).resource_limits() is None


def test_plan_worker_from_worker_info_reads_the_price_label():
    info = admin_pb2.WorkerInfo(name="w", labels={"cost_per_hour": "1.5", "zone": "a"},
                                resources=pb.Resources(cpu_cores=4, memory_bytes=GiB))  # fmt: skip
    w = PlanWorker.from_info(info)
    assert w.cost_per_hour == 1.5 and w.resources["cpu_cores"] == 4
    assert w.fits({"cpu_cores": 2}, {"zone": "a"}) and not w.fits({"cpu_cores": 2}, {"zone": "b"})
    assert PlanWorker.from_info(admin_pb2.WorkerInfo(name="x", labels={"cost_per_hour": "cheap"})).cost_per_hour == 0


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 18),
    strategy=st.sampled_from(["time_optimal", "resource_optimal", "cost_optimal"]),
    cpu_cap=st.sampled_from([None, 4, 6]),
)
def test_plans_respect_dependencies_and_constraints(data, n, strategy, cpu_cap):
    p = Pipeline("random")
    for i in range(n):
        deps = data.draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        cpu = data.draw(st.sampled_from([0.5, 1, 2, 4]))
        prio = data.draw(st.integers(0, 3))
        p.add_task(Task(f"t{i}", f, depends_on=[f"t{j}" for j in deps], priority=prio,
                        resource_requirements={"cpu_cores": cpu}))  # fmt: skip
    durations = {f"t{i}": (data.draw(st.floats(0.01, 100)), 1) for i in range(n) if data.draw(st.booleans())}
    constraints = {"cpu_cores": cpu_cap} if cpu_cap else None
    plan = build_plan(p, optimization_strategy=strategy, resource_constraints=constraints, durations=durations)
    check_plan(plan, p, {"cpu_cores": cpu_cap} if cpu_cap else {})
    json.loads(plan.to_json())
    assert str(plan)


# ---------------------------------------------------------------------- pipeline options


def test_configure_placement_validates_and_reaches_the_spec():
    p = ml_pipeline()
    assert p.to_proto().placement_strategy == "" and p.to_proto().wait_for_resources_s == 0
    p.configure_placement(strategy="pack", wait_for_resources_s=2.5)
    spec = p.to_proto()
    assert spec.placement_strategy == "pack" and spec.wait_for_resources_s == 2.5
    with pytest.raises(PipelineValidationError, match="unknown placement strategy 'fast'; known: resource_balanced"):
        p.configure_placement(strategy="fast")
    with pytest.raises(PipelineValidationError, match="wait_for_resources_s must be a number of seconds >= 0"):
        p.configure_placement(wait_for_resources_s=-1)
    assert p.placement_strategy == "pack"


def test_resource_exhaustion_error_carries_required_resources():
    err = pb.TaskError(error_type="RESOURCE_EXHAUSTION", message="task 'g' asks for gpu=1, but ...",
                       required_resources=pb.Resources(cpu_cores=2, memory_bytes=2048 * 2**20, gpu=1))  # fmt: skip
    info = pipeline_pb2.RunInfo(
        summary=pipeline_pb2.RunSummary(run_id="r", pipeline="p", state=pb.RUN_FAILED),
        tasks=[pipeline_pb2.TaskInfo(name="g", state=pb.FAILED, attempts=0, error=err, finished_at=1.0)],
    )
    exc = _execution_error(PipelineResult.from_proto(info), info)
    assert exc.error_type == "RESOURCE_EXHAUSTION" and exc.task == "g"
    assert exc.required_resources == {"cpu_cores": 2.0, "memory_mb": 2048.0, "gpu": 1}
    assert "gpu=1" in str(exc)


def test_cli_plan_prints_text_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XPIPE_COORDINATOR", raising=False)
    src = tmp_path / "flow.py"
    src.write_text(
        "from xpipe import Pipeline, Task\n"
        "def f(*a):\n    return 1\n"
        "p = Pipeline('cli_plan')\n"
        "a = Task('a', f)\n"
        "p.add_tasks([a, Task('b', f, depends_on=[a], resource_requirements={'cpu_cores': 3})])\n"
    )
    assert cli_main(["plan", str(src), "--cpu-cores", "4"]) == 0
    out = capsys.readouterr().out
    assert "Execution plan for 'cli_plan'" in out and "critical path: a -> b" in out
    assert cli_main(["plan", f"{src}:p", "--json", "--strategy", "resource_optimal"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimization_strategy"] == "resource_optimal" and [s["tasks"] for s in data["stages"]] == [["a"], ["b"]]
    assert cli_main(["plan", str(src), "--cpu-cores", "2"]) == 2
    assert "alone exceeds resource_constraints" in capsys.readouterr().err


# ---------------------------------------------------------------------- duration history


def test_sqlite_store_task_stats(tmp_path):
    async def go():
        store = SQLiteStore(tmp_path / "x.db")
        async with store:
            assert await store.task_stats(["a"]) == {}
            records = [RunRecord("r1", "p", pb.RUN_SUCCEEDED, 0.0, 9.0, 3, pb.PipelineSpec(name="p")),
                       RunRecord("r2", "p", pb.RUN_FAILED, 0.0, 9.0, 3, pb.PipelineSpec(name="p"))]  # fmt: skip
            records += [
                TaskRecord("r1", "a", pb.SUCCEEDED, 1, "w", 10.0, 12.0),
                TaskRecord("r2", "a", pb.SUCCEEDED, 1, "w", 20.0, 24.0),
                TaskRecord("r1", "b", pb.FAILED, 1, "w", 10.0, 50.0),  # failures do not count
                TaskRecord("r2", "b", pb.SUCCEEDED, 1, "w", 0.0, 5.0),  # never started: no duration
                TaskRecord("r1", "c", pb.SUCCEEDED, 1, "w", 1.0, 1.5),
            ]
            await store.commit(records)
            return await store.task_stats(["a", "b", "c", "zzz"] + [f"n{i}" for i in range(1200)])

    stats = asyncio.run(go())
    assert stats == {"a": (3.0, 2), "c": (0.5, 1)}
