"""Run one task assignment to completion, synchronously, and describe the outcome.

This is the body of every executor: the process executor calls it in its long-lived
child processes (see :func:`child_main`), the thread executor in its pool threads. It
never raises for anything a task does; every outcome, including bad input, becomes a
``TaskEvent`` carrying either ``succeeded.result`` or ``failed.error``, so an executor
only has to ship bytes back.

Arguments arrive as ``assignment.upstream``: the results of ``task.depends_on`` in order,
then one payload per ``task.flows`` binding. The call is
``f(*upstream_results, *args, **kwargs, **{flow.parameter: value})``. An empty upstream
payload is the result of a SKIPPED task: it decodes to None, and a data flow that takes a
key from it gets None too.

A function decorated with ``@handle_errors`` carries an :class:`~xpipe._policies.ErrorPolicy`
that is applied here when it raises: ``skip_on`` -> a ``succeeded`` event with ``skipped``;
no retry follows (``assignment.last_try``, or the exception is not in ``retry_on``) and a
fallback exists -> the fallback's result with ``fallback_used``; not in ``retry_on`` ->
``failed`` with ``error.non_retryable``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

from xpipe import _codec
from xpipe._checkpoint import AttemptCheckpoints, TaskCheckpoints
from xpipe._callables import describe_callable, load_callable, load_pickled
from xpipe._domain import ERROR_TYPES, set_error_type
from xpipe._handlers import HandlerNotFoundError, get_handler
from xpipe._mapping import Partitions
from xpipe._policies import ErrorPolicy, error_policy_of
from xpipe._proto import common_pb2, worker_pb2
from xpipe.errors import SerializationError
from xpipe.security._errors import DecryptionError
from xpipe.security._codetrust import PICKLE_PERMISSION, restricted_loads
from xpipe.telemetry._task import AttemptRecorder
from xpipe.telemetry._tasklogs import TASK_LOG_FORMAT
from xpipe.telemetry._tracing import TRACEPARENT_ENV, Tracing, TracingConfig

from ._objects import ARTIFACT_MIN_BYTES, LocalObjects, by_reference, store_result, write_artifact
from ._task_limits import TASK_OUTPUT_TAIL_BYTES, TailBuffer, command_limit_preexec, format_bytes, memory_limit, peak_rss_bytes

__all__ = [
    "run_assignment",
    "failed_event",
    "pickled_code_refusal",
    "child_main",
    "child_entry",
    "COMMAND_STDERR_TAIL_CHARS",
]

#: This process's own big results, for a consumer that runs here next (see ``_objects``).
LOCAL_OBJECTS = LocalObjects()

#: How much of a failed command's stderr goes into the error message.
COMMAND_STDERR_TAIL_CHARS = 2000

#: Header of a request from the executor to a child: flags (REQUEST_HAS_*), assignment
#: length, artifact-directory length; the assignment, the directory, then the code follow.
REQUEST_HEADER = struct.Struct("!BII")
REQUEST_HAS_CODE = 1
#: The request names the artifact directory (sent when it changes, not with every task).
REQUEST_HAS_ROOT = 2
#: First byte of a child's start-up report: ready, or import failure (message follows).
CHILD_READY = b"R"
CHILD_IMPORT_FAILED = b"E"
#: Size word of a frame from a child that holds a ``CheckpointSave`` (an 8-byte length and
#: the message follow), not the attempt's answer: ``multiprocessing`` frames use sizes >= -1.
CHECKPOINT_FRAME = -2
_CHECKPOINT_HEADER = struct.Struct("!iQ")
#: ``python -c`` program of an executor child; argv: sys.path (JSON), socket fd, parent
#: pid, modules to import (JSON), default task memory limit in bytes (0: none), tracing
#: (:func:`child_tracing_argument`; "" when off). The parent's sys.path comes first so
#: every import, including this module's, resolves as in the parent.
CHILD_BOOTSTRAP = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    "from xpipe.worker._runtask import child_entry; "
    "child_entry(int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), sys.argv[6])"
)


def child_tracing_argument(config: TracingConfig | None, worker_name: str) -> str:
    """What tells an executor child where its spans go and which worker it serves ("" when off)."""
    return "" if config is None else json.dumps({"config": config.to_json(), "worker": worker_name})


class _TaskFailed(Exception):
    """Raised inside this module to end a task with a given error; never escapes it."""

    def __init__(
        self, error_type: str, message: str, exception_type: str = "", tb: str = "", *, non_retryable: bool = False,
        quality_report: common_pb2.Payload | None = None, output: common_pb2.TaskOutput | None = None,
        missing_dependencies: list[str] | None = None, exit_code: int | None = None,
        result: common_pb2.Payload | None = None,
    ):  # fmt: skip
        super().__init__(message)
        self.missing_dependencies = missing_dependencies or []
        self.error_type = error_type
        self.message = message
        self.exception_type = exception_type
        self.tb = tb
        self.non_retryable = non_retryable
        self.quality_report = quality_report
        self.output = output
        self.exit_code = exit_code
        #: A failed command's result ({"stdout", "stderr", "exit_code"}), kept beside the error.
        self.result = result

    def to_proto(self) -> common_pb2.TaskError:
        error = common_pb2.TaskError(
            exception_type=self.exception_type, message=self.message, traceback=self.tb,
            non_retryable=self.non_retryable, missing_dependencies=self.missing_dependencies,
        )  # fmt: skip
        set_error_type(error, self.error_type)
        if self.quality_report is not None:
            error.quality_report.CopyFrom(self.quality_report)
        if self.output is not None:
            error.output.CopyFrom(self.output)
        if self.exit_code is not None:
            error.exit_code = self.exit_code
        return error


def failed_event(
    attempt: worker_pb2.AttemptRef,
    error_type: str,
    message: str,
    *,
    exception_type: str = "",
    traceback_text: str = "",
    non_retryable: bool = False,
) -> worker_pb2.TaskEvent:
    """A ``failed`` TaskEvent for ``attempt``, stamped now."""
    event = worker_pb2.TaskEvent(at=time.time())
    event.attempt.CopyFrom(attempt)
    error = event.failed.error
    set_error_type(error, error_type)
    error.message = message
    error.exception_type = exception_type
    error.traceback = traceback_text
    error.non_retryable = non_retryable
    return event


def _succeeded(attempt: worker_pb2.AttemptRef, result: common_pb2.Payload) -> worker_pb2.TaskEvent:
    event = worker_pb2.TaskEvent(at=time.time())
    event.attempt.CopyFrom(attempt)
    event.succeeded.result.CopyFrom(result)
    return event


def pickled_code_refusal(assignment: worker_pb2.Assignment) -> worker_pb2.TaskEvent | None:
    """The PICKLED_CODE_REFUSED failure for a task that needs pickled code, else None.

    Executors built with ``allow_pickled=False`` call this before running anything.
    """
    task = assignment.task
    if task.WhichOneof("kind") == "python" and not task.python.import_path and task.python.code_hash:
        return failed_event(
            assignment.attempt,
            "PICKLED_CODE_REFUSED",
            f"task {task.name!r} needs pickled code (hash {task.python.code_hash[:12]}...) but this "
            "worker refuses pickled code; install the code on the worker and refer to the "
            "callable by import path, or start the worker with pickled code allowed",
        )
    return None


# ---- arguments -------------------------------------------------------------------


def _decode(payload: common_pb2.Payload, what: str, artifact_root: str | None) -> Any:
    # An upstream result this process wrote is still in memory: no need to read its file.
    held = LOCAL_OBJECTS.get(payload.artifact_ref) if payload.artifact_ref else None
    try:
        return _codec.decode(payload, what=what, artifact_root=artifact_root, artifact_data=held)
    except (SerializationError, DecryptionError) as exc:  # a sealed upstream this worker cannot open
        raise _TaskFailed("SERIALIZATION", str(exc), type(exc).__name__) from exc


def _extra_args(
    task: common_pb2.TaskSpec, artifact_root: str | None, *, plain_only: bool = False
) -> tuple[list[Any], dict[str, Any]]:
    """Decode ``task.args`` into (positional, keyword) extra arguments.

    ``plain_only``: the submitter lacks ``code:pickle``, and unpickling runs code, so pickled
    arguments may hold plain builtin values only; anything else fails the task, unbuilt.
    """
    if _codec.is_empty(task.args):
        return [], {}
    what = f"arguments of task {task.name!r}"
    if plain_only and task.args.codec == common_pb2.CODEC_PICKLE:
        try:
            value = _codec.decode(task.args, what=what, artifact_root=artifact_root, unpickle=restricted_loads)
        except SerializationError as exc:
            raise _TaskFailed("SERIALIZATION", str(exc), type(exc).__name__, non_retryable=True) from exc
    else:
        value = _decode(task.args, what, artifact_root)
    if task.args.codec == common_pb2.CODEC_JSON:
        if not isinstance(value, dict) or set(value) - {"args", "kwargs"}:
            raise _TaskFailed(
                "SERIALIZATION",
                f"JSON arguments of task {task.name!r} must be an object with optional keys "
                f"'args' (array) and 'kwargs' (object), got {_short(value)}",
            )
        args, kwargs = value.get("args", []), value.get("kwargs", {})
    else:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise _TaskFailed(
                "SERIALIZATION",
                f"arguments of task {task.name!r} must decode to (args tuple, kwargs dict), got {_short(value)}",
            )
        args, kwargs = value
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise _TaskFailed(
            "SERIALIZATION",
            f"arguments of task {task.name!r} must be a sequence of positional arguments and a "
            f"mapping of keyword arguments, got {type(args).__name__} and {type(kwargs).__name__}",
        )
    bad = [key for key in kwargs if not isinstance(key, str)]
    if bad:
        raise _TaskFailed("SERIALIZATION", f"keyword argument names of task {task.name!r} must be strings, got {bad!r}")
    return list(args), dict(kwargs)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _call_arguments(assignment: worker_pb2.Assignment, artifact_root: str | None) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for the task's callable."""
    task = assignment.task
    upstream = assignment.upstream
    n_deps, n_flows = len(task.depends_on), len(task.flows)
    if len(upstream) != n_deps + n_flows:
        raise _TaskFailed(
            "TASK_FAILURE",
            f"assignment of task {task.name!r} carries {len(upstream)} upstream payloads, expected "
            f"{n_deps + n_flows} ({n_deps} dependencies + {n_flows} data flows)",
        )
    args = [
        _decode(upstream[i], f"result of upstream task {task.depends_on[i]!r} for task {task.name!r}", artifact_root)
        for i in range(n_deps)
    ]
    # The parent checked the principal's signature (worker/_codegate) before sending these bytes.
    plain_only = assignment.HasField("principal") and PICKLE_PERMISSION not in assignment.principal.grants
    extra_args, kwargs = _extra_args(task, artifact_root, plain_only=plain_only)
    args.extend(extra_args)
    for i, flow in enumerate(task.flows):
        if flow.key and _codec.is_empty(upstream[n_deps + i]):  # a skipped upstream: None, not None[key]
            kwargs[flow.parameter] = None
            continue
        value = _decode(
            upstream[n_deps + i], f"result of upstream task {flow.source_task!r} for task {task.name!r}", artifact_root
        )
        if flow.key:
            try:
                value = value[flow.key]
            except (KeyError, IndexError, TypeError) as exc:
                keys = f"; its keys: {_short(sorted(map(str, value)))}" if isinstance(value, dict) else ""
                raise _TaskFailed(
                    "TASK_FAILURE",
                    f"task {task.name!r}: data flow from {flow.source_task!r} needs key {flow.key!r}, "
                    f"which its result ({type(value).__name__}) does not have{keys}",
                    type(exc).__name__,
                ) from exc
        if flow.parameter in kwargs:
            raise _TaskFailed(
                "TASK_FAILURE",
                f"task {task.name!r}: parameter {flow.parameter!r} is given both as a keyword argument "
                f"and by the data flow from {flow.source_task!r}",
            )
        kwargs[flow.parameter] = value
    return args, kwargs


