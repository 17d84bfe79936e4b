"""Real tests of the integration harness itself: etcd, processes, waiting, leaks.

The etcd tests also prove that `make install` really installed the etcd server.
"""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.harness import (
    Cluster,
    EtcdServer,
    Proc,
    StopWaiting,
    assert_no_leaks,
    eventually,
    find_etcd,
    free_port,
    free_ports,
)

# --------------------------------------------------------------------------- etcd


def test_etcd_put_get_survives_restart_and_stop_ends_process(tmp_path: Path) -> None:
    with EtcdServer(tmp_path) as etcd:
        assert etcd.endpoint == f"127.0.0.1:{etcd.client_port}"
        etcd.put(b"/xpipe/test/key", b"value \x00\xff")
        assert etcd.get(b"/xpipe/test/key") == b"value \x00\xff"
        assert etcd.get(b"/xpipe/test/missing") is None

        first = etcd.proc
        etcd.restart()
        assert etcd.proc is not first and not first.alive()
        assert etcd.endpoint == f"127.0.0.1:{etcd.client_port}"
        assert etcd.get(b"/xpipe/test/key") == b"value \x00\xff", "key lost across restart"

        pid = etcd.proc.pid
        etcd.stop()
        assert not etcd.proc.alive()
        assert etcd.proc.returncode is not None
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        etcd.stop()  # idempotent


def test_etcd_fixture_and_kill_then_restart_keeps_data(etcd: EtcdServer) -> None:
    etcd.put(b"k", b"durable")
    etcd.kill()
    assert etcd.proc.returncode == -signal.SIGKILL
    etcd.kill()  # idempotent
    with pytest.raises(OSError):
        etcd.health()
    etcd.restart()
    assert etcd.get(b"k") == b"durable"


def test_etcd_start_fails_clearly_when_port_is_taken(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.client_port))
        squatter.listen()
        with pytest.raises(AssertionError, match="etcd failed to start") as info:
            server.start()
    assert "etcd exited" in str(info.value)
    assert "address already in use" in str(info.value).lower(), "log tail missing from the error"
    assert not server.proc.alive()


def test_etcd_gateway_errors_name_the_call(etcd: EtcdServer) -> None:
    with pytest.raises(RuntimeError, match=r"etcd /v3/kv/put failed: HTTP 400"):
        etcd._gateway("/v3/kv/put", {"key": "***not base64***"})


def test_find_etcd_reports_missing_binary(tmp_path: Path) -> None:
    assert Path(find_etcd()).name == "etcd"
    with pytest.raises(FileNotFoundError, match="make install"):
        find_etcd(search_path=str(tmp_path), fallback=str(tmp_path / "etcd"))


# --------------------------------------------------------------------------- eventually


def test_eventually_returns_the_first_truthy_value() -> None:
    calls = iter([0, None, "", "ready"])
    assert eventually(lambda: next(calls), timeout_s=5, interval_s=0) == "ready"


def test_eventually_times_out_naming_last_value() -> None:
    pending = [3, 2, 1]
    with pytest.raises(AssertionError, match=r"queue drained: not met within 0.05s; last value: \[\]"):
        eventually(lambda: [x for x in pending if x > 5], timeout_s=0.05, message="queue drained")


def test_eventually_times_out_naming_last_exception() -> None:
    def boom() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(AssertionError, match="last exception: ConnectionRefusedError: nobody home") as info:
        eventually(boom, timeout_s=0.05)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_eventually_stop_waiting_fails_at_once() -> None:
    def dead() -> bool:
        raise StopWaiting("child exited with 1")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="server up: gave up: child exited with 1"):
        eventually(dead, timeout_s=30, message="server up")
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- processes


def _python(tmp_path: Path, name: str, code: str) -> Proc:
    return Proc(name, [sys.executable, "-c", textwrap.dedent(code)], log_dir=tmp_path / "logs")


