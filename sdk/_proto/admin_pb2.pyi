from . import common_pb2 as _common_pb2
from . import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("coordinator_id", "leader_address", "members", "term", "workers", "active_runs", "version", "circuits", "unhealthy_workers", "dashboard_url", "heartbeat_interval_s", "heartbeat_timeout_s")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CIRCUITS_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_URL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    leader_address: str
    members: _containers.RepeatedScalarFieldContainer[str]
    term: int
    workers: int
    active_runs: int
    version: str
    circuits: _containers.RepeatedCompositeFieldContainer[CircuitInfo]
    unhealthy_workers: _containers.RepeatedScalarFieldContainer[str]
    dashboard_url: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    def __init__(self, coordinator_id: _Optional[str] = ..., leader_address: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., term: _Optional[int] = ..., workers: _Optional[int] = ..., active_runs: _Optional[int] = ..., version: _Optional[str] = ..., circuits: _Optional[_Iterable[_Union[CircuitInfo, _Mapping]]] = ..., unhealthy_workers: _Optional[_Iterable[str]] = ..., dashboard_url: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ...) -> None: ...

class CircuitInfo(_message.Message):
    __slots__ = ("name", "state", "failures", "opened_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    failures: int
    opened_at: float
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., failures: _Optional[int] = ..., opened_at: _Optional[float] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "name", "host", "state", "slots", "running", "resources", "labels", "handlers", "last_heartbeat", "metrics", "memory_enforcement")
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
    STATE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    host: str
    state: str
    slots: int
    running: int
    resources: _common_pb2.Resources
    labels: _containers.ScalarMap[str, str]
    handlers: _containers.RepeatedScalarFieldContainer[str]
    last_heartbeat: float
    metrics: _worker_pb2.WorkerMetrics
    memory_enforcement: str
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., host: _Optional[str] = ..., state: _Optional[str] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., handlers: _Optional[_Iterable[str]] = ..., last_heartbeat: _Optional[float] = ..., metrics: _Optional[_Union[_worker_pb2.WorkerMetrics, _Mapping]] = ..., memory_enforcement: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class ForgetWorkersRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetWorkersResponse(_message.Message):
    __slots__ = ("forgotten", "healthy", "unknown")
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    forgotten: _containers.RepeatedScalarFieldContainer[str]
    healthy: _containers.RepeatedScalarFieldContainer[str]
    unknown: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, forgotten: _Optional[_Iterable[str]] = ..., healthy: _Optional[_Iterable[str]] = ..., unknown: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStoryRequest(_message.Message):
    __slots__ = ("run_id", "task")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class StoryEntry(_message.Message):
    __slots__ = ("time", "stimulus_id", "task", "attempt", "from_state", "to_state", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    STIMULUS_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: float
    stimulus_id: str
    task: str
    attempt: int
    from_state: _common_pb2.TaskState
    to_state: _common_pb2.TaskState
    reason: str
    def __init__(self, time: _Optional[float] = ..., stimulus_id: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., from_state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., to_state: _Optional[_Union[_common_pb2.TaskState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetStoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[StoryEntry, _Mapping]]] = ...) -> None: ...

class InstallDependenciesRequest(_message.Message):
    __slots__ = ("packages", "timeout_s")
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    packages: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    def __init__(self, packages: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WorkerInstallResult(_message.Message):
    __slots__ = ("worker", "status", "message", "output_tail")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    worker: str
    status: str
    message: str
    output_tail: str
    def __init__(self, worker: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., output_tail: _Optional[str] = ...) -> None: ...

class InstallDependenciesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[WorkerInstallResult]
    def __init__(self, results: _Optional[_Iterable[_Union[WorkerInstallResult, _Mapping]]] = ...) -> None: ...