# ---- callables -------------------------------------------------------------------


def _python_callable(task: common_pb2.TaskSpec, code: bytes | None, cache: dict) -> Callable[..., Any]:
    call = task.python
    if call.import_path:
        func = cache.get(call.import_path)
        if func is None:
            try:
                func = load_callable(call.import_path)
            except SerializationError as exc:
                missing = _missing_modules(exc.__cause__)
                raise _TaskFailed(
                    "DEPENDENCY_FAILURE" if missing else "TASK_FAILURE", f"task {task.name!r}: {exc}",
                    type(exc).__name__, traceback.format_exc(), missing_dependencies=missing,
                ) from exc
            cache[call.import_path] = func
        return func
    if not call.code_hash:
        raise _TaskFailed("TASK_FAILURE", f"task {task.name!r} names no callable (no import path, no code hash)")
    func = cache.get(call.code_hash)
    if func is not None:
        return func
    if code is None:
        raise _TaskFailed(
            "CODE_MISSING",
            f"task {task.name!r} needs pickled code {call.code_hash[:12]}... which this worker was never sent",
        )
    actual = hashlib.sha256(code).hexdigest()
    if actual != call.code_hash:
        raise _TaskFailed(
            "SERIALIZATION",
            f"code sent for task {task.name!r} does not match its hash: expected {call.code_hash}, "
            f"got sha256 {actual}",
        )
    try:
        func = load_pickled(code)
    except SerializationError as exc:
        # Code pickled by value refers to the modules it uses by name: one this worker lacks
        # is a missing dependency (installable), not corrupt code.
        missing = _missing_modules(exc.__cause__)
        raise _TaskFailed(
            "DEPENDENCY_FAILURE" if missing else "SERIALIZATION", f"task {task.name!r}: {exc}", type(exc).__name__,
            traceback.format_exc(), missing_dependencies=missing,
        ) from exc
    cache[call.code_hash] = func
    return func


