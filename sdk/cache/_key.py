"""The cache key: what a task runs (its code identity) and what it gets (inputs and args).

Two halves, computed where the facts are. The SDK knows the code: :func:`code_id` hashes
the content of the callable (the cloudpickle hash for pickled code, the source or code
object for an importable function, the argv for a command, the name for a handler), the
user's ``cache_version`` and the pipeline and task names. The worker knows the inputs:
:func:`entry_key` adds the invalidation generation, the encoded args and each upstream
payload's content (its bytes, or the artifact file's bytes when it travelled by reference).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import marshal
from collections.abc import Callable, Iterable
from typing import Any

from .._proto import common_pb2

__all__ = ["code_id", "entry_key", "payload_digest", "function_identity"]

_KEY_VERSION = b"xpipe-cache-1\0"


def function_identity(func: Callable[..., Any]) -> bytes:
    """The content of an importable function: its source, else its code object (marshalled)."""
    target = inspect.unwrap(func)
    try:
        return inspect.getsource(target).encode()
    except (OSError, TypeError):
        pass
    code = getattr(target, "__code__", None)
    if code is not None:
        try:
            return marshal.dumps(code)
        except ValueError:
            pass
    # A callable object: its class's source names what runs.
    try:
        return inspect.getsource(type(target)).encode()
    except (OSError, TypeError):
        return repr(target).encode()


def code_id(
    spec: common_pb2.TaskSpec, func: Callable[..., Any] | None, version: str, pipeline: str, namespace: str = ""
) -> str:
    """sha256 hex of what ``spec`` runs plus ``version``, the namespace, ``pipeline`` and the task's name.

    The namespace keeps tenants' entries apart: two teams' same-named pipelines running the
    same code on the same inputs do not read each other's results.
    """
    h = hashlib.sha256(_KEY_VERSION)
    kind = spec.WhichOneof("kind")
    if kind == "python":
        if spec.python.code_hash:
            h.update(b"pickled\0" + spec.python.code_hash.encode())
        else:
            h.update(b"import\0" + spec.python.import_path.encode() + b"\0")
            if func is not None:
                h.update(function_identity(func))
    elif kind == "command":
        c = spec.command
        h.update(b"command\0" + json.dumps([list(c.argv), dict(sorted(c.env.items())), c.cwd]).encode())
    else:
        h.update(b"handler\0" + spec.handler.name.encode())
    for part in (version, namespace or "default", pipeline, spec.name):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def payload_digest(payload: common_pb2.Payload, read_artifact: Callable[[str], bytes] | None = None) -> bytes:
    """sha256 of a payload's value as encoded (its codec and bytes), wherever the bytes live.

    Raises:
        OSError: the payload travelled by reference and its artifact cannot be read.
    """
    h = hashlib.sha256(b"%d\0%d\0" % (payload.codec, payload.zstd))
    if payload.artifact_ref:
        if read_artifact is None:
            raise OSError(f"artifact {payload.artifact_ref!r}: no artifact directory to read it from")
        h.update(read_artifact(payload.artifact_ref))
    else:
        h.update(payload.data)
    return h.digest()


def entry_key(code: str, generation: int, args: bytes, upstream_digests: Iterable[bytes]) -> str:
    """sha256 hex of the whole key: code identity, generation, encoded args, upstream digests."""
    h = hashlib.sha256(_KEY_VERSION + code.encode() + b"\0%d\0" % generation)
    h.update(hashlib.sha256(args).digest())
    for digest in upstream_digests:
        h.update(digest)
    return h.hexdigest()
