"""Real message brokers for the stream tests: Kafka (KRaft), Redis and NATS JetStream.

Nothing here is a mock. Each server is the real program, started in its own session on
free loopback ports with its files under a test directory, logging to a file, waited
for by polling a real client with a deadline (:func:`tests.harness.eventually`), and
stopped with SIGTERM, then SIGKILL after a grace period, its files removed.

- :class:`RedisServer`: Debian's ``redis-server``, no persistence unless ``appendonly``.
- :class:`NatsServer`: Debian's ``nats-server`` with JetStream (``-js``).
- :class:`KafkaServer`: Apache Kafka 4.x, combined broker and controller (KRaft), from
  the jars that ``scripts/fetch_kafka.py`` cached (``make install`` runs it).

Each has ``url(name)`` giving the URI that ``DataStream`` takes for a topic, stream key
or subject on it, and ``startup_s``, how long the last start took. Example::

    with RedisServer(tmp_path) as redis_server:
        uri = redis_server.url("events")       # redis://127.0.0.1:PORT/0/events

The test fixtures (``tests/conftest.py``) start each kind once per session, on first
use, and hand each test a fresh namespace prefix (``broker_ns``).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import shutil
import socket
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness import REPO_ROOT, Proc, StopWaiting, eventually, format_logs, free_ports


def _load_fetch_kafka():
    """scripts/fetch_kafka.py, the one place that knows the Kafka version and its cache.

    Loaded by path: scripts/ is not a package, and putting it on sys.path would leak.
    """
    spec = importlib.util.spec_from_file_location(
        "xpipe_fetch_kafka", REPO_ROOT / "scripts" / "fetch_kafka.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fetch_kafka = _load_fetch_kafka()
KAFKA_VERSION: str = _fetch_kafka.KAFKA_VERSION
kafka_home = _fetch_kafka.kafka_home
kafka_libs = _fetch_kafka.kafka_libs

#: SIGTERM grace before SIGKILL. Kafka's controlled shutdown takes a few seconds.
STOP_GRACE_S = 15.0
#: Heap of the test broker: small, since tests move kilobytes, and the host has 2 cores.
KAFKA_HEAP = "512m"


class BrokerMissing(Exception):
    """A broker's program or jars are not installed; the message says how to get them."""


def find_program(name: str) -> str:
    """Path of ``name`` on PATH or in /usr/sbin (where Debian puts nats-server).

    Raises:
        BrokerMissing: not installed, naming the Debian package and ``make install``.
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        raise BrokerMissing(f"{name} not found on PATH nor in /usr/sbin: run `make install` "
                            f"(it installs Debian's {name}) or `apt-get install {name}`")  # fmt: skip
    return path


def find_kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The cached Kafka jars, and Java to run them.

    Raises:
        BrokerMissing: no ``java``, or the jars were not fetched, naming the command.
    """
    if shutil.which("java") is None:
        raise BrokerMissing("java not found on PATH: Kafka needs Java 17+ (Debian: openjdk-17-jre-headless)")
    libs = kafka_libs(version)
    if libs is None:
        raise BrokerMissing(
            f"Kafka {version} jars are not cached in {kafka_home(version)}: run `make install` "
            f"or `python scripts/fetch_kafka.py` (needs Maven)"
        )
    return libs


def missing_broker(exc: BrokerMissing) -> None:
    """Skip the test locally, but fail it in CI (``CI=true``), where a skip would hide a gap.

    Raises:
        pytest.fail.Exception: under CI, with ``exc``'s message (what to install).
        pytest.skip.Exception: otherwise, with the same message.
    """
    import pytest

    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"broker missing in CI: {exc}", pytrace=False)
    pytest.skip(f"broker missing: {exc}")


