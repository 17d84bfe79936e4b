"""Validation of everything that enters from the wire: pipeline specs and worker messages.

Polyglot clients skip the Python SDK, and a worker stream may come from anything, so the
coordinator checks every request again with the same graph rules
(:func:`xpipe._graph.validate_graph`) and the same limits (:mod:`xpipe._limits`), plus what
only the wire form can get wrong: a task with no kind, a code hash with no code, a flow from
nowhere, a NaN where the scheduler does arithmetic. A value that got past here and made the
engine raise would stop the coordinator for everyone, so every float is checked (NaN and
infinity fail every range comparison below) and every string has a length limit.

Messages name the field path (``task 'extract': resources.cpu_cores is nan; ...``) and show
at most ``SHOWN_CHARS`` of a hostile value, so the error itself stays small.
"""

from __future__ import annotations

from xpipe._domain import REJECTED_FIELD, REJECTED_GRAPH
from xpipe._graph import sub_task_of, validate_graph
from xpipe._install import INSTALL_STATUSES, requirements_problem, timeout_problem
from xpipe._limits import (
    INSTALL_OUTPUT_TAIL_CHARS,
    MAX_CUSTOM_RESOURCES,
    MAX_DEPENDS_ON,
    MAX_PARALLELISM,
    MAX_DURATION_S,
    MAX_GPUS,
    MAX_HANDLERS,
    MAX_MEMORY_BYTES,
    MAX_METRIC_LABELS,
    MAX_COMMAND_STDOUT_LIMIT_BYTES,
    MAX_METRIC_POINTS,
    MAX_METRIC_WARNINGS,
    MAX_MONITORING_CONFIG_CHARS,
    MAX_NAME_CHARS,
    MAX_RESOURCE_AMOUNT,
    MAX_RUNNING_REFS,
    MAX_SLOTS,
    MAX_TASKS,
    MAX_TEXT_CHARS,
    MAX_UNIX_TIME_S,
    command_problem,
    finite_problem,
    labels_problem,
    name_problem,
    shown,
)
from xpipe._proto import common_pb2 as pb
from xpipe._proto import worker_pb2
from xpipe._scaling import AutoscaleSettings
from xpipe.errors import PipelineValidationError
from xpipe.security._codetrust import CODE_KINDS
from xpipe.telemetry._task import metric_name_problem

from ._placement import STRATEGIES, normalize_strategy

__all__ = ["validate_spec", "rejection_kind", "check_register", "check_heartbeat", "check_event", "MAX_TASKS"]

_CODECS = frozenset(pb.Codec.values())
_BACKOFFS = frozenset(pb.RetryBackoff.values())


class _FieldError(PipelineValidationError):
    """A bad field or a value over a limit, as opposed to a problem with the graph."""


def _invalid(where: str, problem: str) -> PipelineValidationError:
    return _FieldError(f"{where}: {problem}")


def rejection_kind(exc: PipelineValidationError) -> str:
    """What a refused spec got wrong, for clients: REJECTED_FIELD or REJECTED_GRAPH."""
    return REJECTED_FIELD if isinstance(exc, _FieldError) else REJECTED_GRAPH


class _Bad(ValueError):
    """A problem with one field, named by its path; the caller says where (which task)."""


def _text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _Bad(f"{field} has {len(value)} chars; the limit is {limit}")


def _seconds(field: str, value: float) -> None:
    if not 0.0 <= value <= MAX_DURATION_S:
        raise _Bad(f"{field} {finite_problem(value, high=MAX_DURATION_S)}")


#: Most levels a task's result cache may list (the seed's config has three).
MAX_CACHE_LEVELS = 8


