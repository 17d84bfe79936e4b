"""Autoscaling on real processes: the local and command providers, the resource manager,
``scale_up_resources`` and a pipeline's settings (docs/autoscaling.md).

Each coordinator decides every 0.3 s with short cooldowns and sizes by slots only
(``--autoscale-ignore-cpu``): the machine's CPU is shared with other tests.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import tests.helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, RequestRejectedError, Task

FAST = ["--autoscale-interval", "0.3", "--autoscale-scale-up-cooldown", "0.5", "--autoscale-ignore-cpu"]
SLEEP = ht.sleep


def local_args(tmp_path: Path, *, min_workers: int, max_workers: int, down_cooldown_s: float = 1.0,
               extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    worker_args = ["--slots", "1", "--grace-s", "3", "--import", "tests.helpers_tasks", "--log-level", "WARNING"]
    return ["--autoscale-provider", "local", "--autoscale-min-workers", str(min_workers),
            "--autoscale-max-workers", str(max_workers), "--autoscale-scale-down-cooldown", str(down_cooldown_s),
            "--autoscale-worker-args", shlex.join(worker_args), *FAST, *extra]  # fmt: skip


def live(cluster: Cluster) -> list:
    return [w for w in cluster.list_workers() if w.state in ("ready", "busy")]


def worker_processes(cluster: Cluster) -> list[psutil.Process]:
    """The xpipe-worker processes the coordinator started (its children)."""
    coordinator = psutil.Process(cluster.coordinator.pid)
    out = []
    for child in coordinator.children():
        try:
            if "xpipe.worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, workers=0, coordinator_args=local_args(tmp_path, min_workers=1, max_workers=3)) as c:
        yield c


def sleepers(name: str, n: int, seconds: float) -> Pipeline:
    p = Pipeline(name)
    p.add_tasks([Task(f"s{i}", SLEEP, args=(seconds,)) for i in range(n)])
    return p


def gone(pids: list[int]) -> bool:
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(running(pid) for pid in pids)


def test_the_local_providers_workers_stop_with_the_coordinator(tmp_path: Path):
    args = local_args(tmp_path, min_workers=2, max_workers=2)
    with Cluster(tmp_path, workers=0, coordinator_args=args) as c:
        eventually(lambda: len(live(c)) == 2, timeout_s=30, message="min_workers=2 started")
        pids = [p.pid for p in worker_processes(c)]
        assert len(pids) == 2
        c.coordinator.terminate()  # SIGTERM: the coordinator drains and reaps its workers first
        assert c.coordinator.returncode == 0
    # Orphans would escape the leak check (they are no longer our descendants): look for them by pid.
    assert gone(pids)


def test_local_provider_scales_up_under_a_backlog_and_down_by_draining(local_cluster: Cluster):
    c = local_cluster
    eventually(lambda: len(live(c)) == 1, timeout_s=30, message="min_workers=1 started")
    with PipelineManager(coordinator=c.address) as pm:
        run_id = pm.submit(sleepers("backlog", 6, 2.0))
        eventually(lambda: len(live(c)) == 3, timeout_s=40, message="scaled up to max_workers=3")
        assert len(worker_processes(c)) == 3
        assert pm.wait(run_id, timeout_s=60).status == "succeeded"
        # Idle: two are drained (they leave by themselves), then reaped; never below min.
        eventually(lambda: len(live(c)) == 1 and sum(w.state == "drained" for w in c.list_workers()) == 2,
                   timeout_s=30, message="drained down to min_workers=1")  # fmt: skip
        eventually(lambda: len(worker_processes(c)) == 1, timeout_s=20, message="drained workers exited")
        usage = pm.get_resource_manager().get_current_usage()
        assert (usage.workers, usage.provider, usage.min_workers, usage.max_workers) == (1, "local", 1, 3)
    log = c.coordinator.log_text()
    assert "autoscaler: up to" in log and "autoscaler: down to 1 workers" in log


RECORDER = r"""
import json, os, sys
calls = sys.argv[1]
n = sum(1 for _ in open(calls)) if os.path.exists(calls) else 0
with open(calls, "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "desired": os.environ.get("XPIPE_DESIRED_WORKERS"),
                        "remove": os.environ.get("XPIPE_REMOVE_WORKERS"),
                        "action": os.environ.get("XPIPE_AUTOSCALE_ACTION"),
                        "resources": os.environ.get("XPIPE_WORKER_RESOURCES")}) + "\n")
