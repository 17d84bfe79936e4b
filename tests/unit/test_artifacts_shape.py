"""Results shaped per reader (inline_max_bytes, accept_compression) and GetArtifact's checks,
on real files in a temporary artifact directory (issue 18)."""

from __future__ import annotations

import grpc
import pytest
from xpipe._codec import content_sha256, decode, encode
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._artifacts import ResultDataLoss, accepts_zstd, needs_shaping, shape_results
from xpipe.coordinator._artifacts_service import _load, _payload_naming, _Refused

TEXT = {"rows": [{"i": i, "name": f"row-{i:05d}"} for i in range(2000)]}


def _artifact(tmp_path, name: str, payload: pb.Payload) -> pb.Payload:
    """``payload`` moved into a file of the artifact directory, as a worker does."""
    path = tmp_path / "run" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(payload.data)
    ref = pb.Payload()
    ref.CopyFrom(payload)
    ref.data, ref.artifact_ref, ref.artifact_sha256 = b"", f"file://{path}", content_sha256(payload.data)
    return ref


def test_accept_compression_knows_only_zstd():
    assert accepts_zstd(["gzip", "zstd"]) and not accepts_zstd(["br", "ZSTD", "identity"]) and not accepts_zstd([])


def test_a_zstd_client_that_inlines_nothing_needs_no_work():
    small = encode({"a": 1}, "json")
    compressed = encode(TEXT, "json")
    assert compressed.zstd
    assert not needs_shaping([small, compressed], accept_zstd=True)
    assert needs_shaping([compressed], accept_zstd=False)


def test_zstd_is_decompressed_for_a_client_that_does_not_list_it(tmp_path):
    inline = encode(TEXT, "json")
    stored = _artifact(tmp_path, "t.1", encode(TEXT, "json"))
    shape_results([inline, stored], str(tmp_path), accept_zstd=False)
    for payload in (inline, stored):
        assert not payload.zstd and not payload.artifact_ref and len(payload.data) == payload.size_bytes
        assert decode(payload) == TEXT


def test_an_artifact_above_inline_max_bytes_stays_a_reference_with_its_hash(tmp_path):
    stored = _artifact(tmp_path, "t.1", encode(TEXT, "json"))
    ref, sha = stored.artifact_ref, stored.artifact_sha256
    shape_results([stored], str(tmp_path), inline_max_bytes=stored.size_bytes - 1, accept_zstd=False)
    assert stored.artifact_ref == ref and stored.artifact_sha256 == sha and not stored.data
    shape_results([stored], str(tmp_path), inline_max_bytes=stored.size_bytes, accept_zstd=True)
    assert not stored.artifact_ref and stored.zstd and decode(stored) == TEXT


def test_an_altered_artifact_is_never_inlined(tmp_path, caplog):
    stored = _artifact(tmp_path, "t.1", encode(TEXT, "json"))
    path = tmp_path / "run" / "t.1"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    shape_results([stored], str(tmp_path))
    assert stored.artifact_ref and not stored.data
    assert "does not match the SHA-256" in caplog.text


def test_fan_out_parts_are_shaped_one_by_one(tmp_path):
    part = _artifact(tmp_path, "t.part0.1", encode(TEXT, "json"))
    parts = pb.MapParts(parts=[part, encode(TEXT, "json"), encode(1, "json")])
    payload = pb.Payload(codec=pb.CODEC_MAP_PARTS, data=parts.SerializeToString())
    shape_results([payload], str(tmp_path), accept_zstd=False)
    shaped = pb.MapParts.FromString(payload.data)
    assert [decode(p) for p in shaped.parts] == [TEXT, TEXT, 1]
    assert not any(p.zstd or p.artifact_ref for p in shaped.parts) and payload.size_bytes == len(payload.data)
    recorded = pb.Payload(codec=pb.CODEC_MAP_PARTS, data=parts.SerializeToString())
    assert _payload_naming(recorded, part.artifact_ref) == part
    assert _payload_naming(recorded, "file:///elsewhere") is None


def test_a_corrupt_zstd_result_is_data_loss_for_a_client_without_zstd():
    broken = encode(TEXT, "json")
    broken.data = broken.data[:20] + b"\xff" * 40
    with pytest.raises(ResultDataLoss, match="cannot decode"):
        shape_results([broken], None, accept_zstd=False)


def test_get_artifact_refuses_a_file_outside_the_directory_and_needs_a_directory(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not serve")
    store = tmp_path / "artifacts"
    store.mkdir()
    outside = pb.Payload(codec=pb.CODEC_RAW, artifact_ref=f"file://{store}/../secret", size_bytes=12)
    with pytest.raises(_Refused) as refused:
        _load(outside, outside.artifact_ref, str(store), accept_zstd=False)
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "outside the artifact directory" in refused.value.message
    with pytest.raises(_Refused) as refused:
        _load(outside, outside.artifact_ref, "", accept_zstd=False)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_get_artifact_serves_unchecked_a_result_recorded_without_a_hash_and_refuses_a_corrupt_frame(tmp_path):
    stored = _artifact(tmp_path, "t.1", encode(TEXT, "json"))
    stored.artifact_sha256 = ""  # recorded by the previous version
    served = _load(stored, stored.artifact_ref, str(tmp_path), accept_zstd=False)
    assert served.compression == "identity" and served.sha256 == content_sha256(served.data)
    assert decode(pb.Payload(codec=pb.CODEC_JSON, data=served.data)) == TEXT
    path = tmp_path / "run" / "t.1"
    path.write_bytes(path.read_bytes()[:20] + b"\xff" * 40)
    with pytest.raises(_Refused) as refused:
        _load(stored, stored.artifact_ref, str(tmp_path), accept_zstd=False)
    assert refused.value.code == grpc.StatusCode.DATA_LOSS
    as_stored = _load(stored, stored.artifact_ref, str(tmp_path), accept_zstd=True)  # zstd: served as is
    assert as_stored.compression == "zstd" and as_stored.data == path.read_bytes()