def _cache(cache: pb.CacheSpec) -> None:
    """A task's cache settings: workers read the TTLs, paths and URLs, so they are checked here."""
    _seconds("cache.ttl_s", cache.ttl_s)
    _text("cache.code_id", cache.code_id, MAX_TEXT_CHARS)
    _text("cache.pipeline", cache.pipeline, MAX_TEXT_CHARS)
    if len(cache.levels) > MAX_CACHE_LEVELS:
        raise _Bad(f"cache.levels has {len(cache.levels)} levels; the limit is {MAX_CACHE_LEVELS}")
    for i, level in enumerate(cache.levels):
        _seconds(f"cache.levels[{i}].ttl_s", level.ttl_s)
        for field in ("name", "type", "url", "path", "prefix"):
            _text(f"cache.levels[{i}].{field}", getattr(level, field), MAX_TEXT_CHARS)


def _labels(field: str, labels) -> None:
    problem = labels_problem(field, labels)
    if problem:
        raise _Bad(problem)


def _resources(field: str, res: pb.Resources) -> None:
    """A request, an offer or a limit: finite, not negative, not absurd."""
    if not 0.0 <= res.cpu_cores <= MAX_RESOURCE_AMOUNT:
        raise _Bad(f"{field}.cpu_cores {finite_problem(res.cpu_cores, high=MAX_RESOURCE_AMOUNT)}")
    if res.memory_bytes > MAX_MEMORY_BYTES:
        raise _Bad(f"{field}.memory_bytes is {res.memory_bytes}; the limit is {MAX_MEMORY_BYTES}")
    if res.gpu > MAX_GPUS:
        raise _Bad(f"{field}.gpu is {res.gpu}; the limit is {MAX_GPUS}")
    custom = res.custom
    if custom:
        if len(custom) > MAX_CUSTOM_RESOURCES:
            raise _Bad(f"{field}.custom has {len(custom)} entries; the limit is {MAX_CUSTOM_RESOURCES}")
        for name, amount in custom.items():
            if not name or len(name) > MAX_NAME_CHARS:
                raise _Bad(f"{field}.custom key {shown(name)} must have 1 to {MAX_NAME_CHARS} chars")
            if not 0.0 <= amount <= MAX_RESOURCE_AMOUNT:
                raise _Bad(f"{field}.custom[{shown(name)}] {finite_problem(amount, high=MAX_RESOURCE_AMOUNT)}")


def _name(field: str, value: str) -> None:
    """A task name (or a reference to one): it becomes part of file names on workers."""
    problem = name_problem(field, value)
    if problem:
        raise _Bad(problem)


def validate_spec(spec: pb.PipelineSpec, *, restored: bool = False) -> list[str]:
    """Check a submitted spec; return a topological order of its task names.

    Args:
        restored: the spec was accepted before (a run resumed from the store): check only
            what the scheduler needs, so a limit tightened since cannot strand a run.

    Raises:
        PipelineValidationError: naming the first problem found and its field path.
    """
    if not spec.name:
        raise _FieldError("pipeline has no name")
    where = f"pipeline {shown(spec.name)}"
    if len(spec.tasks) > MAX_TASKS:
        raise _invalid(where, f"has {len(spec.tasks)} tasks; the limit is {MAX_TASKS}")
    try:
        normalize_strategy(spec.placement_strategy)
    except ValueError as exc:
        raise _invalid(
            where, f"unknown placement strategy {shown(spec.placement_strategy)}; known: {', '.join(STRATEGIES)}"
        ) from exc
    if not restored:
        try:
            _check_pipeline_fields(spec)
        except _Bad as exc:
            raise _invalid(where, str(exc)) from None
    code = {blob.code_hash for blob in spec.code}
    mapped: list[str] = []  # fanned-out tasks
    names: list[str] = []
    deps: dict[str, list[str]] = {}
    for task in spec.tasks:
        name = task.name
        if not name:
            raise _invalid(where, "has a task with no name")
        kind = task.WhichOneof("kind")
        try:
            if kind is None:
                raise _Bad("has no kind: set python, command or handler")
            if kind == "python":
                call = task.python
                if not call.import_path and not call.code_hash:
                    raise _Bad("python call needs import_path or code_hash")
                if call.code_hash and call.code_hash not in code:
                    raise _Bad(f"refers to code {shown(call.code_hash[:12])}... that the pipeline does not carry")
            elif kind == "command" and not task.command.argv:
                raise _Bad("command has an empty argv")
            elif kind == "handler" and not task.handler.name:
                raise _Bad("handler has no name")
            if not restored:
                _check_task_fields(task, name, kind)
            flows = task.flows
            for flow in flows:
                if not flow.parameter:
                    raise _Bad(f"a DataFlow from {shown(flow.source_task)} has no parameter")
        except _Bad as exc:
            raise _invalid(f"task {shown(name)}", str(exc)) from None
        names.append(name)
        deps[name] = [*task.depends_on, *(f.source_task for f in flows)] if flows else [*task.depends_on]
        if task.HasField("map"):
            mapped.append(name)
    if mapped:
        check_sub_task_names(names, mapped)
    if spec.HasField("recovery_handler"):
        handler = spec.recovery_handler
        if not handler.import_path and not handler.code_hash:
            raise _invalid(where, "recovery_handler needs import_path or code_hash")
        if handler.code_hash and handler.code_hash not in code:
            raise _invalid(
                where,
                f"recovery_handler refers to code {shown(handler.code_hash[:12])}... that the pipeline does not carry",
            )
    return validate_graph(names, deps)


