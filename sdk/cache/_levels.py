"""The cache levels: one class per kind in a small registry (:data:`LEVELS`).

Every level stores opaque entry bytes (see :func:`pack_entry`) under a key made of a
namespace (the pipeline and task, hashed, so invalidation can find them) and the entry
key. A level that cannot be reached raises :class:`CacheLevelDown`; a missing, expired or
corrupt entry is a miss (None). Levels are synchronous: the worker calls them off its
event loop (``asyncio.to_thread``), except the memory level, which is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

from ._config import CacheLevelConfig

__all__ = [
    "LEVELS", "CacheLevel", "CacheLevelDown", "MemoryLevel", "RedisLevel", "DiskLevel", "namespace",
    "pack_entry", "unpack_entry", "open_level",
]  # fmt: skip

log = logging.getLogger(__name__)

_MAGIC = b"XPC1"
_HEADER = struct.Struct("!4sd32s")  # magic, created_at (unix s), sha256 of the payload
#: How long a Redis level that failed is skipped before it is tried again.
REDIS_RETRY_S = 30.0
#: Redis socket timeouts: a cache that answers slower than this is no faster than running.
REDIS_TIMEOUT_S = 0.5


class CacheLevelDown(Exception):
    """A level cannot be reached (Redis down, a directory not writable): use the others."""


def namespace(pipeline: str, task: str = "") -> str:
    """``<16 hex of the pipeline>`` or ``<pipeline hash>/<16 hex of pipeline+task>``: safe in
    paths and Redis patterns whatever the names hold."""
    p = hashlib.sha256(pipeline.encode()).hexdigest()[:16]
    if not task:
        return p
    return p + "/" + hashlib.sha256(f"{pipeline}\0{task}".encode()).hexdigest()[:16]


def pack_entry(payload: bytes, created_at: float) -> bytes:
    return _HEADER.pack(_MAGIC, created_at, hashlib.sha256(payload).digest()) + payload


def unpack_entry(entry: bytes) -> tuple[float, bytes] | None:
    """``(created_at, payload)``, or None when the entry is corrupt (wrong header or checksum)."""
    if len(entry) < _HEADER.size:
        return None
    magic, created_at, digest = _HEADER.unpack_from(entry)
    payload = entry[_HEADER.size :]
    if magic != _MAGIC or hashlib.sha256(payload).digest() != digest:
        return None
    return created_at, payload


def _fresh(created_at: float, ttl_s: float, now: float) -> bool:
    return not ttl_s or now - created_at <= ttl_s


class CacheLevel(ABC):
    """One level; ``ttl_s`` passed to :meth:`get`/:meth:`put` is the effective TTL (0: none)."""

    def __init__(self, config: CacheLevelConfig, base_dir: str = ""):
        self.config = config
        self.name = config.name

    @abstractmethod
    def get(self, ns: str, key: str, ttl_s: float) -> bytes | None:
        """The payload stored under (ns, key), or None (a miss)."""

    @abstractmethod
    def put(self, ns: str, key: str, payload: bytes, ttl_s: float) -> None:
        """Store ``payload``; the level may evict others to stay within its size."""

    @abstractmethod
    def invalidate(self, ns: str) -> int:
        """Drop every entry under namespace ``ns`` (a pipeline's or a task's); returns how many."""

    def close(self) -> None:
        """Release connections."""


class MemoryLevel(CacheLevel):
    """An LRU in this process bounded by ``size`` bytes of payloads (the worker's L1)."""

    def __init__(self, config: CacheLevelConfig, base_dir: str = ""):
        super().__init__(config, base_dir)
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()  # warm and lookup may run on different threads

    def get(self, ns: str, key: str, ttl_s: float) -> bytes | None:
        with self._lock:
            found = self._entries.get((ns, key))
            if found is None:
                return None
            if not _fresh(found[0], ttl_s, time.time()):
                self._drop((ns, key))
                return None
            self._entries.move_to_end((ns, key))
            return found[1]

    def put(self, ns: str, key: str, payload: bytes, ttl_s: float) -> None:
        size = self.config.size_bytes
        if size and len(payload) > size:
            return  # never fits: would only push everything else out
        with self._lock:
            self._drop((ns, key))
            self._entries[(ns, key)] = (time.time(), payload)
            self.bytes += len(payload)
            while size and self.bytes > size:
                old, (_, data) = self._entries.popitem(last=False)
                self.bytes -= len(data)

    def _drop(self, k: tuple[str, str]) -> None:
        old = self._entries.pop(k, None)
        if old is not None:
            self.bytes -= len(old[1])

    def invalidate(self, ns: str) -> int:
        with self._lock:
            doomed = [k for k in self._entries if k[0] == ns or k[0].startswith(ns + "/")]
            for k in doomed:
                self._drop(k)
            return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)