def new_namespace(label: str = "t") -> str:
    """A prefix unique to one test, valid as a Kafka topic, Redis key, NATS stream and subject token.

    Only ``[a-z0-9-]``: NATS stream names forbid ``.``, ``*``, ``>`` and spaces, Kafka
    topics allow ``[a-zA-Z0-9._-]``.
    """
    clean = "".join(c if c.isascii() and c.isalnum() else "-" for c in label.lower()).strip("-")[:40] or "t"
    return f"{clean}-{uuid.uuid4().hex[:10]}"


class _Server:
    """Start/stop/log plumbing shared by the three brokers."""

    kind = "broker"

    def __init__(self, tmp_path: Path, *, startup_timeout_s: float) -> None:
        self.root = Path(tmp_path) / f"{self.kind}-{uuid.uuid4().hex[:8]}"
        self.log_dir = self.root / "logs"
        self.startup_timeout_s = startup_timeout_s
        self.proc: Proc | None = None
        #: Seconds from spawning the process to a client's first successful round trip.
        self.startup_s: float | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and self.proc is not None:
            print(format_logs([self.proc]), file=sys.stderr)
        self.stop()

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files, format storage: whatever must precede the server."""

    def ready(self) -> bool:
        """One client round trip; raises or returns False while not ready."""
        raise NotImplementedError

    def start(self):
        """Start the server and wait until a client can use it.

        Raises:
            AssertionError: it exited or was not ready in time; carries its log tail.
        """
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.kind} is already running (pid {self.proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._prepare()
        self.proc = Proc(self.kind, self._argv(), log_dir=self.log_dir, cwd=self.root)
        proc = self.proc

        def ready() -> bool:
            if not proc.alive():
                raise StopWaiting(f"{self.kind} exited with {proc.returncode}")
            return self.ready()

        try:
            eventually(ready, timeout_s=self.startup_timeout_s, interval_s=0.05, message=f"{self.kind} ready")
        except AssertionError as exc:
            logs = format_logs([proc])
            proc.kill()
            raise AssertionError(f"{self.kind} failed to start: {exc}\n{logs}") from exc
        self.startup_s = time.monotonic() - started
        return self

    def stop(self) -> None:
        """SIGTERM, SIGKILL after :data:`STOP_GRACE_S`, then remove its files. Idempotent."""
        if self.proc is not None:
            self.proc.terminate(STOP_GRACE_S)
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would, keeping its files: ``start()`` again recovers from them."""
        if self.proc is not None:
            self.proc.kill()

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else ""


class RedisServer(_Server):
    """Debian's ``redis-server`` on a free loopback port.

    Args:
        tmp_path: Parent of its directory (removed on stop).
        appendonly: Keep an append-only file (fsync every write), for tests that kill
            Redis and need what it acknowledged back; off by default, as is RDB saving.
    """

    kind = "redis"

    def __init__(
        self,
        tmp_path: Path,
        *,
        appendonly: bool = False,
        port: int | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(tmp_path, startup_timeout_s=startup_timeout_s)
        self.binary = find_program("redis-server")
        self.appendonly = appendonly
        self.port = port if port is not None else free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"

    def url(self, key: str, db: int = 0) -> str:
        """``redis://HOST:PORT/DB/KEY``, the stream URI of ``key``."""
        return f"redis://{self.address}/{db}/{key}"

    def _argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.root), "--protected-mode", "no", "--daemonize", "no"]  # fmt: skip
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def client(self, **options: Any):
        """A synchronous ``redis.Redis`` on this server (the caller closes it)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0, **options)

    def ready(self) -> bool:
        # A raw PING with a short timeout: redis-py retries a timed-out call with
        # backoff, which would outlast the server's own exit on a failed start.
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


class NatsServer(_Server):
    """Debian's ``nats-server`` (2.9) with JetStream on, on free loopback ports.

    The monitoring port serves ``/healthz``, which reports ok only once JetStream is up.
    """

    kind = "nats"

    def __init__(self, tmp_path: Path, *, startup_timeout_s: float = 10.0) -> None:
        super().__init__(tmp_path, startup_timeout_s=startup_timeout_s)
        self.binary = find_program("nats-server")
        self.port, self.monitor_port = free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.store_dir = self.root / "jetstream"
        # Loopback only: never let an http_proxy setting route the health check.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, subject: str) -> str:
        """``nats://HOST:PORT/SUBJECT``, the stream URI of ``subject``."""
        return f"nats://{self.address}/{subject}"

    @property
    def server_url(self) -> str:
        """What ``nats.connect`` takes."""
        return f"nats://{self.address}"

    def _argv(self) -> list[str]:
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.store_dir)]  # fmt: skip

    def ready(self) -> bool:
        with self._http.open(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2.0) as reply:
            return reply.status == 200


