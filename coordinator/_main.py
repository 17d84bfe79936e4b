"""``xpipe-coordinator``: run one coordinator process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xpipe._lineage import parse_lineage_target
from xpipe.telemetry._listen import metrics_listen_default, serve_metrics_flag
from xpipe.telemetry._logformat import LOG_FORMATS, configure_logging
from xpipe.telemetry._tracing import add_tracing_arguments, tracing_from_arguments

from ._engine import EngineConfig
from ._logs import TASK_LOG_DB, TaskLogStore
from ._server import Coordinator, write_ready_file
from ._store import StoreError, make_private_dir, open_store

if TYPE_CHECKING:
    from xpipe.telemetry._export import MetricsEndpoint

log = logging.getLogger("xpipe.coordinator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpipe-coordinator", description="Run an xpipe coordinator.")
    p.add_argument("--listen", default="127.0.0.1:7400", help="HOST:PORT to serve gRPC on (port 0 picks one)")
    p.add_argument("--data-dir", default="./xpipe-data", type=Path, help="directory for the store and artifacts")
    p.add_argument("--store", default="sqlite",
                   help="'sqlite' (default, in --data-dir), 'sqlite:///PATH', or 'etcd://HOST:PORT[,HOST:PORT...]' (HA)")
    p.add_argument("--accept-empty-store", action="store_true",
                   help="start although the SQLite database its manifest names is missing or empty "
                        "(its history is lost; the manifest is rewritten)")
    p.add_argument("--cluster", default="default", help="etcd store: cluster name (keys under /xpipe/NAME/)")
    p.add_argument("--lease-ttl-s", type=int, default=3,
                   help="etcd store: leader lease TTL; a dead leader is replaced about this long after")
    p.add_argument("--advertise", default="",
                   help="etcd store: HOST:PORT clients and workers are sent to (default: the bound address)")
    p.add_argument("--artifact-dir", type=Path,
                   help="where big values go (default DATA_DIR/artifacts); all HA coordinators must share it")
    p.add_argument("--heartbeat-timeout-s", type=float, default=10.0, help="a silent worker is lost after this")
    p.add_argument("--heartbeat-interval-s", type=float, default=1.0, help="how often workers send heartbeats")
    p.add_argument("--prefetch", type=int, default=64,
                   help="most assignments a worker may hold beyond its slots (adapted to task duration)")
    p.add_argument("--ready-file", type=Path, help="write the bound address here once serving")
    p.add_argument("--metrics-listen", default=metrics_listen_default(), metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one; "
                        "default: $XPIPE_METRICS_LISTEN, else off)")  # fmt: skip
    p.add_argument("--lineage-export", default="", metavar="file:PATH|http://HOST:PORT/PATH",
                   help="send OpenLineage events of tracked tasks as they finish: JSON lines appended "
                        "to PATH, or POSTed to the URL (default: off; see docs/security.md)")  # fmt: skip
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_tracing_arguments(p)
    p.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                   help="this coordinator's own log: text lines, or JSON lines with run_id, task, attempt "
                        "and stimulus_id fields")  # fmt: skip
    return p


async def _serve_with(opts: argparse.Namespace, metrics: MetricsEndpoint | None) -> int:
    if opts.heartbeat_timeout_s <= 0 or opts.heartbeat_interval_s <= 0:
        raise SystemExit("xpipe-coordinator: heartbeat times must be positive")
    if opts.heartbeat_interval_s >= opts.heartbeat_timeout_s:
        raise SystemExit("xpipe-coordinator: --heartbeat-interval-s must be below --heartbeat-timeout-s")
    if opts.prefetch < 0:
        raise SystemExit("xpipe-coordinator: --prefetch must not be negative")
    try:
        store = open_store(
            opts.store, opts.data_dir, cluster=opts.cluster, artifact_dir=opts.artifact_dir,
            accept_empty_store=opts.accept_empty_store,
        )  # fmt: skip
        election = None
        if opts.store.startswith("etcd://"):
            from ._leader import LeaderElection

            election = LeaderElection(store, ttl_s=opts.lease_ttl_s, address=opts.advertise)
        tracing = tracing_from_arguments(opts, service_name="xpipe-coordinator")
        opts.lineage_target = parse_lineage_target(opts.lineage_export) if opts.lineage_export else None
    except ValueError as exc:
        raise SystemExit(f"xpipe-coordinator: {exc}") from None
    try:
        return await _run(opts, store, election, tracing, metrics)
    finally:
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # after the engine stopped: the last spans go out


async def _run(opts: argparse.Namespace, store, election, tracing, metrics: MetricsEndpoint | None) -> int:
    artifact_dir = (opts.artifact_dir or opts.data_dir / "artifacts").resolve()
    make_private_dir(artifact_dir)  # 0700 when made here: results hold task data
    config = EngineConfig(
        prefetch=opts.prefetch,
        heartbeat_timeout_s=opts.heartbeat_timeout_s,
        heartbeat_interval_s=opts.heartbeat_interval_s,
        artifact_dir=str(artifact_dir),
        tracing=tracing,
    )
    # Task logs live in the data directory whatever the store: see _logs.
    task_logs = TaskLogStore(opts.data_dir / TASK_LOG_DB)
    coordinator = Coordinator(
        store, listen=opts.listen, config=config, election=election, metrics=metrics, task_logs=task_logs
    )
    coordinator.data_tap.export = opts.lineage_target
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await coordinator.start()
    except StoreError as exc:
        # One line naming the file and the way out, not a traceback: an operator reads it.
        await coordinator.stop()
        print(f"xpipe-coordinator: {exc}", file=sys.stderr, flush=True)
        return 2
    if opts.ready_file:
        write_ready_file(opts.ready_file, coordinator.address)
    print(f"xpipe-coordinator serving on {coordinator.address}", flush=True)
    engine_failed = asyncio.ensure_future(coordinator.wait_fatal())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({engine_failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if engine_failed in done:
        exc = engine_failed.exception() if not engine_failed.cancelled() else None
        log.critical("engine stopped: %r", exc or coordinator.engine.error)
        code = 1
    stopper.cancel()
    await coordinator.stop()
    engine_failed.cancel()
    return code


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    configure_logging(opts.log_level, opts.log_format)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    metrics = serve_metrics_flag(opts.metrics_listen, "xpipe-coordinator")
    try:
        return runner(_serve_with(opts, metrics))
    finally:
        if metrics is not None:
            metrics.stop()


if __name__ == "__main__":
    sys.exit(main())
