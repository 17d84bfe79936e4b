"""Kill -9 the coordinator under a waiting client and a worker, and do not restart it.

The client (its own process, so its CPU can be measured) must give up after its
``connect_timeout_s`` with ``CoordinatorUnavailableError`` naming the address, and neither
it nor the worker may spin while the coordinator is gone: under 2% of a core each. Calls
and the CLI give up the same way; ``wait(timeout_s=...)`` holds whatever the coordinator
does; and a watch that was streaming gets a fresh budget, so it still rides a restart.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests import helpers_tasks as ht
from tests.harness import REPO_ROOT, Cluster, Proc, StopWaiting, child_env, eventually, free_port
from xpipe import Client, Pipeline, PipelineManager, Task
from xpipe.errors import CoordinatorUnavailableError

CONNECT_TIMEOUT_S = 4.0
#: A process exits a little after it gives up (interpreter and channel teardown).
EXIT_MARGIN_S = 3.0
MAX_CORE_FRACTION = 0.02


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _running(cluster: Cluster) -> bool:
    return any(w.running for w in cluster.list_workers())


@pytest.mark.parametrize("mode", ["wait", "execute"])
def test_waiting_client_gives_up_after_connect_timeout_without_spinning(tmp_path, mode):
    with Cluster(tmp_path, workers=1, slots=1) as cluster:
        client = Proc(
            "client",
            [sys.executable, "-m", "tests.integration.waiting_client", cluster.address, mode, str(CONNECT_TIMEOUT_S)],
            log_dir=tmp_path / "logs",
            cwd=REPO_ROOT,
        )
        try:
            eventually(lambda: _running(cluster), timeout_s=30, message="the long task running on the worker")
            process = psutil.Process(client.pid)
            cluster.coordinator.kill()
            killed_at = time.monotonic()
            cpu_at_kill = _cpu_s(process)
            samples: list[tuple[float, float]] = []

            def client_exited() -> bool:
                try:
                    samples.append((time.monotonic(), _cpu_s(process)))
                except psutil.Error:
                    pass  # gone between the check and the sample
                return not client.alive()

            eventually(client_exited, timeout_s=CONNECT_TIMEOUT_S + EXIT_MARGIN_S, interval_s=0.05,
                       message=f"the client giving up after connect_timeout_s={CONNECT_TIMEOUT_S}")  # fmt: skip
            gave_up_s = time.monotonic() - killed_at
            # The waiting period: up to just before it may give up (its exit teardown is not waiting).
            last_at, last_cpu = [s for s in samples if s[0] < killed_at + CONNECT_TIMEOUT_S - 0.2][-1]
            cores = (last_cpu - cpu_at_kill) / max(last_at - killed_at, 1e-9)
            print(f"{mode}: client CPU {last_cpu - cpu_at_kill:.3f}s over {last_at - killed_at:.2f}s "
                  f"({cores:.2%} of a core); gave up {gave_up_s:.2f}s after the kill")  # fmt: skip
            assert client.returncode == 3, client.log_text()
            outcome = json.loads(client.log_text().strip().splitlines()[-1])
            assert outcome["error"] == "CoordinatorUnavailableError", outcome
            assert cluster.address in outcome["message"] and outcome["addresses"] == [cluster.address]
            assert f"within {CONNECT_TIMEOUT_S:g}s" in outcome["message"]
            assert gave_up_s >= CONNECT_TIMEOUT_S - 0.5, f"gave up too early: {gave_up_s:.2f}s"
            assert cores < MAX_CORE_FRACTION, f"client used {cores:.2%} of a core while the coordinator was dead"
        finally:
            client.kill()
            # Its 300 s task and no coordinator to report to: a SIGTERM would wait out the grace.
            cluster.workers["w0"].kill()


def _reconnect_attempts(worker: Proc, address: str) -> int:
    return len(re.findall(rf"stream to {re.escape(address)} ended", worker.log_text()))


def test_worker_backs_off_while_the_coordinator_is_dead_and_comes_back_with_it(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as cluster:
        worker = cluster.workers["w0"]
        process = psutil.Process(worker.pid)
        cluster.coordinator.kill()
        killed_at = time.monotonic()

        # Backoff doubles from 0.05 s: eight attempts take about 5 s with jitter at its
        # longest (no jitter: 0.05+0.1+...+1.6+2.0 = 5.15 s), so the worker has reached its
        # capped wait; ten take 5-9 s, a window long enough that one stray burst of the
        # worker's own (seen once: 0.1 s, a garbage collection or the like, not a loop) is
        # not mistaken for spinning, which would cost most of a core.
        def tried(n: int) -> bool:
            if not worker.alive():
                raise StopWaiting(f"worker exited with {worker.returncode}")
            return _reconnect_attempts(worker, cluster.address) >= n

        # CPU is counted from the first failed reconnect, so the tail of the worker's own
        # start-up (it registered a moment ago) is not mistaken for spinning.
        eventually(lambda: tried(1), timeout_s=10, interval_s=0.01, message="a first reconnect attempt")
        counted_from, cpu_before = time.monotonic(), _cpu_s(process)
        eventually(lambda: tried(10), timeout_s=20, interval_s=0.05, message="ten reconnect attempts")
        window_s = time.monotonic() - killed_at
        cpu_s = _cpu_s(process) - cpu_before
        cpu_window_s = time.monotonic() - counted_from
        attempts = _reconnect_attempts(worker, cluster.address)
        print(f"worker CPU {cpu_s:.3f}s over {cpu_window_s:.2f}s ({cpu_s / cpu_window_s:.2%} of a core); "
              f"{attempts} reconnect attempts")  # fmt: skip
        assert window_s >= 2.0, f"ten attempts in {window_s:.2f}s: the worker is not backing off"
        assert cpu_s / cpu_window_s < MAX_CORE_FRACTION, f"worker used {cpu_s:.3f}s of CPU in {cpu_window_s:.2f}s"

        # Capped at 2 s, the backoff still finds a coordinator that comes back quickly.
        restarted_at = time.monotonic()
        cluster.restart_coordinator(wait_for_workers=False)
        cluster.wait_for_workers(["w0"], timeout_s=10)
        print(f"worker registered again {time.monotonic() - restarted_at:.2f}s after the coordinator restarted")


def test_a_call_to_a_dead_address_gives_up_after_connect_timeout_naming_it():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Client(address, connect_timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailableError) as caught:
            client.list_runs()
        elapsed_s = time.monotonic() - started
    assert 1.0 <= elapsed_s < 2.5, elapsed_s
    assert caught.value.addresses == [address]
    assert address in str(caught.value) and "within 1s" in str(caught.value)
    assert "UNAVAILABLE" in caught.value.last_error
    with Client(address, connect_timeout_s=1.0) as client:  # a stream that never got going, likewise
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailableError, match=f"no coordinator answered at {address} within 1s"):
            next(client.watch("some-run"))
        assert 1.0 <= time.monotonic() - started < 2.5
    with Client(address, connect_timeout_s=0) as client:  # 0: one attempt, no waiting
        started = time.monotonic()
        with pytest.raises(CoordinatorUnavailableError):
            client.cluster_status()
        assert time.monotonic() - started < 1.0


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xpipe._cli", *argv], env=child_env(), capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_cli_against_a_dead_address_fails_with_one_clear_line():
    address = f"127.0.0.1:{free_port()}"
    for argv in (["runs"], ["status", "some-run"], ["workers"]):
        started = time.monotonic()
        out = _cli(*argv, "--coordinator", address, "--connect-timeout-s", "1")
        elapsed_s = time.monotonic() - started
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        expected = f"xpipe {argv[0]}: CoordinatorUnavailableError: no coordinator answered at {address}"
        assert lines[0].startswith(expected), lines[0]
        assert 1.0 <= elapsed_s < 10.0  # the timeout plus interpreter start-up
    out = _cli("runs", "--coordinator", "no-port-here")
    assert out.returncode == 1
    assert out.stderr.strip() == "xpipe runs: bad coordinator address 'no-port-here': expected HOST:PORT"
    out = _cli("runs", "--coordinator", address, "--connect-timeout-s", "-3")
    assert out.returncode == 2
    assert "--connect-timeout-s: expected a number of seconds >= 0 or 'none', got '-3'" in out.stderr


def test_wait_timeout_holds_with_no_events_and_with_the_coordinator_dead(tmp_path):
    with Cluster(tmp_path, workers=1, slots=1) as cluster:
        try:
            with PipelineManager(coordinator=cluster.address, connect_timeout_s=30) as pm:
                pipeline = Pipeline("long")
                pipeline.add_task(Task("long", ht.sleep, args=(300.0,)))
                run_id = pm.submit(pipeline)
                eventually(lambda: pm.get_run(run_id).tasks["long"].status == "running", timeout_s=30)
                # Running, and nothing changes for minutes: no event comes to end the wait.
                started = time.monotonic()
                with pytest.raises(TimeoutError, match=f"run {run_id} did not finish within 1s"):
                    pm.wait(run_id, timeout_s=1.0)
                assert 1.0 <= time.monotonic() - started < 2.5
                # With the coordinator gone, timeout_s still wins over a longer connect_timeout_s.
                cluster.coordinator.kill()
                started = time.monotonic()
                # (The message adds "unreachable" when the call failed before the deadline; with a
                # reconnect still pending it is the deadline that ends it, so only the timeout is pinned.)
                with pytest.raises(TimeoutError, match=f"run {run_id} did not finish within 1.5s"):
                    pm.wait(run_id, timeout_s=1.5)
                assert 1.5 <= time.monotonic() - started < 3.0
                with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds >= 0"):
                    pm.wait(run_id, timeout_s=float("nan"))
        finally:
            cluster.workers["w0"].kill()


def test_a_watch_that_streamed_gets_a_fresh_connect_timeout_after_a_break(tmp_path):
    """Followed for longer than connect_timeout_s, the run still rides through a restart."""
    connect_timeout_s = 3.0
    with Cluster(tmp_path, workers=1, slots=1) as cluster, \
            PipelineManager(coordinator=cluster.address, connect_timeout_s=connect_timeout_s) as pm:  # fmt: skip
        pipeline = Pipeline("outlives-the-budget")
        pipeline.add_task(Task("long", ht.sleep, args=(connect_timeout_s + 3.0,)))
        outcome: dict[str, object] = {}
        watching_since = time.monotonic()

        def follow() -> None:
            try:
                outcome["result"] = pm.execute_pipeline(pipeline, monitor=False)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=follow, name="follower")
        thread.start()
        try:
            eventually(lambda: _running(cluster), timeout_s=30, message="the long task running")
            # The property under test is about time: the watch's first budget must be spent.
            eventually(lambda: time.monotonic() - watching_since > connect_timeout_s + 0.5, timeout_s=10)
            cluster.coordinator.kill()
            cluster.restart_coordinator(wait_for_workers=False)
        finally:
            thread.join(timeout=60)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].succeeded
