"""Encoding of task arguments and results into :class:`Payload` messages.

Python-to-Python values use pickle (cloudpickle for what plain pickle refuses); values
for or from other languages use JSON. Encoded data above ``ZSTD_THRESHOLD_BYTES`` is
zstd-compressed: below it, compression costs more time than the bytes it saves.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from collections.abc import Callable
from typing import Any

import zstandard

from ._proto import common_pb2
from .errors import SerializationError

__all__ = ["ZSTD_THRESHOLD_BYTES", "MAX_INLINE_BYTES", "encode", "decode", "decompress", "content_sha256", "encode_json", "empty", "read_artifact", "resolve_artifact_ref"]

#: Encoded values at least this large are zstd-compressed.
ZSTD_THRESHOLD_BYTES = 16 * 1024
#: Largest encoded value carried inside a message.
MAX_INLINE_BYTES = 48 * 1024 * 1024
#: Encoded values at least this large are probed before zstd compresses them whole.
ZSTD_PROBE_MIN_BYTES = 128 * 1024
#: Bytes of each of the probe's three slices (start, middle, end).
_PROBE_SLICE_BYTES = 8 * 1024
#: Compressed / raw size above which zstd is not worth it (random or already compressed data).
_WORTH_RATIO = 0.9
#: Largest value a compressed payload may inflate to (guards against zstd bombs).
MAX_DECODED_BYTES = 1024 * 1024 * 1024

_CODECS = {"pickle": common_pb2.CODEC_PICKLE, "json": common_pb2.CODEC_JSON, "raw": common_pb2.CODEC_RAW}
_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pickle(value: Any, what: str) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:  # not a serialization problem: a memory limit must see it as such
        raise
    except Exception:
        pass
    try:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot serialise {what} {_describe(value)} of type {type(value).__name__}: {exc}"
        ) from exc


def encode(
    value: Any,
    codec: str = "pickle",
    *,
    what: str = "value",
    compress_threshold_bytes: int = ZSTD_THRESHOLD_BYTES,
) -> common_pb2.Payload:
    """Encode ``value`` with ``codec`` ("pickle", "json" or "raw").

    Args:
        what: names the value in error messages, e.g. ``"result of task 'load'"``.

    Raises:
        SerializationError: the value cannot be encoded, or is larger than MAX_INLINE_BYTES.
    """
    if codec == "pickle":
        data = _pickle(value, what)
    elif codec == "json":
        try:
            data = json.dumps(value, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode {what} {_describe(value)} as JSON: {exc}") from exc
    elif codec == "raw":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SerializationError(f"raw codec needs bytes for {what}, got {type(value).__name__}")
        data = bytes(value)
    else:
        raise SerializationError(f"unknown codec {codec!r}; expected one of {sorted(_CODECS)}")
    size = len(data)
    compressed = False
    if size >= compress_threshold_bytes and _worth_compressing(data):
        packed = _compressor.compress(data)
        # Incompressible data (random, already compressed) stays raw: it would only cost
        # a decompression later for no saving.
        if len(packed) <= size * _WORTH_RATIO:
            data, compressed = packed, True
    if len(data) > MAX_INLINE_BYTES:
        raise SerializationError(
            f"{what} is {len(data)} bytes encoded, over the {MAX_INLINE_BYTES}-byte limit for one value"
        )
    return common_pb2.Payload(codec=_CODECS[codec], zstd=compressed, data=data, size_bytes=size)


def _worth_compressing(data: bytes) -> bool:
    """Would zstd shrink ``data``? Judged on three slices for big values.

    Compressing a random 1 MiB value only to throw the result away costs about 1 ms; three
    8 KiB slices tell the same in a few tens of microseconds. Slices from the start, middle
    and end catch a value whose head (a pickle header, a small dict) differs from its body.
    """
    size = len(data)
    if size < ZSTD_PROBE_MIN_BYTES:
        return True
    n, mid = _PROBE_SLICE_BYTES, size // 2
    sample = b"".join((data[:n], data[mid : mid + n], data[size - n :]))
    return len(_compressor.compress(sample)) <= len(sample) * _WORTH_RATIO


def encode_json(value: Any, *, what: str = "value") -> common_pb2.Payload:
    """Encode ``value`` as JSON (for results other languages must read)."""
    return encode(value, "json", what=what)


def empty() -> common_pb2.Payload:
    """The payload that means "nothing here" (no extra arguments)."""
    return common_pb2.Payload()


def is_empty(payload: common_pb2.Payload) -> bool:
    return payload.codec == common_pb2.CODEC_UNSPECIFIED and not payload.data and not payload.artifact_ref


#: The only scheme an artifact reference may use: a file in the artifact directory.
ARTIFACT_SCHEME = "file://"


def resolve_artifact_ref(ref: str, artifact_root: str | None, *, what: str = "value") -> str:
    """The real path an artifact reference names, if it lies inside ``artifact_root``.

    A reference is data from the wire: without this check a task argument of
    ``file:///etc/passwd`` would make a worker read (and echo) any file it can. Symlinks and
    ``..`` are resolved before the check, so neither can lead outside the directory.
    Nothing is read here.

    Raises:
        SerializationError: another scheme, a relative path, a path outside the directory,
            or no directory configured; the message names the reference and the directory.
    """
    if not artifact_root:
        raise SerializationError(
            f"refusing artifact reference {ref!r} for {what}: no artifact directory is configured here, "
            "so no reference can be read"
        )
    root = os.path.realpath(artifact_root)
    if not ref.startswith(ARTIFACT_SCHEME) or not ref[len(ARTIFACT_SCHEME) :].startswith("/"):
        raise SerializationError(
            f"refusing artifact reference {ref!r} for {what}: only {ARTIFACT_SCHEME}/absolute/path references "
            f"inside the artifact directory {root} are read"
        )
    try:
        path = os.path.realpath(ref[len(ARTIFACT_SCHEME) :])
    except (ValueError, OSError) as exc:  # e.g. an embedded NUL byte
        raise SerializationError(
            f"refusing artifact reference {ref!r} for {what}: {exc} (artifact directory {root})"
        ) from None
    if not path.startswith(root + os.sep):
        raise SerializationError(
            f"refusing artifact reference {ref!r} for {what}: it resolves outside the artifact directory {root}"
        )
    return path


def read_artifact(ref: str, *, artifact_root: str | None, what: str = "value") -> bytes:
    """The bytes of a ``file://`` artifact reference, read only from inside ``artifact_root``.

    The file is opened without following a final symlink and checked again once open (by
    the path the kernel reports for the open file), so a link swapped in after the check
    cannot lead outside; only regular files are read.

    A file sealed at rest (named ``*.xpe``, see ``xpipe.security._atrest``) is decrypted with
    this process's keyring; the cryptography package is imported only then.

    Raises:
        SerializationError: the reference is refused (see :func:`resolve_artifact_ref`), or
            the file cannot be read; the message never carries the file's contents.
        DecryptionError: the file is sealed and this process has no keyring, or its key id
            is not in it, or it was altered or moved (the message names the key id).
    """
    path = resolve_artifact_ref(ref, artifact_root, what=what)
    root = os.path.realpath(artifact_root or "")
    if path.endswith(ARTIFACT_SEALED_SUFFIX):
        from .security._atrest import open_artifact  # only sealed reads load the security package

        return open_artifact(_read_inside(path, root, ref, what), path[len(root) + 1 :], what)
    return _read_inside(path, root, ref, what)


#: The name suffix of an artifact sealed at rest (see ``xpipe.security._atrest``). Defined
#: here, where every reader is, so a plain read never imports the security package.
ARTIFACT_SEALED_SUFFIX = ".xpe"



def _read_inside(path: str, root: str, ref: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SerializationError(f"cannot read {what} from the artifact store ({ref}): {exc.strerror}") from None
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else path
        if not opened.startswith(root + os.sep) or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SerializationError(
                f"refusing artifact reference {ref!r} for {what}: not a regular file inside the artifact "
                f"directory {root}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise SerializationError(f"cannot read {what} from the artifact store ({ref}): {exc.strerror}") from None
    finally:
        os.close(fd)


def content_sha256(data: bytes | memoryview) -> str:
    """Hex SHA-256 of an artifact's plain bytes (``Payload.artifact_sha256``): what a reader
    (``GetArtifact``) checks the file against, after unsealing it, before serving a byte."""
    return hashlib.sha256(data).hexdigest()


def decompress(data: bytes, size_bytes: int, *, what: str = "value") -> bytes:
    """The zstd frame ``data`` decompressed, refused if it would be bigger than ``size_bytes``.

    A hostile frame may claim any size: one that says more than the payload declared
    (``Payload.size_bytes``), or than any value may be, is refused before allocating for it.

    Raises:
        SerializationError: the frame is corrupt, too big, or not ``size_bytes`` long.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise SerializationError(f"cannot decode {what}: not a zstd frame: {exc}") from None
    if declared > size_bytes or size_bytes > MAX_DECODED_BYTES:
        raise SerializationError(
            f"cannot decode {what}: compressed frame claims {declared} bytes, "
            f"payload declares {size_bytes} (limit {MAX_DECODED_BYTES})"
        )
    try:
        out = _decompressor.decompress(data, max_output_size=max(size_bytes, 1))
    except zstandard.ZstdError as exc:
        raise SerializationError(f"cannot decode {what}: corrupt zstd frame: {exc}") from None
    if len(out) != size_bytes:
        raise SerializationError(f"cannot decode {what}: decompressed to {len(out)} bytes, payload declares {size_bytes}")
    return out


