"""Errors raised by xpipe, grouped by what the caller can do about them.

::

    XpipeError
    ├── PipelineValidationError      the pipeline is malformed: fix it and submit again
    ├── SerializationError           a value cannot be encoded or decoded
    ├── PipelineExecutionError       the run ended badly: inspect ``error_type`` and ``result``
    │   └── HandlerNotFoundError     a task names a handler that is not registered (also a KeyError)
    ├── DistributedExecutionError    the cluster cannot serve: no coordinator, no worker, lost nodes
    │   └── CoordinatorUnavailableError   could not reach any coordinator (retryable)
    ├── RunNotFoundError             no run with that id
    ├── RequestRejectedError         the coordinator refused a request (a bad field, over a limit)
    │   ├── AuthenticationError      no valid credential (UNAUTHENTICATED), or TLS is needed
    │   └── PermissionDeniedError    the caller lacks a permission or namespace (PERMISSION_DENIED)
    └── DataStreamError              a stream pipeline failed, or is built wrong
        ├── RecordError              one record is unusable (xpipe.streams; goes to <stage>.dlq)
        └── BufferClosedError        a record was offered to a stopping stage (xpipe.streams)

gRPC status codes are translated into these in exactly one place, next to the client:
:func:`xpipe._client.translate_rpc_errors` (with :func:`xpipe._client.from_grpc_error`, also
importable from here). An ``INVALID_ARGUMENT`` becomes :class:`PipelineValidationError` only
when the coordinator marks it a graph problem (trailing metadata
:data:`~xpipe._domain.REJECTION_KIND_KEY` = ``"graph"``), else :class:`RequestRejectedError`.
This module imports no grpc, so the SDK's pure parts and the
coordinator's state machine can raise these without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._domain import ERROR_TYPES

if TYPE_CHECKING:
    from ._client import from_grpc_error  # noqa: F401 - served lazily by __getattr__ below
    from ._result import DataQualityReport, PipelineResult

__all__ = [
    "XpipeError",
    "PipelineValidationError",
    "SerializationError",
    "PipelineExecutionError",
    "DistributedExecutionError",
    "CoordinatorUnavailableError",
    "RunNotFoundError",
    "RequestRejectedError",
    "AuthenticationError",
    "PermissionDeniedError",
    "DataStreamError",
    "HandlerNotFoundError",
    "ERROR_TYPES",
    "from_grpc_error",
]

class XpipeError(Exception):
    """Root of every error xpipe raises."""


class PipelineValidationError(XpipeError, ValueError):
    """The pipeline is malformed: a cycle, an unknown dependency, a duplicate name, ...

    Attributes:
        cycle: the task names forming a cycle, first name repeated at the end, if any.
        unknown: dependency names that name no task, if any.
    """

    def __init__(self, message: str, *, cycle: list[str] | None = None, unknown: list[str] | None = None):
        super().__init__(message)
        self.cycle = cycle or []
        self.unknown = unknown or []


class SerializationError(XpipeError, TypeError):
    """A value could not be encoded for the wire, or decoded from it."""


class PipelineExecutionError(XpipeError):
    """A run ended failed or cancelled.

    Attributes:
        error_type: one of :data:`ERROR_TYPES`, e.g. ``"TASK_FAILURE"`` or ``"TIMEOUT"``;
            the first failing task's own type, never folded into another.
        result: the partial :class:`~xpipe.PipelineResult`, with the outputs that did finish.
        task: name of the first failing task, if any.
        task_error: that task's error message.
        traceback: that task's remote traceback text.
        missing_dependencies: for ``DEPENDENCY_FAILURE``, the modules the task could not
            import on its worker (``ModuleNotFoundError.name``, e.g. ``["numpy"]``).
        upstream_failed: tasks that did not run because an upstream task did not succeed.
        required_resources: for ``RESOURCE_EXHAUSTION``, what the task asked for.
        quality_report: for ``DATA_QUALITY_FAILURE``, the task's :class:`DataQualityReport`.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "TASK_FAILURE",
        result: PipelineResult | None = None,
        task: str | None = None,
        task_error: str = "",
        traceback: str = "",
        missing_dependencies: list[str] | None = None,
        required_resources: dict[str, Any] | None = None,
        quality_report: DataQualityReport | None = None,
        upstream_failed: list[str] | None = None,
    ):
        super().__init__(message)
        self.error_type = error_type
        self.result = result
        self.task = task
        self.task_error = task_error
        self.traceback = traceback
        self.missing_dependencies = missing_dependencies or []
        self.required_resources = required_resources or {}
        self.quality_report = quality_report
        self.upstream_failed = upstream_failed or []


class HandlerNotFoundError(PipelineExecutionError, KeyError):
    """A task names a handler that is not registered: in this process (``get_handler``), or
    on the worker that ran it (the run's ``error_type`` is ``"HANDLER_NOT_FOUND"``)."""

    def __init__(self, message: str, **kwargs: Any):
        kwargs.setdefault("error_type", "HANDLER_NOT_FOUND")
        super().__init__(message, **kwargs)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DistributedExecutionError(XpipeError):
    """The cluster cannot serve the request: no coordinator, no worker, lost nodes."""


class CoordinatorUnavailableError(DistributedExecutionError):
    """No coordinator answered at the given addresses; retrying later may succeed.

    Attributes:
        addresses: the coordinators tried, when a client gave up on them (else empty).
        last_error: the last failure seen, e.g. ``"UNAVAILABLE: ... Connection refused"``.
    """

    def __init__(self, message: str, *, addresses: list[str] | None = None, last_error: str = ""):
        super().__init__(message)
        self.addresses = list(addresses or [])
        self.last_error = last_error


class RunNotFoundError(XpipeError, KeyError):
    """No run with that id is known to the coordinator."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RequestRejectedError(XpipeError):
    """The coordinator refused a request as invalid (bad argument, too large, not allowed)."""


class AuthenticationError(RequestRejectedError):
    """The coordinator does not know the caller: no credential, a bad or expired one, or a
    plaintext client against a TLS coordinator. Not retried: fix the token or TLS settings."""


class PermissionDeniedError(RequestRejectedError):
    """The caller is known but lacks the permission (or namespace) the message names. Not retried."""


class DataStreamError(XpipeError):
    """A stream pipeline failed."""


def __getattr__(name: str) -> Any:
    # ``from xpipe.errors import from_grpc_error`` keeps working, but the map lives next to the
    # client (it needs grpc, which importing this module must not load).
    if name == "from_grpc_error":
        from ._client import from_grpc_error

        return from_grpc_error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
