"""Task checkpoints on real coordinators and workers: a replaced attempt resumes where the
last one saved, the interval paces saves, the store keeps them across a restart, and big
states travel by artifact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests import helpers_checkpoints as hc
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, Task

#: Lost workers are noticed quickly, so a killed worker's task moves on in seconds.
FAST_LOSS = ("--heartbeat-timeout-s", "2", "--heartbeat-interval-s", "0.5")
IMPORTS = ("tests.helpers_tasks", "tests.helpers_checkpoints")


def _stored(c: Cluster, run_id: str, task: str) -> tuple[int, int, int] | None:
    """``(attempt, seq, writes)`` of the task's stored checkpoint, read from the coordinator's SQLite file."""
    db = sqlite3.connect(c.data_dir / "xpipe.db", timeout=10)
    try:
        return db.execute("SELECT attempt, seq, writes FROM task_checkpoints WHERE run_id=? AND name=?",
                          (run_id, task)).fetchone()  # fmt: skip
    finally:
        db.close()


def _steps(marks: Path) -> dict[int, list[int]]:
    """Steps each attempt ran, from the marker files."""
    out: dict[int, list[int]] = {}
    for path in marks.glob("step-*.attempt-*"):
        step, attempt = path.name.removeprefix("step-").split(".attempt-")
        out.setdefault(int(attempt), []).append(int(step))
    return {a: sorted(s) for a, s in out.items()}


def test_sigkilled_worker_task_resumes_at_its_last_saved_step(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with Cluster(tmp_path, workers=1, slots=1, imports=IMPORTS, coordinator_args=FAST_LOSS) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("resume")
        p.add_task(Task("steps", hc.stepper, args=(str(marks), 20, 0.1)))
        run_id = pm.submit(p)
        # Poll the coordinator's store until step 8 (or later) is saved, then kill mid-task.
        eventually(lambda: (_stored(c, run_id, "steps") or (0, 0, 0))[1] >= 8, timeout_s=30,
                   message="step 8 was never saved")  # fmt: skip
        c.workers["w0"].kill()
        attempt, saved_step, _writes = _stored(c, run_id, "steps")  # final for attempt 1: its worker is dead
        assert attempt == 1 and 8 <= saved_step < 20
        c.add_worker("w1")
        result = pm.wait(run_id, timeout_s=60)
        assert result.status == "succeeded"
        assert result.outputs["steps"] == sum(range(1, 21))
        assert result.tasks["steps"].attempts == 2
        ran = _steps(marks)
        # Attempt 1 ran 1..m, each once; attempt 2 started right after the step stored last,
        # not at step 0, and ran the rest, each once. Steps after the last stored save (ran
        # but their save was still on its way, at most a step or two) ran twice.
        assert (marks / "start.attempt-1").read_text() == "0"
        assert int((marks / "start.attempt-2").read_text()) == saved_step
        assert ran[1] == list(range(1, len(ran[1]) + 1)) and len(ran[1]) >= saved_step
        assert ran[2] == list(range(saved_step + 1, 21))
        print(f"killed after step {len(ran[1])}; resumed after step {saved_step}")


def test_interval_paces_saves_and_a_failed_attempt_sends_its_held_save(tmp_path):
    with Cluster(tmp_path, workers=1, slots=2, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("paced")
        p.configure_fault_tolerance(checkpoint_interval_s=1.0)
        p.add_tasks([
            Task("paced", hc.chatty, args=(100, 2.5)),
            Task("held", hc.chatty, args=(100, 0.0, True), max_retries=1, retry_delay_s=0.01),
        ])  # fmt: skip
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.outputs["paced"] == {"last": 99}
        # 100 calls over 2.5 s with 1 s between saves: the first, then one a second (2-3 more).
        _attempt, _seq, writes = _stored(c, result.run_id, "paced")
        assert 2 <= writes <= 4, writes
        # 100 calls in a tight loop: one sent, 99 held; the failure sends the newest held one.
        assert result.outputs["held"] == {"resumed_from": 99}
        assert _stored(c, result.run_id, "held")[2] == 2

        unpaced = Pipeline("unpaced")
        unpaced.add_task(Task("every", hc.chatty, args=(100, 0.0)))
        result = pm.execute_pipeline(unpaced, monitor=False, timeout_s=60)
        assert _stored(c, result.run_id, "every") == (1, 100, 100)  # no interval: every call is saved


def test_checkpoints_survive_a_coordinator_restart_and_a_save_made_while_it_is_down(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with Cluster(tmp_path, workers=1, slots=1, imports=IMPORTS, coordinator_args=FAST_LOSS) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("restart")
        p.add_task(Task("held", hc.save_twice_and_hold, args=(str(marks),)))
        run_id = pm.submit(p)
        eventually(lambda: _stored(c, run_id, "held") is not None, timeout_s=30, message="checkpoint never stored")
        c.coordinator.terminate()
        (marks / "go").touch()  # the second save happens with no coordinator: the worker holds it
        eventually(lambda: (marks / "saved-2").exists(), timeout_s=30, message="second save never made")
        c.restart_coordinator()
        # Sent when the worker registers again, to the restarted coordinator, which stores it.
        eventually(lambda: _stored(c, run_id, "held")[1] == 2, timeout_s=30, message="held save never stored")
        c.workers["w0"].kill()  # the new coordinator must place attempt 2, with the stored state
        c.add_worker("w1")
        result = pm.wait(run_id, timeout_s=60)
        assert result.outputs["held"] == {"attempt": 2, "resumed_from": {"part": 2}}


def test_big_checkpoint_goes_by_artifact(tmp_path):
    digest = tmp_path / "digest"
    with Cluster(tmp_path, workers=1, slots=1, imports=IMPORTS) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("big")
        p.add_task(Task("big", hc.big_state, args=(2 * 1024 * 1024, str(digest)), max_retries=1, retry_delay_s=0.01))
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.outputs["big"] == {"size": 2 * 1024 * 1024, "sha256": digest.read_text()}
        artifact = c.data_dir / "artifacts" / result.run_id / "big.checkpoint.1"
        assert artifact.stat().st_size >= 2 * 1024 * 1024  # random bytes: not compressed
        db = sqlite3.connect(c.data_dir / "xpipe.db")
        try:
            (row,) = db.execute("SELECT length(data) FROM task_checkpoints WHERE run_id=?", (result.run_id,)).fetchone()
        finally:
            db.close()
        assert row < 4096  # the store holds the reference, not the 2 MiB
