"""The memory broker's limits, shared by the coordinator (which enforces them) and the connector.

A leaf module: it imports nothing of ours. The broker lives in the leader's memory, so every
number here bounds what one stream (or one call) can make the coordinator hold.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_FETCH_RECORDS",
    "MAX_FETCH_BYTES",
    "MAX_FETCH_RECORDS",
    "MAX_FETCH_WAIT_MS",
    "MAX_PARTITIONS",
    "MAX_PRODUCE_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_STREAM_BYTES",
    "MAX_STREAM_NAME_CHARS",
    "MAX_STREAM_RECORDS",
]

#: Records one memory stream holds; past it the oldest of a partition are trimmed.
#: Each partition gets an equal share (``MAX_STREAM_RECORDS // partitions``).
MAX_STREAM_RECORDS = 1_000_000
#: Bytes (keys + values) one memory stream holds, shared out like the records.
MAX_STREAM_BYTES = 256 * 1024 * 1024
#: One record's key + value.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Partitions of one memory stream.
MAX_PARTITIONS = 1024
#: Characters of a stream or group name.
MAX_STREAM_NAME_CHARS = 255
#: Longest long poll of one Fetch; a longer ``wait_ms`` is cut to this.
MAX_FETCH_WAIT_MS = 5_000
#: Records of one Fetch when it asks for 0, and the most it may ask for.
DEFAULT_FETCH_RECORDS = 500
MAX_FETCH_RECORDS = 10_000
#: Bytes of one Fetch answer (it always holds at least one record), well under gRPC's message cap.
MAX_FETCH_BYTES = 32 * 1024 * 1024
#: Bytes of one Produce the connector sends; a larger write goes in several calls.
MAX_PRODUCE_BYTES = 64 * 1024 * 1024
