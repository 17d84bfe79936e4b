"""The autoscaler's providers: how a desired worker count becomes workers (its I/O).

One interface, a registry keyed by ``--autoscale-provider`` name:

- ``local``: ``xpipe-worker`` processes on this host, each in its own session with its log
  in the data directory; stopped by drain (SIGTERM) and reaped.
- ``command``: an operator's script (bare metal, IPMI, a cloud CLI) run with the desired
  count and the workers to remove, in argv and env, under a timeout.
- ``kubernetes``: scales a Deployment (``_provider_k8s``, imported only when chosen).

``scale_to`` is declarative and idempotent: the loop calls it again after a failure, and a
worker asked for but still starting is not asked for twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from xpipe._limits import normalize_resources

__all__ = [
    "AtMaxWorkers", "CommandProvider", "LocalProvider", "Provider", "ProviderError", "make_provider",
    "resources_spec",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Environment the command provider's script reads (also given in argv).
DESIRED_ENV = "XPIPE_DESIRED_WORKERS"
REMOVE_ENV = "XPIPE_REMOVE_WORKERS"
RESOURCES_ENV = "XPIPE_WORKER_RESOURCES"
ACTION_ENV = "XPIPE_AUTOSCALE_ACTION"
#: Output of a script kept in the log, per stream.
_OUTPUT_TAIL_CHARS = 2000


class ProviderError(RuntimeError):
    """A provider could not do what was asked (a script failed, a process did not start)."""


class AtMaxWorkers(ProviderError):
    """A worker was asked for while the cluster is at the bounds' ``max_workers``."""


def resources_spec(resources: Mapping[str, float]) -> str:
    """``xpipe-worker --resources`` text for a task's ``resource_requirements``.

    Raises:
        ValueError: an unknown or bad amount (names it).
    """
    amounts = normalize_resources(dict(resources))
    parts = []
    if amounts.cpu_cores is not None:
        parts.append(f"cpu={amounts.cpu_cores:g}")
    if amounts.memory_bytes is not None:
        parts.append(f"memory={amounts.memory_bytes}")
    if amounts.gpu is not None:
        parts.append(f"gpu={amounts.gpu}")
    parts += [f"{k}={v:g}" for k, v in sorted(amounts.custom.items())]
    return ",".join(parts)


class _Child:
    """A process started with ``posix_spawn`` in its own session.

    Not ``fork()``: the coordinator runs gRPC threads, and a forked child of it can crash
    before ``exec`` (gRPC's fork handlers; seen here as SIGSEGV). posix_spawn runs no fork
    handlers. The child is reaped by :meth:`poll`, without a child watcher.
    """

    def __init__(self, argv: list[str], stdout: Path, stderr: Path | None = None, env: Mapping[str, str] | None = None):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(stdout), flags, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, str(stderr or stdout), flags, 0o600),
        ]
        self.argv = argv
        self.pid = os.posix_spawnp(argv[0], argv, dict(env if env is not None else os.environ),
                                   file_actions=actions, setsid=True)  # fmt: skip
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    async def wait(self, timeout_s: float) -> bool:
        """True once it exited, False if still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def signal(self, sig: int, *, group: bool = False) -> None:
        try:
            os.killpg(self.pid, sig) if group else os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    async def kill(self) -> None:
        self.signal(signal.SIGKILL, group=True)
        await self.wait(10.0)


class Provider:
    """The interface; the base class is also the ``none`` provider (it changes nothing)."""

    name = "none"
    #: Called each interval even when nothing changed (it checks its own workers, cheaply);
    #: otherwise only when the desired count or the workers to remove change, or it failed.
    call_every_interval = False

    async def scale_to(self, desired: int, remove: list[str]) -> None:
        """Run ``desired`` workers of this provider's; ``remove`` have drained and may go."""

    async def current(self) -> int | None:
        """Workers this provider runs now (starting ones included); None when it cannot tell."""
        return None

    async def add_worker(self, resources: Mapping[str, float]) -> str | None:
        """Start one worker with at least ``resources``; its id or name, None if unknown."""
        raise ProviderError(f"the {self.name!r} autoscale provider cannot add workers")

    def owns(self, worker_id: str) -> bool:
        """Whether this provider runs ``worker_id`` (the others count as fixed capacity)."""
        return True

    async def close(self) -> None:
        """Stop what this provider started in this process (idempotent)."""




