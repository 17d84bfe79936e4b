"""Task logs end to end: captured by real workers, shipped, kept by a real coordinator, served.

Every test runs real processes on loopback (tests/harness.py). Waits are deadlines and
``eventually``, never sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
import pytest
from xpipe import Pipeline, PipelineManager, RunNotFoundError, Task
from xpipe.telemetry._tasklogs import TASK_LOG_MAX_BYTES

from tests import helpers_logs as hl
from tests.harness import Cluster, child_env, eventually


def _by_stream(chunks, task: str, attempt: int | None = None) -> dict[str, str]:
    out: dict[str, str] = {"stdout": "", "stderr": ""}
    for c in chunks:
        if c.task == task and (attempt is None or c.attempt == attempt) and not c.truncated_bytes:
            out[c.stream] += c.text
    return out


def test_stdout_stderr_logging_commands_and_subprocesses_are_captured_per_task(tmp_path):
    args = ("--log-format", "json")
    worker_args = (*args, "--task-log-max-bytes", "100000")
    with Cluster(tmp_path, workers=1, slots=2, worker_args=worker_args, coordinator_args=args) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("captured")
        p.add_tasks([
            Task("chatty", hl.chatty, args=("a",)),
            Task.command("cmd", ["sh", "-c", f"echo cmd-out; echo cmd-err >&2; {sys.executable} -c \"print('grandchild')\""]),
            Task("flood", hl.flood, args=(5 * 65536,)),  # five whole blocks
        ])  # fmt: skip
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.succeeded

        # Logs follow the outcome within moments; the final entry marks them complete.
        def complete():
            chunks = pm.client.get_logs(result.run_id, "chatty")
            return chunks if "child a" in _by_stream(chunks, "chatty")["stdout"] else None

        chunks = eventually(complete, timeout_s=10)
        chatty = _by_stream(chunks, "chatty", attempt=1)
        assert chatty["stdout"] == "out a\nchild a\n"
        assert chatty["stderr"].startswith("err a\n")
        assert chatty["stderr"].endswith(" INFO tests.helpers_logs: logged a\n")  # a logging record, formatted
        cmd = _by_stream(pm.client.get_logs(result.run_id, "cmd"), "cmd")
        assert cmd == {"stdout": "cmd-out\ngrandchild\n", "stderr": "cmd-err\n"}

        # The worker's --task-log-max-bytes keeps the first 100000 bytes and counts the rest. The
        # count comes as one marker per batch the worker shipped while the task wrote, so a slow
        # pipe gives several; together they count every byte dropped, and all follow the data.
        dropped = 5 * 65536 - 100_000

        def all_counted():
            chunks = pm.client.get_logs(result.run_id, "flood")
            return chunks if sum(ch.truncated_bytes for ch in chunks) >= dropped else None

        flood = eventually(all_counted, timeout_s=10)
        markers = [ch for ch in flood if ch.truncated_bytes]
        assert sum(len(ch.data) for ch in flood) == 100_000
        assert sum(ch.truncated_bytes for ch in markers) == dropped
        assert flood[-len(markers):] == markers  # no data after the cap was reached
        for ch in markers:
            assert ch.text == f"[xpipe: {ch.truncated_bytes} bytes of stdout dropped " \
                              "(over the per-attempt log cap, or shed under load)]\n"  # fmt: skip

        # Following a finished run gives what is stored, then ends by itself.
        started = time.monotonic()
        followed = list(pm.client.follow_logs(result.run_id, timeout_s=30))
        assert time.monotonic() - started < 5
        assert sorted((ch.task, ch.text) for ch in followed) == sorted(
            (ch.task, ch.text) for ch in pm.client.get_logs(result.run_id))

        text = pm.get_logs(result.run_id)
        assert "==> task 'chatty' attempt 1 <==\nout a\n" in text and "==> task 'cmd' attempt 1 <==\n" in text

        # Task output no longer reaches the worker's own log; the daemons' own lines are JSON.
        worker_log = c.workers["w0"].log_text()
        assert "out a" not in worker_log and "cmd-out" not in worker_log and "logged a" not in worker_log
        for proc in (c.workers["w0"], c.coordinator):
            records = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
            assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)

        # The CLI prints the same text, and JSON lines with --json.
        cli = subprocess.run([sys.executable, "-m", "xpipe._cli", "logs", result.run_id, "cmd", "--coordinator", c.address],
                             env=child_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.startswith("==> task 'cmd' attempt 1 <==\n") and "cmd-err\n" in cli.stdout
        cli = subprocess.run([sys.executable, "-m", "xpipe._cli", "logs", result.run_id, "chatty", "--follow",
                              "--coordinator", c.address], env=child_env(), capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 0 and cli.stdout.startswith("==> task 'chatty' attempt 1 <==\nout a\n"), cli

        with pytest.raises(RunNotFoundError, match="no run"):
            pm.client.get_logs("no-such-run")
        with pytest.raises(RunNotFoundError, match="has no task 'ghost'"):
            pm.client.get_logs(result.run_id, "ghost")
        cli = subprocess.run([sys.executable, "-m", "xpipe._cli", "logs", "no-such-run", "--coordinator", c.address],
                             env=child_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 2 and "no run" in cli.stderr


def test_follow_shows_a_plain_print_within_a_second_and_ends_with_the_task(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        warm = Pipeline("warm")
        warm.add_task(Task("quick", hl.quick))
        assert pm.execute_pipeline(warm, monitor=False, timeout_s=60).succeeded  # the child is started and warm
        p = Pipeline("ticker")
        p.add_task(Task("printer", hl.printer, args=(15, 0.1)))
        submitted = time.monotonic()
        run_id = pm.submit(p)
        seen: list[str] = []
        first_seen_at = first_after_s = None
        for chunk in pm.client.follow_logs(run_id, "printer", timeout_s=30):
            if first_seen_at is None:
                first_seen_at, first_after_s = time.time(), time.monotonic() - submitted
            seen.append(chunk.text)
        # The first line, printed (no flush) as the task started, reached the follower within
        # 1 s of that start (the worker's clock is this machine's), and the submit too.
        started_at = pm.client.get_run(run_id).tasks[0].started_at
        assert first_seen_at is not None and first_seen_at - started_at < 1.0, (first_seen_at, started_at)
        assert first_after_s < 5.0, first_after_s  # scheduling included: loose, the machine is shared
        # The follow ended by itself once the task finished, with every line in order.
        assert "".join(seen) == "".join(f"tick {i}\n" for i in range(15))
        assert pm.client.get_run(run_id).state == "SUCCEEDED"


def test_each_attempt_of_a_retried_task_keeps_its_own_log_across_a_coordinator_restart(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("flaky")
        p.add_task(Task("flaky", hl.fail_first, args=(str(tmp_path),), max_retries=1, retry_delay_s=0.05))
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.succeeded and result.tasks["flaky"].attempts == 2

        def both():
            chunks = pm.client.get_logs(result.run_id, "flaky")
            return chunks if {ch.attempt for ch in chunks} == {1, 2} else None

        chunks = eventually(both, timeout_s=10)
        assert _by_stream(chunks, "flaky", 1)["stdout"] == "attempt one here\n"
        assert "RuntimeError: first call fails" not in _by_stream(chunks, "flaky", 1)["stdout"]
        assert _by_stream(chunks, "flaky", 2)["stdout"] == "attempt two here\n"
        only_second = pm.client.get_logs(result.run_id, "flaky", attempt=2)
        assert {ch.attempt for ch in only_second} == {2}

        before = pm.get_logs(result.run_id)
        c.restart_coordinator()
        assert eventually(lambda: pm.get_logs(result.run_id), timeout_s=20) == before


def test_a_flood_is_capped_and_does_not_hurt_the_coordinator_or_other_tasks(tmp_path):
    flood_bytes = 100 * 1024 * 1024
    with Cluster(tmp_path, workers=1, slots=2) as c, PipelineManager(coordinator=c.address) as pm:
        coordinator = psutil.Process(c.coordinator.pid)
        quick = Pipeline("quick")
        quick.add_task(Task("quick", hl.quick))

        def round_trip_s() -> float:
            started = time.monotonic()
            assert pm.execute_pipeline(quick, monitor=False, timeout_s=60).succeeded
            return time.monotonic() - started

        baseline_s = sorted(round_trip_s() for _ in range(5))[2]
        rss_before = coordinator.memory_info().rss
        samples: list[tuple[float, float]] = []  # (finished at, round trip s) of the other task, on the same worker
        peak_rss = [rss_before]
        done = threading.Event()

        def other_tasks():
            while not done.is_set():
                samples.append((time.monotonic(), round_trip_s()))
                peak_rss[0] = max(peak_rss[0], coordinator.memory_info().rss)

        neighbour = threading.Thread(target=other_tasks, daemon=True)
        neighbour.start()
        try:
            p = Pipeline("flood")
            p.add_task(Task("flood", hl.flood, args=(flood_bytes,)))
            flood_started = time.monotonic()
            result = pm.execute_pipeline(p, monitor=False, timeout_s=120)
            flood_s = time.monotonic() - flood_started
        finally:
            done.set()
            neighbour.join(timeout=30)
        assert result.succeeded
        during = [rt for at, rt in samples if flood_started <= at - rt and at <= flood_started + flood_s]

        def capped():
            chunks = pm.client.get_logs(result.run_id, "flood")
            kept = sum(len(ch.data) for ch in chunks)
            dropped = sum(ch.truncated_bytes for ch in chunks)
            return (kept, dropped) if kept + dropped == flood_bytes else None

        kept, dropped = eventually(capped, timeout_s=20)
        assert kept == TASK_LOG_MAX_BYTES and dropped == flood_bytes - TASK_LOG_MAX_BYTES
        assert "bytes of stdout dropped" in pm.get_logs(result.run_id, "flood")
        grown_mib = (peak_rss[0] - rss_before) / 2**20
        print(f"\nflood: {flood_bytes >> 20} MiB written in {flood_s:.2f} s (submit to outcome); other task's round "
              f"trip: median {baseline_s * 1000:.1f} ms before, {len(during)} during the flood, worst "
              f"{max(during, default=0) * 1000:.1f} ms, median {sorted(during)[len(during) // 2] * 1000 if during else 0:.1f} ms; "
              f"coordinator RSS {rss_before / 2**20:.1f} MiB -> peak {peak_rss[0] / 2**20:.1f} MiB")  # fmt: skip
        assert grown_mib < 32, grown_mib
        assert max(during, default=0) < 2.0, during


def test_worker_refuses_a_bad_task_log_cap_with_a_clear_error():
    for value, message in (("-1", "must not be negative"), ("lots", "expected a size")):
        out = subprocess.run([sys.executable, "-m", "xpipe.worker", "--task-log-max-bytes", value],
                             env=child_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert out.returncode == 2 and "--task-log-max-bytes" in out.stderr and message in out.stderr, out.stderr


def test_embedded_default_serves_logs(tmp_path):
    with PipelineManager(workers=1, slots_per_worker=1, data_dir=tmp_path / "local") as pm:
        p = Pipeline("embedded")
        p.add_task(Task("chatty", hl.chatty, args=("e",)))
        result = pm.execute_pipeline(p, monitor=False, timeout_s=60)
        assert result.succeeded

        def complete():
            text = pm.get_logs(result.run_id, "chatty")
            return text if "child e" in text else None

        text = eventually(complete, timeout_s=10)
        assert text.startswith("==> task 'chatty' attempt 1 <==\nout e\n")


def test_output_of_a_task_running_through_a_coordinator_restart_is_all_kept(tmp_path):
    json_logs = ("--log-format", "json")
    with Cluster(tmp_path, workers=1, slots=1, coordinator_args=json_logs) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("through-restart")
        p.add_task(Task("printer", hl.printer, args=(30, 0.1)))
        run_id = pm.submit(p)
        followed: list = []
        follower = threading.Thread(target=lambda: followed.extend(pm.client.follow_logs(run_id, timeout_s=60)))
        follower.start()
        eventually(lambda: "tick 2" in pm.get_logs(run_id), timeout_s=20)
        c.restart_coordinator()  # the worker holds what the task prints meanwhile, then sends it
        eventually(lambda: pm.client.get_run(run_id).summary.state == "SUCCEEDED", timeout_s=60)
        expected = "".join(f"tick {i}\n" for i in range(30))

        def complete():
            text = pm.get_logs(run_id, "printer")
            return text if text.endswith("tick 29\n") else None

        text = eventually(complete, timeout_s=10)
        assert text == "==> task 'printer' attempt 1 <==\n" + expected
        # The follower's stream broke with the restart and resumed after its last chunk: nothing twice.
        follower.join(timeout=30)
        assert not follower.is_alive()
        assert "".join(ch.text for ch in followed) == expected
        # The restarted coordinator's JSON line about resuming the run names it in a field.
        records = [json.loads(line) for line in c.coordinator.log_text().splitlines() if line.startswith("{")]
        resumed = [r for r in records if r["message"].startswith("resuming run")]
        assert [r.get("run_id") for r in resumed] == [run_id], resumed
