"""systemd readiness: real daemons write READY/STATUS/STOPPING/WATCHDOG to a socket we bind.

Each test binds a real unix datagram socket, as systemd does for a ``Type=notify`` unit,
starts a daemon with ``NOTIFY_SOCKET`` naming it, and reads what arrives.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from xpipe import PipelineManager, Pipeline, Task
from xpipe._proto import admin_pb2, admin_pb2_grpc

from tests.harness import Proc, child_env, eventually, free_port


class NotifySocket:
    """A bound datagram socket collecting notifications, as parsed ``{KEY: VALUE}`` dicts."""

    def __init__(self, address: str) -> None:
        self.address = address  # what NOTIFY_SOCKET says: a path or @abstract
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        """Everything received so far (reading what is waiting first)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def first(self, key: str) -> int | None:
        """Index of the first message carrying ``key``, or None."""
        return next((i for i, m in enumerate(self.poll()) if key in m), None)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.poll() if "STATUS" in m]

    def close(self) -> None:
        self.sock.close()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _coordinator(tmp_path: Path, address: str, env: dict[str, str], *extra: str, name: str = "coordinator") -> Proc:
    argv = [sys.executable, "-m", "xpipe.coordinator", "--listen", address, "--data-dir", str(tmp_path / name),
            "--ready-file", str(tmp_path / f"{name}.ready"), "--alert-loopback-only", *extra]  # fmt: skip
    return Proc(name, argv, log_dir=tmp_path / "logs", env=env, cwd=tmp_path)