class LocalProvider(Provider):
    """``xpipe-worker`` processes on this host, connected to this coordinator.

    Args:
        coordinator: the address workers connect to.
        log_dir: where each worker's log goes (``<worker id>.log``).
        worker_args: flags every worker gets (``--slots 2 --import mod``, say).
        stop_timeout_s: how long a stopped worker may drain before it is killed.
    """

    name = "local"
    call_every_interval = True  # a worker that died is started again

    def __init__(self, coordinator: str, log_dir: Path, worker_args: list[str] = (), stop_timeout_s: float = 30.0):
        self.coordinator = coordinator
        self.log_dir = log_dir
        self.worker_args = list(worker_args)
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[str, _Child] = {}
        self._stopping: dict[str, _Child] = {}
        self._prefix = f"autoscale-{uuid.uuid4().hex[:6]}"
        self._numbers = itertools.count()

    def _reap(self) -> None:
        for wid, proc in list(self.procs.items()):
            if proc.poll() is not None:
                log.info("local worker %s exited with code %s", wid, proc.returncode)
                del self.procs[wid]
        for wid, proc in list(self._stopping.items()):
            if proc.poll() is not None:
                del self._stopping[wid]

    async def _spawn(self, extra: list[str]) -> str:
        worker_id = f"{self._prefix}-{next(self._numbers)}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "xpipe.worker", "--coordinator", self.coordinator, "--worker-id", worker_id,
                "--name", worker_id, *self.worker_args, *extra]  # fmt: skip
        try:
            proc = _Child(argv, self.log_dir / f"{worker_id}.log")
        except OSError as exc:
            raise ProviderError(f"cannot start a local worker: {exc}") from exc
        self.procs[worker_id] = proc
        log.info("started local worker %s (pid %d)", worker_id, proc.pid)
        return worker_id

    def _terminate(self, worker_id: str) -> None:
        proc = self.procs.pop(worker_id, None)
        if proc is None:
            return
        self._stopping[worker_id] = proc
        proc.signal(signal.SIGTERM)  # the worker drains: running tasks finish first

    async def scale_to(self, desired: int, remove: list[str]) -> None:
        self._reap()
        for worker_id in remove:
            self._terminate(worker_id)
        # Scaling down happens by draining (the loop drains, then names them in ``remove``):
        # only missing workers are started here, none is stopped for being one too many.
        for _ in range(max(0, desired - len(self.procs))):
            await self._spawn([])

    async def current(self) -> int | None:
        self._reap()
        return len(self.procs)

    async def add_worker(self, resources: Mapping[str, float]) -> str | None:
        spec = resources_spec(resources)
        return await self._spawn(["--resources", spec] if spec else [])

    def owns(self, worker_id: str) -> bool:
        return worker_id in self.procs or worker_id in self._stopping

    async def close(self) -> None:
        for worker_id in list(self.procs):
            self._terminate(worker_id)
        procs = list(self._stopping.values())
        self._stopping.clear()
        done = await asyncio.gather(*(p.wait(self.stop_timeout_s) for p in procs))
        for proc, stopped in zip(procs, done):
            if not stopped:
                log.warning("local worker pid %d did not stop in %.0fs; killing it", proc.pid, self.stop_timeout_s)
                await proc.kill()


