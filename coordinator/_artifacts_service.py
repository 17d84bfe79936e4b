"""``PipelineService.GetArtifact``: the bytes of a result that travels by reference, for any client.

A result of 256 KiB or more lives in the artifact directory; ``Payload.artifact_ref`` names
the file and ``artifact_sha256`` its content hash, both recorded with the task's result. A
remote client cannot open the file, so this RPC streams it, after three checks:

- the reference must be the one the task's result (or one of its fan-out parts) names: a
  client cannot name any other file, and the run's namespace (checked by the call guard,
  ``NAMESPACED_RPCS``) covers the bytes (NOT_FOUND otherwise);
- the file must lie inside the artifact directory (``resolve_artifact_ref``);
- its bytes (unsealed, with encryption at rest) must match the recorded SHA-256, checked
  before the first byte is sent: altered bytes are DATA_LOSS, never served. A result
  recorded before hashes were (no ``artifact_sha256``) is served unchecked.

Reading, hashing and decompressing run in a thread: an artifact may be hundreds of MiB.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from xpipe._codec import content_sha256, decompress, resolve_artifact_ref
from xpipe._limits import MAX_ARTIFACT_CHUNK_BYTES, shown
from xpipe._proto import common_pb2 as pb
from xpipe._proto import pipeline_pb2
from xpipe.errors import SerializationError

from ._artifacts import ArtifactAltered, accepts_zstd, read_checked

if TYPE_CHECKING:
    from ._engine import Engine

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK_BYTES", "serve_artifact"]

#: Bytes per chunk when the client leaves ``chunk_bytes`` 0.
DEFAULT_CHUNK_BYTES = 256 * 1024


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Served:
    data: bytes
    compression: str
    sha256: str


async def serve_artifact(engine: Engine, request: pipeline_pb2.GetArtifactRequest, context):
    """Stream the artifact ``request`` names, or abort with the status that says why not."""
    chunk_bytes = request.chunk_bytes or DEFAULT_CHUNK_BYTES
    if chunk_bytes > MAX_ARTIFACT_CHUNK_BYTES:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"GetArtifact: chunk_bytes is {request.chunk_bytes}; the limit is {MAX_ARTIFACT_CHUNK_BYTES} (1 MiB)",
        )
    try:
        payload = await _named_payload(engine, request)
        served = await asyncio.to_thread(
            _load, payload, request.ref, engine.config.artifact_dir, accepts_zstd(request.accept_compression)
        )
    except _Refused as refused:
        await context.abort(refused.code, refused.message)
    data = memoryview(served.data)
    total = len(data)
    first = pipeline_pb2.ArtifactChunk(
        data=bytes(data[:chunk_bytes]), offset=0, total_bytes=total, compression=served.compression,
        codec=payload.codec, size_bytes=payload.size_bytes, sha256=served.sha256,
    )  # fmt: skip
    yield first
    for offset in range(chunk_bytes, total, chunk_bytes):
        yield pipeline_pb2.ArtifactChunk(data=bytes(data[offset : offset + chunk_bytes]), offset=offset)


async def _named_payload(engine: Engine, request: pipeline_pb2.GetArtifactRequest) -> pb.Payload:
    """The payload of ``request.task``'s result that names ``request.ref``.

    Raises:
        _Refused: NOT_FOUND for an unknown run or task, or a ref that result does not name.
    """
    run_id, task, ref = request.run_id, request.task, request.ref
    if not ref:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "GetArtifact: ref is empty; pass a Payload.artifact_ref")
    info = await engine.run_info(run_id, include_results=True, only_task=task, shape=False)
    if info is None:
        raise _Refused(grpc.StatusCode.NOT_FOUND, f"no run {shown(run_id)}")
    if not info.tasks:
        raise _Refused(grpc.StatusCode.NOT_FOUND, f"run {shown(run_id)} has no task {shown(task)}")
    payload = _payload_naming(info.tasks[0].result, ref)
    if payload is None:
        raise _Refused(
            grpc.StatusCode.NOT_FOUND,
            f"the result of task {shown(task)} of run {shown(run_id)} names no artifact {shown(ref)}",
        )
    return payload


def _payload_naming(result: pb.Payload, ref: str) -> pb.Payload | None:
    """``result`` if its reference is ``ref``, else the fan-out part (or keys) that is; None if none."""
    if result.artifact_ref == ref:
        return result
    if result.codec != pb.CODEC_MAP_PARTS:
        return None
    try:
        parts = pb.MapParts.FromString(result.data)
    except Exception:  # a corrupt record names nothing  # noqa: BLE001
        return None
    for part in (*parts.parts, parts.keys):
        if part.artifact_ref == ref:
            return part
    return None


def _load(payload: pb.Payload, ref: str, artifact_dir: str | None, accept_zstd: bool) -> _Served:
    """The bytes to serve, checked against the recorded hash. Blocking: run in a thread.

    Raises:
        _Refused: the file is outside the directory, missing, altered or corrupt.
    """
    if not artifact_dir:
        raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, "GetArtifact: this coordinator has no artifact directory")
    what = f"artifact {ref}"
    try:
        path = resolve_artifact_ref(ref, artifact_dir, what="GetArtifact")
    except SerializationError as exc:
        raise _Refused(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
    if not os.path.lexists(path):
        raise _Refused(
            grpc.StatusCode.NOT_FOUND, f"{what} is gone: no file {path} (deleted, or collected by retention)"
        )
    try:
        data, stored_sha256 = read_checked(payload, artifact_dir, what="GetArtifact")
    except SerializationError as exc:
        raise _Refused(grpc.StatusCode.NOT_FOUND, str(exc)) from None
    except ArtifactAltered as exc:
        log.error("GetArtifact: %s; not served", exc)
        raise _Refused(
            grpc.StatusCode.DATA_LOSS,
            f"{what} does not match the SHA-256 recorded with its result (altered or corrupt on disk); not served",
        ) from None
    stored_sha256 = stored_sha256 or content_sha256(data)  # served with every artifact, checked or not
    if not payload.zstd:
        return _Served(data, "identity", stored_sha256)
    if accept_zstd:
        return _Served(data, "zstd", stored_sha256)
    try:
        plain = decompress(data, payload.size_bytes, what=what)
    except SerializationError as exc:
        log.error("GetArtifact: %s", exc)
        raise _Refused(grpc.StatusCode.DATA_LOSS, str(exc)) from None
    return _Served(plain, "identity", content_sha256(plain))
