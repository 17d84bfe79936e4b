"""The worker's side of the result cache: look a cached task up before it runs, store after.

Runs in the daemon (the parent), not in the executor child: a hit then costs no executor
round trip and the memory level (L1) is one per worker, shared by its slots. Only tasks
whose assignment carries ``TaskHead.cache`` come here; every other task pays one field
check. Upstream payloads are parsed here for cached tasks only (their content is part of
the key; see :mod:`xpipe.cache._key`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from xpipe import _codec
from xpipe._domain import error_type_name
from xpipe._proto import common_pb2, worker_pb2
from xpipe.cache._key import entry_key, payload_digest
from xpipe.cache._multi import MultiLevelCache
from xpipe.telemetry._logformat import log_ids

__all__ = ["WorkerCache", "default_cache_dir"]

log = logging.getLogger(__name__)


def default_cache_dir(worker_name: str) -> str:
    """``$XDG_CACHE_HOME/xpipe/workers/<worker name>`` (``~/.cache`` without XDG_CACHE_HOME):
    where a disk level with no ``path`` keeps this worker's entries."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xpipe", "workers", re.sub(r"[^A-Za-z0-9._-]", "_", worker_name) or "worker")


class WorkerCache:
    """One per daemon: the levels it opened and the hit/miss counts its metrics read."""

    def __init__(self, base_dir: str):
        self.levels = MultiLevelCache(base_dir)

    @property
    def hits(self) -> int:
        return sum(self.levels.hits.values())

    @property
    def misses(self) -> int:
        return self.levels.misses

    def key_of(self, head: worker_pb2.AssignmentHead, artifact_root: str | None) -> str:
        """The entry key (raises OSError/SerializationError when an upstream cannot be read)."""

        def read(ref: str) -> bytes:
            return _codec.read_artifact(ref, artifact_root=artifact_root, what="upstream result")

        digests = [payload_digest(common_pb2.Payload.FromString(raw), read) for raw in head.upstream]
        spec = head.task.cache
        return entry_key(spec.code_id, spec.generation, head.task.args, digests)

    async def lookup(
        self, key: tuple[str, str, int], head: worker_pb2.AssignmentHead, artifact_root: str | None
    ) -> tuple[str, worker_pb2.TaskEvent | None, list[str]]:
        """``(entry key, a succeeded event with cache_hit or None, warnings)``; never raises.

        The entry key is "" when it could not be made (the task then runs uncached).
        """
        try:
            entry = await asyncio.to_thread(self.key_of, head, artifact_root)
        except Exception as exc:  # noqa: BLE001 - an unreadable upstream: run the task, uncached
            text = f"result not cached: cannot read an upstream result for the key: {type(exc).__name__}: {exc}"
            log.warning("%s", text, extra=log_ids(key))
            return "", None, [text]
        found = await asyncio.to_thread(self.levels.lookup, head.task.cache, head.task.name, entry)
        if found.payload is None:
            return entry, None, found.warnings
        try:
            result = common_pb2.Payload.FromString(found.payload)
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is a miss
            log.warning("corrupt cache entry from level %r: %s (a miss)", found.level, exc, extra=log_ids(key))
            return entry, None, found.warnings
        event = worker_pb2.TaskEvent(at=time.time(), cache_hit=True)
        event.attempt.run_id, event.attempt.task, event.attempt.attempt = key
        event.succeeded.result.CopyFrom(result)
        if found.warnings:
            event.telemetry.warnings.extend(found.warnings)
        log.debug("cache hit for %s at level %r", key, found.level, extra=log_ids(key))
        return entry, event, found.warnings

    async def store(
        self, key: tuple[str, str, int], head: worker_pb2.AssignmentHead, entry: str, event: worker_pb2.TaskEvent,
        artifact_root: str | None,
    ) -> list[str]:  # fmt: skip
        """Store a successful outcome's result in every level; returns warnings (never raises).

        A failed, skipped or fallback outcome is not stored: the next run must run the code.
        """
        kind = event.WhichOneof("kind")
        if kind == "failed":
            error = event.failed.error
            if error_type_name(error) == "SERIALIZATION":
                return [f"result not cached: it could not be encoded ({error.message[:200]})"]
            return []
        if kind != "succeeded" or event.succeeded.skipped or event.succeeded.fallback_used:
            return []
        result = event.succeeded.result
        if result.artifact_ref:  # stored by content: the artifact file may be removed later
            try:
                data = await asyncio.to_thread(
                    _codec.read_artifact, result.artifact_ref, artifact_root=artifact_root, what="result"
                )
            except Exception as exc:  # noqa: BLE001
                return [f"result not cached: cannot read its artifact: {type(exc).__name__}: {exc}"]
            inline = common_pb2.Payload()
            inline.CopyFrom(result)
            inline.artifact_ref, inline.data = "", data
            result = inline
        return await asyncio.to_thread(self.levels.store, head.task.cache, head.task.name, entry,
                                       result.SerializeToString())  # fmt: skip

    def close(self) -> None:
        self.levels.close()
