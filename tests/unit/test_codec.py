"""Payload encoding (xpipe._codec): round trips, compression, and every failure path."""

from __future__ import annotations

import pickle
import threading

import pytest
import zstandard

from xpipe import _codec
from xpipe._proto import common_pb2
from xpipe.errors import SerializationError


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -3.5,
        "text ü",
        b"\x00\x01",
        [1, [2, 3]],
        {"a": (1, 2)},
        {1, 2},
        Point(1, 2),
        ((1,), {"k": "v"}),
    ],
)
def test_pickle_round_trip(value):
    payload = _codec.encode(value)
    assert payload.codec == common_pb2.CODEC_PICKLE and not payload.zstd
    assert payload.size_bytes == len(payload.data)
    assert _codec.decode(payload) == value


def test_pickle_falls_back_to_cloudpickle_for_lambdas():
    payload = _codec.encode(lambda x: x + 1, what="a lambda")
    assert _codec.decode(payload)(1) == 2


@pytest.mark.parametrize("value", [None, 1, 2.5, "s", [1, "a", None], {"a": {"b": [True, False]}}])
def test_json_round_trip(value):
    payload = _codec.encode(value, "json")
    assert payload.codec == common_pb2.CODEC_JSON
    assert _codec.decode(payload) == value
    assert _codec.encode_json(value) == payload


def test_raw_round_trip():
    for value in (b"abc", bytearray(b"def"), memoryview(b"ghi")):
        payload = _codec.encode(value, "raw")
        assert payload.codec == common_pb2.CODEC_RAW
        assert _codec.decode(payload) == bytes(value)


def test_compression_above_threshold():
    value = "x" * (_codec.ZSTD_THRESHOLD_BYTES * 4)
    payload = _codec.encode(value, "json")
    assert payload.zstd is True
    assert len(payload.data) < payload.size_bytes // 10  # very repetitive: compresses well
    assert payload.size_bytes == len(value) + 2  # the JSON quotes
    assert _codec.decode(payload) == value


def test_no_compression_below_threshold():
    payload = _codec.encode(b"y" * 100, "raw")
    assert payload.zstd is False and payload.data == b"y" * 100


def test_compression_threshold_is_adjustable():
    payload = _codec.encode(b"z" * 100, "raw", compress_threshold_bytes=10)
    assert payload.zstd is True and _codec.decode(payload) == b"z" * 100


def test_empty_payload():
    empty = _codec.empty()
    assert _codec.is_empty(empty) and _codec.decode(empty) is None
    assert not _codec.is_empty(_codec.encode(None))
    assert not _codec.is_empty(common_pb2.Payload(artifact_ref="store/abc"))


def test_generator_cannot_be_pickled_and_the_error_names_what():
    gen = (i for i in range(3))
    with pytest.raises(SerializationError, match="result of task 'load'") as info:
        _codec.encode(gen, what="result of task 'load'")
    assert "generator" in str(info.value)


def test_lock_cannot_be_pickled():
    with pytest.raises(SerializationError, match="arguments of task 't'.*lock"):
        _codec.encode({"lock": threading.Lock()}, what="arguments of task 't'")


def test_json_refuses_non_json_values():
    with pytest.raises(SerializationError, match="cannot encode result of task 'x'.* as JSON"):
        _codec.encode({1, 2}, "json", what="result of task 'x'")
    with pytest.raises(SerializationError, match="as JSON"):
        _codec.encode({"a": object()}, "json")


def test_raw_refuses_non_bytes():
    with pytest.raises(SerializationError, match="raw codec needs bytes for my value, got str"):
        _codec.encode("text", "raw", what="my value")


def test_unknown_codec_name():
    with pytest.raises(SerializationError, match="unknown codec 'yaml'"):
        _codec.encode(1, "yaml")


def test_oversized_value_is_refused(monkeypatch):
    monkeypatch.setattr(_codec, "MAX_INLINE_BYTES", 1000)
    with pytest.raises(
        SerializationError, match="result of task 'big' is \\d+ bytes encoded, over the 1000-byte"
    ):
        _codec.encode(bytes(range(256)) * 8, "raw", what="result of task 'big'")
    # Compressible data is measured after compression and may fit.
    assert _codec.decode(_codec.encode(b"a" * 5000, "raw", compress_threshold_bytes=100)) == b"a" * 5000


def test_corrupt_pickle_data():
    payload = common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=b"\x80\x05garbage")
    with pytest.raises(SerializationError, match="cannot decode result of task 'a'"):
        _codec.decode(payload, what="result of task 'a'")