def _check_pipeline_fields(spec: pb.PipelineSpec) -> None:
    _text("name", spec.name, MAX_NAME_CHARS)
    if spec.labels:
        _labels("labels", spec.labels)
    _seconds("wait_for_resources_s", spec.wait_for_resources_s)
    if spec.HasField("resource_limits"):
        _resources("resource_limits", spec.resource_limits)
    if spec.HasField("fault_tolerance"):
        ft = spec.fault_tolerance
        _seconds("fault_tolerance.checkpoint_interval_s", ft.checkpoint_interval_s)
        _seconds("fault_tolerance.circuit_window_s", ft.circuit_window_s)
        _seconds("fault_tolerance.circuit_open_s", ft.circuit_open_s)
        if ft.retry_backoff not in _BACKOFFS:
            raise _Bad(f"fault_tolerance.retry_backoff {ft.retry_backoff} is not a RetryBackoff value")
    for i, blob in enumerate(spec.code):
        if not blob.code_hash:
            raise _Bad(f"code[{i}].code_hash is empty")
        _text(f"code[{i}].code_hash", blob.code_hash, MAX_TEXT_CHARS)
    if spec.HasField("recovery_handler"):
        _text("recovery_handler.import_path", spec.recovery_handler.import_path, MAX_TEXT_CHARS)
        _text("recovery_handler.code_hash", spec.recovery_handler.code_hash, MAX_TEXT_CHARS)
    if spec.monitoring_json:
        _text("monitoring_json", spec.monitoring_json, MAX_MONITORING_CONFIG_CHARS)
    if spec.HasField("autoscale"):
        try:
            AutoscaleSettings.from_proto(spec.autoscale)
        except ValueError as exc:
            raise _Bad(f"autoscale.{exc}") from None