class CommandProvider(Provider):
    """An operator's script, told the desired count and which drained workers may go.

    Called as ``SCRIPT scale DESIRED [WORKER_ID...]`` with ``XPIPE_AUTOSCALE_ACTION=scale``,
    ``XPIPE_DESIRED_WORKERS`` and ``XPIPE_REMOVE_WORKERS`` (comma-separated), and as
    ``SCRIPT add RESOURCES`` with ``XPIPE_WORKER_RESOURCES`` (an ``xpipe-worker --resources``
    spec; the first line it prints names the worker). A non-zero exit or a timeout raises
    :class:`ProviderError`; the loop logs it and calls again next interval.
    """

    name = "command"

    def __init__(self, command: str, timeout_s: float = 60.0):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("--autoscale-command is empty: name the script the command provider runs")
        self.timeout_s = timeout_s

    async def _call(self, args: list[str], env: dict[str, str]) -> str:
        full = [*self.argv, *args]
        shown = shlex.join(full)
        with tempfile.TemporaryDirectory(prefix="xpipe-autoscale-") as tmp:
            out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
            try:
                proc = _Child(full, out_path, err_path, env={**os.environ, **env})
            except OSError as exc:
                raise ProviderError(f"autoscale command {self.argv[0]!r} cannot start: {exc}") from exc
            if not await proc.wait(self.timeout_s):
                await proc.kill()
                raise ProviderError(f"autoscale command {shown!r} timed out after {self.timeout_s:g}s")
            text = out_path.read_text(errors="replace")
            errors = err_path.read_text(errors="replace")
        log.info("autoscale command %r exited %d; stdout: %s; stderr: %s", shown, proc.returncode,
                 text[-_OUTPUT_TAIL_CHARS:].strip(), errors[-_OUTPUT_TAIL_CHARS:].strip())  # fmt: skip
        if proc.returncode != 0:
            raise ProviderError(
                f"autoscale command {shown!r} exited with code {proc.returncode}: "
                f"{errors[-_OUTPUT_TAIL_CHARS:].strip() or text[-_OUTPUT_TAIL_CHARS:].strip()}"
            )
        return text

    async def scale_to(self, desired: int, remove: list[str]) -> None:
        await self._call(["scale", str(desired), *remove],
                         {ACTION_ENV: "scale", DESIRED_ENV: str(desired), REMOVE_ENV: ",".join(remove)})  # fmt: skip

    async def add_worker(self, resources: Mapping[str, float]) -> str | None:
        spec = resources_spec(resources)
        text = await self._call(["add", spec], {ACTION_ENV: "add", RESOURCES_ENV: spec})
        first = text.strip().splitlines()[:1]
        return first[0].strip() if first else None


def _kubernetes(opts) -> Provider:
    try:
        from ._provider_k8s import KubernetesProvider
    except ImportError as exc:
        raise ValueError(
            f"--autoscale-provider kubernetes is not available in this build ({exc}); "
            "use local, command or none"
        ) from None
    from ._provider_k8s import KubernetesProviderError

    try:
        return KubernetesProvider.from_settings({
            "namespace": opts.autoscale_k8s_namespace, "deployment": opts.autoscale_k8s_deployment,
            "kubeconfig": opts.autoscale_k8s_kubeconfig,
        })  # fmt: skip
    except KubernetesProviderError as exc:  # a start-up error, one line like every bad flag
        raise ValueError(f"--autoscale-provider kubernetes: {exc}") from None


def _local(opts, address: str) -> Provider:
    log_dir = Path(opts.data_dir) / "autoscale-workers"
    args = shlex.split(opts.autoscale_worker_args)
    # Stopping waits out the workers' drain grace (xpipe-worker's --grace-s, 30 s by default).
    grace_s = float(args[args.index("--grace-s") + 1]) if "--grace-s" in args[:-1] else 30.0
    return LocalProvider(address, log_dir, args, stop_timeout_s=grace_s + 3.0)


def _command(opts, address: str) -> Provider:
    if not opts.autoscale_command:
        raise ValueError("--autoscale-provider command needs --autoscale-command SCRIPT")
    return CommandProvider(opts.autoscale_command, opts.autoscale_command_timeout_s)


#: ``--autoscale-provider`` name -> factory(opts, coordinator address).
PROVIDER_FACTORIES: dict[str, Callable[..., Provider]] = {
    "none": lambda opts, address: Provider(),
    "local": _local,
    "command": _command,
    "kubernetes": lambda opts, address: _kubernetes(opts),
}


def make_provider(opts, address: str) -> Provider:
    """The provider ``--autoscale-provider`` names.

    Raises:
        ValueError: an unknown name or a missing flag (names it).
    """
    factory = PROVIDER_FACTORIES.get(opts.autoscale_provider)
    if factory is None:
        raise ValueError(f"--autoscale-provider {opts.autoscale_provider!r}: use one of {sorted(PROVIDER_FACTORIES)}")
    return factory(opts, address)
