"""How results leave the coordinator: inline or by reference, compressed or not, as each client reads.

Workers send a result of 256 KiB or more (encoded) as a reference to a file in the artifact
directory, with the SHA-256 of its bytes (``Payload.artifact_sha256``), and compress
payloads of 16 KiB or more with zstd. Neither suits every client: a remote client cannot
open the file, and Node or Java have no zstd in their standard libraries. So the reading
RPCs (``GetRun``, ``WatchRun`` with ``results_on_end``, ``GetTaskResult``) pass their
results through :func:`shape_results`, the one place that rewrites payloads for a reader:

- ``inline_max_bytes`` 0 inlines every artifact (what the Python SDK of old expects); above
  0, an artifact whose decoded size (``size_bytes``) exceeds it stays by reference, to be
  read with ``GetArtifact`` (:mod:`._artifacts_service`). Inline results stay inline.
- A reader that does not accept zstd gets each zstd payload decompressed (``zstd=false``).

A client that accepts zstd and inlines nothing pays nothing here: no copy, no thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from xpipe._codec import content_sha256, decompress, read_artifact
from xpipe._proto import common_pb2 as pb
from xpipe.errors import SerializationError

log = logging.getLogger(__name__)

__all__ = ["ZSTD", "ArtifactAltered", "ResultDataLoss", "accepts_zstd", "needs_shaping", "read_checked", "shape_results"]

#: The one compression a client may list besides identity (``accept_compression``).
ZSTD = "zstd"


class ResultDataLoss(Exception):
    """A stored result cannot be turned into what the client reads (a corrupt zstd frame)."""


class ArtifactAltered(Exception):
    """An artifact's bytes do not match the SHA-256 recorded with its result."""


def read_checked(payload: pb.Payload, artifact_dir: str, *, what: str) -> tuple[bytes, str]:
    """The bytes of ``payload``'s artifact and their SHA-256, checked against the recorded one.

    The one check every reader of an artifact makes before using a byte of it. A result
    recorded without a hash (by an older worker) is read unchecked, and its hash is ""
    (not computed). Blocking: run in a thread.

    Raises:
        SerializationError: the reference is refused or the file cannot be read.
        ArtifactAltered: the bytes are not the ones the worker wrote.
        DecryptionError: a sealed artifact cannot be opened with this coordinator's keyring.
    """
    data = read_artifact(payload.artifact_ref, artifact_root=artifact_dir, what=what)
    if not payload.artifact_sha256:
        return data, ""
    sha256 = content_sha256(data)
    if sha256 != payload.artifact_sha256:
        raise ArtifactAltered(
            f"artifact {payload.artifact_ref} does not match the SHA-256 recorded with its result "
            f"{payload.artifact_sha256} (file has {sha256})"
        )
    return data, sha256


def accepts_zstd(accept_compression: Iterable[str]) -> bool:
    """Does a client with this ``accept_compression`` read zstd? Unknown values are ignored."""
    return ZSTD in accept_compression


def needs_shaping(payloads: list[pb.Payload], *, accept_zstd: bool) -> bool:
    """Is there anything for :func:`shape_results` to do (so a thread is worth starting)?"""
    for p in payloads:  # a plain loop: this runs on every read of results, big or small
        if p.artifact_ref or p.codec == pb.CODEC_MAP_PARTS or (p.zstd and not accept_zstd):
            return True
    return False


def shape_results(
    payloads: list[pb.Payload], artifact_dir: str | None, *, inline_max_bytes: int = 0, accept_zstd: bool = True
) -> None:
    """Rewrite ``payloads`` in place for one reader (see the module doc). Blocking: run in a thread.

    An artifact that cannot be read, or whose bytes do not match its recorded SHA-256, is
    left as a reference (logged): ``GetArtifact`` then answers NOT_FOUND or DATA_LOSS for it,
    so the client never gets altered bytes. Only files inside ``artifact_dir`` are read: a
    reference is data from a worker.

    Raises:
        ResultDataLoss: a zstd payload the reader needs decompressed is corrupt.
        DecryptionError: a sealed artifact cannot be opened with this coordinator's keyring.
    """
    for payload in payloads:
        _shape(payload, artifact_dir, inline_max_bytes, accept_zstd)


def _shape(payload: pb.Payload, artifact_dir: str | None, inline_max_bytes: int, accept_zstd: bool) -> bool:
    """Rewrite one payload; True if it changed."""
    if payload.codec == pb.CODEC_MAP_PARTS:  # a fan-out's parts: each travels on its own
        parts = pb.MapParts.FromString(payload.data)
        changed = False
        for part in parts.parts:
            changed = _shape(part, artifact_dir, inline_max_bytes, accept_zstd) or changed
        if parts.HasField("keys"):
            changed = _shape(parts.keys, artifact_dir, inline_max_bytes, accept_zstd) or changed
        if changed:
            payload.data = parts.SerializeToString()
            payload.size_bytes = len(payload.data)
        return changed
    changed = False
    if payload.artifact_ref:
        if not artifact_dir or (inline_max_bytes and payload.size_bytes > inline_max_bytes):
            return False
        try:
            data, _ = read_checked(payload, artifact_dir, what="a task result")
        except SerializationError as exc:
            log.warning("artifact left as a reference: %s", exc)
            return False
        except ArtifactAltered as exc:
            log.error("%s; left as a reference", exc)
            return False
        payload.data = data
        payload.artifact_ref = ""
        payload.artifact_sha256 = ""  # it describes the file, which this reader no longer needs
        changed = True
    if payload.zstd and not accept_zstd:
        try:
            payload.data = decompress(payload.data, payload.size_bytes, what="a task result")
        except SerializationError as exc:
            log.error("result cannot be decompressed for a client without zstd: %s", exc)
            raise ResultDataLoss(str(exc)) from None
        payload.zstd = False
        changed = True
    return changed
