"""The xpipe side of the benchmark: a real cluster on loopback and the scenarios run on it.

A cluster is the set-up users run: one coordinator (durable SQLite store on, as always) and
two ``xpipe-worker`` daemons with one slot each, every one a separate process in its own
session, logging to a file. Each measured sample gets a fresh cluster, so one sample's
leftovers (a store full of finished runs, a grown heap) never weigh on the next, and the
coordinator's peak RSS belongs to one scenario only.

Scenarios use the public SDK only (``Pipeline``, ``Task``, ``PipelineManager`` and its
``client``) and check every answer, so a fast but wrong run fails instead of winning.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import tasks
from bench._report import BenchError, Sizes, dag_timings, latency_sample, payload_sample
from bench._report import check_answer as _check

__all__ = ["XpipeCluster", "RssSampler", "SCENARIOS", "open_session", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: How long a cluster may take to come up (coordinator ready file, both workers listed).
_STARTUP_TIMEOUT_S = 60.0
#: How long a process gets to exit after SIGTERM before its process group is killed.
_STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 30
_TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _poll(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll ``condition`` until truthy and return its value; BenchError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


class _Proc:
    """One child process in its own session, output to a log file, stopped without leftovers."""

    def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path, env: dict[str, str], cwd: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=str(cwd), start_new_session=True,
            )  # fmt: skip
        self.pid = self.popen.pid

    def exit_status(self) -> int | None:
        """The exit status, without reaping (None while running).

        Not reaping keeps the pid, which is also the process group id, from being reused
        until :meth:`stop` has swept the group.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def signal(self, sig: int) -> None:
        if self.exit_status() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        """True once exited, False if still running after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.exit_status() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def kill_group_and_reap(self) -> None:
        """SIGKILL whatever is left in the process group (task children too), then reap."""
        if self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=_STOP_TIMEOUT_S)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class RssSampler:
    """Samples a process's resident memory in a background thread and keeps the peak.

    Sampling (every ``interval_s``) can miss a short spike, but a scheduler's memory grows
    with the DAG it holds and stays up while the run lasts, which sampling catches.
    """

    def __init__(self, pid: int, interval_s: float = 0.02):
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._peak = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        with self._lock:
            self._peak = max(self._peak, rss)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                self._sample()
        except psutil.Error as exc:  # the process went away: keep the peak, say why it stopped
            self._error = exc

    def reset(self) -> None:
        """Start a new peak from the current RSS (between two measurements)."""
        with self._lock:
            self._peak = 0
        self._sample()

    @property
    def failed(self) -> BaseException | None:
        """Why sampling stopped early (the process went away), or None."""
        return self._error

    @property
    def peak_bytes(self) -> int:
        with self._lock:
            return self._peak

    def stop(self) -> int:
        """Stop sampling and return the peak.

        Raises:
            BenchError: the process vanished while being sampled (the peak would be wrong).
        """
        self._stop.set()
        self._thread.join(timeout=5)
        if self._error is not None:
            raise BenchError(f"RSS sampling of pid {self._process.pid} failed: {self._error}")
        return self.peak_bytes


@dataclass
class XpipeCluster:
    """A real coordinator plus ``workers`` worker daemons on loopback, started and stopped whole.

    Args:
        workdir: where the data dir, ready file and process logs go.
        workers: number of ``xpipe-worker`` daemons (one slot each).
        coordinator_args, worker_args: extra command-line flags (tests use them to drive
            start-up failures).

    Use as a context manager; :meth:`stop` is idempotent and leaves no process behind.
    """

    workdir: Path
    workers: int = 2
    coordinator_args: Sequence[str] = ()
    worker_args: Sequence[str] = ()
    startup_timeout_s: float = _STARTUP_TIMEOUT_S
    #: Metrics on (``--metrics-listen``) and traces exported at default sampling to a local
    #: OTLP sink, in every process: the cost of telemetry is the difference to a run without.
    telemetry: bool = False
    #: mTLS (a CA, coordinator/worker/client certificates) and ``--auth tokens:`` with an
    #: admin token on every process: the cost of security is the difference to a run without.
    security: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.coordinator: _Proc | None = None
        self.worker_procs: list[_Proc] = []
        self.address = ""
        self.manager: Any = None
        self.otlp_sink: Any = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _fail(self, message: str, procs: Sequence[_Proc]) -> BenchError:
        logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in procs)
        return BenchError(f"{message}\n{logs}")

    def start(self) -> XpipeCluster:
        """Start the coordinator, then the workers, and wait until both are listed.

        Raises:
            BenchError: a process exited early or the cluster was not up in time; carries
                the log tails.
        """
        from xpipe import PipelineManager

        logs, data, ready = self.workdir / "logs", self.workdir / "data", self.workdir / "coordinator.ready"
        logs.mkdir(parents=True, exist_ok=True)
        env = self._env()
        telemetry_args: list[str] = []
        if self.telemetry:
            from bench._otlp import OtlpSink

            self.otlp_sink = OtlpSink()
            telemetry_args = ["--metrics-listen", "127.0.0.1:0", "--otlp-endpoint", self.otlp_sink.address]
        coordinator_security, worker_security, manager_security = (
            _security(self.workdir / "security") if self.security else ([], [], {})
        )
        argv = [
            sys.executable, "-m", "xpipe.coordinator", "--listen", "127.0.0.1:0", "--data-dir", str(data),
            "--ready-file", str(ready), "--log-level", "WARNING", *telemetry_args, *coordinator_security,
            *self.coordinator_args,
        ]  # fmt: skip
        try:
            self.coordinator = _Proc("coordinator", argv, log_dir=logs, env=env, cwd=self.workdir)
            coordinator = self.coordinator

            def coordinator_ready() -> str:
                if coordinator.exit_status() is not None:
                    raise self._fail(
                        f"xpipe coordinator exited with status {coordinator.exit_status()} before it was ready",
                        [coordinator],
                    )
                return ready.read_text().strip() if ready.exists() else ""

            self.address = self._wait(coordinator_ready, "the coordinator's ready file", [coordinator])
            for i in range(self.workers):
                argv = [
                    sys.executable, "-m", "xpipe.worker", "--coordinator", self.address, "--name", f"w{i}",
                    "--slots", "1", "--log-level", "WARNING", *telemetry_args, *worker_security, *self.worker_args,
                ]  # fmt: skip
                self.worker_procs.append(_Proc(f"w{i}", argv, log_dir=logs, env=env, cwd=self.workdir))
            if self.otlp_sink is not None:
                self.manager = PipelineManager(
                    coordinator=self.address, otlp_endpoint=self.otlp_sink.address, **manager_security
                )
            else:
                self.manager = PipelineManager(coordinator=self.address, **manager_security)
            wanted = {p.name for p in self.worker_procs}

            def workers_ready() -> bool:
                for proc in [coordinator, *self.worker_procs]:
                    if proc.exit_status() is not None:
                        raise self._fail(
                            f"xpipe {proc.name} exited with status {proc.exit_status()} before the cluster was up",
                            [proc],
                        )
                listed = {w.name for w in self.manager.client.list_workers() if w.state == "ready"}
                return wanted <= listed

            self._wait(workers_ready, f"workers {sorted(wanted)} to be listed as ready", self.worker_procs)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, condition: Callable[[], Any], what: str, procs: Sequence[_Proc]) -> Any:
        try:
            return _poll(condition, self.startup_timeout_s, what, interval_s=0.05)
        except BenchError as exc:
            if "timed out" in str(exc):
                raise self._fail(str(exc), procs) from None
            raise

    @property
    def coordinator_pid(self) -> int:
        if self.coordinator is None:
            raise BenchError("the xpipe cluster is not started")
        return self.coordinator.pid

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.worker_procs]

    def process_roles(self) -> dict[str, int]:
        """Every process taking part, by role: coordinator, workers, their task executors,
        and this (client) process."""
        roles = {"coordinator": self.coordinator_pid}
        for proc in self.worker_procs:
            roles[proc.name] = proc.pid
            with contextlib.suppress(psutil.Error):
                for i, child in enumerate(psutil.Process(proc.pid).children(recursive=True)):
                    roles[f"{proc.name}-exec{i}"] = child.pid
        roles["client"] = os.getpid()
        return roles

    def stop(self) -> None:
        """Workers first (SIGTERM, so they drain and leave), then the coordinator; SIGKILL stragglers."""
        if self.manager is not None:
            self.manager.close()
            self.manager = None
        for group in (self.worker_procs, [self.coordinator] if self.coordinator else []):
            for proc in group:
                proc.signal(signal.SIGTERM)
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            for proc in group:
                proc.wait(max(0.0, deadline - time.monotonic()))
                proc.kill_group_and_reap()
        self.worker_procs = []
        self.coordinator = None
        if self.otlp_sink is not None:
            self.otlp_sink.stop()
            self.otlp_sink = None

    def __enter__(self) -> XpipeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _security(directory: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """Certificates and a tokens file for a secure cluster: (coordinator flags, worker flags, manager kwargs)."""
    from xpipe.security._certs import init_ca, issue_cert
    from xpipe.security._tls import TLSConfig
    from xpipe.security._tokens import create_token

    directory.mkdir(parents=True, exist_ok=True)
    init_ca(directory)
    for name, role in (("coordinator", "coordinator"), ("worker", "worker"), ("client", "client")):
        issue_cert(directory, name=name, role=role)
    tokens = directory / "tokens.json"
    token = create_token(tokens, principal="bench", roles=["admin"])

    def pem(name: str) -> tuple[str, str]:
        return str(directory / f"{name}.pem"), str(directory / f"{name}.key")

    ca = str(directory / "ca.pem")
    coordinator = ["--tls-cert", pem("coordinator")[0], "--tls-key", pem("coordinator")[1], "--tls-ca", ca,
                   "--tls-client-auth", "require", "--auth", f"tokens:{tokens}"]  # fmt: skip
    worker = ["--tls-ca", ca, "--tls-cert", pem("worker")[0], "--tls-key", pem("worker")[1]]
    manager = {"tls": TLSConfig(ca=ca, cert=pem("client")[0], key=pem("client")[1]), "token": token}
    return coordinator, worker, manager


@contextlib.contextmanager
def open_session(
    workdir: Path | None = None, telemetry: bool = False, security: bool = False
) -> Iterator[XpipeCluster]:
    """A started, warmed-up cluster in a fresh temporary directory, stopped and removed after.

    With ``telemetry``, the session checks at its end that spans reached the sink, so a
    "with telemetry" figure cannot silently be one without.
    """
    with tempfile.TemporaryDirectory(prefix="xpipe-bench-", dir=workdir) as tmp:
        with XpipeCluster(Path(tmp), telemetry=telemetry, security=security) as cluster:
            _warm_up(cluster.manager)
            yield cluster
            if telemetry:
                _poll(lambda: cluster.otlp_sink.spans > 0, 10.0, "spans at the bench's OTLP sink")


# --------------------------------------------------------------------------- scenarios


def _warm_up(pm: Any) -> None:
    """Run a few tasks so both workers have imported bench.tasks and every channel is open."""
    from xpipe import Pipeline, Task

    p = Pipeline("warmup")
    p.add_tasks([Task(f"w{i}", tasks.noop, args=(i,)) for i in range(8)])
    _check(len(pm.execute_pipeline(p, monitor=False).outputs), 8, "warm-up outputs")



def _wait_terminal(pm: Any, run_id: str, timeout_s: float) -> None:
    """Follow a run's summary until it ends, without downloading every task's result
    (``pm.wait`` would fetch all of them, 1 MiB payloads included).

    Raises:
        BenchError: the run did not succeed, or did not end within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    status = "unknown"
    for event in pm.client.watch(run_id, summary_only=True):
        status = event.summary.state.lower()
        if status in _TERMINAL_STATES:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"run {run_id} did not finish within {timeout_s:g}s")
    _check(status, "succeeded", f"status of run {run_id}")


