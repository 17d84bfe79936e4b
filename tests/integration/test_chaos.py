"""Kill real worker and coordinator processes mid-run: the run still completes, correctly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

from tests import helpers_tasks as ht
from tests.harness import Cluster, eventually
from xpipe import Pipeline, PipelineManager, Task

HEARTBEAT_TIMEOUT_S = 2.0


def test_sigkill_worker_mid_run_requeues_its_attempts(tmp_path):
    args = ("--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--heartbeat-interval-s", "0.5")
    with Cluster(tmp_path, workers=2, slots=2, coordinator_args=args) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("chaos")
        p.add_tasks([Task(f"t{i}", ht.sleep, args=(0.3,)) for i in range(24)])
        p.add_task(Task("sum", ht.add, depends_on=[f"t{i}" for i in range(24)]))
        run_id = pm.submit(p)
        eventually(lambda: any(t.worker == "w0" and t.status == "running" for t in pm.get_run(run_id).tasks.values()),
                   timeout_s=20, message="w0 never started a task")  # fmt: skip
        killed_at = time.monotonic()
        c.workers["w0"].kill()
        result = pm.wait(run_id, timeout_s=60)
        recovered_s = time.monotonic() - killed_at
        assert result.outputs["sum"] == 24 * 0.3 or abs(result.outputs["sum"] - 7.2) < 1e-9
        requeued = [t for t in result.tasks.values() if t.attempts > 1]
        assert requeued, "the killed worker's attempts were not requeued"
        assert all(t.worker == "w1" for t in requeued)
        # 24 tasks of 0.3 s on 2 slots take ~3.6 s; the kill adds at most the heartbeat timeout.
        print(f"worker SIGKILL to run completion: {recovered_s:.2f}s")
        assert recovered_s < 3.6 + HEARTBEAT_TIMEOUT_S + 5.0
        workers = {w.name: w.state for w in c.list_workers()}
        assert workers["w0"] == "lost"


def test_result_lost_with_a_killed_coordinator_is_recorded_once_not_rerun(tmp_path):
    """The worker finishes a task while the coordinator is frozen, then the coordinator is
    killed before it reads the result. On restart the worker sends the outcome again
    (Register.recent), so the task is recorded once and not run a second time."""
    marks = tmp_path / "marks"
    marks.mkdir()
    # Heartbeats far apart, so the only message the worker writes while the coordinator is
    # frozen is its outcome (a heartbeat right after outcomes is skipped anyway).
    args = ("--heartbeat-timeout-s", "90", "--heartbeat-interval-s", "30")
    with Cluster(tmp_path, workers=1, slots=1, coordinator_args=args) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("lost-result")
        first = Task("first", ht.sleep_then_mark, args=(str(marks), "first", 1.0))
        p.add_tasks([first, Task("second", ht.echo, depends_on=[first])])
        run_id = pm.submit(p)
        eventually(lambda: pm.get_run(run_id).tasks["first"].status == "running", timeout_s=20)
        c.coordinator.stop_signal(signal.SIGSTOP)
        # Counted before the task ends: its outcome may reach the socket a moment after the mark.
        unread = _unread_bytes(c.port, c.workers["w0"].pid)
        eventually(lambda: (marks / "first").exists(), timeout_s=20, message="task never finished on the worker")
        # The outcome is in the frozen coordinator's socket: more unread bytes than a ping (17).
        eventually(lambda: _unread_bytes(c.port, c.workers["w0"].pid) > unread + 17, timeout_s=10,
                   message="the worker's outcome written into the frozen coordinator's socket")  # fmt: skip
        restarted_at = time.monotonic()
        c.coordinator.kill()
        c.restart_coordinator()
        result = pm.wait(run_id, timeout_s=30)
        recovery_s = time.monotonic() - restarted_at
        assert result.succeeded
        assert result.tasks["first"].attempts == 1 and result.outputs["second"] == "first"
        assert (marks / "first").read_text() == "ran\n"  # ran exactly once
        print(f"coordinator restart to run completion: {recovery_s:.2f}s")


def _unread_bytes(coordinator_port: int, worker_pid: int) -> int:
    """Bytes the worker sent that wait unread in the coordinator's socket (its TCP Recv-Q).

    Read from /proc/net/tcp{,6}: the coordinator's end of the worker's connection is the entry
    whose local port is the coordinator's and whose remote port is the worker's.
    """
    worker_ports = {
        conn.laddr.port
        for conn in psutil.Process(worker_pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == coordinator_port
    }
    # gRPC may use IPv6 sockets for 127.0.0.1 (v4-mapped), which only tcp6 lists.
    lines = [line for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    total = 0
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == coordinator_port and remote_port in worker_ports:
            total += int(fields[4].split(":")[1], 16)
    return total


def test_sigterm_drains_worker_and_requeues_what_outlives_the_grace(tmp_path):
    with Cluster(tmp_path, workers=2, slots=1, worker_args=("--grace-s", "0.5")) as c, \
            PipelineManager(coordinator=c.address) as pm:  # fmt: skip
        p = Pipeline("drain")
        p.add_tasks([Task(f"s{i}", ht.sleep, args=(1.5,)) for i in range(4)])
        run_id = pm.submit(p)
        eventually(lambda: any(t.worker == "w0" and t.status == "running" for t in pm.get_run(run_id).tasks.values()),
                   timeout_s=20)  # fmt: skip
        c.workers["w0"].stop_signal(signal.SIGTERM)
        assert c.workers["w0"].wait(timeout_s=20) == 0  # exits cleanly after its grace
        result = pm.wait(run_id, timeout_s=60)
        assert result.succeeded
        given_back = [t for t in result.tasks.values() if t.attempts > 1]
        assert given_back and all(t.worker == "w1" for t in given_back)


def test_xpipe_drain_finishes_running_work_then_takes_none(tmp_path):
    with Cluster(tmp_path, workers=2, slots=1) as c, PipelineManager(coordinator=c.address) as pm:
        p = Pipeline("drain-cli")
        p.add_tasks([Task(f"s{i}", ht.sleep, args=(0.4,)) for i in range(8)])
        run_id = pm.submit(p)
        eventually(lambda: any(t.worker == "w0" and t.status == "running" for t in pm.get_run(run_id).tasks.values()),
                   timeout_s=20)  # fmt: skip
        assert pm.client.drain("w0") is True
        assert pm.client.drain("nobody") is False
        assert c.workers["w0"].wait(timeout_s=20) == 0
        result = pm.wait(run_id, timeout_s=60)
        assert result.succeeded
        on_w0 = [t for t in result.tasks.values() if t.worker == "w0"]
        assert 1 <= len(on_w0) <= 2  # what it was running (and nothing after the drain)