def _handler_callable(task: common_pb2.TaskSpec) -> Callable[..., Any]:
    try:
        return get_handler(task.handler.name)
    except HandlerNotFoundError as exc:
        raise _TaskFailed("HANDLER_NOT_FOUND", f"task {task.name!r}: {exc}", type(exc).__name__) from exc


def _encode_result(task: common_pb2.TaskSpec, value: Any, codec: str) -> common_pb2.Payload:
    try:
        if type(value) is Partitions:  # a fan-out's split (xpipe._mapping): each part on its own
            return value.to_payload(f"result of task {task.name!r}")
        return _codec.encode(value, codec, what=f"result of task {task.name!r}")
    except SerializationError as exc:
        raise _TaskFailed("SERIALIZATION", str(exc), type(exc).__name__) from exc


def _user_failure(exc: BaseException) -> _TaskFailed:
    # Drop this module's own frame so the traceback starts in user code.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    missing = _missing_modules(exc)
    error_type = getattr(exc, "error_type", None)
    if not isinstance(error_type, str) or error_type not in ERROR_TYPES:
        # An import the worker cannot satisfy is the seed's DEPENDENCY_FAILURE.
        error_type = "DEPENDENCY_FAILURE" if missing else "TASK_FAILURE"
    report = None
    if getattr(exc, "quality_report", None) is not None:
        try:  # JSON when it can be, so any client can read it
            report = _codec.encode_json(exc.quality_report, what="quality_report")
        except SerializationError:
            try:
                report = _codec.encode(exc.quality_report, what="quality_report")
            except SerializationError:
                report = None  # the failure itself still reaches the client
    return _TaskFailed(
        error_type, str(exc), type(exc).__name__, text, quality_report=report, missing_dependencies=missing
    )


