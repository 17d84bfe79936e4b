"""The connector interface the stream runtime uses, and the registry of connectors by scheme.

A stream has ``n`` partitions (1 for a plain Redis stream key, NATS subject, file or memory
stream; a Kafka topic's own count). Each stage instance reads the partitions it owns with a
:class:`Source`, in one consumer ``group``, and writes downstream with a :class:`Sink`.
Delivery is at-least-once: the runtime calls :meth:`Source.commit` only after every record it
derived from the committed ones was acknowledged by a sink's :meth:`Sink.write`.

Rules every connector keeps (its tests show them on the real broker):
- A new group starts at the beginning of the stream (nothing produced before start is lost).
- ``fetch`` returns records of one partition in order; a restarted source (same group,
  same partitions) first returns what was fetched and never committed, then new records.
- ``commit({p: m})`` commits everything in partition ``p`` up to and including message ``m``.
- ``write`` returns only when the broker holds every record (acks=all on Kafka, XADD replies
  on Redis, JetStream publish acks on NATS, fsync-free flush for files); it raises
  :class:`~xpipe.DataStreamError` if any record was not taken, and the runtime retries.
- An unreachable broker is a :class:`~xpipe.DataStreamError` naming the URI and the cause
  within ``timeout_s`` of :meth:`Connector.check`, never a hang.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import DataStreamError
from .._uri import StreamURI, parse_uri

__all__ = ["Connector", "Message", "OutRecord", "Sink", "Source", "connector_for", "internal_uri"]


@dataclass(slots=True)
class Message:
    """A record as read from a broker.

    Attributes:
        value: the record's bytes (the codec decodes them).
        key: the broker-level key, or None.
        partition: the partition it was read from.
        offset: the broker's position of it, in the form the connector's ``commit`` takes.
        seq: its position as an int that grows within the partition (Kafka offset, NATS
            stream sequence, memory offset, Redis ID as ``ms * 1_000_000 + seq``), used to
            count records read again after a restart.
        timestamp_s: the broker's time of it in Unix seconds, or None.
    """

    value: bytes
    key: bytes | None
    partition: int
    offset: Any
    seq: int
    timestamp_s: float | None = None


@dataclass(slots=True)
class OutRecord:
    """A record to write: its bytes, its key, and its partition (None: the connector picks)."""

    value: bytes
    key: bytes | None = None
    partition: int | None = None


class Source(abc.ABC):
    """One instance's reader of some partitions of one stream, in one consumer group."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and join; raises DataStreamError if the broker cannot be reached."""

    @abc.abstractmethod
    async def fetch(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` when none is there."""

    @abc.abstractmethod
    async def commit(self, last: Mapping[int, Message]) -> None:
        """Commit, per partition, everything up to and including ``last[partition]``."""

    @abc.abstractmethod
    async def lag(self) -> int | None:
        """Records in the owned partitions not yet committed by the group; None if unknown."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave and close; commits nothing. Safe to call twice, or after a failed start."""


class Sink(abc.ABC):
    """A writer to one stream."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; raises DataStreamError if the broker cannot be reached."""

    @abc.abstractmethod
    async def write(self, records: Sequence[OutRecord]) -> None:
        """Write all of ``records``, in order per partition; return once the broker holds them all."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush and close. Safe to call twice, or after a failed start."""


class Connector(abc.ABC):
    """What one scheme offers: sources, sinks, and the streams' partition counts."""

    #: The URI scheme this connector serves.
    scheme: str = ""

    @abc.abstractmethod
    def source(self, uri: StreamURI, *, group: str, partitions: Sequence[int] | None, codec: str = "json") -> Source:
        """A source over ``partitions`` of ``uri`` (None: all of them) in consumer ``group``."""

    @abc.abstractmethod
    def sink(self, uri: StreamURI, *, codec: str = "json") -> Sink:
        """A sink writing to ``uri``."""

    @abc.abstractmethod
    async def ensure(self, uri: StreamURI, *, partitions: int, timeout_s: float = 10.0) -> int:
        """Create the stream with ``partitions`` if absent; return the partitions it has."""

    @abc.abstractmethod
    async def partitions(self, uri: StreamURI, *, timeout_s: float = 10.0) -> int:
        """How many partitions the stream has (1 if it does not exist yet)."""

    @abc.abstractmethod
    async def check(self, uri: StreamURI, *, timeout_s: float = 5.0) -> None:
        """Raise DataStreamError naming ``uri`` and the cause if the broker cannot be reached."""


#: scheme -> "module:class" of its connector, imported on first use.
_CONNECTORS = {
    "kafka": "xpipe.streams._connectors._kafka:KafkaConnector",
    "redis": "xpipe.streams._connectors._redis:RedisConnector",
    "nats": "xpipe.streams._connectors._nats:NatsConnector",
    "file": "xpipe.streams._connectors._file:FileConnector",
    "memory": "xpipe.streams._connectors._memory:MemoryConnector",
}
_loaded: dict[str, Connector] = {}


def connector_for(uri: StreamURI | str) -> Connector:
    """The connector of ``uri``'s scheme (one shared instance per process).

    Raises:
        DataStreamError: the scheme has no connector, or its library is not installed
            (the message names the extra to install).
    """
    if isinstance(uri, str):
        uri = parse_uri(uri)
    known = _loaded.get(uri.scheme)
    if known is not None:
        return known
    path = _CONNECTORS.get(uri.scheme)
    if path is None:
        raise DataStreamError(f"{uri}: no connector for scheme {uri.scheme!r}; supported: {', '.join(_CONNECTORS)}")
    module, _, name = path.partition(":")
    try:
        connector = getattr(importlib.import_module(module), name)()
    except ImportError as exc:
        raise DataStreamError(
            f"{uri}: the {uri.scheme} connector needs {exc.name or 'a library'}; install xpipe-cluster[streams]"
        ) from exc
    _loaded[uri.scheme] = connector
    return connector


def internal_uri(first_source: StreamURI, pipeline: str, stream: str) -> StreamURI:
    """Where a pipeline keeps an internal stream (a stage's output, ``.late``, ``.dlq``).

    On the broker of the pipeline's first source (Kafka topic, Redis key, NATS subject
    ``<pipeline>.<stream>``); pipelines reading files or memory streams use the
    coordinator's memory broker.
    """
    name = f"{pipeline}.{stream}"
    if first_source.scheme in ("file", "memory"):
        return StreamURI("memory", None, None, name)
    return StreamURI(first_source.scheme, first_source.host, first_source.port, name, first_source.db)

