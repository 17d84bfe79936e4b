"""The fleet bench at a small size: a real coordinator, 50 simulated workers in 2 processes.

Not a performance test: it checks that every figure the bench reports is measured (all
tasks done once, all workers registered and listed, lost workers detected no sooner than
the heartbeat timeout allows), and that a simulator's failure surfaces as a BenchError.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from bench._report import BenchError
from bench.fleet import _Sim, main
from tests.harness import child_env, free_port

_TIMEOUT_S = 2.0


def test_fleet_bench_small(tmp_path: Path) -> None:
    out = tmp_path / "results"
    status = main([
        "--workers", "50", "--tasks", "500", "--procs", "2", "--idle-s", "1", "--lost", "10",
        "--heartbeat-timeout-s", str(_TIMEOUT_S), "--heartbeat-interval-s", "0.25", "--out", str(out),
        "--warm", "--gc-threshold", "700",
    ])  # fmt: skip
    assert status == 0
    [path] = out.glob("*-fleet.json")
    [r] = json.loads(path.read_text())["samples"]
    assert "error" not in r, r
    assert r["workers"] == 50 and r["procs"] == 2 and r["lost"] == 10
    assert 0 < r["register_s"] < 30
    # 50 workers at 4 heartbeats/s over 1 s: about 200; the window's edges and a busy machine cost some.
    assert 100 <= r["idle_heartbeats"] <= 300, r["idle_heartbeats"]
    assert r["heartbeat_cpu_us"] > 0
    assert r["tasks_per_s"] > 0 and r["coordinator_cpu_us_per_task"] >= r["coordinator_cpu_us_per_task_net"] >= 0, r
    # The main thread's CPU is part of the process's; both are read in clock ticks (10 ms), a moment apart.
    main_s, total_s = (r[k] * r["run_s"] / 100 for k in ("coordinator_main_thread_cpu_pct", "coordinator_cpu_pct"))
    assert 0 < main_s <= total_s + 0.05, r
    assert isinstance(r["reconnects"], dict) and r["resets"] >= 0
    assert r["extra_answers"] >= 0 and r["errors"] == 0
    # Messages each way, counted by the simulators: one TaskEventBatch answers each AssignmentBatch.
    answered = 500 + r["extra_answers"]
    assert 0 < r["assignment_messages"] == r["event_messages"] <= answered, r
    assert r["assignments_per_message"] == pytest.approx(answered / r["assignment_messages"])
    assert r["sim_cpu_us_per_task"] > 0
    assert r["warm"] is True and r["sims_idle"] is False and r["skip_heartbeats"] is True
    # Every outcome is recorded by some engine turn's commit: at least one, at most one per answer.
    assert 1 <= r["run_commits"] <= answered, r
    assert r["run_heartbeats"] >= 0 and r["run_heartbeats_skipped"] >= 0
    # The collector's pauses during the run, from the coordinator's /metrics (at Python's own
    # threshold, 500 tasks allocate enough for some collection).
    assert r["gc_threshold"] == 700 and r["run_gc_s"] > 0 and r["run_gc_full"] >= 0, r
    # A cut worker is lost once it has been silent for the timeout, found by the next tick.
    assert _TIMEOUT_S <= r["lost_detect_s"] < _TIMEOUT_S + 10, r
    assert r["rss_peak_bytes"] >= r["rss_registered_bytes"] > 10 * 2**20


def test_fleet_bench_refuses_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--workers", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--workers must each be at least 2, got 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_simulator_failures_are_bench_errors(tmp_path: Path) -> None:
    # No coordinator at this port: the simulator starts anyway (workers would keep retrying).
    env = child_env()
    sim = _Sim(f"127.0.0.1:{free_port()}", "simx", 2, tmp_path, env)
    try:
        sim.answer("ready")
        with pytest.raises(BenchError, match="unknown command 'bogus'"):
            sim.ask("bogus", "stats")
        assert sim.ask("stats", "stats")["registered"] == 0
        os.kill(sim.popen.pid, signal.SIGKILL)
        sim.popen.wait(timeout=10)
        with pytest.raises(BenchError, match="simulator simx exited"):
            sim.ask("stats", "stats")
    finally:
        sim.stop()
