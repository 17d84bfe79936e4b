"""``xpipe-worker``: run a worker daemon that takes tasks from a coordinator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from xpipe._config import add_config_argument, parse_args
from xpipe._limits import MAX_NAME_CHARS, MAX_SLOTS
from xpipe._proto import common_pb2 as pb
from xpipe._sdnotify import init_from_environ, notifier
from xpipe.security._tls import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TOKEN, TLSConfig, client_token
from xpipe.security._atrest import ENV_KEY_FILE, AtRest, configure
from xpipe.security._errors import SecurityConfigError
from xpipe.security._codetrust import CODE_KINDS, parse_allowed_code
from xpipe.telemetry._listen import metrics_listen_default, serve_metrics_flag
from xpipe.telemetry._logformat import LOG_FORMATS, configure_logging
from xpipe.telemetry._tracing import add_tracing_arguments, config_from_arguments

from ._daemon import (
    REFUSED_CODES,
    EncryptionMismatch,
    WorkerConfig,
    WorkerDaemon,
    detect_resources,
    parse_kv,
    parse_resources,
)
from ._install import PipInstaller, default_install_dir

if TYPE_CHECKING:
    from xpipe.telemetry._export import MetricsEndpoint

log = logging.getLogger("xpipe.worker")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpipe-worker", description="Run an xpipe worker.")
    add_config_argument(p)
    p.add_argument(
        "--coordinator",
        default=os.environ.get("XPIPE_COORDINATOR", "127.0.0.1:7400"),
        help="HOST:PORT[,HOST:PORT...] of the coordinators (default: $XPIPE_COORDINATOR)",
    )
    p.add_argument("--name", default=socket.gethostname(), help="name shown in `xpipe workers`")
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="tasks run at once")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE at start (registers its @xpipe.handler functions); repeatable")  # fmt: skip
    p.add_argument("--labels", default="", help="k=v,k2=v2 labels that tasks can require")
    p.add_argument("--resources", default="", help="override detected resources: cpu=4,memory=16Gi,gpu=1,<custom>=N")
    p.add_argument("--executor", default="process", choices=["process", "thread"], help="how tasks are isolated")
    p.add_argument("--no-pickled-code", action="store_true", help="refuse cloudpickled code; run importable code only")
    p.add_argument("--allow-code", default=",".join(CODE_KINDS), metavar="KINDS",
                   help="kinds of code this worker runs, of import,handler,command,pickle (default: all; "
                        "--no-pickled-code removes pickle)")
    p.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, how long running tasks may finish")
    p.add_argument("--worker-id", default="", help="stable id (default: NAME-random)")
    p.add_argument("--artifact-dir", default="",
                   help="where big results go (default: the coordinator's; it must be able to read them)")
    p.add_argument("--task-memory-limit", default="", metavar="SIZE",
                   help="memory limit of tasks that declare none, e.g. 2Gi (default: none); tasks' declared "
                        "memory is always enforced by the process executor")  # fmt: skip
    p.add_argument("--allow-install", action="store_true",
                   help="install Python packages with pip when a client asks (install_missing_dependencies); "
                        "pip uses this process's environment (PIP_INDEX_URL, PIP_FIND_LINKS, ...)")  # fmt: skip
    p.add_argument("--install-dir", default="", metavar="DIR",
                   help="where --allow-install puts packages, on tasks' sys.path "
                        "(default: $XDG_DATA_HOME/xpipe/packages/NAME); the environment itself is never changed")  # fmt: skip
    p.add_argument("--cache-dir", default="", metavar="DIR",
                   help="where result cache disk levels without a 'path' keep this worker's entries "
                        "(default: $XDG_CACHE_HOME/xpipe/workers/NAME; docs/cache.md)")  # fmt: skip
    p.add_argument("--task-log-max-bytes", default="1Mi", metavar="SIZE",
                   help="output kept per task attempt (stdout and stderr together), e.g. 512Ki or 4Mi; past it "
                        "a marker counts the bytes dropped; 0 keeps none (default: 1Mi)")  # fmt: skip
    p.add_argument("--metrics-listen", default=metrics_listen_default(), metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one; "
                        "default: $XPIPE_METRICS_LISTEN, else off)")  # fmt: skip
    p.add_argument("--encryption-key-file", type=Path, metavar="FILE",
                   help="keyring (xpipe keys create) sealing the artifacts this worker writes and opening those it "
                        "reads; required when the coordinator encrypts at rest, refused when it does not")  # fmt: skip
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                   help="this worker's own log: text lines, or JSON lines with run_id/task/attempt fields")
    p.add_argument("--tls-ca", default="", metavar="FILE",
                   help="CA of the coordinator's certificate: connect over TLS (default: $XPIPE_TLS_CA)")
    p.add_argument("--tls-cert", default="", metavar="FILE",
                   help="this worker's certificate (xpipe certs issue --role worker), for mTLS (default: $XPIPE_TLS_CERT)")
    p.add_argument("--tls-key", default="", metavar="FILE", help="its private key (default: $XPIPE_TLS_KEY)")
    p.add_argument("--token", default=None,
                   help="credential with role worker, sent when connecting (default: $XPIPE_TOKEN)")
    add_tracing_arguments(p)
    return p


async def _run(config: WorkerConfig, metrics: MetricsEndpoint | None = None) -> int:
    daemon = WorkerDaemon(config)
    if metrics is not None:
        from ._metrics import register_worker_metrics

        register_worker_metrics(metrics, daemon)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_signal() -> None:
        if not stopping:
            log.info("signal received: draining")
            stopping.append(loop.create_task(daemon.shutdown()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    watchdog = loop.create_task(notifier().watchdog(), name="xpipe-watchdog")
    try:
        await daemon.run()
    except grpc.aio.AioRpcError as exc:
        if exc.code() in REFUSED_CODES or exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return 2  # logged where it happened, with the coordinator's reason
        raise
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
    for task in stopping:
        await task
    return 0


def _parse_size(text: str, flag: str) -> int:
    """``2Gi`` -> bytes, with the same units as ``--resources memory=``; "" -> 0 (none)."""
    if not text.strip():
        return 0
    try:
        size = parse_resources(f"memory={text.strip()}", pb.Resources()).memory_bytes
    except (ValueError, OverflowError):
        raise ValueError(f"bad {flag} value {text!r}: expected a size such as 512Mi or 2Gi") from None
    if size <= 0:
        raise ValueError(f"{flag} must be positive, got {text!r}")
    return size


def parse_log_cap(text: str) -> int:
    """``--task-log-max-bytes``: a size such as ``1Mi`` or ``65536``; ``0`` keeps no output.

    Raises:
        ValueError: naming the flag and the value (negative, or not a size).
    """
    if text.strip() == "0":
        return 0
    if text.strip().startswith("-"):
        raise ValueError(f"--task-log-max-bytes must not be negative, got {text!r}")
    if not text.strip():
        raise ValueError("--task-log-max-bytes needs a size such as 1Mi (0 keeps no output)")
    return _parse_size(text, "--task-log-max-bytes")


def configure_encryption(path: Path | None) -> None:
    """Load ``--encryption-key-file`` for this process and hand its path to the executor
    children (they inherit the environment); without the flag, make sure they have none.

    Raises:
        SecurityConfigError: the keyring is missing or malformed (the message names the file).
    """
    if path is None:
        os.environ.pop(ENV_KEY_FILE, None)
        configure(None)
        return
    path = path.resolve()
    configure(AtRest.from_file(path))
    os.environ[ENV_KEY_FILE] = str(path)


def export_for_tasks(config: WorkerConfig) -> None:
    """Put what a task needs to call the coordinator into this process's environment.

    Stream instances are long-lived tasks that report to the coordinator themselves
    (``StreamService``); task processes inherit the environment, so they find the
    coordinators, this worker's credentials and its id there. TLS variables are set only
    when TLS is on; otherwise stale ones are removed so a task never uses settings this
    worker does not.
    """
    os.environ["XPIPE_COORDINATOR"] = ",".join(config.coordinators)
    os.environ["XPIPE_WORKER_ID"] = config.worker_id
    if config.token:
        os.environ[ENV_TOKEN] = config.token
    tls = config.tls
    for var, value in ((ENV_TLS_CA, tls and tls.ca), (ENV_TLS_CERT, tls and tls.cert), (ENV_TLS_KEY, tls and tls.key)):
        if value:
            os.environ[var] = str(Path(value).resolve())  # tasks may run elsewhere
        else:
            os.environ.pop(var, None)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    opts = parse_args(p, "worker", argv)  # flags > XPIPE_* > --config file > defaults
    configure_logging(opts.log_level, opts.log_format)
    init_from_environ()  # before the executor starts: tasks must not inherit NOTIFY_SOCKET
    if not 1 <= opts.slots <= MAX_SLOTS:
        p.error(f"--slots must be between 1 and {MAX_SLOTS}, got {opts.slots}")
    if not 0 < len(opts.name) <= MAX_NAME_CHARS or len(opts.worker_id) > MAX_NAME_CHARS:
        p.error(f"--name and --worker-id may have at most {MAX_NAME_CHARS} chars (and --name at least 1)")
    coordinators = tuple(a.strip() for a in opts.coordinator.split(",") if a.strip())
    if not coordinators:
        p.error("--coordinator needs at least one HOST:PORT")
    try:
        labels = parse_kv(opts.labels, "--labels")
        resources = parse_resources(opts.resources, detect_resources())
        task_memory_limit_bytes = _parse_size(opts.task_memory_limit, "--task-memory-limit")
        tracing = config_from_arguments(opts, service_name="xpipe-worker")
        task_log_max_bytes = parse_log_cap(opts.task_log_max_bytes)
        tls = TLSConfig.resolve(opts.tls_ca, opts.tls_cert, opts.tls_key)
        allowed_code = parse_allowed_code(opts.allow_code)
    except ValueError as exc:
        p.error(str(exc))
    if opts.allow_install:
        install_dir = opts.install_dir or default_install_dir(opts.name)
        try:
            PipInstaller(install_dir, allowed=True).prepare()  # the daemon prepares it again: idempotent
        except OSError as exc:
            p.error(f"--install-dir {install_dir!r} cannot be created: {exc.strerror or exc}")
    try:
        configure_encryption(opts.encryption_key_file)
    except SecurityConfigError as exc:
        raise SystemExit(f"xpipe-worker: --encryption-key-file: {exc}") from None
    sys.path.insert(0, os.getcwd())
    config = WorkerConfig(
        coordinators=coordinators, name=opts.name, slots=opts.slots, imports=tuple(opts.imports), labels=labels,
        resources=resources, executor=opts.executor, allow_pickled=not opts.no_pickled_code, grace_s=opts.grace_s,
        allowed_code=allowed_code,
        worker_id=opts.worker_id or f"{opts.name}-{uuid.uuid4().hex[:8]}", artifact_dir=opts.artifact_dir, task_memory_limit_bytes=task_memory_limit_bytes,
        allow_install=opts.allow_install, install_dir=opts.install_dir, tracing=tracing,
        task_log_max_bytes=task_log_max_bytes, tls=tls, token=client_token(opts.token), cache_dir=opts.cache_dir,
    )  # fmt: skip
    export_for_tasks(config)
    metrics = serve_metrics_flag(opts.metrics_listen, "xpipe-worker")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(_run(config, metrics))
    except EncryptionMismatch as exc:  # logged by the daemon; one line for whoever started it
        print(f"xpipe-worker: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if metrics is not None:
            metrics.stop()


if __name__ == "__main__":
    sys.exit(main())
