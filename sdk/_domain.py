"""The domain facts every part of xpipe shares, written once.

A leaf module: it imports nothing of ours but the generated enum values in
``xpipe._proto.common_pb2`` (protobuf only, no grpc), so the SDK, the coordinator's pure
state machine and the worker all read the same list without loading each other. Limits
and memory units live in the sibling leaf :mod:`xpipe._limits`; the retry schedule in
:mod:`xpipe._retry`.
"""

from __future__ import annotations

from ._proto import common_pb2 as _pb

__all__ = [
    "VERSION",
    "ERROR_TYPES",
    "error_type_name",
    "set_error_type",
    "task_error",
    "error_fallback_used",
    "error_skipped",
    "TERMINAL_TASK_STATES",
    "TERMINAL_RUN_STATES",
    "PLACEMENT_STRATEGIES",
    "DEFAULT_PLACEMENT_STRATEGY",
    "RECOVERY_DECISIONS",
    "REJECTION_KIND_KEY",
    "REJECTED_GRAPH",
    "REJECTED_FIELD",
    "PRIVATE_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "WORKER_STATES",
    "DEPARTED_WORKER_STATES",
]

#: The version of xpipe (``xpipe.__version__``, the coordinator's ``ClusterStatus.version``,
#: and the distribution's version in ``pyproject.toml``, which reads it from here).
VERSION = "0.1.0"

#: Prefix of the proto's ``ErrorType`` value names (enum values share the package's scope).
_ERROR_PREFIX = "ERROR_TYPE_"
#: The values of ``PipelineExecutionError.error_type`` and of :func:`error_type_name`: the
#: proto's ``ErrorType`` enum (the one list, which polyglot clients see too) without its prefix.
ERROR_TYPES = tuple(name[len(_ERROR_PREFIX):] for name, value in _pb.ErrorType.items() if value)
_TYPE_OF_NAME = {name[len(_ERROR_PREFIX):]: value for name, value in _pb.ErrorType.items() if value}
_NAME_OF_TYPE = {value: name for name, value in _TYPE_OF_NAME.items()}
#: Strings the previous version stored in ``TaskError.error_type`` as markers on tasks that
#: did not fail; such a record's cause was the task's own exception.
_LEGACY_MARKERS = frozenset({"FALLBACK_USED", "SKIPPED"})


def error_type_name(error: _pb.TaskError) -> str:
    """The type of ``error`` as one of :data:`ERROR_TYPES`; the one reader of a TaskError's type.

    ``type`` is the truth; a record stored by the previous version has only the string
    ``error_type`` (possibly a legacy marker, or a name this version does not know), which
    is read as its name, markers and unknown or empty strings as ``TASK_FAILURE``.
    """
    if error.type:
        return _NAME_OF_TYPE.get(error.type, "TASK_FAILURE")
    legacy = error.error_type
    return legacy if legacy in _TYPE_OF_NAME else "TASK_FAILURE"


def set_error_type(error: _pb.TaskError, name: str) -> _pb.TaskError:
    """Stamp ``error`` with type ``name`` (both fields, so the previous version reads it too).

    Raises:
        ValueError: ``name`` is not one of :data:`ERROR_TYPES`.
    """
    try:
        error.type = _TYPE_OF_NAME[name]
    except KeyError:
        raise ValueError(f"unknown error type {name!r}; known: {', '.join(ERROR_TYPES)}") from None
    error.error_type = name
    return error


def task_error(name: str, message: str = "", **fields) -> _pb.TaskError:
    """A new TaskError of type ``name`` (see :func:`set_error_type`) with the other ``fields``."""
    return set_error_type(_pb.TaskError(message=message, **fields), name)


def error_fallback_used(error: _pb.TaskError) -> bool:
    """The task succeeded by its fallback after ``error`` (read from old records too)."""
    return error.fallback_used or error.error_type == "FALLBACK_USED"


def error_skipped(error: _pb.TaskError) -> bool:
    """The task was skipped after ``error`` (read from old records too)."""
    return error.skipped or error.error_type == "SKIPPED"


#: Trailing metadata with which the coordinator says what an ``INVALID_ARGUMENT`` is about,
#: so clients map it without parsing prose: :data:`REJECTED_GRAPH` (the pipeline's graph:
#: a cycle, an unknown dependency, a duplicate task name, no tasks; PipelineValidationError) or
#: :data:`REJECTED_FIELD` (a bad field or a value over a limit; RequestRejectedError).
REJECTION_KIND_KEY = "xpipe-rejected"
REJECTED_GRAPH = "graph"
REJECTED_FIELD = "field"

#: Task states an attempt never leaves.
TERMINAL_TASK_STATES = frozenset(
    {_pb.SUCCEEDED, _pb.FAILED, _pb.SKIPPED, _pb.CANCELLED, _pb.UPSTREAM_FAILED}
)
#: Run states a run never leaves.
TERMINAL_RUN_STATES = frozenset({_pb.RUN_SUCCEEDED, _pb.RUN_FAILED, _pb.RUN_CANCELLED})

#: How a run's tasks choose among fitting workers (``docs/placement.md``). The order is the
#: placement index's heap order, so append only.
PLACEMENT_STRATEGIES = ("resource_balanced", "pack", "spread")
#: The strategy of a run that names none.
DEFAULT_PLACEMENT_STRATEGY = "resource_balanced"

#: What a recovery handler may return (``@pipeline.recovery_handler``).
RECOVERY_DECISIONS = ("halt_pipeline", "retry_with_fallback", "skip", "continue")

#: Mode of every file that holds task arguments or results (the store, its manifest, the
#: artifacts): only the user the coordinator or worker runs as may read it.
PRIVATE_FILE_MODE = 0o600
#: Mode of the directories made for them.
PRIVATE_DIR_MODE = 0o700

#: What ``ListWorkers`` (``xpipe workers``) and the ``xpipe_workers`` metric show per worker:
#: ``ready`` and ``busy`` (every slot taken) take work; ``draining`` finishes what it holds;
#: ``disconnected`` lost its stream and may come back before its heartbeat deadline;
#: ``drained`` left cleanly after a drain; ``lost`` missed its heartbeat deadline.
WORKER_STATES = ("ready", "busy", "draining", "disconnected", "drained", "lost")
#: Workers that left: kept to be shown by ``xpipe workers --all`` until forgotten, never placed on.
DEPARTED_WORKER_STATES = frozenset({"drained", "lost"})
