"""``xpipe story`` against a real coordinator and worker, before and after a restart."""

from __future__ import annotations

import json
import subprocess
import sys

from tests import helpers_tasks as ht
from tests.harness import Cluster, child_env
from xpipe import Pipeline, PipelineManager, Task


def story_cli(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", "story", *args, "--coordinator", address],
                          env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip


def story_json(address: str, *args: str) -> list[dict]:
    out = story_cli(address, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_story_tells_a_failure_and_the_retry_and_survives_a_restart(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        worker_id = c.list_workers()[0].worker_id
        p = Pipeline("flaky")
        fetch = Task("fetch", ht.fail_times, args=(str(tmp_path), 1), max_retries=1, retry_delay_s=0.05)
        p.add_tasks([fetch, Task("after", ht.echo, depends_on=[fetch])])
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.succeeded and result.tasks["fetch"].attempts == 2
        run_id = result.run_id

        story = story_json(c.address, run_id, "fetch")
        assert all(set(e) == {"time", "stimulus_id", "task", "attempt", "from", "to", "reason"} for e in story)
        assert {e["task"] for e in story} == {"fetch"}
        times = [e["time"] for e in story]
        assert times == sorted(times) and times[0] > 0
        first = story[0]
        assert (first["from"], first["to"], first["attempt"], first["stimulus_id"]) == (
            "PENDING", "READY", 0, f"rpc-submit-{run_id}")  # fmt: skip
        moves = [(e["attempt"], e["from"], e["to"]) for e in story]
        assert moves == [
            (0, "PENDING", "READY"),
            (1, "READY", "ASSIGNED"),
            (1, "ASSIGNED", "RUNNING"),
            (1, "RUNNING", "RETRY_WAIT"),
            (1, "RETRY_WAIT", "READY"),
            (2, "READY", "ASSIGNED"),
            (2, "ASSIGNED", "RUNNING"),
            (2, "RUNNING", "SUCCEEDED"),
        ], story
        assigned, started, failed, backoff = story[1:5]
        assert assigned["stimulus_id"].startswith("schedule-") and assigned["reason"] == f"worker {worker_id}"
        assert started["stimulus_id"].startswith(f"ws-{worker_id}-") and started["reason"] == f"worker {worker_id}"
        assert failed["stimulus_id"].startswith(f"ws-{worker_id}-")
        assert failed["reason"].startswith("TASK_FAILURE: ") and "call 1 fails" in failed["reason"], failed
        assert backoff["stimulus_id"].startswith("tick-") and backoff["reason"] == "retry backoff over"
        assert story[-1]["stimulus_id"].startswith(f"ws-{worker_id}-") and story[-1]["reason"] == ""

        whole = story_json(c.address, run_id)
        assert [e for e in whole if e["task"] == "fetch"] == story
        assert [(e["from"], e["to"]) for e in whole if e["task"] == "after"][-1] == ("RUNNING", "SUCCEEDED")

        table = story_cli(c.address, run_id, "fetch")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:6] == ["TIME", "TASK", "TRY", "FROM", "TO", "STIMULUS"]
        assert len(lines) == 1 + len(story) and "RETRY_WAIT" in lines[4] and "call 1 fails" in lines[4]

        c.restart_coordinator()
        restored = story_json(c.address, run_id, "fetch")
        # The failed attempt's moves come back as they were logged; the success is rebuilt
        # from the task row (its times and state), marked "restored".
        assert restored[:3] == story[1:4]
        assert [(e["attempt"], e["from"], e["to"], e["stimulus_id"]) for e in restored[3:]] == [
            (2, "ASSIGNED", "RUNNING", "restored"), (2, "RUNNING", "SUCCEEDED", "restored"),
        ]  # fmt: skip
        # The start time is the worker's report either way; the end is the worker's finish
        # time (the row's), where the live log had the coordinator's receipt a moment later.
        assert restored[3]["time"] == story[6]["time"]
        assert restored[3]["time"] <= restored[4]["time"] <= story[7]["time"] + 1.0
        # Read from the store now (a finished run is not resumed): an unknown task is still named.
        out = story_cli(c.address, run_id, "nope")
        assert out.returncode == 2 and f"run {run_id} has no task 'nope'" in out.stderr, out.stderr


def test_story_of_an_unknown_run_or_task_is_one_clear_line(cluster, tmp_path):
    out = story_cli(cluster.address, "no-such-run")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "no run 'no-such-run'" in out.stderr
    p = Pipeline("one")
    p.add_task(Task("t", ht.noop))
    with PipelineManager(coordinator=cluster.address) as pm:
        run_id = pm.execute_pipeline(p, monitor=False, timeout_s=60).run_id
    out = story_cli(cluster.address, run_id, "nope")
    assert out.returncode == 2 and f"run {run_id} has no task 'nope'" in out.stderr, out.stderr