def _check_task_fields(task: pb.TaskSpec, name: str, kind: str) -> None:
    """Sizes and numbers of one task; the common case is a handful of comparisons.

    The characters of the name are checked by :func:`validate_graph`, over all names at once.
    """
    if len(name) > MAX_NAME_CHARS:
        _name("name", name)
    depends_on = task.depends_on
    if depends_on:
        if len(depends_on) + len(task.flows) > MAX_DEPENDS_ON:
            raise _Bad(f"has {len(depends_on) + len(task.flows)} dependencies; the limit is {MAX_DEPENDS_ON}")
        for dep in depends_on:
            if len(dep) > MAX_NAME_CHARS:
                raise _Bad(f"depends_on entry has {len(dep)} chars; the limit is {MAX_NAME_CHARS}")
    if kind == "python":
        call = task.python
        if len(call.import_path) > MAX_TEXT_CHARS or len(call.code_hash) > MAX_TEXT_CHARS:
            _text("python.import_path", call.import_path, MAX_TEXT_CHARS)
            _text("python.code_hash", call.code_hash, MAX_TEXT_CHARS)
    elif kind == "command":
        command = task.command
        problem = command_problem(command.argv, command.env, command.cwd)
        if problem:
            raise _Bad(problem)
        if command.stdout_limit_bytes > MAX_COMMAND_STDOUT_LIMIT_BYTES:
            raise _Bad(
                f"command.stdout_limit_bytes is {command.stdout_limit_bytes}; the limit is "
                f"{MAX_COMMAND_STDOUT_LIMIT_BYTES} (64 MiB)"
            )
    else:
        _text("handler.name", task.handler.name, MAX_NAME_CHARS)
    if not 0.0 <= task.timeout_s <= MAX_DURATION_S:
        _seconds("timeout_s", task.timeout_s)
    if task.checkpoint_interval_s:  # task checkpoints (xpipe._checkpoint): most tasks leave it 0
        _seconds("checkpoint_interval_s", task.checkpoint_interval_s)
    if task.HasField("cache"):  # the result cache (docs/cache.md): most tasks have none
        _cache(task.cache)
    retry = task.retry
    if not (
        0.0 <= retry.retry_delay_s <= MAX_DURATION_S
        and 0.0 <= retry.max_retry_delay_s <= MAX_DURATION_S
        and 0.0 <= retry.jitter <= 1.0
        and retry.backoff in _BACKOFFS
    ):
        _seconds("retry.retry_delay_s", retry.retry_delay_s)
        _seconds("retry.max_retry_delay_s", retry.max_retry_delay_s)
        if not 0.0 <= retry.jitter <= 1.0:
            raise _Bad(f"retry.jitter {finite_problem(retry.jitter, high=1.0)}")
        raise _Bad(f"retry.backoff {retry.backoff} is not a RetryBackoff value")
    if task.HasField("resources"):
        _resources("resources", task.resources)
    if task.labels:
        _labels("labels", task.labels)
    if task.circuit:
        _text("circuit", task.circuit, MAX_NAME_CHARS)
    if task.HasField("args"):
        args = task.args
        if args.codec not in _CODECS:
            raise _Bad(f"args.codec {args.codec} is not a Codec value")
        if args.artifact_ref:
            # Arguments travel inline; artifact references are made by workers, for results.
            raise _Bad(f"args.artifact_ref {shown(args.artifact_ref)} is not allowed; send arguments inline")
    for flow in task.flows:
        _name("flows.source_task", flow.source_task)
        _text("flows.key", flow.key, MAX_TEXT_CHARS)
        _text("flows.parameter", flow.parameter, MAX_NAME_CHARS)
    if task.track:
        _tracked(task.track)
    if task.HasField("map"):
        _mapped(task, kind)


def _mapped(task: pb.TaskSpec, kind: str) -> None:
    """A fanned-out task (``TaskSpec.map``, see ``xpipe._mapping``)."""
    spec = task.map
    if kind == "command":
        raise _Bad("map: a command task cannot fan out; use a python or handler task")
    if not task.depends_on:
        raise _Bad("map: depends_on is empty; a fanned-out task maps over its first upstream task's result")
    if spec.parallelism > MAX_PARALLELISM:
        raise _Bad(f"map.parallelism is {spec.parallelism}; the limit is {MAX_PARALLELISM}")
    if not spec.splitter.import_path:
        raise _Bad("map.splitter needs an import_path (xpipe._mapping:split_upstream)")
    _text("map.splitter.import_path", spec.splitter.import_path, MAX_TEXT_CHARS)
    _text("map.strategy", spec.strategy, MAX_NAME_CHARS)
    if spec.split_args.artifact_ref or spec.split_args.codec not in _CODECS:
        raise _Bad("map.split_args must be an inline Payload in a known codec")


def check_sub_task_names(names: list[str], mapped: list[str]) -> None:
    """No task may be named like a sub-task ``name[i]`` of a fanned-out task."""
    fanned = set(mapped)
    for name in names:
        sub = sub_task_of(name)
        if sub is not None and sub[0] in fanned:
            raise _invalid(
                f"task {shown(name)}", f"is named like sub-task {sub[1]} of fanned-out task {shown(sub[0])}; rename it"
            )