def decode(
    payload: common_pb2.Payload,
    *,
    what: str = "value",
    artifact_root: str | None = None,
    artifact_data: bytes | None = None,
    unpickle: Callable[[bytes], Any] = pickle.loads,
) -> Any:
    """Decode a payload made by :func:`encode` (or by any client following the API).

    Args:
        artifact_root: the artifact directory; a payload that travels by reference is read
            only from inside it, and with None every reference is refused.
        artifact_data: the bytes the payload's reference names, when the caller already
            holds them (the worker-local object store); the file is then not read.
        unpickle: loads ``CODEC_PICKLE`` data; workers pass a restricted unpickler for the
            arguments of runs whose submitter may not send code (docs/security.md).

    Raises:
        SerializationError: the payload is corrupt or uses an unknown codec.
    """
    if payload.codec == common_pb2.CODEC_MAP_PARTS:
        return _decode_parts(payload, what, artifact_root, unpickle)
    if payload.artifact_ref and artifact_data is not None:
        data = artifact_data
    elif payload.artifact_ref:
        data = read_artifact(payload.artifact_ref, artifact_root=artifact_root, what=what)
    else:
        data = payload.data
    try:
        if payload.zstd:
            data = decompress(data, payload.size_bytes, what=what)
        if payload.codec == common_pb2.CODEC_PICKLE:
            return unpickle(data)
        if payload.codec == common_pb2.CODEC_JSON:
            return json.loads(data)
        if payload.codec == common_pb2.CODEC_RAW:
            return bytes(data)
    except (SerializationError, MemoryError):  # running out of memory is not a corrupt payload
        raise
    except Exception as exc:
        raise SerializationError(f"cannot decode {what}: {type(exc).__name__}: {exc}") from exc
    if payload.codec == common_pb2.CODEC_UNSPECIFIED and not payload.data:
        return None
    raise SerializationError(f"cannot decode {what}: unknown codec {payload.codec}")


def _decode_parts(
    payload: common_pb2.Payload, what: str, artifact_root: str | None, unpickle: Callable[[bytes], Any]
) -> list[Any] | dict[Any, Any]:
    """A fan-out's parts (``xpipe._mapping``): the list of its decoded parts, or a dict when
    it carries keys. Each part is a payload of its own (inline or by artifact reference)."""
    try:
        parts = common_pb2.MapParts.FromString(payload.data)
    except Exception as exc:
        raise SerializationError(f"cannot decode {what}: corrupt fan-out parts: {exc}") from exc
    values = [
        decode(part, what=f"{what}[{i}]", artifact_root=artifact_root, unpickle=unpickle)
        for i, part in enumerate(parts.parts)
    ]
    if not parts.HasField("keys"):
        return values
    keys = decode(parts.keys, what=f"keys of {what}", artifact_root=artifact_root, unpickle=unpickle)
    if not isinstance(keys, list) or len(keys) != len(values):
        raise SerializationError(f"cannot decode {what}: its fan-out keys do not match its {len(values)} parts")
    return dict(zip(keys, values))
