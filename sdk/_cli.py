"""The ``xpipe`` command: run pipelines and inspect a cluster.

Every subcommand takes ``--coordinator`` (default ``$XPIPE_COORDINATOR``), ``--json`` and
``--connect-timeout`` (default ``$XPIPE_CONNECT_TIMEOUT``, else 10 s); every ``--help``
shows the defaults. The options every subcommand shares are also settings of the ``[client]``
table of ``--config FILE`` and ``XPIPE_*`` variables (``_config``). ``xpipe run`` without a
coordinator uses the embedded default, like ``PipelineManager()``. Errors end the command
with one line on stderr and a non-zero exit status (1: the run failed; 2: the cluster or the
request; 130: interrupted), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._config import add_config_argument, register_command as register_config_command
from ._config import parse_args as parse_config_args
from ._backoff import CONNECT_TIMEOUT_ENV, REFUSED_GRACE_S, connect_timeout_setting
from ._graph_cli import register as register_graph_command
from ._domain import DEPARTED_WORKER_STATES
from ._limits import DEFAULT_INSTALL_TIMEOUT_S, MEMORY_UNITS
from ._run_cli import (
    COMPACT_AFTER_TASKS, DEFAULT_PROGRESS_INTERVAL_S, RunInterrupted, exit_on_sigterm, follow_run, task_lines,
    task_rows,
)  # fmt: skip
from .errors import PipelineExecutionError, XpipeError
from ._alerts_cli import register as register_alerts_command
from ._audit_cli import register as register_audit_command
from .streams._cli import register as register_streams_command
from .security._cli import register as register_security_commands

__all__ = ["main"]

#: Interactive commands give up on an unreachable coordinator sooner than the SDK's 30 s.
CLI_CONNECT_TIMEOUT_S = 10.0


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def load_pipeline(target: str, *, command: str = "run"):
    """Load ``FILE.py[:OBJECT]`` and return the Pipeline it names (or its only one).

    The file is loaded under a private module name and its code is pickled by value, so
    workers on other machines do not need the file.
    """
    from ._dag import Pipeline

    path_text, _, obj_name = target.partition(":")
    if len(path_text) == 1 and obj_name and obj_name[0] in "\\/":  # a Windows drive letter
        path_text, _, obj_name = target.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise SystemExit(f"xpipe {command}: no such file {path_text!r}")
    module_name = f"_xpipe_run_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    finally:
        # Out of sys.modules, the file's functions are not importable by name, so they
        # travel by value (cloudpickle) and workers need not have the file.
        del sys.modules[module_name]
    if obj_name:
        if not hasattr(module, obj_name):
            raise SystemExit(f"xpipe {command}: {path_text} has no object {obj_name!r}")
        obj = getattr(module, obj_name)
        if callable(obj) and not isinstance(obj, Pipeline):
            obj = obj()
        if not isinstance(obj, Pipeline):
            raise SystemExit(f"xpipe {command}: {target} is a {type(obj).__name__}, not a Pipeline")
        return obj
    found = [v for v in vars(module).values() if isinstance(v, Pipeline)]
    if len(found) != 1:
        names = [k for k, v in vars(module).items() if isinstance(v, Pipeline)]
        raise SystemExit(
            f"xpipe {command}: {path_text} defines {len(found)} pipelines {names}; name one as FILE.py:OBJECT"
        )
    return found[0]


def _client(opts):
    from ._client import Client

    if not opts.coordinator:
        raise SystemExit(f"xpipe {opts.command}: no coordinator; pass --coordinator HOST:PORT or set XPIPE_COORDINATOR")
    try:
        return Client(opts.coordinator, connect_timeout_s=opts.connect_timeout_s, otlp_endpoint=opts.otlp_endpoint or None,
                      tls=_tls(opts), token=opts.token or None, namespace=opts.namespace or None)  # fmt: skip
    except ValueError as exc:  # a malformed --coordinator, an unusable TLS file
        raise SystemExit(f"xpipe {opts.command}: {exc}") from None


def _tls(opts):
    """``--tls-ca/--tls-cert/--tls-key``, else ``XPIPE_TLS_*``, else None (plaintext)."""
    from .security._tls import TLSConfig

    return TLSConfig.resolve(opts.tls_ca, opts.tls_cert, opts.tls_key)


def _connect_timeout_s(text: str) -> float | None:
    """``--connect-timeout-s``: seconds >= 0, or ``none`` to keep trying for ever."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 or 'none', got {text!r}")
    return value


