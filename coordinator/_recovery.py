"""Pipeline recovery handlers (``@pipeline.recovery_handler``), the coordinator's side.

The coordinator never runs user Python. When a task of a run with a recovery handler
fails for good, the state machine parks it in RECOVERING and sends a worker a synthetic
attempt: an ordinary python call whose callable is the handler and whose arguments are
``(failed_task_name, error_dict, context_dict)``. Its outcome comes back as a normal
``TaskSucceeded``/``TaskFailed`` for the attempt key ``(run_id, "<task>/recovery", n)``;
a user task can never have that name, since task names hold no ``/``.

This module holds the pure pieces: naming, the handler's arguments, building the synthetic
spec, and reading the decision out of the outcome. It encodes and decodes nothing itself:
the shell hands the state machine a :class:`RecoveryCodec` (the engine's is
:data:`xpipe.coordinator._recovery_codec.PICKLE_CODEC`), so the core neither imports nor
runs pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xpipe._domain import RECOVERY_DECISIONS, error_type_name
from xpipe._proto import common_pb2 as pb

__all__ = [
    "DECISIONS",
    "HALT",
    "RETRY_WITH_FALLBACK",
    "SKIP",
    "CONTINUE",
    "RECOVERY_SUFFIX",
    "RECOVERY_TIMEOUT_S",
    "recovery_name",
    "recovered_task",
    "recovery_spec",
    "recovery_args",
    "error_dict",
    "read_decision",
    "RecoveryCodec",
]

#: What a recovery handler may return (one list, shared with the SDK).
DECISIONS = RECOVERY_DECISIONS
HALT, RETRY_WITH_FALLBACK, SKIP, CONTINUE = DECISIONS

#: Appended to the failed task's name to name the handler's synthetic attempt.
RECOVERY_SUFFIX = "/recovery"
#: A handler that runs longer than this is killed and counts as "continue".
RECOVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class RecoveryCodec:
    """How the shell encodes a handler's arguments and decodes its answer.

    Given to :class:`~xpipe.coordinator._state.SchedulerState` by its shell, so the pure
    core never imports a serializer; both functions are pure (no I/O).
    """

    encode_args: Callable[[tuple[Any, ...]], pb.Payload]
    """``(positional args)`` -> the ``TaskSpec.args`` payload a worker decodes."""
    decode_result: Callable[[pb.Payload], Any]
    """A successful answer's result -> its plain value; raises ValueError if it is not one."""


def recovery_name(task: str) -> str:
    """The synthetic task name of ``task``'s recovery handler call."""
    return task + RECOVERY_SUFFIX


def recovered_task(name: str) -> str | None:
    """The failed task a synthetic name stands for, or None for an ordinary task name."""
    if name.endswith(RECOVERY_SUFFIX) and len(name) > len(RECOVERY_SUFFIX):
        return name[: -len(RECOVERY_SUFFIX)]
    return None


def error_dict(error: pb.TaskError | None) -> dict[str, str]:
    """The ``error`` argument a handler gets: plain strings, no xpipe types needed to read it."""
    if error is None:
        error = pb.TaskError()
    return {
        "error_type": error_type_name(error),
        "exception_type": error.exception_type,
        "message": error.message,
        "traceback": error.traceback,
    }


def recovery_args(task: str, error: pb.TaskError | None, *, run_id: str, pipeline: str, attempt: int) -> tuple:
    """The handler's positional arguments: ``(failed_task_name, error_dict, context_dict)``."""
    return (task, error_dict(error), {"run_id": run_id, "pipeline": pipeline, "attempt": attempt})


def recovery_spec(task: str, handler: pb.PythonCall, args: pb.Payload) -> pb.TaskSpec:
    """The synthetic TaskSpec that calls ``handler`` with the encoded ``args`` on a worker."""
    spec = pb.TaskSpec(name=recovery_name(task), timeout_s=RECOVERY_TIMEOUT_S)
    spec.python.CopyFrom(handler)
    spec.args.CopyFrom(args)
    return spec


def read_decision(
    result: pb.Payload | None, error: pb.TaskError | None, decode: Callable[[pb.Payload], Any]
) -> tuple[str, str]:
    """The handler's decision and, when it could not be followed, why.

    Args:
        result: the synthetic attempt's result when it succeeded, else None.
        error: its error when it failed (the handler raised, timed out, ...), else None.
        decode: the shell's :attr:`RecoveryCodec.decode_result`.

    Returns:
        ``(decision, problem)``: a handler that raised, timed out or returned anything but
        one of :data:`DECISIONS` counts as ``"continue"`` and ``problem`` says why;
        otherwise ``problem`` is empty.
    """
    if error is not None or result is None:
        error = error or pb.TaskError()
        what = f"{error.exception_type}: {error.message}" if error.exception_type else error.message
        kind = "timed out" if error_type_name(error) == "TIMEOUT" else "raised"
        return CONTINUE, f"recovery handler {kind} ({what or error_type_name(error)})"
    try:
        value = decode(result)
    except Exception as exc:  # noqa: BLE001 - any undecodable result is "not a decision"
        return CONTINUE, f"recovery handler returned something that is not a decision ({exc})"
    if isinstance(value, str) and value in DECISIONS:
        return value, ""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CONTINUE, f"recovery handler returned {shown}, not one of {', '.join(map(repr, DECISIONS))}"
