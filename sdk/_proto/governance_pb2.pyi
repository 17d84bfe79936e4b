from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectGarbageRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ExpiredRun(_message.Message):
    __slots__ = ("run_id", "pipeline", "namespace", "finished_at", "log_rows", "log_bytes", "artifact_files", "artifact_bytes")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LOG_ROWS_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FILES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    namespace: str
    finished_at: float
    log_rows: int
    log_bytes: int
    artifact_files: int
    artifact_bytes: int
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., namespace: _Optional[str] = ..., finished_at: _Optional[float] = ..., log_rows: _Optional[int] = ..., log_bytes: _Optional[int] = ..., artifact_files: _Optional[int] = ..., artifact_bytes: _Optional[int] = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("dry_run", "runs", "orphaned_artifacts", "orphaned_files", "orphaned_bytes", "files", "bytes", "retention_days", "orphaned_log_rows")
    class RetentionDaysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_FILES_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_LOG_ROWS_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    runs: _containers.RepeatedCompositeFieldContainer[ExpiredRun]
    orphaned_artifacts: _containers.RepeatedScalarFieldContainer[str]
    orphaned_files: int
    orphaned_bytes: int
    files: int
    bytes: int
    retention_days: _containers.ScalarMap[str, float]
    orphaned_log_rows: int
    def __init__(self, dry_run: _Optional[bool] = ..., runs: _Optional[_Iterable[_Union[ExpiredRun, _Mapping]]] = ..., orphaned_artifacts: _Optional[_Iterable[str]] = ..., orphaned_files: _Optional[int] = ..., orphaned_bytes: _Optional[int] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., retention_days: _Optional[_Mapping[str, float]] = ..., orphaned_log_rows: _Optional[int] = ...) -> None: ...

class ForgetSubjectRequest(_message.Message):
    __slots__ = ("field", "value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ForgottenResult(_message.Message):
    __slots__ = ("run_id", "task", "records_removed", "result_deleted")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    RESULT_DELETED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    records_removed: int
    result_deleted: bool
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., records_removed: _Optional[int] = ..., result_deleted: _Optional[bool] = ...) -> None: ...

class NotInspected(_message.Message):
    __slots__ = ("run_id", "task", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ForgetSubjectResponse(_message.Message):
    __slots__ = ("results", "runs_touched", "tasks_touched", "records_removed", "log_lines_removed", "not_inspected")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RUNS_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    NOT_INSPECTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ForgottenResult]
    runs_touched: int
    tasks_touched: int
    records_removed: int
    log_lines_removed: int
    not_inspected: _containers.RepeatedCompositeFieldContainer[NotInspected]
    def __init__(self, results: _Optional[_Iterable[_Union[ForgottenResult, _Mapping]]] = ..., runs_touched: _Optional[int] = ..., tasks_touched: _Optional[int] = ..., records_removed: _Optional[int] = ..., log_lines_removed: _Optional[int] = ..., not_inspected: _Optional[_Iterable[_Union[NotInspected, _Mapping]]] = ...) -> None: ...
