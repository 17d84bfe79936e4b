"""The plan of a stream pipeline: the frozen, serializable thing the stream runtime runs.

:meth:`StreamPipeline.plan() <xpipe.streams.StreamPipeline.plan>` builds it. It holds no
live objects: a stage's task travels as its class (by import path, or cloudpickled when the
class cannot be imported by name, as batch tasks do: :mod:`xpipe._callables`) plus the
instance's attributes, pickled; a key function travels the same way. :meth:`StreamPlan.to_dict`
gives JSON-able data (bytes as base64) and :meth:`StreamPlan.from_dict` reads it back.
"""

from __future__ import annotations

import base64
import pickle
import re
from dataclasses import asdict, dataclass
from typing import Any

from .._callables import callable_ref, describe_callable, load_callable, load_pickled
from ..errors import DataStreamError, SerializationError
from ._uri import StreamURI, parse_uri
from ._windows import WindowSpec

__all__ = [
    "NAME_RE",
    "CodeRef",
    "SinkPlan",
    "SourcePlan",
    "StagePlan",
    "StreamPlan",
    "check_name",
    "code_ref",
    "dlq_stream",
    "late_stream",
]

#: Stream, stage and pipeline names: they become topic, stream-key and subject names on every
#: broker (``<stage>.late``, ``<stage>.dlq``), so they keep to Kafka's topic characters.
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def check_name(what: str, name: Any) -> str:
    """``name`` if it is a usable stream/stage/pipeline name, else a DataStreamError naming it."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DataStreamError(
            f"{what} name {name!r:.80}: use 1-200 characters of A-Z a-z 0-9 . _ - (not starting with '.'); "
            "it becomes a topic name on the broker"
        )
    return name


def late_stream(stage: str) -> str:
    """The side stream that receives a stage's late records."""
    return f"{stage}.late"


def dlq_stream(stage: str) -> str:
    """The dead-letter stream of a stage: records it could not process."""
    return f"{stage}.dlq"


@dataclass(frozen=True, slots=True)
class CodeRef:
    """Code that travels to a worker: ``import_path`` ("module:qualname") or ``pickled`` bytes."""

    import_path: str = ""
    pickled: bytes | None = None
    code_hash: str = ""

    def load(self) -> Any:
        """The class or function this names.

        Raises:
            SerializationError: it does not import or unpickle here.
        """
        return load_callable(self.import_path) if self.import_path else load_pickled(self.pickled or b"")


def code_ref(obj: Any, *, what: str) -> CodeRef:
    """A :class:`CodeRef` for a class or function.

    Raises:
        DataStreamError: it can be neither imported by name nor cloudpickled; names ``what``.
    """
    try:
        path, pickled, code_hash = callable_ref(obj)
    except SerializationError as exc:
        raise DataStreamError(f"{what}: {exc}") from exc
    return CodeRef(path, pickled, code_hash)


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """A stream read from a broker.

    Attributes:
        stream: the DataStream's name.
        uri: where its records come from.
        codec: "json" or "bytes".
        key_field: the field that partitions it, or None.
        key_fn: the function that partitions it, or None (at most one of the two is set).
        time_field: the field with its records' event time, or None.
    """

    stream: str
    uri: StreamURI
    codec: str
    key_field: str | None = None
    key_fn: CodeRef | None = None
    time_field: str | None = None


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One ``transform``: ``parallelism`` instances of a task reading ``input``, writing ``name``.

    Attributes:
        name: the stage's name, which is also the name of its output stream.
        input: the stream it reads (a source's or another stage's name).
        task_class: the StreamTask subclass.
        task_attrs: the task instance's attributes (pickled with cloudpickle), restored on each instance.
        parallelism: how many instances (the most, under auto-scaling).
        buffer_size: each instance's buffer, in records.
        window: its windows, or None to get records in batches as they come.
        codec: the codec of its output (the input's).
        key_field, key_fn: the partitioning of its output (the input's).
    """

    name: str
    input: str
    task_class: CodeRef
    task_attrs: bytes
    parallelism: int
    buffer_size: int
    window: WindowSpec | None
    codec: str
    key_field: str | None = None
    key_fn: CodeRef | None = None

    def load_task(self) -> Any:
        """A fresh StreamTask instance for this stage, as the user built it (``state`` empty).

        Raises:
            DataStreamError: the class or its attributes cannot be loaded here.
        """
        from ._api import StreamTask  # the API module imports this one

        try:
            cls = self.task_class.load()
            attrs = pickle.loads(self.task_attrs)
        except Exception as exc:
            raise DataStreamError(
                f"stage {self.name!r}: cannot load its task: {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, StreamTask)):
            raise DataStreamError(
                f"stage {self.name!r}: {describe_callable(cls)} is not a StreamTask subclass"
            )
        task = cls.__new__(cls)
        task.__dict__.update(attrs)
        return task

    @property
    def late_stream(self) -> str:
        return late_stream(self.name)

    @property
    def dlq_stream(self) -> str:
        return dlq_stream(self.name)


@dataclass(frozen=True, slots=True)
class SinkPlan:
    """Where a stream's records are written."""

    stream: str
    uri: StreamURI


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A whole stream pipeline, stages in the order they were added (each after its input)."""

    name: str
    sources: tuple[SourcePlan, ...]
    stages: tuple[StagePlan, ...]
    sinks: tuple[SinkPlan, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able data (bytes as base64 strings, URIs as text) that :meth:`from_dict` reads back."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamPlan:
        """Read :meth:`to_dict`'s output.

        Raises:
            DataStreamError: the data is malformed; the message says where.
        """
        try:
            return cls(
                data["name"],
                tuple(
                    SourcePlan(s["stream"], parse_uri(s["uri"]), s["codec"], s["key_field"], _code(s["key_fn"]), s["time_field"])
                    for s in data["sources"]
                ),
                tuple(
                    StagePlan(
                        s["name"], s["input"], _code(s["task_class"]), base64.b64decode(s["task_attrs"]), s["parallelism"],
                        s["buffer_size"], None if s["window"] is None else WindowSpec(**s["window"]), s["codec"],
                        s["key_field"], _code(s["key_fn"]),
                    )
                    for s in data["stages"]
                ),
                tuple(SinkPlan(s["stream"], parse_uri(s["uri"])) for s in data["sinks"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise DataStreamError(f"stream plan is malformed: {type(exc).__name__}: {exc}") from None


def _code(data: dict[str, Any] | None) -> CodeRef | None:
    if data is None:
        return None
    pickled = data["pickled"]
    return CodeRef(
        data["import_path"], None if pickled is None else base64.b64decode(pickled), data["code_hash"]
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"scheme", "host", "port", "name", "db"}:  # a StreamURI, after asdict
            return str(StreamURI(**value))
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
