from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
