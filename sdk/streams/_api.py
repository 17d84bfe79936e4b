"""The stream API of the seed: ``StreamTask``, ``DataStream`` and ``StreamPipeline``.

Building a pipeline checks every argument at once, so a mistake shows where it is made, with
a :class:`~xpipe.DataStreamError` naming the argument and the value. :meth:`StreamPipeline.plan`
gives the frozen :class:`~xpipe.streams.StreamPlan` the runtime runs; :meth:`StreamPipeline.start`
runs it on the cluster and returns a :class:`~xpipe.streams.StreamHandle`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Self

from ..errors import DataStreamError
from ._options import check_buffer_size, check_rate, check_strategy
from ._plan import NAME_RE, CodeRef, SinkPlan, SourcePlan, StagePlan, StreamPlan, check_name, code_ref
from ._records import check_codec
from ._uri import StreamURI, parse_uri
from ._windows import window_spec

__all__ = ["DataStream", "StreamPipeline", "StreamTask"]


class StreamTask:
    """Base class of a stream stage's code: subclass it and define ``process_batch``.

    Each instance of a stage gets its own copy of the object. ``self.state`` is a dict the
    task may keep between batches (checkpointed with the stage's offsets); ``self.window`` is
    ``(start, end)`` in epoch seconds while a windowed stage processes a window, else None.

        >>> class Enrich(StreamTask):
        ...     def process_batch(self, batch):
        ...         return [dict(r, enriched=True) for r in batch]
    """

    state: dict[str, Any]
    window: tuple[float, float] | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # Set here, not in __init__, so a subclass's __init__ need not call super().__init__().
        self = super().__new__(cls)
        self.state = {}
        self.window = None
        return self

    def process_batch(self, batch: list[Any]) -> list[Any] | None:
        """Turn a batch of records into output records (a list), or None to emit nothing."""
        raise NotImplementedError(f"{type(self).__name__} must define process_batch(self, batch)")

    def __getstate__(self) -> dict[str, Any]:
        # What the plan ships: the user's attributes, not the runtime's state or window.
        return {key: value for key, value in self.__dict__.items() if key not in ("state", "window")}

    def __setstate__(self, attrs: dict[str, Any]) -> None:
        self.__dict__.update(attrs)
        self.state = {}
        self.window = None


class DataStream:
    """A named stream of records: a source read from a URI, or the output of a stage.

    Args:
        name: names the stream (and the topics derived from it).
        source: where its records come from, e.g. ``"kafka://127.0.0.1:9092/events"``
            (see :func:`xpipe.streams.parse_uri`).
        codec: ``"json"`` (records are dicts) or ``"bytes"``.
        key: a field name or a function of the record: records with equal keys go to the same
            instance, in order.
        time_field: the field holding each record's event time, for windows.

    Raises:
        DataStreamError: a bad name, URI, codec, key or time field.
    """

    __slots__ = ("_pipeline", "codec", "key", "name", "time_field", "uri")

    def __init__(
        self,
        name: str,
        source: str,
        *,
        codec: str = "json",
        key: str | Callable[[Any], Any] | None = None,
        time_field: str | None = None,
    ) -> None:
        self.name = check_name("stream", name)
        self.uri: StreamURI | None = parse_uri(source)
        self.codec = check_codec(codec)
        if key is not None and not (isinstance(key, str) and key) and not callable(key):
            raise DataStreamError(
                f"DataStream {name!r}: key={key!r:.80} must be a field name or a function of the record"
            )
        self.key = key
        if time_field is not None and (not isinstance(time_field, str) or not time_field):
            raise DataStreamError(
                f"DataStream {name!r}: time_field={time_field!r:.80} must be a non-empty field name"
            )
        self.time_field = time_field
        self._pipeline: StreamPipeline | None = None  # set on a stage's output

    @property
    def source(self) -> str | None:
        """The source URI as text; None for a stage's output."""
        return None if self.uri is None else str(self.uri)

    @classmethod
    def _output_of(cls, stage: str, pipeline: StreamPipeline, upstream: DataStream) -> DataStream:
        stream = cls.__new__(cls)
        stream.name, stream.uri, stream.codec = stage, None, upstream.codec
        stream.key, stream.time_field, stream._pipeline = upstream.key, upstream.time_field, pipeline
        return stream

    def __repr__(self) -> str:
        where = f"source={self.source!r}" if self.uri is not None else "a stage's output"
        return f"DataStream({self.name!r}, {where})"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataStreamError(f"{what}={value!r:.80}: must be an integer >= 1")
    return value


class StreamPipeline:
    """A graph of stream stages: sources, ``transform`` stages and ``output`` sinks.

        >>> sp = StreamPipeline("real_time_analytics")
        >>> events = DataStream("events", source="memory://events")
        >>> enriched = sp.transform(events, Enrich(), parallelism=4, buffer_size=1000)
        >>> sp.output(enriched, "file:///tmp/enriched.jsonl")

    Raises:
        DataStreamError: a bad pipeline name.
    """

    def __init__(self, name: str) -> None:
        self.name = check_name("stream pipeline", name)
        self._sources: dict[str, SourcePlan] = {}
        self._stages: dict[str, StagePlan] = {}
        self._sinks: list[SinkPlan] = []

    def _stream_in(self, stream: Any, what: str) -> tuple[str, SourcePlan | None]:
        """The name of ``stream`` in this pipeline, and its SourcePlan if it is a source new here.

        Changes nothing: the caller adds the source once every other argument was accepted,
        so a refused call leaves the pipeline as it was.
        """
        if not isinstance(stream, DataStream):
            raise DataStreamError(
                f"{what}: expected a DataStream, got {type(stream).__name__} {stream!r:.80}"
            )
        if stream.uri is None:
            if stream._pipeline is not self:
                raise DataStreamError(
                    f"{what}: stream {stream.name!r} is the output of a stage of another pipeline"
                )
            return stream.name, None
        source = SourcePlan(stream.name, stream.uri, stream.codec, *_key_parts(stream), stream.time_field)
        known = self._sources.get(stream.name)
        if known is None:
            if stream.name in self._stages:
                raise DataStreamError(f"{what}: stream name {stream.name!r} is already the name of a stage")
            return stream.name, source
        if known != source:
            raise DataStreamError(
                f"{what}: two different streams are named {stream.name!r} in pipeline {self.name!r}"
            )
        return stream.name, None

    def transform(
        self,
        stream: DataStream,
        task: StreamTask,
        parallelism: int = 1,
        buffer_size: int = 1000,
        window_size: str | float | None = None,
        slide: str | float | None = None,
        time_field: str | None = None,
        allowed_lateness: str | float = "0s",
        *,
        name: str | None = None,
    ) -> DataStream:
        """Add a stage that runs ``task`` on ``stream``; returns the stage's output stream.

        Args:
            stream: a source DataStream or the output of an earlier stage of this pipeline.
            task: a StreamTask instance (its class defines ``process_batch``).
            parallelism: instances of the stage (>= 1); records with equal keys meet in one.
            buffer_size: each instance's bounded buffer, in records (>= 1).
            window_size: tumbling windows of this length ("5min", seconds, a timedelta);
                None hands records over in batches as they come.
            slide: start a window every ``slide`` (sliding windows; at most ``window_size``).
            time_field: event-time field (default: the stream's); None for processing time.
            allowed_lateness: how long a window waits for late records after its end.
            name: the stage's name (default: the task class's name in snake case, made unique).

        Raises:
            DataStreamError: any bad argument, named with its value.
        """
        upstream, new_source = self._stream_in(stream, "transform(stream=...)")
        if not isinstance(task, StreamTask):
            raise DataStreamError(
                f"transform(task={task!r:.80}): expected an instance of a StreamTask subclass, got {type(task).__name__}"
            )
        if type(task).process_batch is StreamTask.process_batch:
            raise DataStreamError(
                f"transform(task=...): {type(task).__name__} does not define process_batch(self, batch)"
            )
        parallelism = _positive_int("parallelism", parallelism)
        buffer_size = check_buffer_size(buffer_size)
        if time_field is None and window_size is not None:
            time_field = stream.time_field  # the stream's event time, unless the stage names another
        window = window_spec(window_size, slide, time_field, allowed_lateness)
        stage = self._stage_name(name, task, also_taken=upstream)
        try:
            attrs = _pickled_attrs(task)
        except Exception as exc:
            raise DataStreamError(
                f"transform(task=...): the attributes of {type(task).__name__} cannot be pickled: {exc}"
            ) from exc
        self._stages[stage] = StagePlan(
            stage, upstream, code_ref(type(task), what=f"stage {stage!r}: task class"), attrs, parallelism, buffer_size,
            window, stream.codec, *_key_parts(stream),
        )  # fmt: skip
        if new_source is not None:
            self._sources[upstream] = new_source
        return DataStream._output_of(stage, self, stream)

    def _stage_name(self, name: str | None, task: StreamTask, *, also_taken: str) -> str:
        def taken(candidate: str) -> bool:
            return candidate in self._stages or candidate in self._sources or candidate == also_taken

        if name is not None:
            check_name("stage", name)
            if taken(name):
                raise DataStreamError(
                    f"transform(name={name!r}): pipeline {self.name!r} already has a stream or stage by that name"
                )
            return name
        base = _snake(type(task).__name__)
        base = base if NAME_RE.fullmatch(base) else "stage"
        candidate, n = base, 1
        while taken(candidate):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def output(self, stream: DataStream, uri: str) -> None:
        """Write ``stream``'s records to the sink ``uri``.

        Raises:
            DataStreamError: not a stream of this pipeline, a bad URI, or a sink already used.
        """
        name, new_source = self._stream_in(stream, "output(stream=...)")
        sink = SinkPlan(name, parse_uri(uri))
        if any(existing.uri == sink.uri for existing in self._sinks):
            raise DataStreamError(
                f"output(uri={uri!r:.200}): pipeline {self.name!r} already writes to {sink.uri}"
            )
        if new_source is not None:
            self._sources[name] = new_source
        self._sinks.append(sink)

    def plan(self) -> StreamPlan:
        """The frozen, serializable description of this pipeline that the runtime runs.

        Raises:
            DataStreamError: the pipeline has no stage or no output.
        """
        if not self._stages:
            raise DataStreamError(f"stream pipeline {self.name!r} has no stage; add one with transform()")
        if not self._sinks:
            raise DataStreamError(
                f"stream pipeline {self.name!r} has no output; add one with output(stream, uri)"
            )
        return StreamPlan(
            self.name, tuple(self._sources.values()), tuple(self._stages.values()), tuple(self._sinks)
        )

    def start(
        self,
        backpressure_strategy: str = "block",
        max_throughput_per_second: float | None = None,
        auto_scaling: bool = False,
        manager: Any = None,
    ) -> Any:
        """Run the pipeline on the cluster; returns a :class:`~xpipe.streams.StreamHandle`.

        Each stage runs as ``parallelism`` long-lived instances on the workers, placed and
        supervised by the coordinator (see docs/streams.md, "How it runs").

        Args:
            backpressure_strategy: what a full instance buffer does: ``"block"`` (pause
                fetching; lag grows in the broker), ``"drop_oldest"`` or ``"drop_newest"``
                (drop and count).
            max_throughput_per_second: records per second read from the sources at most
                (a token bucket, shared by the instances of each source stage); None: no limit.
            auto_scaling: move each stage's active instances between 1 and ``parallelism`` by lag.
            manager: the PipelineManager whose cluster runs it; None: the embedded default
                (one per process, started on first use).

        Raises:
            DataStreamError: a bad argument (named with its value), a pipeline without a
                stage or output, a broker that cannot be reached, or a task that cannot load.
        """
        from ._instance import InstanceOptions
        from ._start import start_stream

        strategy = check_strategy(backpressure_strategy)
        rate = check_rate(max_throughput_per_second)
        if not isinstance(auto_scaling, bool):
            raise DataStreamError(f"auto_scaling={auto_scaling!r:.80}: must be True or False")
        if manager is not None:
            from .._manager import PipelineManager  # loads grpc: only when a manager is given

            if not isinstance(manager, PipelineManager):
                raise DataStreamError(
                    f"manager={manager!r:.80}: expected a PipelineManager or None (the embedded default)"
                )
        plan = self.plan()
        return start_stream(plan, InstanceOptions(strategy, rate, auto_scaling), manager)

    def __repr__(self) -> str:
        return f"StreamPipeline({self.name!r}, stages={list(self._stages)}, sinks={[str(s.uri) for s in self._sinks]})"


def _key_parts(stream: DataStream) -> tuple[str | None, CodeRef | None]:
    """A stream's key as the plan holds it: ``(field name, None)`` or ``(None, the function's CodeRef)``."""
    if not callable(stream.key):
        return stream.key, None
    return None, code_ref(stream.key, what=f"DataStream {stream.name!r}: key")


def _pickled_attrs(task: StreamTask) -> bytes:
    import cloudpickle  # the attributes may hold lambdas, as batch tasks' arguments may

    return cloudpickle.dumps(task.__getstate__(), protocol=5)