def _result_of(pm: Any, run_id: str, task: str) -> Any:
    return pm.client.task_result(run_id, task).value


def wide(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """N independent no-op tasks as one pipeline; tasks/s from building it to having every output."""
    from xpipe import Pipeline, Task

    n, pm = sizes.wide, cluster.manager
    start = time.perf_counter()
    p = Pipeline("wide")
    p.add_tasks([Task(f"t{i}", tasks.noop, args=(i,)) for i in range(n)])
    result = pm.execute_pipeline(p, monitor=False, timeout_s=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(len(result.outputs), n, "number of wide outputs")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def chain(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """N tasks each adding 1 to the previous one's result; tasks/s."""
    from xpipe import Pipeline, Task

    n, pm = sizes.chain, cluster.manager
    start = time.perf_counter()
    p = Pipeline("chain")
    prev = Task("c0", tasks.add, args=(0,))
    items = [prev]
    for i in range(1, n):
        prev = Task(f"c{i}", tasks.add, depends_on=[prev], args=(1,))
        items.append(prev)
    p.add_tasks(items)
    result = pm.execute_pipeline(p, monitor=False, timeout_s=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(result.outputs[f"c{n - 1}"], n - 1, "end of the chain")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def fanin(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """N tasks and one reducer that receives all N results; tasks/s (N + 1 tasks)."""
    from xpipe import Pipeline, Task

    n, pm = sizes.fanin, cluster.manager
    start = time.perf_counter()
    p = Pipeline("fanin")
    leaves = [Task(f"f{i}", tasks.add, args=(i,)) for i in range(n)]
    p.add_tasks([*leaves, Task("reduce", tasks.reduce_all, depends_on=leaves)])
    result = pm.execute_pipeline(p, monitor=False, timeout_s=sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(result.outputs["reduce"], n, "reducer's count of inputs")
    return {"tasks": n + 1, "seconds": seconds, "tasks_per_s": (n + 1) / seconds}


def roundtrip(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """One single-task pipeline submitted and awaited, N times in a row; latency in ms."""
    from xpipe import Pipeline, Task

    pm = cluster.manager
    latencies_ms = []
    for i in range(sizes.roundtrip):
        start = time.perf_counter()
        p = Pipeline("roundtrip")
        p.add_tasks([Task("one", tasks.add, args=(i,))])
        result = pm.execute_pipeline(p, monitor=False, timeout_s=sizes.timeout_s)
        latencies_ms.append((time.perf_counter() - start) * 1000)
        _check(result.outputs["one"], i, "round-trip result")
    return latency_sample(latencies_ms)


def layered_pipeline(n: int, width: int) -> Any:
    """``n`` no-op tasks in layers of ``width``; each task after the first layer waits for two
    tasks of the layer before (the one above and its neighbour), as in a shuffle-free ETL DAG."""
    from xpipe import Pipeline, Task

    p = Pipeline(f"bigdag-{n}")
    items: list[Any] = []
    prev: list[Any] = []
    for start in range(0, n, width):
        layer_no = start // width
        layer = []
        for j in range(min(width, n - start)):
            deps = [prev[j % len(prev)], prev[(j + 1) % len(prev)]] if prev else []
            if len(deps) == 2 and deps[0] is deps[1]:
                deps = deps[:1]
            layer.append(Task(f"l{layer_no}_{j}", tasks.noop, depends_on=deps))
        items.extend(layer)
        prev = layer
    p.add_tasks(items)
    return p


def _bigdag_once(cluster: XpipeCluster, sampler: RssSampler, n: int, sizes: Sizes) -> dict[str, Any]:
    pm = cluster.manager
    sampler.reset()
    start = time.perf_counter()
    spec = layered_pipeline(n, sizes.bigdag_width).to_proto()
    built = time.perf_counter()
    run_id = pm.client.submit(spec)
    submitted = time.perf_counter()
    _wait_terminal(pm, run_id, sizes.timeout_s)
    done = time.perf_counter()
    return dag_timings(n, start, built, submitted, done, sampler.peak_bytes)


def bigdag(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """A layered DAG at the small size, then the big one: build, submit and run times,
    scheduling rate, the coordinator's peak RSS, and how per-task time scales.

    The small size runs first, so the big one's RSS peak includes whatever the small run left.
    """
    sampler = RssSampler(cluster.coordinator_pid).start()
    try:
        small = _bigdag_once(cluster, sampler, sizes.bigdag_small, sizes)
        big = _bigdag_once(cluster, sampler, sizes.bigdag, sizes)
    finally:
        sampler.stop()
    return {
        **{f"small_{k}": v for k, v in small.items()},
        **big,
        "scaling_ratio": big["per_task_us"] / small["per_task_us"],
    }


def _payload_once(cluster: XpipeCluster, sizes: Sizes, compressible: bool) -> float:
    """``pairs`` producers of ``payload_bytes`` each feeding a consumer, and one sum of the
    lengths received; returns MB/s of payload moved from producers to consumers."""
    from xpipe import Pipeline, Task

    pm, pairs, size = cluster.manager, sizes.payload_pairs, sizes.payload_bytes
    start = time.perf_counter()
    p = Pipeline("payload")
    consumers = []
    items = []
    for i in range(pairs):
        producer = Task(f"make{i}", tasks.make_payload, args=(size, compressible, i))
        consumer = Task(f"use{i}", tasks.consume, depends_on=[producer])
        items += [producer, consumer]
        consumers.append(consumer)
    p.add_tasks([*items, Task("total", tasks.add, depends_on=consumers)])
    run_id = pm.submit(p)
    _wait_terminal(pm, run_id, sizes.timeout_s)
    seconds = time.perf_counter() - start
    _check(_result_of(pm, run_id, "total"), pairs * size, "bytes received by the consumers")
    return pairs * size / seconds / 1e6


def payload(cluster: XpipeCluster, sizes: Sizes) -> dict[str, Any]:
    """MB/s with compressible payloads (zstd shrinks them) and random ones (zstd cannot)."""
    return payload_sample(lambda compressible: _payload_once(cluster, sizes, compressible), sizes)


SCENARIOS: dict[str, Callable[[XpipeCluster, Sizes], dict[str, Any]]] = {
    "wide": wide,
    "chain": chain,
    "fanin": fanin,
    "roundtrip": roundtrip,
    "bigdag": bigdag,
    "payload": payload,
}