def _missing_modules(exc: BaseException | None) -> list[str]:
    """The module a failed import could not load, else [].

    ``ModuleNotFoundError.name`` is the first module of the dotted path that is missing:
    the top-level package when that is not installed (``"numpy"`` for ``import numpy.linalg``).
    """
    if not isinstance(exc, ImportError) or not exc.name:
        return []
    return [exc.name]


# ---- commands --------------------------------------------------------------------


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect_output(
    proc: subprocess.Popen, timeout_s: float | None, stdout_limit_bytes: int = TASK_OUTPUT_TAIL_BYTES
) -> tuple[TailBuffer, TailBuffer]:
    """Read a command's stdout and stderr to EOF, keeping only the last bytes of each.

    Unlike ``communicate`` this holds at most two tails in memory, whatever the command
    writes: ``stdout_limit_bytes`` of stdout (``CommandCall.stdout_limit_bytes``), the log
    tail of stderr.

    Raises:
        subprocess.TimeoutExpired: the streams were still open after ``timeout_s``.
    """
    tails = {proc.stdout: TailBuffer(stdout_limit_bytes), proc.stderr: TailBuffer()}
    echo_to = {proc.stdout.fileno(): sys.stdout, proc.stderr.fileno(): sys.stderr}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        for stream in tails:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            wait_s = None if deadline is None else deadline - time.monotonic()
            if wait_s is not None and wait_s <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout_s or 0)
            for key, _ in selector.select(wait_s):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    tails[key.fileobj].append(chunk)
                    _echo(echo_to[key.fd], chunk)
                else:
                    selector.unregister(key.fileobj)
    wait_s = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    proc.wait(wait_s)  # raises TimeoutExpired too: it closed its streams but runs on
    return tails[proc.stdout], tails[proc.stderr]


def _echo(stream: Any, chunk: bytes) -> None:
    """Copy a command's output to ours, as it comes: it is the attempt's log too (see ``_tasklogs``)."""
    try:
        stream.flush()
        stream.buffer.write(chunk)
        stream.buffer.flush()
    except Exception:  # noqa: BLE001 - a task may have closed or replaced our streams; the result still holds it
        pass


def _text(tail: TailBuffer) -> str:
    return tail.tail().decode("utf-8", errors="replace")


def _output_of(stdout: TailBuffer, stderr: TailBuffer) -> common_pb2.TaskOutput:
    # The error's tails are the logs' size, whatever the result keeps of stdout.
    return common_pb2.TaskOutput(
        stdout_tail=stdout.tail()[-TASK_OUTPUT_TAIL_BYTES:], stderr_tail=stderr.tail(),
        stdout_bytes=stdout.total_bytes, stderr_bytes=stderr.total_bytes,
    )  # fmt: skip


#: What a command's stderr says when it ran out of memory (Python, glibc, C++, Go, Java).
_OUT_OF_MEMORY = re.compile(rb"MemoryError|Cannot allocate memory|out of memory|bad_alloc|OutOfMemoryError", re.I)