_TRACKED_KINDS = frozenset({pb.METRIC_KIND_TRACKED, pb.METRIC_KIND_BUSINESS})


def _tracked(track) -> None:
    """``@pipeline.track_metric`` requests: Prometheus names, a tracked kind, a short key."""
    if len(track) > MAX_METRIC_POINTS:
        raise _Bad(f"track has {len(track)} entries; the limit is {MAX_METRIC_POINTS}")
    for i, tracked in enumerate(track):
        problem = metric_name_problem(tracked.name)
        if problem:
            raise _Bad(f"track[{i}]: {problem}")
        if tracked.kind not in _TRACKED_KINDS:
            raise _Bad(f"track[{i}].kind {tracked.kind} is not METRIC_KIND_TRACKED or METRIC_KIND_BUSINESS")
        _text(f"track[{i}].key", tracked.key, MAX_TEXT_CHARS)


def check_telemetry(telemetry: pb.TaskTelemetry) -> str:
    """Why a worker's ``TaskEvent.telemetry`` cannot be taken ("" if it can).

    The worker's task runner already holds tasks to these bounds; this keeps a worker that
    does not from handing the export and the store unbounded or unexportable points.
    """
    points = telemetry.metrics
    if len(points) > MAX_METRIC_POINTS:
        return f"TaskEvent.telemetry.metrics has {len(points)} points; the limit is {MAX_METRIC_POINTS}"
    if len(telemetry.warnings) > MAX_METRIC_WARNINGS + 1:  # + the one saying points were dropped
        return f"TaskEvent.telemetry.warnings has {len(telemetry.warnings)} entries; the limit is {MAX_METRIC_WARNINGS + 1}"
    for i, point in enumerate(points):
        problem = metric_name_problem(point.name)
        if not problem and point.value - point.value != 0.0:  # NaN or infinite
            problem = f"value of metric {point.name!r} is {point.value!r}, not finite"
        if not problem and len(point.labels) > MAX_METRIC_LABELS:
            problem = f"metric {point.name!r} has {len(point.labels)} labels; the limit is {MAX_METRIC_LABELS}"
        if problem:
            return f"TaskEvent.telemetry.metrics[{i}]: {problem}"
    perf = telemetry.performance
    if not (0.0 <= perf.wall_s <= MAX_DURATION_S and 0.0 <= perf.cpu_s <= MAX_DURATION_S):
        return f"TaskEvent.telemetry.performance: wall_s {perf.wall_s!r} and cpu_s {perf.cpu_s!r} must be finite seconds >= 0"
    return ""


# ---------------------------------------------------------------------- worker messages


def check_register(reg: worker_pb2.Register) -> str:
    """Why a worker's Register cannot be accepted ("" if it can)."""
    if not reg.worker_id:
        return "Register.worker_id is empty"
    for field, value in (("worker_id", reg.worker_id), ("name", reg.name), ("host", reg.host)):
        if len(value) > MAX_NAME_CHARS:
            return f"Register.{field} has {len(value)} chars; the limit is {MAX_NAME_CHARS}"
    if not 0 < reg.slots <= MAX_SLOTS:
        return f"Register.slots must be between 1 and {MAX_SLOTS}, got {reg.slots}"
    if len(reg.handlers) > MAX_HANDLERS:
        return f"Register.handlers has {len(reg.handlers)} entries; the limit is {MAX_HANDLERS}"
    for handler in reg.handlers:
        if not handler or len(handler) > MAX_NAME_CHARS:
            return f"Register.handlers entry {shown(handler)} must have 1 to {MAX_NAME_CHARS} chars"
    for kind in reg.allowed_code:
        if kind not in CODE_KINDS:
            return f"Register.allowed_code entry {shown(kind)} is not one of {', '.join(CODE_KINDS)}"
    if len(reg.running) > MAX_RUNNING_REFS or len(reg.recent) > MAX_RUNNING_REFS:
        return f"Register.running and Register.recent may hold at most {MAX_RUNNING_REFS} entries each"
    try:
        _resources("Register.resources", reg.resources)
        _labels("Register.labels", reg.labels)
    except _Bad as exc:
        return str(exc)
    for ev in reg.recent:
        problem = check_event(ev)
        if problem:
            return f"Register.recent: {problem}"
    return ""


