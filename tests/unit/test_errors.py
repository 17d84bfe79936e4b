"""The error tree (xpipe.errors) and the one place gRPC status codes are translated."""

from __future__ import annotations

import grpc
import pytest

from xpipe import errors
from xpipe.errors import (
    AuthenticationError,
    CoordinatorUnavailableError,
    DistributedExecutionError,
    PermissionDeniedError,
    PipelineExecutionError,
    PipelineValidationError,
    RequestRejectedError,
    RunNotFoundError,
    SerializationError,
    XpipeError,
    from_grpc_error,
)


class FakeRpcError(grpc.RpcError):
    """A value object standing in for what a gRPC call raises: a code and details."""

    def __init__(self, code: grpc.StatusCode, details: str | None):
        super().__init__()
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


NON_OK = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


@pytest.mark.parametrize("code", NON_OK, ids=lambda c: c.name)
def test_every_status_code_maps_to_an_xpipe_error(code):
    error = from_grpc_error(FakeRpcError(code, f"details for {code.name}"))
    assert isinstance(error, XpipeError)
    assert type(error) is not XpipeError  # a specific class the caller can act on
    assert f"details for {code.name}" in str(error)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, RunNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, RequestRejectedError),  # unmarked: see test_error_types.py
        (grpc.StatusCode.UNAVAILABLE, CoordinatorUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, CoordinatorUnavailableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RequestRejectedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.INTERNAL, DistributedExecutionError),
        (grpc.StatusCode.UNKNOWN, DistributedExecutionError),
    ],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", str(v))),
)
def test_specific_status_codes(code, expected):
    error = from_grpc_error(FakeRpcError(code, "why"))
    assert type(error) is expected


def test_not_found_message_is_not_repr_quoted():
    error = from_grpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no run 'r1'"))
    assert str(error) == "no run 'r1'"
    assert isinstance(error, KeyError)


def test_unavailable_is_a_distributed_execution_error_and_names_the_code():
    error = from_grpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(error, DistributedExecutionError)
    assert "UNAVAILABLE" in str(error) and "connection refused" in str(error)


def test_rpc_error_without_code_or_details():
    # Some grpc errors (e.g. raised before a call starts) carry neither.
    error = from_grpc_error(grpc.RpcError("channel closed"))
    assert type(error) is DistributedExecutionError
    assert "UNKNOWN" in str(error) and "channel closed" in str(error)


def test_missing_details_fall_back_to_the_exception_text():
    error = from_grpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, None))
    assert "INTERNAL" in str(error)


def test_tree_shape_lets_callers_catch_builtin_kinds():
    assert issubclass(PipelineValidationError, ValueError)
    assert issubclass(SerializationError, TypeError)
    assert issubclass(RunNotFoundError, KeyError)
    assert issubclass(CoordinatorUnavailableError, DistributedExecutionError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, XpipeError), name


def test_validation_error_carries_cycle_and_unknown():
    plain = PipelineValidationError("bad")
    assert plain.cycle == [] and plain.unknown == []
    error = PipelineValidationError("cycle", cycle=["a", "b", "a"], unknown=["x"])
    assert error.cycle == ["a", "b", "a"] and error.unknown == ["x"]


def test_execution_error_defaults_and_fields():
    error = PipelineExecutionError("failed")
    assert error.error_type == "TASK_FAILURE" and error.error_type in errors.ERROR_TYPES
    assert error.missing_dependencies == [] and error.required_resources == {} and error.result is None
    error = PipelineExecutionError(
        "dep", error_type="DEPENDENCY_FAILURE", task="load", missing_dependencies=["extract"]
    )
    assert (error.error_type, error.task, error.missing_dependencies) == (
        "DEPENDENCY_FAILURE",
        "load",
        ["extract"],
    )


def test_translate_rpc_errors_is_the_one_translation_and_keeps_what_the_caller_handles():
    from xpipe._client import translate_rpc_errors

    failure = FakeRpcError(grpc.StatusCode.NOT_FOUND, "no run 'r9'")
    with pytest.raises(RunNotFoundError, match="r9") as info:
        with translate_rpc_errors():
            raise failure
    assert info.value.__cause__ is failure
    kept = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "refused")
    with pytest.raises(grpc.RpcError) as again:
        with translate_rpc_errors(keep={grpc.StatusCode.UNAVAILABLE}):
            raise kept
    assert again.value is kept
    with pytest.raises(KeyError):  # not a gRPC error: untouched
        with translate_rpc_errors():
            raise KeyError("x")
