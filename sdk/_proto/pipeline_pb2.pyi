from . import common_pb2 as _common_pb2
from . import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitPipelineRequest(_message.Message):
    __slots__ = ("pipeline", "idempotency_key", "traceparent", "tracestate")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.PipelineSpec
    idempotency_key: str
    traceparent: str
    tracestate: str
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.PipelineSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class SubmitPipelineResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "include_results", "inline_max_bytes", "accept_compression")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    include_results: bool
    inline_max_bytes: int
    accept_compression: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., include_results: _Optional[bool] = ..., inline_max_bytes: _Optional[int] = ..., accept_compression: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "summary_only", "results_on_end", "submit", "inline_max_bytes", "accept_compression")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_ONLY_FIELD_NUMBER: _ClassVar[int]
    RESULTS_ON_END_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    summary_only: bool
    results_on_end: bool
    submit: SubmitPipelineRequest
    inline_max_bytes: int
    accept_compression: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., summary_only: _Optional[bool] = ..., results_on_end: _Optional[bool] = ..., submit: _Optional[_Union[SubmitPipelineRequest, _Mapping]] = ..., inline_max_bytes: _Optional[int] = ..., accept_compression: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTaskResultRequest(_message.Message):
    __slots__ = ("run_id", "task", "inline_max_bytes", "accept_compression")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    inline_max_bytes: int
    accept_compression: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., inline_max_bytes: _Optional[int] = ..., accept_compression: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "state", "attempts", "worker", "started_at", "finished_at", "error", "result", "telemetry", "map_parent", "map_index", "cache_hit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    MAP_PARENT_FIELD_NUMBER: _ClassVar[int]
    MAP_INDEX_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: _common_pb2.TaskState
    attempts: int
    worker: str
    started_at: float
    finished_at: float
    error: _common_pb2.TaskError
    result: _common_pb2.Payload
    telemetry: _common_pb2.TaskTelemetry
    map_parent: str
    map_index: int
    cache_hit: bool
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., attempts: _Optional[int] = ..., worker: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., telemetry: _Optional[_Union[_common_pb2.TaskTelemetry, _Mapping]] = ..., map_parent: _Optional[str] = ..., map_index: _Optional[int] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "pipeline", "state", "created_at", "finished_at", "total_tasks", "succeeded_tasks", "failed_tasks", "cache_hits")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TASKS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_TASKS_FIELD_NUMBER: _ClassVar[int]
    FAILED_TASKS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    state: _common_pb2.RunState
    created_at: float
    finished_at: float
    total_tasks: int
    succeeded_tasks: int
    failed_tasks: int
    cache_hits: int
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.RunState, str]] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., total_tasks: _Optional[int] = ..., succeeded_tasks: _Optional[int] = ..., failed_tasks: _Optional[int] = ..., cache_hits: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("summary", "tasks")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("summary", "changed")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    changed: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., changed: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("state", "result", "error", "cache_hit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.TaskState
    result: _common_pb2.Payload
    error: _common_pb2.TaskError
    cache_hit: bool
    def __init__(self, state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., result: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class GetTaskStatsRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskStats(_message.Message):
    __slots__ = ("mean_duration_s", "samples")
    MEAN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    mean_duration_s: float
    samples: int
    def __init__(self, mean_duration_s: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class GetTaskStatsResponse(_message.Message):
    __slots__ = ("stats",)
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TaskStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TaskStats, _Mapping]] = ...) -> None: ...
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.MessageMap[str, TaskStats]
    def __init__(self, stats: _Optional[_Mapping[str, TaskStats]] = ...) -> None: ...

class GetTaskLogsRequest(_message.Message):
    __slots__ = ("run_id", "task", "attempt", "follow", "after_seq", "accept_compression")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    attempt: int
    follow: bool
    after_seq: int
    accept_compression: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., follow: _Optional[bool] = ..., after_seq: _Optional[int] = ..., accept_compression: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskLogChunk(_message.Message):
    __slots__ = ("task", "attempt", "stream", "data", "truncated_bytes", "received_at", "seq")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    task: str
    attempt: int
    stream: _worker_pb2.LogStream
    data: bytes
    truncated_bytes: int
    received_at: float
    seq: int
    def __init__(self, task: _Optional[str] = ..., attempt: _Optional[int] = ..., stream: _Optional[_Union[_worker_pb2.LogStream, str]] = ..., data: _Optional[bytes] = ..., truncated_bytes: _Optional[int] = ..., received_at: _Optional[float] = ..., seq: _Optional[int] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("run_id", "task", "ref", "accept_compression", "chunk_bytes")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    ref: str
    accept_compression: _containers.RepeatedScalarFieldContainer[str]
    chunk_bytes: int
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., ref: _Optional[str] = ..., accept_compression: _Optional[_Iterable[str]] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes", "compression", "codec", "size_bytes", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    compression: str
    codec: _common_pb2.Codec
    size_bytes: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., compression: _Optional[str] = ..., codec: _Optional[_Union[_common_pb2.Codec, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
