"""The Ray side of the benchmark: the same scenarios on a local Ray, started in this process.

The set-up matches the others: ``ray.init(num_cpus=2)``, so at most two tasks run at once in
two prestarted worker processes, every Ray process bound to 127.0.0.1, no dashboard and no
usage stats. Each measured sample gets a fresh Ray, like Dask's fresh ``LocalCluster`` and
xpipe's fresh cluster: a local Ray starts in 5-7 s here (GCS, raylet, agents, workers) and
stops in about 2, which adds about 2.5 minutes to a full run (18 samples); in exchange no
sample inherits the previous one's object store, worker heaps or owner tables. Start and
stop are outside the measured time.

Ray's driver is this process: it owns every object and submits and tracks every task (Ray's
ownership model), while the raylet grants worker leases. So the "scheduler RSS" of the
layered DAG is this process's RSS, client included, as for Dask; raylet and GCS are not
counted; the report says so. Each scenario uses the idiomatic Ray API for the shape
(``ray.get`` on a list, ObjectRef chaining, refs as arguments) and checks its answer as the
xpipe side does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import tasks
from bench._report import BenchError, Sizes, dag_timings, latency_sample, payload_sample, peer_bigdag
from bench._report import check_answer as _check

__all__ = ["SCENARIOS", "RaySession", "open_session", "available"]

_log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Ray's plasma store is sized, not grown; 512 MiB holds the payload scenario's 64 MiB live
#: values many times over without claiming a third of the machine's memory (Ray's default).
_OBJECT_STORE_BYTES = 512 * 2**20
#: Where Ray's own processes send plain HTTP: a loopback port nothing serves (the discard
#: port), so each request fails at once instead of leaving the machine. See _loopback_http.
_REFUSING_PROXY = "http://127.0.0.1:9"
#: Longest temp dir Ray's unix sockets fit under: AF_UNIX paths stop at 107 bytes and Ray
#: adds ``/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store`` (about 65).
_MAX_TEMP_DIR_CHARS = 40
#: Ray's raylet must register within a fixed 30 s; on a loaded 2-core host it sometimes does
#: not, and a second start nearly always works. Start-up is outside the measured time.
_START_ATTEMPTS = 2


def available() -> str | None:
    """None when Ray can be imported, else why not (shown in the report)."""
    # Found, not imported: Ray reads its settings on import, which open_session sets first.
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed; `pip install -e '.[bench]'`"
    return None


@dataclass(frozen=True, slots=True)
class RaySession:
    """The ``bench.tasks`` functions as Ray remote functions, for one ``ray.init``."""

    noop: Any
    add: Any
    reduce_all: Any
    make_payload: Any
    consume: Any


def _temp_dir(workdir: Path | None) -> str:
    """A fresh directory for Ray's session files: under ``workdir`` when its sockets fit there."""
    if workdir is not None:
        path = tempfile.mkdtemp(prefix="ray-", dir=workdir)
        if len(path) <= _MAX_TEMP_DIR_CHARS:
            return path
        os.rmdir(path)
        _log.warning("%s is too long for Ray's unix sockets (over %d chars); Ray uses the system temp dir",
                     workdir, _MAX_TEMP_DIR_CHARS)  # fmt: skip
    return tempfile.mkdtemp(prefix="xpipe-bench-ray-")


@contextlib.contextmanager
def _loopback_http() -> Iterator[None]:
    """Point Python HTTP clients of the processes Ray starts now at a refusing loopback proxy.

    Ray's always-started dashboard process probes the cloud metadata service
    (169.254.169.254, metadata.google.internal) for its usage report even when usage stats
    are disabled (Ray 2.60). requests honours ``HTTP_PROXY``; gRPC reads only the lower-case
    ``http_proxy``, so Ray's and xpipe's gRPC are unaffected. Restored after, so nothing
    else in this process sees it.
    """
    saved = {name: os.environ.get(name) for name in ("HTTP_PROXY", "HTTPS_PROXY")}
    os.environ.update(HTTP_PROXY=_REFUSING_PROXY, HTTPS_PROXY=_REFUSING_PROXY)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def open_session(workdir: Path | None = None) -> Iterator[RaySession]:
    """A local Ray on loopback with two CPUs, warmed up, shut down and its files removed after."""
    # Worker processes are started by the raylet with this environment: they must import
    # bench.tasks by name, as xpipe and Dask workers do, and must not report usage.
    path = os.environ.get("PYTHONPATH", "")
    if str(_REPO_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), path]))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # On Linux Ray turns a node IP of 127.0.0.1 into the machine's routable address and then
    # binds every server to all interfaces; with "cluster mode" off it stays on loopback.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Keep Ray's default token auth on, but with a token in the environment: otherwise Ray
    # writes one to ~/.ray/auth_token. One token per bench process, as Ray caches it.
    if not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    import ray  # after the environment above: Ray reads its auth mode once, on import

    temp_dir = _temp_dir(workdir)
    # ray.init installs its own SIGTERM handler (sys.exit(15)) first thing; the bench's must
    # stay, so that SIGTERM still stops every cluster and writes the partial JSON with exit
    # status 143: it is put back after init, and a SIGTERM during init is handed to it.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        try:
            with _loopback_http():
                for attempt in range(1, _START_ATTEMPTS + 1):
                    try:
                        ray.init(
                            "local", num_cpus=2, num_gpus=0, object_store_memory=_OBJECT_STORE_BYTES,
                            include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
                            logging_level=logging.ERROR, log_to_driver=False, configure_logging=False,
                        )  # fmt: skip
                        break
                    except Exception as exc:  # Ray waits a fixed 30 s for its raylet; a busy host misses it
                        if attempt == _START_ATTEMPTS or "timed out during startup" not in str(exc):
                            raise
                        _log.warning("Ray did not start (attempt %d): %s; starting it again", attempt, exc)
                        ray.shutdown()
        except SystemExit as exc:
            if exc.code == signal.SIGTERM and callable(sigterm):
                sigterm(signal.SIGTERM, None)
            raise
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        session = RaySession(*(ray.remote(f) for f in (tasks.noop, tasks.add, tasks.reduce_all,
                                                       tasks.make_payload, tasks.consume)))  # fmt: skip
        _check(ray.get([session.noop.remote(i) for i in range(8)]), [None] * 8, "warm-up results")
        yield session
    finally:
        ray.shutdown()
        try:
            shutil.rmtree(temp_dir)
        except OSError as exc:  # a leftover directory costs disk only: say where, go on
            _log.warning("could not remove Ray's session files in %s: %s", temp_dir, exc)



