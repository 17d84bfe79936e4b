"""How the Python SDK reads results: inline up to a size, bigger ones through ``GetArtifact``.

The reading RPCs return results of up to :data:`INLINE_MAX_BYTES` (decoded) inline; a bigger
one keeps its ``artifact_ref`` and is streamed with ``GetArtifact``, the same path a Go, Java
or Node client takes, and checked against the SHA-256 the coordinator sends. Python lists
zstd in ``accept_compression``: compressed bytes arrive as stored, and are decoded where
they are used, as before. Results under 256 KiB are never references, so this costs them
one field check each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from ._codec import content_sha256
from ._limits import MAX_ARTIFACT_CHUNK_BYTES
from ._proto import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from .errors import SerializationError

__all__ = ["ACCEPT_COMPRESSION", "INLINE_MAX_BYTES", "fetch_artifacts", "read_artifact_bytes"]

log = logging.getLogger(__name__)

#: What GetArtifact answers for a reference it will not serve: that task's result, not the call.
_REFUSALS = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DATA_LOSS)

#: Results up to this many bytes (decoded) come inline; bigger ones through GetArtifact.
INLINE_MAX_BYTES = 4 * 1024 * 1024
#: What the SDK decodes itself: zstd payloads arrive as stored, with no work for the coordinator.
ACCEPT_COMPRESSION = ("zstd",)


def fetch_artifacts(
    stub: pipeline_pb2_grpc.PipelineServiceStub, run_id: str, results: Iterable[tuple[str, common_pb2.Payload]],
    timeout_s: float | None, *, strict: bool = True,
) -> None:  # fmt: skip
    """Fill in place each of ``results`` (``(task, payload)``) that came by reference.

    With ``strict`` False (a whole run's results), a reference the coordinator refuses
    (NOT_FOUND, PERMISSION_DENIED, DATA_LOSS) is logged with its reason and left as it is:
    that task's value then fails to decode, and the other tasks' values stay readable.

    Raises:
        grpc.RpcError: GetArtifact failed (with ``strict``: any status; else not a refusal).
        SerializationError: the bytes received do not match the hash the coordinator sent.
    """
    for task, payload in results:
        if payload.artifact_ref:
            try:
                _fill(stub, run_id, task, payload, timeout_s)
            except grpc.RpcError as exc:
                if strict or exc.code() not in _REFUSALS:
                    raise
                log.warning("the result of task %r stays unread: GetArtifact %s: %s", task, exc.code().name,
                            exc.details())  # fmt: skip
        elif payload.codec == common_pb2.CODEC_MAP_PARTS:  # a fan-out's parts may be references
            parts = common_pb2.MapParts.FromString(payload.data)
            refs = [p for p in (*parts.parts, parts.keys) if p.artifact_ref]
            if refs:
                for part in refs:
                    _fill(stub, run_id, task, part, timeout_s)
                payload.data = parts.SerializeToString()
                payload.size_bytes = len(payload.data)


def _fill(
    stub: pipeline_pb2_grpc.PipelineServiceStub, run_id: str, task: str, payload: common_pb2.Payload,
    timeout_s: float | None,
) -> None:  # fmt: skip
    data, compression = read_artifact_bytes(stub, run_id, task, payload.artifact_ref, timeout_s)
    payload.data = data
    payload.zstd = compression == "zstd"
    payload.artifact_ref = ""
    payload.artifact_sha256 = ""


def read_artifact_bytes(
    stub: pipeline_pb2_grpc.PipelineServiceStub, run_id: str, task: str, ref: str, timeout_s: float | None
) -> tuple[bytes, str]:
    """The bytes ``GetArtifact`` serves for ``ref`` and their compression, hash-checked.

    Raises:
        grpc.RpcError: the call failed.
        SerializationError: fewer or more bytes than announced, or a SHA-256 mismatch.
    """
    request = pipeline_pb2.GetArtifactRequest(
        run_id=run_id, task=task, ref=ref, accept_compression=ACCEPT_COMPRESSION, chunk_bytes=MAX_ARTIFACT_CHUNK_BYTES
    )
    first = None
    pieces = []
    for chunk in stub.GetArtifact(request, timeout=timeout_s):
        if first is None:
            first = chunk
        pieces.append(chunk.data)
    data = b"".join(pieces)
    if first is None or len(data) != first.total_bytes:
        announced = first.total_bytes if first is not None else "no chunk"
        raise SerializationError(f"artifact {ref} of task {task!r}: got {len(data)} bytes, announced {announced}")
    if content_sha256(data) != first.sha256:
        raise SerializationError(f"artifact {ref} of task {task!r}: the bytes received do not match their SHA-256")
    return data, first.compression
