"""``xpipe-coordinator``: run one coordinator process."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xpipe._config import add_config_argument, parse_args
from xpipe._lineage import parse_lineage_target
from xpipe._sdnotify import init_from_environ, notifier
from xpipe.security._auth import authenticator_from_spec
from xpipe.security._rbac import Policy
from xpipe.security._tls import CLIENT_AUTH_MODES, TLSConfig, server_credentials
from xpipe.security._atrest import AtRest, at_rest, configure
from xpipe.security._errors import DecryptionError, SecurityConfigError
from xpipe.telemetry._listen import metrics_listen_default, serve_metrics_flag
from xpipe.telemetry._logformat import LOG_FORMATS, configure_logging
from xpipe.telemetry._tracing import add_tracing_arguments, tracing_from_arguments

from ._alerting import Alerting, load_alerting_config
from ._authn import Security
from ._autoscale_loop import add_autoscale_arguments, prepare_autoscaler, start_autoscaler
from ._engine import EngineConfig
from ._gc import GC_YOUNG_THRESHOLD, set_young_threshold
from ._heartbeats import DEFAULT_MAX_HEARTBEATS_PER_S
from ._logs import TASK_LOG_DB, TaskLogStore
from ._retention import SWEEP_INTERVAL_S, Retention, RetentionPolicy
from ._server import Coordinator, write_ready_file
from ._store import StoreError, make_private_dir, open_store
from ._trust import RunSigner

if TYPE_CHECKING:
    from xpipe.telemetry._export import MetricsEndpoint

log = logging.getLogger("xpipe.coordinator")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpipe-coordinator", description="Run an xpipe coordinator.")
    add_config_argument(p)
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
    p.add_argument("--max-heartbeats-per-s", type=float, default=DEFAULT_MAX_HEARTBEATS_PER_S, metavar="RATE",
                   help="the fleet's heartbeats a second at most: past RATE x interval workers, the interval "
                        "and timeout stretch to workers / RATE (0: no cap)")  # fmt: skip
    p.add_argument("--prefetch", type=int, default=64,
                   help="most assignments a worker may hold beyond its slots (adapted to task duration)")
    p.add_argument("--gc-threshold", type=int, default=GC_YOUNG_THRESHOLD, metavar="N",
                   help="collect Python's youngest generation of objects after N net allocations "
                        "(Python's own: 700; fewer collections pause scheduling less, see docs/performance.md)")  # fmt: skip
    p.add_argument("--encryption-key-file", type=Path, metavar="FILE",
                   help="keyring (xpipe keys create) sealing specs, code, results, errors, task logs and artifacts "
                        "at rest; re-read when the file changes (xpipe keys rotate)")  # fmt: skip
    p.add_argument("--signing-key-file", type=Path, metavar="PEM",
                   help="Ed25519 private key that signs runs' principals (openssl genpkey -algorithm ed25519); "
                        "HA coordinators share one. Default: a new key per process")
    p.add_argument("--ready-file", type=Path, help="write the bound address here once serving")
    p.add_argument("--metrics-listen", default=metrics_listen_default(), metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one; "
                        "default: $XPIPE_METRICS_LISTEN, else off)")  # fmt: skip
    p.add_argument("--http-listen", default="", metavar="HOST:PORT",
                   help="serve the web dashboard and its JSON API (docs/api.md) at http://HOST:PORT/ "
                        "(https with --tls-cert; port 0 picks one; default: off)")  # fmt: skip
    p.add_argument("--retention-days", type=float, metavar="DAYS",
                   help="delete finished runs (records, results, logs, artifacts) older than DAYS "
                        "(fractions allowed; default: keep forever)")
    p.add_argument("--retention", action="append", default=[], metavar="NAMESPACE=DAYS",
                   help="retention of one namespace, overriding --retention-days (repeatable)")
    p.add_argument("--retention-interval-s", type=float, default=SWEEP_INTERVAL_S,
                   help="time between retention sweeps (one also runs at start)")
    p.add_argument("--lineage-export", default="", metavar="file:PATH|http://HOST:PORT/PATH",
                   help="send OpenLineage events of tracked tasks as they finish: JSON lines appended "
                        "to PATH, or POSTed to the URL (default: off; see docs/security.md)")  # fmt: skip
    p.add_argument("--alerting-config", type=Path, metavar="FILE",
                   help="cluster-wide alert channels and rules (JSON, or TOML if FILE ends in .toml)")
    p.add_argument("--alert-loopback-only", action="store_true",
                   help="deliver alerts only to loopback hosts; others are recorded as dropped (the embedded default)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_security_arguments(p)
    add_tracing_arguments(p)
    add_autoscale_arguments(p)
    p.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                   help="this coordinator's own log: text lines, or JSON lines with run_id, task, attempt "
                        "and stimulus_id fields")  # fmt: skip
    return p


def add_security_arguments(p: argparse.ArgumentParser) -> None:
    """TLS, authentication and authorization flags (docs/security.md)."""
    g = p.add_argument_group("security")
    g.add_argument("--tls-cert", default="", metavar="FILE", help="this coordinator's certificate (PEM); serves TLS")
    g.add_argument("--tls-key", default="", metavar="FILE", help="its private key (PEM)")
    g.add_argument("--tls-ca", default="", metavar="FILE", help="CA that client certificates must chain to (mTLS)")
    g.add_argument("--tls-client-auth", default="none", choices=list(CLIENT_AUTH_MODES),
                   help="'require': mTLS, a client certificate from --tls-ca is needed (and is an identity)")
    g.add_argument("--auth", default="", metavar="SPEC",
                   help="identity source: tokens:FILE, jwt:hs256:SECRET_FILE[,...], jwt:rs256:PUBKEY[,...], "
                        "ldap://HOST:PORT (with --ldap-config)")  # fmt: skip
    g.add_argument("--ldap-config", default=None, metavar="FILE", help="LDAP settings (TOML) for --auth ldap://")
    g.add_argument("--policy", default="", metavar="FILE", help="roles and grants (TOML) on top of the built-in roles")
    g.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback address without TLS and authentication")
    g.add_argument("--etcd-ca", default="", metavar="FILE", help="etcd store: CA of etcd's certificate (TLS to etcd)")
    g.add_argument("--etcd-cert", default="", metavar="FILE", help="etcd store: client certificate for etcd")
    g.add_argument("--etcd-key", default="", metavar="FILE", help="etcd store: its private key")


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every address)
        return False


def security_from_arguments(opts: argparse.Namespace) -> tuple[Security | None, Policy | None]:
    """The coordinator's :class:`Security` and ``--policy`` from its flags (None: none given).

    Raises:
        SecurityConfigError: an unusable file or spec, or an unsafe listen address without
            ``--insecure`` (the message says what to add).
    """
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    credentials = None
    if opts.tls_cert:
        credentials = server_credentials(opts.tls_cert, opts.tls_key, opts.tls_ca or None, opts.tls_client_auth)
    elif opts.tls_client_auth != "none" or opts.tls_ca:
        raise SecurityConfigError("--tls-ca and --tls-client-auth need --tls-cert and --tls-key (TLS)")
    authenticator = None
    if opts.auth:
        authenticator = authenticator_from_spec(opts.auth, ldap_config=opts.ldap_config)
    policy = Policy.load(opts.policy) if opts.policy else None
    security = Security(
        credentials=credentials, authenticator=authenticator, client_certs=opts.tls_client_auth == "require",
        blocking=opts.auth.startswith("ldap"),
    )  # fmt: skip
    # The dashboard shows task data and errors to whoever reaches it: the same rule as gRPC.
    for flag, listen in (("listen", opts.listen), ("http-listen", getattr(opts, "http_listen", ""))):
        if not listen or _is_loopback(listen) or opts.insecure:
            continue
        missing = [(what, add) for what, add, ok in (
            ("TLS", "--tls-cert/--tls-key", credentials is not None),
            ("authentication", "--auth or --tls-client-auth require", security.auth_on),
        ) if not ok]  # fmt: skip
        if missing:
            what = "listen" if flag == "listen" else "serve the dashboard (--http-listen)"
            raise SecurityConfigError(
                f"refusing to {what} on non-loopback {listen} without {' and '.join(w for w, _ in missing)} "
                f"(anyone reaching the port could {'run code on every worker' if flag == 'listen' else 'read runs, errors and logs'}): add "
                f"{' and '.join(a for _, a in missing)}, or --insecure"
            )
    if credentials is None and not security.auth_on:
        if policy is not None:
            log.warning("--policy %s has no effect without --auth or --tls-client-auth require: "
                        "every caller is the admin 'local'", opts.policy)  # fmt: skip
        return None, policy
    return security, policy


async def _serve_with(opts: argparse.Namespace, metrics: MetricsEndpoint | None) -> int:
    if opts.heartbeat_timeout_s <= 0 or opts.heartbeat_interval_s <= 0:
        raise SystemExit("xpipe-coordinator: heartbeat times must be positive")
    if opts.heartbeat_interval_s >= opts.heartbeat_timeout_s:
        raise SystemExit("xpipe-coordinator: --heartbeat-interval-s must be below --heartbeat-timeout-s")
    if not (opts.max_heartbeats_per_s >= 0 and math.isfinite(opts.max_heartbeats_per_s)):
        raise SystemExit(f"xpipe-coordinator: --max-heartbeats-per-s must be 0 (no cap) or a positive number, "
                         f"not {opts.max_heartbeats_per_s}")  # fmt: skip
    if opts.prefetch < 0:
        raise SystemExit("xpipe-coordinator: --prefetch must not be negative")
    try:
        set_young_threshold(opts.gc_threshold)
    except ValueError as exc:
        raise SystemExit(f"xpipe-coordinator: {exc}") from None
    if not opts.retention_interval_s > 0:
        raise SystemExit("xpipe-coordinator: --retention-interval-s must be positive")
    try:
        opts.retention_policy = RetentionPolicy.from_flags(opts.retention_days, opts.retention)
    except ValueError as exc:
        raise SystemExit(f"xpipe-coordinator: {exc}") from None
    try:
        crypt = AtRest.from_file(opts.encryption_key_file.resolve()) if opts.encryption_key_file else None
    except SecurityConfigError as exc:
        raise SystemExit(f"xpipe-coordinator: --encryption-key-file: {exc}") from None
    configure(crypt)  # artifact files: read (and inlined for clients) through xpipe._codec
    try:
        security, policy = security_from_arguments(opts)
        etcd_tls = None
        if opts.etcd_ca or opts.etcd_cert or opts.etcd_key:
            etcd_tls = TLSConfig(ca=opts.etcd_ca or None, cert=opts.etcd_cert or None, key=opts.etcd_key or None)
        store = open_store(
            opts.store, opts.data_dir, cluster=opts.cluster, artifact_dir=opts.artifact_dir,
            accept_empty_store=opts.accept_empty_store, etcd_tls=etcd_tls, crypt=crypt,
        )  # fmt: skip
        election = None
        if opts.store.startswith("etcd://"):
            from ._leader import LeaderElection

            election = LeaderElection(store, ttl_s=opts.lease_ttl_s, address=opts.advertise)
        tracing = tracing_from_arguments(opts, service_name="xpipe-coordinator")
        signer = RunSigner.load(opts.signing_key_file) if opts.signing_key_file else None
        opts.lineage_target = parse_lineage_target(opts.lineage_export) if opts.lineage_export else None
        opts.alerting_config_checked = load_alerting_config(opts.alerting_config) if opts.alerting_config else None
        opts.autoscale_prepared = prepare_autoscaler(opts)
    except ValueError as exc:
        raise SystemExit(f"xpipe-coordinator: {exc}") from None
    try:
        return await _run(opts, store, election, tracing, metrics, signer, security, policy)
    finally:
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # after the engine stopped: the last spans go out


async def _run(
    opts: argparse.Namespace, store, election, tracing, metrics: MetricsEndpoint | None, signer: RunSigner | None,
    security: Security | None = None, policy: Policy | None = None,
) -> int:  # fmt: skip
    artifact_dir = (opts.artifact_dir or opts.data_dir / "artifacts").resolve()
    make_private_dir(artifact_dir)  # 0700 when made here: results hold task data
    config = EngineConfig(
        prefetch=opts.prefetch,
        heartbeat_timeout_s=opts.heartbeat_timeout_s,
        heartbeat_interval_s=opts.heartbeat_interval_s,
        max_heartbeats_per_s=opts.max_heartbeats_per_s,
        artifact_dir=str(artifact_dir),
        tracing=tracing,
        signer=signer,
    )
    alerting = Alerting(opts.alerting_config_checked, loopback_only=opts.alert_loopback_only)
    # Task logs live in the data directory whatever the store: see _logs.
    task_logs = TaskLogStore(opts.data_dir / TASK_LOG_DB, crypt=at_rest())
    coordinator = Coordinator(
        store, listen=opts.listen, config=config, election=election, metrics=metrics, task_logs=task_logs,
        security=security, alerting=alerting,
    )  # fmt: skip
    if policy is not None:
        coordinator.policy = policy
    coordinator.retention = Retention(coordinator, opts.retention_policy, interval_s=opts.retention_interval_s)
    coordinator.data_tap.export = opts.lineage_target
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await coordinator.start()
    except (StoreError, DecryptionError) as exc:  # a sealed run it cannot open: say which key id
        # One line naming the file and the way out, not a traceback: an operator reads it.
        await coordinator.stop()
        print(f"xpipe-coordinator: {exc}", file=sys.stderr, flush=True)
        return 2
    coordinator.retention.start()
    autoscaler = start_autoscaler(coordinator, opts.autoscale_prepared)
    web = None
    if opts.http_listen:
        from ._web import WebServer  # aiohttp loads only when the dashboard is on

        web = WebServer(coordinator, opts.http_listen, tls_cert=opts.tls_cert, tls_key=opts.tls_key,
                        tls_ca=opts.tls_ca, client_certs=opts.tls_client_auth == "require")  # fmt: skip
        try:
            await web.start()
        except OSError as exc:  # a port in use: one line naming it, like --metrics-listen
            if autoscaler is not None:
                await autoscaler.stop()
            await coordinator.retention.stop()
            await coordinator.stop()
            print(f"xpipe-coordinator: --http-listen: {exc.strerror or exc}", file=sys.stderr, flush=True)
            return 2
        if coordinator.election is not None:  # followers' dashboards send browsers here
            await coordinator.election.publish_dashboard(coordinator.dashboard_url)
    if opts.ready_file:
        write_ready_file(opts.ready_file, coordinator.address)
    print(f"xpipe-coordinator serving on {coordinator.address}", flush=True)
    systemd = notifier()
    systemd.ready(serving_status(coordinator))
    watchdog = asyncio.ensure_future(systemd.watchdog())
    engine_failed = asyncio.ensure_future(coordinator.wait_fatal())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({engine_failed, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if engine_failed in done:
        exc = engine_failed.exception() if not engine_failed.cancelled() else None
        log.critical("engine stopped: %r", exc or coordinator.engine.error)
        code = 1
    stopper.cancel()
    systemd.stopping("stopping: engine failed" if code else "stopping")
    watchdog.cancel()
    await asyncio.gather(watchdog, return_exceptions=True)
    if autoscaler is not None:
        await autoscaler.stop()  # its workers drain while the coordinator still serves them
    if web is not None:
        await web.stop()
    await coordinator.retention.stop()
    await coordinator.stop()
    engine_failed.cancel()
    return code


def serving_status(coordinator: Coordinator) -> str:
    """The ``systemctl status`` line of a serving coordinator; HA members update it as roles change."""
    election = coordinator.election
    if election is None:
        return f"serving on {coordinator.address}"
    return election.role_line()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(build_parser(), "coordinator", argv)  # flags > XPIPE_* > --config file > defaults
    configure_logging(opts.log_level, opts.log_format)
    init_from_environ()  # before any child process starts: they must not inherit NOTIFY_SOCKET
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
