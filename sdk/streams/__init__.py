"""Stream pipelines (docs/streams.md): the API, its pure core, and the runtime.

``StreamPipeline``, ``StreamTask`` and ``DataStream`` build a pipeline and check it;
``StreamPipeline.plan()`` gives the frozen :class:`StreamPlan`, and ``start()`` runs it on the
cluster and returns a :class:`StreamHandle`. One concept per module: source/sink URIs
(``_uri``), the record codec and key partitioning (``_records``), windows and watermarks
(``_windows``), the bounded buffer and its backpressure strategies (``_buffer``), the token
bucket (``_ratelimit``), the connectors by scheme (``_connectors``), the stage instance that
workers run (``_instance``), its line to the coordinator (``_control``), ``start()``
(``_start``) and the handle and status types (``_handle``).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._api import DataStream, StreamPipeline, StreamTask
    from ._buffer import BoundedBuffer, BufferClosedError
    from ._handle import InstanceStatus, StageStatus, StreamHandle, StreamHealth, StreamStatus
    from ._options import BACKPRESSURE_STRATEGIES
    from ._plan import CodeRef, SinkPlan, SourcePlan, StagePlan, StreamPlan, dlq_stream, late_stream
    from ._ratelimit import TokenBucket
    from ._records import CODECS, RecordError, decode_record, encode_record, partition_of, record_key
    from ._uri import KAFKA_BOOTSTRAP_ENV, SCHEMES, StreamURI, kafka_bootstrap, parse_uri
    from ._windows import FiredWindow, LateRecord, Windower, WindowSpec, event_time_s, window_spec

# Imported on first use, as in ``xpipe`` itself: building a pipeline loads neither asyncio
# (the buffer and the token bucket) nor anything else only the runtime needs.
_LAZY = {
    **dict.fromkeys(("DataStream", "StreamPipeline", "StreamTask"), "._api"),
    **dict.fromkeys(("BoundedBuffer", "BufferClosedError"), "._buffer"),
    **dict.fromkeys(("InstanceStatus", "StageStatus", "StreamHandle", "StreamHealth", "StreamStatus"), "._handle"),
    "BACKPRESSURE_STRATEGIES": "._options",
    **dict.fromkeys(("CodeRef", "SinkPlan", "SourcePlan", "StagePlan", "StreamPlan", "dlq_stream", "late_stream"), "._plan"),
    "TokenBucket": "._ratelimit",
    **dict.fromkeys(("CODECS", "RecordError", "decode_record", "encode_record", "partition_of", "record_key"), "._records"),
    **dict.fromkeys(("KAFKA_BOOTSTRAP_ENV", "SCHEMES", "StreamURI", "kafka_bootstrap", "parse_uri"), "._uri"),
    **dict.fromkeys(
        ("FiredWindow", "LateRecord", "Windower", "WindowSpec", "event_time_s", "window_spec"), "._windows"
    ),
}  # fmt: skip

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = [
    "BACKPRESSURE_STRATEGIES",
    "CODECS",
    "KAFKA_BOOTSTRAP_ENV",
    "SCHEMES",
    "BoundedBuffer",
    "BufferClosedError",
    "CodeRef",
    "DataStream",
    "FiredWindow",
    "InstanceStatus",
    "LateRecord",
    "RecordError",
    "SinkPlan",
    "SourcePlan",
    "StageStatus",
    "StagePlan",
    "StreamHandle",
    "StreamHealth",
    "StreamPipeline",
    "StreamPlan",
    "StreamStatus",
    "StreamTask",
    "StreamURI",
    "TokenBucket",
    "WindowSpec",
    "Windower",
    "decode_record",
    "dlq_stream",
    "encode_record",
    "event_time_s",
    "kafka_bootstrap",
    "late_stream",
    "parse_uri",
    "partition_of",
    "record_key",
    "window_spec",
]
