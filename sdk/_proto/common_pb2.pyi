from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_PICKLE: _ClassVar[Codec]
    CODEC_JSON: _ClassVar[Codec]
    CODEC_RAW: _ClassVar[Codec]
    CODEC_MAP_PARTS: _ClassVar[Codec]

class RetryBackoff(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRY_BACKOFF_UNSPECIFIED: _ClassVar[RetryBackoff]
    BACKOFF_FIXED: _ClassVar[RetryBackoff]
    BACKOFF_LINEAR: _ClassVar[RetryBackoff]
    BACKOFF_EXPONENTIAL: _ClassVar[RetryBackoff]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_PENDING: _ClassVar[RunState]
    RUN_RUNNING: _ClassVar[RunState]
    RUN_SUCCEEDED: _ClassVar[RunState]
    RUN_FAILED: _ClassVar[RunState]
    RUN_CANCELLED: _ClassVar[RunState]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    PENDING: _ClassVar[TaskState]
    READY: _ClassVar[TaskState]
    ASSIGNED: _ClassVar[TaskState]
    RUNNING: _ClassVar[TaskState]
    SUCCEEDED: _ClassVar[TaskState]
    FAILED: _ClassVar[TaskState]
    RETRY_WAIT: _ClassVar[TaskState]
    SKIPPED: _ClassVar[TaskState]
    CANCELLED: _ClassVar[TaskState]
    UPSTREAM_FAILED: _ClassVar[TaskState]
    RECOVERING: _ClassVar[TaskState]
    HELD: _ClassVar[TaskState]
    MAPPED: _ClassVar[TaskState]

class ErrorType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_TYPE_UNSPECIFIED: _ClassVar[ErrorType]
    ERROR_TYPE_TASK_FAILURE: _ClassVar[ErrorType]
    ERROR_TYPE_DEPENDENCY_FAILURE: _ClassVar[ErrorType]
    ERROR_TYPE_RESOURCE_EXHAUSTION: _ClassVar[ErrorType]
    ERROR_TYPE_DATA_QUALITY_FAILURE: _ClassVar[ErrorType]
    ERROR_TYPE_TIMEOUT: _ClassVar[ErrorType]
    ERROR_TYPE_CIRCUIT_OPEN: _ClassVar[ErrorType]
    ERROR_TYPE_CANCELLED: _ClassVar[ErrorType]
    ERROR_TYPE_SERIALIZATION: _ClassVar[ErrorType]
    ERROR_TYPE_WORKER_LOST: _ClassVar[ErrorType]
    ERROR_TYPE_INTERNAL: _ClassVar[ErrorType]
    ERROR_TYPE_CODE_MISSING: _ClassVar[ErrorType]
    ERROR_TYPE_PICKLED_CODE_REFUSED: _ClassVar[ErrorType]
    ERROR_TYPE_UPSTREAM_FAILED: _ClassVar[ErrorType]
    ERROR_TYPE_HANDLER_NOT_FOUND: _ClassVar[ErrorType]

class MetricKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_KIND_UNSPECIFIED: _ClassVar[MetricKind]
    METRIC_KIND_CUSTOM: _ClassVar[MetricKind]
    METRIC_KIND_TRACKED: _ClassVar[MetricKind]
    METRIC_KIND_BUSINESS: _ClassVar[MetricKind]
CODEC_UNSPECIFIED: Codec
CODEC_PICKLE: Codec
CODEC_JSON: Codec
CODEC_RAW: Codec
CODEC_MAP_PARTS: Codec
RETRY_BACKOFF_UNSPECIFIED: RetryBackoff
BACKOFF_FIXED: RetryBackoff
BACKOFF_LINEAR: RetryBackoff
BACKOFF_EXPONENTIAL: RetryBackoff
RUN_STATE_UNSPECIFIED: RunState
RUN_PENDING: RunState
RUN_RUNNING: RunState
RUN_SUCCEEDED: RunState
RUN_FAILED: RunState
RUN_CANCELLED: RunState
TASK_STATE_UNSPECIFIED: TaskState
PENDING: TaskState
READY: TaskState
ASSIGNED: TaskState
RUNNING: TaskState
SUCCEEDED: TaskState
FAILED: TaskState
RETRY_WAIT: TaskState
SKIPPED: TaskState
CANCELLED: TaskState
UPSTREAM_FAILED: TaskState
RECOVERING: TaskState
HELD: TaskState
MAPPED: TaskState
ERROR_TYPE_UNSPECIFIED: ErrorType
ERROR_TYPE_TASK_FAILURE: ErrorType
ERROR_TYPE_DEPENDENCY_FAILURE: ErrorType
ERROR_TYPE_RESOURCE_EXHAUSTION: ErrorType
ERROR_TYPE_DATA_QUALITY_FAILURE: ErrorType
ERROR_TYPE_TIMEOUT: ErrorType
ERROR_TYPE_CIRCUIT_OPEN: ErrorType
ERROR_TYPE_CANCELLED: ErrorType
ERROR_TYPE_SERIALIZATION: ErrorType
ERROR_TYPE_WORKER_LOST: ErrorType
ERROR_TYPE_INTERNAL: ErrorType
ERROR_TYPE_CODE_MISSING: ErrorType
ERROR_TYPE_PICKLED_CODE_REFUSED: ErrorType
ERROR_TYPE_UPSTREAM_FAILED: ErrorType
ERROR_TYPE_HANDLER_NOT_FOUND: ErrorType
METRIC_KIND_UNSPECIFIED: MetricKind
METRIC_KIND_CUSTOM: MetricKind
METRIC_KIND_TRACKED: MetricKind
METRIC_KIND_BUSINESS: MetricKind

class Payload(_message.Message):
    __slots__ = ("codec", "zstd", "data", "artifact_ref", "size_bytes", "artifact_sha256")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    ZSTD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_REF_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    codec: Codec
    zstd: bool
    data: bytes
    artifact_ref: str
    size_bytes: int
    artifact_sha256: str
    def __init__(self, codec: _Optional[_Union[Codec, str]] = ..., zstd: _Optional[bool] = ..., data: _Optional[bytes] = ..., artifact_ref: _Optional[str] = ..., size_bytes: _Optional[int] = ..., artifact_sha256: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_cores", "memory_bytes", "gpu", "custom")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: float
    memory_bytes: int
    gpu: int
    custom: _containers.ScalarMap[str, float]
    def __init__(self, cpu_cores: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., gpu: _Optional[int] = ..., custom: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PythonCall(_message.Message):
    __slots__ = ("import_path", "code_hash")
    IMPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    import_path: str
    code_hash: str
    def __init__(self, import_path: _Optional[str] = ..., code_hash: _Optional[str] = ...) -> None: ...

class CommandCall(_message.Message):
    __slots__ = ("argv", "env", "cwd", "stdout_limit_bytes")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    STDOUT_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    stdout_limit_bytes: int
    def __init__(self, argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., stdout_limit_bytes: _Optional[int] = ...) -> None: ...

class HandlerCall(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DataFlowBinding(_message.Message):
    __slots__ = ("source_task", "key", "parameter")
    SOURCE_TASK_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    source_task: str
    key: str
    parameter: str
    def __init__(self, source_task: _Optional[str] = ..., key: _Optional[str] = ..., parameter: _Optional[str] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_retries", "retry_delay_s", "backoff", "max_retry_delay_s", "jitter")
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRY_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    max_retries: int
    retry_delay_s: float
    backoff: RetryBackoff
    max_retry_delay_s: float
    jitter: float
    def __init__(self, max_retries: _Optional[int] = ..., retry_delay_s: _Optional[float] = ..., backoff: _Optional[_Union[RetryBackoff, str]] = ..., max_retry_delay_s: _Optional[float] = ..., jitter: _Optional[float] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("name", "depends_on", "python", "command", "handler", "args", "flows", "retry", "timeout_s", "resources", "labels", "priority", "circuit", "track", "track_performance", "custom_metrics_off", "required_permissions", "audit_data_access", "track_lineage", "pii_fields", "long_running", "map", "cache", "checkpoint_interval_s")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    TRACK_PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_METRICS_OFF_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_DATA_ACCESS_FIELD_NUMBER: _ClassVar[int]
    TRACK_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    PII_FIELDS_FIELD_NUMBER: _ClassVar[int]
    LONG_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    python: PythonCall
    command: CommandCall
    handler: HandlerCall
    args: Payload
    flows: _containers.RepeatedCompositeFieldContainer[DataFlowBinding]
    retry: RetryPolicy
    timeout_s: float
    resources: Resources
    labels: _containers.ScalarMap[str, str]
    priority: int
    circuit: str
    track: _containers.RepeatedCompositeFieldContainer[TrackedMetric]
    track_performance: bool
    custom_metrics_off: bool
    required_permissions: _containers.RepeatedScalarFieldContainer[str]
    audit_data_access: bool
    track_lineage: bool
    pii_fields: _containers.RepeatedScalarFieldContainer[str]
    long_running: bool
    map: MapSpec
    cache: CacheSpec
    checkpoint_interval_s: float
    def __init__(self, name: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., python: _Optional[_Union[PythonCall, _Mapping]] = ..., command: _Optional[_Union[CommandCall, _Mapping]] = ..., handler: _Optional[_Union[HandlerCall, _Mapping]] = ..., args: _Optional[_Union[Payload, _Mapping]] = ..., flows: _Optional[_Iterable[_Union[DataFlowBinding, _Mapping]]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeout_s: _Optional[float] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., circuit: _Optional[str] = ..., track: _Optional[_Iterable[_Union[TrackedMetric, _Mapping]]] = ..., track_performance: _Optional[bool] = ..., custom_metrics_off: _Optional[bool] = ..., required_permissions: _Optional[_Iterable[str]] = ..., audit_data_access: _Optional[bool] = ..., track_lineage: _Optional[bool] = ..., pii_fields: _Optional[_Iterable[str]] = ..., long_running: _Optional[bool] = ..., map: _Optional[_Union[MapSpec, _Mapping]] = ..., cache: _Optional[_Union[CacheSpec, _Mapping]] = ..., checkpoint_interval_s: _Optional[float] = ...) -> None: ...

class TrackedMetric(_message.Message):
    __slots__ = ("name", "kind", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: MetricKind
    key: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[MetricKind, str]] = ..., key: _Optional[str] = ...) -> None: ...

class CodeBlob(_message.Message):
    __slots__ = ("code_hash", "data")
    CODE_HASH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    code_hash: str
    data: bytes
    def __init__(self, code_hash: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class AutoscaleSettings(_message.Message):
    __slots__ = ("min_workers", "max_workers", "scale_up_threshold", "scale_down_threshold", "scale_up_cooldown_s", "scale_down_cooldown_s")
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SCALE_UP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCALE_UP_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    min_workers: int
    max_workers: int
    scale_up_threshold: float
    scale_down_threshold: float
    scale_up_cooldown_s: float
    scale_down_cooldown_s: float
    def __init__(self, min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ..., scale_up_threshold: _Optional[float] = ..., scale_down_threshold: _Optional[float] = ..., scale_up_cooldown_s: _Optional[float] = ..., scale_down_cooldown_s: _Optional[float] = ...) -> None: ...

class PipelineSpec(_message.Message):
    __slots__ = ("name", "tasks", "code", "retry_on_failure", "labels", "max_parallel", "placement_strategy", "wait_for_resources_s", "resource_limits", "fault_tolerance", "recovery_handler", "monitoring_json", "trace_context", "principal", "namespace", "lineage", "debug", "autoscale")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_RESOURCES_S_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    FAULT_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_HANDLER_FIELD_NUMBER: _ClassVar[int]
    MONITORING_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    code: _containers.RepeatedCompositeFieldContainer[CodeBlob]
    retry_on_failure: bool
    labels: _containers.ScalarMap[str, str]
    max_parallel: int
    placement_strategy: str
    wait_for_resources_s: float
    resource_limits: Resources
    fault_tolerance: FaultTolerance
    recovery_handler: PythonCall
    monitoring_json: str
    trace_context: str
    principal: RunPrincipal
    namespace: str
    lineage: bool
    debug: bool
    autoscale: AutoscaleSettings
    def __init__(self, name: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., code: _Optional[_Iterable[_Union[CodeBlob, _Mapping]]] = ..., retry_on_failure: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., max_parallel: _Optional[int] = ..., placement_strategy: _Optional[str] = ..., wait_for_resources_s: _Optional[float] = ..., resource_limits: _Optional[_Union[Resources, _Mapping]] = ..., fault_tolerance: _Optional[_Union[FaultTolerance, _Mapping]] = ..., recovery_handler: _Optional[_Union[PythonCall, _Mapping]] = ..., monitoring_json: _Optional[str] = ..., trace_context: _Optional[str] = ..., principal: _Optional[_Union[RunPrincipal, _Mapping]] = ..., namespace: _Optional[str] = ..., lineage: _Optional[bool] = ..., debug: _Optional[bool] = ..., autoscale: _Optional[_Union[AutoscaleSettings, _Mapping]] = ...) -> None: ...

class RunPrincipal(_message.Message):
    __slots__ = ("name", "grants", "run_id", "signature", "key_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    signature: bytes
    key_id: str
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class FaultTolerance(_message.Message):
    __slots__ = ("checkpoint_interval_s", "max_retries_per_task", "retry_backoff", "fail_fast", "circuit_breaker_enabled", "circuit_failure_threshold", "circuit_window_s", "circuit_open_s")
    CHECKPOINT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    FAIL_FAST_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_BREAKER_ENABLED_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FAILURE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_OPEN_S_FIELD_NUMBER: _ClassVar[int]
    checkpoint_interval_s: float
    max_retries_per_task: int
    retry_backoff: RetryBackoff
    fail_fast: bool
    circuit_breaker_enabled: bool
    circuit_failure_threshold: int
    circuit_window_s: float
    circuit_open_s: float
    def __init__(self, checkpoint_interval_s: _Optional[float] = ..., max_retries_per_task: _Optional[int] = ..., retry_backoff: _Optional[_Union[RetryBackoff, str]] = ..., fail_fast: _Optional[bool] = ..., circuit_breaker_enabled: _Optional[bool] = ..., circuit_failure_threshold: _Optional[int] = ..., circuit_window_s: _Optional[float] = ..., circuit_open_s: _Optional[float] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("error_type", "type", "exception_type", "message", "traceback", "non_retryable", "required_resources", "quality_report", "output", "missing_dependencies", "fallback_used", "skipped", "exit_code")
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MISSING_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    error_type: str
    type: ErrorType
    exception_type: str
    message: str
    traceback: str
    non_retryable: bool
    required_resources: Resources
    quality_report: Payload
    output: TaskOutput
    missing_dependencies: _containers.RepeatedScalarFieldContainer[str]
    fallback_used: bool
    skipped: bool
    exit_code: int
    def __init__(self, error_type: _Optional[str] = ..., type: _Optional[_Union[ErrorType, str]] = ..., exception_type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., non_retryable: _Optional[bool] = ..., required_resources: _Optional[_Union[Resources, _Mapping]] = ..., quality_report: _Optional[_Union[Payload, _Mapping]] = ..., output: _Optional[_Union[TaskOutput, _Mapping]] = ..., missing_dependencies: _Optional[_Iterable[str]] = ..., fallback_used: _Optional[bool] = ..., skipped: _Optional[bool] = ..., exit_code: _Optional[int] = ...) -> None: ...

class TaskOutput(_message.Message):
    __slots__ = ("stdout_tail", "stderr_tail", "stdout_bytes", "stderr_bytes")
    STDOUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    stdout_tail: bytes
    stderr_tail: bytes
    stdout_bytes: int
    stderr_bytes: int
    def __init__(self, stdout_tail: _Optional[bytes] = ..., stderr_tail: _Optional[bytes] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("name", "value", "labels", "kind")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    labels: _containers.ScalarMap[str, str]
    kind: MetricKind
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., kind: _Optional[_Union[MetricKind, str]] = ...) -> None: ...

class TaskPerformance(_message.Message):
    __slots__ = ("wall_s", "cpu_s", "peak_rss_bytes")
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    CPU_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    def __init__(self, wall_s: _Optional[float] = ..., cpu_s: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ...) -> None: ...

class TaskTelemetry(_message.Message):
    __slots__ = ("metrics", "performance", "warnings")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PERFORMANCE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    performance: TaskPerformance
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, metrics: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., performance: _Optional[_Union[TaskPerformance, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheLevel(_message.Message):
    __slots__ = ("name", "type", "size_bytes", "ttl_s", "url", "path", "prefix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    size_bytes: int
    ttl_s: float
    url: str
    path: str
    prefix: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., ttl_s: _Optional[float] = ..., url: _Optional[str] = ..., path: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class CacheSpec(_message.Message):
    __slots__ = ("code_id", "ttl_s", "levels", "pipeline", "generation")
    CODE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    code_id: str
    ttl_s: float
    levels: _containers.RepeatedCompositeFieldContainer[CacheLevel]
    pipeline: str
    generation: int
    def __init__(self, code_id: _Optional[str] = ..., ttl_s: _Optional[float] = ..., levels: _Optional[_Iterable[_Union[CacheLevel, _Mapping]]] = ..., pipeline: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class MapSpec(_message.Message):
    __slots__ = ("parallelism", "splitter", "split_args", "strategy")
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    SPLITTER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ARGS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    parallelism: int
    splitter: PythonCall
    split_args: Payload
    strategy: str
    def __init__(self, parallelism: _Optional[int] = ..., splitter: _Optional[_Union[PythonCall, _Mapping]] = ..., split_args: _Optional[_Union[Payload, _Mapping]] = ..., strategy: _Optional[str] = ...) -> None: ...

class MapParts(_message.Message):
    __slots__ = ("parts", "keys")
    PARTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[Payload]
    keys: Payload
    def __init__(self, parts: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., keys: _Optional[_Union[Payload, _Mapping]] = ...) -> None: ...
