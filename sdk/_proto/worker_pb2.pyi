from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream

class WorkerMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "events", "install_result", "task_logs", "checkpoint")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    INSTALL_RESULT_FIELD_NUMBER: _ClassVar[int]
    TASK_LOGS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    events: TaskEventBatch
    install_result: InstallResult
    task_logs: TaskLogBatch
    checkpoint: CheckpointSave
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., events: _Optional[_Union[TaskEventBatch, _Mapping]] = ..., install_result: _Optional[_Union[InstallResult, _Mapping]] = ..., task_logs: _Optional[_Union[TaskLogBatch, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointSave, _Mapping]] = ...) -> None: ...

class CheckpointSave(_message.Message):
    __slots__ = ("attempt", "seq", "state")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    seq: int
    state: _common_pb2.Payload
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., seq: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ...) -> None: ...

class TaskLogBatch(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TaskLogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[TaskLogEntry, _Mapping]]] = ...) -> None: ...

class TaskLogEntry(_message.Message):
    __slots__ = ("attempt", "stream", "data", "dropped_bytes", "final")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    stream: LogStream
    data: bytes
    dropped_bytes: int
    final: bool
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., stream: _Optional[_Union[LogStream, str]] = ..., data: _Optional[bytes] = ..., dropped_bytes: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("worker_id", "name", "host", "slots", "resources", "labels", "handlers", "running", "accepts_pickled_code", "recent", "memory_enforcement", "allowed_code")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_PICKLED_CODE_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CODE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    host: str
    slots: int
    resources: _common_pb2.Resources
    labels: _containers.ScalarMap[str, str]
    handlers: _containers.RepeatedScalarFieldContainer[str]
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    accepts_pickled_code: bool
    recent: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    memory_enforcement: str
    allowed_code: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., host: _Optional[str] = ..., slots: _Optional[int] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., handlers: _Optional[_Iterable[str]] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., accepts_pickled_code: _Optional[bool] = ..., recent: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ..., memory_enforcement: _Optional[str] = ..., allowed_code: _Optional[_Iterable[str]] = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("run_id", "task", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class WorkerMetrics(_message.Message):
    __slots__ = ("cpu_percent", "memory_percent", "memory_used_bytes", "load_1m")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_percent: float
    memory_used_bytes: int
    load_1m: float
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., load_1m: _Optional[float] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("metrics", "running", "draining", "assignments_received")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    metrics: WorkerMetrics
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    draining: bool
    assignments_received: int
    def __init__(self, metrics: _Optional[_Union[WorkerMetrics, _Mapping]] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., draining: _Optional[bool] = ..., assignments_received: _Optional[int] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("attempt", "started", "succeeded", "failed", "released", "at", "started_at", "telemetry", "cache_hit")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    started: Started
    succeeded: Succeeded
    failed: Failed
    released: Released
    at: float
    started_at: float
    telemetry: _common_pb2.TaskTelemetry
    cache_hit: bool
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., succeeded: _Optional[_Union[Succeeded, _Mapping]] = ..., failed: _Optional[_Union[Failed, _Mapping]] = ..., released: _Optional[_Union[Released, _Mapping]] = ..., at: _Optional[float] = ..., started_at: _Optional[float] = ..., telemetry: _Optional[_Union[_common_pb2.TaskTelemetry, _Mapping]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Succeeded(_message.Message):
    __slots__ = ("result", "skipped", "fallback_used", "cause")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    result: _common_pb2.Payload
    skipped: bool
    fallback_used: bool
    cause: _common_pb2.TaskError
    def __init__(self, result: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ..., skipped: _Optional[bool] = ..., fallback_used: _Optional[bool] = ..., cause: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ...) -> None: ...

class Failed(_message.Message):
    __slots__ = ("error", "result")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    error: _common_pb2.TaskError
    result: _common_pb2.Payload
    def __init__(self, error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ...) -> None: ...

class Released(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TaskEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TaskEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TaskEvent, _Mapping]]] = ...) -> None: ...