def _get(refs: Any, sizes: Sizes) -> Any:
    import ray

    return ray.get(refs, timeout=sizes.timeout_s)


def wide(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    n = sizes.wide
    start = time.perf_counter()
    results = _get([ray_.noop.remote(i) for i in range(n)], sizes)
    seconds = time.perf_counter() - start
    _check(len(results), n, "number of wide results")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def chain(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    n = sizes.chain
    start = time.perf_counter()
    ref = ray_.add.remote(0)
    for _ in range(1, n):
        ref = ray_.add.remote(ref, 1)
    value = _get(ref, sizes)
    seconds = time.perf_counter() - start
    _check(value, n - 1, "end of the chain")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def fanin(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    n = sizes.fanin
    start = time.perf_counter()
    leaves = [ray_.add.remote(i) for i in range(n)]
    value = _get(ray_.reduce_all.remote(*leaves), sizes)
    seconds = time.perf_counter() - start
    _check(value, n, "reducer's count of inputs")
    return {"tasks": n + 1, "seconds": seconds, "tasks_per_s": (n + 1) / seconds}


def roundtrip(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    latencies_ms = []
    for i in range(sizes.roundtrip):
        start = time.perf_counter()
        value = _get(ray_.add.remote(i), sizes)
        latencies_ms.append((time.perf_counter() - start) * 1000)
        _check(value, i, "round-trip result")
    return latency_sample(latencies_ms)


def _bigdag_once(ray_: RaySession, sampler: Any, n: int, sizes: Sizes) -> dict[str, Any]:
    """The same layered DAG as the other sides: each task takes the refs of 2 tasks above it."""
    import ray

    sampler.reset()
    start = time.perf_counter()
    prev: list[Any] = []
    for first in range(0, n, sizes.bigdag_width):
        layer = []
        for j in range(min(sizes.bigdag_width, n - first)):
            deps = [prev[j % len(prev)], prev[(j + 1) % len(prev)]] if prev else []
            layer.append(ray_.noop.remote(*dict.fromkeys(deps)))
        prev = layer
    # Ray submits as it builds (there is no spec to build first), so build_s is 0 and
    # submit_s holds the whole submission.
    submitted = time.perf_counter()
    ready, pending = ray.wait(prev, num_returns=len(prev), timeout=sizes.timeout_s, fetch_local=False)
    done = time.perf_counter()
    if pending:
        raise BenchError(f"layered DAG of {n} tasks did not finish: {len(pending)} outputs pending")
    _check(_get(ready[:1], sizes), [None], "a last-layer result")
    del ready, prev
    return dag_timings(n, start, start, submitted, done, sampler.peak_bytes)


def bigdag(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    """The small layered DAG (and the big one with ``dask_bigdag_full``)."""
    return peer_bigdag(lambda sampler, n: _bigdag_once(ray_, sampler, n, sizes), sizes)


def _payload_once(ray_: RaySession, sizes: Sizes, compressible: bool) -> float:
    pairs, size = sizes.payload_pairs, sizes.payload_bytes
    start = time.perf_counter()
    producers = [ray_.make_payload.remote(size, compressible, i) for i in range(pairs)]
    consumers = [ray_.consume.remote(p) for p in producers]
    total = _get(ray_.add.remote(*consumers), sizes)
    seconds = time.perf_counter() - start
    _check(total, pairs * size, "bytes received by the consumers")
    return pairs * size / seconds / 1e6


def payload(ray_: RaySession, sizes: Sizes) -> dict[str, Any]:
    return payload_sample(lambda compressible: _payload_once(ray_, sizes, compressible), sizes)


SCENARIOS: dict[str, Callable[[Any, Sizes], dict[str, Any]]] = {
    "wide": wide,
    "chain": chain,
    "fanin": fanin,
    "roundtrip": roundtrip,
    "bigdag": bigdag,
    "payload": payload,
}