def _run_command(
    task: common_pb2.TaskSpec, artifact_root: str | None, memory_limit_bytes: int, span: Any = None
) -> common_pb2.Payload:
    """Run ``task.command``; its own process group lets a timeout kill all it started.

    The command gets ``memory_limit_bytes`` of heap (``RLIMIT_DATA``) from its start on,
    and only the last :data:`TASK_OUTPUT_TAIL_BYTES` of each output stream are kept (of
    stdout: ``stdout_limit_bytes`` when set). A non-zero exit fails the task, and the
    failure carries the same result a success has, with the exit code. A traced attempt
    passes its span as ``TRACEPARENT`` in the command's environment, the convention OTel
    uses for processes, so a traced command joins the run's trace.
    """
    command = task.command
    name = task.name
    argv = list(command.argv)
    if not argv:
        raise _TaskFailed("TASK_FAILURE", f"command task {name!r} has an empty argv")
    extra_args, extra_kwargs = _extra_args(task, artifact_root)
    if extra_args or extra_kwargs:
        raise _TaskFailed("TASK_FAILURE", f"command task {name!r} takes no arguments; put them in argv")
    cwd = command.cwd or None
    try:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **command.env, **_trace_env(span)},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=command_limit_preexec(memory_limit_bytes) if memory_limit_bytes else None,
        )
    except FileNotFoundError as exc:
        if cwd is not None and exc.filename == cwd:
            message = f"command task {name!r}: working directory {cwd!r} does not exist"
        else:
            message = f"command task {name!r}: executable {argv[0]!r} not found"
        raise _TaskFailed("TASK_FAILURE", message, type(exc).__name__) from exc
    except OSError as exc:
        raise _TaskFailed(
            "TASK_FAILURE", f"command task {name!r}: cannot start {argv[0]!r}: {exc}", type(exc).__name__
        ) from exc
    timeout_s = task.timeout_s if task.timeout_s > 0 else None
    try:
        out, err = _collect_output(proc, timeout_s, command.stdout_limit_bytes or TASK_OUTPUT_TAIL_BYTES)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        raise _TaskFailed("TIMEOUT", f"task {name!r} timed out after {task.timeout_s:g} s") from None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    result = _command_result(task, out, err, proc.returncode)
    if proc.returncode != 0:
        stderr_tail = err.tail()
        output = _output_of(out, err)
        kept = {"exit_code": proc.returncode, "result": result}
        if memory_limit_bytes and _OUT_OF_MEMORY.search(stderr_tail[-COMMAND_STDERR_TAIL_CHARS * 4 :]):
            raise _TaskFailed(
                "RESOURCE_EXHAUSTION",
                f"command task {name!r} went over its memory limit of {format_bytes(memory_limit_bytes)} and exited "
                f"with code {proc.returncode}: {_text(err)[-COMMAND_STDERR_TAIL_CHARS:]}",
                "CommandError", non_retryable=True, output=output, **kept,
            )  # fmt: skip
        raise _TaskFailed(
            "TASK_FAILURE",
            f"command exited with code {proc.returncode}: {_text(err)[-COMMAND_STDERR_TAIL_CHARS:]}",
            "CommandError",
            output=output,
            **kept,
        )
    return result


def _command_result(task: common_pb2.TaskSpec, out: TailBuffer, err: TailBuffer, exit_code: int) -> common_pb2.Payload:
    """A command's result, the JSON ``{"stdout", "stderr", "exit_code"}``, whatever its exit code."""
    result: dict[str, Any] = {"stdout": _text(out), "stderr": _text(err), "exit_code": exit_code}
    if out.dropped_bytes or err.dropped_bytes:  # only the tails are kept: say how much is missing
        result["dropped_bytes"] = {"stdout": out.dropped_bytes, "stderr": err.dropped_bytes}
    return _encode_result(task, result, "json")


def _trace_env(span: Any) -> dict[str, str]:
    """``TRACEPARENT`` naming ``span`` (an ``OwnSpan``), or nothing for an untraced attempt."""
    return {} if span is None else {TRACEPARENT_ENV: span.traceparent}


# ---- entry points ----------------------------------------------------------------


def run_assignment(
    assignment: worker_pb2.Assignment,
    code: bytes | None,
    cache: dict,
    *,
    artifact_root: str | None = None,
    memory_limit_bytes: int = 0,
    memory_limit_source: str = "",
    tracing: Tracing | None = None,
    worker_name: str = "",
    checkpoint_send: Callable[[bytes], None] | None = None,
) -> worker_pb2.TaskEvent:
    """Run ``assignment`` here and now; return its succeeded or failed TaskEvent.

    Args:
        code: the cloudpickled callable when the task refers to one by hash and this
            process may not have it yet; None otherwise.
        cache: per-process memo of loaded callables, keyed by import path or code hash;
            pass the same dict on every call so code is unpickled only once.
        artifact_root: the artifact directory; arguments that travel by reference are read
            from inside it only (None: every reference is refused).
        memory_limit_bytes: hold the task to this much memory (see
            :mod:`xpipe.worker._task_limits`); 0: no limit. Only an executor child (its own
            process) may pass one: the limit applies to the whole calling process.
        memory_limit_source: where the limit comes from, for the error message.
        tracing: this process's tracing (None: off); an assignment that carries a
            ``traceparent`` then runs inside a ``task <name>`` span that is current while
            the task runs, so the task's own spans are its children.
        worker_name: the ``xpipe.worker`` attribute of that span.
        checkpoint_send: hands the task's ``xpipe.checkpoint()`` saves (serialized
            ``CheckpointSave``) to the worker daemon; None: saves go nowhere.
    """
    limits = (memory_limit_bytes, memory_limit_source, checkpoint_send)
    if tracing is None or not assignment.traceparent:
        return _run_limited(assignment, code, cache, artifact_root, limits, None)
    ref = assignment.attempt
    span, token = tracing.start_task_span(
        f"task {ref.task}", assignment.traceparent, {"xpipe.task": ref.task, "xpipe.attempt": ref.attempt},
        (("xpipe.run_id", ref.run_id), ("xpipe.worker", worker_name)),
    )  # fmt: skip
    try:
        event = _run_limited(assignment, code, cache, artifact_root, limits, span)
    except BaseException:
        if span is not None:  # a bug of ours broke the attempt: its span still ends
            span.end()
        raise
    finally:
        tracing.deactivate(token)
    if span is not None:
        if event.WhichOneof("kind") == "failed":
            error = event.failed.error
            span.set_attribute("xpipe.error_type", error.error_type)
            span.set_error(f"{error.error_type}: {error.message}")
        span.end()
    return event


