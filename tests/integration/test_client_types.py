"""The public Client and PipelineManager speak dataclasses, against a real coordinator and workers.

Also: a SIGKILLed worker shows in ``get_cluster_status().unhealthy_nodes`` once its heartbeat
deadline passes, and ``recover_unhealthy_nodes`` forgets it (and reports what it could not).
"""

from __future__ import annotations

import json

import pytest

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import (
    Client,
    ClusterStatus,
    NodeRecovery,
    Pipeline,
    PipelineManager,
    RunInfo,
    RunSummary,
    Task,
    TaskInfo,
    WorkerInfo,
)
from xpipe._cli import main as cli_main
from xpipe._types import RunEvent

HEARTBEAT_TIMEOUT_S = 1.5
ARGS = ("--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--heartbeat-interval-s", "0.25")


def _pipeline() -> Pipeline:
    p = Pipeline("typed")
    one = Task("one", ht.add, args=(1, 2))
    p.add_tasks([one, Task("two", ht.double, depends_on=[one])])
    return p


def test_client_methods_return_dataclasses_with_the_right_values(tmp_path):
    with Cluster(tmp_path, workers=1, slots=2) as c, Client(c.address) as client:
        events = list(client.submit_and_watch(_pipeline(), results_on_end=True, timeout_s=30))
        assert all(isinstance(e, RunEvent) for e in events)
        run_id = events[0].summary.run_id
        assert events[-1].summary.state == "SUCCEEDED"
        assert {t.name: t.result for t in events[-1].changed} == {"one": 3, "two": 6}

        info = client.get_run(run_id, include_results=True)
        assert isinstance(info, RunInfo) and info.state == "SUCCEEDED"
        two = info.task("two")
        assert isinstance(two, TaskInfo)
        assert (two.state, two.attempts, two.worker, two.result) == ("SUCCEEDED", 1, "w0", 6)
        assert 0 < two.started_at <= two.finished_at
        assert client.get_run(run_id).task("two").has_result is False  # not asked for

        assert client.task_result(run_id, "one").value == 3

        run_id2 = client.submit(_pipeline())
        (last,) = [e for e in client.watch(run_id2, summary_only=True, timeout_s=30) if e.summary.finished]
        assert last.summary.state == "SUCCEEDED" and last.changed == ()

        runs = client.list_runs(10)
        assert [r.run_id for r in runs] == [run_id2, run_id]
        assert all(isinstance(r, RunSummary) for r in runs)
        assert (runs[0].pipeline, runs[0].total_tasks, runs[0].succeeded_tasks) == ("typed", 2, 2)
        with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
            client.list_runs(0)

        (worker,) = client.list_workers()
        assert isinstance(worker, WorkerInfo)
        assert (worker.name, worker.state, worker.slots, worker.running) == ("w0", "ready", 2, 0)
        assert worker.resources["cpu_cores"] > 0 and worker.last_heartbeat > 0

        status = client.cluster_status()
        assert isinstance(status, ClusterStatus)
        assert (status.leader, status.workers, status.unhealthy_nodes, status.active_runs) == (c.address, 1, (), 0)

        with pytest.raises(TypeError, match="expected a Pipeline, got dict"):
            client.submit({"name": "nope"})  # type: ignore[arg-type]


def test_a_killed_worker_is_unhealthy_then_forgotten(tmp_path, capsys):
    with Cluster(tmp_path, workers=2, slots=1, coordinator_args=ARGS) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        assert pm.get_cluster_status().unhealthy_nodes == ()
        c.workers["w1"].kill()
        eventually(lambda: "w1" in pm.get_cluster_status().unhealthy_nodes, timeout_s=HEARTBEAT_TIMEOUT_S + 10,
                   message="killed w1 never listed as unhealthy")  # fmt: skip
        eventually(lambda: {w.name: w.state for w in pm.client.list_workers()}["w1"] == "lost",
                   timeout_s=HEARTBEAT_TIMEOUT_S + 10, message="killed w1 never lost after its deadline")  # fmt: skip
        status = pm.get_cluster_status()
        assert (status.unhealthy_nodes, status.workers) == (("w1",), 1)
        with pytest.warns(DeprecationWarning):
            assert status["workers"] == 1  # the old dict access, for a while

        with pytest.raises(TypeError, match="list of worker names"):
            pm.recover_unhealthy_nodes("w1")  # type: ignore[arg-type]
        assert pm.client.forget_workers(["w0", "nobody"]) == NodeRecovery((), healthy=("w0",), unknown=("nobody",))
        assert pm.recover_unhealthy_nodes() == NodeRecovery(forgotten=("w1",), healthy=(), unknown=())  # every one
        eventually(lambda: [w.name for w in pm.client.list_workers()] == ["w0"], timeout_s=5,
                   message="w1 still listed after it was forgotten")  # fmt: skip
        assert pm.get_cluster_status().unhealthy_nodes == ()
        assert pm.recover_unhealthy_nodes(["w1", "w0"]) == NodeRecovery((), healthy=("w0",), unknown=("w1",))
        assert pm.execute_pipeline(_pipeline(), monitor=False, timeout_s=30).outputs == {"one": 3, "two": 6}

        address = ["--coordinator", c.address, "--json"]
        capsys.readouterr()
        assert cli_main(["forget", "w1", *address]) == 1  # gone now: unknown, and the exit code says so
        assert json.loads(capsys.readouterr().out) == {"forgotten": [], "healthy": [], "unknown": ["w1"]}
        assert cli_main(["cluster", *address]) == 0
        assert json.loads(capsys.readouterr().out)["unhealthy_nodes"] == []
        assert cli_main(["workers", *address]) == 0
        (w0,) = json.loads(capsys.readouterr().out)
        assert (w0["name"], w0["slots"], w0["resources"]["cpu"] > 0) == ("w0", 1, True)
        assert cli_main(["runs", *address]) == 0
        (run,) = json.loads(capsys.readouterr().out)
        assert (run["pipeline"], run["status"], run["tasks"]) == ("typed", "succeeded", 2)
