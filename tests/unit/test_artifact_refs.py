"""Artifact references resolve inside the artifact directory only, on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xpipe import _codec
from xpipe._proto import common_pb2 as pb
from xpipe.coordinator._engine import inline_artifacts
from xpipe.errors import SerializationError
from xpipe.worker._objects import write_file as _write_file

SECRET = b"TOP-SECRET-do-not-echo"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/artifacts`` (the root, with one good artifact) and ``tmp/secret`` outside it."""
    root = tmp_path / "artifacts"
    (root / "run").mkdir(parents=True)
    (root / "run" / "t.1").write_bytes(_codec.encode([1, 2, 3]).data)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    return root, secret


def _decode(ref: str, root: Path | None) -> object:
    payload = pb.Payload(codec=pb.CODEC_PICKLE, artifact_ref=ref)
    return _codec.decode(payload, what="argument", artifact_root=None if root is None else str(root))


def test_a_reference_inside_the_directory_is_read(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert _decode(f"file://{root}/run/t.1", root) == [1, 2, 3]


@pytest.mark.parametrize(
    "ref",
    [
        "file://{root}/../secret",  # traversal
        "file://{root}/run/../../secret",
        "file://{secret}",  # plainly outside
        "file://{root}/run/link",  # a symlink inside that points out
        "file://{root}/dirlink/secret",  # a directory symlink inside that points out
        "{root}/run/t.1",  # a plain path, no scheme
        "run/t.1",  # a relative path
        "file://run/t.1",  # a relative file URL
        "http://127.0.0.1:1/{root}/run/t.1",  # another scheme
        "s3://bucket/run/t.1",
        "file://{root}/run/t.1\x00",  # an embedded NUL
    ],
)
def test_references_outside_are_refused_without_reading(layout: tuple[Path, Path], ref: str) -> None:
    root, secret = layout
    (root / "run" / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(secret.parent)
    ref = ref.format(root=root, secret=secret)
    with pytest.raises(SerializationError) as caught:
        _decode(ref, root)
    message = str(caught.value)
    assert "refusing artifact reference" in message and repr(ref) in message
    assert SECRET.decode() not in message
    assert str(root) in message  # names the directory it must be inside


def test_with_no_artifact_directory_every_reference_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(SerializationError, match="no artifact directory is configured"):
        _decode(f"file://{root}/run/t.1", None)


def test_a_fifo_inside_the_directory_is_refused_without_blocking(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    os.mkfifo(root / "run" / "fifo")
    with pytest.raises(SerializationError, match="not a regular file"):
        _decode(f"file://{root}/run/fifo", root)


def test_coordinator_inlines_through_the_same_check(layout: tuple[Path, Path]) -> None:
    root, secret = layout
    (root / "run" / "link").symlink_to(secret)
    good = pb.Payload(codec=pb.CODEC_PICKLE, artifact_ref=f"file://{root}/run/t.1")
    linked = pb.Payload(codec=pb.CODEC_PICKLE, artifact_ref=f"file://{root}/run/link")
    inline_artifacts([good, linked], str(root))
    assert good.artifact_ref == "" and _codec.decode(good) == [1, 2, 3]
    assert linked.artifact_ref and linked.data == b""


def test_worker_artifacts_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which gave 0644 before
    try:
        path = tmp_path / "artifacts" / "run-1" / "big.1"
        (tmp_path / "artifacts").mkdir()
        _write_file(str(path), b"every argument")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes() == b"every argument"
