"""Record codecs and key partitioning: JSON objects by default, bytes on request, a stable hash."""

from __future__ import annotations

import subprocess
import sys

import pytest
from xpipe.errors import DataStreamError
from xpipe.streams import RecordError, decode_record, encode_record, partition_of, record_key


def test_json_records_round_trip_and_bytes_pass_through():
    record = {"user": "ü", "n": 3, "tags": ["a"]}
    payload = encode_record(record, "json", source="stage enrich")
    assert payload == '{"user":"ü","n":3,"tags":["a"]}'.encode()
    assert decode_record(payload, "json", source="kafka://h:1/t") == record
    assert decode_record('{"a": 1}', "json", source="x") == {"a": 1}  # a Redis field may come as str
    assert decode_record(b"\x00\xff", "bytes", source="x") == b"\x00\xff"
    assert encode_record(b"\x00\xff", "bytes", source="x") == b"\x00\xff"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [(b"not json", "not JSON"), (b"[1, 2]", "a JSON list where the json codec needs an object"), (b"\xff\xfe", "not JSON"),
     (b"42", "a JSON int")],
)  # fmt: skip
def test_a_payload_that_is_not_a_json_object_is_a_record_error_naming_its_source(payload, problem):
    with pytest.raises(RecordError) as info:
        decode_record(payload, "json", source="kafka://127.0.0.1:9092/events")
    assert isinstance(info.value, DataStreamError)
    assert "record from kafka://127.0.0.1:9092/events" in str(info.value) and problem in str(info.value)
    assert info.value.payload == payload and info.value.source == "kafka://127.0.0.1:9092/events"


def test_encoding_refuses_what_the_codec_cannot_write():
    with pytest.raises(RecordError, match="record from stage s: the json codec needs a dict, got list"):
        encode_record([1], "json", source="stage s")
    with pytest.raises(RecordError, match="cannot be written as JSON"):
        encode_record({"x": object()}, "json", source="stage s")
    with pytest.raises(RecordError, match="cannot be written as JSON"):
        encode_record({"x": float("nan")}, "json", source="stage s")
    with pytest.raises(RecordError, match="codec 'bytes' needs bytes, got dict"):
        encode_record({"x": 1}, "bytes", source="stage s")


def test_keys_come_from_a_field_or_a_function():
    assert record_key({"user": "u1"}, "user", source="s") == "u1"
    assert record_key({"user": "u1"}, lambda r: r["user"].upper(), source="s") == "U1"
    assert record_key({"user": "u1"}, None, source="s") is None
    with pytest.raises(RecordError, match="record from events: has no key field 'user'"):
        record_key({"id": 1}, "user", source="events")

    def broken(record):
        raise KeyError("region")

    with pytest.raises(RecordError, match="key function .*broken raised KeyError"):
        record_key({}, broken, source="events")


def test_partitions_are_stable_across_processes_and_spread_keys():
    keys = [f"user-{i}" for i in range(2000)]
    here = [partition_of(k, 8) for k in keys]
    # Another interpreter, with another PYTHONHASHSEED, must agree: Python's hash() would not.
    code = (
        "from xpipe.streams import partition_of; print([partition_of(f'user-{i}', 8) for i in range(2000)])"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, timeout=60).stdout  # fmt: skip
    assert str(here) == there.strip()
    counts = [here.count(p) for p in range(8)]
    assert min(counts) > 2000 / 8 * 0.7, counts  # spread, not all in one
    assert partition_of({"b": 1, "a": 2}, 8) == partition_of({"a": 2, "b": 1}, 8)
    assert partition_of(b"user-1", 8) == partition_of("user-1", 8)
    assert partition_of("anything", 1) == 0 and partition_of(None, 8) == 0
