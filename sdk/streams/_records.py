"""How a record is read off and written to a broker, and which partition its key picks.

A record is a JSON object (a ``dict``) under the default ``"json"`` codec, or the payload's
raw ``bytes`` under ``"bytes"``. A payload that is not a JSON object is a
:class:`RecordError` naming where it came from, so the runtime can route it to the stage's
dead-letter stream instead of stopping.

Partitioning must agree across processes and restarts, so it hashes the key's canonical JSON
with CRC-32, never Python's per-process randomized ``hash``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

from ..errors import DataStreamError

__all__ = ["CODECS", "RecordError", "decode_record", "encode_record", "partition_of", "record_key"]

#: The record codecs a DataStream may use.
CODECS = ("json", "bytes")

Record = Any  # a dict under "json", bytes under "bytes"

# One encoder, made once: json.dumps with options builds a new one on every call (+35% per record).
# Compact, UTF-8 as is, and no NaN/Infinity, which are not JSON and other readers refuse.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class RecordError(DataStreamError):
    """One record cannot be used: not JSON, not an object, no event time, no key.

    Attributes:
        source: where the record came from (a URI, a stage), as given to the decoder.
        payload: the offending payload or record, for the dead-letter stream.
    """

    def __init__(self, message: str, *, source: str = "", payload: Any = None) -> None:
        super().__init__(message)
        self.source = source
        self.payload = payload


def check_codec(codec: Any) -> str:
    """``codec`` if it is one of :data:`CODECS`, else a DataStreamError naming them."""
    if codec not in CODECS:
        raise DataStreamError(f"codec {codec!r:.80}: expected one of {', '.join(map(repr, CODECS))}")
    return codec


def decode_record(payload: bytes | str, codec: str, *, source: str) -> Record:
    """The record held by a broker's payload (a message value, a Redis ``data`` field).

    Raises:
        RecordError: under ``"json"``, the payload is not UTF-8 JSON or not an object; the
            message names ``source``.
    """
    if codec == "bytes":
        return payload.encode() if isinstance(payload, str) else bytes(payload)
    try:
        record = json.loads(payload)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RecordError(
            f"record from {source}: not JSON ({exc}); payload starts {payload[:60]!r}",
            source=source,
            payload=payload,
        ) from None
    if not isinstance(record, dict):
        raise RecordError(
            f"record from {source}: a JSON {type(record).__name__} where the json codec needs an object; "
            "use codec='bytes' for other payloads",
            source=source,
            payload=payload,
        )
    return record


def encode_record(record: Record, codec: str, *, source: str) -> bytes:
    """The payload a sink writes for ``record`` (compact JSON, or the bytes as they are).

    Raises:
        RecordError: under ``"json"`` the record is not a JSON-able dict; under ``"bytes"``
            it is not bytes. ``source`` (the stage that produced it) is named.
    """
    if codec == "bytes":
        if not isinstance(record, (bytes, bytearray, memoryview)):
            raise RecordError(
                f"record from {source}: codec 'bytes' needs bytes, got {type(record).__name__}",
                source=source,
                payload=record,
            )
        return bytes(record)
    if not isinstance(record, dict):
        raise RecordError(
            f"record from {source}: the json codec needs a dict, got {type(record).__name__}",
            source=source,
            payload=record,
        )
    try:
        return _ENCODER.encode(record).encode()
    except (TypeError, ValueError) as exc:
        raise RecordError(
            f"record from {source}: cannot be written as JSON: {exc}", source=source, payload=record
        ) from None


def record_key(record: Record, key: str | Callable[[Record], Any] | None, *, source: str) -> Any:
    """The partitioning key of ``record``: a field's value, a function's answer, or None (no key).

    Raises:
        RecordError: the key field is missing (or the record is not a dict), or the key
            function raised; the message names the field or function and ``source``.
    """
    if key is None:
        return None
    if isinstance(key, str):
        if not isinstance(record, dict) or key not in record:
            raise RecordError(
                f"record from {source}: has no key field {key!r}", source=source, payload=record
            )
        return record[key]
    try:
        return key(record)
    except Exception as exc:
        name = getattr(key, "__qualname__", repr(key))
        raise RecordError(
            f"record from {source}: key function {name} raised {type(exc).__name__}: {exc}",
            source=source,
            payload=record,
        ) from exc


def partition_of(key_value: Any, partitions: int) -> int:
    """The partition (0 .. ``partitions``-1) of a key, the same in every process and run.

    Equal keys pick equal partitions, so their records keep their order; None (no key) is
    partition 0 and the runtime spreads unkeyed records itself.
    """
    if partitions <= 1 or key_value is None:
        return 0
    if isinstance(key_value, (bytes, bytearray)):
        data = bytes(key_value)
    elif isinstance(key_value, str):
        data = key_value.encode()
    else:  # numbers, lists, dicts: canonical JSON, so a dict's key order does not matter
        data = json.dumps(key_value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return zlib.crc32(data) % partitions
