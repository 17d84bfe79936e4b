"""``xpipe._sdnotify`` against real unix datagram sockets (no daemon)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import pytest
from xpipe import _sdnotify
from xpipe._sdnotify import Notifier, init_from_environ


@pytest.fixture
def bound(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "n.sock")
    sock.bind(path)
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


@pytest.fixture(autouse=True)
def _restore_process_notifier():
    saved = _sdnotify._process
    yield
    _sdnotify._process = saved


def test_without_notify_socket_nothing_is_sent():
    n = Notifier("")
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.ready("x") is False and n.stopping("x") is False


def test_fields_go_in_one_datagram_and_status_stays_one_line(bound):
    path, sock = bound
    assert Notifier(path).ready("line one\nline two")
    assert sock.recv(4096) == b"READY=1\nSTATUS=line one line two"


def test_abstract_socket():
    name = f"@xpipe-unit-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.settimeout(2.0)
    try:
        assert Notifier(name).stopping("bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    finally:
        sock.close()


def test_a_gone_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="xpipe._sdnotify"):
        assert n.status("a") is False
        assert n.status("b") is False
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG]
    assert "nobody-listens.sock" in caplog.records[0].getMessage()


def test_relative_address_is_refused_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="xpipe._sdnotify"):
        n = Notifier("relative.sock")
    assert not n.enabled
    assert "relative.sock" in caplog.text


def test_init_takes_the_variables_out_of_the_environment(bound):
    path, _ = bound
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    n = init_from_environ(env)
    assert env == {"KEEP": "1"}
    assert n is _sdnotify.notifier() and n.enabled
    assert n.watchdog_interval_s == pytest.approx(1.5)


@pytest.mark.parametrize("extra", [{"WATCHDOG_PID": "1"}, {"WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "0"}])
def test_watchdog_only_for_this_process_and_a_valid_interval(bound, extra):
    path, _ = bound
    n = init_from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", **extra})
    assert n.enabled and n.watchdog_interval_s is None


def test_watchdog_pings_at_half_the_interval(bound):
    path, sock = bound
    n = Notifier(path, watchdog_usec=100_000)  # pings every 50 ms

    async def main() -> None:
        task = asyncio.create_task(n.watchdog())
        got = [await asyncio.to_thread(sock.recv, 64) for _ in range(3)]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert got == [b"WATCHDOG=1"] * 3

    asyncio.run(main())
    assert asyncio.run(Notifier("").watchdog()) is None  # no watchdog: returns at once


def test_the_embedded_clusters_daemons_do_not_get_the_callers_notify_socket(monkeypatch, tmp_path):
    """A Type=notify service embedding PipelineManager() is the one that talks to systemd."""
    from xpipe._local import LocalCluster

    for name in _sdnotify.NOTIFY_ENV:
        monkeypatch.setenv(name, "/run/systemd/notify" if name == "NOTIFY_SOCKET" else "1")
    env = LocalCluster(data_dir=tmp_path)._env()
    assert not set(_sdnotify.NOTIFY_ENV) & set(env)
    assert os.environ["NOTIFY_SOCKET"] == "/run/systemd/notify"  # the caller's own stays
