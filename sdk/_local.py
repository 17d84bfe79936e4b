"""The embedded default: a real coordinator and worker processes on this machine.

``PipelineManager()`` with no address starts them as child processes and talks to them
over the same gRPC API a cluster uses, so the laptop and the cluster share one code path.
The SDK never imports the coordinator or worker packages: they run in their own
processes, which keeps the SDK import light and free of cycles.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._config import CONFIG_ENV
from ._sdnotify import NOTIFY_ENV
from .errors import DistributedExecutionError
from .security._tls import CLIENT_SECURITY_ENV
from .telemetry._listen import METRICS_LISTEN_ENV

__all__ = ["LocalCluster"]

log = logging.getLogger(__name__)


class LocalCluster:
    """A coordinator plus ``workers`` worker processes, started and stopped together.

    Args:
        workers: worker processes to start.
        slots_per_worker: tasks each worker runs at once.
        data_dir: where the coordinator keeps its SQLite store; a temporary directory
            (removed on close) when None.
        imports: modules every worker imports at start (for ``@xpipe.handler``s).
        start_timeout_s: how long to wait for the processes to come up.
        extra_args: flags every process gets (the tracing flags, say).
        coordinator_args: flags only the coordinator gets (``--retention-days``, say).
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        slots_per_worker: int = 2,
        data_dir: str | os.PathLike | None = None,
        imports: tuple[str, ...] = (),
        start_timeout_s: float = 60.0,
        extra_args: tuple[str, ...] = (),
        coordinator_args: tuple[str, ...] = (),
    ):
        if workers < 1 or slots_per_worker < 1:
            raise ValueError("a local cluster needs at least one worker with at least one slot")
        self.workers = workers
        self.slots_per_worker = slots_per_worker
        self.imports = imports
        self.start_timeout_s = start_timeout_s
        self.extra_args = extra_args
        self.coordinator_args = coordinator_args
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="xpipe-"))
        self.address = ""
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    def _env(self) -> dict[str, str]:
        # Workers must import what the client can import (functions travel by import path).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        cwd = os.getcwd()
        if cwd not in paths:
            paths.insert(0, cwd)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # One address per process: inherited, it would make every local worker fail on the
        # port the coordinator took (the embedded cluster serves no metrics).
        env.pop(METRICS_LISTEN_ENV, None)
        # The embedded cluster is plaintext on loopback without auth: a client's TLS and
        # token settings are not its workers' (they would fail the handshake).
        for key in CLIENT_SECURITY_ENV:
            env.pop(key, None)
        # $XPIPE_CONFIG describes the operator's cluster (its store, listen address, TLS):
        # the embedded cluster is this process's own, configured by its flags here.
        env.pop(CONFIG_ENV, None)
        # A program that runs as a Type=notify unit and embeds xpipe is systemd's service;
        # its helper daemons must not report READY or STOPPING for it.
        for key in NOTIFY_ENV:
            env.pop(key, None)
        return env

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log_file = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log_file)
        proc = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=self._env(), start_new_session=True,
        )  # fmt: skip
        self._procs.append(proc)
        return proc

    def _log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.data_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> str:
        """Start the processes; returns the coordinator address once it serves."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "coordinator.addr"
        ready.unlink(missing_ok=True)
        atexit.register(self.stop)
        coordinator = self._spawn(
            "coordinator",
            ["-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             "--data-dir", str(self.data_dir), "--ready-file", str(ready), "--log-level", "WARNING",
             # pipelines run here send alerts to loopback receivers only (docs/operator-guide.md)
             "--alert-loopback-only", *self._autoscale_args(), *self.extra_args, *self.coordinator_args],
        )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if coordinator.poll() is not None:
                self.stop()
                raise DistributedExecutionError(
                    f"embedded coordinator exited with code {coordinator.returncode}:\n{self._log_tail('coordinator')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DistributedExecutionError(f"embedded coordinator did not start in {self.start_timeout_s:.0f}s")
            time.sleep(0.02)
        self.address = ready.read_text().strip()
        for i in range(self.workers):
            argv = ["-m", "xpipe.worker", "--coordinator", self.address, "--name", f"local-{i}",
                    "--slots", str(self.slots_per_worker), "--log-level", "WARNING", "--grace-s", "5",
                    # Local workers run as this user on loopback: installing for them is what the user
                    # asked for, into the data directory (removed with a temporary one), not the venv.
                    "--allow-install", "--install-dir", str(self.data_dir / "packages" / f"local-{i}")]  # fmt: skip
            for module in self.imports:
                argv += ["--import", module]
            argv += self.extra_args
            self._spawn(f"worker-{i}", argv)
        return self.address

    def _autoscale_args(self) -> list[str]:
        """The coordinator's local provider keeps ``workers`` workers (replacing one that dies);
        a pipeline's ``configure_auto_scaling`` may grow it up to the CPU count while it runs.

        Workers it starts get the same flags as these (docs/autoscaling.md).
        """
        worker_args = ["--slots", str(self.slots_per_worker), "--log-level", "WARNING", "--grace-s", "5",
                       "--allow-install", "--install-dir", str(self.data_dir / "packages" / "autoscaled")]  # fmt: skip
        for module in self.imports:
            worker_args += ["--import", module]
        worker_args += self.extra_args
        n = str(self.workers)
        return ["--autoscale-provider", "local", "--autoscale-min-workers", n, "--autoscale-max-workers", n,
                "--autoscale-ceiling-workers", str(max(self.workers, os.cpu_count() or 1)),
                # Local workers share this host: its CPU says nothing about needing more of them.
                "--autoscale-ignore-cpu", "--autoscale-interval", "2",
                "--autoscale-worker-args", shlex.join(worker_args)]  # fmt: skip

    def wait_for_workers(self, client, timeout_s: float | None = None) -> None:
        """Block until every worker has registered (so the first run spreads evenly)."""
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while True:
            ready = [w for w in client.list_workers() if w.state in ("ready", "busy")]
            if len(ready) >= self.workers:
                return
            for i, proc in enumerate(self._procs[1:]):
                if proc.poll() is not None:
                    raise DistributedExecutionError(
                        f"embedded worker local-{i} exited with code {proc.returncode}:\n{self._log_tail(f'worker-{i}')}"
                    )
            if time.monotonic() > deadline:
                raise DistributedExecutionError(f"only {len(ready)} of {self.workers} embedded workers registered")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop workers first (they drain), then the coordinator; idempotent."""
        atexit.unregister(self.stop)
        workers, coordinator = self._procs[1:], self._procs[:1]
        for group in (workers, coordinator):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("embedded process %d did not stop in %.0fs; killing it", proc.pid, timeout_s)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
