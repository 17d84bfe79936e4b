"""Shared fixtures: a real cluster, a real etcd, and a check that no process leaked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cluster, EtcdServer, assert_no_leaks, describe_pids

_INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
# Processes take a moment to exit after SIGTERM/SIGKILL; poll this long for them.
_LEAK_DEADLINE_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs real coordinator/worker/etcd processes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration, so `-m "not integration"` is quick."""
    for item in items:
        if _INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


def _check_no_leaks(baseline: set[int], what: str) -> None:
    leaked = assert_no_leaks(_LEAK_DEADLINE_S, ignore=baseline)
    assert not leaked, f"{what} left child processes alive:\n{describe_pids(leaked)}"


@pytest.fixture(autouse=True)
def _no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """For integration tests: fail if the test left any child process alive."""
    if _INTEGRATION_DIR not in request.node.path.resolve().parents:
        yield
        return
    baseline = assert_no_leaks()
    yield
    _check_no_leaks(baseline, request.node.nodeid)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A started coordinator with two workers; stopped, and checked for leaks, after."""
    baseline = assert_no_leaks()
    c = Cluster(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        # Shown by pytest only when the test fails.
        print(c.format_logs())
    _check_no_leaks(baseline, "cluster fixture")


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real single-member etcd on free loopback ports with a fresh data dir."""
    server = EtcdServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and not server.proc.alive():
            print(server.proc.log_tail())
        server.stop()