class DiskLevel(CacheLevel):
    """A directory of entry files bounded by ``size`` bytes, evicted oldest-used first (mtime).

    A hit touches the file's mtime, so eviction is LRU. Files are written to a temporary
    name and renamed, so a reader never sees half an entry; a file that fails its checksum
    (a torn or altered entry) is a miss and is removed.
    """

    def __init__(self, config: CacheLevelConfig, base_dir: str = ""):
        super().__init__(config, base_dir)
        root = config.path or os.path.join(base_dir or os.path.join(os.path.expanduser("~"), ".cache", "xpipe"),
                                           "cache", config.name)  # fmt: skip
        self.root = root
        self._lock = threading.Lock()
        self._approx_bytes: int | None = None  # summed on the first write, then kept up to date

    def _path(self, ns: str, key: str) -> str:
        return os.path.join(self.root, ns, key)

    def get(self, ns: str, key: str, ttl_s: float) -> bytes | None:
        path = self._path(ns, key)
        try:
            with open(path, "rb") as f:
                entry = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheLevelDown(f"disk level {self.name!r} at {self.root}: {exc}") from exc
        unpacked = unpack_entry(entry)
        if unpacked is None:
            log.warning("cache level %r: corrupt entry %s removed (a miss)", self.name, path)
            self._remove(path)
            return None
        created_at, payload = unpacked
        if not _fresh(created_at, ttl_s, time.time()):
            self._remove(path)
            return None
        try:
            os.utime(path)  # last use: eviction goes by it
        except OSError:
            pass
        return payload

    def _remove(self, path: str) -> None:
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError:
            return
        with self._lock:
            if self._approx_bytes is not None:
                self._approx_bytes -= size

    def put(self, ns: str, key: str, payload: bytes, ttl_s: float) -> None:
        limit = self.config.size_bytes
        entry = pack_entry(payload, time.time())
        if limit and len(entry) > limit:
            return
        path = self._path(ns, key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(entry)
            os.replace(tmp, path)
        except OSError as exc:
            raise CacheLevelDown(f"disk level {self.name!r} at {self.root}: {exc}") from exc
        if not limit:
            return
        with self._lock:
            if self._approx_bytes is None:
                self._approx_bytes = sum(size for _, size, _ in self._files())
            else:
                self._approx_bytes += len(entry)
            if self._approx_bytes > limit:
                self._evict(limit)

    def _files(self) -> list[tuple[float, int, str]]:
        found = []
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found.append((st.st_mtime, st.st_size, path))
        return found

    def _evict(self, limit: int) -> None:
        """Remove the least recently used files until the level fits (a fresh scan: the
        directory may be shared with other workers, so the running total is only a hint)."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= limit:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
        self._approx_bytes = total

    def invalidate(self, ns: str) -> int:
        import shutil

        folder = os.path.join(self.root, ns)
        count = sum(len(names) for _, _, names in os.walk(folder))
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._approx_bytes = None
        return count


class RedisLevel(CacheLevel):
    """A shared level in Redis, bounded by ``size`` bytes by this level itself.

    ``maxmemory`` is server-wide, so the bound is kept here: entries are keys
    ``<prefix>:e:<ns>:<key>`` with a TTL; a sorted set ``<prefix>:lru`` scores each by its
    last use and a hash ``<prefix>:sizes`` holds its size, with the running total in
    ``<prefix>:bytes``. A write that takes the total over ``size`` removes the least
    recently used entries first. An entry that expired by TTL stays counted until evicted,
    so the bound errs on the small side.
    """

    def __init__(self, config: CacheLevelConfig, base_dir: str = ""):
        super().__init__(config, base_dir)
        import redis

        self._redis = redis.Redis.from_url(
            config.url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, retry_on_timeout=False,
        )  # fmt: skip
        self._errors = (redis.RedisError, OSError)
        self.p = config.prefix
        self._down_until = 0.0

    def _call(self, fn: Any) -> Any:
        now = time.monotonic()
        if now < self._down_until:
            raise CacheLevelDown(f"redis level {self.name!r} at {self.config.url} is down (retried after {REDIS_RETRY_S:.0f} s)")
        try:
            return fn(self._redis)
        except self._errors as exc:
            self._down_until = now + REDIS_RETRY_S
            raise CacheLevelDown(f"redis level {self.name!r} at {self.config.url}: {type(exc).__name__}: {exc}") from exc

    def _key(self, ns: str, key: str) -> str:
        return f"{self.p}:e:{ns.replace('/', ':')}:{key}"

    def get(self, ns: str, key: str, ttl_s: float) -> bytes | None:
        k = self._key(ns, key)

        def run(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            pipe.get(k)
            pipe.zadd(f"{self.p}:lru", {k: time.time()}, xx=True)
            return pipe.execute()[0]

        entry = self._call(run)
        if entry is None:
            return None
        unpacked = unpack_entry(entry)
        if unpacked is None or not _fresh(unpacked[0], ttl_s, time.time()):
            self._call(lambda r: r.delete(k))
            return None
        return unpacked[1]

    def put(self, ns: str, key: str, payload: bytes, ttl_s: float) -> None:
        limit = self.config.size_bytes
        entry = pack_entry(payload, time.time())
        if limit and len(entry) > limit:
            return
        k = self._key(ns, key)

        def run(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.set(k, entry, px=int(ttl_s * 1000) if ttl_s else None)
            pipe.hget(f"{self.p}:sizes", k)
            pipe.hset(f"{self.p}:sizes", k, len(entry))
            pipe.zadd(f"{self.p}:lru", {k: time.time()})
            _, old, _, _ = pipe.execute()
            total = r.incrby(f"{self.p}:bytes", len(entry) - int(old or 0))
            while limit and total > limit:
                popped = r.zpopmin(f"{self.p}:lru", 1)
                if not popped:
                    break
                victim = popped[0][0]
                pipe = r.pipeline(transaction=False)
                pipe.hget(f"{self.p}:sizes", victim)
                pipe.hdel(f"{self.p}:sizes", victim)
                pipe.delete(victim)
                size = pipe.execute()[0]
                total = r.incrby(f"{self.p}:bytes", -int(size or 0))

        self._call(run)

    def invalidate(self, ns: str) -> int:
        pattern = f"{self.p}:e:{ns.replace('/', ':')}:*"

        def run(r: Any) -> int:
            count = 0
            for k in r.scan_iter(match=pattern, count=500):
                pipe = r.pipeline(transaction=False)
                pipe.hget(f"{self.p}:sizes", k)
                pipe.hdel(f"{self.p}:sizes", k)
                pipe.zrem(f"{self.p}:lru", k)
                pipe.delete(k)
                size = pipe.execute()[0]
                r.incrby(f"{self.p}:bytes", -int(size or 0))
                count += 1
            return count

        return self._call(run)

    def bump_generation(self, field: str) -> int:
        return int(self._call(lambda r: r.hincrby(f"{self.p}:generations", field, 1)))

    def generations(self, fields: list[str]) -> list[int]:
        return [int(v or 0) for v in self._call(lambda r: r.hmget(f"{self.p}:generations", fields))]

    def close(self) -> None:
        self._redis.close()


#: Level kind -> class; adding a kind touches this file only (and ``LEVEL_TYPES``).
LEVELS: dict[str, type[CacheLevel]] = {"memory": MemoryLevel, "redis": RedisLevel, "disk": DiskLevel}


def open_level(config: CacheLevelConfig, base_dir: str = "") -> CacheLevel:
    return LEVELS[config.type](config, base_dir)