def test_corrupt_json_data():
    payload = common_pb2.Payload(codec=common_pb2.CODEC_JSON, data=b"{not json")
    with pytest.raises(SerializationError, match="cannot decode value: JSONDecodeError"):
        _codec.decode(payload)


def test_corrupt_zstd_data():
    payload = common_pb2.Payload(codec=common_pb2.CODEC_RAW, zstd=True, data=b"not zstd", size_bytes=8)
    with pytest.raises(SerializationError, match="cannot decode"):
        _codec.decode(payload)


def test_zstd_bomb_without_content_size_is_refused():
    # A hostile payload that claims a small size but inflates far beyond it.
    data = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 1_000_000)
    payload = common_pb2.Payload(codec=common_pb2.CODEC_RAW, zstd=True, data=data, size_bytes=10)
    with pytest.raises(SerializationError, match="cannot decode"):
        _codec.decode(payload)


def test_zstd_bomb_with_content_size_is_refused():
    data = zstandard.ZstdCompressor().compress(b"\x00" * 1_000_000)
    payload = common_pb2.Payload(codec=common_pb2.CODEC_RAW, zstd=True, data=data, size_bytes=10)
    with pytest.raises(SerializationError, match="cannot decode"):
        _codec.decode(payload)


def test_unknown_codec_number():
    payload = common_pb2.Payload(codec=99, data=b"x")
    with pytest.raises(SerializationError, match="unknown codec 99"):
        _codec.decode(payload)


def test_artifact_reference_must_be_fetched_first():
    payload = common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, artifact_ref="artifacts/ab12")
    with pytest.raises(SerializationError, match="artifacts/ab12"):
        _codec.decode(payload)


def test_pickle_needing_a_missing_class_is_a_serialization_error():
    data = pickle.dumps(Point(1, 2))
    data = data.replace(b"Point", b"Pnint")  # same length, names a class that does not exist
    with pytest.raises(SerializationError, match="cannot decode"):
        _codec.decode(common_pb2.Payload(codec=common_pb2.CODEC_PICKLE, data=data))


def test_incompressible_value_stays_uncompressed():
    import os

    data = os.urandom(64 * 1024)
    payload = _codec.encode(data, "raw")
    assert payload.zstd is False and payload.data == data and payload.size_bytes == len(data)
    assert _codec.decode(payload) == data


def test_file_artifact_reference_is_read(tmp_path):
    inline = _codec.encode(list(range(1000)))
    path = tmp_path / "run" / "task.1"
    path.parent.mkdir()
    path.write_bytes(inline.data)
    ref = common_pb2.Payload(codec=inline.codec, zstd=inline.zstd, size_bytes=inline.size_bytes,
                             artifact_ref=f"file://{path}")  # fmt: skip
    assert _codec.decode(ref, artifact_root=str(tmp_path)) == list(range(1000))
    missing = common_pb2.Payload(codec=inline.codec, artifact_ref=f"file://{tmp_path}/gone")
    with pytest.raises(SerializationError, match="cannot read result of task 'x' from the artifact store"):
        _codec.decode(missing, what="result of task 'x'", artifact_root=str(tmp_path))


def test_big_incompressible_value_is_probed_not_compressed_whole(monkeypatch):
    import os

    calls = []
    real = _codec._compressor

    class Counting:
        def compress(self, data):
            calls.append(len(data))
            return real.compress(data)

    monkeypatch.setattr(_codec, "_compressor", Counting())
    data = os.urandom(1 << 20)
    payload = _codec.encode(data, "raw")
    assert payload.zstd is False and payload.data == data
    assert calls == [3 * _codec._PROBE_SLICE_BYTES]  # the sample only, never the whole MiB
    calls.clear()
    # A random head before a compressible body: the middle and end slices say "worth it".
    mixed = os.urandom(16 * 1024) + b"abc" * (1 << 18)
    payload = _codec.encode(mixed, "raw")
    assert payload.zstd is True and calls[-1] == len(mixed)
    assert _codec.decode(payload) == mixed


def test_artifact_bytes_at_hand_are_used_instead_of_the_file(tmp_path):
    inline = _codec.encode(b"x" * 100, "raw")
    ref = common_pb2.Payload(codec=inline.codec, size_bytes=inline.size_bytes, artifact_ref=f"file://{tmp_path}/gone")
    assert _codec.decode(ref, artifact_root=str(tmp_path), artifact_data=inline.data) == b"x" * 100
