"""One list of error types: the proto enum, ERROR_TYPES, reading old records, mapping to the SDK."""

from __future__ import annotations

import math

import grpc
import pytest

from xpipe import HandlerNotFoundError, PipelineExecutionError, PipelineValidationError, RequestRejectedError
from xpipe._domain import (
    ERROR_TYPES,
    REJECTED_FIELD,
    REJECTED_GRAPH,
    REJECTION_KIND_KEY,
    error_type_name,
    set_error_type,
    task_error,
)
from xpipe._manager import _execution_error
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2
from xpipe._result import DataQualityReport, PipelineResult, TaskRunInfo
from xpipe.coordinator._validate import rejection_kind, validate_spec
from xpipe.errors import from_grpc_error


def test_error_types_are_the_proto_enum_without_its_prefix():
    enum_names = [name for name, value in pb.ErrorType.items() if value]
    assert list(ERROR_TYPES) == [name.removeprefix("ERROR_TYPE_") for name in enum_names]
    assert all(name.startswith("ERROR_TYPE_") for name in enum_names)
    # Every type the code produces, including the ones the seed's list missed or folded away.
    produced = {"TASK_FAILURE", "DEPENDENCY_FAILURE", "RESOURCE_EXHAUSTION", "DATA_QUALITY_FAILURE", "TIMEOUT",
                "CIRCUIT_OPEN", "CANCELLED", "SERIALIZATION", "WORKER_LOST", "INTERNAL", "CODE_MISSING",
                "PICKLED_CODE_REFUSED", "UPSTREAM_FAILED", "HANDLER_NOT_FOUND"}  # fmt: skip
    assert set(ERROR_TYPES) == produced and len(ERROR_TYPES) == len(produced)
    import xpipe.errors

    assert xpipe.errors.ERROR_TYPES is ERROR_TYPES


def test_set_error_type_writes_both_fields_and_refuses_unknown_names():
    error = task_error("WORKER_LOST", "gone")
    assert error.type == pb.ERROR_TYPE_WORKER_LOST and error.error_type == "WORKER_LOST"
    assert error_type_name(pb.TaskError.FromString(error.SerializeToString())) == "WORKER_LOST"
    with pytest.raises(ValueError, match="unknown error type 'FALLBACK_USED'; known: TASK_FAILURE, "):
        set_error_type(pb.TaskError(), "FALLBACK_USED")


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (pb.TaskError(error_type="TIMEOUT"), "TIMEOUT"),
        (pb.TaskError(error_type="DEPENDENCY_FAILURE"), "DEPENDENCY_FAILURE"),
        (pb.TaskError(error_type="FALLBACK_USED"), "TASK_FAILURE"),
        (pb.TaskError(error_type="SKIPPED"), "TASK_FAILURE"),
        (pb.TaskError(error_type="SOMETHING_NEWER"), "TASK_FAILURE"),
        (pb.TaskError(), "TASK_FAILURE"),
        (pb.TaskError(error_type="TIMEOUT", type=pb.ERROR_TYPE_SERIALIZATION), "SERIALIZATION"),  # type wins
    ],
    ids=["timeout", "dependency", "fallback-marker", "skip-marker", "unknown", "empty", "type-wins"],
)
def test_records_of_the_previous_version_read_by_their_string(stored, expected):
    old_bytes = stored.SerializeToString()  # what a store written by the previous version holds
    assert error_type_name(pb.TaskError.FromString(old_bytes)) == expected


def test_old_marker_records_become_flags():
    fallback = pipeline_pb2.TaskInfo(name="a", state=pb.SUCCEEDED, error=pb.TaskError(error_type="FALLBACK_USED"))
    skipped = pipeline_pb2.TaskInfo(name="b", state=pb.SKIPPED, error=pb.TaskError(error_type="SKIPPED"))
    a, b = TaskRunInfo.from_proto(fallback), TaskRunInfo.from_proto(skipped)
    assert (a.fallback_used, a.skipped_by_policy, a.error_type) == (True, False, "TASK_FAILURE")
    assert (b.fallback_used, b.skipped_by_policy, b.error_type) == (False, True, "TASK_FAILURE")