def check_heartbeat(hb: worker_pb2.Heartbeat) -> str:
    """Why a Heartbeat cannot be taken ("" if it can): its metrics feed placement.

    Only what cannot be a measurement is refused (NaN, infinity, negatives, absurd sizes):
    a refused worker stops, so a percentage a little over 100 from a rounding counter must
    not take a real worker down; placement clamps it.
    """
    if len(hb.running) > MAX_RUNNING_REFS:
        return f"Heartbeat.running has {len(hb.running)} entries; the limit is {MAX_RUNNING_REFS}"
    if hb.HasField("metrics"):
        m = hb.metrics
        for field, value in (("cpu_percent", m.cpu_percent), ("memory_percent", m.memory_percent),
                             ("load_1m", m.load_1m)):  # fmt: skip
            if not 0.0 <= value <= MAX_RESOURCE_AMOUNT:
                return f"Heartbeat.metrics.{field} {finite_problem(value, high=MAX_RESOURCE_AMOUNT)}"
    return ""


def check_event(ev: worker_pb2.TaskEvent, kind: str | None = "") -> str:
    """Why a task event cannot be taken ("" if it can).

    Its timestamps feed duration learning and the store. Every result passes here, so the
    common case is two comparisons and a oneof test (``kind``: ``ev.WhichOneof("kind")`` when
    the caller has it already).
    """
    if not 0.0 <= ev.at <= MAX_UNIX_TIME_S:
        return f"TaskEvent.at {finite_problem(ev.at, high=MAX_UNIX_TIME_S)}"
    if not 0.0 <= ev.started_at <= MAX_UNIX_TIME_S:
        return f"TaskEvent.started_at {finite_problem(ev.started_at, high=MAX_UNIX_TIME_S)}"
    if kind == "":
        kind = ev.WhichOneof("kind")
    if ev.HasField("telemetry"):
        problem = check_telemetry(ev.telemetry)
        if problem:
            return problem
    if kind == "failed":
        error, field = ev.failed.error, "TaskEvent.failed.error"
    elif kind == "succeeded" and ev.succeeded.HasField("cause"):
        error, field = ev.succeeded.cause, "TaskEvent.succeeded.cause"
    else:
        return ""
    if error.HasField("required_resources"):
        try:
            _resources(f"{field}.required_resources", error.required_resources)
        except _Bad as exc:
            return str(exc)
    return ""


def check_install_request(request) -> str:
    """Why an ``InstallDependenciesRequest`` is refused ("" if taken): the same rules as the SDK's.

    ``timeout_s`` 0 means the default; anything else must be a sane number of seconds.
    """
    problem = requirements_problem(list(request.packages))
    if not problem and request.timeout_s != 0.0:
        problem = timeout_problem(request.timeout_s)
    return problem


def check_install_result(result: worker_pb2.InstallResult) -> str:
    """Why a worker's ``InstallResult`` cannot be taken ("" if it can)."""
    if result.status not in INSTALL_STATUSES:
        return f"InstallResult.status {shown(result.status)} is not one of {sorted(INSTALL_STATUSES)}"
    for field, value in (("request_id", result.request_id), ("message", result.message)):
        if len(value) > MAX_TEXT_CHARS:
            return f"InstallResult.{field} has {len(value)} chars; the limit is {MAX_TEXT_CHARS}"
    if len(result.output_tail) > INSTALL_OUTPUT_TAIL_CHARS:
        return f"InstallResult.output_tail has {len(result.output_tail)} chars; the limit is {INSTALL_OUTPUT_TAIL_CHARS}"
    return ""
