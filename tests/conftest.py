"""Shared fixtures: a real cluster, a real etcd, and a check that no process leaked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import SESSION_PIDS, Cluster, EtcdServer, assert_no_leaks, describe_pids

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


# --------------------------------------------------------------------------- brokers
# Real Kafka, Redis and NATS for the stream tests (tests/helpers_brokers.py). Each is
# started once per session, on first use only, so a run that touches no broker starts
# none; its pid is in SESSION_PIDS, so no leak check counts it against a test.


def _session_broker(tmp_path_factory: pytest.TempPathFactory, make) -> Iterator:
    from tests.helpers_brokers import BrokerMissing, missing_broker

    try:
        server = make(tmp_path_factory.mktemp("brokers"))
    except BrokerMissing as exc:
        missing = exc
    else:
        missing = None
    if missing is not None:  # outside the except: the skip/fail message stands alone
        missing_broker(missing)
    server.start()
    SESSION_PIDS.add(server.proc.pid)
    try:
        yield server
    finally:
        server.stop()
        SESSION_PIDS.discard(server.proc.pid)


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real Kafka 4 (KRaft) on loopback for the session; ``.bootstrap``, ``.url(topic)``."""
    from tests.helpers_brokers import KafkaServer

    yield from _session_broker(tmp_path_factory, KafkaServer)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real redis-server on loopback for the session; ``.port``, ``.url(key)``."""
    from tests.helpers_brokers import RedisServer

    yield from _session_broker(tmp_path_factory, RedisServer)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real nats-server with JetStream for the session; ``.server_url``, ``.url(subject)``."""
    from tests.helpers_brokers import NatsServer

    yield from _session_broker(tmp_path_factory, NatsServer)


@pytest.fixture
def broker_ns(request: pytest.FixtureRequest) -> str:
    """A fresh prefix for this test's topics, stream keys, subjects and groups.

    Valid in all three brokers (``[a-z0-9-]``); use it as ``f"{broker_ns}.events"``
    (a NATS JetStream stream name must be the bare prefix: no dots).
    """
    from tests.helpers_brokers import new_namespace

    return new_namespace(request.node.originalname)