def _output(proc: Proc) -> list[str]:
    """Lines the process printed (the log's first line is the command, which holds the code)."""
    lines = proc.log_text().splitlines()
    assert lines and lines[0].startswith("$ "), "log does not start with the command line"
    return lines[1:]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_proc_logs_output_and_reports_exit_status(tmp_path: Path) -> None:
    proc = _python(tmp_path, "hello", "import sys; print('hi out'); print('hi err', file=sys.stderr); sys.exit(3)")
    assert proc.wait(10) == 3
    assert not proc.alive() and proc.returncode == 3
    eventually(lambda: "hi err" in _output(proc), timeout_s=5)
    assert "hi out" in _output(proc)
    assert proc.log_path.parent == tmp_path / "logs"
    assert proc.terminate() == 3  # idempotent on an exited process
    again = _python(tmp_path, "hello", "pass")
    assert again.log_path != proc.log_path, "a second process of the same name overwrote the log"
    again.wait(10)
    again.kill()


def test_proc_wait_times_out_clearly(tmp_path: Path) -> None:
    proc = _python(tmp_path, "sleeper", "import time; time.sleep(60)")
    try:
        with pytest.raises(AssertionError, match=r"sleeper \(pid \d+\) still running after 0.05s"):
            proc.wait(0.05)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL


def test_proc_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    proc = _python(
        tmp_path,
        "stubborn",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(60)
        """,
    )
    eventually(lambda: "ignoring SIGTERM" in _output(proc), timeout_s=10)
    assert proc.terminate(timeout_s=0.2) == -signal.SIGKILL
    assert not proc.alive()


def test_proc_clean_sigterm_exit_status(tmp_path: Path) -> None:
    proc = _python(tmp_path, "polite", "import time; print('up', flush=True); time.sleep(60)")
    eventually(lambda: "up" in _output(proc), timeout_s=10)
    assert proc.terminate() == -signal.SIGTERM


def test_proc_stop_signal_freezes_and_thaws(tmp_path: Path) -> None:
    proc = _python(tmp_path, "frozen", "import time; time.sleep(60)")
    try:
        proc.stop_signal(signal.SIGSTOP)
        eventually(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED, timeout_s=5)
        proc.stop_signal(signal.SIGCONT)
        eventually(lambda: psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED, timeout_s=5)
    finally:
        proc.kill()


def test_kill_sweeps_grandchildren_and_leak_check_sees_them(tmp_path: Path) -> None:
    proc = _python(
        tmp_path,
        "parent",
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(60)
        """,
    )
    line = eventually(lambda: [l for l in _output(proc) if l.startswith("grandchild ")], timeout_s=10)
    grandchild = int(line[0].split()[1])
    assert {proc.pid, grandchild} <= assert_no_leaks()
    proc.kill()

    def grandchild_gone() -> bool:
        try:
            return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    eventually(grandchild_gone, timeout_s=5, message="grandchild killed with its group")
    assert assert_no_leaks(timeout_s=5) == set()


def test_leak_check_ignores_baseline_and_waits_for_exit(tmp_path: Path) -> None:
    proc = _python(tmp_path, "brief", "import time; time.sleep(0.2)")
    assert assert_no_leaks(ignore={proc.pid}) == set()
    assert proc.pid in assert_no_leaks()
    assert assert_no_leaks(timeout_s=10) == set(), "exited child still counted as live"
    proc.kill()


# --------------------------------------------------------------------------- cluster


def test_cluster_start_failure_reports_coordinator_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, workers=1, coordinator_args=("--no-such-flag-xyz",), startup_timeout_s=20)
    with pytest.raises(AssertionError, match="cluster failed to start: .*coordinator exited with") as info:
        cluster.start()
    assert "----- <Proc coordinator" in str(info.value), "coordinator log tail missing from the error"
    assert cluster.coordinator is not None and not cluster.coordinator.alive()
    assert cluster.workers == {}, "workers started although the coordinator never came up"
    cluster.stop()  # idempotent after a failed start