def test_coordinator_ready_after_serving_stopping_on_sigterm_and_watchdog(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    address = f"127.0.0.1:{free_port()}"
    # A 0.4 s watchdog: pings every 0.2 s from the coordinator's event loop.
    env = child_env({"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
    proc = _coordinator(tmp_path, address, env)
    try:
        eventually(lambda: notify.first("READY") is not None, timeout_s=30, message=f"READY=1\n{proc.log_tail()}")
        ready_at = notify.first("READY")
        # READY=1 comes only once it serves: the ready file is written and health answers SERVING.
        assert (tmp_path / "coordinator.ready").read_text().strip() == address
        assert _serving(address)
        assert notify.received[ready_at] == {"READY": "1", "STATUS": f"serving on {address}"}
        assert notify.first("STOPPING") is None
        # Several pings arrive while it runs: the loop pings at half the interval.
        eventually(lambda: sum("WATCHDOG" in m for m in notify.poll()) >= 3, timeout_s=10, message="3 watchdog pings")
        proc.stop_signal(signal.SIGTERM)
        eventually(lambda: notify.first("STOPPING") is not None, timeout_s=10, message="STOPPING=1")
        assert proc.wait(timeout_s=20) == 0
        stopping = notify.received[notify.first("STOPPING")]
        assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
        assert notify.first("STOPPING") > ready_at
    finally:
        proc.terminate()
        notify.close()


def test_coordinator_that_fails_to_start_never_says_ready(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    # gRPC binds, then the dashboard's port is in use: the start fails after serving began.
    proc = _coordinator(tmp_path, f"127.0.0.1:{free_port()}", child_env({"NOTIFY_SOCKET": notify.address}),
                        "--http-listen", busy)  # fmt: skip
    try:
        assert proc.wait(timeout_s=30) == 2, proc.log_tail()
        assert "--http-listen" in proc.log_text()
        assert notify.first("READY") is None, notify.poll()
    finally:
        proc.terminate()
        taken.close()
        notify.close()


def test_ha_members_report_leader_and_follower(tmp_path, etcd):
    """STATUS names each member's role, and follows a failover."""
    sockets = [NotifySocket(f"@xpipe-test-{uuid.uuid4().hex}") for _ in range(2)]
    addresses = [f"127.0.0.1:{port}" for port in (free_port(), free_port())]
    ha = ("--store", f"etcd://{etcd.endpoint}", "--cluster", "sdnotify", "--lease-ttl-s", "2",
          "--artifact-dir", str(tmp_path / "artifacts"))  # fmt: skip
    procs = []
    try:
        for i, (address, notify) in enumerate(zip(addresses, sockets)):
            env = child_env({"NOTIFY_SOCKET": notify.address})
            procs.append(_coordinator(tmp_path, address, env, *ha, name=f"c{i}"))
            eventually(lambda: notify.first("READY") is not None, timeout_s=30,
                       message=f"c{i} READY\n{procs[-1].log_tail()}")  # fmt: skip
        # c0 started first and leads; c1 follows it.
        eventually(lambda: sockets[0].statuses()[-1].startswith("leader of cluster 'sdnotify'"), timeout_s=20,
                   message=f"c0 leader status: {sockets[0].statuses()}")  # fmt: skip
        eventually(lambda: sockets[1].statuses()[-1] == f"follower at {addresses[1]}; leader: {addresses[0]}",
                   timeout_s=20, message=f"c1 follower status: {sockets[1].statuses()}")  # fmt: skip
        procs[0].stop_signal(signal.SIGTERM)
        assert procs[0].wait(timeout_s=20) == 0
        eventually(lambda: sockets[1].statuses()[-1].startswith("leader of cluster 'sdnotify'"), timeout_s=20,
                   message=f"c1 took over: {sockets[1].statuses()}")  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for notify in sockets:
            notify.close()


def test_worker_ready_only_once_registered_and_stopping_on_sigterm(tmp_path):
    notify = NotifySocket(f"@xpipe-test-{uuid.uuid4().hex}")  # abstract, as some managers use
    address = f"127.0.0.1:{free_port()}"
    # WATCHDOG_PID names another process: this worker must not ping.
    env = child_env({"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    argv = [sys.executable, "-m", "xpipe.worker", "--coordinator", address, "--name", "nw", "--slots", "1"]
    worker = Proc("worker", argv, log_dir=tmp_path / "logs", env=env, cwd=tmp_path)
    coordinator = None
    try:
        # Up, but no coordinator yet: it says it is connecting, and is not ready.
        eventually(lambda: f"connecting to {address}" in notify.statuses(), timeout_s=30,
                   message=f"STATUS connecting\n{worker.log_tail()}")  # fmt: skip
        assert notify.first("READY") is None
        coordinator = _coordinator(tmp_path, address, child_env())
        eventually(lambda: notify.first("READY") is not None, timeout_s=30,
                   message=f"worker READY=1\n{worker.log_tail()}\n{coordinator.log_tail()}")  # fmt: skip
        # Ready means registered: the coordinator lists it at once.
        with grpc.insecure_channel(address) as channel:
            workers = admin_pb2_grpc.AdminServiceStub(channel).ListWorkers(admin_pb2.ListWorkersRequest(), timeout=5).workers
        assert [w.name for w in workers] == ["nw"]
        assert notify.received[notify.first("READY")]["STATUS"] == f"registered with {address} (1 slots)"
        worker.stop_signal(signal.SIGTERM)
        eventually(lambda: notify.first("STOPPING") is not None, timeout_s=10, message="worker STOPPING=1")
        assert notify.received[notify.first("STOPPING")]["STATUS"].startswith("draining: 0 attempts running")
        assert worker.wait(timeout_s=40) == 0
        assert notify.first("WATCHDOG") is None
    finally:
        worker.terminate()
        if coordinator is not None:
            coordinator.terminate()
        notify.close()


def test_tasks_do_not_inherit_the_notify_socket(tmp_path):
    """Only the daemon talks to systemd: a task process finds no NOTIFY_SOCKET."""
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    address = f"127.0.0.1:{free_port()}"
    coordinator = _coordinator(tmp_path, address, child_env())
    argv = [sys.executable, "-m", "xpipe.worker", "--coordinator", address, "--name", "tw", "--slots", "1"]
    worker = Proc("worker", argv, log_dir=tmp_path / "logs", env=child_env({"NOTIFY_SOCKET": notify.address}),
                  cwd=tmp_path)  # fmt: skip
    try:
        eventually(lambda: notify.first("READY") is not None, timeout_s=30, message=f"READY\n{worker.log_tail()}")
        probe = "import os; print(os.environ.get('NOTIFY_SOCKET', 'unset'))"
        with PipelineManager(coordinator=address) as pm:
            p = Pipeline("env")
            p.add_task(Task.command("probe", [sys.executable, "-c", probe]))
            result = pm.execute_pipeline(p, monitor=False)
        assert result.outputs["probe"]["stdout"].strip() == "unset"
    finally:
        worker.terminate()
        coordinator.terminate()
        notify.close()
