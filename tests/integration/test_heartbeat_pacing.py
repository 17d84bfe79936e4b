"""Heartbeat pacing end to end: a real coordinator capped at 2 heartbeats a second, real workers.

With ``--heartbeat-interval-s 0.2 --heartbeat-timeout-s 2 --max-heartbeats-per-s 2``, N live
workers are told max(0.2, N / 2) seconds and lost after ten times that. A watcher polls
``ListWorkers`` all along: what it sees is the heartbeat spacing as the coordinator received
it, and every state each worker was in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from xpipe._proto import worker_pb2, worker_pb2_grpc

from tests.harness import Cluster, child_env, eventually, terminate_all
from tests.helpers_metrics import scrape, value

_ARGS = ("--heartbeat-interval-s", "0.2", "--heartbeat-timeout-s", "2", "--max-heartbeats-per-s", "2")
_TICK_S = 0.1  # EngineConfig.tick_interval_s


class Watcher:
    """Polls ListWorkers every 0.1 s in a thread: (seen_at, name, state, last_heartbeat) rows."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.rows: list[tuple[float, str, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="list-workers-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                infos = self.cluster.list_workers()
            except Exception:  # noqa: BLE001 - a slow answer on a busy machine: poll again
                continue
            now = time.time()
            self.rows.extend((now, i.name, i.state, i.last_heartbeat) for i in infos)

    def beats(self, name: str, after: float = 0.0) -> list[float]:
        """Distinct heartbeat times of ``name`` the coordinator recorded after ``after``."""
        return sorted({hb for _, n, _, hb in self.rows if n == name and hb > after})

    def first_seen(self, name: str, state: str) -> float | None:
        return next((at for at, n, s, _ in self.rows if n == name and s == state), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _pace(cluster: Cluster) -> tuple[float, float]:
    samples = scrape(cluster.metrics_url())
    return value(samples, "xpipe_heartbeat_interval_seconds"), value(samples, "xpipe_heartbeat_timeout_seconds")


def _wait_pace(cluster: Cluster, interval_s: float, timeout_s: float | None = None) -> float:
    """Wait until the coordinator shows ``interval_s`` (and ``timeout_s`` in effect); return when seen."""

    def shown():
        pace = _pace(cluster)
        return time.time() if pace[0] == interval_s and (timeout_s is None or pace[1] == timeout_s) else None

    return eventually(shown, timeout_s=15, interval_s=0.05,
                      message=f"heartbeat interval {interval_s} s shown; last {_pace(cluster)}")  # fmt: skip


def test_a_capped_fleet_beats_slower_is_never_lost_by_a_change_and_a_dead_worker_is_lost_in_the_scaled_time(tmp_path):
    with Cluster(tmp_path, workers=4, slots=1, coordinator_args=_ARGS, metrics=True) as c:
        watcher = Watcher(c)
        try:
            # 4 workers at most 2 heartbeats a second: every 2 s, lost after 20 s.
            told_at = _wait_pace(c, 2.0, 20.0)

            def three_beats() -> list[float] | None:
                beats = watcher.beats("w0", after=told_at + 0.5)
                return beats if len(beats) >= 3 else None

            beats = eventually(three_beats, timeout_s=15, message="three heartbeats of w0 at the new pace")
            gaps = [b - a for a, b in zip(beats, beats[1:])]
            assert all(1.6 <= gap <= 2.6 for gap in gaps), gaps  # not 0.2 s, as configured

            # A dead worker is lost after the scaled timeout (20 s), not the configured 2 s.
            killed_at = time.time()
            c.workers["w3"].kill()
            eventually(lambda: watcher.first_seen("w3", "lost"), timeout_s=30, message="w3 listed as lost")
            lost_after_s = watcher.first_seen("w3", "lost") - killed_at
            # Its last heartbeat was at most one interval (2 s) before the kill.
            assert 20.0 - 2.0 - 0.3 <= lost_after_s <= 20.0 + _TICK_S + 1.0, lost_after_s
            print(f"\nheartbeat gaps at 2 s: {[round(g, 2) for g in gaps]}; w3 lost {lost_after_s:.2f} s after SIGKILL")
            _wait_pace(c, 1.5)  # 3 left: 1.5 s (-25%)

            # The fleet grows: 6 workers, every 3 s, lost after 30 s at once.
            grown = [c._spawn_worker(f"w{i}", 1, ()) for i in (4, 5, 6)]
            c.wait_for_workers(["w4", "w5", "w6"])
            _wait_pace(c, 3.0, 30.0)
            # `xpipe cluster` says the same as the gauges.
            shown = subprocess.run([sys.executable, "-m", "xpipe._cli", "cluster", "--json", "--coordinator", c.address],
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            status = json.loads(shown.stdout)
            assert (status["heartbeat_interval_s"], status["heartbeat_timeout_s"]) == (3.0, 30.0), status
            # ... and shrinks: 3 workers, every 1.5 s, but 30 s stay in effect for one old timeout.
            terminate_all(grown)
            shrunk_at = _wait_pace(c, 1.5, 30.0)
            for name in ("w0", "w1", "w2"):  # each beats twice at the shorter pace
                eventually(lambda name=name: len(watcher.beats(name, after=shrunk_at + 0.5)) >= 2, timeout_s=15,
                           message=f"{name} heartbeats after the shrink")  # fmt: skip
        finally:
            watcher.stop()
        lost = {name for _, name, state, _ in watcher.rows if state == "lost"}
        assert lost == {"w3"}, lost
        assert {i.name: i.state for i in c.list_workers() if i.name in ("w4", "w5", "w6")} == dict.fromkeys(
            ("w4", "w5", "w6"), "drained")
        log = c.coordinator.log_text()
        # Each change is logged once, at INFO (2 s may come twice: at the start, and again if
        # the shrink from 6 to 3 workers is seen at 4 on the way).
        assert log.count("INFO xpipe.coordinator._engine: heartbeat interval now 3 s, timeout 30 s") == 1, log[-3000:]
        assert 1 <= log.count("heartbeat interval now 2 s, timeout 20 s") <= 2, log[-3000:]
        assert "heartbeat interval now 1.5 s, timeout 15 s (30 s kept for one old timeout)" in log, log[-3000:]
        assert "heartbeat interval now 3 s" in c.workers["w0"].log_text()  # the worker applied it
        # Told on registering the pace of that moment: 1.5 s with 3 workers, or already 2 s or
        # 3 s if the coordinator counted w5 and w6 first (they register at the same time).
        told = re.search(r"heartbeat interval now ([\d.]+) s", c.workers["w4"].log_text())
        assert told and float(told.group(1)) in (1.5, 2.0, 3.0), c.workers["w4"].log_text()

        # A new stream: Registered says the configured 0.2 s, which an older worker (that
        # ignores HeartbeatSettings) keeps; the fleet's pace follows at once.
        done = threading.Event()

        def messages():
            yield worker_pb2.WorkerMessage(register=worker_pb2.Register(worker_id="raw", name="raw", slots=1))
            done.wait(20)

        with c.channel() as channel:
            call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(messages(), timeout=20)
            try:
                first, second = next(call), next(call)
            finally:
                done.set()
                call.cancel()
        assert first.registered.heartbeat_interval_s == 0.2
        assert second.WhichOneof("body") == "heartbeat_settings", second
        assert (second.heartbeat_settings.interval_s, second.heartbeat_settings.timeout_s) == (1.5, 15.0)


@pytest.mark.parametrize("rate", ["-1", "nan", "inf"])
def test_a_bad_heartbeat_cap_is_refused_with_its_name(tmp_path, rate):
    out = subprocess.run([sys.executable, "-m", "xpipe.coordinator", "--data-dir", str(tmp_path),
                          "--max-heartbeats-per-s", rate],
                         env=child_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode != 0
    assert "--max-heartbeats-per-s must be 0 (no cap) or a positive number" in out.stderr, out.stderr