def _failed_run(error: pb.TaskError) -> tuple[PipelineResult, pipeline_pb2.RunInfo]:
    info = pipeline_pb2.RunInfo(
        summary=pipeline_pb2.RunSummary(run_id="r1", pipeline="p", state=pb.RUN_FAILED, total_tasks=2),
        tasks=[pipeline_pb2.TaskInfo(name="a", state=pb.FAILED, attempts=1, finished_at=1.0, error=error),
               pipeline_pb2.TaskInfo(name="b", state=pb.UPSTREAM_FAILED, error=task_error("UPSTREAM_FAILED"))],
    )  # fmt: skip
    return PipelineResult.from_proto(info), info


@pytest.mark.parametrize("name", ["SERIALIZATION", "WORKER_LOST", "CODE_MISSING", "PICKLED_CODE_REFUSED", "INTERNAL"])
def test_the_sdk_raises_each_type_as_itself(name):
    exc = _execution_error(*_failed_run(task_error(name, "why")))
    assert type(exc) is PipelineExecutionError and exc.error_type == name and exc.upstream_failed == ["b"]


def test_a_missing_handler_raises_handler_not_found_error():
    exc = _execution_error(*_failed_run(task_error("HANDLER_NOT_FOUND", "no handler named 'x'")))
    assert isinstance(exc, HandlerNotFoundError) and isinstance(exc, PipelineExecutionError)
    assert isinstance(exc, KeyError) and exc.error_type == "HANDLER_NOT_FOUND" and exc.task == "a"
    assert "no handler named 'x'" in str(exc)


def test_dependency_failure_carries_the_missing_modules():
    exc = _execution_error(*_failed_run(task_error("DEPENDENCY_FAILURE", "No module", missing_dependencies=["numpy"])))
    assert exc.error_type == "DEPENDENCY_FAILURE" and exc.missing_dependencies == ["numpy"]


@pytest.mark.parametrize(
    ("raw", "details", "fixes"),
    [
        ({"details": {"nulls": 3}, "suggested_fixes": ["drop"]}, {"nulls": 3}, ["drop"]),
        ({"bad_rows": 12, "suggested_fixes": "drop"}, {"bad_rows": 12}, ["drop"]),
        ("12 rows bad", {"report": "12 rows bad"}, []),
    ],
    ids=["shaped", "flat", "not-a-dict"],
)
def test_quality_report_shapes(raw, details, fixes):
    report = DataQualityReport(raw, run_id="r1", pipeline="p", task="t")
    assert report.details == details and report.suggested_fixes == fixes and report.raw == raw
    assert report.to_dict() == {"run_id": "r1", "pipeline": "p", "task": "t", "details": details, "suggested_fixes": fixes}


class MarkedRpcError(grpc.RpcError):
    """What a gRPC call raises: a code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple = ()):
        super().__init__()
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._metadata


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (((REJECTION_KIND_KEY, REJECTED_GRAPH),), PipelineValidationError),
        (((REJECTION_KIND_KEY, REJECTED_FIELD),), RequestRejectedError),
        ((), RequestRejectedError),
        ((("other-key", REJECTED_GRAPH),), RequestRejectedError),
    ],
    ids=["graph", "field", "unmarked", "other-key"],
)
def test_invalid_argument_maps_by_the_coordinators_marker(metadata, expected):
    error = from_grpc_error(MarkedRpcError(grpc.StatusCode.INVALID_ARGUMENT, "why it was refused", metadata))
    assert type(error) is expected and "why it was refused" in str(error)


def _spec(**task_fields) -> pb.PipelineSpec:
    spec = pb.PipelineSpec(name="p")
    spec.tasks.add(name="a", python=pb.PythonCall(import_path="m:f"), **task_fields)
    return spec


def test_validate_marks_graph_problems_apart_from_field_problems():
    cycle = pb.PipelineSpec(name="p")
    cycle.tasks.add(name="a", depends_on=["b"], python=pb.PythonCall(import_path="m:f"))
    cycle.tasks.add(name="b", depends_on=["a"], python=pb.PythonCall(import_path="m:f"))
    unknown = _spec(depends_on=["nowhere"])
    for spec, kind in [(cycle, REJECTED_GRAPH), (unknown, REJECTED_GRAPH), (_spec(timeout_s=math.nan), REJECTED_FIELD),
                       (pb.PipelineSpec(), REJECTED_FIELD)]:  # fmt: skip
        with pytest.raises(PipelineValidationError) as info:
            validate_spec(spec)
        assert rejection_kind(info.value) == kind, str(info.value)
