"""A worker frozen past the heartbeat deadline (SIGSTOP) and thawed (SIGCONT) is used again.

While it was frozen the coordinator presumed it lost and requeued its attempt on the other
worker. When it wakes, its stream is still open and its next heartbeat reaches a
coordinator that had written it off: the coordinator ends that stream, the worker
registers again reporting the attempt it still holds, that attempt is cancelled as
superseded (its result would be fenced as stale anyway), and new work reaches it.
"""

from __future__ import annotations

import signal
import time

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, Task

HEARTBEAT_TIMEOUT_S = 2.0


def _worker_states(cluster: Cluster) -> dict[str, str]:
    return {w.name: w.state for w in cluster.list_workers()}


def test_sigstopped_worker_past_the_deadline_comes_back_and_gets_work(tmp_path):
    args = ("--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--heartbeat-interval-s", "0.25")
    with Cluster(tmp_path, workers=2, slots=1, coordinator_args=args) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("paused")
        p.add_tasks([Task(f"t{i}", ht.sleep, args=(1.5,)) for i in range(2)])
        run_id = pm.submit(p)
        eventually(lambda: {t.worker for t in pm.get_run(run_id).tasks.values() if t.status == "running"} == {"w0", "w1"},
                   timeout_s=20, message="both workers never ran a task at once")  # fmt: skip
        frozen = c.workers["w0"]
        frozen.stop_signal(signal.SIGSTOP)
        try:
            eventually(lambda: _worker_states(c)["w0"] == "lost", timeout_s=HEARTBEAT_TIMEOUT_S + 5,
                       message="frozen w0 never marked lost")  # fmt: skip
        finally:
            thawed_at = time.monotonic()
            frozen.stop_signal(signal.SIGCONT)
        eventually(lambda: _worker_states(c)["w0"] in ("ready", "busy"), timeout_s=5,
                   message="w0 was not used again after SIGCONT")  # fmt: skip
        back_s = time.monotonic() - thawed_at
        print(f"SIGCONT to registered again: {back_s:.2f}s")

        result = pm.wait(run_id, timeout_s=30)
        assert result.status == "succeeded"
        requeued = [t for t in result.tasks.values() if t.attempts > 1]
        assert requeued, "w0's attempt was not requeued while it was frozen"
        assert all(t.worker == "w1" for t in requeued), "a superseded attempt's result was recorded"

        # New work reaches the thawed worker: with one slot each, 8 tasks of 0.3 s use both.
        more = Pipeline("after")
        more.add_tasks([Task(f"u{i}", ht.sleep, args=(0.3,)) for i in range(8)])
        after = pm.execute_pipeline(more, timeout_s=30)
        assert {t.worker for t in after.tasks.values()} == {"w0", "w1"}
        assert frozen.alive()
        # The reason arrives as a Reset message, whatever status the stream then ends with.
        assert "reset this worker: worker w0 was presumed lost; register again" in frozen.log_text()