class InstallResult(_message.Message):
    __slots__ = ("request_id", "status", "message", "output_tail")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: str
    message: str
    output_tail: str
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., output_tail: _Optional[str] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("registered", "assignments", "cancel", "drain", "not_leader", "install", "reset", "heartbeat_settings")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    INSTALL_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assignments: AssignmentBatch
    cancel: Cancel
    drain: Drain
    not_leader: NotLeader
    install: InstallPackages
    reset: Reset
    heartbeat_settings: HeartbeatSettings
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assignments: _Optional[_Union[AssignmentBatch, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., not_leader: _Optional[_Union[NotLeader, _Mapping]] = ..., install: _Optional[_Union[InstallPackages, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ..., heartbeat_settings: _Optional[_Union[HeartbeatSettings, _Mapping]] = ...) -> None: ...

class HeartbeatSettings(_message.Message):
    __slots__ = ("interval_s", "timeout_s")
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    timeout_s: float
    def __init__(self, interval_s: _Optional[float] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("coordinator_id", "heartbeat_interval_s", "prefetch", "artifact_dir", "signing_key", "signing_key_id", "encryption_at_rest")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIR_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_AT_REST_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    heartbeat_interval_s: float
    prefetch: int
    artifact_dir: str
    signing_key: bytes
    signing_key_id: str
    encryption_at_rest: bool
    def __init__(self, coordinator_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., prefetch: _Optional[int] = ..., artifact_dir: _Optional[str] = ..., signing_key: _Optional[bytes] = ..., signing_key_id: _Optional[str] = ..., encryption_at_rest: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt", "task", "upstream", "last_try", "traceparent", "principal", "checkpoint")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    LAST_TRY_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    task: _common_pb2.TaskSpec
    upstream: _containers.RepeatedCompositeFieldContainer[_common_pb2.Payload]
    last_try: bool
    traceparent: str
    principal: _common_pb2.RunPrincipal
    checkpoint: _common_pb2.Payload
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., task: _Optional[_Union[_common_pb2.TaskSpec, _Mapping]] = ..., upstream: _Optional[_Iterable[_Union[_common_pb2.Payload, _Mapping]]] = ..., last_try: _Optional[bool] = ..., traceparent: _Optional[str] = ..., principal: _Optional[_Union[_common_pb2.RunPrincipal, _Mapping]] = ..., checkpoint: _Optional[_Union[_common_pb2.Payload, _Mapping]] = ...) -> None: ...

class AssignmentBatch(_message.Message):
    __slots__ = ("assignments", "code")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    code: _containers.RepeatedCompositeFieldContainer[_common_pb2.CodeBlob]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., code: _Optional[_Iterable[_Union[_common_pb2.CodeBlob, _Mapping]]] = ...) -> None: ...

class CoordinatorMessageView(_message.Message):
    __slots__ = ("registered", "assignments", "cancel", "drain", "not_leader", "install", "reset", "heartbeat_settings")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    INSTALL_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    assignments: AssignmentBatchView
    cancel: Cancel
    drain: Drain
    not_leader: NotLeader
    install: InstallPackages
    reset: Reset
    heartbeat_settings: HeartbeatSettings
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., assignments: _Optional[_Union[AssignmentBatchView, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., not_leader: _Optional[_Union[NotLeader, _Mapping]] = ..., install: _Optional[_Union[InstallPackages, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ..., heartbeat_settings: _Optional[_Union[HeartbeatSettings, _Mapping]] = ...) -> None: ...

class AssignmentBatchView(_message.Message):
    __slots__ = ("assignments", "code")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedScalarFieldContainer[bytes]
    code: _containers.RepeatedCompositeFieldContainer[_common_pb2.CodeBlob]
    def __init__(self, assignments: _Optional[_Iterable[bytes]] = ..., code: _Optional[_Iterable[_Union[_common_pb2.CodeBlob, _Mapping]]] = ...) -> None: ...

class AssignmentHead(_message.Message):
    __slots__ = ("attempt", "task", "upstream", "last_try", "principal", "checkpoint")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    LAST_TRY_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    task: TaskHead
    upstream: _containers.RepeatedScalarFieldContainer[bytes]
    last_try: bool
    principal: _common_pb2.RunPrincipal
    checkpoint: bytes
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., task: _Optional[_Union[TaskHead, _Mapping]] = ..., upstream: _Optional[_Iterable[bytes]] = ..., last_try: _Optional[bool] = ..., principal: _Optional[_Union[_common_pb2.RunPrincipal, _Mapping]] = ..., checkpoint: _Optional[bytes] = ...) -> None: ...

class TaskHead(_message.Message):
    __slots__ = ("name", "python", "command", "handler", "args", "timeout_s", "resources", "pii_fields", "cache")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PII_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    name: str
    python: _common_pb2.PythonCall
    command: NotRead
    handler: NotRead
    args: bytes
    timeout_s: float
    resources: _common_pb2.Resources
    pii_fields: _containers.RepeatedScalarFieldContainer[str]
    cache: _common_pb2.CacheSpec
    def __init__(self, name: _Optional[str] = ..., python: _Optional[_Union[_common_pb2.PythonCall, _Mapping]] = ..., command: _Optional[_Union[NotRead, _Mapping]] = ..., handler: _Optional[_Union[NotRead, _Mapping]] = ..., args: _Optional[bytes] = ..., timeout_s: _Optional[float] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., pii_fields: _Optional[_Iterable[str]] = ..., cache: _Optional[_Union[_common_pb2.CacheSpec, _Mapping]] = ...) -> None: ...

class NotRead(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("attempts",)
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, attempts: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NotLeader(_message.Message):
    __slots__ = ("leader_address",)
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    leader_address: str
    def __init__(self, leader_address: _Optional[str] = ...) -> None: ...

class Reset(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class InstallPackages(_message.Message):
    __slots__ = ("request_id", "packages", "timeout_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    packages: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    def __init__(self, request_id: _Optional[str] = ..., packages: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...
