"""The coordinator inlines artifacts for clients, but only from its own artifact directory."""

from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import inline_artifacts


def test_inlines_files_inside_the_artifact_dir(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "t.1").write_bytes(b"payload")
    payload = pb.Payload(codec=pb.CODEC_RAW, artifact_ref=f"file://{tmp_path}/r1/t.1", size_bytes=7)
    inline_artifacts([payload], str(tmp_path))
    assert payload.data == b"payload" and payload.artifact_ref == ""


def test_refuses_files_outside_the_artifact_dir(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not serve")
    store = tmp_path / "artifacts"
    store.mkdir()
    sneaky = [
        pb.Payload(artifact_ref=f"file://{secret}"),
        pb.Payload(artifact_ref=f"file://{store}/../secret"),
        pb.Payload(artifact_ref="http://example.invalid/x"),
    ]
    inline_artifacts(sneaky, str(store))
    assert all(p.data == b"" and p.artifact_ref for p in sneaky)


def test_missing_artifact_stays_a_reference(tmp_path):
    payload = pb.Payload(artifact_ref=f"file://{tmp_path}/gone")
    inline_artifacts([payload], str(tmp_path))
    assert payload.artifact_ref and not payload.data
