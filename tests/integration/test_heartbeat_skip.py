"""A real worker skips a heartbeat its outcomes made redundant, never two in a row, and is never lost.

The coordinator takes outcomes as a sign of life (see ``HeartbeatGate``). With a 0.2 s
interval and a 1 s timeout, one worker runs a stream of short tasks: its heartbeats due
right after outcomes are skipped (counted on its /metrics), it still beats at least every
second interval, nothing is requeued, and idle it beats every interval again.
"""

from __future__ import annotations

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from tests.helpers_metrics import scrape, value
from xpipe import Pipeline, PipelineManager, Task

INTERVAL_S = 0.2


def _beats(url: str) -> tuple[float, float]:
    samples = scrape(url)
    return value(samples, "xpipe_worker_heartbeats_sent_total"), value(samples, "xpipe_worker_heartbeats_skipped_total")


def test_a_busy_worker_skips_beats_its_outcomes_made_redundant_and_is_never_lost(tmp_path):
    args = ("--heartbeat-interval-s", str(INTERVAL_S), "--heartbeat-timeout-s", "1.0")
    with Cluster(tmp_path, workers=1, slots=1, metrics=True, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        url = c.metrics_url("w0")
        sent0, skipped0 = eventually(lambda: (b := _beats(url))[0] >= 2 and b, timeout_s=10,
                                     message="the idle worker never heartbeat")  # fmt: skip
        assert skipped0 == 0  # idle: nothing was sent, so every beat went out

        p = Pipeline("busy-beats")
        p.add_tasks([Task(f"t{i}", ht.sleep, args=(0.05,)) for i in range(40)])  # ~2 s of outcomes on one slot
        result = pm.execute_pipeline(p, monitor=False)
        assert result.succeeded
        assert all(t.attempts == 1 for t in result.tasks.values())  # never lost, nothing requeued

        sent1, skipped1 = _beats(url)
        skipped, sent = skipped1 - skipped0, sent1 - sent0
        assert skipped >= 3, (sent, skipped)
        assert sent >= skipped - 1, (sent, skipped)  # never two in a row
        assert [w.state for w in pm.client.list_workers()] == ["ready"]
        assert "lost" not in c.coordinator.log_text()

        # Idle again (the beat right after the last outcomes may still be skipped): beats go
        # out every interval, none skipped.
        sent2, skipped2 = eventually(lambda: (b := _beats(url))[0] >= sent1 + 2 and b, timeout_s=10,
                                     message="the idle worker stopped beating")  # fmt: skip
        eventually(lambda: _beats(url)[0] >= sent2 + 4, timeout_s=10, message="the idle worker stopped beating")
        assert _beats(url)[1] == skipped2