def _default_connect_timeout_s() -> float | None:
    """``$XPIPE_CONNECT_TIMEOUT`` if set (checked), else the CLI's own shorter default."""
    if not os.environ.get(CONNECT_TIMEOUT_ENV, "").strip():
        return CLI_CONNECT_TIMEOUT_S
    try:
        return connect_timeout_setting()
    except ValueError as exc:
        raise SystemExit(f"xpipe: {exc}") from None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default.

    Like ``argparse.ArgumentDefaultsHelpFormatter``, without the noise it adds to flags and
    to options whose default is empty (their help says where the value comes from).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, "", argparse.SUPPRESS):
            return text
        if isinstance(action.default, bool):
            return text
        return f"{text} (default: %(default)s)"


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand below it (ours and the registered ones) the formatter."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:  # argparse keeps its subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                show_defaults(child)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    """``xpipe run``'s own options: how it follows the run."""
    run.add_argument("--verbose", "-v", action="store_true",
                     help=f"a line per task even past {COMPACT_AFTER_TASKS} tasks (else counts, failures, slowest)")
    run.add_argument("--progress-interval-s", type=float, default=DEFAULT_PROGRESS_INTERVAL_S, metavar="SECONDS",
                     help="when stdout is not a terminal, a progress line this often (0: none; "
                          "a terminal gets a progress bar)")  # fmt: skip
    run.add_argument("--cancel-on-interrupt", action=argparse.BooleanOptionalAction, default=None,
                     help="on Ctrl-C, cancel the run (--no-cancel-on-interrupt: leave it running) instead of "
                          "asking; default: ask when stdin is a terminal, else cancel (the embedded default "
                          "always cancels: its cluster stops with the command)")  # fmt: skip


def _emit(opts, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if opts.json else text)


def cmd_run(opts) -> int:
    from ._manager import PipelineManager

    pipeline = load_pipeline(opts.target)
    try:
        # SIGTERM unwinds like an exception, so the embedded default's processes are stopped.
        with exit_on_sigterm():
            try:
                pm = PipelineManager(coordinator=opts.coordinator or None, connect_timeout_s=opts.connect_timeout_s,
                                     otlp_endpoint=opts.otlp_endpoint or None,
                                     tls=_tls(opts) if opts.coordinator else None, token=opts.token or None,
                                     namespace=opts.namespace or None)  # fmt: skip
            except ValueError as exc:  # a malformed --coordinator, an unusable TLS file
                raise SystemExit(f"xpipe run: {exc}") from None
            with pm:
                result = follow_run(pm, pipeline, out=sys.stderr if opts.json else sys.stdout,
                                    progress_interval_s=opts.progress_interval_s,
                                    cancel_on_interrupt=opts.cancel_on_interrupt,
                                    embedded=not opts.coordinator)  # fmt: skip
    except RunInterrupted as stopped:
        _emit(opts, {"run_id": stopped.run_id, "status": "interrupted", "cancelled": stopped.cancelled},
              f"run {stopped.run_id}: interrupted")  # fmt: skip
        return 130
    shown = _shown_outputs(pipeline, result.outputs)
    rows = task_rows(list(result.tasks.values()))
    data = {
        "run_id": result.run_id,
        "pipeline": result.pipeline,
        "status": result.status,
        "outputs": {k: _jsonable(v) for k, v in shown.items()},
        "tasks": rows,
    }
    lines = [f"run {result.run_id} of {result.pipeline}: {result.status}"]
    lines += task_lines(rows, verbose=opts.verbose)
    listed = shown if opts.verbose else dict(list(shown.items())[:COMPACT_AFTER_TASKS])
    for name, value in listed.items():
        text = repr(value)
        lines.append(f"  -> {name} = {text if len(text) < 200 else text[:197] + '...'}")
    if len(listed) < len(shown):
        lines.append(f"  ... {len(shown) - len(listed)} more outputs (--verbose, or --json)")
    _emit(opts, data, "\n".join(lines))
    return 0 if result.succeeded else 1


