from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetAuditRequest(_message.Message):
    __slots__ = ("since", "principal", "limit", "after_seq")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    since: float
    principal: str
    limit: int
    after_seq: int
    def __init__(self, since: _Optional[float] = ..., principal: _Optional[str] = ..., limit: _Optional[int] = ..., after_seq: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "at", "principal", "action", "target", "outcome", "stimulus_id", "detail", "prev_hash", "hash")
    class DetailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STIMULUS_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    principal: str
    action: str
    target: str
    outcome: str
    stimulus_id: str
    detail: _containers.ScalarMap[str, str]
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., stimulus_id: _Optional[str] = ..., detail: _Optional[_Mapping[str, str]] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ("entries", "head_hash", "head_seq", "next_after_seq", "more", "dropped", "queued")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    head_hash: str
    head_seq: int
    next_after_seq: int
    more: bool
    dropped: int
    queued: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., head_hash: _Optional[str] = ..., head_seq: _Optional[int] = ..., next_after_seq: _Optional[int] = ..., more: _Optional[bool] = ..., dropped: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class LineageData(_message.Message):
    __slots__ = ("sha256", "size_bytes", "artifact_ref", "task", "run_id")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_REF_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    artifact_ref: str
    task: str
    run_id: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., artifact_ref: _Optional[str] = ..., task: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class LineageNode(_message.Message):
    __slots__ = ("run_id", "task", "state", "started_at", "finished_at", "inputs", "output", "principal", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    task: str
    state: str
    started_at: float
    finished_at: float
    inputs: _containers.RepeatedCompositeFieldContainer[LineageData]
    output: LineageData
    principal: str
    attempt: int
    def __init__(self, run_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., inputs: _Optional[_Iterable[_Union[LineageData, _Mapping]]] = ..., output: _Optional[_Union[LineageData, _Mapping]] = ..., principal: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class LineageEdge(_message.Message):
    __slots__ = ("from_run_id", "from_task", "to_run_id", "to_task", "sha256")
    FROM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_TASK_FIELD_NUMBER: _ClassVar[int]
    TO_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TO_TASK_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    from_run_id: str
    from_task: str
    to_run_id: str
    to_task: str
    sha256: str
    def __init__(self, from_run_id: _Optional[str] = ..., from_task: _Optional[str] = ..., to_run_id: _Optional[str] = ..., to_task: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("run_id", "pipeline", "nodes", "edges")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pipeline: str
    nodes: _containers.RepeatedCompositeFieldContainer[LineageNode]
    edges: _containers.RepeatedCompositeFieldContainer[LineageEdge]
    def __init__(self, run_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[LineageNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[LineageEdge, _Mapping]]] = ...) -> None: ...