_KAFKA_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.BrokerServer
logger.server.level = INFO
"""


class KafkaServer(_Server):
    """Apache Kafka 4.x in KRaft mode, one node that is both broker and controller.

    Topics are created on first use with one partition (``partitions`` changes the
    default), replication 1, 1 MiB segments and 10 minutes' retention; consumer groups
    rebalance at once (``group.initial.rebalance.delay.ms=0``) and the internal offsets
    topic has one partition, so the first group join takes milliseconds, not seconds.

    Args:
        tmp_path: Parent of its directory (config, log dirs; removed on stop).
        partitions: ``num.partitions`` for auto-created topics.
        libs: Directory of the jars; defaults to the cache that ``fetch_kafka`` fills.
    """

    kind = "kafka"

    def __init__(
        self,
        tmp_path: Path,
        *,
        partitions: int = 1,
        libs: Path | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(tmp_path, startup_timeout_s=startup_timeout_s)
        self.libs = Path(libs) if libs is not None else find_kafka_libs()
        self.partitions = partitions
        self.port, self.controller_port = free_ports(2)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.config_path = self.root / "server.properties"
        self.data_dir = self.root / "data"
        # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding.
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()

    def url(self, topic: str) -> str:
        """``kafka://HOST:PORT/TOPIC``, the stream URI of ``topic``."""
        return f"kafka://{self.bootstrap}/{topic}"

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{KAFKA_HEAP}", "-Xms64m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            "-cp", f"{self.libs}/*", main_class, *args,
        ]  # fmt: skip

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A restart after kill() waits out the dead process's broker session before it
            # may register again: 3 s instead of the default 9 s.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "log.segment.bytes": str(1024 * 1024),
            "log.retention.ms": str(10 * 60 * 1000),
            "log.retention.check.interval.ms": str(60 * 1000),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _prepare(self) -> None:
        """Write server.properties and format the log dir (``kafka-storage format``).

        A restart after :meth:`kill` keeps the formatted log dir (and its records);
        formatting it again would fail.
        """
        self.config_path.write_text(self._properties())
        (self.root / "log4j2.properties").write_text(_KAFKA_LOG4J)
        if (self.data_dir / "meta.properties").is_file():
            return
        fmt = Proc("kafka-storage-format", self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                                                      "-c", str(self.config_path)),
                   log_dir=self.log_dir, cwd=self.root)  # fmt: skip
        status = fmt.wait(60.0)
        fmt.kill()
        if status != 0:
            raise AssertionError(f"kafka storage format failed (exit {status}):\n{fmt.log_tail()}")

    def _argv(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_path))

    def ready(self) -> bool:
        """True once a record produced to a fresh topic is consumed back.

        A plain TCP connect comes first: it is cheap, and a JVM still loading classes
        refuses connections for seconds, which would cost a client start-up each poll.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
            pass
        return asyncio.run(kafka_round_trip(self.bootstrap, f"__xpipe-ready-{uuid.uuid4().hex[:8]}"))


async def kafka_round_trip(bootstrap: str, topic: str, timeout_s: float = 10.0) -> bool:
    """Produce one record to ``topic`` and consume it back; True when it came back intact."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await producer.start()
        await asyncio.wait_for(producer.send_and_wait(topic, b"ready"), timeout_s)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        await consumer.start()
        record = await asyncio.wait_for(consumer.getone(), timeout_s)
    finally:
        await consumer.stop()
    return record.value == b"ready"