def _run_limited(
    assignment: worker_pb2.Assignment,
    code: bytes | None,
    cache: dict,
    artifact_root: str | None,
    limits: tuple[int, str, Callable[[bytes], None] | None],
    span: Any,
) -> worker_pb2.TaskEvent:
    task = assignment.task
    memory_limit_bytes, memory_limit_source, send = limits
    if task.WhichOneof("kind") == "command" or not memory_limit_bytes:
        return _store_big_result(
            _run(assignment, code, cache, artifact_root, memory_limit_bytes, span, send), artifact_root
        )
    LOCAL_OBJECTS.clear()  # the limit is the task's: kept results must not count against it
    with memory_limit(memory_limit_bytes):
        event = _run(assignment, code, cache, artifact_root, 0, span, send)
    _store_big_result(event, artifact_root)
    if event.WhichOneof("kind") == "failed" and event.failed.error.exception_type == "MemoryError":
        error = event.failed.error
        detail = f" ({error.message})" if error.message else ""
        set_error_type(error, "RESOURCE_EXHAUSTION")
        error.message = (
            f"task {task.name!r} went over its memory limit of {format_bytes(memory_limit_bytes)}"
            f"{' (' + memory_limit_source + ')' if memory_limit_source else ''}: an allocation was refused"
            f"{detail}; peak resident memory of its executor process during the task: "
            f"{format_bytes(peak_rss_bytes())}"
        )
        error.non_retryable = True  # the same limit would refuse the same allocation again
        error.required_resources.memory_bytes = memory_limit_bytes
    return event


def _store_big_result(event: worker_pb2.TaskEvent, artifact_root: str | None) -> worker_pb2.TaskEvent:
    """Write a big result to the artifact directory here, so it travels as a reference.

    Writing it in the process that made it spares piping it to the daemon (see
    :mod:`xpipe.worker._objects`). If the file cannot be written the result stays inline and
    the daemon tries once more. A failed command's kept result goes the same way.
    """
    kind = event.WhichOneof("kind")
    if kind == "succeeded":
        result = event.succeeded.result
    elif kind == "failed" and event.failed.HasField("result"):
        result = event.failed.result
    else:
        return event
    if result.codec == common_pb2.CODEC_MAP_PARTS:
        return _store_big_parts(event, artifact_root)
    if len(result.data) < ARTIFACT_MIN_BYTES:
        return event
    ref = event.attempt
    try:
        written = store_result(LOCAL_OBJECTS, artifact_root, (ref.run_id, ref.task, ref.attempt), result.data)
    except OSError:
        # Not logged here (this process's stderr is the task's output): the daemon tries the
        # same write again and logs why it failed.
        return event
    if written:
        by_reference(result, written)
    return event


def _store_big_parts(event: worker_pb2.TaskEvent, artifact_root: str | None) -> worker_pb2.TaskEvent:
    """A fan-out's split: its big partitions go to the artifact directory one by one; the
    parts message itself stays inline, since the coordinator reads it."""
    result = event.succeeded.result
    if len(result.data) < ARTIFACT_MIN_BYTES:
        return event
    parts = common_pb2.MapParts.FromString(result.data)
    ref = event.attempt
    for i, part in enumerate(parts.parts):
        if len(part.data) < ARTIFACT_MIN_BYTES:
            continue
        try:
            written = store_result(LOCAL_OBJECTS, artifact_root, (ref.run_id, f"{ref.task}.part{i}", ref.attempt), part.data)
        except OSError:
            return event  # inline, as a plain result is when its file cannot be written
        if written:
            by_reference(part, written)
    result.data = parts.SerializeToString()
    return event


def _run(
    assignment: worker_pb2.Assignment,
    code: bytes | None,
    cache: dict,
    artifact_root: str | None,
    command_limit: int,
    span: Any = None,
    checkpoint_send: Callable[[bytes], None] | None = None,
) -> worker_pb2.TaskEvent:
    """Run the task; a traced attempt's ``span`` gets the exception that failed it."""
    task = assignment.task
    if task.WhichOneof("kind") == "command":  # its own process: it cannot record metrics
        return _outcome(assignment, code, cache, artifact_root, command_limit, None, span)
    recorder = AttemptRecorder(task, assignment.attempt)
    checkpoints = _checkpoints(assignment, artifact_root, checkpoint_send)
    event = None
    try:
        event = _outcome(assignment, code, cache, artifact_root, command_limit, recorder, span)
    finally:
        recorder.close()
        # A held save goes out before the answer when the attempt failed: its retry wants it.
        checkpoints.close(flush=event is None or event.WhichOneof("kind") == "failed")
    telemetry = recorder.telemetry()
    if telemetry is not None:  # most attempts record nothing and send nothing extra
        event.telemetry.CopyFrom(telemetry)
    return event