if n == 0:
    print("cloud API said no", file=sys.stderr)
    sys.exit(3)
print("node-%d" % n)
"""


def test_command_provider_runs_the_script_with_desired_and_drained_workers(tmp_path: Path):
    import json

    script = tmp_path / "scale.py"
    script.write_text(RECORDER)
    calls = tmp_path / "calls.jsonl"
    command = shlex.join([sys.executable, str(script), str(calls)])
    args = ["--autoscale-provider", "command", "--autoscale-command", command, "--autoscale-min-workers", "1",
            "--autoscale-max-workers", "4", "--autoscale-scale-down-cooldown", "0.5", *FAST]  # fmt: skip
    with Cluster(tmp_path, workers=2, slots=1, coordinator_args=args) as c:

        def recorded() -> list[dict]:
            return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

        # Two idle workers, min 1: one is drained; once it left, the script is told it may go.
        def told_to_remove() -> dict | None:
            return next((r for r in recorded() if r["remove"]), None)

        call = eventually(told_to_remove, timeout_s=30, message="the script named the drained worker")
        drained = [w.worker_id for w in c.list_workers() if w.state == "drained"]
        assert call["remove"] == drained[0] and call["argv"] == ["scale", "1", drained[0]]
        assert call["desired"] == "1" and call["action"] == "scale"
        # The first call failed (exit 3); the loop went on calling.
        assert recorded()[0]["argv"][0] == "scale" and len(recorded()) >= 2
        log = c.coordinator.log_text()
        assert "exited with code 3: cloud API said no" in log and "asked again next interval" in log
        # scale_up_resources goes to the script as `add SPEC` and names what it printed.
        with PipelineManager(coordinator=c.address) as pm:
            added = pm.scale_up_resources({"cpu_cores": 4, "memory_mb": 2048})
        assert added.resources == f"cpu=4,memory={2048 * 2**20}"
        (index, add), *_ = [(i, r) for i, r in enumerate(recorded()) if r["action"] == "add"]
        assert add["argv"] == ["add", added.resources] and add["resources"] == added.resources
        assert added.worker == f"node-{index}"  # the first line the script printed


def test_resource_manager_usage_increase_and_reduce_and_the_seed_policy(tmp_path: Path):
    # A long scale-down cooldown: the idle workers asked for are not drained by the rule meanwhile.
    args = local_args(tmp_path, min_workers=1, max_workers=3, down_cooldown_s=600)
    with Cluster(tmp_path, workers=0, coordinator_args=args) as c:
        _resource_manager_flow(c)


def _resource_manager_flow(c: Cluster) -> None:
    eventually(lambda: len(live(c)) == 1, timeout_s=30, message="min_workers=1 started")
    with PipelineManager(coordinator=c.address) as pm:
        resource_manager = pm.get_resource_manager()
        usage = resource_manager.get_current_usage()
        assert (usage.workers, usage.slots, usage.busy_slots, usage.queue_backlog) == (1, 1, 0, 0)
        assert 0.0 <= usage.memory_utilization <= 1.0
        with pytest.raises(ValueError, match=r"increase_resources: factor=0.5 must be at least 1"):
            resource_manager.increase_resources(0.5)
        with pytest.raises(ValueError, match=r"reduce_resources: factor=1.5"):
            resource_manager.reduce_resources(1.5)
        grown = resource_manager.increase_resources(factor=5)
        assert (grown.workers, grown.desired, grown.max_workers) == (1, 3, 3)  # capped at max_workers
        eventually(lambda: len(live(c)) == 3, timeout_s=40, message="increase_resources reached 3 workers")

        # The seed's sample, as written (its interval is the default; its first call is at once).
        @resource_manager.optimize_continuously
        def resource_optimization_loop():
            current_usage = resource_manager.get_current_usage()

            if current_usage.cpu_utilization < 0.5:
                # Scale down
                resource_manager.reduce_resources(factor=0.8)
            elif current_usage.queue_backlog > 100:
                # Scale up
                resource_manager.increase_resources(factor=1.5)

        (policy,) = resource_manager.policies
        eventually(lambda: policy.calls >= 1, timeout_s=10)
        # CPU below 0.5 reduced 3 -> 2 workers; CPU above (a busy machine) leaves 3: either way no error.
        assert policy.errors == 0
        eventually(lambda: len(live(c)) in (2, 3), timeout_s=20)
        shrunk = resource_manager.reduce_resources(0.1)
        assert shrunk.desired == 1  # never below min_workers
        eventually(lambda: len(live(c)) == 1, timeout_s=30, message="reduce_resources drained to min_workers")
    assert not policy._thread.is_alive()  # pm.close() stopped the policy


def test_optimize_continuously_keeps_running_after_a_policy_error(cluster: Cluster):
    with PipelineManager(coordinator=cluster.address) as pm:
        rm = pm.get_resource_manager()
        seen: list[int] = []

        @rm.optimize_continuously(interval_s=0.05)
        def policy():
            seen.append(rm.get_current_usage().workers)
            if len(seen) == 1:
                raise RuntimeError("first call fails")

        (loop,) = rm.policies
        eventually(lambda: loop.calls >= 3, timeout_s=10, message="the policy ran on after its error")
        assert loop.errors == 1 and str(loop.last_error) == "first call fails"
        assert seen[-1] == 2  # the cluster fixture's two workers
        # Without a provider the coordinator says how to get one.
        with pytest.raises(RequestRejectedError, match="FAILED_PRECONDITION: .* --autoscale-provider"):
            rm.increase_resources(2)
        with pytest.raises(RequestRejectedError, match="FAILED_PRECONDITION: .* --autoscale-provider"):
            pm.scale_up_resources({"cpu_cores": 1})
        with pytest.raises(ValueError, match="interval_s=0"):
            rm.optimize_continuously(interval_s=0)
    assert not loop._thread.is_alive()


def test_scale_up_resources_adds_a_worker_that_runs_the_waiting_task(tmp_path: Path):
    args = local_args(tmp_path, min_workers=1, max_workers=2, down_cooldown_s=600)
    with Cluster(tmp_path, workers=0, coordinator_args=args) as c:
        eventually(lambda: len(live(c)) == 1, timeout_s=30, message="min_workers=1 started")
        with PipelineManager(coordinator=c.address) as pm:
            p = Pipeline("big")
            p.add_task(Task("crunch", SLEEP, args=(0.1,), resource_requirements={"cpu_cores": 64, "memory_mb": 512}))
            p.configure_placement(wait_for_resources="60s")
            run_id = pm.submit(p)
            added = pm.scale_up_resources({"cpu_cores": 64, "memory_mb": 512})
            assert added.resources == f"cpu=64,memory={512 * 2**20}"
            assert pm.wait(run_id, timeout_s=60).status == "succeeded"
            (big,) = [w for w in c.list_workers() if w.worker_id == added.worker]
            assert big.resources.cpu_cores == 64 and big.resources.memory_bytes >= 512 * 2**20
            # At max_workers=2 now: the next one is refused, naming the bound.
            with pytest.raises(RequestRejectedError, match="RESOURCE_EXHAUSTED: the cluster is at max_workers=2"):
                pm.scale_up_resources({"cpu_cores": 2})
            with pytest.raises(ValueError, match="cpu_cores"):
                pm.scale_up_resources({"cpu_cores": -1})


def test_a_pipelines_settings_bound_the_cluster_while_it_runs(tmp_path: Path):
    args = local_args(tmp_path, min_workers=1, max_workers=1, extra=("--autoscale-ceiling-workers", "2"))
    with Cluster(tmp_path, workers=0, coordinator_args=args) as c:
        eventually(lambda: len(live(c)) == 1, timeout_s=30, message="min_workers=1 started")
        with PipelineManager(coordinator=c.address) as pm:
            p = sleepers("wide", 6, 1.5)  # 9 s on one worker: the second one joins well before the end
            p.configure_auto_scaling(min_workers=2, max_workers=50, scale_up_threshold=0.8,
                                     scale_down_threshold=0.3, scale_up_cooldown="5min", scale_down_cooldown="1s")  # fmt: skip
            run_id = pm.submit(p)
            # min 2 applies at once; max 50 is capped by the ceiling (2).
            eventually(lambda: len(live(c)) == 2, timeout_s=40, message="the pipeline's min_workers=2 applied")
            assert pm.get_resource_manager().get_current_usage().max_workers == 2
            assert pm.wait(run_id, timeout_s=60).status == "succeeded"
            # Its run ended: the cluster's max 1 applies again, by draining.
            eventually(lambda: len(live(c)) == 1, timeout_s=30, message="back to the cluster's max_workers=1")


def test_the_embedded_default_grows_for_a_pipelines_settings_and_shrinks_after(tmp_path: Path):
    def live_embedded(pm: PipelineManager) -> list:
        return [w for w in pm.client.list_workers() if w.state in ("ready", "busy")]

    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "embedded") as pm:
        assert pm.get_resource_manager().get_current_usage().provider == "local"
        p = sleepers("grow", 6, 1.5)  # 9 s on one worker: the second one joins well before the end
        p.configure_auto_scaling(min_workers=2, max_workers=2, scale_up_threshold=0.8, scale_down_threshold=0.3,
                                 scale_up_cooldown="1s", scale_down_cooldown="1s")  # fmt: skip
        run_id = pm.submit(p)
        eventually(lambda: len(live_embedded(pm)) == 2, timeout_s=40, message="the embedded default grew to 2")
        assert pm.wait(run_id, timeout_s=60).status == "succeeded"
        # Its run ended: the configured worker count (1) applies again, by draining one.
        eventually(lambda: len(live_embedded(pm)) == 1, timeout_s=30, message="the embedded default shrank to 1")


FAILING_RECORDER = r"""
import sys
with open(sys.argv[1], "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\n")
sys.exit(1)  # always fails: the leader's loop calls again every interval
"""


def test_only_the_leader_scales_and_a_new_leader_takes_over(tmp_path: Path, etcd):
    import grpc

    from tests.harness import Proc, free_ports
    from xpipe._proto import admin_pb2, admin_pb2_grpc

    script = tmp_path / "scale.py"
    script.write_text(FAILING_RECORDER)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    coordinators = []
    try:
        for i, address in enumerate(addresses):
            command = shlex.join([sys.executable, str(script), str(tmp_path / f"calls-{i}")])
            argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", address, "--data-dir", str(tmp_path / f"c{i}"),
                    "--store", f"etcd://{etcd.endpoint}", "--cluster", "autoscale-ha", "--lease-ttl-s", "2",
                    "--artifact-dir", str(tmp_path / "artifacts"), "--autoscale-provider", "command",
                    "--autoscale-command", command, *FAST]  # fmt: skip
            coordinators.append(Proc(f"coordinator{i}", argv, log_dir=tmp_path / "logs"))

        def leader() -> str:
            with grpc.insecure_channel(addresses[0]) as channel:
                status = admin_pb2_grpc.AdminServiceStub(channel).GetClusterStatus(
                    admin_pb2.GetClusterStatusRequest(), timeout=2.0)  # fmt: skip
            return status.leader_address if status.leader_address in addresses else ""

        first = eventually(leader, timeout_s=30, message="a leader is elected")
        lead, follow = addresses.index(first), 1 - addresses.index(first)

        def calls(i: int) -> list[str]:
            path = tmp_path / f"calls-{i}"
            return path.read_text().splitlines() if path.exists() else []

        # Five intervals of the leader asking (and failing): the follower asked nothing meanwhile.
        eventually(lambda: len(calls(lead)) >= 5, timeout_s=30, message="the leader's loop calls its provider")
        assert calls(lead)[0] == "scale 1" and calls(follow) == []
        coordinators[lead].kill()
        eventually(lambda: len(calls(follow)) >= 1, timeout_s=30, message="the new leader's loop took over")
        assert calls(follow)[0] == "scale 1"
    finally:
        for proc in coordinators:
            proc.terminate(timeout_s=5)
