from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetHistoryRequest(_message.Message):
    __slots__ = ("pipeline", "since", "max_runs")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    since: float
    max_runs: int
    def __init__(self, pipeline: _Optional[str] = ..., since: _Optional[float] = ..., max_runs: _Optional[int] = ...) -> None: ...

class TaskHistory(_message.Message):
    __slots__ = ("name", "state", "attempts", "retries", "ready_at", "started_at", "finished_at", "duration_s", "queue_wait_s", "worker", "error_type", "error", "cpu_s", "peak_rss_bytes", "requested_cpu", "requested_memory_bytes", "depends_on", "metrics", "priority")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CPU_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_CPU_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    attempts: int
    retries: int
    ready_at: float
    started_at: float
    finished_at: float
    duration_s: float
    queue_wait_s: float
    worker: str
    error_type: str
    error: str
    cpu_s: float
    peak_rss_bytes: int
    requested_cpu: float
    requested_memory_bytes: int
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    priority: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., retries: _Optional[int] = ..., ready_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., duration_s: _Optional[float] = ..., queue_wait_s: _Optional[float] = ..., worker: _Optional[str] = ..., error_type: _Optional[str] = ..., error: _Optional[str] = ..., cpu_s: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., requested_cpu: _Optional[float] = ..., requested_memory_bytes: _Optional[int] = ..., depends_on: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., priority: _Optional[int] = ...) -> None: ...

class RunHistory(_message.Message):
    __slots__ = ("run_id", "pipeline", "state", "created_at", "finished_at", "namespace", "tasks")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    state: str
    created_at: float
    finished_at: float
    namespace: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskHistory]
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., state: _Optional[str] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., namespace: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskHistory, _Mapping]]] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("runs", "note")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunHistory]
    note: str
    def __init__(self, runs: _Optional[_Iterable[_Union[RunHistory, _Mapping]]] = ..., note: _Optional[str] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("since", "limit", "rule")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    since: float
    limit: int
    rule: str
    def __init__(self, since: _Optional[float] = ..., limit: _Optional[int] = ..., rule: _Optional[str] = ...) -> None: ...

class AlertDelivery(_message.Message):
    __slots__ = ("channel", "target", "status", "attempts", "last_error", "delivered_at")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    target: str
    status: str
    attempts: int
    last_error: str
    delivered_at: float
    def __init__(self, channel: _Optional[str] = ..., target: _Optional[str] = ..., status: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., delivered_at: _Optional[float] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "rule", "severity", "summary", "details_json", "at", "run_id", "pipeline", "task", "worker", "dedupe_key", "deliveries")
    ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    rule: str
    severity: str
    summary: str
    details_json: str
    at: float
    run_id: str
    pipeline: str
    task: str
    worker: str
    dedupe_key: str
    deliveries: _containers.RepeatedCompositeFieldContainer[AlertDelivery]
    def __init__(self, id: _Optional[str] = ..., rule: _Optional[str] = ..., severity: _Optional[str] = ..., summary: _Optional[str] = ..., details_json: _Optional[str] = ..., at: _Optional[float] = ..., run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., task: _Optional[str] = ..., worker: _Optional[str] = ..., dedupe_key: _Optional[str] = ..., deliveries: _Optional[_Iterable[_Union[AlertDelivery, _Mapping]]] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...
