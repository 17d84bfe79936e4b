"""Dynamic fan-out on real processes: a coordinator, workers, the CLI and the embedded default."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Cluster, EtcdServer, child_env, eventually
from xpipe import Pipeline, PipelineManager, Task
from xpipe.errors import PipelineExecutionError

# ---- task functions (module level: workers import them by path) ----------------------


def numbers(n=6):
    return list(range(n))


def regions():
    return {"eu": 3, "us": 5, "apac": 7}


def square(x):
    return x * x


def total(values):
    return sum(values)


def rows():
    days = ["2024-05-02", "2024-05-01", "2024-05-02", "2024-06-30", "2024-05-01"]
    return [{"date": d, "region": "eu" if i % 2 else "us", "v": i} for i, d in enumerate(days)]


def count_rows(part):
    return len(part)


def sum_v(part):
    return sum(r["v"] for r in part)


def thirds(value):
    """A callable splitter: three slices."""
    k = -(-len(value) // 3)
    return [value[i : i + k] for i in range(0, len(value), k)]


def timed(x, log_dir):
    """Record start and end times in a file, so the test can count overlaps."""
    start = time.time()
    time.sleep(0.4)
    Path(log_dir, f"{x}.json").write_text(json.dumps([start, time.time()]))
    return x


def flaky(x, marker_dir):
    """Fail the first attempt of partition 2 only."""
    marker = Path(marker_dir, f"tried-{x}")
    if x == 2 and not marker.exists():
        marker.write_text("once")
        raise RuntimeError(f"partition {x} fails once")
    return x + 100


def broken(x):
    if x == 3:
        raise ValueError(f"partition {x} is bad")
    return x


def total_len(blobs):
    return sum(len(b) for b in blobs)


def scalar():
    return 42


def counted(x, log_dir, delay_s=0.3):
    """Count runs per partition in files; sleep so a restart lands mid-fan-out."""
    with open(Path(log_dir, f"ran-{x}"), "a") as f:
        f.write("x")
    time.sleep(delay_s)
    return x * 10


@pytest.fixture
def pm(cluster):
    manager = PipelineManager(coordinator=cluster.address)
    yield manager
    manager.close()


# ---- tests --------------------------------------------------------------------------------


def test_list_and_dict_fan_out_keep_partition_order(pm):
    p = Pipeline("fan")
    src, by_region = Task("src", numbers), Task("regions", regions)
    sq = Task.map("square", square, over=src, parallelism=3)
    sq_regions = Task("sq_regions", square, depends_on=[by_region], expand=True)
    p.add_tasks([src, by_region, sq, sq_regions, Task("total", total, depends_on=[sq])])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.outputs["square"] == [0, 1, 4, 9, 16, 25]
    out = result.outputs["sq_regions"]
    assert out == {"eu": 9, "us": 25, "apac": 49} and list(out) == ["eu", "us", "apac"]
    assert result.outputs["total"] == 55
    run = pm.get_run(result.run_id)
    subs = [n for n in run.tasks if n.startswith("square[")]
    assert subs == [f"square[{i}]" for i in range(6)]
    assert all(run.tasks[n].status == "succeeded" for n in subs)
    by_name = {t.name: t for t in pm.client.get_run(result.run_id).tasks}
    assert (by_name["square[4]"].map_parent, by_name["square[4]"].map_index) == ("square", 4)
    assert by_name["square"].map_parent is None and by_name["square"].map_index is None


def test_each_splitter_and_a_callable_splitter(pm):
    p = Pipeline("splitters")
    src = Task("rows", rows)
    p.add_tasks([
        src,
        Task("by_date", count_rows, depends_on=[src], partitioning_strategy="by_date"),
        Task("by_month", count_rows, depends_on=[src], partitioning_strategy=("by_date", {"period": "month"})),
        Task("by_key", sum_v, depends_on=[src], partitioning_strategy=("by_key", {"field": "region"})),
        Task("round_robin", count_rows, depends_on=[src], parallelism=2, partitioning_strategy="round_robin"),
        Task("by_size", count_rows, depends_on=[src], partitioning_strategy=("by_size", {"size": 2})),
        Task("thirds", count_rows, depends_on=[src], partitioning_strategy=thirds),
    ])  # fmt: skip
    out = pm.execute_pipeline(p, monitor=False).outputs
    assert out["by_date"] == {"2024-05-01": 2, "2024-05-02": 2, "2024-06-30": 1}
    assert out["by_month"] == {"2024-05": 4, "2024-06": 1}
    assert out["by_key"] == {"us": 0 + 2 + 4, "eu": 1 + 3}
    assert out["round_robin"] == [3, 2]
    assert out["by_size"] == [2, 2, 1]
    assert out["thirds"] == [2, 2, 1]


def test_parallelism_caps_sub_tasks_in_flight(pm, tmp_path):
    # Two workers with two slots each could run four at once; parallelism allows two.
    log_dir = tmp_path / "times"
    log_dir.mkdir()
    p = Pipeline("capped")
    src = Task("src", numbers)
    p.add_tasks([src, Task("timed", timed, depends_on=[src], args=(str(log_dir),), parallelism=2)])
    assert pm.execute_pipeline(p, monitor=False).outputs["timed"] == list(range(6))
    spans = [json.loads(f.read_text()) for f in log_dir.iterdir()]
    assert len(spans) == 6
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2, spans  # never more than 2, and the cap was reached (they did overlap)


def test_a_failing_sub_task_is_retried_then_succeeds(pm, tmp_path):
    p = Pipeline("flaky")
    src = Task("src", numbers, args=(4,))
    p.add_tasks([src, Task.map("flaky", flaky, over=src, args=(str(tmp_path),), max_retries=1)])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.outputs["flaky"] == [100, 101, 102, 103]
    run = pm.get_run(result.run_id)
    assert run.tasks["flaky[2]"].attempts == 2 and run.tasks["flaky[0]"].attempts == 1


def test_a_sub_task_failing_for_good_fails_the_run(pm):
    p = Pipeline("broken")
    src = Task("src", numbers, args=(5,))
    mapped = Task.map("broken", broken, over=src, parallelism=1)
    p.add_tasks([src, mapped, Task("total", total, depends_on=[mapped])])
    with pytest.raises(PipelineExecutionError) as info:
        pm.execute_pipeline(p, monitor=False)
    run = info.value.result
    states = {n: t.status for n, t in run.tasks.items()}
    assert states["broken[3]"] == "failed"
    assert states["broken"] == "failed" and states["total"] == "upstream_failed"
    assert states["broken[4]"] == "cancelled"  # parallelism 1: released only after [3], so never ran
    assert all(states[f"broken[{i}]"] == "succeeded" for i in range(3))
    assert "sub-task 'broken[3]' failed" in run.tasks["broken"].error
    assert "partition 3 is bad" in run.tasks["broken"].error
    assert run.status == "failed"


def test_non_list_upstream_without_splitter_is_a_clear_task_error(pm):
    p = Pipeline("scalar")
    src = Task("src", scalar)
    p.add_tasks([src, Task.map("sq", square, over=src)])
    with pytest.raises(PipelineExecutionError, match=r"task 'sq' fans out over the upstream result, which must be "
                                                     r"a list, tuple or dict .*; got int"):
        pm.execute_pipeline(p, monitor=False)


def test_sub_tasks_show_in_cli_status_json(cluster, pm):
    p = Pipeline("cli_fan")
    src = Task("src", numbers, args=(3,))
    p.add_tasks([src, Task.map("sq", square, over=src)])
    result = pm.execute_pipeline(p, monitor=False)
    env = child_env({"XPIPE_COORDINATOR": cluster.address})
    out = subprocess.run([sys.executable, "-m", "xpipe._cli", "status", result.run_id, "--json"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    tasks = json.loads(out.stdout)["tasks"]
    assert [n for n in tasks if n.startswith("sq[")] == ["sq[0]", "sq[1]", "sq[2]"]
    assert tasks["sq"]["status"] == "succeeded" and tasks["sq[1]"]["status"] == "succeeded"


def noise(seed):
    """300 KiB of incompressible bytes: over the artifact threshold."""
    return random.Random(seed).randbytes(300 * 1024)


def test_big_partitions_and_big_sub_task_results_travel_by_artifact_reference(pm, cluster):
    blob = os.urandom(300 * 1024)  # over the artifact threshold, incompressible
    p = Pipeline("big_parts")
    src = Task("src", lambda: [blob, b"small", blob])
    size = Task.map("size", len, over=src)
    seeds = Task("seeds", numbers, args=(2,))
    big = Task.map("big", noise, over=seeds)
    p.add_tasks([src, size, seeds, big, Task("sizes", total_len, depends_on=[big])])
    result = pm.execute_pipeline(p, monitor=False)
    assert result.outputs["size"] == [len(blob), 5, len(blob)]
    assert result.outputs["big"] == [noise(0), noise(1)]  # the client gets the bytes, not references
    assert result.outputs["sizes"] == 2 * 300 * 1024  # and so does the downstream task
    stored = {f.name for f in (cluster.data_dir / "artifacts" / result.run_id).iterdir()}
    assert {"size.part0.1", "size.part2.1", "big[0].1", "big[1].1"} <= stored, stored


def _restart_mid_fan_out(c: Cluster, log_dir: Path) -> None:
    with PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("restart_fan")
        src = Task("src", numbers, args=(8,))
        p.add_tasks([src, Task.map("c", counted, over=src, args=(str(log_dir),), parallelism=1)])
        run_id = pm.submit(p)

        def third_done() -> bool:
            sub = pm.get_run(run_id).tasks.get("c[2]")
            return sub is not None and sub.status == "succeeded"

        eventually(third_done, timeout_s=60, message="c[2] succeeded")
        assert pm.get_run(run_id).tasks["c"].status == "mapped"
        c.coordinator.kill()
        c.restart_coordinator()
        result = pm.wait(run_id, timeout_s=90)
        assert result.succeeded and result.outputs["c"] == [i * 10 for i in range(8)]
    runs = {f.name: len(f.read_text()) for f in log_dir.iterdir()}
    assert all(runs[f"ran-{i}"] == 1 for i in range(3)), runs  # finished before the kill: not run again
    assert sorted(runs) == sorted(f"ran-{i}" for i in range(8))


def test_coordinator_restart_mid_fan_out_loses_no_finished_sub_task(tmp_path):
    log_dir = tmp_path / "ran"
    log_dir.mkdir()
    with Cluster(tmp_path, workers=1, slots=1) as c:
        _restart_mid_fan_out(c, log_dir)


def test_restart_mid_fan_out_on_the_etcd_store(tmp_path):
    log_dir = tmp_path / "ran"
    log_dir.mkdir()
    etcd = EtcdServer(tmp_path)
    etcd.start()
    try:
        with Cluster(tmp_path, workers=1, slots=1, coordinator_args=("--store", f"etcd://{etcd.endpoint}")) as c:
            _restart_mid_fan_out(c, log_dir)
    finally:
        etcd.stop()


# ---- the seed's DistributedDataProcessor sample, with its one missing depends_on ---------


def partition_large_dataset():
    start = dt.date(2024, 1, 1)
    return [{"date": (start + dt.timedelta(days=i % 5)).isoformat(), "amount": i} for i in range(50)]


def aggregate_results(per_day):
    return {"days": len(per_day), "rows": sum(p["rows"] for p in per_day.values()),
            "amount": sum(p["amount"] for p in per_day.values())}  # fmt: skip


class DistributedDataProcessor(Task):
    def __init__(self):
        super().__init__("process_partition", depends_on=[data_partitioning])  # the line the seed misses
        self.partitioning_strategy = "by_date"
        self.parallelism = 20

    def process_partition(self, partition_data):
        # Process data partition
        processed = self.transform_data(partition_data)
        return self.validate_output(processed)

    def transform_data(self, rows):
        return [dict(r, amount=r["amount"] * 2) for r in rows]

    def validate_output(self, rows):
        assert all(r["amount"] % 2 == 0 for r in rows)
        return {"rows": len(rows), "amount": sum(r["amount"] for r in rows)}


data_partitioning = Task("partition", partition_large_dataset)


def test_seed_distributed_sample_runs_on_the_embedded_default():
    distributed_config = {
        "cluster_mode": "kubernetes",
        "worker_nodes": 5,
        "resource_allocation": {"cpu_per_worker": 4, "memory_per_worker": "8Gi", "gpu_enabled": True},
        "fault_tolerance": {"enable_checkpointing": True, "checkpoint_interval": "30s", "max_retries": 3,
                            "failure_recovery": "automatic"},
    }  # fmt: skip
    with pytest.warns(UserWarning):
        distributed_pm = PipelineManager(distributed_config)
    with distributed_pm:
        big_data_pipeline = Pipeline("large_scale_etl")
        distributed_processing = DistributedDataProcessor()
        result_aggregation = Task("aggregate", aggregate_results, depends_on=[distributed_processing])
        big_data_pipeline.add_tasks([data_partitioning, distributed_processing, result_aggregation])
        with pytest.warns(UserWarning, match="data_size"):
            cluster_result = distributed_pm.execute_distributed(
                big_data_pipeline, data_size="10TB", estimated_duration="2h", cost_budget=100.00
            )
    assert cluster_result.succeeded
    assert cluster_result.outputs["aggregate"] == {"days": 5, "rows": 50, "amount": 2 * sum(range(50))}
    assert sorted(n for n in cluster_result.tasks if n.startswith("process_partition[")) == [
        f"process_partition[{i}]" for i in range(5)
    ]


def test_fanout_bench_runs_at_a_small_size():
    """``python -m bench.fanout`` end to end (both modes), small: it runs and reports its figures."""
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "bench.fanout", "--tasks", "200", "--repeat", "1", "--json"],
                         cwd=repo, env=child_env(), capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["tasks"] == 200
    for mode in ("engine", "cluster"):
        figures = doc[mode]
        assert figures["wide_tasks_per_s"] > 0 and figures["mapped_tasks_per_s"] > 0
        assert figures["ratio"] == pytest.approx(figures["mapped_tasks_per_s"] / figures["wide_tasks_per_s"])