def cmd_plan(opts) -> int:
    """Print the execution plan of FILE.py[:OBJECT]; with a coordinator, from its history and workers."""
    from ._plan import PlanWorker, build_plan

    pipeline = load_pipeline(opts.target, command="plan")
    constraints = {}
    if opts.cpu_cores is not None:
        constraints["cpu_cores"] = opts.cpu_cores
    if opts.memory_gb is not None:
        constraints["memory_gb"] = opts.memory_gb
    if opts.gpu is not None:
        constraints["gpu"] = opts.gpu
    durations: dict[str, tuple[float, int]] = {}
    workers: list[PlanWorker] = []
    if opts.coordinator:
        with _client(opts) as client:
            durations = client.task_stats(pipeline.validate())
            workers = [PlanWorker.from_info(w) for w in client.list_workers()
                       if w.state not in DEPARTED_WORKER_STATES]
    plan = build_plan(
        pipeline, optimization_strategy=opts.strategy, resource_constraints=constraints or None,
        cost_optimization=opts.cost_optimization, durations=durations, workers=workers,
    )  # fmt: skip
    if not opts.coordinator and not opts.json:
        print("(no coordinator: durations are defaults and costs unknown; pass --coordinator for history)")
    print(plan.to_json(sort_keys=True) if opts.json else str(plan))
    return 0


def _shown_outputs(pipeline, outputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs as they may be shown: the PII fields of privacy-marked tasks redacted."""
    from .security._marks import governance_of
    from .security._privacy import redact

    tasks = pipeline.tasks
    shown = {}
    for name, value in outputs.items():
        task = tasks.get(name)
        marks = governance_of(pipeline, task, getattr(task, "func", None)) if task is not None else None
        shown[name] = redact(value, marks.pii_fields) if marks is not None and marks.pii_fields else value
    return shown


def cmd_result(opts) -> int:
    """Print one task's result, with PII fields redacted (the stored run's marks are not served:
    the default PII list, or --pii, is used; --no-redact shows the value as stored)."""
    from .security._privacy import DEFAULT_PII_FIELDS, redact

    fields = DEFAULT_PII_FIELDS if opts.pii is None else tuple(f.strip() for f in opts.pii.split(",") if f.strip())
    with _client(opts) as client:
        result = client.task_result(opts.run_id, opts.task)
    value = result.value if opts.no_redact else redact(result.value, fields)
    data = {"run_id": opts.run_id, "task": opts.task, "status": result.state.lower(), "has_value": result.has_value,
            "value": _jsonable(value), "error": result.error, "error_type": result.error_type}  # fmt: skip
    if result.has_value:
        text = f"{opts.task} ({data['status']}) = {value!r}"
    else:
        text = f"{opts.task} ({data['status']}): no result"
        if result.error:
            text += f"; {result.error_type}: {result.error}"
    _emit(opts, data, text)
    return 0


def cmd_gc(opts) -> int:
    """Run the coordinator's retention sweep now, or (--dry-run) list what it would delete."""
    from ._governance import collect_garbage

    with _client(opts) as client:
        report = collect_garbage(client, dry_run=opts.dry_run)
    _emit(opts, report.as_dict(), str(report))
    return 0


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def cmd_runs(opts) -> int:
    with _client(opts) as client:
        runs = client.list_runs(opts.limit)
    data = [
        {"run_id": r.run_id, "pipeline": r.pipeline, "status": r.state.lower(),
         "created_at": r.created_at, "finished_at": r.finished_at, "tasks": r.total_tasks}
        for r in runs
    ]  # fmt: skip
    lines = [f"{'RUN':18} {'PIPELINE':24} {'STATUS':10} {'TASKS':>6}  CREATED"]
    lines += [f"{d['run_id']:18} {d['pipeline'][:24]:24} {d['status']:10} {d['tasks']:>6}  {_fmt_time(d['created_at'])}" for d in data]
    _emit(opts, data, "\n".join(lines))
    return 0


