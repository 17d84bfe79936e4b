"""Helpers for integration tests that run REAL processes: coordinator, workers, etcd.

Nothing here is a mock. Each helper starts the actual program in its own session
(process group) on loopback ports, sends its output to a log file (never a pipe that
could fill and block the child), and waits only by polling with a deadline through
:func:`eventually`. On failure the log tails go into the error message, since a
distributed test that fails without the children's logs is nearly impossible to debug.

Example::

    with Cluster(tmp_path, workers=2) as cluster:
        cluster.workers["w0"].kill()
        eventually(lambda: _state(cluster, "w0") == "lost", message="w0 marked lost")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Helper processes that live for the whole test session by design (started lazily by
# the stdlib); they are not leaks of any one test.
_SESSION_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
#: Pids of our own session-long processes (the shared brokers of tests/conftest.py),
#: added when started and removed when stopped: not leaks of the test that started them.
SESSION_PIDS: set[int] = set()


# --------------------------------------------------------------------------- waiting


class StopWaiting(Exception):
    """Raised by an :func:`eventually` condition when waiting longer cannot help.

    For example a child process died before becoming ready: fail at once with the
    reason instead of polling until the deadline.
    """


def eventually(
    condition: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "",
) -> T:
    """Poll ``condition`` until it returns a truthy value, and return that value.

    This is the only waiting primitive tests use: never ``sleep(n)`` and hope.
    Exceptions raised by ``condition`` count as "not yet" (a server that is still
    starting refuses connections), except :class:`StopWaiting`, which fails at once.

    Raises:
        AssertionError: on timeout (or StopWaiting), naming ``message`` and the last
            value or exception seen.
    """
    poll = _Poll(condition, timeout_s, message)
    while not poll.check():
        time.sleep(interval_s)
    return poll.value


async def eventually_async(
    condition: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    message: str = "",
) -> T:
    """:func:`eventually` for a test that runs an event loop: waits with ``asyncio.sleep``.

    A blocking wait would freeze the loop that must make ``condition`` come true.
    """
    import asyncio

    poll = _Poll(condition, timeout_s, message)
    while not poll.check():
        await asyncio.sleep(interval_s)
    return poll.value


class _Poll:
    """One wait's deadline and last observation, shared by the sync and async helpers."""

    __slots__ = ("condition", "timeout_s", "deadline", "what", "value", "last", "last_exc")

    def __init__(self, condition: Callable[[], Any], timeout_s: float, message: str) -> None:
        self.condition = condition
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.what = message or getattr(condition, "__name__", "condition")
        self.value: Any = None
        self.last = "condition never ran"
        self.last_exc: BaseException | None = None

    def check(self) -> bool:
        """True once the condition held (its value in ``value``); raises at the deadline."""
        try:
            value = self.condition()
        except StopWaiting as exc:
            raise AssertionError(f"{self.what}: gave up: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            self.last_exc = exc
            self.last = f"last exception: {type(exc).__name__}: {exc}"
        else:
            if value:
                self.value = value
                return True
            self.last_exc = None
            self.last = f"last value: {value!r}"
        if time.monotonic() >= self.deadline:
            raise AssertionError(f"{self.what}: not met within {self.timeout_s:g}s; {self.last}") from self.last_exc
        return False


# --------------------------------------------------------------------------- ports


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago.

    All sockets are held open together so the ports are distinct; there is still a
    small window before the child binds, which loopback tests accept.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    return free_ports(1)[0]


# --------------------------------------------------------------------------- processes


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for children: ours, the repo root first on PYTHONPATH, unbuffered.

    The repo root makes ``tests.helpers_tasks`` importable by workers; unbuffered
    output makes the log files current when a test reads them.
    """
    env = dict(os.environ)
    env.pop("XPIPE_METRICS_LISTEN", None)  # one port per process: ask with Cluster(metrics=True)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def _unique_log_path(log_dir: Path, name: str) -> Path:
    """``name.log``, or ``name.N.log`` when a process of that name ran before."""
    path = log_dir / f"{name}.log"
    n = 1
    while path.exists():
        path = log_dir / f"{name}.{n}.log"
        n += 1
    return path


class Proc:
    """One real child process, in its own session, logging to a file.

    Args:
        name: Short label used in log file names and error messages.
        argv: Program and arguments.
        log_dir: Directory for the log file (stdout and stderr together).
        env: Full environment; defaults to :func:`child_env`.
        cwd: Working directory; defaults to ``log_dir``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = _unique_log_path(log_dir, name)
        with open(self.log_path, "wb") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else child_env(),
                cwd=str(cwd or log_dir),
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.popen.returncode}"
        return f"<Proc {self.name} pid={self.pid} {state} log={self.log_path}>"

    def _exit_status(self) -> int | None:
        """Exit status without reaping (None while running).

        The child is reaped only by :meth:`kill`/:meth:`terminate`, after its group
        was swept: until then its zombie keeps the pid, which is also the process
        group id, from being reused, so signalling the group never hits a stranger.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back
            self.popen.poll()
            return self.popen.returncode
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    @property
    def returncode(self) -> int | None:
        """Exit status once exited (negative: killed by that signal), else None."""
        return self._exit_status()

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self._exit_status() is None

    def stop_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the process (or its whole process group), if still there.

        Use SIGSTOP/SIGCONT to freeze and thaw a peer, SIGTERM to ask for a clean
        shutdown without waiting for it.
        """
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for exit and return the exit status (does not reap; see kill()).

        Raises:
            AssertionError: the process is still running after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while (status := self._exit_status()) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} (pid {self.pid}) still running after {timeout_s:g}s")
            time.sleep(0.01)
        return status

    def kill(self) -> None:
        """SIGKILL the whole process group (the process and what it spawned), and reap.

        Also sweeps stragglers of a process that already exited, such as task
        subprocesses of a crashed worker, which would otherwise outlive the test.
        Idempotent.
        """
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self, timeout_s: float = 10) -> int:
        """Ask for a clean shutdown (SIGTERM), wait, then SIGKILL the group; return status.

        SIGTERM goes to the process itself, not its group, so it gets to shut down its
        own children in order, as it would under systemd or Kubernetes. Idempotent.
        """
        if self.alive():
            self.stop_signal(signal.SIGTERM)
        return self._finish(timeout_s)

    def _finish(self, timeout_s: float) -> int:
        """Give an already-signalled process ``timeout_s`` to exit, then kill and reap."""
        with contextlib.suppress(AssertionError):
            self.wait(timeout_s)
        status = self._exit_status()
        self.kill()
        return status if status is not None else self.popen.returncode

    def log_text(self) -> str:
        """The whole log so far (stdout and stderr interleaved)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])


def terminate_all(procs: Iterable[Proc], timeout_s: float = 10) -> None:
    """SIGTERM every process first, then wait for each: shutdowns overlap, not add up."""
    procs = list(procs)
    for proc in procs:
        if proc.alive():
            proc.stop_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc._finish(max(0.0, deadline - time.monotonic()))


def format_logs(procs: Iterable[Proc], lines: int = 40) -> str:
    """Tails of each process's log, headed by name, pid and state."""
    parts = []
    for proc in procs:
        parts.append(f"----- {proc!r} (last {lines} lines) -----\n{proc.log_tail(lines)}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- leaks


def _is_session_helper(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        return any(helper in cmdline for helper in _SESSION_HELPERS)
    return False


def _live_children(ignore: Collection[int]) -> set[int]:
    live = set()
    for child in psutil.Process().children(recursive=True):
        if child.pid in ignore or child.pid in SESSION_PIDS:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE or _is_session_helper(child):
                continue
        except psutil.NoSuchProcess:
            continue
        live.add(child.pid)
    return live


def assert_no_leaks(timeout_s: float = 0.0, *, ignore: Collection[int] = ()) -> set[int]:
    """Return the pids of child processes of this process that are still alive.

    Polls up to ``timeout_s`` for them to go (processes take a moment to exit after
    a signal). Zombies, pids in ``ignore`` (for example children that existed before
    the test) and the stdlib's session-long multiprocessing helpers are not counted.
    An empty set means nothing leaked; callers assert on it, using
    :func:`describe_pids` for the message.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        live = _live_children(ignore)
        if not live or time.monotonic() >= deadline:
            return live
        time.sleep(0.05)


def describe_pids(pids: Iterable[int]) -> str:
    """One line per pid: pid and command line, for leak error messages."""
    lines = []
    for pid in sorted(pids):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error as exc:
            cmd = f"<{type(exc).__name__}>"
        lines.append(f"pid {pid}: {cmd}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cluster


# --------------------------------------------------------------------------- security


class SecureSetup:
    """Real certificates and tokens for a secure cluster, made with ``xpipe.security``.

    A CA; a coordinator certificate (SANs ``localhost`` and ``127.0.0.1``); worker
    certificates ``worker-cert`` and client certificate ``client``; a tokens file with one
    token per entry of ``principals`` (name -> roles); an optional policy file.

    Attributes:
        pki: The directory of certificates and keys.
        tokens: Principal name -> its token (the file holds only hashes).
        tokens_file: The ``--auth tokens:`` file.
        policy_file: The ``--policy`` file, or None.
    """

    DEFAULT_PRINCIPALS: Mapping[str, Sequence[str]] = {
        "admin": ["admin"], "viewer": ["viewer"], "submitter": ["submitter"], "operator": ["operator"],
        "worker": ["worker"],
    }  # fmt: skip

    def __init__(
        self,
        tmp_path: Path,
        *,
        principals: Mapping[str, Sequence[str]] | None = None,
        namespaces: Mapping[str, Sequence[str]] | None = None,
        policy: str = "",
        mtls: bool = True,
    ) -> None:
        from xpipe.security._certs import init_ca, issue_cert
        from xpipe.security._tokens import create_token

        self.pki = Path(tmp_path) / "pki"
        self.pki.mkdir(parents=True, exist_ok=True)
        init_ca(self.pki)
        issue_cert(self.pki, name="coordinator", role="coordinator")
        issue_cert(self.pki, name="worker-cert", role="worker")
        issue_cert(self.pki, name="client", role="client")
        self.mtls = mtls
        self.tokens_file = Path(tmp_path) / "tokens.json"
        self.tokens: dict[str, str] = {}
        namespaces = namespaces or {}
        for name, roles in (principals or self.DEFAULT_PRINCIPALS).items():
            self.tokens[name] = create_token(
                self.tokens_file, principal=name, roles=list(roles), namespaces=namespaces.get(name)
            )
        self.policy_file: Path | None = None
        if policy:
            self.policy_file = Path(tmp_path) / "policy.toml"
            self.policy_file.write_text(policy)

    def cert(self, name: str) -> tuple[str, str]:
        """(certificate, key) paths of ``name``."""
        return str(self.pki / f"{name}.pem"), str(self.pki / f"{name}.key")

    @property
    def ca(self) -> str:
        return str(self.pki / "ca.pem")

    def coordinator_args(self) -> list[str]:
        cert, key = self.cert("coordinator")
        args = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca, "--auth", f"tokens:{self.tokens_file}"]
        if self.mtls:
            args += ["--tls-client-auth", "require"]
        if self.policy_file is not None:
            args += ["--policy", str(self.policy_file)]
        return args

    def worker_args(self, cert: str = "worker-cert") -> list[str]:
        """A worker that connects with the ``worker`` certificate (its identity under mTLS)."""
        pem, key = self.cert(cert)
        return ["--tls-ca", self.ca, "--tls-cert", pem, "--tls-key", key]

    def tls(self, cert: str | None = "client"):
        """A client :class:`TLSConfig` (with ``cert`` for mTLS; None: server-only TLS)."""
        from xpipe.security._tls import TLSConfig

        if cert is None:
            return TLSConfig(ca=self.ca)
        pem, key = self.cert(cert)
        return TLSConfig(ca=self.ca, cert=pem, key=key)

    def channel(self, address: str, *, cert: str | None = "client", token: str | None = None):
        """A grpc channel to ``address`` over TLS, with ``token`` sent on every call when given."""
        import grpc
        from xpipe._client import _Authorization

        channel = grpc.secure_channel(address, self.tls(cert).channel_credentials())
        return grpc.intercept_channel(channel, _Authorization(token)) if token else channel


class Cluster:
    """A real coordinator and ``workers`` real ``xpipe-worker`` daemons on loopback.

    Attributes:
        address: ``"127.0.0.1:PORT"`` of the coordinator (stable across restarts).
        coordinator: The current coordinator process.
        workers: Worker processes by name (``w0``, ``w1``, ... plus added ones).
        data_dir: The coordinator's ``--data-dir``.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        workers: int = 2,
        slots: int = 2,
        imports: Sequence[str] = ("tests.helpers_tasks",),
        coordinator_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        startup_timeout_s: float = 30.0,
        metrics: bool = False,
        otlp_endpoint: str = "",
        security: SecureSetup | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        #: With ``security``: TLS (mTLS unless told otherwise) and tokens; workers use the
        #: ``worker`` certificate, and the harness's own calls the ``admin`` token.
        self.security = security
        if security is not None:
            coordinator_args = (*security.coordinator_args(), *coordinator_args)
            worker_args = (*security.worker_args(), *worker_args)
        #: With ``metrics``: each process serves /metrics on its own free port (see :meth:`metrics_url`).
        self.metrics = metrics
        self.metrics_ports: dict[str, int] = {}
        self.n_workers = workers
        self.slots = slots
        self.imports = tuple(imports)
        # Every process exports its spans there (tests/integration/test_tracing.py).
        tracing = ("--otlp-endpoint", otlp_endpoint) if otlp_endpoint else ()
        self.coordinator_args = (*coordinator_args, *tracing)
        self.worker_args = (*worker_args, *tracing)
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data_dir = self.tmp_path / "coordinator-data"
        self.log_dir = self.tmp_path / "logs"
        self.coordinator: Proc | None = None
        self.workers: dict[str, Proc] = {}
        self._past: list[Proc] = []  # replaced coordinators, for log dumps

    # -- lifecycle

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            print(self.format_logs(), file=sys.stderr)
        self.stop()

    def start(self) -> Cluster:
        """Start the coordinator, wait until healthy, then start and register workers.

        Raises:
            AssertionError: something did not come up in time or died; the message
                carries the log tails. Whatever was started is stopped first.
        """
        try:
            self._start_coordinator()
            for i in range(self.n_workers):
                self._spawn_worker(f"w{i}", self.slots, ())
            if self.workers:  # a coordinator alone (workers=0) has nothing to wait for
                self.wait_for_workers(list(self.workers))
        except BaseException as exc:
            logs = self.format_logs()
            self.stop()
            if isinstance(exc, AssertionError):
                raise AssertionError(f"cluster failed to start: {exc}\n{logs}") from exc
            raise
        return self

    def stop(self) -> None:
        """Terminate workers, then the coordinator (SIGTERM, then SIGKILL). Idempotent."""
        terminate_all(self.workers.values())
        if self.coordinator is not None:
            self.coordinator.terminate()

    def all_procs(self) -> list[Proc]:
        """Every process this cluster started, including replaced coordinators."""
        procs = list(self._past)
        if self.coordinator is not None:
            procs.append(self.coordinator)
        return procs + list(self.workers.values())

    def format_logs(self, lines: int = 40) -> str:
        """Log tails of every process, for failure messages."""
        return format_logs(self.all_procs(), lines)

    # -- metrics

    def _metrics_args(self, name: str) -> list[str]:
        if not self.metrics:
            return []
        port = self.metrics_ports.setdefault(name, free_port())  # kept across restarts
        return ["--metrics-listen", f"127.0.0.1:{port}"]

    def metrics_url(self, name: str = "coordinator") -> str:
        """``http://.../metrics`` of the coordinator or of the worker ``name`` (needs ``metrics=True``)."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    # -- coordinator

    def _start_coordinator(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "xpipe.coordinator",
            "--listen", self.address,
            "--data-dir", str(self.data_dir),
            "--alert-loopback-only",  # no test may send an alert past loopback (the seed's Slack URL)
            *self._metrics_args("coordinator"),
            *self.coordinator_args,
        ]  # fmt: skip
        if self.coordinator is not None:
            self._past.append(self.coordinator)
        self.coordinator = Proc("coordinator", argv, log_dir=self.log_dir, cwd=self.tmp_path)
        self.wait_healthy()
        self.wait_started()

    def wait_started(self, timeout_s: float | None = None) -> None:
        """Wait for the coordinator's "xpipe-coordinator serving on" line.

        gRPC health says SERVING as soon as the gRPC server is up; the dashboard
        (``--http-listen``) and ``--ready-file`` come a moment later, and this line after
        them. A test that called the dashboard right after health was refused its
        connection once on CI.
        """
        coordinator = self.coordinator
        assert coordinator is not None, "coordinator not started"

        def started() -> bool:
            if not coordinator.alive():
                raise StopWaiting(f"coordinator exited with {coordinator.returncode}")
            return "xpipe-coordinator serving on" in coordinator.log_text()

        eventually(started, timeout_s=timeout_s or self.startup_timeout_s, interval_s=0.02,
                   message=f"coordinator at {self.address} started (its 'serving on' line)")  # fmt: skip

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Wait until the coordinator's standard gRPC health check answers SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        coordinator = self.coordinator
        assert coordinator is not None, "coordinator not started"

        def serving() -> bool:
            if not coordinator.alive():
                raise StopWaiting(f"coordinator exited with {coordinator.returncode}")
            with self.channel() as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        eventually(
            serving,
            timeout_s=timeout_s or self.startup_timeout_s,
            interval_s=0.05,
            message=f"coordinator at {self.address} healthy (SERVING)",
        )

    def channel(self):
        """A channel to the coordinator as the harness calls it: plaintext, or TLS with the admin token."""
        import grpc

        if self.security is None:
            return grpc.insecure_channel(self.address)
        return self.security.channel(self.address, token=self.security.tokens.get("admin"))

    def client_options(self, principal: str = "admin") -> dict[str, Any]:
        """``Client``/``PipelineManager`` keyword arguments to call as ``principal`` (empty when insecure)."""
        if self.security is None:
            return {}
        return {"tls": self.security.tls(), "token": self.security.tokens[principal]}

    def restart_coordinator(self, *, wait_for_workers: bool = True) -> Proc:
        """Stop the coordinator (if still running) and start it again, same port and data.

        With ``wait_for_workers``, also wait until every live worker is listed again
        with a state other than ``lost`` (they reconnect by themselves).
        """
        if self.coordinator is not None:
            self.coordinator.terminate()
        try:
            self._start_coordinator()
        except AssertionError as exc:
            raise AssertionError(f"coordinator restart failed: {exc}\n{self.format_logs()}") from exc
        if wait_for_workers:
            self.wait_for_workers([name for name, proc in self.workers.items() if proc.alive()])
        assert self.coordinator is not None
        return self.coordinator

    # -- workers

    def _spawn_worker(self, name: str, slots: int, extra_args: Sequence[str]) -> Proc:
        existing = self.workers.get(name)
        if existing is not None and existing.alive():
            raise ValueError(f"worker {name!r} is already running (pid {existing.pid})")
        argv = [
            sys.executable, "-m", "xpipe.worker",
            "--coordinator", self.address,
            "--name", name,
            "--slots", str(slots),
            *self._metrics_args(name),
        ]  # fmt: skip
        for module in self.imports:
            argv += ["--import", module]
        argv += [*self.worker_args, *extra_args]
        proc = Proc(name, argv, log_dir=self.log_dir, cwd=self.tmp_path)
        self.workers[name] = proc
        return proc

    def add_worker(self, name: str, slots: int | None = None, extra_args: Sequence[str] = ()) -> Proc:
        """Start one more worker (or restart a dead one by name) and wait until listed.

        Raises:
            ValueError: a worker of that name is still running.
            AssertionError: it did not register in time or died.
        """
        proc = self._spawn_worker(name, self.slots if slots is None else slots, extra_args)
        try:
            self.wait_for_workers([name])
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{format_logs([proc])}") from exc
        return proc

    def list_workers(self) -> list[Any]:
        """``AdminService.ListWorkers`` as a list of ``WorkerInfo`` messages."""
        from xpipe._proto import admin_pb2, admin_pb2_grpc

        with self.channel() as channel:
            reply = admin_pb2_grpc.AdminServiceStub(channel).ListWorkers(admin_pb2.ListWorkersRequest(), timeout=5.0)
        return list(reply.workers)

    def wait_for_workers(self, names: Iterable[str], timeout_s: float | None = None) -> list[Any]:
        """Wait until every worker in ``names`` is listed with a state other than ``lost``."""
        wanted = set(names)

        def registered() -> list[Any]:
            for name in sorted(wanted):
                proc = self.workers.get(name)
                if proc is not None and not proc.alive():
                    raise StopWaiting(f"worker {name} exited with {proc.returncode}")
            infos = self.list_workers()
            ready = {info.name for info in infos if info.state not in ("lost", "drained")}
            missing = wanted - ready
            if missing:
                raise LookupError(f"not registered yet: {sorted(missing)}; listed: "
                                  f"{[(i.name, i.state) for i in infos]}")
            return infos

        return eventually(
            registered,
            timeout_s=timeout_s or self.startup_timeout_s,
            interval_s=0.05,
            message=f"workers {sorted(wanted)} registered with {self.address}",
        )


# --------------------------------------------------------------------------- etcd


def _goarch() -> str:
    machine = platform.machine().lower()
    return {
        "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "i386": "386", "i686": "386", "armv7l": "arm", "armv6l": "arm",
    }.get(machine, machine)  # fmt: skip


# etcd refuses to start on architectures it does not officially support unless
# ETCD_UNSUPPORTED_ARCH names the architecture.
_ETCD_SUPPORTED_ARCHES = {"amd64", "arm64", "ppc64le", "s390x"}


def find_etcd(search_path: str | None = None, fallback: str = "/usr/bin/etcd") -> str:
    """Path of the ``etcd`` binary: on ``search_path`` (default $PATH), else ``fallback``.

    Raises:
        FileNotFoundError: etcd is not installed; ``make install`` installs it.
    """
    path = shutil.which("etcd", path=search_path) or (fallback if os.access(fallback, os.X_OK) else None)
    if path is None:
        raise FileNotFoundError(f"etcd binary not found on PATH or at {fallback}; run `make install`")
    return path


class EtcdServer:
    """A real single-member etcd on free loopback ports with its own data dir.

    Attributes:
        endpoint: ``"127.0.0.1:PORT"`` of the client API (stable across restarts).
        client_url: ``"http://127.0.0.1:PORT"``.
        data_dir: etcd's ``--data-dir``.
        proc: The current etcd process, or None before start.
    """

    def __init__(
        self, tmp_path: Path, *, name: str = "xpipe-test", startup_timeout_s: float = 20.0,
        tls: SecureSetup | None = None,
    ) -> None:  # fmt: skip
        self.tmp_path = Path(tmp_path)
        self.name = name
        #: With ``tls``: the client API serves TLS with the coordinator certificate and
        #: requires client certificates from the same CA (``--client-cert-auth``).
        self.tls = tls
        self.startup_timeout_s = startup_timeout_s
        self.binary = find_etcd()
        self.client_port, self.peer_port = free_ports(2)
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.client_url = f"{'https' if tls else 'http'}://{self.endpoint}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.data_dir = self.tmp_path / f"etcd-{name}"
        self.log_dir = self.tmp_path / "logs"
        self.proc: Proc | None = None
        # Loopback only: never let an http_proxy setting route our health checks.
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if tls is not None:
            import ssl

            context = ssl.create_default_context(cafile=tls.ca)
            context.load_cert_chain(*tls.cert("client"))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._http = urllib.request.build_opener(*handlers)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.proc is not None:
            print(format_logs([self.proc]), file=sys.stderr)
        self.stop()

    def _env(self) -> dict[str, str]:
        # etcd reads ETCD_* variables as flags and refuses to start when one
        # conflicts with a command-line flag, so inherited ones are dropped.
        env = {k: v for k, v in child_env().items() if not k.startswith("ETCD_")}
        arch = _goarch()
        if arch not in _ETCD_SUPPORTED_ARCHES:
            env["ETCD_UNSUPPORTED_ARCH"] = arch
        return env

    def start(self) -> EtcdServer:
        """Start etcd (reusing the data dir if it exists) and wait until healthy.

        Raises:
            AssertionError: etcd exited or was not healthy in time; carries its log.
        """
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.proc.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"xpipe-test-{self.client_port}",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls is not None:
            cert, key = self.tls.cert("coordinator")
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        self.proc = Proc(f"etcd-{self.name}", argv, log_dir=self.log_dir, cwd=self.tmp_path, env=self._env())
        try:
            self.wait_healthy()
        except AssertionError as exc:
            logs = format_logs([self.proc])
            self.proc.kill()
            raise AssertionError(f"etcd failed to start: {exc}\n{logs}") from exc
        return self

    def health(self) -> bool:
        """True when ``GET /health`` reports ``"health": "true"``."""
        with self._http.open(f"{self.client_url}/health", timeout=2.0) as reply:
            body = json.loads(reply.read())
        return body.get("health") == "true"

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Wait until etcd answers its health endpoint with ``"health": "true"``."""
        proc = self.proc
        assert proc is not None, "etcd not started"

        def healthy() -> bool:
            if not proc.alive():
                raise StopWaiting(f"etcd exited with {proc.returncode}")
            return self.health()

        eventually(
            healthy,
            timeout_s=timeout_s or self.startup_timeout_s,
            interval_s=0.05,
            message=f"etcd at {self.endpoint} healthy",
        )

    def stop(self) -> None:
        """Shut etcd down cleanly (SIGTERM, then SIGKILL). Idempotent."""
        if self.proc is not None:
            self.proc.terminate()

    def kill(self) -> None:
        """SIGKILL etcd, as a crash would. Idempotent."""
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> EtcdServer:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        return self.start()

    # -- a tiny v3 JSON gateway client, for checks that need no etcd library

    def _gateway(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.client_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with self._http.open(request, timeout=5.0) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"etcd {path} failed: HTTP {exc.code}: {detail}") from exc

    def put(self, key: bytes, value: bytes) -> dict[str, Any]:
        """Put ``key = value`` through the v3 HTTP/JSON gateway (``/v3/kv/put``)."""
        return self._gateway("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key`` through the gateway (``/v3/kv/range``), None if absent."""
        reply = self._gateway("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