def _checkpoints(
    assignment: worker_pb2.Assignment, artifact_root: str | None, send: Callable[[bytes], None] | None
) -> AttemptCheckpoints:
    """The attempt's checkpoints, current in this thread from now on (its book made on first use)."""

    def make() -> TaskCheckpoints:
        ref = assignment.attempt
        key = (ref.run_id, f"{ref.task}.checkpoint", ref.attempt)

        def store_big(data: bytes) -> str:
            # One file per attempt, rewritten by each save (atomically): a chatty task leaves one file.
            if len(data) < ARTIFACT_MIN_BYTES or not artifact_root or not os.path.isdir(artifact_root):
                return ""
            try:
                return write_artifact(artifact_root, key, data)
            except OSError:
                return ""  # it travels inline then, as a result does when its file cannot be written

        return TaskCheckpoints(
            ref, assignment.task, assignment.checkpoint if assignment.HasField("checkpoint") else None,
            send if send is not None else _drop, store_big=store_big, artifact_root=artifact_root,
        )  # fmt: skip

    checkpoints = AttemptCheckpoints(make)
    checkpoints.start()
    return checkpoints


def _drop(data: bytes) -> None:
    """Where saves go when the caller gave no sender (a direct ``run_assignment`` call)."""


def checkpoint_sender(conn: Any) -> Callable[[bytes], None]:
    """What sends an executor child's saves to its parent: a :data:`CHECKPOINT_FRAME` on ``conn``.

    Written straight to the socket (blocking here), never interleaved with an answer: the
    attempt's saves end (``TaskCheckpoints.close``) before its answer is sent.
    """
    fd = conn.fileno()

    def send(data: bytes) -> None:
        view = memoryview(_CHECKPOINT_HEADER.pack(CHECKPOINT_FRAME, len(data)) + data)
        while view:
            view = view[os.write(fd, view):]

    return send


def _outcome(
    assignment: worker_pb2.Assignment, code: bytes | None, cache: dict, artifact_root: str | None, command_limit: int,
    recorder: AttemptRecorder | None, span: Any,
) -> worker_pb2.TaskEvent:  # fmt: skip
    task = assignment.task
    recorded = False
    try:
        kind = task.WhichOneof("kind")
        if kind == "command":
            return _succeeded(assignment.attempt, _run_command(task, artifact_root, command_limit, span))
        if kind == "python":
            func = _python_callable(task, code, cache)
            codec = "pickle"
        elif kind == "handler":
            func = _handler_callable(task)
            codec = "json" if task.args.codec == common_pb2.CODEC_JSON else "pickle"
        else:
            raise _TaskFailed("TASK_FAILURE", f"task {task.name!r} says nothing to run (no python, handler or command)")
        args, kwargs = _call_arguments(assignment, artifact_root)
        recorder.start()
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - user code may raise SystemExit too
            recorder.stop()
            if span is not None:
                span.record_exception(exc)  # the task's own exception, with its traceback
                recorded = True
            policy = error_policy_of(func)
            if policy is None:
                raise _user_failure(exc) from None
            return _apply_policy(assignment, policy, exc, args, kwargs, codec)
        recorder.stop()
        if task.track:
            recorder.returned(value)
        return _succeeded(assignment.attempt, _encode_result(task, value, codec))
    except _TaskFailed as failure:
        if span is not None and not recorded:  # a failure of ours (a command's exit code, bad input)
            span.record_exception(failure, attributes={
                "exception.type": failure.exception_type or failure.error_type, "exception.message": failure.message,
            })  # fmt: skip
        event = worker_pb2.TaskEvent(at=time.time())
        event.attempt.CopyFrom(assignment.attempt)
        event.failed.error.CopyFrom(failure.to_proto())
        if failure.result is not None:
            event.failed.result.CopyFrom(failure.result)
        return event
    except Exception as exc:  # a bug here (or memory running out) must still end the task, visibly
        if span is not None:
            span.record_exception(exc)
        return failed_event(
            assignment.attempt,
            "TASK_FAILURE",
            f"internal error running task {task.name!r}: {type(exc).__name__}: {exc}",
            exception_type=type(exc).__name__,
            traceback_text=traceback.format_exc(),
        )