def _circuits(status) -> list[dict[str, Any]]:
    """Circuit breakers that are not closed, from a ClusterStatus."""
    return [{"name": c.name, "state": c.state, "failures": c.failures, "opened_at": c.opened_at or None}
            for c in status.circuits if c.state != "closed"]  # fmt: skip


def _circuit_lines(circuits: list[dict[str, Any]]) -> list[str]:
    return [f"  circuit {c['name']:30} {c['state']:10} {c['failures']} failures, opened {_fmt_time(c['opened_at'] or 0)}"
            for c in circuits]  # fmt: skip


def cmd_status(opts) -> int:
    with _client(opts) as client:
        info = client.get_run(opts.run_id)
        circuits = _circuits(client.cluster_status())
    s = info.summary
    tasks = task_rows(info.tasks)
    data = {"run_id": s.run_id, "pipeline": s.pipeline, "status": s.state.lower(),
            "total_tasks": s.total_tasks, "succeeded_tasks": s.succeeded_tasks, "failed_tasks": s.failed_tasks,
            "created_at": s.created_at, "finished_at": s.finished_at, "tasks": tasks,
            "circuits": circuits}  # fmt: skip
    counts: dict[str, int] = {}
    for t in tasks.values():
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines = [f"run {s.run_id} of {s.pipeline}: {data['status']} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})"]
    listed = dict(list(tasks.items())[: opts.limit])
    lines += task_lines(listed, verbose=opts.verbose)
    if len(tasks) > opts.limit:
        lines.append(f"  ... {len(tasks) - opts.limit} more (--limit, or --json for all)")
    lines += _circuit_lines(circuits)
    _emit(opts, data, "\n".join(lines))
    return 0


def cmd_cancel(opts) -> int:
    with _client(opts) as client:
        cancelled = client.cancel(opts.run_id)
    _emit(opts, {"run_id": opts.run_id, "cancelled": cancelled},
          f"run {opts.run_id}: {'cancelling' if cancelled else 'already finished'}")  # fmt: skip
    return 0


def cmd_story(opts) -> int:
    with _client(opts) as client:
        entries = client.story(opts.run_id, opts.task or "")
    lines = [f"{'TIME':23} {'TASK':24} {'TRY':>3} {'FROM':15} {'TO':15} {'STIMULUS':24} REASON"]
    for e in entries:
        stamp = _fmt_time(e["time"]) + f".{int(e['time'] * 1000) % 1000:03d}" if e["time"] else "-"
        lines.append(f"{stamp:23} {e['task'][:24]:24} {e['attempt']:>3} {e['from']:15} {e['to']:15} "
                     f"{e['stimulus_id'][:24]:24} {e['reason']}")  # fmt: skip
    if not entries:
        lines.append("(no moves yet)")
    _emit(opts, entries, "\n".join(lines))
    return 0


def cmd_logs(opts) -> int:
    """Print what tasks wrote; with --follow, as they write it, until they finish."""
    from ._types import format_logs

    if opts.attempt < 0:
        raise SystemExit(f"xpipe logs: --attempt must be >= 0 (0: every attempt), got {opts.attempt}")
    with _client(opts) as client:
        if opts.follow:
            chunks = client.follow_logs(opts.run_id, opts.task or "", attempt=opts.attempt)
        else:
            chunks = iter(client.get_logs(opts.run_id, opts.task or "", attempt=opts.attempt))
        if opts.json:  # one JSON object per line, so a followed stream can be piped
            for c in chunks:
                line = {"task": c.task, "attempt": c.attempt, "stream": c.stream, "text": c.text,
                        "truncated_bytes": c.truncated_bytes, "received_at": c.received_at}  # fmt: skip
                print(json.dumps(line), flush=True)
            return 0
        out = sys.stdout
        for text in format_logs(chunks):
            out.write(text)
            out.flush()
    return 0


