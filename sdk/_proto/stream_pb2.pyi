from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamRecord(_message.Message):
    __slots__ = ("key", "value", "partition", "offset", "timestamp")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    partition: int
    offset: int
    timestamp: float
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class ProduceRequest(_message.Message):
    __slots__ = ("stream", "records", "partitions")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    stream: str
    records: _containers.RepeatedCompositeFieldContainer[StreamRecord]
    partitions: int
    def __init__(self, stream: _Optional[str] = ..., records: _Optional[_Iterable[_Union[StreamRecord, _Mapping]]] = ..., partitions: _Optional[int] = ...) -> None: ...

class ProduceResponse(_message.Message):
    __slots__ = ("offsets",)
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, offsets: _Optional[_Iterable[int]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("stream", "group", "partition", "from_committed", "from_offset", "max_records", "wait_ms")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FROM_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    stream: str
    group: str
    partition: int
    from_committed: bool
    from_offset: int
    max_records: int
    wait_ms: int
    def __init__(self, stream: _Optional[str] = ..., group: _Optional[str] = ..., partition: _Optional[int] = ..., from_committed: _Optional[bool] = ..., from_offset: _Optional[int] = ..., max_records: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("records", "end_offset", "committed", "trimmed")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[StreamRecord]
    end_offset: int
    committed: int
    trimmed: int
    def __init__(self, records: _Optional[_Iterable[_Union[StreamRecord, _Mapping]]] = ..., end_offset: _Optional[int] = ..., committed: _Optional[int] = ..., trimmed: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("stream", "group", "partition", "offset")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stream: str
    group: str
    partition: int
    offset: int
    def __init__(self, stream: _Optional[str] = ..., group: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeStreamRequest(_message.Message):
    __slots__ = ("stream", "group", "create_partitions")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CREATE_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    stream: str
    group: str
    create_partitions: int
    def __init__(self, stream: _Optional[str] = ..., group: _Optional[str] = ..., create_partitions: _Optional[int] = ...) -> None: ...

class DescribeStreamResponse(_message.Message):
    __slots__ = ("exists", "partitions", "end_offsets", "committed")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    END_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    partitions: int
    end_offsets: _containers.RepeatedScalarFieldContainer[int]
    committed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, exists: _Optional[bool] = ..., partitions: _Optional[int] = ..., end_offsets: _Optional[_Iterable[int]] = ..., committed: _Optional[_Iterable[int]] = ...) -> None: ...

class InstanceRef(_message.Message):
    __slots__ = ("stream", "stage", "instance", "run_id", "attempt", "worker_id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    stage: str
    instance: int
    run_id: str
    attempt: int
    worker_id: str
    def __init__(self, stream: _Optional[str] = ..., stage: _Optional[str] = ..., instance: _Optional[int] = ..., run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class InstanceReport(_message.Message):
    __slots__ = ("ref", "state", "at", "records_in", "records_out", "dropped", "errors", "dead_lettered", "late", "redelivered", "batches", "lag", "buffer_fill", "buffer_size", "latency_p50_s", "latency_p99_s", "partitions", "last_error")
    REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_IN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_OUT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FILL_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_S_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ref: InstanceRef
    state: str
    at: float
    records_in: int
    records_out: int
    dropped: int
    errors: int
    dead_lettered: int
    late: int
    redelivered: int
    batches: int
    lag: int
    buffer_fill: int
    buffer_size: int
    latency_p50_s: float
    latency_p99_s: float
    partitions: _containers.RepeatedScalarFieldContainer[int]
    last_error: str
    def __init__(self, ref: _Optional[_Union[InstanceRef, _Mapping]] = ..., state: _Optional[str] = ..., at: _Optional[float] = ..., records_in: _Optional[int] = ..., records_out: _Optional[int] = ..., dropped: _Optional[int] = ..., errors: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., late: _Optional[int] = ..., redelivered: _Optional[int] = ..., batches: _Optional[int] = ..., lag: _Optional[int] = ..., buffer_fill: _Optional[int] = ..., buffer_size: _Optional[int] = ..., latency_p50_s: _Optional[float] = ..., latency_p99_s: _Optional[float] = ..., partitions: _Optional[_Iterable[int]] = ..., last_error: _Optional[str] = ...) -> None: ...

class InstanceControl(_message.Message):
    __slots__ = ("stop", "drain", "active_instances", "fenced")
    STOP_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    drain: bool
    active_instances: int
    fenced: bool
    def __init__(self, stop: _Optional[bool] = ..., drain: _Optional[bool] = ..., active_instances: _Optional[int] = ..., fenced: _Optional[bool] = ...) -> None: ...

class StreamCheckpoint(_message.Message):
    __slots__ = ("ref", "state", "positions", "at", "seq")
    class PositionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ref: InstanceRef
    state: bytes
    positions: _containers.ScalarMap[int, str]
    at: float
    seq: int
    def __init__(self, ref: _Optional[_Union[InstanceRef, _Mapping]] = ..., state: _Optional[bytes] = ..., positions: _Optional[_Mapping[int, str]] = ..., at: _Optional[float] = ..., seq: _Optional[int] = ...) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadCheckpointRequest(_message.Message):
    __slots__ = ("stream", "stage", "instance")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    stage: str
    instance: int
    def __init__(self, stream: _Optional[str] = ..., stage: _Optional[str] = ..., instance: _Optional[int] = ...) -> None: ...

class GetStreamsRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance", "task", "task_state", "worker_id", "worker_name", "last_report", "reported_at", "healthy", "problem")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    instance: int
    task: str
    task_state: str
    worker_id: str
    worker_name: str
    last_report: InstanceReport
    reported_at: float
    healthy: bool
    problem: str
    def __init__(self, instance: _Optional[int] = ..., task: _Optional[str] = ..., task_state: _Optional[str] = ..., worker_id: _Optional[str] = ..., worker_name: _Optional[str] = ..., last_report: _Optional[_Union[InstanceReport, _Mapping]] = ..., reported_at: _Optional[float] = ..., healthy: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class StageStatus(_message.Message):
    __slots__ = ("name", "input", "parallelism", "active", "instances", "records_in_per_s", "records_out_per_s", "lag", "records_in", "records_out", "dropped", "errors", "dead_lettered", "late", "redelivered", "buffer_fill")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_IN_PER_S_FIELD_NUMBER: _ClassVar[int]
    RECORDS_OUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    RECORDS_IN_FIELD_NUMBER: _ClassVar[int]
    RECORDS_OUT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FILL_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: str
    parallelism: int
    active: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    records_in_per_s: float
    records_out_per_s: float
    lag: int
    records_in: int
    records_out: int
    dropped: int
    errors: int
    dead_lettered: int
    late: int
    redelivered: int
    buffer_fill: float
    def __init__(self, name: _Optional[str] = ..., input: _Optional[str] = ..., parallelism: _Optional[int] = ..., active: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., records_in_per_s: _Optional[float] = ..., records_out_per_s: _Optional[float] = ..., lag: _Optional[int] = ..., records_in: _Optional[int] = ..., records_out: _Optional[int] = ..., dropped: _Optional[int] = ..., errors: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., late: _Optional[int] = ..., redelivered: _Optional[int] = ..., buffer_fill: _Optional[float] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("name", "run_id", "state", "healthy", "problem", "stages", "started_at", "auto_scaling", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTO_SCALING_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    run_id: str
    state: str
    healthy: bool
    problem: str
    stages: _containers.RepeatedCompositeFieldContainer[StageStatus]
    started_at: float
    auto_scaling: bool
    namespace: str
    def __init__(self, name: _Optional[str] = ..., run_id: _Optional[str] = ..., state: _Optional[str] = ..., healthy: _Optional[bool] = ..., problem: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., started_at: _Optional[float] = ..., auto_scaling: _Optional[bool] = ..., namespace: _Optional[str] = ...) -> None: ...

class GetStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamStatus]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamStatus, _Mapping]]] = ...) -> None: ...

class StopStreamRequest(_message.Message):
    __slots__ = ("name", "drain", "timeout_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    drain: bool
    timeout_s: float
    def __init__(self, name: _Optional[str] = ..., drain: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class StopStreamResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: StreamStatus
    def __init__(self, status: _Optional[_Union[StreamStatus, _Mapping]] = ...) -> None: ...

class RestartStreamsRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class RestartStreamsResponse(_message.Message):
    __slots__ = ("run_ids",)
    class RunIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.ScalarMap[str, str]
    def __init__(self, run_ids: _Optional[_Mapping[str, str]] = ...) -> None: ...