def _apply_policy(
    assignment: worker_pb2.Assignment,
    policy: ErrorPolicy,
    exc: BaseException,
    args: list[Any],
    kwargs: dict[str, Any],
    codec: str,
) -> worker_pb2.TaskEvent:
    """Turn ``exc`` into the outcome ``policy`` asks for; raises _TaskFailed for a failure."""
    task = assignment.task
    failure = _user_failure(exc)
    if policy.skips(exc):
        event = _succeeded(assignment.attempt, common_pb2.Payload())
        event.succeeded.skipped = True
        event.succeeded.cause.CopyFrom(failure.to_proto())
        return event
    retryable = policy.retryable(exc)
    if policy.fallback is not None and (assignment.last_try or not retryable):
        try:
            value = policy.fallback(*args, **kwargs)
        except BaseException as fallback_exc:  # noqa: BLE001 - same as the task itself
            second = _user_failure(fallback_exc)
            raise _TaskFailed(
                second.error_type,
                f"task {task.name!r}: fallback {describe_callable(policy.fallback)} raised "
                f"{type(fallback_exc).__name__}: {fallback_exc} (after the task raised {type(exc).__name__}: {exc})",
                second.exception_type,
                second.tb,
                non_retryable=True,
            ) from None
        event = _succeeded(assignment.attempt, _encode_result(task, value, codec))
        event.succeeded.fallback_used = True
        event.succeeded.cause.CopyFrom(failure.to_proto())
        return event
    failure.non_retryable = not retryable
    raise failure


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us if the worker dies, so no task outlives its worker."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # best effort: the EOF on the pipe also ends us
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def child_entry(
    fd: int, parent_pid: int, imports: list[str], default_memory_limit_bytes: int = 0, tracing: str = ""
) -> None:
    """Entry point of an executor child started with :data:`CHILD_BOOTSTRAP`."""
    from multiprocessing.connection import Connection

    child_main(Connection(fd), tuple(imports), parent_pid, default_memory_limit_bytes, tracing)


def child_main(
    conn: Any, imports: tuple[str, ...], parent_pid: int, default_memory_limit_bytes: int = 0, tracing_argument: str = ""
) -> None:
    """Serve assignments from the process executor over ``conn`` until it closes.

    The child is a session leader (the executor starts it so; ``setsid`` here covers any
    other launcher), so killing its process group takes along anything a task started.
    It reports readiness (or which import failed) once, then answers each request with
    one serialized TaskEvent. Its file descriptors 1 and 2 are the executor's output pipes;
    Python's own buffers are flushed after each task so the output lands before the answer.

    Args:
        default_memory_limit_bytes: the limit of tasks that declare no memory (0: none).
        tracing_argument: from :func:`child_tracing_argument`; when set, this child exports
            its spans itself (its own tracer provider, made the global one so that a task's
            ``trace.get_tracer(...)`` spans join the run's trace). Spans leave in batches,
            every 200 ms (``OTEL_BSP_SCHEDULE_DELAY``), and at exit (bounded): a flush
            after each task made each span its own export, hundreds of µs each.
    """
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    _die_with_parent(parent_pid)
    _capture_output()
    for module in imports:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # noqa: BLE001 - report any import failure, then exit
            conn.send_bytes(
                CHILD_IMPORT_FAILED + f"cannot import module {module!r}: {type(exc).__name__}: {exc}".encode()
            )
            conn.close()
            return
    tracing: Tracing | None = None
    worker_name = ""
    if tracing_argument:
        settings = json.loads(tracing_argument)
        tracing = Tracing(TracingConfig.from_json(settings["config"]), install_global=True)
        worker_name = settings["worker"]
    conn.send_bytes(CHILD_READY)
    cache: dict = {}
    header_size = REQUEST_HEADER.size
    artifact_root: str | None = None
    send_checkpoint = checkpoint_sender(conn)
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            if tracing is not None:
                tracing.shutdown()
            return
        flags, length, root_length = REQUEST_HEADER.unpack_from(request)
        view = memoryview(request)
        assignment = worker_pb2.Assignment.FromString(view[header_size : header_size + length])
        offset = header_size + length
        if flags & REQUEST_HAS_ROOT:
            artifact_root = bytes(view[offset : offset + root_length]).decode() or None
            offset += root_length
        code = bytes(view[offset:]) if flags & REQUEST_HAS_CODE else None
        declared = assignment.task.resources.memory_bytes
        limit = declared or default_memory_limit_bytes
        source = "declared by the task" if declared else "the worker's --task-memory-limit" if limit else ""
        event = run_assignment(
            assignment, code, cache, artifact_root=artifact_root, memory_limit_bytes=limit, memory_limit_source=source,
            tracing=tracing, worker_name=worker_name, checkpoint_send=send_checkpoint,
        )  # fmt: skip
        _flush_std_streams()
        conn.send_bytes(event.SerializeToString())


def _capture_output() -> None:
    """Make what tasks print and log reach the executor's pipes promptly.

    Our stdout is a pipe, so Python would block-buffer it: a task printing a line now and
    then would show nothing for minutes. Line buffering costs a write per line, and
    ``PYTHONUNBUFFERED`` does the same for Python processes a task starts (commands
    included). ``logging`` records at INFO and above go to stderr, formatted, so that a
    task's log is part of its captured output.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):  # replaced by a sitecustomize: leave it
            pass
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(TASK_LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a task may have closed or replaced them
            pass