def cmd_workers(opts) -> int:
    """Live workers (not drained or lost), with their resources; ``--all``: the departed too."""
    with _client(opts) as client:
        workers = client.list_workers()
    if not opts.all:
        workers = [w for w in workers if w.state not in DEPARTED_WORKER_STATES]
    data = []
    for w in workers:
        res = {("cpu" if k == "cpu_cores" else k): v for k, v in w.resources.items()}
        data.append({
            "name": w.name, "id": w.worker_id, "host": w.host, "state": w.state, "slots": w.slots,
            "running": w.running, "resources": res, "labels": dict(w.labels), "handlers": list(w.handlers),
            "last_heartbeat": w.last_heartbeat, "memory_enforcement": w.memory_enforcement,
            "metrics": {"cpu_percent": w.metrics.get("cpu_percent", 0.0),
                        "memory_percent": w.metrics.get("memory_percent", 0.0)},
        })  # fmt: skip
    lines = [f"{'NAME':16} {'STATE':12} {'SLOTS':>5} {'RUNNING':>7} {'CPU%':>5} {'MEMLIMIT':8} {'RESOURCES':28} HOST"]
    lines += [f"{d['name'][:16]:16} {d['state']:12} {d['slots']:>5} {d['running']:>7} "
              f"{d['metrics']['cpu_percent']:>5.0f} {d['memory_enforcement'] or '-':8} "
              f"{_resources_text(d['resources']):28} {d['host']}"
              for d in data]  # fmt: skip
    if not data:
        lines.append("(no live workers; --all shows those that left)" if not opts.all else "(no workers)")
    _emit(opts, data, "\n".join(lines))
    return 0


def _resources_text(resources: dict[str, Any]) -> str:
    """``cpu=4 memory=7.6GiB gpu=1``: what a worker offers, memory in binary units."""
    parts = []
    for key, value in sorted(resources.items()):
        if not value:
            continue
        if "memory" in key and isinstance(value, (int, float)):
            parts.append(f"{key.removesuffix('_bytes')}={value / MEMORY_UNITS['gi']:.1f}Gi")
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts) or "-"


def cmd_drain(opts) -> int:
    with _client(opts) as client:
        found = client.drain(opts.worker)
    _emit(opts, {"worker": opts.worker, "draining": found},
          f"worker {opts.worker}: {'draining' if found else 'not found'}")  # fmt: skip
    return 0 if found else 1


def cmd_cluster(opts) -> int:
    with _client(opts) as client:
        s = client.cluster_status()
    data = {"leader": s.leader, "members": list(s.members), "term": s.term, "workers": s.workers,
            "unhealthy_nodes": list(s.unhealthy_nodes), "active_runs": s.active_runs,
            "coordinator_id": s.coordinator_id, "version": s.version, "circuits": _circuits(s),
            "heartbeat_interval_s": s.heartbeat_interval_s, "heartbeat_timeout_s": s.heartbeat_timeout_s}  # fmt: skip
    text = (f"leader {s.leader} (term {s.term}); members {', '.join(s.members)}; "
            f"{s.workers} workers; {s.active_runs} active runs")  # fmt: skip
    if s.heartbeat_interval_s:
        text += f"; heartbeats every {s.heartbeat_interval_s:g} s, lost after {s.heartbeat_timeout_s:g} s"
    if s.unhealthy_nodes:
        text += f"\nunhealthy workers (lost or disconnected): {', '.join(s.unhealthy_nodes)}"
    _emit(opts, data, "\n".join([text, *_circuit_lines(data["circuits"])]))
    return 0


