"""The worker-local object store: big results written once, and kept for a local consumer.

A result of :data:`ARTIFACT_MIN_BYTES` or more (encoded) leaves the process that made it as
a file in the artifact directory (``RUN_ID/TASK.ATTEMPT``) and travels as a ``file://``
reference. The executor child that ran the task writes that file itself, so the bytes are
not piped to the worker daemon to be written there (one copy, one write, instead of a pipe
hop, a parse and a second write). The file is the durable copy: it is written before the
outcome is reported, so a result the coordinator acknowledged outlives the worker.

The same child also keeps the encoded bytes of its last few big results in memory
(:class:`LocalObjects`, bounded in bytes). A consumer that runs in that child (the
coordinator places consumers on the worker that holds their inputs, see
``coordinator/_placement.py``) takes them from there: no open, no read, no page-cache copy.
Any other reader (another child, another worker, the coordinator) reads the file.

With encryption at rest (``--encryption-key-file``) the file is sealed and named
``RUN_ID/TASK.ATTEMPT.xpe`` (:func:`xpipe.security._atrest.seal_artifact`); the bytes kept
in memory stay plain, so a local consumer still skips the read and the decryption.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from xpipe._codec import ARTIFACT_SCHEME, content_sha256
from xpipe._domain import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE
from xpipe.security._atrest import seal_artifact

__all__ = [
    "ARTIFACT_MIN_BYTES",
    "LOCAL_OBJECTS_MAX_BYTES",
    "LocalObjects",
    "artifact_path",
    "by_reference",
    "store_result",
    "write_artifact",
    "write_file",
]

#: Results at least this big (encoded) go to the artifact directory and travel as a reference.
ARTIFACT_MIN_BYTES = 256 * 1024
#: How many bytes of its own big results one executor process keeps for a local consumer.
#: Small on purpose: a producer's consumer usually runs right after it, and the memory is
#: the executor's (it is dropped before a task with a memory limit runs).
LOCAL_OBJECTS_MAX_BYTES = 16 * 1024 * 1024


def artifact_path(artifact_root: str, run_id: str, task: str, attempt: int) -> str:
    """Where the result of one attempt lives: unique per attempt, so never rewritten."""
    return os.path.join(artifact_root, run_id, f"{task}.{attempt}")


def by_reference(payload, ref: str) -> None:
    """Make ``payload`` (a ``Payload`` whose bytes ``ref``'s file now holds) travel by ``ref``.

    Every result written to the artifact directory goes through here, so each reference
    carries the SHA-256 of its plain bytes (``artifact_sha256``), which ``GetArtifact``
    checks the file against. Hashing reads the whole value: call it off an event loop.
    """
    payload.artifact_sha256 = content_sha256(payload.data)
    payload.artifact_ref = ref
    payload.data = b""


def write_file(path: str, data: bytes | memoryview) -> None:
    """Write atomically (a reader never sees a half-written artifact), private to this user."""
    os.makedirs(os.path.dirname(path), mode=PRIVATE_DIR_MODE, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    with open(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_artifact(artifact_root: str, key: tuple[str, str, int], data: bytes | memoryview) -> str:
    """Write ``data`` as the artifact of attempt ``key``, sealed when this process encrypts
    at rest; its ``file://`` reference.

    Raises:
        OSError: the file cannot be written.
    """
    path = artifact_path(artifact_root, *key)
    sealed = seal_artifact(data, os.path.relpath(path, artifact_root))
    if sealed is not None:
        data, relative = sealed
        path = os.path.join(artifact_root, relative)
    write_file(path, data)
    return ARTIFACT_SCHEME + path


class LocalObjects:
    """Encoded big results this process wrote, by reference, least recently used dropped first.

    Only references this process wrote are kept, so a reference from the wire can only hit
    bytes that are exactly what its file holds (a file is written once and never changed).
    Thread-safe: the thread executor runs tasks of one process in several threads.
    """

    def __init__(self, max_bytes: int = LOCAL_OBJECTS_MAX_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: References served from memory / asked for but not held (read from the file).
        self.hits = 0
        self.misses = 0

    def put(self, ref: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(ref, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[ref] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, ref: str) -> bytes | None:
        with self._lock:
            data = self._items.get(ref)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(ref)
            self.hits += 1
            return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes


def store_result(
    objects: LocalObjects, artifact_root: str | None, key: tuple[str, str, int], data: bytes
) -> str:
    """Write ``data`` as the artifact of attempt ``key``; its reference, or "" if not written.

    "" (the result then travels inline, slower but correct) when no artifact directory is
    configured or it does not exist here: a machine that does not share the coordinator's
    directory has none.

    Raises:
        OSError: the directory exists but the file cannot be written.
    """
    if not artifact_root or not os.path.isdir(artifact_root):
        return ""
    ref = write_artifact(artifact_root, key, data)
    objects.put(ref, data)
    return ref