def cmd_forget(opts) -> int:
    with _client(opts) as client:
        r = client.forget_workers(opts.workers)
    data = {"forgotten": list(r.forgotten), "healthy": list(r.healthy), "unknown": list(r.unknown)}
    lines = [f"forgotten: {', '.join(r.forgotten)}"] if r.forgotten else []
    lines += [f"left alone (connected): {', '.join(r.healthy)}"] if r.healthy else []
    lines += [f"unknown: {', '.join(r.unknown)}"] if r.unknown else []
    _emit(opts, data, "\n".join(lines))
    return 0 if not r.unknown else 1


def cmd_install(opts) -> int:
    with _client(opts) as client:
        report = client.install_dependencies(opts.packages, timeout_s=opts.timeout_s)
    data = {"packages": list(report.packages),
            "workers": [{"worker": w.worker, "status": w.status, "message": w.message, "output_tail": w.output_tail}
                        for w in report.workers]}  # fmt: skip
    lines = [f"{w.worker}: {w.status} {w.message}" for w in report.workers]
    lines += [f"--- pip on {w.worker}:\n{w.output_tail.rstrip()}" for w in report.workers
              if w.status == "FAILED" and w.output_tail]  # fmt: skip
    _emit(opts, data, "\n".join(lines))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--coordinator", default=os.environ.get("XPIPE_COORDINATOR", ""),
                        help="HOST:PORT[,HOST:PORT...] (default: $XPIPE_COORDINATOR)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--connect-timeout", "--connect-timeout-s", dest="connect_timeout_s", type=_connect_timeout_s,
                        default=_default_connect_timeout_s(), metavar="SECONDS",
                        help=f"give up after this many seconds without reaching a coordinator; 'none': keep "
                             f"trying (default: ${CONNECT_TIMEOUT_ENV}, else {CLI_CONNECT_TIMEOUT_S:g}; a refused "
                             f"connection fails after {REFUSED_GRACE_S:g}s)")  # fmt: skip
    common.add_argument("--otlp-endpoint", default="", metavar="HOST:PORT",
                        help="export a trace of what this command submits over OTLP/gRPC "
                             "(default: $OTEL_EXPORTER_OTLP_ENDPOINT, else off)")  # fmt: skip
    common.add_argument("--tls-ca", default="", metavar="FILE",
                        help="CA of the coordinator's certificate: connect over TLS (default: $XPIPE_TLS_CA)")
    common.add_argument("--tls-cert", default="", metavar="FILE",
                        help="this client's certificate, for mTLS (default: $XPIPE_TLS_CERT)")
    common.add_argument("--tls-key", default="", metavar="FILE", help="its private key (default: $XPIPE_TLS_KEY)")
    common.add_argument("--token", default="", help="credential sent to the coordinator (default: $XPIPE_TOKEN)")
    common.add_argument("--namespace", default="", help="namespace of the runs `xpipe run` submits (default: default)")
    add_config_argument(common)  # [client] holds these shared options; a subcommand's own are flags only
    p = argparse.ArgumentParser(prog="xpipe", description="Run pipelines and inspect an xpipe cluster.",
                                formatter_class=DefaultsHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run FILE.py[:OBJECT] and wait for it",
                         description="Run FILE.py[:OBJECT] and wait for it. Without --coordinator (or "
                                     "$XPIPE_COORDINATOR) it falls back to the embedded default: a coordinator "
                                     "and workers started on this machine for this run, as PipelineManager() does.")  # fmt: skip
    run.add_argument("target", help="a Python file and optionally the Pipeline object in it")
    _add_run_options(run)
    run.set_defaults(fn=cmd_run)
    plan = sub.add_parser("plan", parents=[common], help="print the execution plan of FILE.py[:OBJECT]")
    plan.add_argument("target", help="a Python file and optionally the Pipeline object in it")
    plan.add_argument("--strategy", default="time_optimal", help="what the plan optimizes",
                      choices=["time_optimal", "resource_optimal", "cost_optimal"])
    plan.add_argument("--cpu-cores", type=float, default=None, help="resource constraint: cores in flight at most")
    plan.add_argument("--memory-gb", type=float, default=None, help="resource constraint: memory in flight at most")
    plan.add_argument("--gpu", type=int, default=None, help="resource constraint: GPUs in flight at most")
    plan.add_argument("--cost-optimization", action="store_true", help="price tasks on the cheapest fitting worker")
    plan.set_defaults(fn=cmd_plan)
    runs = sub.add_parser("runs", parents=[common], help="list recent runs")
    runs.add_argument("--limit", type=int, default=20, help="most recent runs to list")
    runs.set_defaults(fn=cmd_runs)
    status = sub.add_parser("status", parents=[common], help="show one run")
    status.add_argument("run_id")
    status.add_argument("--limit", type=int, default=50, help="tasks to list")
    status.add_argument("--verbose", "-v", action="store_true",
                        help=f"a line per task even past {COMPACT_AFTER_TASKS} tasks (else counts, failures, slowest)")
    status.set_defaults(fn=cmd_status)
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run")
    cancel.add_argument("run_id")
    cancel.set_defaults(fn=cmd_cancel)
    story = sub.add_parser("story", parents=[common], help="every move of a run's tasks, and what caused it")
    story.add_argument("run_id")
    story.add_argument("task", nargs="?", default="", help="only this task")
    story.set_defaults(fn=cmd_story)
    logs = sub.add_parser("logs", parents=[common], help="what a run's tasks printed and logged")
    logs.add_argument("run_id")
    logs.add_argument("task", nargs="?", default="", help="only this task")
    logs.add_argument("--attempt", type=int, default=0, help="only this attempt (default: 0, every attempt)")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing as the tasks write, until they (or the run) finish")  # fmt: skip
    logs.set_defaults(fn=cmd_logs)
    workers = sub.add_parser("workers", parents=[common], help="list live workers (--all: departed ones too)")
    workers.add_argument("--all", action="store_true", help="also workers that left: drained or lost")
    workers.set_defaults(fn=cmd_workers)
    register_graph_command(sub)
    drain = sub.add_parser("drain", parents=[common], help="drain a worker: no new work, finish what runs")
    drain.add_argument("worker", help="the worker's name")
    drain.set_defaults(fn=cmd_drain)
    sub.add_parser("cluster", parents=[common], help="leader and members").set_defaults(fn=cmd_cluster)
    forget = sub.add_parser("forget", parents=[common], help="forget lost or disconnected workers")
    forget.add_argument("workers", nargs="+", help="worker names")
    forget.set_defaults(fn=cmd_forget)
    install = sub.add_parser("install", parents=[common],
                             help="pip-install packages on every worker started with --allow-install")  # fmt: skip
    install.add_argument("packages", nargs="+", metavar="PACKAGE", help="requirement, e.g. pandas or 'pyyaml>=6'")
    install.add_argument("--timeout-s", type=float, default=DEFAULT_INSTALL_TIMEOUT_S, help="pip's limit on each worker")
    install.set_defaults(fn=cmd_install)
    result = sub.add_parser("result", parents=[common], help="one task's result, PII fields redacted")
    result.add_argument("run_id")
    result.add_argument("task")
    result.add_argument("--pii", default=None, metavar="F1,F2",
                        help="field names to redact (default: the common PII names, see docs/security.md)")
    result.add_argument("--no-redact", action="store_true", help="show the value as stored")
    result.set_defaults(fn=cmd_result)
    gc = sub.add_parser("gc", parents=[common], help="delete runs past retention now (--dry-run: only list them)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    gc.set_defaults(fn=cmd_gc)
    register_security_commands(sub)
    register_audit_command(sub, common, _client)
    register_alerts_command(sub, common, _client)
    register_streams_command(sub, common, _client)
    register_config_command(p, sub, common)
    show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parse_config_args(build_parser(), "client", argv)  # flags > XPIPE_* > --config [client] > defaults
    try:
        return opts.fn(opts)
    except PipelineExecutionError as exc:
        print(f"xpipe {opts.command}: {exc}", file=sys.stderr)
        return 1
    except XpipeError as exc:
        print(f"xpipe {opts.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xpipe {opts.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
